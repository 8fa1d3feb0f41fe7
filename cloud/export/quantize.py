"""Keras model → .tflite bytes, in one of four modes.

Only ``TFLiteConverter.from_keras_model`` is used: with Keras 3, the SavedModel and
concrete-function routes produce models that run but output all-NaN. Whatever route,
:mod:`cloud.export.verify` checks the result against Keras before a bundle is written.
"""

from __future__ import annotations

import contextlib
import io as _io
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from device.runtime.bundle import MODES
from device.runtime.native_log import quiet_native_output

COMPATS = ("litert", "tflite-runtime")
IO_TYPES = ("float32", "uint8", "int8")  # the input/output tensor type of an int8 export


def convert(model: Any, mode: str, representative: np.ndarray | None = None, compat: str = "litert",
            io: str = "int8") -> bytes:
    """Convert ``model`` to TFLite; it takes whatever ``representative`` holds (normalized or raw samples).

    ``representative`` is required for ``int8``, whose input and output tensors are then of
    type ``io`` (``float32``: quantize/dequantize inside the model). ``compat='tflite-runtime'``
    avoids the per-channel dense kernels (FULLY_CONNECTED v12) that tflite-runtime 2.14 cannot load.
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if compat not in COMPATS:
        raise ValueError(f"compat must be one of {', '.join(COMPATS)}, got {compat!r}")
    if io not in IO_TYPES:
        raise ValueError(f"io must be one of {', '.join(IO_TYPES)}, got {io!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 export needs a representative dataset (normalized training samples)")
        samples = representative.astype(np.float32)

        def dataset() -> Iterator[list[np.ndarray]]:
            for i in range(len(samples)):
                yield [samples[i : i + 1]]

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io != "float32":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
    if compat == "tflite-runtime":
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    # Keras 3 prints "Saved artifact at …" and its endpoints on stdout: keep --json output clean
    with quiet_native_output(), warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()):
        # int8 I/O makes TF warn that input statistics are absent: they come from the representative set
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return bytes(converter.convert())

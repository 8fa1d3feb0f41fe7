"""``Runtime``: load a bundle (or a raw .tflite) and classify raw inputs with it.

Load, set the input, invoke, read the output: the LiteRT example loop, with the
bundle's own preprocessing and the tensors' own quantization parameters applied.
Depends on numpy and a TFLite interpreter only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import BundleError
from device.runtime.bundle import (
    MANIFEST_NAME,
    InputSpec,
    Manifest,
    Normalization,
    OutputSpec,
    check_tflite_bytes,
    read_manifest,
    read_model_bytes,
)
from device.runtime.interpreter import load_interpreter_class, tensor_quantization
from device.runtime.preprocess import as_batch, check_values, input_transform, output_dequantizer, softmax


@dataclass(frozen=True)
class Prediction:
    """One sample's result: the top classes, best first, with their probabilities."""

    label: str
    index: int
    confidence: float
    top: tuple[tuple[str, float], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "index": self.index,
            "confidence": self.confidence,
            "top": [{"label": lab, "probability": p} for lab, p in self.top],
        }


def _dtype_name(details: dict[str, Any]) -> str:
    return np.dtype(details["dtype"]).name


class Runtime:
    """A loaded model, ready to classify raw inputs.

    ``path`` is a bundle directory (``manifest.json`` + ``model.tflite``) or a plain
    .tflite file, whose inputs and outputs are then described from the model itself.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None, backend: str | None = None) -> None:
        self.path = Path(path)
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.manifest: Manifest | None = None
        content = self._read(self.path)
        interpreter_cls, self.backend = load_interpreter_class(backend)
        try:
            self._interpreter = interpreter_cls(model_content=content, num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            hint = ""
            if "find op for builtin opcode" in str(exc):
                hint = (f" The {self.backend} runtime is older than this model's ops; re-export it with "
                        "'edgeloop cloud export --compat tflite-runtime', or install ai-edge-litert.")
            raise BundleError(f"{self.model_path}: the interpreter cannot load this model ({str(exc).strip()}).{hint}") from None
        # A trainable bundle holds several signatures; subgraph 0 may be any of them, so use "infer".
        signatures = self._interpreter.get_signature_list() if hasattr(self._interpreter, "get_signature_list") else {}
        self._runner = self._interpreter.get_signature_runner("infer") if len(signatures) > 1 and "infer" in signatures else None
        if self._runner is not None:
            inputs = list(self._runner.get_input_details().values())
            outputs = list(self._runner.get_output_details().values())
            self._runner_io = (next(iter(self._runner.get_input_details())), next(iter(self._runner.get_output_details())))
        else:
            inputs = self._interpreter.get_input_details()
            outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(
                f"{self.model_path}: expected one input and one output tensor, found {len(inputs)} and {len(outputs)}"
            )
        self._in, self._out = inputs[0], outputs[0]
        self.input_spec, self.output_spec = self._describe()
        self._transform = input_transform(
            self.input_spec.normalization, self.input_spec.dtype, tensor_quantization(self._in)
        )
        self._dequantize = output_dequantizer(self.output_spec.dtype, tensor_quantization(self._out))
        self._output_is_float = self.output_spec.dtype == "float32"
        # Fast path for the common call, one uint8 image: a table lookup replaces validation and
        # normalization (uint8 cannot be non-finite, nor leave a [0, 255] raw range).
        shape = self.input_spec.shape
        self._single_shapes = {shape} | ({shape[:-1]} if len(shape) > 1 and shape[-1] == 1 else set())
        self._single_batch = (1, *shape)
        raw_range = self.input_spec.raw_range
        covers_uint8 = raw_range is None or (raw_range[0] <= 0 and raw_range[1] >= 255)
        passthrough = self.manifest is None and self.input_spec.dtype == "uint8"
        one_table = self._transform.lut is not None and self._transform.lut.ndim == 1
        self._uint8_lut = self._transform.lut if covers_uint8 and one_table and not passthrough else None
        signature = self._in.get("shape_signature", self._in["shape"])
        self._resizable = len(signature) > 0 and int(signature[0]) == -1
        self._batch = int(self._in["shape"][0])

    def __repr__(self) -> str:
        mode = self.manifest.mode if self.manifest else "raw .tflite"
        return f"Runtime({str(self.path)!r}, backend={self.backend!r}, mode={mode!r})"

    # -- loading -----------------------------------------------------------------------------

    def _read(self, path: Path) -> bytes:
        if path.is_dir() or path.name == MANIFEST_NAME:
            bundle_dir = path if path.is_dir() else path.parent
            self.manifest = read_manifest(bundle_dir)
            self.model_path = bundle_dir / self.manifest.model_file
            return read_model_bytes(bundle_dir, self.manifest)
        self.model_path = path
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{path}: no such bundle directory or .tflite file") from None
        except OSError as exc:
            raise BundleError(f"{path}: cannot read ({exc})") from None
        check_tflite_bytes(content, path)
        return content

    def _describe(self) -> tuple[InputSpec, OutputSpec]:
        """The I/O specs: the manifest's, checked against the model, or the model's own."""
        in_shape = tuple(int(d) for d in self._in["shape"][1:])
        out_shape = tuple(int(d) for d in self._out["shape"][1:])
        in_dtype, out_dtype = _dtype_name(self._in), _dtype_name(self._out)
        if self.manifest is None:
            return (
                InputSpec(
                    shape=in_shape,
                    dtype=in_dtype,
                    raw_dtype="float32",
                    raw_range=(-np.inf, np.inf),
                    normalization=Normalization(),
                    quantization=tensor_quantization(self._in),
                ),
                OutputSpec(
                    shape=out_shape,
                    dtype=out_dtype,
                    labels=tuple(str(i) for i in range(out_shape[-1] if out_shape else 1)),
                    kind="scores",
                    quantization=tensor_quantization(self._out),
                ),
            )
        m = self.manifest
        for what, spec, shape, dtype in (
            ("input", m.input, in_shape, in_dtype),
            ("output", m.output, out_shape, out_dtype),
        ):
            if spec.shape != shape or spec.dtype != dtype:
                raise BundleError(
                    f"{self.path / MANIFEST_NAME}: the manifest's {what} is {spec.dtype}{list(spec.shape)} "
                    f"but the model's is {dtype}{list(shape)}"
                )
        return m.input, m.output

    # -- inference ---------------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        return self.output_spec.labels

    def preprocess(self, x: object) -> tuple[np.ndarray, bool]:
        """Raw input -> ``(model-ready batch, was_single)``; raises :class:`InputError`."""
        lut = self._uint8_lut
        if lut is not None and type(x) is np.ndarray and x.dtype == np.uint8 and x.shape in self._single_shapes:
            return lut.take(x.reshape(self._single_batch)), True
        batch, single = as_batch(x, self.input_spec.shape)
        check_values(batch, self.input_spec.raw_range)
        if self.manifest is None and batch.dtype.name == self.input_spec.dtype:
            return batch, single  # a raw model given its own tensor dtype: already model-ready
        return self._transform(batch), single

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if self._runner is not None:  # the signature runner resizes its dynamic batch itself
            name_in, name_out = self._runner_io
            return self._runner(**{name_in: batch})[name_out]
        n = batch.shape[0]
        if n != self._batch:
            if not self._resizable:
                return np.concatenate([self._invoke_fixed(batch[i : i + self._batch]) for i in range(0, n, self._batch)])
            self._interpreter.resize_tensor_input(self._in["index"], [n, *self.input_spec.shape])
            self._interpreter.allocate_tensors()
            self._batch = n
        self._interpreter.set_tensor(self._in["index"], batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out["index"])

    def _invoke_fixed(self, chunk: np.ndarray) -> np.ndarray:
        """Run a model with a fixed batch size, padding the last chunk."""
        n = chunk.shape[0]
        if n < self._batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self._batch - n, axis=0)])
        self._interpreter.set_tensor(self._in["index"], chunk)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out["index"])[:n]

    def logits(self, x: object, check_finite: bool = True) -> np.ndarray:
        """The model's dequantized outputs, ``(N, classes)`` float32 (``(classes,)`` for one sample).

        Non-finite outputs raise :class:`BundleError` unless ``check_finite`` is off (export
        verification turns it off to count them).
        """
        batch, single = self.preprocess(x)
        out = self._dequantize(self._invoke(batch))
        # a dequantized integer output is finite by construction
        if check_finite and self._output_is_float and not np.isfinite(out).all():
            raise self._non_finite()
        return out[0] if single else out

    def predict(self, x: object) -> np.ndarray:
        """Class probabilities, ``(N, classes)`` float32, or ``(classes,)`` for one sample."""
        if self.output_spec.kind != "logits":
            return self.logits(x)
        probs = softmax(self.logits(x, check_finite=False))
        # NaN or +inf in a row of logits makes that whole row NaN, so one column tells
        if self._output_is_float:
            first = probs[..., 0]
            if not (math.isfinite(first) if first.ndim == 0 else np.isfinite(first).all()):
                raise self._non_finite()
        return probs

    def _non_finite(self) -> BundleError:
        return BundleError(f"{self.model_path}: the model produced non-finite outputs (a broken export?)")

    def classify(self, x: object, k: int = 3) -> list[Prediction]:
        """Top-``k`` labelled predictions for each sample (a list even for one sample)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        probs = np.atleast_2d(self.predict(x))
        k = min(k, probs.shape[-1])
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        labels = self.labels
        results = []
        for row, idx in zip(probs, order):
            top = tuple((labels[i], float(row[i])) for i in idx)
            results.append(Prediction(label=top[0][0], index=int(idx[0]), confidence=top[0][1], top=top))
        return results

    def describe(self) -> dict[str, Any]:
        """What is loaded, for ``edgeloop device info`` and logs."""
        info: dict[str, Any] = {
            "path": str(self.path),
            "backend": self.backend,
            "input": {"shape": list(self.input_spec.shape), "dtype": self.input_spec.dtype},
            "output": {"shape": list(self.output_spec.shape), "dtype": self.output_spec.dtype,
                       "kind": self.output_spec.kind},
            "labels": list(self.labels),
        }
        if self.manifest is not None:
            info.update(name=self.manifest.name, version=self.manifest.version, mode=self.manifest.mode,
                        sha256=self.manifest.sha256, size_bytes=self.manifest.size_bytes)
        return info

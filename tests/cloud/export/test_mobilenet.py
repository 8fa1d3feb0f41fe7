"""The realistic model: MobileNetV2 (alpha 0.35, 96x96x3, batch norm) exported int8 with uint8 input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def op_counts(tflite: bytes) -> Counter:
    """Builtin op names in the model, without delegates (so nothing is hidden inside a DELEGATE node)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=tflite, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return Counter(op["op_name"] for op in it._get_ops_details())


def test_mobilenet_v2_int8_folds_batch_norm_and_takes_raw_pixels(tmp_path: Path) -> None:
    import keras

    from cloud.export.exporter import ExportConfig, export_bundle, load_run
    from cloud.export.source import SourceOptions
    from cloud.export.verify import Tolerance
    from cloud.train.data import load_image_folder
    from cloud.train.shapes import ShapesConfig, make_shapes
    from device.runtime.runtime import Runtime
    from models.mobilenet import recalibrate_batch_norm
    from models.registry import get_model

    shapes = make_shapes(tmp_path / "shapes", ShapesConfig(per_class=8, size=96, classes=3))
    keras.utils.set_random_seed(0)
    model = get_model("mobilenet-v2").build((96, 96, 3), 3)
    recalibrate_batch_norm(model, load_image_folder(shapes).x.astype(np.float32) / 255.0)  # non-vanishing outputs
    keras_layers = Counter(type(layer).__name__ for layer in model.layers[1].layers)
    assert keras_layers["BatchNormalization"] == 52 and model.layers[1].name.startswith("mobilenetv2_0.35_96")
    model.save(tmp_path / "mnv2.keras")
    # random weights classify at chance by construction: verify the raw outputs as regression values
    run = load_run(tmp_path / "mnv2.keras", SourceOptions(data=str(shapes), task="regression"))
    assert run.splits.train.sample_shape == (96, 96, 3)
    bundle = tmp_path / "bundle"
    # a random network quantizes far worse than a trained one; this test is about the graph and the I/O
    v = export_bundle(run, bundle, ExportConfig(mode="int8", tolerance=Tolerance(max_rel_logit_diff=1.0)))
    assert v.passed and v.samples == 6
    ops = op_counts((bundle / "model.tflite").read_bytes())
    # every convolution is one conv op, with its batch norm folded in: no MUL, and ADD only for the
    # residual connections; the input normalization is folded into the QUANTIZE of the uint8 input
    assert ops["CONV_2D"] == keras_layers["Conv2D"] and ops["DEPTHWISE_CONV_2D"] == keras_layers["DepthwiseConv2D"]
    assert ops["ADD"] == keras_layers["Add"] and "MUL" not in ops
    assert set(ops) == {"QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "uint8" and manifest["inputs"][0]["quantization"] == {"scale": 1.0, "zero_point": 0}
    rt = Runtime(bundle)
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(next((shapes / "circle").iterdir())))
    assert image.shape == (96, 96, 3) and np.array_equal(rt.preprocess(image)[0][0], image)
    # the image goes in as it is (an identity uint8 input: no table pass over its pixels); the oracle is raw LiteRT
    from ai_edge_litert.interpreter import Interpreter

    raw = Interpreter(model_path=str(bundle / "model.tflite"))
    raw.allocate_tensors()
    raw.set_tensor(raw.get_input_details()[0]["index"], image[None])
    raw.invoke()
    out = raw.get_output_details()[0]
    scale, zero = out["quantization"]
    expected = (raw.get_tensor(out["index"]).astype(np.float32) - zero) * scale
    assert np.array_equal(rt.logits(image), expected[0])
    keras_out = np.asarray(model(image[None].astype(np.float32) / 255.0))[0]
    device = rt.logits(image)
    assert np.abs(keras_out).max() > 0.1  # a real signal to compare, not vanishing activations
    assert np.abs(device - keras_out).max() <= max(1.0, float(np.abs(keras_out).max()))

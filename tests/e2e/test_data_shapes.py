"""One end-to-end run per data shape: an RGB image folder, vectors from a CSV, sequences from an
.npz. Train (tiny, 2-3 epochs), export int8 with uint8 I/O, predict on the device side, match
Keras, and read the TFLite metadata back with MediaPipe's reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cloud.export.byom_helpers import blob_csv, colour_folder, sine_npz

pytestmark = pytest.mark.slow


def _train_export_predict(tmp_path: Path, model: str, data: Path, extra: list[str], epochs: int = 3) -> dict:
    from cloud import cli
    from cloud.export.exporter import load_run
    from cloud.export.metadata import read_metadata
    from device.runtime.runtime import Runtime

    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert cli.main(["train", "--model", model, "--data", str(data), "--epochs", str(epochs), "--patience", "0",
                     "--out", str(run), "--json", *extra]) == 0
    assert cli.main(["export", str(run), "--mode", "int8", "--io", "uint8", "--out", str(bundle), "--json"]) == 0
    loaded = load_run(run)
    test = loaded.splits.test
    rt = Runtime(bundle)
    device = rt.logits(test.x)  # dequantized outputs, raw values in
    keras = loaded.keras_test_logits
    scale = max(1.0, float(np.abs(keras).max()))
    assert np.abs(device - keras).max() / scale < 0.1
    assert (device.argmax(1) == keras.argmax(1)).mean() >= 0.95
    assert (keras.argmax(1) == test.y).mean() > 0.8  # the tiny model did learn
    top = rt.classify(test.x[:5], k=1)
    assert [p.index for p in top] == device[:5].argmax(1).tolist()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "uint8" and manifest["outputs"][0]["dtype"] == "uint8"
    md = read_metadata((bundle / "model.tflite").read_bytes())
    assert md["name"] == manifest["name"] and md["version"] == manifest["version"] and model in md["description"]
    out_md = md["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert out_md["name"] == "logits" and "softmax" in out_md["description"]
    assert out_md["associated_files"][0] == {"name": "labels.txt", "type": "TENSOR_AXIS_LABELS",
                                             "description": out_md["associated_files"][0]["description"]}
    assert md["labels"] == manifest["outputs"][0]["labels"] and md["packed_files"] == ["labels.txt"]
    in_md = md["subgraph_metadata"][0]["input_tensor_metadata"][0]
    norm = in_md["process_units"][0]
    assert norm["options_type"] == "NormalizationOptions"
    assert norm["options"] == {"mean": manifest["inputs"][0]["normalization"]["mean"],
                               "std": manifest["inputs"][0]["normalization"]["std"]}
    assert md["min_parser_version"] == "1.0.0"
    return {"manifest": manifest, "metadata": md, "runtime": rt, "run": loaded}


def test_rgb_image_folder(tmp_path: Path) -> None:
    folder = colour_folder(tmp_path / "colours", per_class=40, size=(12, 16))
    result = _train_export_predict(tmp_path, "cnn", folder, [])
    manifest, md, rt = result["manifest"], result["metadata"], result["runtime"]
    assert manifest["inputs"][0]["shape"] == [12, 16, 3] and manifest["inputs"][0]["layout"] == "image"
    assert manifest["inputs"][0]["quantization"] == {"scale": 1.0, "zero_point": 0}  # raw pixels are the input
    img = result["run"].splits.test.x[0]
    batch, _ = rt.preprocess(img)
    assert np.array_equal(batch[0], img)  # what the phone feeds is what the model takes
    in_md = md["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert in_md["content"]["content_properties"] == {"color_space": "RGB"}
    assert in_md["stats"] == {"max": [255.0], "min": [0.0]}


def test_vectors_from_csv(tmp_path: Path) -> None:
    csv = blob_csv(tmp_path / "blobs.csv")
    result = _train_export_predict(tmp_path, "mlp", csv, ["--label-column", "kind"])
    manifest = result["manifest"]
    assert manifest["inputs"][0]["shape"] == [5] and manifest["inputs"][0]["layout"] == "vector"
    assert manifest["outputs"][0]["labels"] == ["alpha", "beta", "gamma"]
    # uint8 I/O: the per-feature standardization is folded into the model, which takes raw values
    assert manifest["inputs"][0]["normalization"] == {"mean": [0.0], "std": [1.0]}
    run = result["run"]
    assert len(run.splits.train.normalization[0]) == 5


def test_sequences_from_npz(tmp_path: Path) -> None:
    npz = sine_npz(tmp_path / "waves.npz")
    result = _train_export_predict(tmp_path, "cnn1d", npz, ["--lr", "0.02", "--batch-size", "16"], epochs=6)
    manifest = result["manifest"]
    assert manifest["inputs"][0]["shape"] == [32, 2] and manifest["inputs"][0]["layout"] == "sequence"
    assert manifest["outputs"][0]["labels"] == ["slow", "medium", "fast"]

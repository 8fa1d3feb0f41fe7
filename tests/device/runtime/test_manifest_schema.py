"""The one manifest schema both sides agree on: v2 is written, v1 (every bundle shipped before) still loads."""

from __future__ import annotations

import copy
import json

import pytest

from device.errors import BundleError
from device.runtime.bundle import FORMAT, FORMAT_V1, parse_manifest, read_manifest
from tests.conftest import SHIPPED


def _v2() -> dict:
    return parse_manifest(json.loads((SHIPPED / "mnist-cnn-int8" / "manifest.json").read_text())).to_json()


def test_shipped_v1_bundles_load_as_classifiers() -> None:
    for name in ("mnist-cnn-int8", "mnist-cnn-float32"):
        raw = json.loads((SHIPPED / name / "manifest.json").read_text())
        assert raw["format"] == FORMAT_V1
        m = read_manifest(SHIPPED / name)
        assert m.task == "classification" and len(m.inputs) == len(m.outputs) == 1
        assert m.input is m.inputs[0] and m.output.labels == tuple(str(i) for i in range(10))
        assert m.input.normalization.mean == (0.0,) and m.input.normalization.std == (255.0,)
        assert m.input.layout == "image"


def test_v2_round_trips() -> None:
    data = _v2()
    assert data["format"] == FORMAT and data["task"] == "classification"
    assert data["inputs"][0]["normalization"] == {"mean": [0.0], "std": [255.0]}
    again = parse_manifest(data)
    assert again.to_json() == data
    assert again == parse_manifest(json.loads(json.dumps(data)))


def test_v2_multi_output_raw_model() -> None:
    data = _v2()
    data["task"] = "raw"
    data["inputs"][0].update(shape=[4, 3], layout="sequence", normalization={"mean": [1.0, 2.0, 3.0], "std": [2.0]})
    data["inputs"][0]["raw"] = {"dtype": "float32", "range": None}
    box = {"name": "boxes", "shape": [-1, 4], "dtype": "float32", "kind": "values", "labels": [], "quantization": None}
    data["outputs"][0]["labels"] = []
    data["outputs"].append(box)
    m = parse_manifest(data)
    assert [o.name for o in m.outputs] == ["output", "boxes"] and m.outputs[1].shape == (-1, 4)
    assert m.input.raw_range is None and m.input.normalization.mean == (1.0, 2.0, 3.0)
    assert parse_manifest(m.to_json()) == m


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["outputs"][0].update(labels=[]), "outputs[0].labels"),
        (lambda d: d.update(task="detection"), "task"),
        (lambda d: d["inputs"][0].update(layout="cube"), "inputs[0].layout"),
        (lambda d: d["inputs"][0]["normalization"].update(std=[1.0, 0.0]), "inputs[0].normalization"),
        (lambda d: d["inputs"][0]["normalization"].update(mean=[1.0, 2.0]), "inputs[0].normalization"),
        (lambda d: d["outputs"].append(copy.deepcopy(d["outputs"][0])), "names a tensor twice"),
        (lambda d: d["model"].update(size_bytes=-5), "model.size_bytes"),
        (lambda d: d["model"].update(file=".."), "model.file"),
        (lambda d: d["inputs"][0].update(quantization=None), "inputs[0].quantization"),
        (lambda d: d.update(format="edgeloop-bundle/3"), "format"),
    ],
)
def test_v2_errors_name_the_field(change, field: str) -> None:
    data = _v2()
    change(data)
    with pytest.raises(BundleError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_manifest(data)


def test_non_finite_metrics_are_written_as_null() -> None:
    """A NaN in free-form metrics (e.g. a 0/0 ratio) must not make the manifest unreadable JSON."""
    import dataclasses
    import math

    m = parse_manifest(_v2())
    m = dataclasses.replace(m, metrics={"rel": math.nan, "nested": [math.inf, 1.0]}, profile={"x": {"m": -math.inf}})
    text = json.dumps(m.to_json(), allow_nan=False)
    again = parse_manifest(json.loads(text))
    assert again.metrics == {"rel": None, "nested": [None, 1.0]} and again.profile == {"x": {"m": None}}

"""Manifest parsing and validation: pure, no interpreter."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.errors import BundleError
from device.runtime.bundle import Manifest, parse_manifest
from tests.conftest import SHIPPED


def shipped_manifest() -> dict:
    return json.loads((SHIPPED / "mnist-cnn-int8" / "manifest.json").read_text())


def test_shipped_manifest_round_trips() -> None:
    data = shipped_manifest()
    manifest = parse_manifest(data)
    assert isinstance(manifest, Manifest)
    assert manifest.input.shape == (28, 28, 1) and manifest.input.dtype == "int8"
    assert manifest.output.labels == tuple(str(i) for i in range(10))
    assert parse_manifest(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("format",), "other/9", "format"),
        (("model", "sha256"), "xyz", "model.sha256"),
        (("model", "file"), "../evil.tflite", "model.file"),
        (("input", "shape"), [28, -1], "input.shape"),
        (("input", "shape"), "28x28", "input.shape"),
        (("input", "dtype"), "float64", "input.dtype"),
        (("input", "normalization", "std"), 0, "input.normalization"),
        (("input", "raw", "range"), [255, 0], "input.raw.range"),
        (("output", "labels"), [], "output.labels"),
        (("output", "labels"), ["a", "b"], "output.labels"),
        (("output", "kind"), "softmaxed", "output.kind"),
        (("input", "quantization"), None, "input.quantization"),
        (("input", "quantization", "scale"), -1.0, "input.quantization"),
        (("mode",), "int4", "mode"),
        (("version",), 3, "version"),
    ],
)
def test_bad_field_names_the_field(path: tuple[str, ...], value: object, message: str) -> None:
    data = shipped_manifest()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(BundleError, match=message.replace(".", r"\.")):
        parse_manifest(data)


@pytest.mark.parametrize("field", ["name", "model", "input", "output", "created"])
def test_missing_field(field: str) -> None:
    data = shipped_manifest()
    del data[field]
    with pytest.raises(BundleError, match=field):
        parse_manifest(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json_is_rejected_cleanly(data: object) -> None:
    """Whatever the JSON, parsing either succeeds or raises BundleError: never another exception."""
    try:
        parse_manifest(data)
    except BundleError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_manifest_is_valid_or_bundle_error(data: st.DataObject) -> None:
    """Replace one leaf of a real manifest with arbitrary JSON: valid or BundleError, nothing else."""
    manifest = shipped_manifest()
    paths: list[tuple] = []

    def walk(node: object, prefix: tuple) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((*prefix, k))
                walk(v, (*prefix, k))

    walk(manifest, ())
    path = data.draw(st.sampled_from(paths))
    mutated = copy.deepcopy(manifest)
    node = mutated
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(json_values)
    try:
        parse_manifest(mutated)
    except BundleError:
        pass

"""TFLite metadata written and read back with MediaPipe's metadata library."""

from __future__ import annotations

from dataclasses import replace

import pytest

from device.runtime.bundle import read_manifest
from tests.conftest import SHIPPED


def test_embedded_metadata_reads_back_field_by_field() -> None:
    from cloud.export.metadata import ModelInfo, embed_metadata, read_metadata
    manifest = read_manifest(SHIPPED / "mnist-cnn-int8")
    plain = (SHIPPED / "mnist-cnn-int8" / "model.tflite").read_bytes()
    with pytest.raises(ValueError):
        read_metadata(plain)  # the shipped bundle predates metadata
    info = ModelInfo("mnist-cnn-int8", "a CNN for 28x28 digits", "7", "classification")
    tflite = embed_metadata(plain, info, manifest.input, manifest.output)
    md = read_metadata(tflite)
    assert (md["name"], md["description"], md["version"]) == ("mnist-cnn-int8", "a CNN for 28x28 digits", "7")
    assert md["min_parser_version"] == "1.0.0"
    sub = md["subgraph_metadata"][0]
    inp, = sub["input_tensor_metadata"]
    assert inp["name"] == "input" and inp["description"] == "28x28 grayscale image, int8 input"
    assert inp["content"] == {"content_properties_type": "ImageProperties",
                              "content_properties": {"color_space": "GRAYSCALE"}}
    assert inp["process_units"] == [{"options_type": "NormalizationOptions", "options": {"mean": [0.0], "std": [255.0]}}]
    out, = sub["output_tensor_metadata"]
    assert out["name"] == "logits" and out["description"].startswith("logits: apply softmax")
    assert out["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS",
                                        "description": "Labels for categories that the model can recognize."}]
    assert md["labels"] == list(manifest.output.labels) and md["packed_files"] == ["labels.txt"]
    # the model itself is untouched: metadata is a side buffer the interpreter ignores
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    a, b = Interpreter(model_content=plain), Interpreter(model_content=tflite)
    x = np.random.default_rng(0).integers(-128, 128, (1, 28, 28, 1), dtype=np.int8)
    outs = []
    for it in (a, b):
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]))
    assert np.array_equal(*outs)


def test_probabilities_scores_and_vectors_are_described() -> None:
    from cloud.export.metadata import ModelInfo, embed_metadata, read_metadata

    manifest = read_manifest(SHIPPED / "mnist-cnn-float32")
    plain = (SHIPPED / "mnist-cnn-float32" / "model.tflite").read_bytes()
    probs = embed_metadata(plain, ModelInfo("p", "d", "1", "classification"), manifest.input,
                           replace(manifest.output, kind="probabilities"))
    out = read_metadata(probs)["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert out["name"] == "probabilities" and "softmax applied in the model" in out["description"]
    inp = read_metadata(probs)["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert inp["stats"] == {"max": [1.0], "min": [0.0]}  # float input: the normalized range
    scores = embed_metadata(plain, ModelInfo("s", "d", "1", "multilabel"), manifest.input,
                            replace(manifest.output, kind="scores"))
    assert "sigmoid" in read_metadata(scores)["subgraph_metadata"][0]["output_tensor_metadata"][0]["description"]


def test_minimum_parser_version_follows_the_schema_features() -> None:
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    from cloud.export.metadata import minimum_parser_version

    def version(**kwargs) -> str:
        md = fb.ModelMetadataT()
        sub = fb.SubGraphMetadataT()
        tensor = fb.TensorMetadataT()
        if "file_type" in kwargs:
            f = fb.AssociatedFileT()
            f.name, f.type = "x.txt", kwargs["file_type"]
            tensor.associatedFiles = [f]
        if kwargs.get("input_units"):
            sub.inputProcessUnits = [fb.ProcessUnitT()]
        sub.inputTensorMetadata = [tensor]
        md.subgraphMetadata = [sub]
        b = flatbuffers.Builder(0)
        b.Finish(md.Pack(b), b"M001")
        return minimum_parser_version(bytes(b.Output()))

    assert version() == "1.0.0"
    assert version(file_type=fb.AssociatedFileType.TENSOR_AXIS_LABELS) == "1.0.0"
    assert version(file_type=fb.AssociatedFileType.VOCABULARY) == "1.0.1"
    assert version(input_units=True) == "1.1.0"
    assert version(file_type=fb.AssociatedFileType.SCANN_INDEX_FILE, input_units=True) == "1.4.0"


def test_embedding_is_byte_reproducible() -> None:
    """The packed labels.txt is a zip entry stamped with a time: fixed, so a seed gives the same bundle bytes."""
    import time

    from cloud.export.metadata import ModelInfo, embed_metadata

    manifest = read_manifest(SHIPPED / "mnist-cnn-int8")
    plain = (SHIPPED / "mnist-cnn-int8" / "model.tflite").read_bytes()
    info = ModelInfo("n", "d", "1", "classification")
    first = embed_metadata(plain, info, manifest.input, manifest.output)
    time.sleep(2.1)  # zip times have a 2-second resolution
    assert embed_metadata(plain, info, manifest.input, manifest.output) == first

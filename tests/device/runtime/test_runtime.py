"""device.Runtime against real bundles, with every kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from device import BundleError, ImageReadError, InputError, IntegrityError, Runtime
from device.runtime.images import read_image, read_input
from tests.conftest import EXAMPLES, SHIPPED

BUNDLES = ["mnist-cnn-int8", "mnist-cnn-float32"]


@pytest.fixture(scope="module")
def mnist_test():
    """The shipped bundles' own held-out test split of MNIST-5k (real images)."""
    from cloud.train.training import TrainConfig, make_splits

    manifest = json.loads((SHIPPED / "mnist-cnn-int8" / "manifest.json").read_text())
    return make_splits(TrainConfig.from_json(manifest["source"]["train_config"])).test


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_bundle_classifies_real_mnist(name: str, mnist_test) -> None:
    rt = Runtime(SHIPPED / name)
    assert rt.backend == "ai_edge_litert"
    x, y = mnist_test.x[:200], mnist_test.y[:200]
    preds = rt.predict(x)
    assert preds.shape == (200, 10)
    np.testing.assert_allclose(preds.sum(axis=1), 1.0, rtol=1e-5)
    assert (preds.argmax(axis=1) == y).mean() >= 0.93
    # the README's example digits, read from PNG files
    for label in range(10):
        image = read_image(EXAMPLES / f"digit-{label}.png", rt.input_spec.shape)
        assert rt.classify(image)[0].label == str(label)


def test_single_and_batch_agree_and_batch_resizes() -> None:
    rt = Runtime(SHIPPED / "mnist-cnn-float32", num_threads=1)
    x = np.stack([read_image(EXAMPLES / f"digit-{i}.png", (28, 28, 1)) for i in range(10)])
    batch = rt.predict(x)
    singles = np.stack([rt.predict(x[i]) for i in range(10)])
    np.testing.assert_allclose(batch, singles, rtol=1e-5, atol=1e-6)
    # a 2-D image without the channel axis, and a float array in raw units, give the same answer
    np.testing.assert_allclose(rt.predict(x[3, :, :, 0]), singles[3], rtol=1e-6)
    np.testing.assert_allclose(rt.predict(x[3].astype(np.float32)), singles[3], rtol=1e-6)


def test_int8_quantizes_and_dequantizes_from_tensor_params() -> None:
    """Runtime's int8 path equals a hand-written LiteRT loop using the tensors' own parameters."""
    from ai_edge_litert.interpreter import Interpreter

    rt = Runtime(SHIPPED / "mnist-cnn-int8")
    image = read_image(EXAMPLES / "digit-4.png", (28, 28, 1))
    it = Interpreter(model_path=str(SHIPPED / "mnist-cnn-int8" / "model.tflite"))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    q = np.clip(np.round(image.astype(np.float32) / 255.0 / s_in + z_in), -128, 127).astype(np.int8)
    it.set_tensor(inp["index"], q[None])
    it.invoke()
    s_out, z_out = out["quantization"]
    expected = (it.get_tensor(out["index"])[0].astype(np.float32) - z_out) * s_out
    np.testing.assert_allclose(rt.logits(image), expected, atol=s_out + 1e-6)


def test_top_k_is_sorted_with_labels() -> None:
    rt = Runtime(SHIPPED / "mnist-cnn-int8")
    pred = rt.classify(read_image(EXAMPLES / "digit-8.png", (28, 28, 1)), k=4)[0]
    probs = [p for _, p in pred.top]
    assert len(pred.top) == 4 and probs == sorted(probs, reverse=True)
    assert pred.label == pred.top[0][0] == "8" and pred.confidence == probs[0]
    assert {lab for lab, _ in pred.top} <= set(rt.labels)


def test_raw_tflite_is_described_from_the_model(tmp_path: Path) -> None:
    raw = tmp_path / "third_party.tflite"
    shutil.copy(SHIPPED / "mnist-cnn-float32" / "model.tflite", raw)
    rt = Runtime(raw)
    assert rt.manifest is None
    assert rt.input_spec.shape == (28, 28, 1) and rt.input_spec.dtype == "float32"
    assert rt.output_spec.kind == "scores" and rt.labels == tuple(str(i) for i in range(10))
    image = read_image(EXAMPLES / "digit-2.png", (28, 28, 1)).astype(np.float32) / 255.0
    assert rt.classify(image)[0].label == "2"


# -- bad bundles ---------------------------------------------------------------------------------


def copy_bundle(tmp_path: Path, name: str = "mnist-cnn-int8") -> Path:
    dst = tmp_path / name
    shutil.copytree(SHIPPED / name, dst)
    return dst


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle"):
        Runtime(tmp_path / "nope.tflite")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        Runtime(empty)


def test_missing_model_file(tmp_path: Path) -> None:
    b = copy_bundle(tmp_path)
    (b / "model.tflite").unlink()
    with pytest.raises(BundleError, match="missing"):
        Runtime(b)


def test_truncated_tflite_fails_sha_check(tmp_path: Path) -> None:
    b = copy_bundle(tmp_path)
    data = (b / "model.tflite").read_bytes()
    (b / "model.tflite").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="sha256"):
        Runtime(b)


def test_corrupted_tflite_fails_sha_check(tmp_path: Path) -> None:
    b = copy_bundle(tmp_path)
    data = bytearray((b / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match"):
        Runtime(b)


@pytest.mark.parametrize("cut", [0, 7, 8, 100, 50_000, -16])
def test_truncated_raw_tflite(tmp_path: Path, cut: int) -> None:
    data = (SHIPPED / "mnist-cnn-float32" / "model.tflite").read_bytes()
    raw = tmp_path / "cut.tflite"
    raw.write_bytes(data[:cut])
    with pytest.raises(BundleError):
        Runtime(raw)


def test_not_a_tflite(tmp_path: Path) -> None:
    raw = tmp_path / "model.tflite"
    raw.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(BundleError, match="TFL3"):
        Runtime(raw)


def test_malformed_manifest(tmp_path: Path) -> None:
    b = copy_bundle(tmp_path)
    (b / "manifest.json").write_text('{"format": "edgeloop-bundle/1", ')
    with pytest.raises(BundleError, match="malformed JSON"):
        Runtime(b)
    manifest = json.loads((SHIPPED / "mnist-cnn-int8" / "manifest.json").read_text())
    del manifest["input"]["normalization"]
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="input.normalization"):
        Runtime(b)


def test_manifest_that_lies_about_the_model(tmp_path: Path) -> None:
    """A manifest describing a float32 model next to the int8 .tflite is caught at load."""
    b = copy_bundle(tmp_path)
    manifest = json.loads((SHIPPED / "mnist-cnn-float32" / "manifest.json").read_text())
    int8 = json.loads((SHIPPED / "mnist-cnn-int8" / "manifest.json").read_text())
    manifest["model"] = int8["model"]
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest's input is float32"):
        Runtime(b)


# -- bad inputs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return Runtime(SHIPPED / "mnist-cnn-int8")


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((28, 27), np.uint8), "shape"),
        (np.zeros((3, 28, 28, 3), np.uint8), "shape"),
        (np.zeros((784,), np.uint8), "rank 1"),
        (np.zeros((1, 1, 28, 28, 1), np.uint8), "rank 5"),
        (np.full((28, 28), np.nan, np.float32), "non-finite"),
        (np.full((28, 28), np.inf, np.float32), "non-finite"),
        (np.zeros((28, 28), bool), "dtype"),
        (np.full((28, 28), "7"), "dtype"),
        (np.full((28, 28), 1000.0), r"raw values in \[0, 255\]"),
        (np.full((28, 28), -1.0), r"raw values in \[0, 255\]"),
    ],
)
def test_bad_inputs_raise_input_error(rt: Runtime, x: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        rt.predict(x)
    assert rt.classify(np.zeros((28, 28), np.uint8))[0].label in rt.labels  # still usable after the error


def test_unreadable_image(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(bad, (28, 28, 1))
    with pytest.raises(ImageReadError, match="no such image"):
        read_image(tmp_path / "missing.png", (28, 28, 1))
    with pytest.raises(InputError, match="unknown input type"):
        read_input(tmp_path / "notes.txt", (28, 28, 1))


def test_read_image_resizes_and_converts(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (56, 40), (255, 255, 255)).save(path)
    img = read_image(path, (28, 28, 1))
    assert img.shape == (28, 28, 1) and img.dtype == np.uint8 and img.min() >= 250
    assert read_image(path, (28, 28, 1), invert=True).max() <= 5


def test_threads_and_backend_choice() -> None:
    assert Runtime(SHIPPED / "mnist-cnn-int8", num_threads=2).backend == "ai_edge_litert"
    with pytest.raises(ValueError, match="num_threads"):
        Runtime(SHIPPED / "mnist-cnn-int8", num_threads=0)
    from device.errors import InterpreterUnavailableError

    with pytest.raises(InterpreterUnavailableError, match="unknown interpreter"):
        Runtime(SHIPPED / "mnist-cnn-int8", backend="onnx")


def test_non_finite_model_output_is_an_error_not_garbage(tmp_path: Path) -> None:
    """A model whose outputs are NaN (a broken export) raises instead of returning garbage."""
    pytest.importorskip("tensorflow")
    import keras
    import tensorflow as tf

    from device.runtime.native_log import quiet_native_output

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, np.full_like(bias, np.nan)])
    with quiet_native_output():
        (tmp_path / "nan.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    rt = Runtime(tmp_path / "nan.tflite")
    image = np.zeros((28, 28, 1), np.float32)
    for call in (rt.logits, rt.predict, rt.classify):
        with pytest.raises(BundleError, match="non-finite"):
            call(image)
    assert np.isnan(rt.logits(image, check_finite=False)).all()

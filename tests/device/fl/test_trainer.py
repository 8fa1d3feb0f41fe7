"""The device trainer (LiteRT only): partial batches, data sources, errors, weight patching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHIPPED

pytestmark = pytest.mark.slow


def _digits(n: int, start: int = 0):
    from cloud.train.data import load_dataset

    ds = load_dataset("digits")
    return ds.x[start : start + n], ds.y[start : start + n]


def test_fit_pads_and_masks_the_last_batch_like_keras_on_the_real_samples(trainable_bundle: Path, tmp_path: Path) -> None:
    """70 samples, batch 32: steps of 32, 32 and 6 real samples; Keras SGD on the same batches is the oracle."""
    import keras
    import tensorflow as tf

    from device.fl.trainer import DeviceTrainer, FitConfig, LocalData

    x, y = _digits(70)
    trainer = DeviceTrainer(trainable_bundle)
    start = trainer.get_weights()
    result = trainer.fit(LocalData(x, y), FitConfig(epochs=1, seed=5))
    assert result.num_samples == 70 and result.steps == 3

    model = keras.models.load_model(json.loads((trainable_bundle / "manifest.json").read_text())["source"]["checkpoint"],
                                    compile=False)
    model.set_weights(start)
    opt = keras.optimizers.SGD(trainer.spec.learning_rate)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    order = np.random.default_rng([5, 0]).permutation(70)
    xn = (x.astype(np.float32) / 16.0).astype(np.float32)
    for i in range(0, 70, 32):
        idx = order[i : i + 32]
        with tf.GradientTape() as tape:
            loss = loss_fn(y[idx], model(xn[idx], training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    for got, want in zip(result.weights, model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_evaluate_agrees_with_runtime_predictions(trainable_bundle: Path) -> None:
    from device import Runtime
    from device.fl.trainer import DeviceTrainer, LocalData

    x, y = _digits(300, start=1000)
    loss, acc = DeviceTrainer(trainable_bundle).evaluate(LocalData(x, y))
    probs = Runtime(trainable_bundle).predict(x)
    assert acc == pytest.approx(float((probs.argmax(1) == y).mean()))
    assert loss == pytest.approx(float(-np.log(probs[np.arange(300), y]).mean()), rel=1e-4)


def test_data_sources_npz_without_channel_and_image_folder(trainable_bundle: Path, tmp_path: Path) -> None:
    from device.errors import InputError
    from device.fl.trainer import load_local_data
    from device.runtime.bundle import read_manifest

    manifest = read_manifest(trainable_bundle)
    x, y = _digits(12)
    np.savez(tmp_path / "d.npz", x=x[..., 0], y=y)
    data = load_local_data(tmp_path / "d.npz", manifest)
    assert data.x.shape == (12, 8, 8, 1) and list(data.y) == list(y)

    for i, (img, label) in enumerate(zip(x, y)):
        folder = tmp_path / "imgs" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[..., 0]).save(folder / f"{i}.png")
    data = load_local_data(tmp_path / "imgs", manifest)
    assert len(data) == 12 and sorted(data.y) == sorted(y)

    (tmp_path / "imgs" / "cat").mkdir()
    with pytest.raises(InputError, match="not one of the bundle's labels"):
        load_local_data(tmp_path / "imgs", manifest)
    with pytest.raises(InputError, match="unknown data source scheme 'cloud'"):
        load_local_data("cloud:/var/edgeloop", manifest)


def test_collected_data_store_labelled_samples_train(trainable_bundle: Path, tmp_path: Path) -> None:
    """``store:PATH`` reads the device agent's SampleQueue: labelled samples only, the queue untouched."""
    from device.agent.collector import SampleQueue
    from device.errors import InputError
    from device.fl.trainer import DeviceTrainer, load_local_data
    from device.runtime.bundle import read_manifest

    x, y = _digits(6)
    queue = SampleQueue(tmp_path / "queue.db")
    for i in range(6):
        queue.put(x[i], prediction=0, confidence=0.5, model_version="1", label=int(y[i]) if i % 2 == 0 else None)
    manifest = read_manifest(trainable_bundle)
    data = load_local_data(f"store:{tmp_path / 'queue.db'}", manifest)
    np.testing.assert_array_equal(data.x, x[[0, 2, 4]])
    np.testing.assert_array_equal(data.y, y[[0, 2, 4]])
    assert DeviceTrainer(trainable_bundle).fit(data).num_samples == 3
    assert len(queue) == 6 and queue.counters()["sent"] == 0
    queue.close()
    with pytest.raises(InputError, match="no collected-data store"):
        load_local_data(f"store:{tmp_path / 'missing.db'}", manifest)


def test_non_trainable_bundle_is_a_clear_error() -> None:
    from device.errors import NotTrainableError
    from device.fl.trainer import DeviceTrainer

    with pytest.raises(NotTrainableError, match=r"not trainable .*edgeloop cloud export RUN --trainable"):
        DeviceTrainer(SHIPPED / "mnist-cnn-int8")


def test_rebundle_writes_new_weights_without_tensorflow(trainable_bundle: Path, tmp_path: Path) -> None:
    from device.errors import InputError
    from device.fl.reweight import rebundle
    from device.fl.trainer import DeviceTrainer
    from device.runtime.bundle import read_manifest

    trainer = DeviceTrainer(trainable_bundle)
    new = [w + np.float32(0.25) for w in trainer.get_weights()]
    manifest = rebundle(trainable_bundle, tmp_path / "r", new, version="7")
    assert manifest.version == "7" and manifest.sha256 != read_manifest(trainable_bundle).sha256
    for got, want in zip(DeviceTrainer(tmp_path / "r").get_weights(), new):
        np.testing.assert_array_equal(got, want)
    bad = [w.copy() for w in new]
    bad[1][0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        rebundle(trainable_bundle, tmp_path / "s", bad)
    with pytest.raises(InputError, match="shape"):
        rebundle(trainable_bundle, tmp_path / "s", [new[0][:-1], *new[1:]])


def test_trainable_manifest_section_roundtrip_and_validation(trainable_bundle: Path) -> None:
    from device.errors import BundleError
    from device.runtime.bundle import parse_manifest, read_manifest

    manifest = read_manifest(trainable_bundle)
    assert parse_manifest(manifest.to_json()) == manifest
    data = manifest.to_json()
    data["trainable"]["signatures"].remove("set_weights")
    with pytest.raises(BundleError, match="lacks set_weights"):
        parse_manifest(data)
    data = manifest.to_json()
    data["trainable"]["variables"][0]["shape"] = []
    with pytest.raises(BundleError, match=r"trainable.variables\[0\].shape"):
        parse_manifest(data)

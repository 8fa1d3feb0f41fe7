"""Trainable bundles: the hand-written backward pass in the .tflite against Keras, LiteRT against TF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHIPPED, run_cli

pytestmark = pytest.mark.slow


def _keras_steps(model, optimizer, batches):
    """The oracle: Keras' own gradients (GradientTape, sparse CE from logits) and optimizer."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    return [np.asarray(v) for v in model.trainable_variables]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_tflite_training_matches_keras_gradients_and_optimizers(optimizer: str, tmp_path: Path) -> None:
    """N steps in LiteRT (last batch padded and masked) == the same steps by Keras on the real samples."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from cloud.export.trainable import TrainableConfig, convert_trainable, split_layers
    from cloud.train.data import load_dataset
    from models.registry import get_model

    keras.utils.set_random_seed(3)
    model = get_model("mlp-small").build()
    config = TrainableConfig(optimizer=optimizer, train_batch=16, learning_rate=0.05 if optimizer == "sgd" else 0.01)
    tflite, _ = convert_trainable(split_layers(model), config, str(tmp_path))
    ds = load_dataset("digits")
    x, y = ds.normalized()[:60], ds.y[:60].astype(np.int32)
    interpreter = Interpreter(model_content=tflite)
    train = interpreter.get_signature_runner("train")
    batches = []
    for start in range(0, 60, 16):  # 16, 16, 16, then 12 real samples + 4 padding
        xb, yb = x[start : start + 16], y[start : start + 16]
        batches.append((xb, yb))
        mask = np.zeros(16, np.float32)
        mask[: len(xb)] = 1
        pad = 16 - len(xb)
        train(x=np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), np.float32)]),
              y=np.concatenate([yb, np.full(pad, 7, np.int32)]), mask=mask)
    opt = keras.optimizers.SGD(config.lr) if optimizer == "sgd" else keras.optimizers.Adam(config.lr)
    expected = _keras_steps(model, opt, batches)
    got = interpreter.get_signature_runner("get_weights")()
    for i, w in enumerate(expected):
        np.testing.assert_allclose(got[f"v{i:02d}"], w, atol=1e-5, rtol=0)
    initial = [w for w in split_layers(get_model("mlp-small").build()).weights()]
    assert not np.allclose(got["v00"], initial[0])  # it did train


def test_cnn_trains_its_dense_head_on_frozen_convolutions(tmp_path: Path) -> None:
    import keras

    from cloud.export.trainable import TrainableConfig, convert_trainable, split_layers, verify_trainable
    from device.runtime.bundle import TRAIN_SIGNATURES
    from models.registry import get_model

    keras.utils.set_random_seed(0)
    model = get_model("cnn").build((8, 8, 1), 10)
    layers = split_layers(model)
    assert [k for k, _, _ in layers.frozen] == ["conv", "pool", "conv", "pool", "flatten"]
    assert layers.variable_names() == ["dense_0/kernel", "dense_0/bias", "logits/kernel", "logits/bias"]
    config = TrainableConfig(optimizer="adam", train_batch=8, verify_steps=4)
    tflite, _ = convert_trainable(layers, config, str(tmp_path))
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 40)
    logits = np.asarray(model(x[:20]))
    v = verify_trainable(tflite, layers, config, x, y, logits, x[:20], y[:20])
    assert v.passed, v.failures
    assert v.max_weight_diff <= 1e-5 and v.roundtrip_exact
    assert set(TRAIN_SIGNATURES) <= set(__import__("ai_edge_litert.interpreter", fromlist=["x"]).Interpreter(
        model_content=tflite).get_signature_list())
    assert b"Flex" not in tflite  # built-in ops only: no Flex delegate op names in the flatbuffer


def test_export_writes_a_verified_trainable_bundle(trainable_bundle: Path, digits_run: Path) -> None:
    from cloud.export.exporter import load_run
    from device import Runtime
    from device.fl.reweight import read_weights
    from device.runtime.bundle import read_manifest, read_model_bytes

    manifest = read_manifest(trainable_bundle)
    spec = manifest.trainable
    assert spec is not None and spec.train_batch == 32 and spec.optimizer == "sgd"
    assert [v.layer for v in spec.variables] == ["dense_0/kernel", "dense_0/bias", "logits/kernel", "logits/bias"]
    assert manifest.metrics["passed"] and manifest.metrics["max_weight_diff"] <= 1e-5
    assert manifest.metrics["roundtrip_exact"]
    run = load_run(digits_run)
    # the weights stored at the recorded offsets are the Keras model's, bit for bit
    stored = read_weights(read_model_bytes(trainable_bundle, manifest), spec)
    for got, want in zip(stored, run.model.get_weights()):
        np.testing.assert_array_equal(got, want)
    # and the device Runtime runs its `infer` signature, raw pixels in, like Keras on the test split
    rt = Runtime(trainable_bundle)
    logits = rt.logits(run.splits.test.x)
    np.testing.assert_allclose(logits, run.keras_test_logits, atol=1e-4)


def test_export_cli_trainable_json(digits_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = run_cli("cloud", "export", str(digits_run), "--trainable", "--train-optimizer", "adam",
                     "--train-batch", "8", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["max_weight_diff"] <= 1e-5 and report["roundtrip_exact"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trainable"]["optimizer"] == "adam" and manifest["trainable"]["train_batch"] == 8


def test_old_bundles_still_parse_and_are_not_trainable() -> None:
    from device.runtime.bundle import parse_manifest, read_manifest

    manifest = read_manifest(SHIPPED / "mnist-cnn-int8")
    assert manifest.trainable is None
    assert "trainable" not in manifest.to_json()  # re-serialized old manifests are unchanged
    assert parse_manifest(manifest.to_json()) == manifest


def test_functional_models_split_and_unsupported_layers_are_named() -> None:
    # Regression: a functional model failed with "layer input_layer (InputLayer) is not supported",
    # naming the wrong layer.
    import keras

    from cloud.export.trainable import split_layers

    inp = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="relu", name="hidden")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    layers = split_layers(model)
    assert layers.input_shape == (6,) and layers.variable_names() == ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]
    after = keras.Model(inp, keras.layers.BatchNormalization(name="late_bn")(keras.layers.Dense(3, name="d")(inp)))
    with pytest.raises(ValueError, match=r"layer late_bn \(BatchNormalization\) after a Dense layer"):
        split_layers(after)
    a = keras.layers.Dense(4, name="branch_a")(inp)
    b = keras.layers.Dense(4, name="branch_b")(inp)
    joined = keras.Model(inp, keras.layers.Dense(2, name="head")(keras.layers.Add(name="join")([a, b])))
    with pytest.raises(ValueError, match=r"layer join \(Add\) takes branch_a \(Dense\), branch_b \(Dense\)"):
        split_layers(joined)
    soft = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="probs")(inp))
    with pytest.raises(ValueError, match=r"layer probs \(Dense\): activation 'softmax'"):
        split_layers(soft)


@pytest.mark.slow
def test_frozen_backbone_with_batch_norm_and_a_trainable_dense_head(tmp_path: Path) -> None:
    """The on-device personalization pattern: a frozen feature extractor (strided conv, batch norm,
    ReLU6, depthwise conv, global pooling: MobileNetV2's ops) baked in as constants, a dense head trained."""
    import keras

    from cloud.export.trainable import TrainableConfig, convert_trainable, split_layers, verify_trainable

    keras.utils.set_random_seed(0)
    bb_in = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(bb_in)
    bn = keras.layers.BatchNormalization()
    h = keras.layers.ReLU(6.0)(bn(h))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.DepthwiseConv2D(3, padding="same")(h))
    backbone = keras.Model(bb_in, h, name="backbone")
    bn.set_weights([np.full(8, 1.5, np.float32), np.full(8, 0.1, np.float32), np.full(8, 0.2, np.float32),
                    np.full(8, 2.0, np.float32)])  # non-trivial statistics, so folding them wrongly shows
    backbone.trainable = False
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(3, name="head_1")(keras.layers.Dense(16, activation="relu", name="head_0")(backbone(inp)))
    model = keras.Model(inp, out)
    layers = split_layers(model)
    assert [(k, n) for k, n, _ in layers.frozen] == [("keras", "backbone")]
    assert layers.variable_names() == ["head_0/kernel", "head_0/bias", "head_1/kernel", "head_1/bias"]
    config = TrainableConfig(train_batch=8, verify_steps=3)
    tflite, _ = convert_trainable(layers, config, str(tmp_path))
    rng = np.random.default_rng(0)
    x, y = rng.random((24, 16, 16, 3), dtype=np.float32), rng.integers(0, 3, 24)
    v = verify_trainable(tflite, layers, config, x, y, np.asarray(model(x[:16])), x[:16], y[:16])
    assert v.passed, v.failures
    assert v.max_abs_logit_diff < 1e-4 and v.max_weight_diff <= 1e-5 and v.roundtrip_exact

"""Tiny .tflite models made with TensorFlow for the runtime tests, each with a numpy oracle.

Built from ``tf.function``s (no Keras), so each converts in about a second and its outputs are
known in closed form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device.runtime.bundle import FORMAT, InputSpec, Manifest, Normalization, OutputSpec, sha256_bytes, write_bundle


def _quiet():
    from device.runtime.native_log import quiet_native_output

    return quiet_native_output()


def two_in_two_out(path: Path, batch: int | None = None) -> Path:
    """Inputs ``a`` (4,) and ``b`` (3,); outputs ``total`` = 2·Σa + Σb (1,) and ``joined`` = [a, b] (7,).

    ``batch`` None: a dynamic batch (-1); an int: that fixed batch size.
    """
    import tensorflow as tf

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([batch, 4], tf.float32, name="a"),
                                      tf.TensorSpec([batch, 3], tf.float32, name="b")])
        def serve(self, a, b):
            total = 2.0 * tf.reduce_sum(a, axis=1, keepdims=True) + tf.reduce_sum(b, axis=1, keepdims=True)
            return {"total": total, "joined": tf.concat([a, b], axis=1)}

    module = Two()
    with _quiet():
        content = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module).convert()
    path.write_bytes(content)
    return path


def two_in_two_out_oracle(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    return {"total": 2 * a.sum(-1, keepdims=True) + b.sum(-1, keepdims=True), "joined": np.concatenate([a, b], -1)}


def two_signatures(path: Path, tmp: Path) -> Path:
    """Signatures ``double`` (x·2) and ``square`` (x²), x of shape (N, 5)."""
    import tensorflow as tf

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="x")])
        def double(self, x):
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="x")])
        def square(self, x):
            return {"y": x * x}

    module = Two()
    saved = tmp / "saved"
    with _quiet():
        tf.saved_model.save(module, str(saved), signatures={"double": module.double.get_concrete_function(),
                                                             "square": module.square.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["double", "square"])
        path.write_bytes(converter.convert())
    return path


def dense(features: int, outputs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(features, outputs)).astype(np.float32), rng.normal(size=outputs).astype(np.float32)


def vector_model(path: Path, features: int = 20, outputs: int = 3, seed: int = 0) -> Path:
    """A linear layer ``x @ W + b`` on a (features,) sensor vector, dynamic batch (W, b from :func:`dense`)."""
    import tensorflow as tf

    w, b = dense(features, outputs, seed)

    class Linear(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, features], tf.float32, name="features")])
        def serve(self, x):
            return {"y": tf.matmul(x, tf.constant(w)) + tf.constant(b)}

    module = Linear()
    with _quiet():
        path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()],
                                                                          module).convert())
    return path


def vector_bundle(out: Path, model: Path, task: str, kind: str, mean: float = 0.0, std: float = 1.0) -> Path:
    """A v2 bundle around :func:`vector_model`: raw sensor readings with no range, ``(x - mean) / std``."""
    content = model.read_bytes()
    labels = ("walk", "run", "sit") if task in ("classification", "multilabel") else ()
    manifest = Manifest(
        name=f"sensor-{task}", version="1", created="2026-01-01T00:00:00Z", mode="float32",
        inputs=(InputSpec(shape=(20,), dtype="float32", raw_dtype="float32", raw_range=None,
                          normalization=Normalization(mean, std), name="features"),),
        outputs=(OutputSpec(shape=(3,), dtype="float32", labels=labels, kind=kind, name="y"),),
        sha256=sha256_bytes(content), size_bytes=len(content), task=task, format=FORMAT,
    )
    return write_bundle(out, content, manifest)

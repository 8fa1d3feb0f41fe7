"""A .tflite that trains itself on the device, from built-in ops only.

The official on-device-training recipe (``tf.GradientTape`` in a ``train`` signature)
emits gradient kernels that only the Flex delegate has, and no LiteRT wheel ships Flex.
So the module here writes its backward pass by hand: softmax cross-entropy, the ReLU
gradient as a mask, and the dense-layer gradients as matmuls. Every op is a TFLite
builtin (FULLY_CONNECTED/BATCH_MATMUL, SOFTMAX, ONE_HOT, SUM, …), with a fixed train batch.

Signatures (all float32 unless said):

* ``infer(x[N, *shape]) -> logits[N, classes]``
* ``train(x[B, *shape], y[B] int32, mask[B]) -> loss``: one optimizer step on the masked
  mean loss; ``mask`` is 1 for real samples and 0 for padding, so a last partial batch
  is exact
* ``evaluate(x[B, *shape], y[B] int32, mask[B]) -> loss_sum, correct``
* ``get_weights() -> v00, v01, …`` and ``set_weights(v00, v01, …)`` (also resets the
  optimizer state, so each federated round starts clean)

The MLP trains fully; the CNN trains its dense head on frozen convolutions, which are
baked in as constants. SGD and Adam run in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}
SIGNATURES = ("infer", "train", "evaluate", "get_weights", "set_weights")
ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-7


@dataclass(frozen=True)
class TrainableConfig:
    """How the exported model trains on the device."""

    optimizer: str = "sgd"
    learning_rate: float | None = None  # None: DEFAULT_LR[optimizer]
    train_batch: int = 32
    verify_steps: int = 5
    tolerance: float = 1e-5  # max |Δ weight| after verify_steps, LiteRT vs TensorFlow

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"trainable optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.train_batch < 1 or self.verify_steps < 1:
            raise ValueError("train_batch and verify_steps must be >= 1")
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {self.tolerance}")

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.optimizer]


@dataclass(frozen=True)
class Layers:
    """A registry model split into a frozen feature extractor and a trainable dense stack."""

    input_shape: tuple[int, ...]
    frozen: tuple[tuple[str, str, dict[str, Any]], ...]  # (kind, layer name, constants/options)
    dense: tuple[tuple[str, np.ndarray, np.ndarray, bool], ...]  # (layer name, kernel, bias, relu)
    num_classes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_classes", int(self.dense[-1][1].shape[1]))

    def variable_names(self) -> list[str]:
        return [f"{name}/{part}" for name, *_ in self.dense for part in ("kernel", "bias")]

    def weights(self) -> list[np.ndarray]:
        return [np.asarray(a, np.float32) for _, k, b, _ in self.dense for a in (k, b)]


def _chain(model: Any) -> list[Any]:
    """The model's layers in order, without its InputLayer; a functional model must be a chain
    (each layer takes the previous one's output), as a Sequential is."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if type(model).__name__ == "Sequential":
        return layers
    for prev, layer in zip([None, *layers[:-1]], layers):
        inbound = getattr(layer, "_inbound_nodes", [])
        for node in inbound:
            parents = [t._keras_history[0] for t in node.input_tensors if hasattr(t, "_keras_history")]
            parents = [p for p in parents if type(p).__name__ != "InputLayer"]
            if len(parents) > 1 or (prev is not None and parents and parents[0] is not prev):
                names = ", ".join(f"{p.name} ({type(p).__name__})" for p in parents)
                raise ValueError(f"layer {layer.name} ({type(layer).__name__}) takes {names}: a trainable export "
                                 "needs a chain of layers (a frozen feature extractor, then a dense head)")
    return layers


def split_layers(model: Any) -> Layers:
    """Walk a Sequential or a chain-shaped functional model: a frozen feature extractor, then a
    trainable dense head.

    Before the first Dense layer, convolutions, max pooling and flatten are written out as
    constants; any other layer, including a whole nested model (a MobileNetV2 backbone), is
    kept frozen as it is, its weights baked in at conversion. The Dense layers train.
    """
    frozen: list[tuple[str, str, dict[str, Any]]] = []
    dense: list[tuple[str, np.ndarray, np.ndarray, bool]] = []
    for layer in _chain(model):
        kind = type(layer).__name__
        act = getattr(getattr(layer, "activation", None), "__name__", "linear")
        if kind == "Dense":
            if act not in ("relu", "linear"):
                raise ValueError(f"layer {layer.name} (Dense): activation {act!r} is not supported in a trainable "
                                 "export (relu or linear; the softmax is in the loss)")
            kernel, bias = layer.get_weights()
            dense.append((layer.name, kernel, bias, act == "relu"))
        elif dense:
            raise ValueError(f"layer {layer.name} ({kind}) after a Dense layer: only a dense head can be trained")
        elif kind == "Conv2D" and act in ("relu", "linear") and tuple(layer.strides) == (1, 1) \
                and tuple(layer.dilation_rate) == (1, 1) and layer.use_bias:
            kernel, bias = layer.get_weights()
            frozen.append(("conv", layer.name, {"kernel": kernel, "bias": bias, "padding": layer.padding.upper(),
                                                "relu": act == "relu"}))
        elif kind == "MaxPooling2D":
            frozen.append(("pool", layer.name, {"size": tuple(layer.pool_size), "strides": tuple(layer.strides),
                                                "padding": layer.padding.upper()}))
        elif kind == "Flatten":
            frozen.append(("flatten", layer.name, {}))
        elif kind in ("Dropout", "InputLayer"):
            continue  # identity at inference
        else:
            frozen.append(("keras", layer.name, {"layer": layer}))
    if not dense:
        raise ValueError(f"model {model.name} has no Dense layer to train")
    return Layers(tuple(int(d) for d in model.input_shape[1:]), tuple(frozen), tuple(dense))


def _constant_function(layer: Any, layers: Layers, index: int) -> Any:
    """``layer`` in inference mode as a TF function whose weights are constants (frozen, not variables)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    shape = tuple(layers.input_shape)
    probe = np.zeros((1, *shape), np.float32)
    for kind, _, opts in layers.frozen[:index]:  # the shape this layer receives
        if kind == "keras":
            probe = np.asarray(opts["layer"](probe, training=False))
        elif kind == "conv":
            probe = tf.nn.conv2d(probe, opts["kernel"], strides=1, padding=opts["padding"]).numpy()
        elif kind == "pool":
            probe = tf.nn.max_pool2d(probe, opts["size"], opts["strides"], opts["padding"]).numpy()
        else:
            probe = probe.reshape(1, -1)
    spec = tf.TensorSpec([None, *probe.shape[1:]], tf.float32)
    concrete = tf.function(lambda x: layer(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)

    def call(x: Any) -> Any:
        out = frozen(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    return call


def build_module(layers: Layers, config: TrainableConfig, weights: Sequence[np.ndarray] | None = None) -> Any:
    """The ``tf.Module`` with the five signatures; ``weights`` overrides the initial dense weights."""
    import tensorflow as tf

    init = list(weights) if weights is not None else layers.weights()
    shapes = [w.shape for w in init]
    names = [f"v{i:02d}" for i in range(len(init))]
    lr, batch, shape = float(config.lr), config.train_batch, layers.input_shape
    adam = config.optimizer == "adam"
    relus = [relu for *_, relu in layers.dense]
    frozen = [(kind, {k: tf.constant(v) if isinstance(v, np.ndarray) else v for k, v in opts.items()})
              for kind, _, opts in layers.frozen]
    frozen = [(kind, {"fn": _constant_function(o["layer"], layers, i)} if kind == "keras" else o)
              for i, (kind, o) in enumerate(frozen)]

    class TrainableModel(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="edgeloop_trainable")
            self.params = [tf.Variable(np.asarray(w, np.float32), name=n) for w, n in zip(init, names)]
            if adam:
                self.m = [tf.Variable(tf.zeros(s), name=f"m{i:02d}") for i, s in enumerate(shapes)]
                self.v = [tf.Variable(tf.zeros(s), name=f"s{i:02d}") for i, s in enumerate(shapes)]
                self.step = tf.Variable(0.0, name="step")

        def features(self, x: Any) -> Any:
            for kind, o in frozen:
                if kind == "conv":
                    x = tf.nn.conv2d(x, o["kernel"], strides=1, padding=o["padding"]) + o["bias"]
                    x = tf.maximum(x, 0.0) if o["relu"] else x
                elif kind == "pool":
                    x = tf.nn.max_pool2d(x, o["size"], o["strides"], o["padding"])
                elif kind == "keras":
                    x = o["fn"](x)
                else:
                    x = tf.reshape(x, [tf.shape(x)[0], -1])
            if len(x.shape) != 2:
                x = tf.reshape(x, [tf.shape(x)[0], -1])
            return x

        def forward(self, x: Any) -> tuple[Any, list[Any], list[Any]]:
            """Logits, each dense layer's input, and each hidden pre-activation (for the backward pass)."""
            a = self.features(x)
            inputs, pre = [], []
            for i, relu in enumerate(relus):
                inputs.append(a)
                z = tf.matmul(a, self.params[2 * i]) + self.params[2 * i + 1]
                pre.append(z)
                a = tf.maximum(z, 0.0) if relu else z
            return a, inputs, pre

        def loss_terms(self, logits: Any, y: Any) -> tuple[Any, Any]:
            """Per-sample cross-entropy and softmax, written out (no SparseSoftmaxCrossEntropy kernel)."""
            shifted = logits - tf.reduce_max(logits, axis=1, keepdims=True)
            log_probs = shifted - tf.math.log(tf.reduce_sum(tf.exp(shifted), axis=1, keepdims=True))
            onehot = tf.one_hot(y, layers.num_classes, dtype=tf.float32)
            return -tf.reduce_sum(onehot * log_probs, axis=1), onehot

        @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="x")])
        def infer(self, x: Any) -> dict[str, Any]:
            return {"logits": self.forward(x)[0]}

        @tf.function(input_signature=[tf.TensorSpec([batch, *shape], tf.float32, name="x"),
                                      tf.TensorSpec([batch], tf.int32, name="y"),
                                      tf.TensorSpec([batch], tf.float32, name="mask")])
        def train(self, x: Any, y: Any, mask: Any) -> dict[str, Any]:
            logits, inputs, pre = self.forward(x)
            ce, onehot = self.loss_terms(logits, y)
            count = tf.maximum(tf.reduce_sum(mask), 1.0)
            loss = tf.reduce_sum(ce * mask) / count
            # d(mean masked CE)/d logits = (softmax - onehot) * mask / count
            dz = (tf.nn.softmax(logits) - onehot) * tf.expand_dims(mask / count, 1)
            grads: list[Any] = [None] * len(self.params)
            for i in reversed(range(len(relus))):
                grads[2 * i] = tf.matmul(inputs[i], dz, transpose_a=True)
                grads[2 * i + 1] = tf.reduce_sum(dz, axis=0)
                if i > 0:
                    da = tf.matmul(dz, self.params[2 * i], transpose_b=True)
                    dz = da * tf.cast(pre[i - 1] > 0.0, tf.float32)  # ReLU's gradient
            if adam:
                t = self.step + 1.0
                self.step.assign(t)
                scale = lr * tf.sqrt(1.0 - tf.pow(ADAM_BETA2, t)) / (1.0 - tf.pow(ADAM_BETA1, t))
                for p, g, m, v in zip(self.params, grads, self.m, self.v):
                    m.assign(ADAM_BETA1 * m + (1.0 - ADAM_BETA1) * g)
                    v.assign(ADAM_BETA2 * v + (1.0 - ADAM_BETA2) * g * g)
                    p.assign_sub(scale * m / (tf.sqrt(v) + ADAM_EPSILON))
            else:
                for p, g in zip(self.params, grads):
                    p.assign_sub(lr * g)
            return {"loss": loss}

        @tf.function(input_signature=[tf.TensorSpec([batch, *shape], tf.float32, name="x"),
                                      tf.TensorSpec([batch], tf.int32, name="y"),
                                      tf.TensorSpec([batch], tf.float32, name="mask")])
        def evaluate(self, x: Any, y: Any, mask: Any) -> dict[str, Any]:
            logits = self.forward(x)[0]
            ce, _ = self.loss_terms(logits, y)
            hit = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.float32)
            return {"loss_sum": tf.reduce_sum(ce * mask), "correct": tf.reduce_sum(hit * mask)}

        @tf.function(input_signature=[])
        def get_weights(self) -> dict[str, Any]:
            return {n: tf.identity(p) for n, p in zip(names, self.params)}

        @tf.function(input_signature=[tf.TensorSpec(s, tf.float32, name=n) for s, n in zip(shapes, names)])
        def set_weights(self, *values: Any) -> dict[str, Any]:
            for p, v in zip(self.params, values):
                p.assign(v)
            if adam:
                self.step.assign(0.0)
                for m, v in zip(self.m, self.v):
                    m.assign(tf.zeros_like(m))
                    v.assign(tf.zeros_like(v))
            return {"count": tf.constant(len(values), tf.int32)}

    return TrainableModel()


def convert_module(module: Any, workdir: str) -> bytes:
    """SavedModel of our own ``tf.Module`` → .tflite, TFLite builtins only (no Flex, no Select TF ops)."""
    import tensorflow as tf

    from device.runtime.native_log import quiet_native_output

    signatures = {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}
    tf.saved_model.save(module, workdir, signatures=signatures)
    converter = tf.lite.TFLiteConverter.from_saved_model(workdir, signature_keys=list(SIGNATURES))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_enable_resource_variables = True
    with quiet_native_output():
        return bytes(converter.convert())


MARKER_SEED = 0x7EA1  # marker weights must be unique byte strings in the flatbuffer


@dataclass(frozen=True)
class TrainableVerification:
    """How the exported .tflite compared with TensorFlow running the same module."""

    steps: int
    max_weight_diff: float  # after ``steps`` train steps, LiteRT vs TF
    roundtrip_exact: bool  # set_weights then get_weights returns the same bits
    max_abs_logit_diff: float  # ``infer`` vs the Keras model, test split
    keras_accuracy: float
    tflite_accuracy: float
    size_bytes: int
    tolerance: float
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "failures": list(self.failures), "passed": self.passed}


def locate_variables(tflite: bytes, markers: Sequence[np.ndarray]) -> list[int]:
    """Byte offset of each marker array's initial value; each must occur exactly once."""
    offsets = []
    for i, marker in enumerate(markers):
        raw = np.ascontiguousarray(marker, dtype="<f4").tobytes()
        at = tflite.find(raw)
        if at < 0 or tflite.find(raw, at + 1) >= 0:
            raise ValueError(f"variable {i}: its initial value is not stored exactly once in the .tflite")
        offsets.append(at)
    return offsets


def convert_trainable(layers: Layers, config: TrainableConfig, workdir: str) -> tuple[bytes, list[int]]:
    """Convert once with unique marker weights, find where each variable lives, then write the real ones."""
    from device.fl.reweight import patch_weights
    from device.runtime.bundle import TrainableSpec, VariableSpec

    rng = np.random.default_rng(MARKER_SEED)
    markers = [rng.uniform(1.0, 2.0, w.shape).astype(np.float32) for w in layers.weights()]
    tflite = convert_module(build_module(layers, config, markers), workdir)
    offsets = locate_variables(tflite, markers)
    spec = TrainableSpec(config.train_batch, config.optimizer, config.lr, SIGNATURES,
                         tuple(VariableSpec(f"v{i:02d}", n, m.shape, o)
                               for i, (n, m, o) in enumerate(zip(layers.variable_names(), markers, offsets))))
    return patch_weights(tflite, spec, layers.weights()), offsets


def verify_trainable(tflite: bytes, layers: Layers, config: TrainableConfig, x_train: np.ndarray,
                     y_train: np.ndarray, keras_logits: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> TrainableVerification:
    """Run the .tflite in LiteRT against the same module in TensorFlow (inputs normalized float32)."""
    from ai_edge_litert.interpreter import Interpreter

    failures: list[str] = []
    names = [f"v{i:02d}" for i in range(len(layers.weights()))]
    interpreter = Interpreter(model_content=tflite)
    got = interpreter.get_signature_runner("get_weights")()
    if not all(np.array_equal(got[n], w) for n, w in zip(names, layers.weights())):
        failures.append("the .tflite's initial weights differ from the Keras model's")
    logits = interpreter.get_signature_runner("infer")(x=x_test)["logits"]
    max_logit = float(np.abs(logits - keras_logits).max()) if np.isfinite(logits).all() else float("inf")
    if not max_logit <= 1e-4 * max(1.0, float(np.abs(keras_logits).max())):
        failures.append(f"infer disagrees with Keras: max |Δ logit| {max_logit:.2e}")

    # N train steps on real batches, the last one partial (masked), in both runtimes
    b = config.train_batch
    reference = build_module(layers, config)
    train = interpreter.get_signature_runner("train")
    for step in range(config.verify_steps):
        idx = np.arange(step * b, (step + 1) * b) % len(x_train)
        mask = np.ones(b, np.float32)
        if step == config.verify_steps - 1 and b > 1:
            mask[b // 2 :] = 0.0
        x, y = x_train[idx].astype(np.float32), y_train[idx].astype(np.int32)
        train(x=x, y=y, mask=mask)
        reference.train(x, y, mask)
    got = interpreter.get_signature_runner("get_weights")()
    diff = max(float(np.abs(got[n] - p.numpy()).max()) for n, p in zip(names, reference.params))
    if not diff <= config.tolerance:
        failures.append(f"{config.verify_steps} train steps: LiteRT and TensorFlow weights differ by {diff:.2e} "
                        f"> {config.tolerance:.0e}")

    probe = [np.random.default_rng(1).standard_normal(w.shape).astype(np.float32) for w in layers.weights()]
    interpreter.get_signature_runner("set_weights")(**dict(zip(names, probe)))
    back = interpreter.get_signature_runner("get_weights")()
    exact = all(np.array_equal(back[n], w) for n, w in zip(names, probe))
    if not exact:
        failures.append("set_weights then get_weights does not return the same weights")
    keras_acc = float((keras_logits.argmax(1) == y_test).mean())
    tfl_acc = float((logits.argmax(1) == y_test).mean())
    return TrainableVerification(config.verify_steps, diff, exact, max_logit, keras_acc, tfl_acc, len(tflite),
                                 config.tolerance, tuple(failures))


def export_trainable(run: Any, out_dir: Any, config: TrainableConfig, name: str | None = None,
                     version: str = "1", created: str | None = None) -> TrainableVerification:
    """Convert a trained run (:class:`cloud.export.exporter.TrainedRun`) to a verified trainable bundle at ``out_dir``.

    Raises :class:`ExportVerificationError` and writes nothing when verification fails.
    """
    import shutil
    import tempfile
    from dataclasses import asdict
    from datetime import UTC, datetime
    from pathlib import Path

    from cloud.errors import ExportVerificationError
    from cloud.export.exporter import _replace_dir, weights_sha256
    from device.runtime.bundle import (
        InputSpec,
        Manifest,
        Normalization,
        OutputSpec,
        TrainableSpec,
        VariableSpec,
        sha256_bytes,
        write_bundle,
    )

    layers = split_layers(run.model)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="edgeloop-trainable-") as work:
        tflite, offsets = convert_trainable(layers, config, work)
    train, test = run.splits.train, run.splits.test
    verification = verify_trainable(tflite, layers, config, train.normalized(), train.y, run.keras_test_logits,
                                    test.normalized(), test.y)
    if not verification.passed:
        raise ExportVerificationError(f"trainable export of {run.checkpoint} failed verification: "
                                      + "; ".join(verification.failures) + f". Nothing was written to {out}.")
    mean, std = train.normalization
    spec = TrainableSpec(
        config.train_batch, config.optimizer, config.lr, SIGNATURES,
        tuple(VariableSpec(f"v{i:02d}", n, tuple(w.shape), o)
              for i, (n, w, o) in enumerate(zip(layers.variable_names(), layers.weights(), offsets))),
        frozen=tuple(n for kind, n, _ in layers.frozen if kind != "flatten"),
    )
    manifest = Manifest(
        name=name or f"{Path(run.config.data).stem}-{run.config.model}-trainable",
        version=version,
        created=created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        mode="float32",
        inputs=(InputSpec(shape=layers.input_shape, dtype="float32", raw_dtype=train.x.dtype.name,
                          raw_range=train.raw_range, normalization=Normalization(mean, std)),),
        outputs=(OutputSpec(shape=(layers.num_classes,), dtype="float32", labels=train.labels, kind="logits"),),
        sha256=sha256_bytes(tflite),
        size_bytes=len(tflite),
        metrics=verification.to_json(),
        source={"checkpoint": str(run.checkpoint), "weights_sha256": weights_sha256(run.model),
                "train_config": asdict(run.config)},
        trainable=spec,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        write_bundle(staging, tflite, manifest)
        _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return verification

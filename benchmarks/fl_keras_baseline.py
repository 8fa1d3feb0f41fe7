"""The benchmark's baseline ClientApp: Flower's usual Keras/TensorFlow client.

Shipped inside the Flower App by ``benchmarks/federated_deploy.py``; SuperExec starts it in a fresh
process each round, so every round re-imports TensorFlow. Same model (``mlp-small``), data, SGD
learning rate, batch size and epoch as the LiteRT client.
"""

from __future__ import annotations

import os
import resource
import sys
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from device.runtime.bundle import read_manifest
    from models.registry import get_model

    manifest = read_manifest(context.node_config["bundle"])
    with np.load(context.node_config["data"]) as data:
        x, y = data["x"].astype(np.float32), data["y"]
    norm = manifest.input.normalization
    x = ((x - norm.mean) / norm.std).reshape(-1, *manifest.input.shape)
    model = get_model("mlp-small").build(manifest.input.shape, len(manifest.output.labels))
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    model.compile(optimizer=keras.optimizers.SGD(manifest.trainable.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=manifest.trainable.train_batch, epochs=int(msg.content["config"]["epochs"]),
                        verbose=0, shuffle=True)
    metrics = {"num-examples": len(y), "train-loss": float(history.history["loss"][-1]),
               "fit-s": time.perf_counter() - started,
               "peak-rss-mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
               "tensorflow-loaded": int("tensorflow" in sys.modules), "pid": os.getpid()}
    return Message(RecordDict({"arrays": ArrayRecord(model.get_weights()), "metrics": MetricRecord(metrics)}), reply_to=msg)

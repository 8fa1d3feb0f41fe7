"""The TFF side of the parity check; runs in ``.venv-tff`` (TFF 0.87, TensorFlow 2.14, Keras 2).

Usage: ``.venv-tff/bin/python federated/parity/tff_fedavg.py EXCHANGE.npz RESULT.npz``

Reads the exchange file (format in ``exchange.py``; read here with numpy alone, since nothing of
edgeloop can be imported beside TF 2.14), builds the same MLP with ``tf.keras``, runs
``tff.learning.algorithms.build_weighted_fed_avg`` (plain SGD on clients, SGD on the server) through
``tff.simulation.run_training_process`` with the exchange's clients in the exchange's order, and
writes ``w_I`` (final weights, Keras ``trainable_weights`` order), ``n_weights``, ``round_seconds``
(TFF's own ``training_time_in_seconds`` per round), ``build_seconds`` and ``round_loss``.
TFF starts ``worker_binary`` processes that outlive this interpreter: run it in its own process
group and end the group (``federated.parity.run.run_tff`` does).
"""

from __future__ import annotations

import sys
import time

import numpy as np

FORMAT = "edgeloop-tff-parity/1"


def main(exchange: str, result: str) -> int:
    import tensorflow as tf
    import tensorflow_federated as tff

    z = np.load(exchange, allow_pickle=False)
    if str(z["format"]) != FORMAT:
        print(f"{exchange}: not an exchange file of format {FORMAT}", file=sys.stderr)
        return 2
    input_shape = tuple(int(d) for d in z["input_shape"])
    hidden = [int(d) for d in z["hidden"]]
    num_classes = int(z["num_classes"])
    epochs, batch_size = int(z["epochs"]), int(z["batch_size"])
    schedule = z["schedule"]
    initial = [z[f"w_{i}"] for i in range(int(z["n_weights"]))]
    # Per-epoch batching, last batch smaller, no shuffling: the order Keras' fit(shuffle=False) sees.
    clients = [
        tf.data.Dataset.from_tensor_slices((z[f"x_{k}"], z[f"y_{k}"].astype(np.int32))).batch(batch_size).repeat(epochs)
        for k in range(int(z["n_clients"]))
    ]
    input_spec = clients[0].element_spec

    def keras_model() -> tf.keras.Model:
        layers = [tf.keras.Input(input_shape), tf.keras.layers.Flatten()]
        layers += [tf.keras.layers.Dense(units, activation="relu") for units in hidden]
        layers.append(tf.keras.layers.Dense(num_classes))
        return tf.keras.Sequential(layers)

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            keras_model(),
            input_spec=input_spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
        )

    t0 = time.perf_counter()
    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=float(z["client_lr"])),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=float(z["server_lr"])),
    )

    class StartFromExchange:
        """``process`` whose ``initialize`` starts from the exchange's weights (run_training_process calls it)."""

        next = process.next

        @staticmethod
        def initialize():
            state = process.initialize()
            weights = tff.learning.models.ModelWeights(trainable=initial, non_trainable=[])
            return process.set_model_weights(state, weights)

    build_seconds = time.perf_counter() - t0
    metrics = tff.program.MemoryReleaseManager()
    state = tff.simulation.run_training_process(
        StartFromExchange(),
        training_selection_fn=lambda round_num: [clients[int(k)] for k in schedule[round_num - 1]],
        total_rounds=int(schedule.shape[0]),
        metrics_managers=[metrics],
    )
    values = metrics.values()
    rounds = sorted(values)
    round_seconds = np.array([values[r][tff.simulation.TRAINING_TIME_KEY] for r in rounds], dtype=np.float64)
    round_loss = np.array([values[r]["client_work"]["train"]["loss"] for r in rounds], dtype=np.float64)
    final = process.get_model_weights(state).trainable
    out = {f"w_{i}": np.asarray(w, dtype=np.float32) for i, w in enumerate(final)}
    np.savez(
        result,
        n_weights=np.array(len(final)),
        round_seconds=round_seconds,
        round_loss=round_loss,
        build_seconds=np.array(build_seconds),
        versions=np.array(f"tensorflow-federated {tff.__version__}, tensorflow {tf.__version__}"),
        **out,
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.splitlines()[2], file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1], sys.argv[2]))

"""Federated simulation on a Ray cluster: the same rounds, the clients' training spread over machines.

``simulate(config, pool=ray_pool(RayConfig(...)))`` (``edgeloop federated simulate --engine ray``)
runs :func:`federated.simulate.simulate` unchanged in the driver: the numpy server, the schedule,
compression, checkpoints and evaluation on the test split. Only client training moves out: each
round's training clients are split into ``chunks`` consecutive chunks, and each chunk is one Ray
task that trains its clients with the local vectorized engine (:mod:`federated.ray_worker`). A run
gives the local engine's metrics and, to float rounding (< 1e-6), its weights; a checkpoint written
by either engine resumes on the other.

Client data never passes through the driver. One task loads the data set, partitions it exactly as
the local engine does and returns it in blocks of ``block_clients`` clients; those are task returns,
so they live in Ray's object store, owned by the driver (a block lost with its node is rebuilt from
lineage). A chunk task receives only the blocks its clients are in. The driver holds the test split,
the clients' sizes and the model, whatever the number of clients.

A worker killed mid-round takes its chunk's task with it; Ray re-runs the task (``max_retries``) on
the same inputs, so the round's result is unchanged.

Without ``address`` the run starts a local Ray instance bound to 127.0.0.1 (no dashboard, no usage
statistics) and stops it at the end; with one, it joins that cluster and leaves it running.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from federated.errors import ConfigError, FederatedError
from federated.simulate import SimulationConfig
from federated.weights import Weights

LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_ATTEMPTS = 3


class RayEngineError(FederatedError):
    """Ray is missing, or the cluster could not be started or reached."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how the clients train on Ray.

    ``address``: ``HOST:PORT`` of a running cluster's head (``ray start --head``), or ``None`` to start
    a local instance with ``num_cpus`` CPUs and an object store of ``object_store_mb`` MiB.
    ``chunks``: tasks per round (``None``: one per CPU of the cluster, ``cpus_per_task`` each).
    ``block_clients``: clients per block of data in the object store. A task receives every block its
    clients are in, and each block it receives costs a fetch and a deserialisation: with 256 per
    block, a round of 100 clients drawn from 10,000 touched ~28 blocks per task and Ray's overhead
    over the local engine was +27 % on the digits MLP; 1,024 keeps a block a few MiB for these
    datasets. ``max_retries``: how often a task whose worker died is re-run.
    """

    address: str | None = None
    num_cpus: int = 2
    object_store_mb: int = 256
    chunks: int | None = None
    cpus_per_task: int = 1
    block_clients: int = 1024
    max_retries: int = 3
    temp_dir: str | None = None

    def __post_init__(self) -> None:
        if self.address is not None:
            host, _, port = self.address.rpartition(":")
            if self.address != "auto" and not (host and port.isdigit() and 0 < int(port) < 65536):
                raise ConfigError(f"ray address must be HOST:PORT (the head's GCS port, 6379 by default) or 'auto', "
                                  f"got {self.address!r}")
        checks = [
            (self.num_cpus >= 1, f"ray num_cpus must be >= 1, got {self.num_cpus}"),
            (self.object_store_mb >= 80, f"ray object_store_mb must be >= 80 (Ray's minimum is 75 MiB), got {self.object_store_mb}"),
            (self.chunks is None or self.chunks >= 1, f"ray chunks must be >= 1 or None (one per CPU), got {self.chunks}"),
            (self.cpus_per_task >= 1, f"ray cpus_per_task must be >= 1, got {self.cpus_per_task}"),
            (self.block_clients >= 1, f"ray block_clients must be >= 1, got {self.block_clients}"),
            (self.max_retries >= 0, f"ray max_retries must be >= 0, got {self.max_retries}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def local(self) -> bool:
        """True when every Ray process of the run is on this machine (a new instance, or a loopback address)."""
        return self.address is None or self.address.rpartition(":")[0].strip("[]") in LOOPBACK


def _connect(rc: RayConfig) -> bool:
    """``ray.init`` as ``rc`` says; False when this process was already connected (then it stays connected)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs here: keep Ray from rewriting their env vars
    if rc.local:
        # Ray replaces a loopback node address with the machine's own unless clusters are off; with
        # them off every Ray server of this node binds 127.0.0.1. Read when ray is first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise RayEngineError("--engine ray needs Ray: pip install 'edgeloop[ray]'") from None
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            if rc.address is None:
                ray.init(num_cpus=rc.num_cpus, object_store_memory=rc.object_store_mb * 2**20, include_dashboard=False,
                         _temp_dir=rc.temp_dir, **common)
            else:
                ray.init(address=rc.address, **common)
            return True
        except Exception as exc:  # Ray raises a bare Exception when its node does not start in time
            ray.shutdown()  # stops whatever part of a local instance did start
            if rc.address is None and attempt < START_ATTEMPTS and "timed out" in str(exc):
                continue  # a busy machine: Ray gives its raylet a fixed 30 s to come up
            where = f"the Ray cluster at {rc.address}" if rc.address else "a local Ray instance"
            raise RayEngineError(f"could not start or join {where}: {str(exc).strip().splitlines()[0]}") from None
    return True


class RayClients:
    """The clients of ``config``, their data in Ray's object store, trained in chunks as Ray tasks
    (the :class:`federated.simulate.ClientPool` of a Ray run)."""

    def __init__(self, config: SimulationConfig, rc: RayConfig) -> None:
        self.config, self.rc = config, rc
        self.chunk_seconds: list[list[float]] = []  # per round, each chunk's training time in its worker
        self._owns_connection = _connect(rc)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        import ray

        from federated.ray_worker import load_blocks, train_chunk
        from federated.tf_clients import ClientTrainer, build_model

        config, rc = self.config, self.rc
        data = Path(config.data)
        # the worker that loads the data may run elsewhere: name a local file absolutely (the path must be shared)
        job_config = replace(config, data=str(data.resolve())) if data.exists() else config
        n_blocks = math.ceil(config.clients / rc.block_clients)
        loader = ray.remote(load_blocks).options(num_returns=n_blocks + 1, max_retries=rc.max_retries,
                                                 num_cpus=rc.cpus_per_task)
        refs = loader.remote(job_config.to_json(), rc.block_clients)
        meta = ray.get(refs[0])
        self._blocks = list(refs[1:])
        self.ids: tuple[str, ...] = tuple(meta["ids"])
        self.sizes: tuple[int, ...] = tuple(int(n) for n in meta["sizes"])
        shape, num_classes = tuple(meta["sample_shape"]), int(meta["num_classes"])
        self._x_test, self._y_test = meta["x_test"], meta["y_test"]
        model = build_model(config.model, shape, num_classes, config.seed)
        self.initial_weights: Weights = [np.asarray(v.numpy()) for v in model.trainable_variables]
        self._evaluator = ClientTrainer(model, np.zeros((0, *shape), np.float32), np.zeros(0, np.int64), config.lr,
                                        config.server.proximal_mu, config.engine)
        self._job = {"config": job_config.to_json(), "block_clients": rc.block_clients, "sample_shape": shape,
                     "num_classes": num_classes, "threads": rc.cpus_per_task}
        self._train = ray.remote(train_chunk).options(max_retries=rc.max_retries, num_cpus=rc.cpus_per_task)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.chunks = rc.chunks or max(1, cpus // rc.cpus_per_task)

    def train(self, t: int, global_weights: Weights, clients: Sequence[int]) -> tuple[list[Weights], np.ndarray]:
        import ray

        if not clients:
            return [], np.zeros(0, np.float32)
        weights_ref = ray.put([np.asarray(w) for w in global_weights])
        futures = []
        for piece in np.array_split(np.asarray(clients, np.int64), min(self.chunks, len(clients))):
            block_ids = sorted({int(c) // self.rc.block_clients for c in piece})
            futures.append(self._train.remote(self._job, t, [int(c) for c in piece], block_ids, weights_ref,
                                              *[self._blocks[b] for b in block_ids]))
        try:
            results = ray.get(futures)
        except ray.exceptions.RayError as exc:  # a task failed for good (its retries used up) or the cluster went away
            raise RayEngineError(f"round {t}: client training failed on Ray: {str(exc).strip().splitlines()[0]}") from exc
        trained: list[Weights] = []
        losses: list[np.ndarray] = []
        seconds: list[float] = []
        for stacked, loss, secs in results:
            trained.extend([a[k] for a in stacked] for k in range(loss.shape[0]))
            losses.append(loss)
            seconds.append(float(secs))
        self.chunk_seconds.append(seconds)
        return trained, np.concatenate(losses)

    def evaluate(self, weights: Weights) -> tuple[float, float]:
        return self._evaluator.evaluate(weights, self._x_test, self._y_test)

    def close(self) -> None:
        """Drop the data blocks; stop the local instance (or leave the cluster) if this pool connected."""
        self._blocks = []
        if self._owns_connection:
            import ray

            ray.shutdown()
            self._owns_connection = False


def ray_pool(rc: RayConfig) -> Callable[[SimulationConfig], RayClients]:
    """The ``pool`` argument of :func:`federated.simulate.simulate` that trains the clients on Ray."""
    return lambda config: RayClients(config, rc)

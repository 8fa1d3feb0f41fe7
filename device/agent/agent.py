"""The device agent: serve predictions, collect samples, upload them, and take model updates.

One ``Agent`` owns an agent directory (see :mod:`device.agent.updater`). Its model is swapped
without interrupting inference: a new :class:`~device.runtime.runtime.Runtime` is built and
health-checked beside the old one, and only then replaces it under a lock held for one
assignment. A rejected or unhealthy update leaves the old model serving and is reported.
Imports only numpy, LiteRT, ``cryptography`` and the standard library.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.agent.client import RequestRejected, ServerUnavailable, ServiceClient
from device.agent.collector import CollectionPolicy, SampleQueue, Sampler
from device.agent.health import HealthReport, check_health, read_canary
from device.agent.updater import BUNDLE_FILES, BundleStore
from device.agent.verify_signature import load_public_key, verify_bundle_signature
from device.errors import BundleError, EdgeloopError, UpdateRejected
from device.runtime.runtime import Prediction, Runtime

log = logging.getLogger("edgeloop.agent")


@dataclass(frozen=True)
class AgentConfig:
    """Where the agent lives, whom it talks to, and how often."""

    directory: Path
    server: str | None = None
    token: str | None = None
    channel: str = "stable"
    public_key: Path | None = None  # the pinned Ed25519 key; updates are refused without one
    initial_bundle: Path | None = None  # a shipped bundle to serve before the first update
    poll_interval: float = 30.0  # seconds between update checks when all is well
    upload_interval: float = 10.0
    max_backoff: float = 300.0
    jitter: float = 0.2  # ± fraction of each delay, so a fleet does not poll in lockstep
    batch_size: int = 64
    queue_max: int = 10_000
    policy: CollectionPolicy = field(default_factory=CollectionPolicy)
    num_threads: int | None = None
    timeout: float = 10.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("poll_interval", "upload_interval", "max_backoff", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if (self.server is None) != (self.token is None):
            raise ValueError("server and token go together")


def backoff_delay(failures: int, base: float, cap: float, jitter: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``min(cap, base * 2**failures) * (1 ± jitter)``."""
    delay = min(cap, base * (2 ** min(failures, 30)))
    return delay * (1 + jitter * (2 * rng.random() - 1))


class Agent:
    def __init__(self, config: AgentConfig, client: ServiceClient | None = None) -> None:
        self.config = config
        self.store = BundleStore(config.directory)
        self.queue = SampleQueue(Path(config.directory) / "queue.sqlite", config.queue_max)
        self.sampler = Sampler(config.policy)
        self.client = client or (ServiceClient(config.server, config.token, config.timeout) if config.server else None)
        self._public_key = load_public_key(config.public_key) if config.public_key else None
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._reported_drops = self.queue.counters()["dropped"]
        self._last_drop_report = -1e9
        self.events: list[dict[str, Any]] = []  # what happened, newest last (also logged and reported)
        self._runtime = self._load_current()

    # -- serving -----------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def version(self) -> str:
        return str(self.store.state().get("version", "none"))

    def predict(self, x: np.ndarray, label: int | None = None, k: int = 3) -> Prediction:
        """Classify one raw input and, if the collection policy keeps it, queue it with ``label``."""
        with self._lock:
            runtime, version = self._runtime, self._version
            pred = runtime.classify(x, k=k)[0]
        if self.sampler.keep(pred.confidence, labelled=label is not None):
            self.queue.put(np.asarray(x), pred.index, pred.confidence, version, label)
            self._report_drops()
        return pred

    def _load_current(self) -> Runtime:
        current = self.store.current()
        if current is None:
            if self.config.initial_bundle is None:
                raise EdgeloopError(f"{self.config.directory}: no model installed; give an initial bundle "
                                    "(e.g. --initial mnist-cnn-int8)")
            target = self.store.install_local(self.config.initial_bundle, f"initial-{Path(self.config.initial_bundle).name}")
            self.store.swap(target)
            self.store.update_state(version=f"shipped:{Path(self.config.initial_bundle).name}", etag=None, previous=None)
            current = target
        runtime, health = self._open(current)
        if runtime is not None:
            self._version = self.version
            return runtime
        previous = self.store.state().get("previous")
        if previous and Path(previous).is_dir():  # a crash after a swap, before the health check finished
            self.store.swap(Path(previous))
            self._event("rollback", f"{current.name} failed its health check at start-up ({health.reason})")
            self.store.update_state(version=self.store.state().get("previous_version"), previous=None)
            runtime, health = self._open(Path(previous))
            if runtime is not None:
                self._version = self.version
                return runtime
        raise BundleError(f"{current}: the installed model is unhealthy ({health.reason}) and there is nothing to roll back to")

    def _open(self, bundle: Path) -> tuple[Runtime | None, HealthReport]:
        try:
            runtime = Runtime(bundle, num_threads=self.config.num_threads)
        except (EdgeloopError, ValueError) as exc:
            return None, HealthReport(False, f"does not load: {exc}")
        health = check_health(runtime, read_canary(bundle))
        return (runtime if health.healthy else None), health

    # -- updates -----------------------------------------------------------------------------

    def check_for_update(self) -> str:
        """Poll the channel once; returns ``unchanged``, ``updated``, ``rejected`` or ``rolled-back``.

        Raises :class:`ServerUnavailable` when the server cannot be reached (the caller backs off).
        """
        if self.client is None:
            return "unchanged"
        state = self.store.state()
        etags = [e for e in (state.get("etag"), *state.get("rejected", [])[-3:]) if e]
        try:
            release = self.client.current(self.config.channel, ", ".join(etags) or None, running=self._version)
        except RequestRejected as exc:
            if exc.status == 404:  # nothing published on this channel yet
                return "unchanged"
            raise
        if release is None or release.etag in state.get("rejected", []) or release.etag == state.get("etag"):
            return "unchanged"
        bundle_id = f"v{release.version}-" + re.sub(r"[^A-Za-z0-9]", "", release.etag)[-12:]  # a safe directory name
        staging = self.store.staging()
        try:
            if self._public_key is None:
                raise UpdateRejected("no pinned public key (--public-key): refusing every update")
            for name in BUNDLE_FILES:
                meta = release.files.get(name)
                if not isinstance(meta, dict) or "url" not in meta or "sha256" not in meta:
                    raise UpdateRejected(f"release v{release.version} has no {name} (unsigned bundle?)")
                self.client.download(meta["url"], staging / name, meta["sha256"])
            verify_bundle_signature(staging, self._public_key)
        except (UpdateRejected, RequestRejected) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.store.reject(release.etag)
            self._event("rejected", f"v{release.version}: {exc}", release.version)
            return "rejected"
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self._activate(self.store.commit(staging, bundle_id), release.version, release.etag)

    def _activate(self, bundle: Path, version: int, etag: str) -> str:
        old_state = self.store.state()
        previous = self.store.swap(bundle)
        self.store.update_state(previous=str(previous) if previous else None, previous_version=old_state.get("version"),
                                previous_etag=old_state.get("etag"))
        runtime, health = self._open(bundle)
        if runtime is None:
            if previous is not None:
                self.store.swap(previous)
            self.store.update_state(previous=None)
            self.store.reject(etag)
            self._event("rollback", f"v{version} failed its health check ({health.reason}); "
                                    f"back to {old_state.get('version')}", version)
            shutil.rmtree(bundle, ignore_errors=True)
            return "rolled-back"
        self.store.update_state(version=str(version), etag=etag)
        with self._lock:
            self._runtime, self._version = runtime, str(version)
        self.store.prune({bundle, previous} if previous else {bundle})
        self._event("updated", f"now serving v{version} (canary: {health.reason}, "
                               f"max |Δp| {health.max_abs_prob_diff:.2g})", version)
        return "updated"

    # -- uploads -----------------------------------------------------------------------------

    def upload_pending(self, max_batches: int = 100) -> int:
        """Send queued samples in batches until the queue is empty; returns how many the server acknowledged.

        Raises :class:`ServerUnavailable` when a batch cannot be delivered (it stays queued, same key).
        """
        if self.client is None:
            return 0
        sent = 0
        for _ in range(max_batches):
            batch = self.queue.next_batch(self.config.batch_size)
            if batch is None:
                break
            key, samples = batch
            try:
                self.client.upload(key, samples)
            except RequestRejected as exc:
                if exc.status in (400, 413, 422):  # the server will never take this batch: say so, drop it
                    self._event("upload-rejected", f"batch {key} of {len(samples)} samples: {exc}")
                    self.queue.ack(key)
                    continue
                raise
            sent += self.queue.ack(key)
        return sent

    def _report_drops(self, force: bool = False) -> None:
        """Report samples dropped over the queue cap: at once the first time, then at most every 10 s."""
        if not force and time.monotonic() - self._last_drop_report < 10.0:
            return
        dropped = self.queue.counters()["dropped"]
        if dropped > self._reported_drops:
            self._last_drop_report = time.monotonic()
            self._event("dropped", f"sample queue full ({self.config.queue_max}): "
                                   f"{dropped - self._reported_drops} oldest samples dropped, {dropped} in total")
            self._reported_drops = dropped

    def _event(self, kind: str, detail: str, version: int | str | None = None) -> None:
        event = {"kind": kind, "detail": detail, "version": None if version is None else str(version), "time": time.time()}
        self.events.append(event)
        (log.warning if kind in ("rejected", "rollback", "dropped", "upload-rejected") else log.info)("%s: %s", kind, detail)
        if self.client is not None:
            try:
                self.client.report(kind, event["version"], detail, self.queue.counters())
            except EdgeloopError as exc:  # reporting is best effort; the event stays in self.events and the log
                log.info("could not report %s: %s", kind, exc)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, duration: float | None = None,
            on_cycle: Callable[[str, int], None] | None = None) -> None:
        """Poll and upload until ``stop`` is set or ``duration`` seconds pass, backing off on failures."""
        stop = stop or threading.Event()
        deadline = None if duration is None else time.monotonic() + duration
        failures = 0
        next_poll = next_upload = time.monotonic()
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            now = time.monotonic()
            outcome, sent = "idle", 0
            try:
                if now >= next_poll:
                    outcome = self.check_for_update()
                    next_poll = now + backoff_delay(0, self.config.poll_interval, self.config.poll_interval,
                                                    self.config.jitter, self._rng)
                if now >= next_upload:
                    self._report_drops(force=True)
                    sent = self.upload_pending()
                    next_upload = now + self.config.upload_interval
                failures = 0
            except RequestRejected as exc:  # e.g. a revoked token: say so loudly, keep serving, try again later
                failures += 1
                log.error("%s", exc)
                next_poll = next_upload = now + self.config.max_backoff
                outcome = f"refused ({exc.status})"
            except ServerUnavailable as exc:
                failures += 1
                delay = exc.retry_after or backoff_delay(failures - 1, min(1.0, self.config.poll_interval),
                                                         self.config.max_backoff, self.config.jitter, self._rng)
                log.info("server unavailable (%s); retrying in %.1f s", exc, delay)
                next_poll = next_upload = now + delay
                outcome = "unavailable"
            if on_cycle is not None:
                on_cycle(outcome, sent)
            wait = min(next_poll, next_upload) - time.monotonic()
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            stop.wait(max(0.01, wait))

    def close(self) -> None:
        self.queue.close()

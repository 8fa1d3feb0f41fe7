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

from device.agent.client import RequestRejected, ServerUnavailable, ServiceClient, valid_etag
from device.agent.collector import WIRE_DTYPES, CollectionPolicy, SampleQueue, Sampler
from device.agent.consent import ConsentSwitch
from device.agent.health import HealthReport, check_health, read_canary
from device.agent.reporter import SummaryReporter
from device.agent.updater import BUNDLE_FILES, BundleStore
from device.agent.verify_signature import (
    ReleaseStatement,
    load_public_key,
    parse_statement,
    verify_bundle_signature,
    verify_statement,
)
from device.errors import BundleError, EdgeloopError, UpdateRejected
from device.runtime.runtime import Prediction, Runtime

log = logging.getLogger("edgeloop.agent")
REPORTED_DROPS = "reported_dropped"  # queue meta: drops the server has acknowledged hearing of


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
    timeout: float = 10.0  # seconds for one request to answer
    download_timeout: float = 120.0  # seconds for one bundle file to arrive whole (a slow drip is cut off)
    summary_interval: float = 60.0  # seconds between interval summaries (drift, rollout health)
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("poll_interval", "upload_interval", "max_backoff", "timeout", "download_timeout",
                     "summary_interval"):
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
        self.client = client or (ServiceClient(config.server, config.token, config.timeout, config.download_timeout)
                                 if config.server else None)
        self._public_key = load_public_key(config.public_key) if config.public_key else None
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._reported_drops = self.queue.meta(REPORTED_DROPS)  # drops told to the server (persisted), at start
        self._last_drop_report = self._last_drop_send = -1e9
        self._unsent_drops: str | None = None  # the newest drop report the server has not acknowledged
        self.events: list[dict[str, Any]] = []  # what happened, newest last (also logged and reported)
        self.reporter = SummaryReporter()  # per-version interval summaries: drift and rollout health
        self.consent = ConsentSwitch(config.directory)  # AGENT_DIR/consent "collect: off" stops collection at once
        self._consented = True
        self._last_summary = time.monotonic()
        self._runtime = self._load_current()

    # -- serving -----------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def version(self) -> str:
        return str(self.store.state().get("version", "none"))

    def predict(self, x: np.ndarray, label: int | None = None, k: int = 3) -> Prediction:
        """Classify one raw input and, if the collection policy keeps it, queue it with ``label``.

        Every prediction (and every failed one) is counted in the interval summary; nothing is
        queued while the owner's consent switch says ``collect: off``.
        """
        with self._lock:
            runtime, version = self._runtime, self._version
            try:
                pred = runtime.classify(x, k=k)[0]
            except Exception:
                self.reporter.observe_error(version, runtime.manifest)
                raise
        allowed = self.collect_allowed()
        self.reporter.observe(version, runtime.manifest, x, pred.index, pred.confidence, label, with_inputs=allowed)
        if allowed and self.sampler.keep(pred.confidence, labelled=label is not None):
            self.queue.put(_wire_input(np.asarray(x), runtime.input_spec.raw_dtype), pred.index, pred.confidence,
                           version, label)
            self._report_drops(send=False)  # recorded now; sent by the run loop (no network I/O while serving)
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
        """Load and health-check a bundle; any failure (a model that does not load, a canary without
        ``expected``) is an unhealthy report, never an exception."""
        try:
            runtime = Runtime(bundle, num_threads=self.config.num_threads)
        except Exception as exc:  # noqa: BLE001 - whatever a bundle does, it only makes itself unhealthy
            return None, HealthReport(False, f"does not load: {exc}")
        try:
            canary = read_canary(bundle)
        except Exception as exc:  # noqa: BLE001 - as above
            return None, HealthReport(False, f"unreadable canary: {exc}")
        health = check_health(runtime, canary)
        return (runtime if health.healthy else None), health

    # -- updates -----------------------------------------------------------------------------

    def check_for_update(self) -> str:
        """Poll the channel once; returns ``unchanged``, ``updated``, ``rejected`` or ``rolled-back``.

        Raises :class:`ServerUnavailable` when the server cannot be reached or a transfer fails
        (the caller backs off and retries; a transport error never blacklists a release).
        """
        if self.client is None:
            return "unchanged"
        state = self.store.state()
        rejected = [e for e in state.get("rejected", []) if valid_etag(e)]  # a bad one stored by an old agent is ignored
        installed = state.get("etag") if valid_etag(state.get("etag")) else None
        etags = [e for e in (installed, *rejected[-3:]) if e]
        try:
            release = self.client.current(self.config.channel, ", ".join(etags) or None, running=self._version)
        except RequestRejected as exc:
            if exc.status == 404:  # nothing published on this channel yet
                return "unchanged"
            raise
        if release is None or release.etag in rejected or release.etag == installed:
            return "unchanged"
        staging: Path | None = None
        try:
            if self._public_key is None:
                raise UpdateRejected("no pinned public key (--public-key): refusing every update")
            for name in BUNDLE_FILES:
                meta = release.files.get(name)
                if not isinstance(meta, dict) or "url" not in meta or "sha256" not in meta:
                    raise UpdateRejected(f"release v{release.version} has no {name} (unsigned bundle?)")
            statement = parse_statement(release.statement)
            verify_statement(statement, self._public_key)
            self._check_statement(statement, release.version, state)
            staging = self.store.staging()
            for name in BUNDLE_FILES:
                meta = release.files[name]
                self.client.download(meta["url"], staging / name, meta["sha256"], size=meta.get("size"))
            manifest, digest = verify_bundle_signature(staging, self._public_key)
            if digest != statement.bundle:
                raise UpdateRejected(f"v{statement.version}: the files are not the bundle its release statement names")
            if manifest.version != str(statement.version):
                raise UpdateRejected(f"v{statement.version}: the signed manifest says version {manifest.version!r}")
        except (UpdateRejected, RequestRejected) as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            self.store.reject(release.etag)
            self._event("rejected", f"v{release.version}: {exc}", release.version)
            return "rejected"
        except BaseException:  # a transport error (ServerUnavailable) or a crash: nothing is blacklisted
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        bundle_id = f"v{statement.version}-" + re.sub(r"[^A-Za-z0-9]", "", release.etag)[-12:]  # a safe directory name
        return self._activate(self.store.commit(staging, bundle_id), statement, release.etag)

    def _check_statement(self, statement: ReleaseStatement, announced: int, state: dict[str, Any]) -> None:
        """Refuse a statement for another channel, another version, or not newer than the installed one."""
        if statement.channel != self.config.channel:
            raise UpdateRejected(f"the release statement is for channel {statement.channel!r}; this device follows "
                                 f"{self.config.channel!r}")
        if statement.version != announced:
            raise UpdateRejected(f"announced as v{announced}, but its signed release statement says "
                                 f"v{statement.version}")
        last = state.get("sequence") if state.get("channel") == self.config.channel else None
        if isinstance(last, int) and statement.sequence <= last:
            raise UpdateRejected(f"v{statement.version}: release statement {statement.sequence} is not newer than the "
                                 f"installed one ({last}): a rollback or freeze attack, or a stale mirror")

    def _activate(self, bundle: Path, statement: ReleaseStatement, etag: str) -> str:
        """Health-check ``bundle`` beside the serving model, and only then point ``current`` at it."""
        version = statement.version
        old_state = self.store.state()
        runtime, health = self._open(bundle)
        if runtime is None:
            self.store.reject(etag)
            self._event("rollback", f"v{version} failed its health check ({health.reason}); "
                                    f"still serving {old_state.get('version')}", version)
            shutil.rmtree(bundle, ignore_errors=True)
            return "rolled-back"
        current = self.store.current()
        self.store.update_state(previous=str(current) if current else None, previous_version=old_state.get("version"),
                                previous_etag=old_state.get("etag"))
        previous = self.store.swap(bundle)
        self.store.update_state(version=str(version), etag=etag, sequence=statement.sequence,
                                channel=self.config.channel)
        with self._lock:
            self._runtime, self._version = runtime, str(version)
        self.store.prune({bundle, previous} if previous else {bundle})
        self._event("updated", f"now serving v{version} (canary: {health.reason}, "
                               f"max |Δp| {health.max_abs_prob_diff:.2g})", version)
        return "updated"

    # -- consent and summaries ---------------------------------------------------------------

    def collect_allowed(self) -> bool:
        """The owner's switch, read at every call; turning it off also deletes what is queued, unsent."""
        allowed = self.consent.collect_allowed()
        if not allowed and self._consented:
            n = self.queue.discard()
            log.warning("collection switched off on this device: %d queued samples deleted, none sent", n)
        self._consented = allowed
        return allowed

    def send_summaries(self) -> int:
        """Send the interval summaries (one per version served since the last); returns how many went.

        A summary the server refuses as invalid is dropped (and logged); one that cannot be
        delivered now stays for the next call (:class:`ServerUnavailable` is raised).
        """
        if self.client is None:
            return 0
        client = self.client

        def send(summary: dict[str, Any]) -> None:
            try:
                client.summary(summary)
            except RequestRejected as exc:
                log.warning("summary of v%s refused, dropped: %s", summary.get("version"), exc)

        self._last_summary = time.monotonic()
        return self.reporter.flush(send)

    # -- uploads -----------------------------------------------------------------------------

    def upload_pending(self, max_batches: int = 100) -> int:
        """Send queued samples in batches until the queue is empty; returns how many the server acknowledged.

        A batch the server refuses as invalid (400, 413, 422) is set aside in the queue's
        ``rejected`` table and reported, so it never blocks the batches behind it.
        Raises :class:`ServerUnavailable` when a batch cannot be delivered (it stays queued, same key).
        """
        if self.client is None or not self.collect_allowed():
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
                if exc.status in (400, 413, 422):  # the server will never take this batch: set it aside, say so
                    n = self.queue.set_aside(key)
                    self._event("upload-rejected", f"batch {key} of {n} samples set aside: {exc}")
                    continue
                raise
            sent += self.queue.ack(key)
        return sent

    def _report_drops(self, force: bool = False, send: bool = True) -> None:
        """Record samples dropped over the queue cap, and report them until the server has heard of them.

        New drops are recorded at once the first time (and on every ``force``), then at most every
        10 s. ``send`` False (the inference path) only records them: no network I/O while serving.
        The run loop sends what the server has not acknowledged (offline, or before a restart) on
        its next cycle and then at most every 10 s; what was delivered is persisted in the queue,
        so a restart reports the rest.
        """
        dropped = self.queue.counters()["dropped"]
        delivered = self.queue.meta(REPORTED_DROPS)
        now = time.monotonic()
        if dropped > self._reported_drops and (force or now - self._last_drop_report >= 10.0):
            since, self._reported_drops, self._last_drop_report = self._reported_drops, dropped, now
            detail = f"sample queue full ({self.config.queue_max}): {dropped - since} oldest samples dropped, {dropped} in total"
            self._event("dropped", detail, send=False)
            self._unsent_drops = detail
            self._last_drop_send = -1e9  # send this one at the next chance
        if not send or self.client is None or dropped <= delivered:
            return
        if now - self._last_drop_send < 10.0:
            return
        self._last_drop_send = now
        detail = self._unsent_drops or (f"sample queue full ({self.config.queue_max}): {dropped - delivered} oldest "
                                        f"samples dropped, {dropped} in total")
        if self._send("dropped", detail, None):
            self.queue.set_meta(REPORTED_DROPS, dropped)
            self._unsent_drops = None

    def _event(self, kind: str, detail: str, version: int | str | None = None, send: bool = True) -> bool:
        """Record an event, log it and (``send``) report it to the server; True if the server acknowledged it."""
        event = {"kind": kind, "detail": detail[:1900], "version": None if version is None else str(version)[:64],
                 "time": time.time()}
        self.events.append(event)
        del self.events[:-1000]  # a long-lived agent keeps the newest thousand
        (log.warning if kind in ("rejected", "rollback", "dropped", "upload-rejected") else log.info)("%s: %s", kind, detail)
        return send and self._send(kind, event["detail"], event["version"])

    def _send(self, kind: str, detail: str, version: str | None) -> bool:
        if self.client is None:
            return False
        try:
            self.client.report(kind, version, detail, self.queue.counters())
            return True
        except EdgeloopError as exc:  # reporting is best effort; the event stays in self.events and the log
            log.info("could not report %s: %s", kind, exc)
            return False

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, duration: float | None = None,
            on_cycle: Callable[[str, int], None] | None = None) -> None:
        """Poll and upload until ``stop`` is set or ``duration`` seconds pass, backing off on failures.

        Updates run in their own thread with their own backoff, so a slow or failing download
        never holds back sample uploads, and an upload outage never delays an update.
        """
        stop = stop or threading.Event()
        deadline = None if duration is None else time.monotonic() + duration
        if isinstance(self.client, ServiceClient):
            self.client.cancel = stop  # a stop ends a download in flight at its next read

        def poll() -> tuple[str, int]:
            return self.check_for_update(), 0

        def upload() -> tuple[str, int]:
            self._report_drops(force=True)
            sent = self.upload_pending()
            if time.monotonic() - self._last_summary >= self.config.summary_interval:
                self.send_summaries()
            return "idle", sent

        updater = threading.Thread(target=self._loop, name="edgeloop-updater", daemon=True,
                                   args=(poll, self.config.poll_interval, True, stop, deadline, on_cycle))
        updater.start()
        try:
            self._loop(upload, self.config.upload_interval, False, stop, deadline, on_cycle)
        except BaseException:  # e.g. KeyboardInterrupt: stop the updater too
            stop.set()
            raise
        finally:
            if deadline is not None and not stop.is_set():  # the duration is up: end a download in flight
                self._halt_downloads()
            updater.join(self.config.download_timeout + 3 * self.config.timeout + 5)
            if isinstance(self.client, ServiceClient):
                self.client.cancel = None

    def _halt_downloads(self) -> None:
        if isinstance(self.client, ServiceClient):
            halt = threading.Event()
            halt.set()
            self.client.cancel = halt

    def _loop(self, step: Callable[[], tuple[str, int]], interval: float, jittered: bool, stop: threading.Event,
              deadline: float | None, on_cycle: Callable[[str, int], None] | None) -> None:
        failures = 0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            outcome, sent = "idle", 0
            try:
                outcome, sent = step()
                failures = 0
                delay = backoff_delay(0, interval, interval, self.config.jitter if jittered else 0.0, self._rng)
            except RequestRejected as exc:  # e.g. a revoked token: say so loudly, keep serving, try again later
                failures += 1
                log.error("%s", exc)
                delay = self.config.max_backoff
                outcome = f"refused ({exc.status})"
            except ServerUnavailable as exc:
                failures += 1
                delay = self.retry_delay(failures, exc.retry_after)
                log.info("server unavailable (%s); retrying in %.1f s", exc, delay)
                outcome = "unavailable"
            except Exception as exc:  # noqa: BLE001 - the last line of defence: never let the loop die
                failures += 1
                delay = self.retry_delay(failures, None)
                log.exception("unexpected error (%s); retrying in %.1f s", exc, delay)
                outcome = "error"
            if on_cycle is not None:
                on_cycle(outcome, sent)
            wait = delay
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            stop.wait(max(0.01, wait))

    def retry_delay(self, failures: int, retry_after: float | None) -> float:
        """How long to wait after ``failures`` failures in a row: exponential backoff, lengthened (never
        shortened) by the server's ``Retry-After``, and never beyond ``max_backoff``."""
        delay = backoff_delay(failures - 1, min(1.0, self.config.poll_interval), self.config.max_backoff,
                              self.config.jitter, self._rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_backoff))
        return min(delay, self.config.max_backoff * (1 + self.config.jitter))

    def close(self) -> None:
        self.queue.close()


def _wire_input(x: np.ndarray, raw_dtype: str) -> np.ndarray:
    """``x`` in a dtype the service stores, when that loses nothing (an int64 image of 0-255 becomes
    uint8); otherwise as it is, and a server that refuses it gets the batch set aside."""
    if x.dtype.name in WIRE_DTYPES:
        return x
    for dtype in (raw_dtype, "float32"):
        if dtype in WIRE_DTYPES:
            with np.errstate(all="ignore"):
                cast = x.astype(dtype)
            if cast.shape == x.shape and np.array_equal(cast, x):
                return cast
    return x

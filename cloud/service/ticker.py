"""The service's background work, one thread per server process: judge running rollouts, purge samples
past retention, and start a retraining when a version drifts (``--auto-retrain``).

Safe with several processes: a rollout decision is a conditional UPDATE applied once
(:mod:`cloud.service.rollout_store`), a purge deletes what is expired whoever does it, and an
automatic retraining is claimed by inserting a unique marker row first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("edgeloop.service")


@dataclass(frozen=True)
class TickerConfig:
    rollout_tick_s: float = 5.0
    retention_days: float | None = None
    purge_every_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.rollout_tick_s > 0:
            raise ValueError(f"--rollout-tick must be > 0 seconds, got {self.rollout_tick_s}")
        if self.retention_days is not None and not self.retention_days > 0:
            raise ValueError(f"--retention-days must be > 0, got {self.retention_days}")


class Ticker:
    def __init__(self, config: TickerConfig, sessions: Any, registry: Any, signing_key: Callable[[], Any | None],
                 extra: Callable[[], None] | None = None) -> None:
        self.config, self.sessions, self.registry = config, sessions, registry
        self.signing_key, self.extra = signing_key, extra
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_purge = 0.0

    def once(self) -> list[dict[str, Any]]:
        from cloud.service.governance import purge_expired
        from cloud.service.rollout_store import tick

        changes = tick(self.sessions, self.registry, signing_key=self.signing_key())
        for c in changes:
            log.warning("rollout %s: %s at stage %s (%s)", c["rollout"], c["action"], c["stage"] + 1, c["reason"])
        now = time.time()
        if self.config.retention_days is not None and now - self._last_purge >= self.config.purge_every_s:
            self._last_purge = now
            n = purge_expired(self.sessions, self.config.retention_days, now)
            if n:
                log.warning("retention: deleted %d samples older than %g days", n, self.config.retention_days)
        if self.extra is not None:
            self.extra()
        return changes

    def _run(self) -> None:
        while not self._stop.wait(self.config.rollout_tick_s):
            try:
                self.once()
            except Exception:  # noqa: BLE001 - one failed tick (a busy database) must not end the thread
                log.exception("background tick failed; trying again in %.1f s", self.config.rollout_tick_s)

    def start(self) -> Ticker:
        self._thread = threading.Thread(target=self._run, name="edgeloop-ticker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

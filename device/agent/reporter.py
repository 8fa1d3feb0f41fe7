"""Interval summaries on the device: one accumulator per model version, handed to the service each interval.

The agent calls :meth:`SummaryReporter.observe` on every prediction (and ``observe_error`` on a
failed one); :meth:`SummaryReporter.flush` turns what accumulated into summaries and sends
them, and keeps any the server did not take for the next flush (bounded), so an outage loses
no counts. A summary goes out every interval even when no sample is collected: it holds
counts and histograms, never an input. Without consent to collect (``collect: off``), the
input statistics are left out too.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from device.agent.summary import Binning, SummaryAccumulator

MAX_PENDING = 100  # summaries kept while the server is unreachable; the oldest go first


class SummaryReporter:
    def __init__(self) -> None:
        self._acc: dict[str, SummaryAccumulator] = {}
        self._binnings: dict[str, Binning] = {}
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _accumulator(self, version: str, manifest: Any, with_inputs: bool) -> SummaryAccumulator:
        acc = self._acc.get(version)
        if acc is None or acc.with_inputs != with_inputs:
            if acc is not None and not acc.empty():
                self._pending.append(self._stamp(acc.take()))
            binning = self._binnings.get(version)
            if binning is None:
                binning = self._binnings[version] = Binning.for_manifest(manifest)
            acc = self._acc[version] = SummaryAccumulator(version, binning, with_inputs=with_inputs)
        return acc

    def observe(self, version: str, manifest: Any, x: np.ndarray, prediction: int, confidence: float,
                label: int | None, with_inputs: bool = True) -> None:
        with self._lock:
            acc = self._accumulator(version, manifest, with_inputs)
        acc.add(x, prediction, confidence, label)

    def observe_error(self, version: str, manifest: Any) -> None:
        with self._lock:
            acc = self._acc.get(version) or self._accumulator(version, manifest, True)
        acc.add_error()

    @staticmethod
    def _stamp(summary: dict[str, Any]) -> dict[str, Any]:
        return {"key": uuid.uuid4().hex, **summary}

    def take(self) -> list[dict[str, Any]]:
        """Everything not yet sent: pending summaries and the current intervals' (which start afresh)."""
        with self._lock:
            for acc in self._acc.values():
                if not acc.empty():
                    self._pending.append(self._stamp(acc.take()))
            out, self._pending = self._pending[-MAX_PENDING:], []
        return out

    def flush(self, send: Callable[[dict[str, Any]], None]) -> int:
        """Send every summary; one that fails (``send`` raises) and those after it wait for the next flush."""
        batch = self.take()
        for i, summary in enumerate(batch):
            try:
                send(summary)
            except Exception:
                with self._lock:
                    self._pending = (batch[i:] + self._pending)[-MAX_PENDING:]
                raise
        return len(batch)

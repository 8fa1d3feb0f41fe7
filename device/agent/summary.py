"""What a device saw in one interval, in a few hundred bytes: the summary agents send for drift and
rollout health, and the same statistics over a reference set (the bundle's ``profile``).

A summary holds counts, not fractions, so the service can add summaries across intervals
and devices: predictions and failed predictions, the confidence histogram (10 bins on
[0, 1]), predictions per class, labelled and correct predictions (field accuracy), and per
input channel the sum, the sum of squares and a histogram over the bundle's raw range. The
channel is the input's last axis (an image's colour, a vector's feature) when it has at most
:data:`MAX_CHANNELS`, else the whole input is one channel. Numpy only: devices use it, and
the cloud builds the reference profile with the very same binning.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE_BINS = 10
INPUT_BINS = 16
MAX_CHANNELS = 64
PROFILE_FORMAT = "edgeloop-profile/1"


def channels_of(shape: tuple[int, ...] | list[int]) -> int:
    """How many channels an input of ``shape`` (without the batch axis) is summarised in."""
    return int(shape[-1]) if shape and int(shape[-1]) <= MAX_CHANNELS else 1


@dataclass(frozen=True)
class Binning:
    """The histogram layout of one model's inputs and outputs; it comes from the bundle's profile."""

    channels: int
    classes: int
    input_range: tuple[float, float] | None  # None: no input histogram (only mean and spread)

    def __post_init__(self) -> None:
        if self.channels < 1 or self.classes < 1:
            raise ValueError(f"channels and classes must be >= 1, got {self.channels}, {self.classes}")
        if self.input_range is not None:
            lo, hi = self.input_range
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise ValueError(f"input_range must be finite with hi > lo, got {self.input_range}")

    @classmethod
    def for_manifest(cls, manifest: Any) -> Binning:
        """The binning of a bundle: its profile's range if it has one, else the input's raw range."""
        profile = dict(getattr(manifest, "profile", {}) or {})
        spec, out = manifest.input, manifest.output
        rng = profile.get("input_range") or (spec.raw_range if getattr(spec, "raw_range", None) else None)
        classes = int(np.prod(out.shape)) if out.shape else 1
        return cls(channels_of(tuple(spec.shape)), max(1, classes), tuple(map(float, rng)) if rng else None)


class SummaryAccumulator:
    """Counts predictions for one model version until :meth:`take` hands them over. Thread-safe."""

    def __init__(self, version: str, binning: Binning, with_inputs: bool = True) -> None:
        self.version, self.binning, self.with_inputs = version, binning, with_inputs
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        b = self.binning
        self.start = time.time()
        self.predictions = self.errors = self.labelled = self.correct = 0
        self.confidence_sum = 0.0
        self.confidence_hist = np.zeros(CONFIDENCE_BINS, np.int64)
        self.prediction_hist = np.zeros(b.classes, np.int64)
        self.input_values = 0  # values per channel seen
        self.input_sum = np.zeros(b.channels, np.float64)
        self.input_sumsq = np.zeros(b.channels, np.float64)
        self.input_hist = np.zeros((b.channels, INPUT_BINS), np.int64)

    def add(self, x: np.ndarray, prediction: int, confidence: float, label: int | None = None) -> None:
        """One prediction on raw input ``x`` (no batch axis)."""
        values = self._channel_values(x) if self.with_inputs else None
        with self._lock:
            self.predictions += 1
            self.confidence_sum += float(confidence)
            self.confidence_hist[_confidence_bin(confidence)] += 1
            if 0 <= prediction < self.binning.classes:
                self.prediction_hist[prediction] += 1
            if label is not None:
                self.labelled += 1
                self.correct += int(label == prediction)
            if values is not None:
                self._add_values(values)

    def add_error(self) -> None:
        with self._lock:
            self.errors += 1

    def _channel_values(self, x: np.ndarray) -> np.ndarray | None:
        """(values per channel, channels) as float64, or None when ``x`` does not fit the binning."""
        arr = np.asarray(x, dtype=np.float64)
        c = self.binning.channels
        if arr.size == 0 or arr.size % c or (c > 1 and arr.shape[-1] != c) or not np.isfinite(arr).all():
            return None
        return arr.reshape(-1, c)

    def _add_values(self, v: np.ndarray) -> None:
        self.input_values += v.shape[0]
        self.input_sum += v.sum(0)
        self.input_sumsq += (v * v).sum(0)
        if self.binning.input_range is not None:
            lo, hi = self.binning.input_range
            idx = np.clip(((v - lo) / (hi - lo) * INPUT_BINS).astype(np.int64), 0, INPUT_BINS - 1)
            for ch in range(v.shape[1]):
                self.input_hist[ch] += np.bincount(idx[:, ch], minlength=INPUT_BINS)

    def add_batch(self, x: np.ndarray, probs: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Many predictions at once: ``x`` (N, *shape), ``probs`` (N, classes)."""
        top = np.argmax(probs, axis=-1)
        conf = np.max(probs, axis=-1)
        for i in range(len(x)):
            self.add(x[i], int(top[i]), float(conf[i]), None if labels is None else int(labels[i]))

    def empty(self) -> bool:
        with self._lock:
            return self.predictions == 0 and self.errors == 0

    def take(self) -> dict[str, Any]:
        """The summary so far (JSON-ready); the accumulator starts afresh."""
        with self._lock:
            out = {"version": self.version, "start": self.start, "end": time.time(),
                   "predictions": self.predictions, "errors": self.errors,
                   "confidence_sum": self.confidence_sum, "confidence_hist": self.confidence_hist.tolist(),
                   "prediction_hist": self.prediction_hist.tolist(), "labelled": self.labelled,
                   "correct": self.correct, "input_values": self.input_values,
                   "input_sum": self.input_sum.tolist(), "input_sumsq": self.input_sumsq.tolist(),
                   "input_hist": self.input_hist.tolist() if self.binning.input_range is not None else None}
            self._reset()
        return out


def _confidence_bin(confidence: float) -> int:
    if not np.isfinite(confidence):
        return 0
    return int(min(CONFIDENCE_BINS - 1, max(0, int(confidence * CONFIDENCE_BINS))))


def profile_from_summary(summary: dict[str, Any], binning: Binning) -> dict[str, Any]:
    """A reference profile (the manifest's ``profile``): a summary's histograms as fractions, plus means and spreads."""
    n = max(1, summary["predictions"])
    values = max(1, summary["input_values"])
    mean = np.asarray(summary["input_sum"]) / values
    std = np.sqrt(np.maximum(0.0, np.asarray(summary["input_sumsq"]) / values - mean**2))
    hist = summary.get("input_hist")
    return {"format": PROFILE_FORMAT, "measure": "psi", "samples": summary["predictions"],
            "channels": binning.channels, "input_range": list(binning.input_range) if binning.input_range else None,
            "input_mean": [round(float(v), 6) for v in mean], "input_std": [round(float(v), 6) for v in std],
            "input_hist": None if hist is None else [[round(c / values, 6) for c in row] for row in hist],
            "confidence_hist": [round(c / n, 6) for c in summary["confidence_hist"]],
            "mean_confidence": round(summary["confidence_sum"] / n, 6),
            "prediction_hist": [round(c / n, 6) for c in summary["prediction_hist"]]}

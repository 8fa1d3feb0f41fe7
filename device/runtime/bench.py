"""Latency measurement in the style of TFLite's ``benchmark_model``: warm up, then time each run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def time_calls(fn: Callable[[Any], Any], arg: Any, runs: int, warmup: int) -> np.ndarray:
    """Call ``fn(arg)`` ``warmup`` times, then time ``runs`` calls; seconds per call."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
    for _ in range(warmup):
        fn(arg)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn(arg)
        times[i] = time.perf_counter() - t0
    return times


def latency_summary(times: np.ndarray, batch: int = 1) -> dict[str, float]:
    """Median/p90/p99/mean/min in milliseconds, and throughput in samples per second."""
    return {
        "runs": int(times.size),
        "batch": int(batch),
        "median_ms": float(np.median(times) * 1e3),
        "p90_ms": float(np.percentile(times, 90) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "mean_ms": float(times.mean() * 1e3),
        "min_ms": float(times.min() * 1e3),
        "throughput_per_s": float(batch / times.mean()),
    }


def random_raw_input(shape: tuple[int, ...], raw_dtype: str, seed: int = 0) -> np.ndarray:
    """A random raw input: uint8 pixels for image bundles, uniform [0, 1) floats otherwise."""
    rng = np.random.default_rng(seed)
    if raw_dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(size=shape, dtype=np.float32)

"""Latency measurement in the style of TFLite's ``benchmark_model``: warm up, then time each run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class BenchConfig:
    """``edgeloop device bench``'s settings; every bad value names its flag and allowed range."""

    runs: int = 200
    warmup: int = 20
    batch: int = 1
    threads: tuple[int | None, ...] = (None,)  # None: the interpreter's default

    def __post_init__(self) -> None:
        if not 1 <= self.runs <= 10_000_000:
            raise ValueError(f"--runs must be an integer in [1, 10000000], got {self.runs}")
        if not 0 <= self.warmup <= 10_000_000:
            raise ValueError(f"--warmup must be an integer in [0, 10000000], got {self.warmup}")
        if not 1 <= self.batch <= 65_536:
            raise ValueError(f"--batch must be an integer in [1, 65536] (samples per call), got {self.batch}")
        if not self.threads or any(t is not None and not 1 <= t <= 256 for t in self.threads):
            raise ValueError(f"--threads must be integers in [1, 256], e.g. 1 or 1,2,4; got {list(self.threads)}")


def parse_threads(text: str | None) -> tuple[int | None, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; None -> the interpreter's default. Raises naming ``--threads``."""
    if text is None:
        return (None,)
    try:
        values = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise ValueError(f"--threads must be integers in [1, 256], e.g. 1 or 1,2,4; got {text!r}") from None
    if not values or any(not 1 <= v <= 256 for v in values):
        raise ValueError(f"--threads must be integers in [1, 256], e.g. 1 or 1,2,4; got {text!r}")
    return values


def random_inputs(specs: tuple[Any, ...], batch: int, seed: int = 0) -> Any:
    """Random raw inputs for every input spec (``-1`` dimensions taken as 1): an array, or a mapping by name."""
    arrays = {}
    for i, spec in enumerate(specs):
        shape = (batch, *(1 if d == -1 else d for d in spec.shape))
        if spec.raw_dtype in ("int16", "int32", "int64") or (spec.raw_dtype == "int8" and spec.quantization is None):
            arrays[spec.name] = np.random.default_rng(seed + i).integers(0, 10, size=shape).astype(spec.raw_dtype)
        else:
            arrays[spec.name] = random_raw_input(shape, spec.raw_dtype, seed=seed + i)
    return next(iter(arrays.values())) if len(arrays) == 1 else arrays


def bare_call(runtime: Any, x: Any, num_threads: int | None) -> tuple[Callable[[Any], Any], Any]:
    """The bare interpreter loop on the same model: ``set_tensor``/``invoke``/``get_tensor`` for every
    tensor, on inputs already model-ready (what the LiteRT examples time). A fresh interpreter of the
    same backend and thread count; a fixed-batch model is fed one model batch per invoke."""
    from device.runtime.interpreter import interpreter_options, load_interpreter_class

    batches, _ = runtime._feed_all(x)
    cls, _ = load_interpreter_class(runtime.backend)
    interpreter = cls(model_content=Path(runtime.model_path).read_bytes(), num_threads=num_threads,
                      **interpreter_options(cls))
    interpreter.allocate_tensors()
    if runtime._runner is not None:
        runner = interpreter.get_signature_runner(runtime.signature)
        feeds = dict(zip(runtime._in_keys, batches))
        return (lambda feeds: runner(**feeds)), feeds
    ins = [int(d["index"]) for d in runtime._in_details]
    outs = [int(d["index"]) for d in runtime._out_details]
    fixed = runtime._fixed_batch
    if fixed is None:
        for index, b in zip(ins, batches):
            interpreter.resize_tensor_input(index, list(b.shape))
        interpreter.allocate_tensors()
        chunks = [batches]
    else:
        n = batches[0].shape[0]
        chunks = [[b[s : s + fixed] for b in batches] for s in range(0, n, fixed)]
        chunks = [[np.resize(c, (fixed, *c.shape[1:])) for c in chunk] for chunk in chunks]

    def call(chunks: list[list[np.ndarray]]) -> list[np.ndarray]:
        result = []
        for chunk in chunks:
            for index, b in zip(ins, chunk):
                interpreter.set_tensor(index, b)
            interpreter.invoke()
            result = [interpreter.get_tensor(o) for o in outs]
        return result

    return call, chunks


def time_interleaved(calls: list[tuple[Callable[[Any], Any], Any]], runs: int, warmup: int,
                     rounds: int = 5) -> list[np.ndarray]:
    """Time several ``(fn, arg)`` alike: ``rounds`` alternating blocks of ``runs / rounds`` calls each,
    each block after its own warm-up, so drift on a busy machine hits every one the same."""
    rounds = max(1, min(rounds, runs))
    sizes = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    parts: list[list[np.ndarray]] = [[] for _ in calls]
    for r, size in enumerate(sizes):
        order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
        for i in order:
            fn, arg = calls[i]
            parts[i].append(time_calls(fn, arg, runs=size, warmup=max(1, warmup // rounds) if warmup else 0))
    return [np.concatenate(p) for p in parts]

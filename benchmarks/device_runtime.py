"""What does the device side cost, next to the bare interpreter and next to TensorFlow?

edgeloop's claim is that ``device/`` is a thin, TensorFlow-free layer over LiteRT. This
script checks that claim in one run, side by side, on the shipped MNIST bundles:

1. per-sample latency (batch 1, ``num_threads=1``) of ``device.Runtime.predict`` on a raw
   uint8 image versus a bare ``set_tensor`` + ``invoke`` + ``get_tensor`` loop, in LiteRT,
   in the legacy tflite-runtime 2.14 (``.venv-legacy``, numpy<2) and in TF 2.21's
   deprecated ``tf.lite.Interpreter``; and the overhead of ``Runtime.predict`` over the
   bare LiteRT loop (target: at most 5 %);
2. the import time of the device side versus the cloud side, in fresh interpreters;
3. the installed size of the ``device`` extra versus the ``cloud`` extra.

Every interpreter backend runs in its own long-lived worker process (tflite-runtime
cannot share a process with numpy 2, and TensorFlow must not share one with LiteRT and
disturb its timings). The coordinator asks the workers for one batch of timed calls at a
time, in several interleaved rounds with a rotating order, so that drift on a noisy
machine hits every variant alike; a variant's latency is the median of its round medians.

Run: ``.venv/bin/python benchmarks/device_runtime.py [--quick] [--out PATH]``
(``make bench``). Results go to ``benchmarks/results/device_runtime.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = {"float32": ROOT / "models/bundles/mnist-cnn-float32", "int8": ROOT / "models/bundles/mnist-cnn-int8"}
EXAMPLE_IMAGE = ROOT / "models/examples/digit-7.png"
DEFAULT_OUT = ROOT / "benchmarks/results/device_runtime.json"
VENV_PYTHON = Path(sys.executable)
LEGACY_PYTHON = ROOT / ".venv-legacy/bin/python"
MARK = "@@bench "  # prefixes protocol lines, so stray prints from a library cannot be mistaken for them
OVERHEAD_TARGET_PCT = 5.0
SIZE_EXCLUDED = frozenset({"pip", "setuptools"})

# Logs (make bench, CI) are not terminals: give the tables room instead of rich's 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=150)


@dataclass(frozen=True)
class Settings:
    """How much to measure: the full run, or ``--quick`` for a smoke test."""

    rounds: int
    runs: int  # timed calls per variant per round
    warmup: int  # untimed calls before each timed batch (the caches went cold in between)
    import_reps: int


FULL = Settings(rounds=10, runs=3000, warmup=300, import_reps=5)
QUICK = Settings(rounds=3, runs=200, warmup=50, import_reps=1)


# -- latency: worker processes -------------------------------------------------------------

# Runs inside each worker's interpreter (.venv or .venv-legacy): numpy and the repo's
# device package only, so it works with numpy 1 and 2 and without rich or packaging.
WORKER_SOURCE = r'''
import json, os, sys, traceback
from importlib import metadata
import numpy as np
from device.runtime.bench import time_calls
from device.runtime.bundle import read_manifest
from device.runtime.preprocess import input_transform

MARK = "@@bench "
CONFIG = json.loads(sys.argv[1])
BACKEND = CONFIG["backend"]
DISTRIBUTIONS = ("ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu", "numpy")


def send(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def interpreter_class():
    if BACKEND == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter
    elif BACKEND == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    return Interpreter


def raw_loop(cls, bundle, raw):
    """The bare LiteRT loop on an input already in the model's dtype."""
    manifest = read_manifest(bundle)
    spec = manifest.input
    x = input_transform(spec.normalization, spec.dtype, spec.quantization)(raw.reshape((1,) + spec.shape))
    interpreter = cls(model_path=os.path.join(bundle, manifest.model_file), num_threads=1)
    interpreter.allocate_tensors()
    i = interpreter.get_input_details()[0]["index"]
    o = interpreter.get_output_details()[0]["index"]

    def call(x):
        interpreter.set_tensor(i, x)
        interpreter.invoke()
        return interpreter.get_tensor(o)

    return call, x


def example_loop(cls, bundle, raw):
    """Runtime.predict's work written by hand, as in the LiteRT examples: normalize, quantize with
    the tensor's parameters, invoke, dequantize, softmax."""
    manifest = read_manifest(bundle)
    norm = manifest.input.normalization
    interpreter = cls(model_path=os.path.join(bundle, manifest.model_file), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    dtype = inp["dtype"]

    def call(image):
        x = (image.astype(np.float32) - norm.mean) / norm.std
        if dtype != np.float32:
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / s_in + z_in), info.min, info.max).astype(dtype)
        interpreter.set_tensor(inp["index"], x[np.newaxis])
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        if s_out:
            y = (y.astype(np.float32) - z_out) * s_out
        e = np.exp(y - y.max())
        return e / e.sum()

    return call, raw


def runtime_predict(bundle, raw):
    from device import Runtime
    runtime = Runtime(bundle, num_threads=1, backend=BACKEND)
    return runtime.predict, raw


def versions():
    found = {"python": sys.version.split()[0]}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def main():
    raw = np.asarray(CONFIG["image"], dtype=np.uint8)
    calls, loaded = {}, {}
    try:
        cls = interpreter_class()
    except Exception as exc:
        send({"ready": False, "error": f"cannot import the {BACKEND} interpreter: {exc!r}"})
        return
    for name, bundle in CONFIG["bundles"].items():
        for kind in CONFIG["kinds"]:
            key = name + "/" + kind
            try:
                make = {"raw": lambda: raw_loop(cls, bundle, raw), "example": lambda: example_loop(cls, bundle, raw),
                        "runtime": lambda: runtime_predict(bundle, raw)}[kind]
                fn, arg = make()
                calls[key] = (fn, arg)
                loaded[key] = {"top1": int(np.argmax(fn(arg)))}
            except Exception as exc:
                loaded[key] = {"error": "".join(traceback.format_exception_only(type(exc), exc)).strip()}
    send({"ready": True, "versions": versions(), "variants": loaded})
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        fn, arg = calls[request["key"]]
        times = time_calls(fn, arg, runs=request["runs"], warmup=request["warmup"])
        send({"times": times.tolist()})


main()
'''


class WorkerError(RuntimeError):
    """A worker process failed to start, answered garbage, or ran past its time limit."""


class Worker:
    """One backend's worker process, spoken to in JSON lines with bounded waits."""

    def __init__(self, backend: str, python: Path, config: dict[str, Any]) -> None:
        self.backend = backend
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGELOOP_INTERPRETER": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self._proc = subprocess.Popen(
            [str(python), "-c", WORKER_SOURCE, json.dumps({**config, "backend": backend})],
            cwd=ROOT, env=env, text=True, bufsize=1,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith(MARK):
                self._lines.put(line[len(MARK):])
        self._lines.put(None)  # end of stream: the process exited

    def _pump_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip())

    def stderr_tail(self, lines: int = 5) -> str:
        return " | ".join(list(self._stderr)[-lines:]) or "(no stderr)"

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"{self.backend} worker gave no answer within {timeout:.0f} s") from None
        if line is None:
            self._proc.wait(timeout=10)
            raise WorkerError(
                f"{self.backend} worker exited with status {self._proc.returncode}: {self.stderr_tail()}"
            )
        return json.loads(line)

    def request(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(payload) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(f"{self.backend} worker is gone: {self.stderr_tail()}") from None
        return self.receive(timeout)

    def close(self) -> None:
        """Ask the worker to quit; kill it if it does not within 10 s. Always reaps it."""
        try:
            if self._proc.poll() is None and self._proc.stdin is not None:
                self._proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)


@dataclass(frozen=True)
class Variant:
    """One way of classifying a sample: which backend's worker, and public API or bare loop."""

    key: str
    label: str
    backend: str
    kind: str  # "runtime" (Runtime.predict on raw uint8), "raw" (set_tensor + invoke + get_tensor),
    #            or "example" (the same work as Runtime.predict, hand-written as in the LiteRT examples)


VARIANTS = (
    Variant("runtime_litert", "Runtime.predict · LiteRT", "ai_edge_litert", "runtime"),
    Variant("raw_litert", "raw invoke · LiteRT", "ai_edge_litert", "raw"),
    Variant("example_litert", "hand-written example loop · LiteRT", "ai_edge_litert", "example"),
    Variant("runtime_tflite_runtime", "Runtime.predict · tflite-runtime", "tflite_runtime", "runtime"),
    Variant("raw_tflite_runtime", "raw invoke · tflite-runtime", "tflite_runtime", "raw"),
    Variant("raw_tf_lite", "raw invoke · tf.lite (TF)", "tensorflow", "raw"),
)
WORKER_PYTHON = {"ai_edge_litert": VENV_PYTHON, "tflite_runtime": LEGACY_PYTHON, "tensorflow": VENV_PYTHON}
BASELINE = "raw_litert"
OVERHEAD_PAIRS = (
    ("runtime_litert", "raw_litert"),
    ("runtime_litert", "example_litert"),
    ("runtime_tflite_runtime", "raw_tflite_runtime"),
)


@dataclass
class Series:
    """The timings of one variant on one bundle, one array of seconds per round."""

    bundle: str
    variant: Variant
    rounds: list[np.ndarray] = field(default_factory=list)
    top1: int | None = None
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None and bool(self.rounds)

    def pooled(self) -> np.ndarray:
        return np.concatenate(self.rounds)

    def median_us(self) -> float:
        """The median of the per-round medians: a burst of noise spoils one round, not the estimate."""
        return float(np.median(self.round_medians_us()))

    def round_medians_us(self) -> list[float]:
        return [float(np.median(r) * 1e6) for r in self.rounds]


def raw_image() -> np.ndarray:
    """A real MNIST test digit as a device would read it: uint8 pixels, (28, 28, 1)."""
    from device import read_manifest
    from device.runtime.images import read_image

    return read_image(EXAMPLE_IMAGE, read_manifest(BUNDLES["int8"]).input.shape)


def start_workers(image: np.ndarray) -> tuple[dict[str, Worker], dict[str, str]]:
    """Start one worker per backend (all at once: TensorFlow's import is slow); the reasons of those that could not."""
    workers: dict[str, Worker] = {}
    unavailable: dict[str, str] = {}
    for backend, python in WORKER_PYTHON.items():
        if not python.exists():
            unavailable[backend] = f"{python.relative_to(ROOT)} not found (run `make legacy`)"
            continue
        kinds = sorted({v.kind for v in VARIANTS if v.backend == backend})
        config = {"bundles": {k: str(p) for k, p in BUNDLES.items()}, "kinds": kinds, "image": image.tolist()}
        try:
            workers[backend] = Worker(backend, python, config)
        except OSError as exc:
            unavailable[backend] = f"cannot start {python}: {exc}"
    return workers, unavailable


def wait_ready(workers: dict[str, Worker], series: dict[tuple[str, str], Series]) -> dict[str, dict[str, str]]:
    """Wait for each worker's load report; mark what failed to load. Returns each backend's versions."""
    versions: dict[str, dict[str, str]] = {}
    for backend, worker in list(workers.items()):
        try:
            hello = worker.receive(timeout=180)
        except WorkerError as exc:
            hello = {"ready": False, "error": str(exc)}
        if not hello.get("ready"):
            mark_unavailable(series, backend, hello.get("error", "worker failed"))
            worker.close()
            del workers[backend]
            continue
        versions[backend] = hello["versions"]
        for (bundle, _key), s in series.items():
            if s.variant.backend == backend:
                loaded = hello["variants"].get(f"{bundle}/{s.variant.kind}", {"error": "not loaded"})
                s.error, s.top1 = loaded.get("error"), loaded.get("top1")
    return versions


def mark_unavailable(series: dict[tuple[str, str], Series], backend: str, reason: str) -> None:
    for s in series.values():
        if s.variant.backend == backend:
            s.error = reason


def measure_latency(settings: Settings) -> tuple[dict[tuple[str, str], Series], dict[str, dict[str, str]]]:
    """Interleaved rounds over every (bundle, variant); each round in a rotated order."""
    series = {(b, v.key): Series(b, v) for b in BUNDLES for v in VARIANTS}
    workers, unavailable = start_workers(raw_image())
    try:
        for backend, reason in unavailable.items():
            mark_unavailable(series, backend, reason)
        versions = wait_ready(workers, series)
        order = list(series)
        # A round's budget: generous for a slow machine, but bounded.
        timeout = 60 + (settings.runs + settings.warmup) * 2e-3
        for r in range(settings.rounds):
            shift = r % len(order)
            for bundle, key in order[shift:] + order[:shift]:
                s = series[(bundle, key)]
                worker = workers.get(s.variant.backend)
                if s.error is not None or worker is None:
                    continue
                payload = {"cmd": "time", "key": f"{bundle}/{s.variant.kind}", "runs": settings.runs,
                           "warmup": settings.warmup}
                try:
                    s.rounds.append(np.asarray(worker.request(payload, timeout)["times"]))
                except WorkerError as exc:
                    mark_unavailable(series, s.variant.backend, str(exc))
                    workers.pop(s.variant.backend).close()
            console.print(f"  latency round {r + 1}/{settings.rounds} done", style="dim")
    finally:
        for worker in workers.values():
            worker.close()
    return series, versions


def overhead(runtime: Series, raw: Series) -> dict[str, Any] | None:
    """``Runtime.predict`` versus the bare loop: pooled medians, and the per-round paired ratios."""
    if not (runtime.available and raw.available):
        return None
    rt, bare = runtime.median_us(), raw.median_us()
    paired = [(a / b - 1) * 100 for a, b in zip(runtime.round_medians_us(), raw.round_medians_us())]
    pct = (rt / bare - 1) * 100
    return {
        "runtime_median_us": rt,
        "raw_median_us": bare,
        "overhead_us": rt - bare,
        "overhead_pct": pct,
        "per_round_pct": {"median": float(np.median(paired)), "min": min(paired), "max": max(paired)},
        "target_pct": OVERHEAD_TARGET_PCT,
        "target_met": pct <= OVERHEAD_TARGET_PCT,
    }


def check_agreement(series: dict[tuple[str, str], Series]) -> dict[str, dict[str, int]]:
    """Top-1 class of the example digit per bundle and variant: all should agree."""
    result: dict[str, dict[str, int]] = {}
    for (bundle, key), s in series.items():
        if s.top1 is not None:
            result.setdefault(bundle, {})[key] = s.top1
    for bundle, tops in result.items():
        if len(set(tops.values())) > 1:
            console.print(f"[bold red]warning:[/] the variants disagree on the {bundle} bundle's top-1 class: {tops}")
    return result


# -- import time ---------------------------------------------------------------------------

IMPORTS = {
    "numpy (baseline)": "import numpy",
    "device": "import device",
    "ai_edge_litert.interpreter": "import ai_edge_litert.interpreter",
    "device + ai_edge_litert": "import device, ai_edge_litert.interpreter",
    "tensorflow": "import tensorflow",
}
IMPORT_CHILD = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "{statement}\n"
    "print({mark!r} + json.dumps({{'seconds': time.perf_counter() - t0}}))\n"
)


def time_import(statement: str, timeout: float = 120) -> float:
    """Seconds ``statement`` takes in a fresh .venv interpreter, timed inside the child."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    code = IMPORT_CHILD.format(statement=statement, mark=MARK)
    done = subprocess.run([str(VENV_PYTHON), "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return float(json.loads(line[len(MARK):])["seconds"])
    last = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    raise WorkerError(f"`{statement}` exited with status {done.returncode}: {last}")


def measure_imports(reps: int) -> dict[str, dict[str, Any]]:
    """Each import ``reps`` times, interleaved (rounds of every import, rotated); medians in ms."""
    samples: dict[str, list[float]] = {name: [] for name in IMPORTS}
    errors: dict[str, str] = {}
    names = list(IMPORTS)
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if name in errors:
                continue
            try:
                samples[name].append(time_import(IMPORTS[name]))
            except (WorkerError, subprocess.TimeoutExpired) as exc:
                errors[name] = str(exc)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        ms = [s * 1e3 for s in samples[name]]
        results[name] = {"statement": IMPORTS[name], "error": errors.get(name), "samples_ms": ms}
        if ms:
            results[name].update(median_ms=float(np.median(ms)), min_ms=min(ms), max_ms=max(ms))
    return results


# -- installed size ------------------------------------------------------------------------


def requirement_closure(root: str, extra: str) -> tuple[dict[str, metadata.Distribution], list[str]]:
    """The installed distributions ``root[extra]`` pulls in, by normalized name; and the missing ones.

    Walks Requires-Dist, evaluating markers with the ``extra`` each requirement was reached
    through (so ``edgeloop[cloud]`` -> ``edgeloop[device]`` -> ai-edge-litert is followed).
    """
    found: dict[str, metadata.Distribution] = {}
    missing: set[str] = set()
    seen: set[tuple[str, str]] = set()
    stack = [(root, extra)]
    while stack:
        name, via_extra = stack.pop()
        norm = canonicalize_name(name)
        if (norm, via_extra) in seen:
            continue
        seen.add((norm, via_extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(norm)
            continue
        found[norm] = dist
        for spec in dist.requires or ():
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": via_extra}):
                continue
            stack.append((req.name, ""))
            stack.extend((req.name, e) for e in req.extras)
    return found, sorted(missing)


def installed_bytes(dist: metadata.Distribution) -> int | None:
    """Bytes on disk of the files a distribution's RECORD lists; None if it lists none."""
    if dist.files is None:
        return None
    total, seen = 0, set()
    for f in dist.files:
        path = Path(str(f.locate())).resolve()
        if path in seen:
            continue
        seen.add(path)
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            pass
    return total


def measure_sizes(project: str = "edgeloop", extras: tuple[str, ...] = ("device", "cloud")) -> dict[str, Any]:
    """Installed MB of each extra's requirement closure (the project itself, pip and setuptools excluded)."""
    results: dict[str, Any] = {}
    for extra in extras:
        dists, missing = requirement_closure(project, extra)
        sizes: dict[str, int] = {}
        no_record: list[str] = []
        for norm, dist in sorted(dists.items()):
            if norm in SIZE_EXCLUDED or norm == canonicalize_name(project):
                continue
            size = installed_bytes(dist)
            if size is None:
                no_record.append(norm)
            else:
                sizes[f"{dist.metadata['Name']} {dist.version}"] = size
        ranked = sorted(sizes.items(), key=lambda kv: -kv[1])
        results[extra] = {
            "total_mb": sum(sizes.values()) / 1e6,
            "packages": len(sizes),
            "top5": [{"package": name, "mb": size / 1e6} for name, size in ranked[:5]],
            "all_mb": {name: size / 1e6 for name, size in ranked},
            "missing": missing,
            "no_record": no_record,
        }
    return results


def venv_site_packages_mb(venv: Path) -> float | None:
    """Bytes on disk under a virtualenv's site-packages, in MB: a real install, not a computed closure."""
    roots = list(venv.glob("lib/python*/site-packages"))
    if not roots:
        return None
    return sum(f.stat().st_size for root in roots for f in root.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


# -- machine and report ----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(worker_versions: dict[str, dict[str, str]]) -> dict[str, Any]:
    legacy = worker_versions.get("tflite_runtime", {})
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "packages": {
            "ai-edge-litert": version_of("ai-edge-litert"),
            "tensorflow": version_of("tensorflow-cpu") or version_of("tensorflow"),
            "numpy": version_of("numpy"),
        },
        "legacy_env": {
            "python": legacy.get("python"),
            "tflite-runtime": legacy.get("tflite-runtime"),
            "numpy": legacy.get("numpy"),
        } if legacy else None,
    }


def latency_json(series: dict[tuple[str, str], Series]) -> dict[str, dict[str, Any]]:
    from device.runtime.bench import latency_summary

    out: dict[str, dict[str, Any]] = {}
    for (bundle, key), s in series.items():
        entry: dict[str, Any] = {"label": s.variant.label, "backend": s.variant.backend, "available": s.available,
                                 "error": s.error, "top1": s.top1}
        if s.available:
            entry.update(pooled=latency_summary(s.pooled()), median_us=s.median_us(),
                         round_medians_us=s.round_medians_us())
        out.setdefault(bundle, {})[key] = entry
    return out


def latency_table(series: dict[tuple[str, str], Series], settings: Settings) -> Table:
    table = Table(title=f"Per-sample latency, batch 1, num_threads=1 (µs; median of {settings.rounds} interleaved "
                        f"rounds' medians, {settings.runs} calls each; p90 over all calls)")
    for col in ("bundle", "variant", "median", "p90", "round medians", "vs raw LiteRT"):
        table.add_column(col, justify="left" if col in ("bundle", "variant") else "right")
    for bundle in BUNDLES:
        base = series[(bundle, BASELINE)]
        for v in VARIANTS:
            s = series[(bundle, v.key)]
            if not s.available:
                table.add_row(bundle, v.label, "n/a", "", "", f"[yellow]unavailable: {escape(str(s.error))}[/]")
                continue
            pooled = s.pooled()
            rm = s.round_medians_us()
            rel = f"{(s.median_us() / base.median_us() - 1) * 100:+.1f} %" if base.available else "n/a"
            table.add_row(bundle, v.label, f"{s.median_us():.2f}", f"{np.percentile(pooled, 90) * 1e6:.2f}",
                          f"{min(rm):.2f}–{max(rm):.2f}", "baseline" if v.key == BASELINE else rel)
        table.add_section()
    return table


def overhead_table(overheads: dict[tuple[str, str], dict[str, Any] | None]) -> Table:
    table = Table(title=f"Runtime.predict overhead over a baseline in the same backend (target ≤ {OVERHEAD_TARGET_PCT:g} %)")
    for col in ("bundle", "baseline", "predict µs", "baseline µs", "overhead µs", "overhead", "per-round range", "≤ 5 %?"):
        table.add_column(col, justify="left" if col in ("bundle", "baseline") else "right")
    labels = {v.key: v.label for v in VARIANTS}
    for (bundle, baseline), o in overheads.items():
        if o is None:
            table.add_row(bundle, labels[baseline], "n/a", "n/a", "", "", "", "[yellow]unavailable[/]")
            continue
        pr = o["per_round_pct"]
        table.add_row(bundle, labels[baseline], f"{o['runtime_median_us']:.2f}", f"{o['raw_median_us']:.2f}",
                      f"{o['overhead_us']:.2f}", f"{o['overhead_pct']:+.1f} %", f"{pr['min']:+.1f} … {pr['max']:+.1f} %",
                      "[green]met[/]" if o["target_met"] else "[bold red]NOT met[/]")
    return table


def import_table(imports: dict[str, dict[str, Any]], reps: int) -> Table:
    table = Table(title=f"Import time in a fresh .venv interpreter (ms, median of {reps})")
    for col in ("import", "median", "min", "max"):
        table.add_column(col, justify="left" if col == "import" else "right")
    for name, r in imports.items():
        if "median_ms" not in r:
            table.add_row(name, "n/a", "", f"[yellow]{escape(str(r['error']))}[/]")
            continue
        table.add_row(name, f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}")
    return table


def size_table(sizes: dict[str, Any]) -> Table:
    table = Table(title="Installed size of each extra's requirement closure (MB = 10^6 bytes; "
                        "edgeloop itself, pip and setuptools excluded)")
    for col in ("extra", "packages", "total MB", "largest 5"):
        table.add_column(col, justify="right" if col in ("packages", "total MB") else "left")
    for extra, r in sizes.items():
        top = "\n".join(f"{t['package']}: {t['mb']:.1f}" for t in r["top5"])
        notes = "".join(f"\n[yellow]required, not installed: {m}[/]" for m in r["missing"])
        table.add_row(escape(f"edgeloop[{extra}]"), str(r["packages"]), f"{r['total_mb']:.1f}", top + notes)
    return table


def verdict(overheads: dict[tuple[str, str], dict[str, Any] | None]) -> str:
    """One honest line on the headline target: Runtime.predict versus the bare LiteRT loop."""
    litert = {bundle: o for (bundle, baseline), o in overheads.items() if baseline == BASELINE and o}
    if not litert:
        return "[yellow]Runtime.predict overhead over raw LiteRT: not measured (LiteRT unavailable)[/]"
    parts = ", ".join(f"{bundle} {o['overhead_pct']:+.1f} % ({o['overhead_us']:.1f} µs)" for bundle, o in litert.items())
    met = all(o["target_met"] for o in litert.values())
    status = "[green]target met[/]" if met else "[bold red]target NOT met[/]"
    example = {bundle: o for (bundle, baseline), o in overheads.items() if baseline == "example_litert" and o}
    same_work = ", ".join(f"{bundle} {o['overhead_pct']:+.1f} %" for bundle, o in example.items())
    return (f"Runtime.predict overhead over raw LiteRT invoke: {parts}; ≤ {OVERHEAD_TARGET_PCT:g} % {status}\n"
            f"Runtime.predict vs the same pre/post-processing written by hand: {same_work or 'n/a'}")


# -- multi-output third-party model: Runtime.run versus the bare loop ------------------------

MULTI_OUTPUT_SOURCE = r"""
import json, sys
import numpy as np
from device import Runtime
from device.runtime.bench import bare_call, time_interleaved

cfg = json.loads(sys.argv[1])
rt = Runtime(cfg["model"], num_threads=1)
x = np.random.default_rng(0).uniform(-1, 1, size=(1, *rt.input_spec.shape)).astype(np.float32)
bare, feeds = bare_call(rt, x, 1)
got, ref = rt.run(x), bare(feeds)
delta = max(float(np.abs(got[name] - r).max()) for name, r in zip(rt.output_names, ref))
rounds = []
for _ in range(cfg["rounds"]):
    a, b = time_interleaved([(rt.run, x), (bare, feeds)], runs=cfg["runs"], warmup=cfg["warmup"], rounds=2)
    rounds.append([float(np.median(a)), float(np.median(b))])
print("@@multi " + json.dumps({"outputs": {s.name: list(s.shape) for s in rt.output_specs}, "max_abs_delta": delta,
                               "round_medians_s": rounds}))
"""


def measure_multi_output(settings: Settings) -> dict[str, Any]:
    """MediaPipe's face detector (two outputs, from its wheel): Runtime.run against bare
    set_tensor/invoke/get_tensor of both outputs, interleaved, batch 1, one thread, in a fresh process."""
    sys.path.insert(0, str(ROOT))
    from tests.thirdparty import MODELS, FetchError, fetch

    try:
        model = fetch("face_detector")
    except FetchError as exc:
        return {"error": str(exc)}
    config = {"model": str(model), "rounds": settings.rounds, "runs": max(20, settings.runs // 10),
              "warmup": max(5, settings.warmup // 10)}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGELOOP_INTERPRETER": "ai_edge_litert"}
    done = subprocess.run([str(VENV_PYTHON), "-c", MULTI_OUTPUT_SOURCE, json.dumps(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("@@multi ")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    data = json.loads(lines[-1][len("@@multi "):])
    medians = np.array(data["round_medians_s"]) * 1e6
    run_us, raw_us = float(np.median(medians[:, 0])), float(np.median(medians[:, 1]))
    return {"model": MODELS["face_detector"].what, "file": model.name, "outputs": data["outputs"],
            "max_abs_delta_vs_raw": data["max_abs_delta"], "runtime_run_us": run_us, "raw_invoke_us": raw_us,
            "overhead_pct": (run_us / raw_us - 1) * 100, "target_met": run_us <= raw_us * (1 + OVERHEAD_TARGET_PCT / 100),
            "calls_per_variant": settings.rounds * config["runs"]}


def multi_output_table(multi: dict[str, Any]) -> Table:
    table = Table(title="Multi-output third-party model, batch 1, num_threads=1 (µs; median of round medians)")
    for column in ("model", "outputs", "Runtime.run", "raw LiteRT invoke", "overhead", "max |Δ| vs raw"):
        table.add_column(column, justify="left" if column in ("model", "outputs") else "right")
    if "error" in multi:
        table.add_row("face detector", escape(multi["error"]), "", "", "", "")
        return table
    outputs = ", ".join(f"{k} {v}" for k, v in multi["outputs"].items())
    table.add_row(multi["model"], outputs, f"{multi['runtime_run_us']:.1f}", f"{multi['raw_invoke_us']:.1f}",
                  f"{multi['overhead_pct']:+.1f} % ({'≤' if multi['target_met'] else '>'} {OVERHEAD_TARGET_PCT:g} %)",
                  f"{multi['max_abs_delta_vs_raw']:.1e}")
    return table


# -- MobileNetV2 int8 with uint8 input (issue 10): a realistic image model -------------------------
# Self-contained: its own bundle, its own worker process, its own table and JSON key.

MOBILENET_WORKER = r"""
import json, sys, time
import numpy as np
from device.runtime.interpreter import load_interpreter_class
from device.runtime.runtime import Runtime

cfg = json.loads(sys.argv[1])
image = np.load(cfg["image"])
rt = Runtime(cfg["bundle"], num_threads=1)
cls, _ = load_interpreter_class()
it = cls(model_path=str(rt.model_path), num_threads=1)
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
batch = image[None]

def raw():
    it.set_tensor(inp["index"], batch)
    it.invoke()
    return it.get_tensor(out["index"])

def predict():
    return rt.predict(image)

calls = {"raw_litert": raw, "runtime_predict": predict}
assert np.array_equal(rt.preprocess(image)[0], batch), "the uint8 input is not the raw pixels"
rounds = {k: [] for k in calls}
for r in range(cfg["rounds"]):
    order = list(calls) if r % 2 == 0 else list(reversed(list(calls)))
    for key in order:
        fn = calls[key]
        for _ in range(cfg["warmup"]):
            fn()
        times = np.empty(cfg["runs"])
        for i in range(cfg["runs"]):
            t0 = time.perf_counter()
            fn()
            times[i] = time.perf_counter() - t0
        rounds[key].append(float(np.median(times)) * 1e6)
from ai_edge_litert.interpreter import Interpreter, OpResolverType
plain = Interpreter(model_path=str(rt.model_path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
plain.allocate_tensors()
ops = {}
for op in plain._get_ops_details():  # without XNNPACK, so no op hides inside a DELEGATE node
    ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
print("@@bench " + json.dumps({"rounds": rounds, "ops": ops, "top1_raw": int(np.argmax(raw()[0])),
                                "top1_predict": int(np.argmax(predict()))}))
"""


def build_mobilenet_bundle(work: Path, images: int = 60) -> tuple[Path, dict[str, Any]]:
    """Random-init MobileNetV2 (alpha 0.35, 96x96x3) exported int8 with uint8 I/O, calibrated and
    verified on synthetic coloured shapes; returns the bundle and its verification."""
    import keras

    from cloud.export.exporter import ExportConfig, export_bundle, load_run
    from cloud.export.source import SourceOptions
    from cloud.train.data import load_image_folder
    from cloud.train.shapes import ShapesConfig, make_shapes
    from models.mobilenet import recalibrate_batch_norm
    from models.registry import get_model

    shapes = make_shapes(work / "shapes", ShapesConfig(per_class=images // 3, size=96, classes=3, seed=0))
    keras.utils.set_random_seed(0)
    model = get_model("mobilenet-v2").build((96, 96, 3), 3)
    recalibrate_batch_norm(model, load_image_folder(shapes).x.astype(np.float32) / 255.0)
    model.save(work / "mobilenet-v2.keras")
    # Random weights classify at chance by construction, so the raw outputs are compared (regression).
    # A random network quantizes far worse than a trained one: the tolerance is wide, the error reported.
    from cloud.export.verify import Tolerance

    run = load_run(work / "mobilenet-v2.keras", SourceOptions(data=str(shapes), task="regression"))
    bundle = work / "mobilenet-v2-int8"
    v = export_bundle(run, bundle, ExportConfig(mode="int8", io="uint8", name="mobilenet-v2-int8",
                                                tolerance=Tolerance(max_rel_logit_diff=1.0)))
    return bundle, v.to_json()


def measure_mobilenet(settings: Settings) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeloop-mobilenet-") as tmp:
        work = Path(tmp)
        console.print("mobilenet-v2: exporting a random-init MobileNetV2 int8 bundle with uint8 input")
        bundle, verification = build_mobilenet_bundle(work)
        image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        np.save(work / "image.npy", image)
        cfg = {"bundle": str(bundle), "image": str(work / "image.npy"), "rounds": settings.rounds,
               "runs": max(50, settings.runs // 10), "warmup": max(10, settings.warmup // 10)}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([str(VENV_PYTHON), "-c", MOBILENET_WORKER, json.dumps(cfg)], capture_output=True,
                              text=True, timeout=1800, env=env, cwd=ROOT)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
        if proc.returncode != 0 or line is None:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "worker failed"}
        data = json.loads(line[len(MARK):])
        size = (bundle / "model.tflite").stat().st_size
    raw_rm, rt_rm = data["rounds"]["raw_litert"], data["rounds"]["runtime_predict"]
    raw_us, rt_us = float(np.median(raw_rm)), float(np.median(rt_rm))
    per_round = [(b / a - 1) * 100 for a, b in zip(raw_rm, rt_rm)]
    return {"size_bytes": size, "ops": data["ops"], "raw_median_us": raw_us, "runtime_median_us": rt_us,
            "overhead_us": rt_us - raw_us, "overhead_pct": (rt_us / raw_us - 1) * 100,
            "per_round_pct": {"min": min(per_round), "max": max(per_round)},
            "target_met": (rt_us / raw_us - 1) * 100 <= OVERHEAD_TARGET_PCT,
            "same_top1": data["top1_raw"] == data["top1_predict"], "settings": cfg | {"bundle": None, "image": None},
            "verification": {k: verification[k] for k in ("samples", "max_abs_logit_diff", "max_rel_logit_diff")}}


def mobilenet_table(m: dict[str, Any]) -> Table:
    table = Table(title="MobileNetV2 alpha 0.35 96x96x3, int8 with uint8 input: Runtime.predict on a raw uint8 "
                        f"image vs set_tensor/invoke/get_tensor (µs, batch 1, 1 thread; target ≤ {OVERHEAD_TARGET_PCT:g} %)")
    for col in ("size", "raw LiteRT", "Runtime.predict", "overhead", "per-round range", "≤ 5 %?", "ops"):
        table.add_column(col, justify="left" if col == "ops" else "right")
    if "error" in m:
        table.add_row("", "", "", "", "", "[yellow]unavailable[/]", escape(m["error"]))
        return table
    ops = ", ".join(f"{k} {v}" for k, v in sorted(m["ops"].items(), key=lambda kv: -kv[1]))
    table.add_row(f"{m['size_bytes'] / 1024:.0f} KiB", f"{m['raw_median_us']:.1f}", f"{m['runtime_median_us']:.1f}",
                  f"{m['overhead_pct']:+.2f} % ({m['overhead_us']:.1f} µs)",
                  f"{m['per_round_pct']['min']:+.1f} … {m['per_round_pct']['max']:+.1f} %",
                  "[green]met[/]" if m["target_met"] else "[bold red]NOT met[/]", ops)
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few rounds and runs (~20 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    parser.add_argument("--only-mobilenet", action="store_true",
                        help="only the MobileNetV2 int8/uint8 row (writes benchmarks/results/device_runtime_mobilenet.json)")
    parser.add_argument("--only-multi-output", action="store_true",
                        help="only the multi-output third-party model row (writes device_runtime_multi_output.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    # one row alone: (key, measure, table, results file)
    only = {"mobilenet_v2": (measure_mobilenet, mobilenet_table, "device_runtime_mobilenet.json"),
            "multi_output": (measure_multi_output, multi_output_table, "device_runtime_multi_output.json")}
    chosen = "mobilenet_v2" if args.only_mobilenet else "multi_output" if args.only_multi_output else None
    if chosen is not None:
        measure, table, name = only[chosen]
        row = measure(settings)
        console.print(table(row))
        out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name(name)
        out.write_text(json.dumps({"benchmark": f"device_runtime/{chosen}", "quick": args.quick,
                                   "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                                   "machine": {"cpu": cpu_model(), "python": platform.python_version()},
                                   chosen: row}, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {out}")
        return 0
    console.print(f"[bold]edgeloop device runtime benchmark[/] ({'quick' if args.quick else 'full'} run)")

    console.print("latency: starting one worker per interpreter backend")
    series, worker_versions = measure_latency(settings)
    top1 = check_agreement(series)
    overheads = {(bundle, raw): overhead(series[(bundle, rt)], series[(bundle, raw)])
                 for bundle in BUNDLES for rt, raw in OVERHEAD_PAIRS}
    console.print(f"import time: {settings.import_reps} round(s) of fresh interpreters")
    imports = measure_imports(settings.import_reps)
    console.print("installed size: walking the requirement closures")
    sizes = measure_sizes()
    mobilenet = measure_mobilenet(settings)
    venvs = {name: venv_site_packages_mb(ROOT / name) for name in (".venv-device", ".venv", ".venv-legacy")}
    console.print("multi-output third-party model: Runtime.run vs the bare loop")
    multi = measure_multi_output(settings)
    elapsed = time.perf_counter() - started

    console.print()
    for table in (latency_table(series, settings), overhead_table(overheads), import_table(imports, settings.import_reps),
                  size_table(sizes), mobilenet_table(mobilenet), multi_output_table(multi)):
        console.print(table)
    result = {
        "benchmark": "device_runtime",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "settings": asdict(settings),
        "machine": machine_info(worker_versions),
        "worker_versions": worker_versions,
        "latency": latency_json(series),
        "top1_example_digit": top1,
        "overhead": {f"{bundle}/runtime_vs_{baseline}": o for (bundle, baseline), o in overheads.items()},
        "imports": imports,
        "sizes": sizes,
        "mobilenet_v2": mobilenet,
        "venv_site_packages_mb": venvs,
        "multi_output": multi,
        "elapsed_s": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print("site-packages on disk: " + ", ".join(
        f"{name} {mb:.0f} MB" if mb is not None else f"{name} absent" for name, mb in venvs.items())
        + "  (.venv-device = the device extra alone; .venv = everything)")
    console.print(verdict(overheads))
    console.print(f"wrote {args.out}; measured in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per federated round on Flower's deployment engine, LiteRT devices against a Keras baseline.

Every variant runs the same rounds in the same way: one SuperLink + ServerApp on 127.0.0.1 and N
``edgeloop device fl-client`` processes (SuperNodes), each with its own IID partition of sklearn's
digits, ``mlp-small``, SGD, batch 32, one local epoch. Flower starts a fresh ClientApp process
for every device in every round; the variants differ only in that ClientApp:

* ``litert``: :mod:`device.fl.client`, training inside the .tflite (no TensorFlow);
* ``keras``: :mod:`benchmarks.fl_keras_baseline`, Flower's usual Keras client, which imports
  TensorFlow in each round's fresh process.
* ``litert-stock``: the LiteRT client under Flower's stock device-side settings (3 s idle poll,
  1 s SuperExec poll, 1 s object-pull back-off, Flower's own ``flwr-clientapp`` launcher), to show
  what edgeloop's device-side tuning buys. The server side is the same in every variant.
* ``litert-nozygote`` (not run by default): the LiteRT client started as a fresh process by the
  lean launcher each round instead of forked from the warm zygote (``fl-client --no-zygote``).

Seconds per round is the median of the server's per-round wall time (send, train, reply,
aggregate, checkpoint, bundle). Peak RSS: the ClientApp process (its own ``ru_maxrss``) and the
device's long-lived processes (supervisor + SuperNode, sampled with psutil). Bytes per round are
the model payloads (global weights down to every device + updates up), not HTTP framing.

    nice -n 10 .venv/bin/python benchmarks/federated_deploy.py     # writes benchmarks/results/federated_deploy.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "benchmarks/results/federated_deploy.json"
TARGET_S_PER_ROUND = 1.5
TARGET_RSS_MB = 150.0


class RssSampler:
    """Peak RSS of each process in the trees under ``pids`` (psutil, every 0.2 s)."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.peak: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for root in list(self.roots):
                try:
                    procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        rss = p.memory_info().rss / 2**20
                        name = " ".join(p.cmdline())
                    except psutil.Error:
                        continue
                    if rss > self.peak.get(p.pid, ("", 0.0))[1]:
                        self.peak[p.pid] = (name, rss)
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_variant(name: str, clients: int, rounds: int, bundle: Path, parts: list[Path], test: Path, work: Path) -> dict[str, Any]:
    from cloud.fl.launch import FlowerServer, start_client
    from cloud.fl.server import FLServerConfig

    out = work / f"{name}-{clients}"
    config = FLServerConfig(out=str(out), bundle=str(bundle), rounds=rounds, min_clients=clients,
                            round_timeout_s=120, clients_wait_s=120, eval_data=str(test))
    kwargs: dict[str, Any] = {}
    if name == "keras":
        kwargs = {"clientapp": "fl_keras_baseline:app", "app_files": [ROOT / "benchmarks/fl_keras_baseline.py"]}
    server = FlowerServer(config, **kwargs)
    procs = []
    sampler = RssSampler()
    started = time.monotonic()
    try:
        server.start()
        extra = {"litert-stock": ["--poll-interval", "3", "--max-backoff", "20", "--task-poll-interval", "1", "--stock-clientapp"],
                 "litert-nozygote": ["--no-zygote"]}.get(name, [])
        for i in range(clients):
            procs.append(start_client(server.address, bundle, parts[i], out / "logs" / f"client-{i}.log",
                                      out / "flwr-home" / f"client-{i}", seed=i, extra_args=extra))
        sampler.roots = [p.pid for p in procs]
        sampler.start()
        result = server.wait(900)
    finally:
        sampler.stop()
        for p in procs:
            p.stop()
        server.stop()
    wall = time.monotonic() - started
    records = [r for r in result["rounds"] if r.get("round", 0) >= 1 and "refused" not in r]
    per_round = [r["round_s"] for r in records]
    clientapp_rss = [m["peak-rss-mb"] for r in records for m in r["clients"].values()]
    device_rss = [rss for _, rss in sampler.peak.values()]
    by_kind: dict[str, float] = {}
    for cmd, rss in sampler.peak.values():
        kind = ("supervisor" if "device.fl.client supervise" in cmd else "supernode" if "device.fl.client supernode" in cmd
                else "superexec" if "superexec" in cmd else "clientapp" if "clientapp" in cmd
                else "zygote" if "fl_zygote" in cmd else "other")
        by_kind[kind] = max(by_kind.get(kind, 0.0), rss)
    return {
        "variant": name,
        "clients": clients,
        "rounds": len(records),
        "s_per_round_median": statistics.median(per_round),
        "s_per_round_mean": statistics.fmean(per_round),
        "s_per_round_all": per_round,
        "wall_s": wall,
        "clientapp_peak_rss_mb": max(clientapp_rss),
        "device_process_peak_rss_mb": by_kind,
        "device_processes_max_rss_mb": max(device_rss) if device_rss else None,
        "bytes_per_round": statistics.median(r["bytes_up"] + r["bytes_down"] for r in records),
        "tensorflow_in_clientapp": any(m["tensorflow-loaded"] for r in records for m in r["clients"].values()),
        "accuracy_before": result["rounds"][0].get("test_accuracy"),
        "accuracy_after": records[-1].get("test_accuracy"),
    }


IMPORTS = {
    # what each round's fresh ClientApp process imports before it can train (edgeloop's default, the
    # zygote, forks an already-warm process instead: zygote_start_seconds)
    "litert (edgeloop lean launcher)": "from flwr.supernode.runtime.run_clientapp import run_clientapp; import device.fl.client",
    "litert (Flower's flwr-clientapp)": "import flwr.supernode.cli.flwr_clientapp; import device.fl.client",
    "keras (Flower's flwr-clientapp)": "import flwr.supernode.cli.flwr_clientapp; import tensorflow, keras",
}


def import_seconds(code: str, repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter running ``code`` (process start included)."""
    import subprocess

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True,
                       env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def zygote_start_seconds(repeats: int = 3) -> float:
    """Median wall time of the tiny ``flwr-clientapp`` until a child of a warm zygote has run (and exited)."""
    import os
    import subprocess

    from device.fl.zygote import wait_ready, write_client

    with tempfile.TemporaryDirectory(prefix="edgeloop-zyg-") as tmp:
        sock, client = os.path.join(tmp, "zygote.sock"), os.path.join(tmp, "flwr-clientapp")
        write_client(client, sock)
        zygote = subprocess.Popen([sys.executable, "-m", "device.fl.zygote", sock, "--target", "device.fl.zygote:noop"],
                                  cwd=ROOT, stdin=subprocess.DEVNULL)
        try:
            if not wait_ready(sock, 60):
                raise RuntimeError("the zygote did not start")
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                subprocess.run([client], check=True, cwd=ROOT)
                times.append(time.perf_counter() - start)
        finally:
            zygote.terminate()
            zygote.wait(timeout=10)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--variants", default="litert:3,litert:10,keras:3,litert-stock:3",
                        help="comma-separated variant:clients")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from cloud.export.exporter import load_run
    from cloud.export.trainable import TrainableConfig, export_trainable
    from cloud.fl.launch import DeployConfig, prepare_data
    from cloud.train.training import TrainConfig, train

    plan = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants.split(",")]
    starts = {name: import_seconds(code) for name, code in IMPORTS.items()}
    starts["litert (edgeloop zygote: fork of a warm process)"] = zygote_start_seconds()
    for name, seconds in starts.items():
        print(f"ClientApp process start + imports, {name}: {seconds:.2f} s")
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeloop-flbench-") as tmp:
        work = Path(tmp)
        run = work / "init-run"
        train(TrainConfig(model="mlp-small", data="digits", epochs=1, patience=None, seed=0), run, progress=False)
        bundle = work / "bundle"
        export_trainable(load_run(run), bundle, TrainableConfig())
        parts, test = prepare_data(DeployConfig(out=str(work), clients=max(c for _, c in plan)), work)
        for name, clients in plan:
            rounds = args.rounds if name != "keras" else max(2, args.rounds - 2)
            print(f"running {name} with {clients} device processes, {rounds} rounds …", flush=True)
            results.append(run_variant(name, clients, rounds, bundle, parts, test, work))

    baseline = next((r for r in results if r["variant"] == "keras"), None)
    table = Table(title="Federated rounds over Flower on 127.0.0.1 (mlp-small on digits, 1 local epoch)")
    for col in ("client", "devices", "s/round (median)", "vs Keras", "ClientApp peak RSS", "SuperNode / supervisor RSS",
                "bytes/round", "TF in client", "accuracy"):
        table.add_column(col, justify="right")
    for r in results:
        ratio = ""
        if baseline and r["clients"] == baseline["clients"]:
            ratio = f"{baseline['s_per_round_median'] / r['s_per_round_median']:.1f}× faster" if r is not baseline else "1.0×"
        table.add_row(r["variant"], str(r["clients"]), f"{r['s_per_round_median']:.2f}", ratio,
                      f"{r['clientapp_peak_rss_mb']:.0f} MB",
                      f"{r['device_process_peak_rss_mb'].get('supernode', 0):.0f} / "
                      f"{r['device_process_peak_rss_mb'].get('supervisor', 0):.0f} MB",
                      f"{r['bytes_per_round'] / 1024:.1f} KiB", "yes" if r["tensorflow_in_clientapp"] else "no",
                      f"{100 * r['accuracy_before']:.1f}% → {100 * r['accuracy_after']:.1f}%")
    Console(width=160).print(table)
    litert3 = next((r for r in results if r["variant"] == "litert" and r["clients"] == 3), None)
    if litert3:
        met = litert3["s_per_round_median"] <= TARGET_S_PER_ROUND
        print(f"target ≤ {TARGET_S_PER_ROUND} s/round with 3 LiteRT devices: {'met' if met else 'NOT met'} "
              f"({litert3['s_per_round_median']:.2f} s); ClientApp peak RSS < {TARGET_RSS_MB:.0f} MB: "
              f"{'met' if litert3['clientapp_peak_rss_mb'] < TARGET_RSS_MB else 'NOT met'} "
              f"({litert3['clientapp_peak_rss_mb']:.0f} MB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import os

    args.out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                "load_avg_at_end": os.getloadavg()},
                                    "clientapp_start_s": starts, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

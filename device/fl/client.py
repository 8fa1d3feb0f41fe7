"""The device side of real federated rounds: a Flower ClientApp that trains inside the .tflite.

``edgeloop device fl-client`` runs a Flower SuperNode in a child process it supervises
(:func:`supervise`); for each round the SuperNode starts a ClientApp process, which loads
:data:`app` from here: by default a fork of a warm zygote (:mod:`device.fl.zygote`) that has
already imported numpy, LiteRT and Flower, never TensorFlow (each reply reports whether it did).
The node's own settings (bundle, data) travel as Flower ``node_config``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from device.fl.flower_env import FLOWER_ENV, fast_object_pulls


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_reply(global_weights: list[Any], config: Any, node_config: dict[str, Any]) -> tuple[list[Any], dict[str, float]]:
    """Set the global weights, fit on the node's data, return ``(weights, metrics)``."""
    import numpy as np

    from device.fl.trainer import DeviceTrainer, FitConfig, load_local_data

    started = time.perf_counter()
    trainer = DeviceTrainer(node_config["bundle"])
    data = load_local_data(node_config["data"], trainer.manifest)
    fault = str(node_config.get("fault", ""))
    if fault == "slow":
        marker = node_config.get("marker")
        if marker:
            Path(str(marker)).write_text(str(os.getpid()))
        time.sleep(float(node_config.get("delay", 5.0)))
    trainer.set_weights(global_weights)
    seed = int(node_config.get("seed", 0)) * 100_003 + int(config.get("seed", 0)) * 1_009 + int(config["round"])
    result = trainer.fit(data, FitConfig(epochs=int(config.get("epochs", 1)), seed=seed))
    weights = result.weights
    if fault == "nan":
        weights[0] = np.full_like(weights[0], np.nan)
    elif fault == "wrong-shape":
        weights[0] = weights[0][:-1]
    metrics = {
        "num-examples": result.num_samples,
        "train-loss": result.loss,
        "steps": result.steps,
        "fit-s": time.perf_counter() - started,
        "peak-rss-mb": _peak_rss_mb(),
        "tensorflow-loaded": int("tensorflow" in sys.modules),
        "pid": os.getpid(),
    }
    return weights, metrics


def _make_app() -> Any:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        weights, metrics = train_reply(msg.content["arrays"].to_numpy_ndarrays(), msg.content["config"],
                                       dict(context.node_config))
        return Message(RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(metrics)}), reply_to=msg)

    return client_app


app = _make_app()


def _tune_supernode(poll_interval: float, max_backoff: float, fast_pulls: bool = True) -> None:
    """Two constants of Flower 1.42's SuperNode, for this process only: it sleeps a hard-coded 3 s
    whenever a pull finds no message (alone ~3 s per round), and backs off up to a minute and more
    between reconnection attempts (a device would sit idle long after its server restarted)."""
    import time as real_time
    import types

    from flwr.supercore.retry import http_retry
    from flwr.supernode import start_client_internal as sci

    clock = types.SimpleNamespace(**{k: getattr(real_time, k) for k in dir(real_time) if not k.startswith("_")})
    clock.sleep = lambda seconds: real_time.sleep(min(float(seconds), poll_interval))
    sci.time = clock
    http_retry.MAX_RETRY_DELAY = max_backoff
    if fast_pulls:
        fast_object_pulls()


def supernode_argv(server: str, bundle: Path, data: str, clientappio_port: int, *, root_certificates: str | None,
                   seed: int, fault: str | None, fault_options: dict[str, str] | None = None) -> list[str]:
    """The ``flower-supernode`` arguments for one device."""
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    node_config = {"bundle": quote(str(bundle.resolve())), "data": quote(data), "seed": str(seed)}
    if fault:
        node_config["fault"] = quote(fault)
        node_config.update({k: quote(v) for k, v in (fault_options or {}).items()})
    argv = ["flower-supernode", "--superlink", server, "--host", "127.0.0.1", "--port", str(clientappio_port),
            "--node-config", " ".join(f"{k}={v}" for k, v in node_config.items()),
            "--max-wait-time", "120"]
    argv += ["--root-certificates", root_certificates] if root_certificates else ["--insecure"]
    return argv


def run_supernode(argv: list[str], poll_interval: float = 0.05, max_backoff: float = 2.0, lean_launcher: bool = True,
                  zygote: str | None = None) -> int:
    """Run a Flower SuperNode in this process (so this PID is the device's) until it is stopped."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)  # the caller's FLWR_SUPEREXEC_TASK_POLL_INTERVAL wins
    # SuperExec starts `flwr-clientapp` from PATH: make it this interpreter's
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    if lean_launcher:
        from device.fl.clientapp import install_launcher

        home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
        install_launcher(home / "edgeloop-bin", zygote=zygote)
    _tune_supernode(poll_interval, max_backoff, fast_pulls=lean_launcher)  # --stock-clientapp: Flower's pulls too
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = argv
    try:
        flower_supernode()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


ZYGOTE_DIR_PREFIX = "edgeloop-zygote-"


def sweep_stale_zygote_dirs(tmp: str | None = None) -> list[str]:
    """Remove this user's zygote socket dirs whose zygote is gone (a device SIGKILLed as a whole
    cannot clean up after itself). A dir whose socket still accepts a connection is kept."""
    import shutil
    import socket
    import tempfile

    removed: list[str] = []
    root = tmp or tempfile.gettempdir()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not name.startswith(ZYGOTE_DIR_PREFIX) or not os.path.isdir(path) or os.stat(path).st_uid != os.getuid():
            continue
        sock_path = os.path.join(path, "zygote.sock")
        if os.path.exists(sock_path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(sock_path)
                    continue  # a live zygote
                except OSError:
                    pass
        elif time.time() - os.stat(path).st_mtime < 60:
            continue  # just made; its zygote may not be listening yet
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def supervise(argv: list[str], poll_interval: float, max_backoff: float, lean_launcher: bool = True,
              max_quick_exits: int = 5, log: Any = print, zygote: bool = True) -> int:
    """Keep this device in the federation: run the SuperNode in a child process and start a new one
    whenever it ends (Flower 1.42's SuperNode exits when its SuperLink restarts and forgets it).
    With the lean launcher, also a warm ClientApp zygote (:mod:`device.fl.zygote`) on a Unix socket
    in a private temp dir. The children share this process group, so stopping this PID's group
    stops everything."""
    import shutil
    import signal
    import subprocess
    import tempfile

    zygote_proc: subprocess.Popen | None = None
    sock_dir = sock = None
    if lean_launcher and zygote:
        sweep_stale_zygote_dirs()
        sock_dir = tempfile.mkdtemp(prefix=ZYGOTE_DIR_PREFIX)  # 0700
        sock = os.path.join(sock_dir, "zygote.sock")
        zygote_proc = subprocess.Popen([sys.executable, "-m", "device.fl.zygote", sock], stdin=subprocess.DEVNULL)
    cmd = [sys.executable, "-m", "device.fl.client", "supernode",
           json.dumps({"argv": argv, "poll_interval": poll_interval, "max_backoff": max_backoff,
                       "lean_launcher": lean_launcher, "zygote": sock})]
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    quick = 0
    try:
        while not stopping:
            started = time.monotonic()
            child = subprocess.Popen(cmd)
            while child.poll() is None:
                try:
                    child.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            if stopping:
                break
            quick = quick + 1 if time.monotonic() - started < 3.0 else 0
            if quick >= max_quick_exits:
                log(f"the SuperNode exited {quick} times within seconds of starting (code {child.returncode}); giving up")
                return 1
            log(f"the SuperNode ended (code {child.returncode}); rejoining")
            time.sleep(min(1.0, max_backoff))
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        if zygote_proc is not None:
            zygote_proc.terminate()
            try:
                zygote_proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                zygote_proc.kill()
                zygote_proc.wait()
        if sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":  # python -m device.fl.client {supervise,supernode} SETTINGS-JSON
    _settings = json.loads(sys.argv[2])
    if sys.argv[1] == "supervise":  # exec'd by `edgeloop device fl-client` once its checks passed
        raise SystemExit(supervise(_settings["argv"], _settings["poll_interval"], _settings["max_backoff"],
                                   _settings["lean_launcher"], log=lambda m: print(m, flush=True),
                                   zygote=_settings.get("zygote", True)))
    raise SystemExit(run_supernode(_settings["argv"], _settings["poll_interval"], _settings["max_backoff"],
                                   _settings["lean_launcher"], _settings.get("zygote")))

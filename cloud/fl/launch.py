"""Start and stop a Flower deployment on this machine: SuperLink + ServerApp run + device SuperNodes.

Every process is started in its own session (process group) and stopped by PID: SIGTERM to the
group, then SIGKILL after a grace period, also when the caller fails or is interrupted. Only
127.0.0.1 is bound. Flower's telemetry, update check and runtime dependency installation are off.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from cloud.fl.server import CONFIG_NAME, ROUNDS, FLServerConfig
from cloud.fl.tls import TLS
from device.errors import EdgeloopError
from device.fl.flower_env import FLOWER_ENV
from device.fl.loopback import HOST, free_port

CONNECTION = "edgeloop"


class DeploymentError(EdgeloopError):
    """A deployment process failed to start, exited early, or the run did not finish in time."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside, so ``finally`` blocks stop every child by PID."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_port(port: int, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise DeploymentError(f"the process that should listen on {HOST}:{port} exited")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise DeploymentError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


@dataclass
class Proc:
    """A started process (the leader of its own process group) and its log."""

    name: str
    popen: subprocess.Popen
    log: Path
    _fh: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds, then any
        descendant that started its own session (Flower's SuperExec does)."""
        family = descendants(self.pid)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
                # the leader is gone; children of the group may linger
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            except subprocess.TimeoutExpired:
                continue
        _kill_pids(family)
        self._fh.close()
        return self.popen.poll()

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, not a shutdown."""
        family = descendants(self.pid)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        _kill_pids(family)
        self._fh.close()


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(flwr_home), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def spawn(name: str, argv: Sequence[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")  # noqa: SIM115 - closed by Proc.stop/kill
    popen = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             start_new_session=True)
    return Proc(name, popen, log, fh)


APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgeloop-fl"
version = "1.0.0"
description = "edgeloop: devices train inside the .tflite, the cloud aggregates with the federated core"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "edgeloop"

[tool.flwr.app.components]
serverapp = "cloud.fl.server:app"
clientapp = "{clientapp}"

[tool.flwr.app.config]
edgeloop-config = {config}
"""


class FlowerServer:
    """A SuperLink on 127.0.0.1:``port`` and the edgeloop ServerApp run submitted to it."""

    def __init__(self, config: FLServerConfig, port: int | None = None, tls: TLS | None = None,
                 clientapp: str = "device.fl.client:app", app_files: Sequence[Path] = ()) -> None:
        """``clientapp``/``app_files``: another ClientApp shipped in the Flower App (the benchmark's baseline)."""
        self.config, self.port, self.tls = config, port or free_port(), tls
        if config.secure_aggregation and clientapp == "device.fl.client:app":
            clientapp = "device.fl.client_secure:app"
        self.clientapp, self.app_files = clientapp, tuple(app_files)
        self.out = Path(config.out).resolve()
        self.home = self.out / "flwr-home"
        self.superlink: Proc | None = None
        self.run: Proc | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _prepare(self) -> None:
        app = self.out / "flower-app"
        app.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config.save(self.out / CONFIG_NAME)
        (app / "pyproject.toml").write_text(APP_PYPROJECT.format(config=json.dumps(str(self.out / CONFIG_NAME)),
                                                                 clientapp=self.clientapp))
        for file in self.app_files:
            (app / file.name).write_bytes(file.read_bytes())
        security = f'root-certificates = "{self.tls.ca_certfile}"' if self.tls else "insecure = true"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{self.address}"\n{security}\n')

    def start(self, timeout: float = 60.0) -> None:
        self._prepare()
        env = flower_env(self.home)
        # Flower's in-memory state: a restarted SuperLink forgets the old run and its devices, which
        # rejoin (edgeloop device fl-client supervises its SuperNode); the rounds live in our checkpoint
        argv = ["flower-superlink", "--host", HOST, "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.tls:
            argv += ["--ssl-certfile", str(self.tls.certfile), "--ssl-keyfile", str(self.tls.keyfile),
                     "--ssl-ca-certfile", str(self.tls.ca_certfile)]
        else:
            argv += ["--insecure"]
        logs = self.out / "logs"
        self.superlink = spawn("superlink", argv, logs / "superlink.log", env, cwd=self.out)
        wait_port(self.port, timeout, self.superlink.alive)
        self.run = spawn("flwr-run", ["flwr", "run", str(self.out / "flower-app"), CONNECTION, "--stream"],
                         logs / "flwr-run.log", env, cwd=self.out)

    def done(self) -> bool:
        return (self.out / "done.json").exists()

    def wait(self, timeout: float, procs: Sequence[Proc] = ()) -> dict[str, Any]:
        """Block until the ServerApp has finished every round (``done.json``), then return ``rounds.json``."""
        deadline = time.monotonic() + timeout
        while not self.done():
            if time.monotonic() > deadline:
                raise DeploymentError(f"the run did not finish in {timeout:.0f} s; logs in {self.out / 'logs'}")
            for proc in (self.superlink, self.run):
                if proc is not None and not proc.alive() and not self.done():
                    raise DeploymentError(f"{proc.name} exited with code {proc.popen.returncode} before the run "
                                          f"finished; see {proc.log}" + _tail(proc.log))
            time.sleep(0.1)
        return read_rounds(self.out)

    def stop(self) -> None:
        for proc in (self.run, self.superlink):
            if proc is not None:
                proc.stop()

    def kill(self) -> None:
        for proc in (self.run, self.superlink):
            if proc is not None and proc.alive():
                proc.kill()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  " + "\n  ".join(text)


def read_rounds(out: Path | str) -> dict[str, Any]:
    path = Path(out) / ROUNDS
    return json.loads(path.read_text()) if path.exists() else {"rounds": [], "completed": 0}


def start_client(server: str, bundle: Path, data: Path, log: Path, flwr_home: Path, *, seed: int = 0,
                 fault: str | None = None, fault_delay: float | None = None, fault_marker: Path | None = None,
                 python: str | None = None, root_certificates: Path | None = None,
                 extra_args: Sequence[str] = ()) -> Proc:
    """One device process: ``edgeloop device fl-client`` (a SuperNode; each round a ClientApp)."""
    argv = [python or sys.executable, "-m", "edgeloop", "device", "fl-client", "--server", server,
            "--bundle", str(bundle), "--data", str(data), "--seed", str(seed)]
    if root_certificates:
        argv += ["--root-certificates", str(root_certificates)]
    argv += list(extra_args)
    if fault:
        argv += ["--fault", fault]
        if fault_delay is not None:
            argv += ["--fault-delay", str(fault_delay)]
        if fault_marker is not None:
            argv += ["--fault-marker", str(fault_marker)]
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = flower_env(flwr_home)
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return spawn(log.stem, argv, log, env, cwd=root)


@dataclass(frozen=True)
class DeployConfig:
    """``deploy-local``: N device processes, each with its own partition of ``data``."""

    out: str
    clients: int = 3
    rounds: int = 2
    min_clients: int | None = None  # default: all clients
    data: str = "digits"
    model: str = "mlp-small"
    bundle: str | None = None  # an existing trainable bundle; default: train `model` for init_epochs and export
    init_epochs: int = 1
    partition: str = "iid"
    seed: int = 0
    timeout_s: float = 600.0
    tls: bool = False  # a throwaway CA and a SuperLink certificate for 127.0.0.1 (cloud.fl.tls)
    client_python: str | None = None  # the devices' interpreter, e.g. a venv with only the device-fl extra
    slow_clients: int = 0  # the last N devices sleep slow_delay_s before each local training (injected delay)
    slow_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.clients < 1 or self.rounds < 1:
            raise ValueError("clients and rounds must be >= 1")
        if not 0 <= self.slow_clients <= self.clients:
            raise ValueError(f"slow_clients (--slow-clients) must be in [0, {self.clients}], got {self.slow_clients}")
        if self.slow_delay_s < 0:
            raise ValueError(f"slow_delay_s must be >= 0, got {self.slow_delay_s}")
        if self.min_clients is not None and not 1 <= self.min_clients <= self.clients:
            raise ValueError(f"min_clients must be in [1, {self.clients}], got {self.min_clients}")


def prepare_data(config: DeployConfig, out: Path) -> tuple[list[Path], Path]:
    """Hold out a test split, partition the rest among the clients; write one .npz each."""
    import numpy as np

    from cloud.train.data import load_dataset, stratified_split
    from federated.partition import PartitionConfig, partition

    ds = load_dataset(config.data, seed=config.seed)
    rest, test = stratified_split(ds, 0.2, seed=config.seed)
    parts = partition(rest.y, PartitionConfig(scheme=config.partition, num_clients=config.clients, seed=config.seed))
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, idx in enumerate(parts):
        path = data_dir / f"client-{i}.npz"
        np.savez(path, x=rest.x[idx], y=rest.y[idx])
        paths.append(path)
    np.savez(data_dir / "test.npz", x=test.x, y=test.y)
    return paths, data_dir / "test.npz"


def initial_bundle(config: DeployConfig, out: Path) -> Path:
    """The starting model: the given trainable bundle, or a briefly trained ``model`` exported trainable."""
    if config.bundle:
        return Path(config.bundle)
    from cloud.export.exporter import load_run
    from cloud.export.trainable import TrainableConfig, export_trainable
    from cloud.train.training import TrainConfig, train

    run = out / "init-run"
    train(TrainConfig(model=config.model, data=config.data, epochs=config.init_epochs, patience=None,
                      seed=config.seed), run, progress=False)
    bundle = out / "init-bundle"
    export_trainable(load_run(run), bundle, TrainableConfig())
    return bundle


def deploy_local(config: DeployConfig, server: FLServerConfig | None = None, on_event: Any = None) -> dict[str, Any]:
    """One server and ``config.clients`` device processes on loopback; returns the round history.

    Leaves ``rounds.json``, ``checkpoint.npz``, the per-round bundles and the final ``bundle`` in
    ``config.out``. Every process is stopped by PID when this returns or raises.
    """
    say = on_event or (lambda message: None)
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    say("preparing data partitions and the initial trainable bundle")
    parts, test = prepare_data(config, out)
    bundle = initial_bundle(config, out)
    base = server or FLServerConfig(out=str(out), bundle="", seed=config.seed)
    fl_config = replace(base, out=str(out), bundle=str(bundle.resolve()), rounds=config.rounds,
                        min_clients=config.min_clients or config.clients, eval_data=str(test))
    tls = None
    if config.tls:
        from cloud.fl.tls import generate_local_tls

        tls = generate_local_tls(out / "tls")
    flower = FlowerServer(fl_config, tls=tls)
    clients: list[Proc] = []
    slow = {i: config.slow_delay_s for i in range(config.clients - config.slow_clients, config.clients)}
    with terminate_as_interrupt():
        return _run_deployment(flower, clients, bundle, parts, out, config.timeout_s, say, config.client_python, slow)


def _run_deployment(flower: FlowerServer, clients: list[Proc], bundle: Path, parts: list[Path], out: Path,
                    timeout: float, say: Any, python: str | None, slow: dict[int, float] | None = None) -> dict[str, Any]:
    ca = flower.tls.ca_certfile if flower.tls else None
    try:
        say(f"starting the SuperLink on {flower.address}" + (" with TLS" if flower.tls else ""))
        flower.start()
        for i, part in enumerate(parts):
            delay = (slow or {}).get(i)
            clients.append(start_client(flower.address, bundle, part, out / "logs" / f"client-{i}.log",
                                        out / "flwr-home" / f"client-{i}", seed=i, root_certificates=ca, python=python,
                                        fault="slow" if delay else None, fault_delay=delay))
        say(f"{len(clients)} device processes started (PIDs {', '.join(str(c.pid) for c in clients)}); training")
        return flower.wait(timeout, clients)
    finally:
        for c in clients:
            c.stop()
        flower.stop()

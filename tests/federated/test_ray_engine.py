"""The Ray engine against the local engine: same metrics, weights within 1e-6, on a real Ray cluster.

The cluster is a real ``ray start --head`` on 127.0.0.1, started by the fixture and stopped by its PID.
The smoke test (``test_ray_engine_equals_the_local_engine``) runs in ``make test``; the heavier ones
(a worker killed mid-round, resume across engines, the CLI's own local instance) are marked ``ray``
and run under ``make test-ray`` (EDGELOOP_RAY=1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from federated.errors import ConfigError
from federated.simulate import SimulationConfig, read_history, simulate
from tests.conftest import ROOT

psutil = pytest.importorskip("psutil")
RAY_BIN = Path(sys.executable).parent / "ray"
HEAVY = os.environ.get("EDGELOOP_RAY") == "1"


def heavy(test):
    """Marked ``ray`` and run only under ``make test-ray``."""
    return pytest.mark.ray(pytest.mark.skipif(not HEAVY, reason="heavy Ray check: make test-ray (EDGELOOP_RAY=1)")(test))


SMALL = SimulationConfig(model="mlp-small", data="digits", clients=12, fraction=0.5, local_epochs=2, batch=7,
                         lr=0.1, rounds=3, seed=1)


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def assert_same_run(ray_history, local_history, ray_weights, local_weights) -> None:
    """The Ray run is the local run: identical schedule and accuracy, losses and weights to float rounding."""
    assert len(ray_history) == len(local_history)
    for r, loc in zip(ray_history, local_history):
        for key in ("round", "selected", "trained", "accepted", "rejected", "refused", "bytes_up", "bytes_down",
                    "test_accuracy"):
            assert r.get(key) == loc.get(key), (key, r.get(key), loc.get(key))
        for key in ("train_loss", "test_loss", "update_norm_mean"):
            assert r[key] == pytest.approx(loc[key], rel=1e-6, abs=1e-7), key
    assert _max_diff(ray_weights, local_weights) < 1e-6


def _listening(procs) -> set[str]:
    addrs = set()
    for p in procs:
        try:
            addrs |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return addrs


def _loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _wait_for_port(port: int, head: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, log.read_text()[-2000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on 127.0.0.1:{port} within {timeout} s")


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster on 127.0.0.1 (2 CPUs, 100 MB object store), this process its driver."""
    with pytest.MonkeyPatch.context() as mp:
        # before Ray is imported: otherwise Ray swaps the loopback address for the machine's own
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray = pytest.importorskip("ray")
        from device.fl.loopback import free_port

        port = free_port()
        temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "TF_ENABLE_ONEDNN_OPTS": "0"}
        log_path = Path(temp) / "head.log"
        log = open(log_path, "w")  # noqa: SIM115 - closed below
        head = subprocess.Popen([str(RAY_BIN), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                 f"--port={port}", "--num-cpus=2", "--object-store-memory=100000000",
                                 "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        address = f"127.0.0.1:{port}"
        try:
            _wait_for_port(port, head, log_path)
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            yield {"address": address, "head": head, "ray": ray}
        finally:
            procs = psutil.Process(head.pid).children(recursive=True) if head.poll() is None else []
            ray.shutdown()
            head.send_signal(signal.SIGTERM)  # `ray start --block` stops every process it started
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait(timeout=30)
            log.close()
            _, alive = psutil.wait_procs(procs, timeout=30)
            for p in alive:
                p.kill()
            shutil.rmtree(temp, ignore_errors=True)
            assert not alive, f"Ray processes outlived the head: {alive}"


def _ray_pool(cluster, **kwargs):
    from federated.ray_engine import RayConfig, ray_pool

    return ray_pool(RayConfig(address=cluster["address"], **kwargs))


def test_ray_engine_equals_the_local_engine(ray_cluster) -> None:
    """3 rounds of 6 clients in 2 chunks (data in blocks of 5 clients): the local run's metrics and weights."""
    local = simulate(SMALL, progress=False)
    pool = _ray_pool(ray_cluster, chunks=2, block_clients=5)
    seen = {}

    def spy(config):
        seen["pool"] = p = pool(config)
        return p

    on_ray = simulate(SMALL, progress=False, pool=spy)
    assert_same_run(on_ray.history, local.history, on_ray.final_weights, local.final_weights)
    p = seen["pool"]
    assert _max_diff(on_ray.final_weights, p.initial_weights) > 1e-2  # training moved the weights
    assert [len(s) for s in p.chunk_seconds] == [2, 2, 2]  # two tasks a round
    ray = ray_cluster["ray"]
    assert p._blocks == [] and ray.is_initialized()  # closed: blocks dropped, the test's connection kept
    # the cluster the test started listens on loopback only
    addrs = _listening(psutil.Process(ray_cluster["head"].pid).children(recursive=True))
    assert addrs and all(_loopback(a) for a in addrs), addrs


def test_ray_config_validation() -> None:
    from federated.ray_engine import RayConfig

    for bad, field in [({"address": "nohost"}, "address"), ({"num_cpus": 0}, "num_cpus"), ({"chunks": 0}, "chunks"),
                       ({"object_store_mb": 10}, "object_store_mb"), ({"block_clients": 0}, "block_clients"),
                       ({"max_retries": -1}, "max_retries")]:
        with pytest.raises(ConfigError, match=field):
            RayConfig(**bad)
    assert RayConfig().local and RayConfig(address="127.0.0.1:6379").local and not RayConfig(address="10.0.0.5:6379").local


def test_cli_ray_flags_need_engine_ray() -> None:
    from tests.conftest import run_cli

    res = run_cli("federated", "simulate", "--model", "mlp-small", "--data", "digits", "--ray-address", "127.0.0.1:6379")
    assert res.returncode == 1 and "--engine ray" in res.stderr and "Traceback" not in res.stderr


def _kill_first_chunk_task(head_pid: int, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first worker process seen running a ``train_chunk`` task (Ray titles it ``ray::train_chunk``)."""
    deadline = time.monotonic() + 300
    while not stop.is_set() and time.monotonic() < deadline:
        for p in psutil.Process(head_pid).children(recursive=True):
            try:
                if p.cmdline()[:1] == ["ray::train_chunk"]:
                    p.kill()
                    killed.append(p.pid)
                    return
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.005)


@heavy
def test_worker_killed_mid_round_is_retried_and_the_result_is_unchanged(ray_cluster) -> None:
    cfg = replace(SMALL, lr=0.13)  # a model no worker has traced yet: the first chunk task lasts seconds
    local = simulate(cfg, progress=False)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_chunk_task, args=(ray_cluster["head"].pid, stop, killed), daemon=True)
    killer.start()
    try:
        on_ray = simulate(cfg, progress=False, pool=_ray_pool(ray_cluster, chunks=2, block_clients=5))
    finally:
        stop.set()
        killer.join(timeout=30)
    assert killed, "no train_chunk task was seen running"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert_same_run(on_ray.history, local.history, on_ray.final_weights, local.final_weights)


@heavy
def test_worker_killed_without_retries_fails_the_round_in_one_line(ray_cluster) -> None:
    """The other direction: with max_retries=0 the same kill ends the run with RayEngineError."""
    from federated.ray_engine import RayEngineError

    cfg = replace(SMALL, lr=0.17)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_chunk_task, args=(ray_cluster["head"].pid, stop, killed), daemon=True)
    killer.start()
    try:
        with pytest.raises(RayEngineError, match="round 1: client training failed on Ray"):
            simulate(cfg, progress=False, pool=_ray_pool(ray_cluster, chunks=2, block_clients=5, max_retries=0))
    finally:
        stop.set()
        killer.join(timeout=30)
    assert killed


@heavy
def test_checkpoints_resume_across_engines(ray_cluster, tmp_path) -> None:
    """Stopped after 2 of 5 rounds on Ray, resumed on Ray; stopped locally, resumed on Ray: the uninterrupted local run."""
    cfg = replace(SMALL, rounds=5, server=replace(SMALL.server, strategy="fedadam", server_lr=0.03))
    full = simulate(cfg, progress=False)
    simulate(cfg, out=tmp_path / "ray", progress=False, stop_after=2, pool=_ray_pool(ray_cluster))
    assert len(read_history(tmp_path / "ray")) == 2
    resumed = simulate(cfg, out=tmp_path / "ray", resume=True, progress=False, pool=_ray_pool(ray_cluster))
    assert_same_run(resumed.history, full.history, resumed.final_weights, full.final_weights)
    simulate(cfg, out=tmp_path / "local", progress=False, stop_after=3)
    mixed = simulate(cfg, out=tmp_path / "local", resume=True, progress=False, pool=_ray_pool(ray_cluster, chunks=3))
    assert_same_run(mixed.history, full.history, mixed.final_weights, full.final_weights)


@heavy
def test_cnn_clients_on_ray_equal_the_local_loop_engine(ray_cluster) -> None:
    cfg = SimulationConfig(model="cnn", data="mnist5k", clients=40, fraction=0.25, local_epochs=1, batch=16, lr=0.1,
                           rounds=2, seed=2)
    local = simulate(cfg, progress=False)
    on_ray = simulate(cfg, progress=False, pool=_ray_pool(ray_cluster, chunks=3, block_clients=16))
    assert_same_run(on_ray.history, local.history, on_ray.final_weights, local.final_weights)


@heavy
def test_cli_engine_ray_starts_a_loopback_instance_and_stops_it(tmp_path) -> None:
    """``--engine ray`` without an address: its own Ray instance, listening on 127.0.0.1 only, gone at exit."""
    args = ["-m", "edgeloop", "federated", "simulate", "--model", "mlp-small", "--data", "digits", "--clients", "30",
            "--partition", "resample", "--samples-per-client", "20", "--fraction", "0.2", "--rounds", "2", "--seed", "4",
            "--json"]
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, *args, "--engine", "ray", "--ray-cpus", "1", "--ray-object-store-mb", "100",
                             "--out", str(tmp_path / "ray")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: set[int] = set()
    addrs: set[str] = set()
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                kids = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                break
            seen |= {k.pid for k in kids}
            addrs |= _listening(kids)
            time.sleep(0.5)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["engine"] == "ray"
    assert addrs and all(_loopback(a) for a in addrs), addrs
    time.sleep(2)
    left = [pid for pid in seen if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"Ray processes left behind: {left}"
    local = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "local")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    a, b = read_history(tmp_path / "ray"), read_history(tmp_path / "local")
    assert [r["test_accuracy"] for r in a] == [r["test_accuracy"] for r in b]

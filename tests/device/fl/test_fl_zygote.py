"""The warm ClientApp zygote (device.fl.zygote): the tiny ``flwr-clientapp`` client and the fork server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from device.fl.zygote import write_client
from tests.conftest import ROOT

TARGET = '''
import os, sys, time
from pathlib import Path

def main():
    print("out", sys.argv[1:], os.getcwd(), os.environ.get("ZYGOTE_TEST"), flush=True)
    print("err", file=sys.stderr, flush=True)
    if sys.argv[1] == "sleep":
        Path(sys.argv[2]).write_text(str(os.getpid()))
        time.sleep(60)
    return int(sys.argv[1])
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone too
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture()
def zygote(tmp_path):
    (tmp_path / "zygote_target.py").write_text(TARGET)
    sock_dir = tempfile.mkdtemp(prefix="edgeloop-zygote-test-")  # short: AF_UNIX paths are limited
    sock = os.path.join(sock_dir, "zygote.sock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "device.fl.zygote", sock, "--cold", "--target", "zygote_target:main"],
                            env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert _wait(lambda: os.path.exists(sock)), "the zygote did not start listening"
    client = tmp_path / "bin" / "flwr-clientapp"
    client.parent.mkdir()
    write_client(str(client), sock)
    yield client, proc, sock, env
    proc.terminate()
    proc.wait(timeout=10)
    assert not os.path.exists(sock)
    os.rmdir(sock_dir)


def test_tiny_client_returns_the_childs_exit_status_output_cwd_and_env(zygote, tmp_path) -> None:
    client, proc, _, env = zygote
    out = subprocess.run([str(client), "7", "x"], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         env={**env, "ZYGOTE_TEST": "hello"})
    assert out.returncode == 7
    assert out.stdout.strip() == f"out ['7', 'x'] {tmp_path} hello"
    assert out.stderr.strip() == "err"
    ok = subprocess.run([str(client), "0"], capture_output=True, text=True, timeout=30, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("out ['0']")
    assert proc.poll() is None


def test_killing_the_tiny_client_kills_the_child(zygote, tmp_path) -> None:
    client, proc, _, env = zygote
    for signum, expected_rc in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 128 + signal.SIGTERM)):
        marker = tmp_path / f"pid-{signum}"
        tiny = subprocess.Popen([str(client), "sleep", str(marker)], env=env, stdout=subprocess.DEVNULL)
        assert _wait(lambda m=marker: m.exists() and m.read_text() != "")
        child = int(marker.read_text())
        assert child != tiny.pid and _alive(child)
        tiny.send_signal(signum)  # SIGKILL: the zygote sees the connection close; SIGTERM is forwarded
        assert tiny.wait(timeout=10) == expected_rc
        assert _wait(lambda c=child: not _alive(c)), f"the ClientApp outlived its tiny client ({signum!r})"
    assert proc.poll() is None


def test_tiny_client_falls_back_to_the_lean_launcher_without_a_zygote(tmp_path) -> None:
    client = tmp_path / "flwr-clientapp"
    write_client(str(client), str(tmp_path / "missing.sock"))
    out = subprocess.run([str(client), "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and "--runtime-api-address" in out.stdout, out.stderr


def test_zygote_imports_no_tensorflow(tmp_path) -> None:
    code = ("import sys, device.fl.zygote as z; z._warm_up(); "
            "print(int('tensorflow' in sys.modules), int('ai_edge_litert' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["0", "1"]


def test_supervisor_starts_and_stops_the_zygote(tmp_path) -> None:
    """`fl-client`'s supervisor runs the zygote in a private dir and stops it with the SuperNode."""
    script = ("import json, sys; import device.fl.client as f; "
              "sys.exit(f.supervise(['flower-supernode', '--superlink', '127.0.0.1:9', '--insecure'], 0.05, 1.0, "
              "True, max_quick_exits=1000))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_HOME": str(tmp_path / "home")}
    sup = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def zygotes() -> list[int]:
            out = subprocess.run(["pgrep", "-P", str(sup.pid), "-f", "device.fl.zygote"], capture_output=True, text=True)
            return [int(p) for p in out.stdout.split()]

        assert _wait(zygotes, 30)
        (zpid,) = zygotes()
        sock_dir = Path(Path(f"/proc/{zpid}/cmdline").read_bytes().split(b"\0")[3].decode()).parent
        assert sock_dir.stat().st_mode & 0o777 == 0o700
        assert _wait(lambda: (sock_dir / "zygote.sock").exists(), 60)
        sup.terminate()
        assert sup.wait(timeout=30) == 0
        assert _wait(lambda: not _alive(zpid)) and not sock_dir.exists()
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()


def test_stale_zygote_dirs_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    """A device SIGKILLed as a whole leaves its socket dir; the next fl-client removes it, never a live one."""
    import socket

    from device.fl.client import ZYGOTE_DIR_PREFIX, sweep_stale_zygote_dirs

    stale, live, empty_new, other = (tmp_path / f"{ZYGOTE_DIR_PREFIX}{n}" for n in ("stale", "live", "new", "x"))
    for d in (stale, live, empty_new):
        d.mkdir()
    other = tmp_path / "unrelated"
    other.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale / "zygote.sock"))
    dead.close()  # the file stays, nobody listens: what a SIGKILL leaves behind
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(live / "zygote.sock"))
    listening.listen(1)
    try:
        removed = sweep_stale_zygote_dirs(str(tmp_path))
    finally:
        listening.close()
    assert removed == [str(stale)]
    assert not stale.exists() and live.exists() and empty_new.exists() and other.exists()

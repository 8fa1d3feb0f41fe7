"""Run the TFF script in ``.venv-tff`` in a process group of its own, and end that group afterwards.

TFF 0.87 starts ``worker_binary`` servers that keep listening after the Python that started them
exits (and keep any inherited pipe open), so the script's output goes to a file, never a pipe, and
the whole group is terminated when the script is done, whatever happened. ``worker_binary`` takes
only a port and listens on every interface; where ``unshare`` and ``ip`` allow it, the script runs
in a network namespace of its own with only loopback up, so nothing outside the machine can reach it.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from federated.parity.errors import TFFRunError

ROOT = Path(__file__).resolve().parents[2]
TFF_VENV = ROOT / ".venv-tff"
SCRIPT = Path(__file__).with_name("tff_fedavg.py")


@dataclass(frozen=True)
class TFFRun:
    """What the TFF process left behind: its log, its wall time, and the group members ended after it."""

    log: str
    wall_seconds: float
    leftover_pids: tuple[int, ...]
    network_isolated: bool  # ran in a private network namespace (loopback only)


@functools.cache
def loopback_only_prefix() -> tuple[str, ...]:
    """A command prefix running its command in a new network namespace with only ``lo`` up; () if not permitted.

    ``unshare`` and ``sh`` exec in place, so the command keeps the pid (and process group) it starts with.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not (unshare and ip):
        return ()
    prefix = (unshare, "--net", "--map-root-user", "--", "/bin/sh", "-c", f'{ip} link set lo up && exec "$0" "$@"')
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else ()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, from ``/proc``."""
    pids: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return sorted(pids)


def end_group(pgid: int, grace: float = 5.0) -> tuple[int, ...]:
    """SIGTERM every process of group ``pgid``, SIGKILL what is left after ``grace`` s; returns who was there."""
    members = tuple(group_members(pgid))
    if not members:
        return ()
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return members
    deadline = time.monotonic() + grace
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_members(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if group_members(pgid):
        raise TFFRunError(f"process group {pgid} survived SIGKILL: {group_members(pgid)}")
    return members


def run_tff(exchange: str | Path, result: str | Path, *, venv: str | Path = TFF_VENV, timeout: float = 600.0,
            isolate_network: bool = True) -> TFFRun:
    """Run ``tff_fedavg.py exchange result`` with ``venv``'s Python; raises TFFRunError on failure."""
    python = Path(venv).absolute() / "bin" / "python"  # absolute: the child runs in result's folder
    if not python.is_file():
        raise TFFRunError(f"{python} not found: build the TFF environment with `make tff-env`")
    exchange, result = Path(exchange).absolute(), Path(result).absolute()
    log_path = result.with_suffix(".log")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    prefix = loopback_only_prefix() if isolate_network else ()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*prefix, str(python), str(SCRIPT), str(exchange), str(result)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=result.parent,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise TFFRunError(f"the TFF script ran past {timeout:.0f} s; log: {log_path}") from None
        finally:
            leftovers = end_group(proc.pid)  # start_new_session: the group id is the child's pid
    wall = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0 or not result.is_file():
        tail = "\n".join(text.splitlines()[-15:])
        raise TFFRunError(f"the TFF script exited with {proc.returncode}; log {log_path}:\n{tail}")
    return TFFRun(text, wall, leftovers, bool(prefix))

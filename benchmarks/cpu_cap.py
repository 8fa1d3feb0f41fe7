"""Cap processes at a fixed share of a CPU core each, with a cgroup per process (Linux, root).

On a two-core machine the load generator and PostgreSQL run beside the server, so a second
server worker can only take what the first leaves idle: "do two workers serve more than one?"
then measures the machine, not the server. Capping every worker at the same share (say half a
core) asks the question a bigger machine would answer: does a second worker, with a core's worth
of its own, add throughput, or does the shared state serialise the workers? The generator and
the database stay uncapped, on what is left.

cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``) are both handled; the groups are removed
when the processes have ended.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PERIOD_US = 100_000
ROOT = Path("/sys/fs/cgroup")


def quota_us(cores: float, period_us: int = PERIOD_US) -> int:
    """CPU microseconds per period for ``cores`` cores (the kernel's minimum is 1 ms)."""
    if not 0 < cores <= 64:
        raise ValueError(f"--worker-cpu must be in (0, 64] cores, got {cores}")
    return max(1000, round(cores * period_us))


def cpu_hierarchy(root: Path = ROOT) -> tuple[str, Path]:
    """("v2", root) or ("v1", root/cpu) where this process may create cpu-limited groups; else a clear error."""
    if (root / "cgroup.controllers").is_file():
        if "cpu" in (root / "cgroup.subtree_control").read_text().split() and os.access(root, os.W_OK):
            return "v2", root
    elif (root / "cpu" / "cpu.cfs_quota_us").is_file() and os.access(root / "cpu", os.W_OK):
        return "v1", root / "cpu"
    raise RuntimeError(f"--worker-cpu needs a writable cgroup cpu controller under {root} (root, and a container "
                       "that allows it); run without --worker-cpu to leave the workers uncapped")


@contextmanager
def capped(pids: list[int], cores: float, root: Path = ROOT) -> Iterator[list[Path]]:
    """Each of ``pids`` (with all its threads) in its own group of ``cores`` cores, for the ``with`` block."""
    version, base = cpu_hierarchy(root)
    quota = quota_us(cores)
    groups: list[Path] = []
    try:
        for pid in pids:
            group = base / f"edgeloop-bench-{os.getpid()}-{pid}"
            group.mkdir()
            groups.append(group)
            if version == "v2":
                (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(pid))
        yield groups
    finally:
        for group in groups:
            for _ in range(50):  # a group can go only once its processes have left it (ended)
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def worker_pids(server_pid: int, workers: int, timeout_s: float = 30.0) -> list[int]:
    """The processes that serve requests: the server itself with one worker, else its ``workers`` spawned children."""
    import psutil

    if workers == 1:
        return [server_pid]
    deadline = time.monotonic() + timeout_s
    while True:
        found = []
        for child in psutil.Process(server_pid).children():
            try:
                if any("spawn_main" in part for part in child.cmdline()):
                    found.append(child.pid)
            except psutil.Error:
                continue
        if len(found) == workers:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected {workers} worker processes under PID {server_pid}, found {len(found)}")
        time.sleep(0.1)

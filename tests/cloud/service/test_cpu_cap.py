"""``benchmarks/cpu_cap.py`` (fleet_load's ``--worker-cpu``): a capped process really gets only its share of a core.

The oracle is the kernel's own CPU accounting of two identical busy loops side by side, one capped.
Needs a writable cgroup cpu controller (root in a container that allows it); skipped elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from benchmarks.cpu_cap import capped, cpu_hierarchy, quota_us


def test_quota_is_the_share_of_a_period_and_bad_shares_name_the_flag() -> None:
    assert quota_us(0.5) == 50_000 and quota_us(2) == 200_000 and quota_us(0.001) == 1000  # the kernel's floor
    for bad in (0, -1, 65):
        with pytest.raises(ValueError, match="--worker-cpu"):
            quota_us(bad)


def test_a_capped_busy_loop_gets_its_share_and_its_group_is_removed_after() -> None:
    try:
        cpu_hierarchy()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    spin = [sys.executable, "-c", "while True: pass"]
    procs = [subprocess.Popen(spin), subprocess.Popen(spin)]
    try:
        with capped([procs[0].pid], 0.2) as groups:
            time.sleep(0.5)  # let the quota take hold
            before = [sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs]
            time.sleep(2.0)
            used = [sum(psutil.Process(p.pid).cpu_times()[:2]) - b for p, b in zip(procs, before)]
            assert all(g.is_dir() for g in groups)
            assert used[0] <= 0.2 * 2.0 * 1.3, used  # its 0.2 core, with room for accounting granularity
            assert used[1] >= 2 * used[0], used  # the uncapped twin, on the same machine at the same time
            for p in procs:
                p.kill()
                p.wait(10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert not any(g.exists() for g in groups)

"""Shared by the simulators' crash tests: run ``edgeloop federated simulate`` and SIGKILL it mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

SIM_ENV = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}


def simulate_killed_after(args: list[str], out: Path, rows: int, log: Path) -> int:
    """Start ``python <args> --out out``, SIGKILL its process group once ``metrics.jsonl`` has ``rows`` rows
    (within 120 s); returns its exit status. Fails if the run finished before it could be killed."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, *args, "--out", str(out)], cwd=ROOT, env=SIM_ENV,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                metrics = out / "metrics.jsonl"
                if metrics.is_file() and len(metrics.read_text().splitlines()) >= rows:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, "the run finished before it could be killed"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    return proc.returncode

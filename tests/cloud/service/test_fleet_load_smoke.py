"""A small run of the fleet load benchmark (``make bench`` runs the full one): it must still start a server,
drive it, and count what it claims to count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.service


def test_fleet_load_smoke_counts_every_sample_and_the_cpu_it_measured(tmp_path: Path) -> None:
    out = tmp_path / "fleet_load.json"
    done = subprocess.run([sys.executable, "benchmarks/fleet_load.py", "--devices", "12", "--upload-share", "0.5",
                           "--think", "0.2", "--duration", "3", "--warmup", "1", "--backends", "sqlite:1",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]
    # the script's own figures agree with one another and with the database it read back
    assert row["exactly_once"] and row["samples_sent"] == row["samples_stored"] > 0
    assert row["requests"] == sum(row["statuses"].values()) > 0 and row["errors"] == 0
    assert row["statuses"].get("304", 0) > 0  # the devices really polled with their ETag
    # CPU in the window: the server did work, and no process used more than the window allowed
    window_ms = 1000 * row["duration_s"] * (os.cpu_count() or 1)  # every core for the whole window
    for who in ("server", "generator"):
        per_req = row[f"{who}_cpu_ms_per_req"]
        assert per_req > 0 and per_req * row["requests"] <= 1.5 * window_ms, (who, per_req)
    assert row["database_cpu_ms_per_req"] == 0  # SQLite: no database process
    assert "CPU ms/req" in done.stdout


def test_paced_uploads_keep_their_schedule_and_every_sample_is_stored(tmp_path: Path) -> None:
    """``--upload-every``: an uploading device sends on its schedule, not after every poll, so each backend
    gets the same upload work. The oracle is the schedule: 6 uploaders, one upload each 0.5 s for 3 s;
    a device uploading after every poll (think 0.2) would send about twice the upper bound."""
    out = tmp_path / "fleet_load.json"
    done = subprocess.run([sys.executable, "benchmarks/fleet_load.py", "--devices", "12", "--upload-share", "0.5",
                           "--think", "0.2", "--duration", "3", "--warmup", "1", "--backends", "sqlite:1",
                           "--upload-every", "0.5", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["exactly_once"] and row["samples_sent"] == row["samples_stored"] > 0
    # over warm-up and window (4 s) each uploader has 8 slots, plus the final flush; after each poll it
    # would send about 18 batches
    uploaders, slots = 6, 4 / 0.5
    assert 2 * uploaders * 10 <= row["samples_stored"] <= uploaders * 10 * (slots + 2), row["samples_stored"]
    assert row["upload_every_s"] == 0.5 and row["uploads_late"] is not None

"""``serve --auto-retrain``: when a channel's current version drifts past a threshold, start a retraining.

The check is cheap and runs in the service's background tick; the retraining itself is
``edgeloop cloud retrain`` in a child process (TensorFlow stays out of the server), started
at most once per version: the first process to insert the version's :class:`AutoRetrain`
row owns it. The new model goes to ``canary`` as any retrain does, for a rollout to take it further.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from cloud.service.db import AutoRetrain
from cloud.service.drift import MAJOR, add_summaries, drift_score
from cloud.service.summaries import summaries, version_profile


@dataclass(frozen=True)
class AutoRetrainConfig:
    channel: str = "stable"
    max_drift: float = MAJOR
    window_s: float = 3600.0  # drift over the summaries of this last stretch of time
    min_predictions: int = 200

    def __post_init__(self) -> None:
        if not self.max_drift >= 0 or not self.window_s > 0 or self.min_predictions < 1:
            raise ValueError("--auto-retrain needs --max-drift >= 0, a window > 0 and min predictions >= 1")


def retrain_process(data_dir: Path, database_url: str | None, channel: str) -> Callable[[int], None]:
    """A launcher: ``edgeloop cloud retrain`` for ``channel`` in a detached child, logging to DATA/auto-retrain-vV.log.

    A daemon thread waits for the child, so that it does not linger as a zombie in the long-running
    server, and appends its exit status to the log (``exited with status N``; negative: killed by signal -N).
    """
    def launch(version: int) -> None:
        cmd = [sys.executable, "-m", "edgeloop", "cloud", "retrain", "--data-dir", str(data_dir), "--channel", channel,
               "--out", str(Path(data_dir) / f"auto-retrain-v{version}"), "--json"]
        if database_url:
            cmd += ["--database-url", database_url]
        log_path = Path(data_dir) / f"auto-retrain-v{version}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=_reap, args=(proc, log_path), name=f"auto-retrain-v{version}", daemon=True).start()
    return launch


def _reap(proc: subprocess.Popen, log_path: Path) -> None:
    code = proc.wait()
    with open(log_path, "a") as log:
        log.write(f"auto-retrain: process {proc.pid} exited with status {code}\n")


def check_drift_and_retrain(config: AutoRetrainConfig, sessions: Any, registry: Any, launch: Callable[[int], None],
                            now: float | None = None) -> dict[str, Any] | None:
    """Start a retraining if the channel's current version drifted; returns what was started, else None."""
    now = time.time() if now is None else now
    current = registry.current(config.channel)
    if current is None:
        return None
    total = add_summaries(summaries(sessions, str(current.version), since=now - config.window_s))
    if total is None or total["predictions"] < config.min_predictions:
        return None
    score = drift_score(version_profile(registry, str(current.version)), total)
    if score.score is None or score.score <= config.max_drift:
        return None
    try:
        with sessions.begin() as s:
            s.add(AutoRetrain(version_id=current.version, time=now, drift=score.score,
                              detail=f"PSI {score.score:.3f} > {config.max_drift:.3f} on {total['predictions']} predictions"))
    except IntegrityError:
        return None  # already started for this version (by this or another process)
    launch(current.version)
    return {"version": current.version, "drift": score.score}

"""A staged rollout end to end on 127.0.0.1: 20 real agents in one process, a real ``edgeloop cloud serve``.

A good release (the float32 CNN after the int8 one) advances through every stage on its own.
A bad release, whose canary passes but whose preprocessing is wrong (mean 255: every digit
is seen inverted, about 21% right), halts in its first stage on the field-accuracy drop and
the channel reverts, with no operator action; devices outside that stage never get it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cloud.service.rollout import bucket
from device.agent.agent import Agent, AgentConfig
from device.agent.collector import CollectionPolicy
from device.runtime.bundle import Normalization, read_manifest, write_bundle
from tests.conftest import ROOT, SHIPPED, run_cli
from tests.service_helpers import ServiceProcess, screenshot, setup_service

pytestmark = pytest.mark.service

DEVICES = tuple(f"cam-{i:02d}" for i in range(20))
STAGES = (25.0, 50.0, 100.0)


def bad_bundle(dest: Path) -> Path:
    """The float32 CNN with a wrong input mean: it loads, passes its own canary, and misreads every digit."""
    src = SHIPPED / "mnist-cnn-float32"
    m = read_manifest(src)
    broken = replace(m.inputs[0], normalization=Normalization(mean=(255.0,), std=(255.0,)))
    write_bundle(dest, (src / m.model_file).read_bytes(), replace(m, inputs=[broken], name="mnist-cnn-badprep"))
    return dest


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from cloud.train.data import load_mnist5k

    d = load_mnist5k(seed=1)
    return d.x[:2000], d.y[:2000]


def _status(svc: ServiceProcess, token_file: Path, ref: str) -> dict:
    out = run_cli("cloud", "rollout", "status", ref, "--server", svc.url, "--admin-token-file", str(token_file),
                  "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _transcript(svc: ServiceProcess, token_file: Path, ref: str) -> str:
    out = run_cli("cloud", "rollout", "status", ref, "--server", svc.url, "--admin-token-file", str(token_file),
                  timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_good_release_advances_through_every_stage_and_a_bad_one_halts_and_reverts(tmp_path: Path) -> None:
    data = tmp_path / "svc"
    sessions, registry, key, public, tokens = setup_service(data, DEVICES)
    token_file = tmp_path / "admin.token"
    token_file.write_text("admin-" + "x" * 40 + "\n")
    v1 = registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    v2 = registry.publish(SHIPPED / "mnist-cnn-float32", None, key)
    v3 = registry.publish(bad_bundle(tmp_path / "bad"), None, key)
    x, y = _digits()
    rng = np.random.default_rng(0)
    with ServiceProcess(data, extra=("--rate", "1000", "--burst", "1000", "--rollout-tick", "0.2",
                                     "--admin-token-file", str(token_file))) as svc:
        agents = {name: Agent(AgentConfig(directory=tmp_path / name, server=svc.url, token=tokens[name],
                                          channel="stable", public_key=public, initial_bundle=SHIPPED / "mnist-cnn-int8",
                                          policy=CollectionPolicy("none"), seed=i, timeout=10))
                  for i, name in enumerate(DEVICES)}
        seen: dict[str, set[str]] = {name: set() for name in DEVICES}

        def cycle() -> None:
            for name, agent in agents.items():
                agent.check_for_update()
                seen[name].add(agent.version)
                for i in rng.integers(0, len(x), size=8):
                    agent.predict(x[i], label=int(y[i]))
                agent.send_summaries()

        def until(ref: str, statuses: tuple[str, ...], limit_s: float = 120) -> dict:
            deadline = time.monotonic() + limit_s
            while time.monotonic() < deadline:
                cycle()
                status = _status(svc, token_file, ref)
                if status["status"] in statuses:
                    return status
                time.sleep(0.1)
            raise AssertionError(f"rollout {ref} still {status['status']} after {limit_s} s: {status}")

        try:
            for _ in range(2):
                cycle()
            assert {a.version for a in agents.values()} == {str(v1.version)}

            start = run_cli("cloud", "rollout", str(v2.version), "--channel", "stable", "--stages", "25,50,100",
                            "--hold", "1s", "--min-devices", "2", "--min-labelled", "200", "--max-accuracy-drop", "0.05",
                            "--server", svc.url, "--admin-token-file", str(token_file), timeout=60)
            assert start.returncode == 0, start.stderr
            good = until("stable", ("completed", "halted"))
            good_text = _transcript(svc, token_file, str(good["id"]))
            assert good["status"] == "completed", good_text
            assert [d["action"] for d in good["decisions"]] == ["start", "advance", "advance", "complete"]
            for d, pct in zip(good["decisions"][1:], STAGES):
                members = [n for n in DEVICES if bucket(str(v2.version), n) < pct]
                assert d["percent"] == pct and d["figures"]["devices_in_stage"] == len(members)
                assert d["figures"]["devices_reporting"] >= min(2, len(members))
                assert d["figures"]["accuracy"] > 0.9 and d["figures"]["devices_rolled_back"] == 0
            cycle()
            assert {a.version for a in agents.values()} == {str(v2.version)}
            assert registry.current("stable").version == v2.version

            start = run_cli("cloud", "rollout", str(v3.version), "--channel", "stable", "--stages", "25,50,100",
                            "--hold", "10m", "--min-devices", "2", "--min-labelled", "20",
                            "--server", svc.url, "--admin-token-file", str(token_file), timeout=60)
            assert start.returncode == 0, start.stderr
            bad = until("stable", ("completed", "halted"))
            bad_text = _transcript(svc, token_file, str(bad["id"]))
            assert bad["status"] == "halted", bad_text
            (halt,) = [d for d in bad["decisions"] if d["action"] == "halt"]
            assert halt["percent"] == STAGES[0] and halt["reason"].startswith("accuracy_drop"), halt
            assert halt["figures"]["accuracy"] < 0.5 < 0.9 < halt["figures"]["baseline_accuracy"]
            cycle()
            cycle()
            assert {a.version for a in agents.values()} == {str(v2.version)}  # reverted, no operator action
            assert registry.current("stable").version == v2.version
            first_stage = {n for n in DEVICES if bucket(str(v3.version), n) < STAGES[0]}
            assert {n for n in DEVICES if str(v3.version) in seen[n]} <= first_stage  # nobody else ever ran it
            # the dashboard after both rollouts, for people to look at (runs/issue13/dashboard-rollouts.png)
            screenshot(svc.url + "/", ROOT / "runs" / "issue13" / "dashboard-rollouts.png",
                       token_file.read_text().strip(), tmp_path / "chromium")
        finally:
            for agent in agents.values():
                agent.close()
    out = ROOT / "runs" / "issue13"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout-transcript.txt").write_text(good_text + "\n" + bad_text)
    print(good_text, bad_text, sep="\n")
    shutil.rmtree(tmp_path / "bad", ignore_errors=True)

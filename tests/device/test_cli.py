"""``edgeloop device`` and ``python -m device`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.conftest import EXAMPLES, ROOT, SHIPPED, run_cli


def test_predict_json_on_images_and_npy(tmp_path) -> None:
    from device.runtime.images import read_image

    batch = np.stack([read_image(EXAMPLES / f"digit-{i}.png", (28, 28, 1)) for i in (3, 5)])
    np.save(tmp_path / "two.npy", batch)
    out = run_cli("device", "predict", "mnist-cnn-int8", str(EXAMPLES / "digit-7.png"), str(tmp_path / "two.npy"),
                  "--json", "--top-k", "2")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bundle"]["name"] == "mnist-cnn-int8" and result["bundle"]["backend"] == "ai_edge_litert"
    labels = [p["label"] for p in result["predictions"]]
    assert labels == ["7", "3", "5"]
    assert result["predictions"][1]["input"].endswith("two.npy[0]")
    assert all(len(p["top"]) == 2 for p in result["predictions"])


def test_predict_table_and_python_m_device() -> None:
    out = subprocess.run([sys.executable, "-m", "device", "predict", str(SHIPPED / "mnist-cnn-float32"),
                          str(EXAMPLES / "digit-0.png")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "digit-0.png" in out.stdout and "mnist-cnn-float32" in out.stdout


def test_bench_reports_percentiles() -> None:
    out = run_cli("device", "bench", "mnist-cnn-int8", "--runs", "50", "--warmup", "5", "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["runs"] == 50 and 0 < stats["median_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert stats["throughput_per_s"] > 0


def test_errors_are_one_line_and_nonzero(tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    for args, needle in [
        (("device", "predict", "mnist-cnn-int8", str(bad)), "bad.png"),
        (("device", "predict", "no-such-bundle", str(EXAMPLES / "digit-0.png")), "no shipped bundle"),
        (("device", "predict", str(tmp_path), str(EXAMPLES / "digit-0.png")), "manifest.json"),
    ]:
        out = run_cli(*args)
        assert out.returncode == 1
        assert "Traceback" not in out.stderr and needle in out.stderr
        assert out.stderr.startswith("error: ")


def test_top_level_help_lists_groups() -> None:
    out = run_cli("--help")
    assert out.returncode == 0 and all(g in out.stdout for g in ("cloud", "device", "federated"))
    assert run_cli("nonsense").returncode == 2

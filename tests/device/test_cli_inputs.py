"""``edgeloop device predict`` on every input a user has, and ``bench`` flags that name their range."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli
from tests.device.runtime import tiny_models

LABELS = ("walk", "run", "sit")


def _predict(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", "device", "predict", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=os.environ.copy())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("tensorflow")
    d = tmp_path_factory.mktemp("cli-models")
    vector = tiny_models.vector_model(d / "vector.tflite")
    return {
        "sensor": tiny_models.vector_bundle(d / "sensor", vector, "classification", "logits", mean=5.0, std=20.0),
        "regression": tiny_models.vector_bundle(d / "reg", vector, "regression", "values", mean=5.0, std=20.0),
        "two": tiny_models.two_in_two_out(d / "two.tflite"),
    }


def _expected(x: np.ndarray) -> list[str]:
    w, b = tiny_models.dense(20, 3)
    return [LABELS[i] for i in np.atleast_2d(((x - 5.0) / 20.0) @ w + b).argmax(-1)]


def _sensor(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 40 - 15).astype(np.float32)


def test_csv_one_sample_per_row_with_a_header(models, tmp_path: Path) -> None:
    x = _sensor((5, 20))
    csv = tmp_path / "readings.csv"
    csv.write_text(",".join(f"f{i}" for i in range(20)) + "\n"
                   + "\n".join(",".join(f"{v:.6f}" for v in row) for row in x) + "\n")
    out = _predict(str(models["sensor"]), str(csv), "--json")
    assert out.returncode == 0, out.stderr
    preds = json.loads(out.stdout)["predictions"]
    assert [p["input"] for p in preds] == [f"{csv}[{i}]" for i in range(5)]
    assert [p["label"] for p in preds] == _expected(x)


def test_vector_npy_one_sample_and_a_batch(models, tmp_path: Path) -> None:
    x = _sensor((5, 20), seed=1)
    np.save(tmp_path / "one.npy", x[2])
    np.save(tmp_path / "five.npy", x)
    out = _predict(str(models["sensor"]), str(tmp_path / "one.npy"), str(tmp_path / "five.npy"), "--json")
    assert out.returncode == 0, out.stderr
    labels = [p["label"] for p in json.loads(out.stdout)["predictions"]]
    assert labels == [_expected(x[2])[0], *_expected(x)]


def test_json_on_stdin(models) -> None:
    x = _sensor((20,), seed=2)
    out = _predict(str(models["sensor"]), "-", "--json", stdin=json.dumps(x.tolist()))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predictions"][0]["label"] == _expected(x)[0]
    bad = _predict(str(models["sensor"]), "-", stdin="[1, 2,")
    assert bad.returncode == 1 and bad.stderr.startswith("error: stdin: malformed JSON") and "Traceback" not in bad.stderr


def test_regression_json_gives_values(models, tmp_path: Path) -> None:
    x = _sensor((3, 20), seed=4)
    np.save(tmp_path / "x.npy", x)
    out = _predict(str(models["regression"]), str(tmp_path / "x.npy"), "--json")
    assert out.returncode == 0, out.stderr
    w, b = tiny_models.dense(20, 3)
    got = np.array([r["outputs"]["y"] for r in json.loads(out.stdout)["results"]])
    np.testing.assert_allclose(got, ((x - 5.0) / 20.0) @ w + b, rtol=1e-4, atol=1e-4)
    table = _predict(str(models["regression"]), str(tmp_path / "x.npy"))
    assert table.returncode == 0 and "x.npy[2]" in table.stdout, table.stderr


def test_npz_and_json_object_feed_a_two_input_model_and_json_gives_every_output(models, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    np.savez(tmp_path / "batch.npz", a=a, b=b)
    out = _predict(str(models["two"]), str(tmp_path / "batch.npz"), "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    want = tiny_models.two_in_two_out_oracle(a, b)
    assert len(results) == 4 and set(results[0]["outputs"]) == {"total", "joined"}
    for i, r in enumerate(results):
        for name in ("total", "joined"):
            np.testing.assert_allclose(r["outputs"][name], want[name][i], rtol=1e-5, atol=1e-5)
    out = _predict(str(models["two"]), "-", "--json", stdin=json.dumps({"a": a[0].tolist(), "b": b[0].tolist()}))
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(json.loads(out.stdout)["results"][0]["outputs"]["joined"], want["joined"][0], rtol=1e-5)
    np.savez(tmp_path / "half.npz", a=a)
    bad = _predict(str(models["two"]), str(tmp_path / "half.npz"))
    assert bad.returncode == 1 and "no array for input(s) ['b']" in bad.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (("bench", "mnist-cnn-int8", "--batch", "-1"), "--batch must be an integer in [1, 65536]"),
        (("bench", "mnist-cnn-int8", "--batch", "0"), "--batch must be an integer in [1, 65536]"),
        (("bench", "mnist-cnn-int8", "--runs", "0"), "--runs must be an integer in [1, "),
        (("bench", "mnist-cnn-int8", "--warmup", "-5"), "--warmup must be an integer in [0, "),
        (("bench", "mnist-cnn-int8", "--threads", "0"), "--threads must be integers in [1, 256]"),
        (("bench", "mnist-cnn-int8", "--threads", "1,x"), "--threads must be integers in [1, 256]"),
        (("predict", "mnist-cnn-int8", "models/examples/digit-1.png", "--top-k", "0"), "--top-k must be an integer >= 1"),
        (("predict", "mnist-cnn-int8", "models/examples/digit-1.png", "--threads", "-2"), "--threads must be"),
        (("info", "mnist-cnn-int8", "--threads", "1,2"), "--threads takes one value here"),
    ],
)
def test_bad_values_name_their_flag_and_range(args: tuple[str, ...], needle: str) -> None:
    out = run_cli("device", *args)
    assert out.returncode == 1, out.stdout
    assert out.stderr.startswith("error: ") and needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_bench_puts_runtime_beside_the_bare_loop_per_thread_count() -> None:
    out = run_cli("device", "bench", "mnist-cnn-int8", "--runs", "60", "--warmup", "5", "--threads", "1,2", "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert [r["threads"] for r in stats["rows"]] == [1, 2]
    for row in stats["rows"]:
        assert row["call"] == "Runtime.predict" and row["runtime"]["runs"] == row["bare"]["runs"] == 60
        assert row["bare"]["median_ms"] > 0 and row["runtime"]["median_ms"] > 0
    text = run_cli("device", "bench", "mnist-cnn-int8", "--runs", "30", "--warmup", "2", "--threads", "1,2")
    assert text.returncode == 0 and "bare invoke" in text.stdout and "Runtime.predict" in text.stdout

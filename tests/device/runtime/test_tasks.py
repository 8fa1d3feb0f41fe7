"""``predict``/``classify`` driven by the manifest's task, and vector (sensor) models.

Oracle: the numpy result of the tiny linear model (``x @ W + b``), then softmax or sigmoid by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device import Runtime, errors
from tests.device.runtime import tiny_models


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorflow")
    return tiny_models.vector_model(tmp_path_factory.mktemp("vec") / "vector.tflite")


def _oracle(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    w, b = tiny_models.dense(20, 3)
    return ((x - mean) / std).astype(np.float32) @ w + b


def _sensor(n: int | None, seed: int = 0) -> np.ndarray:
    """Sensor readings: negative and large, no natural [0, 255] range."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(20,) if n is None else (n, 20)) * 40 - 15).astype(np.float32)


@pytest.mark.parametrize(
    "task, kind, link",
    [
        ("classification", "logits", lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)),
        ("multilabel", "logits", lambda z: 1 / (1 + np.exp(-z.astype(np.float64)))),
        ("multilabel", "scores", lambda z: z),
        ("regression", "values", lambda z: z),
        ("raw", "values", lambda z: z),
    ],
)
def test_predict_follows_the_task(model: Path, tmp_path: Path, task: str, kind: str, link) -> None:
    bundle = tiny_models.vector_bundle(tmp_path / task, model, task, kind, mean=5.0, std=20.0)
    rt = Runtime(bundle)
    assert rt.task == task and rt.input_spec.layout == "vector"
    x = _sensor(6)
    want = link(_oracle(x, 5.0, 20.0))
    np.testing.assert_allclose(rt.predict(x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rt.predict(x[4]), want[4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rt.run(x)["y"], _oracle(x, 5.0, 20.0), rtol=1e-4, atol=1e-4)


def test_multilabel_classify_ranks_independent_scores(model: Path, tmp_path: Path) -> None:
    rt = Runtime(tiny_models.vector_bundle(tmp_path / "ml", model, "multilabel", "logits", mean=5.0, std=20.0))
    x = _sensor(None, seed=3)
    scores = 1 / (1 + np.exp(-_oracle(x, 5.0, 20.0).astype(np.float64)))
    pred = rt.classify(x, k=3)[0]
    assert pred.label == ("walk", "run", "sit")[int(scores.argmax())]
    np.testing.assert_allclose([p for _, p in pred.top], np.sort(scores)[::-1], rtol=1e-5, atol=1e-7)


def test_regression_has_no_classes(model: Path, tmp_path: Path) -> None:
    rt = Runtime(tiny_models.vector_bundle(tmp_path / "reg", model, "regression", "values"))
    with pytest.raises(errors.TaskError, match="regression model has no classes"):
        rt.classify(_sensor(None))


def test_vector_model_takes_one_vector_or_a_batch(model: Path, tmp_path: Path) -> None:
    """The issue's 20-feature sensor vector: (20,) and (5, 20), negative values, through a v2 bundle."""
    rt = Runtime(tiny_models.vector_bundle(tmp_path / "cls", model, "classification", "logits"))
    x = _sensor(5)
    batch = rt.predict(x)
    assert batch.shape == (5, 3) and rt.predict(x[0]).shape == (3,)
    np.testing.assert_allclose(rt.predict(x[0]), batch[0], rtol=1e-5)
    assert [p.label for p in rt.classify(x)] == [("walk", "run", "sit")[i] for i in _oracle(x, 0, 1).argmax(-1)]

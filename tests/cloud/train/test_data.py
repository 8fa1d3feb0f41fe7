"""Data loaders and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.errors import DataError
from cloud.train.data import load_dataset, load_image_folder, load_npz, stratified_split


def test_mnist5k_is_real_shuffled_and_seeded() -> None:
    a, b, c = load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=1)
    assert a.x.shape == (5000, 28, 28, 1) and a.x.dtype == np.uint8
    assert np.bincount(a.y).tolist() == [500] * 10
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.y, c.y)
    assert len(set(a.y[:20].tolist())) > 3  # the file is sorted by label; the loader shuffles it
    assert 20 < a.x.mean() < 50 and a.x.max() == 255  # real digits: mostly black background


def test_digits() -> None:
    d = load_dataset("digits")
    assert d.x.shape == (1797, 8, 8, 1) and d.normalization == (0.0, 16.0) and d.x.max() == 16


def test_split_is_stratified_disjoint_and_deterministic() -> None:
    ds = load_dataset("mnist5k", seed=0)
    train, test = stratified_split(ds, 0.2, seed=3)
    train2, test2 = stratified_split(ds, 0.2, seed=3)
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(test.y).tolist() == [100] * 10
    assert np.array_equal(test.x, test2.x) and np.array_equal(train.y, train2.y)
    seen = {x.tobytes() for x in train.x}
    assert sum(x.tobytes() in seen for x in test.x) < 5  # MNIST has a few duplicate images, no shared samples


def test_npz_round_trip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, x=rng.integers(0, 256, (30, 12, 12), dtype=np.uint8), y=np.arange(30) % 3,
             labels=np.array(["cat", "dog", "owl"]))
    ds = load_npz(good)
    assert ds.x.shape == (30, 12, 12, 1) and ds.labels == ("cat", "dog", "owl")
    cases = {
        "no_y.npz": dict(x=np.zeros((4, 8, 8))),
        "short_y.npz": dict(x=np.zeros((4, 8, 8)), y=np.zeros(3, int)),
        "text_y.npz": dict(x=np.zeros((4, 8, 8)), y=np.array(["a"] * 4)),
        "nan_y.npz": dict(x=np.zeros((4, 8, 8)), y=np.array([0.5, np.nan, 1, 2])),
        "flat_x.npz": dict(x=np.zeros(4), y=np.zeros(4, int)),
        "nan_x.npz": dict(x=np.full((4, 8, 8), np.nan), y=np.zeros(4, int)),
        "neg_y.npz": dict(x=np.zeros((4, 8, 8)), y=-np.ones(4, int)),
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=name):
            load_npz(tmp_path / name)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for cls, value in (("dark", 10), ("light", 240)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (20, 20), value).save(tmp_path / "imgs" / cls / f"{i}.png")
    ds = load_image_folder(tmp_path / "imgs")
    assert ds.labels == ("dark", "light") and ds.x.shape == (6, 20, 20, 1)  # their own geometry
    assert load_image_folder(tmp_path / "imgs", (28, 28, 1)).x.shape == (6, 28, 28, 1)
    assert ds.x[ds.y == 1].min() > 200
    (tmp_path / "imgs" / "light" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image_folder(tmp_path / "imgs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="one subfolder per class"):
        load_image_folder(tmp_path / "empty")


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="imagenet: no such file or directory"):
        load_dataset("imagenet")
    (tmp_path / "data.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="unknown data source"):
        load_dataset(str(tmp_path / "data.txt"))

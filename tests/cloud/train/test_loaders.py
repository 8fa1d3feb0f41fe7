"""Data in every shape people have: vectors, sequences, CSV, image folders at their own geometry;
clear errors, and nothing written before the inputs are checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cloud.errors import DataError
from cloud.train.data import DataOptions, load_csv, load_dataset, load_image_folder, load_npz, parse_image_size


def _save_images(root: Path, colours: dict[str, tuple[int, int, int]], size: tuple[int, int], n: int = 3,
                 mode: str = "RGB") -> None:
    from PIL import Image

    for cls, colour in colours.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new(mode, (size[1], size[0]), colour if mode == "RGB" else colour[0]).save(root / cls / f"{i}.png")


def test_image_folder_keeps_its_geometry_and_colour(tmp_path: Path) -> None:
    # Regression: 96x96 RGB folders were read as 28x28 greyscale without a word.
    _save_images(tmp_path / "imgs", {"red": (200, 40, 40), "blue": (40, 100, 160)}, (40, 48))
    ds = load_image_folder(tmp_path / "imgs")
    assert ds.x.shape == (6, 40, 48, 3) and ds.x.dtype == np.uint8
    assert ds.x[ds.y == ds.labels.index("red")][..., 0].min() == 200  # the colour survives
    assert "40x48" in ds.note and "rgb" in ds.note
    # The most common size wins; one odd image is resized to it.
    from PIL import Image

    Image.new("RGB", (10, 10), (1, 2, 3)).save(tmp_path / "imgs" / "red" / "odd.png")
    assert load_image_folder(tmp_path / "imgs").x.shape == (7, 40, 48, 3)


def test_grey_folder_stays_grey_and_overrides_apply(tmp_path: Path) -> None:
    _save_images(tmp_path / "g", {"dark": (10, 10, 10), "light": (240, 240, 240)}, (20, 20), mode="L")
    assert load_image_folder(tmp_path / "g").x.shape == (6, 20, 20, 1)
    # RGB files whose pixels are all grey count as grey too
    _save_images(tmp_path / "rgbgrey", {"a": (50, 50, 50), "b": (90, 90, 90)}, (12, 12))
    assert load_image_folder(tmp_path / "rgbgrey").x.shape[-1] == 1
    forced = load_image_folder(tmp_path / "g", options=DataOptions(image_size=(8, 10), color="rgb"))
    assert forced.x.shape == (6, 8, 10, 3) and "--image-size" in forced.note and "--color" in forced.note
    assert parse_image_size("96x64") == (96, 64) and parse_image_size("32") == (32, 32)
    with pytest.raises(DataError, match="image-size"):
        parse_image_size("big")


def test_npz_vectors_and_sequences(tmp_path: Path) -> None:
    # Regression: x of shape (N, 20) was refused ("x must have shape (N, H, W) or (N, H, W, C)").
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vec.npz", x=rng.normal(5.0, 2.0, (40, 20)).astype(np.float32), y=np.arange(40) % 2)
    vec = load_npz(tmp_path / "vec.npz")
    assert vec.x.shape == (40, 20) and vec.layout == "vector"
    mean, std = vec.normalization
    assert len(mean) == 20 and len(std) == 20  # standardized per feature
    z = vec.normalized()
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-4)
    np.savez(tmp_path / "seq.npz", x=rng.normal(size=(30, 50, 3)).astype(np.float32), y=np.arange(30) % 3)
    seq = load_npz(tmp_path / "seq.npz")
    assert seq.x.shape == (30, 50, 3) and seq.layout == "sequence" and len(seq.normalization[0]) == 3
    # a 3-D uint8 x is still greyscale images, unless the file says otherwise
    np.savez(tmp_path / "grey.npz", x=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), y=np.arange(6) % 2)
    assert load_npz(tmp_path / "grey.npz").x.shape == (6, 8, 8, 1)
    np.savez(tmp_path / "u8seq.npz", x=rng.integers(0, 256, (6, 8, 2), dtype=np.uint8), y=np.arange(6) % 2,
             layout="sequence")
    assert load_npz(tmp_path / "u8seq.npz").layout == "sequence"


def test_csv_with_a_label_column(tmp_path: Path) -> None:
    # Regression: there was no CSV loader.
    lines = ["temp,species,humidity"] + [f"{20 + i % 3},{'cat' if i % 2 else 'dog'},{0.5 * i}" for i in range(10)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    ds = load_csv(tmp_path / "t.csv", "species")
    assert ds.x.shape == (10, 2) and ds.labels == ("cat", "dog") and ds.y.tolist() == [1, 0] * 5
    assert ds.x[3].tolist() == [20.0, 1.5]
    assert load_dataset(str(tmp_path / "t.csv"), options=DataOptions(label_column="species")).x.shape == (10, 2)
    with pytest.raises(DataError, match="no label column 'kind'.*temp, species, humidity"):
        load_csv(tmp_path / "t.csv", "kind")
    (tmp_path / "bad.csv").write_text("a,label\nx,1\n")
    with pytest.raises(DataError, match=r"bad.csv:2: a feature is not a number"):
        load_csv(tmp_path / "bad.csv")


def test_missing_path_says_no_such_file_or_directory(tmp_path: Path) -> None:
    # Regression: a missing path was reported as "unknown data source".
    for source in (str(tmp_path / "nope"), str(tmp_path / "nope.npz"), str(tmp_path / "nope.csv")):
        with pytest.raises(DataError, match="no such file or directory"):
            load_dataset(source)


def test_failed_train_writes_nothing(tmp_path: Path, capsys) -> None:
    # Regression: --model resnet or --data nope/ printed "training … →", then failed, leaving
    # config.json and checkpoints/ behind.
    from cloud import cli

    rc = cli.main(["train", "--model", "resnet", "--data", "digits", "--out", str(tmp_path / "a"), "--epochs", "1"])
    out, err = capsys.readouterr()
    assert rc == 1 and "unknown model 'resnet'" in err and "training" not in out
    rc = cli.main(["train", "--model", "mlp", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    assert rc == 1 and "no such file or directory" in err and "training" not in out
    rc = cli.main(["train", "--model", "cnn1d", "--data", "digits", "--out", str(tmp_path / "c")])
    out, err = capsys.readouterr()
    assert rc == 1 and "takes sequence data" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_data_path_is_stored_absolute_and_export_works_from_elsewhere(tmp_path: Path, monkeypatch) -> None:
    # Regression: config.json stored the data path relative to the working directory.
    from cloud import cli

    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    x = (rng.normal(size=(120, 6)) + 3.0 * y[:, None]).astype(np.float32)
    (tmp_path / "work").mkdir()
    np.savez(tmp_path / "work" / "blobs.npz", x=x, y=y)
    monkeypatch.chdir(tmp_path / "work")
    assert cli.main(["train", "--model", "mlp", "--data", "blobs.npz", "--epochs", "2", "--out", "run", "--json"]) == 0
    stored = json.loads((tmp_path / "work" / "run" / "config.json").read_text())["data"]
    assert os.path.isabs(stored) and stored == str(tmp_path / "work" / "blobs.npz")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", "work/run", "--mode", "float32", "--out", "bundle", "--json"]) == 0
    assert (tmp_path / "bundle" / "model.tflite").is_file()


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_integral_float_labels_are_class_indices(tmp_path: Path) -> None:
    # Regression: a label column of 0.0000 / 1.0000 became the class names "0.0000" and "1.0000".
    rows = [f"{i},{i % 3},{i % 2:.4f}" for i in range(8)]
    ds = load_csv(_write_csv(tmp_path / "f.csv", "a,b,label", rows))
    assert ds.targets == "classes" and ds.labels == ("0", "1") and ds.y.tolist() == [0, 1] * 4
    assert "2 classes" in ds.note
    # -1 / 1 (no indices) are class names, in numeric order
    signed = load_csv(_write_csv(tmp_path / "s.csv", "a,label", [f"{i},{(-1, 1)[i % 2]}.0" for i in range(6)]))
    assert signed.labels == ("-1", "1") and signed.y.tolist() == [0, 1] * 3
    # text stays text
    assert load_csv(_write_csv(tmp_path / "t.csv", "a,label", ["1,cat", "2,dog"])).labels == ("cat", "dog")


def test_csv_non_integral_labels_are_float_targets(tmp_path: Path) -> None:
    ds = load_csv(_write_csv(tmp_path / "r.csv", "a,b,price", [f"{i},{2 * i},{0.25 * i}" for i in range(8)]))
    assert ds.targets == "values" and ds.y.dtype == np.float32 and ds.y.tolist() == [0.25 * i for i in range(8)]
    assert ds.labels == ("price",) and ds.x.shape == (8, 2) and "float targets (N,) (price)" in ds.note
    with pytest.raises(DataError, match="non-finite"):
        load_csv(_write_csv(tmp_path / "nan.csv", "a,label", ["1,0.5", "2,nan"]))


def test_csv_several_label_columns_give_multihot_or_float_targets(tmp_path: Path) -> None:
    rows = [f"{i},{i % 2},{0.5 * i},{(i // 2) % 2}" for i in range(8)]
    path = _write_csv(tmp_path / "m.csv", "f0,cat,f1,dog", rows)
    ds = load_csv(path, "cat,dog")
    assert ds.targets == "multihot" and ds.labels == ("cat", "dog") and ds.y.shape == (8, 2)
    assert ds.y.tolist() == [[i % 2, (i // 2) % 2] for i in range(8)] and ds.x[:, 1].tolist() == [0.5 * i for i in range(8)]
    assert "multi-hot targets over 2 labels (cat, dog)" in ds.note
    # not 0/1 everywhere: regression values, one column each
    values = load_csv(path, "f1,dog")
    assert values.targets == "values" and values.y.shape == (8, 2) and values.labels == ("f1", "dog")
    assert load_dataset(str(path), options=DataOptions(label_column="cat,dog")).targets == "multihot"
    with pytest.raises(DataError, match="no label column 'nope'; the columns are f0, cat, f1, dog"):
        load_csv(path, "cat,nope")
    _write_csv(tmp_path / "txt.csv", "f0,a,b", ["1,0,x", "2,1,y"])
    with pytest.raises(DataError, match=r"column 'b' holds text \('x'\)"):
        load_csv(tmp_path / "txt.csv", "a,b")
    with pytest.raises(DataError, match="names a column twice"):
        load_csv(path, "cat,cat")
    with pytest.raises(DataError, match="no feature columns"):
        load_csv(_write_csv(tmp_path / "all.csv", "a,b", ["0,1", "1,0"]), "a,b")


def test_npz_multihot_and_float_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    multihot = (rng.random((12, 3)) > 0.5).astype(np.uint8)
    np.savez(tmp_path / "ml.npz", x=x, y=multihot, labels=np.array(["a", "b", "c"]))
    ml = load_npz(tmp_path / "ml.npz")
    assert ml.targets == "multihot" and ml.labels == ("a", "b", "c") and np.array_equal(ml.y, multihot)
    values = rng.normal(size=(12, 2)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=values)
    reg = load_npz(tmp_path / "reg.npz")
    assert reg.targets == "values" and np.array_equal(reg.y, values) and reg.target_width == 2
    np.savez(tmp_path / "reg1.npz", x=x, y=values[:, 0])
    assert load_npz(tmp_path / "reg1.npz").targets == "values"
    np.savez(tmp_path / "intf.npz", x=x, y=np.arange(12) % 3 * 1.0)  # integral floats: classes
    assert load_npz(tmp_path / "intf.npz").targets == "classes"
    # splits are seeded, and stratified only where there are classes
    from cloud.train.data import stratified_split

    rest, held = stratified_split(reg, 0.25, seed=0)
    assert len(held) == 3 and len(rest) == 9 and held.targets == "values"
    np.savez(tmp_path / "bad.npz", x=x, y=multihot, labels=np.array(["a", "b"]))
    with pytest.raises(DataError, match="2 labels for 3 target columns"):
        load_npz(tmp_path / "bad.npz")


def test_train_refuses_targets_that_are_not_classes(tmp_path: Path, capsys) -> None:
    from cloud import cli

    _write_csv(tmp_path / "r.csv", "a,b,price", [f"{i},{2 * i},{0.25 * i}" for i in range(20)])
    rc = cli.main(["train", "--model", "mlp", "--data", str(tmp_path / "r.csv"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and "float targets (N,) (price)" in err and "--task regression" in err
    assert not (tmp_path / "run").exists()

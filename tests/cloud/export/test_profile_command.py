"""``edgeloop cloud profile``: the reference profile for a bundle exported before profiles existed, computed
by its own .tflite in LiteRT; and the shipped bundles' profiles, which drift scoring now has to go on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from device.runtime.bundle import read_manifest
from device.runtime.runtime import Runtime
from tests.conftest import SHIPPED, run_cli

BUNDLES = ("mnist-cnn-int8", "mnist-cnn-float32")


def _unprofiled(tmp_path: Path, name: str = "mnist-cnn-int8") -> Path:
    """A copy of a shipped bundle as it was before it carried a profile."""
    bundle = tmp_path / name
    shutil.copytree(SHIPPED / name, bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    data.pop("profile", None)
    (bundle / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    return bundle


def _mnist_split(name: str):
    from cloud.train.training import TrainConfig, make_splits

    config = TrainConfig.from_json(dict(read_manifest(SHIPPED / name).source["train_config"]))
    return make_splits(config)


def test_profile_command_records_statistics_that_numpy_computes_by_hand(tmp_path: Path) -> None:
    from cloud.train.data import load_mnist5k

    digits = load_mnist5k(seed=0)
    x = digits.x[:300]
    np.savez(tmp_path / "digits.npz", x=x, y=digits.y[:300])
    bundle = _unprofiled(tmp_path)
    before = json.loads((bundle / "manifest.json").read_text())

    out = run_cli("cloud", "profile", str(bundle), "--data", str(tmp_path / "digits.npz"), "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    profile = json.loads(out.stdout)["profile"]
    after = json.loads((bundle / "manifest.json").read_text())
    assert after["profile"] == profile and read_manifest(bundle).profile == profile
    assert {k: v for k, v in after.items() if k != "profile"} == before  # nothing else changed; v1 stays v1
    assert (bundle / "model.tflite").read_bytes() == (SHIPPED / "mnist-cnn-int8" / "model.tflite").read_bytes()
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.tflite"]

    values = x.reshape(-1).astype(np.float64)  # one channel: every pixel of the 300 images
    hist, _ = np.histogram(values, bins=16, range=(0.0, 255.0))
    assert profile["samples"] == 300 and profile["channels"] == 1 and profile["input_range"] == [0.0, 255.0]
    assert profile["input_mean"] == [pytest.approx(values.mean(), abs=1e-6)]
    assert profile["input_std"] == [pytest.approx(values.std(), abs=1e-6)]
    assert profile["input_hist"][0] == pytest.approx(hist / values.size, abs=1e-6)
    probs = Runtime(SHIPPED / "mnist-cnn-int8").predict(x)  # the outputs part: what LiteRT says on the same data
    conf_hist, _ = np.histogram(probs.max(1), bins=10, range=(0.0, 1.0))
    assert profile["confidence_hist"] == pytest.approx(conf_hist / 300, abs=1e-6)
    assert profile["mean_confidence"] == pytest.approx(float(probs.max(1).mean()), abs=1e-6)
    assert profile["prediction_hist"] == pytest.approx(np.bincount(probs.argmax(1), minlength=10) / 300, abs=1e-6)


@pytest.mark.parametrize(
    ("args", "names", "code"),
    [
        (("{missing_bundle}", "--data", "{npz}"), "BUNDLE", 1),
        (("{empty_dir}", "--data", "{npz}"), "BUNDLE", 1),
        (("{bundle}", "--data", "{missing_npz}"), "--data", 1),
        (("{bundle}",), "--data", 2),
        (("{bundle}", "--data", "digits"), "--data", 1),  # 8x8 digits do not fit a 28x28 input
        (("{bundle}", "--data", "{npz}", "--split", "test", "--no-config"), "--split", 1),
        (("{signed}", "--data", "{npz}"), "signed", 1),
    ],
)
def test_bad_input_names_the_argument_and_writes_nothing(tmp_path: Path, args: tuple[str, ...], names: str,
                                                         code: int) -> None:
    from cloud.train.data import load_mnist5k

    digits = load_mnist5k(seed=0)
    np.savez(tmp_path / "d.npz", x=digits.x[:20], y=digits.y[:20])
    bundle = _unprofiled(tmp_path)
    if "--no-config" in args:  # a bundle that does not say which run it came from has no test split to find
        args = tuple(a for a in args if a != "--no-config")
        data = json.loads((bundle / "manifest.json").read_text())
        data["source"].pop("train_config")
        (bundle / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    signed = tmp_path / "signed"
    shutil.copytree(bundle, signed)
    (signed / "signature.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    paths = {"bundle": bundle, "signed": signed, "empty_dir": tmp_path / "empty", "npz": tmp_path / "d.npz",
             "missing_bundle": tmp_path / "no-such-bundle", "missing_npz": tmp_path / "no-such.npz"}
    snapshot = {p: p.read_bytes() for d in (bundle, signed) for p in d.iterdir()}

    out = run_cli("cloud", "profile", *(a.format(**paths) for a in args), timeout=120)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert names in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert {p: p.read_bytes() for d in (bundle, signed) for p in d.iterdir()} == snapshot
    assert not (tmp_path / "no-such-bundle").exists() and list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_profile_is_what_the_command_computes_on_the_split_export_verified_on(tmp_path: Path,
                                                                                      name: str) -> None:
    """The shipped manifests were regenerated with ``cloud profile B --data mnist5k --split test``: the
    1,000 held-out images on which the manifest's metrics (96.7 % in LiteRT) were measured."""
    shipped = read_manifest(SHIPPED / name)
    test = _mnist_split(name).test
    accuracy = float(np.mean(Runtime(SHIPPED / name).predict(test.x).argmax(1) == test.y))
    assert len(test) == shipped.metrics["samples"] and accuracy == shipped.metrics["tflite_accuracy"]
    bundle = _unprofiled(tmp_path, name)
    out = run_cli("cloud", "profile", str(bundle), "--data", "mnist5k", "--split", "test", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "1000 samples" in out.stdout
    assert read_manifest(bundle).profile == shipped.profile
    assert (SHIPPED / name / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_bundles_carry_a_profile_that_inverted_digits_drift_far_from(name: str) -> None:
    from cloud.service.drift import drift_score
    from device.agent.summary import Binning, SummaryAccumulator

    manifest = read_manifest(SHIPPED / name)
    profile = dict(manifest.profile)
    assert profile["format"] == "edgeloop-profile/1" and profile["samples"] == 1000
    assert sum(profile["input_hist"][0]) == pytest.approx(1.0, abs=1e-4)
    assert (SHIPPED / name / "manifest.json").stat().st_size < 1_000_000
    assert (SHIPPED / name / "model.tflite").stat().st_size < 1_000_000
    runtime = Runtime(SHIPPED / name)
    unseen = _mnist_split(name).validation.x  # in neither the profile nor the training steps

    def score(x: np.ndarray):
        acc = SummaryAccumulator("1", Binning.for_manifest(manifest))
        acc.add_batch(x, runtime.predict(x))
        return drift_score(profile, acc.take())

    plain, inverted = score(unseen), score(255 - unseen)
    print(f"{name}: PSI plain {plain.score:.3f}, inverted {inverted.score:.3f} "
          f"(input {inverted.input_psi:.3f}, confidence {inverted.confidence_psi:.3f}) on {plain.predictions} digits")
    assert plain.score < 0.1, plain
    assert inverted.score > 1.0 and inverted.score > 20 * plain.score, (plain, inverted)
    assert inverted.input_psi > 1.0 and inverted.confidence_psi > plain.confidence_psi

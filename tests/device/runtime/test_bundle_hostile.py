"""The bundle loader against hostile files (issue 12, item 22): each gives a clear ``BundleError``,
never a traceback, a hang or a ``MemoryError``; only regular files are read, and at most the
manifest's declared size of the model."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from device.errors import BundleError, IntegrityError
from device.runtime.bundle import MAX_MANIFEST_BYTES, load_json, read_manifest, read_model_bytes, read_regular_file
from tests.conftest import SHIPPED

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(SHIPPED / "mnist-cnn-int8", out)
    return out


def _within(seconds: float, fn, *args):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes longer than ``seconds``."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} still running after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_22_a_deeply_nested_manifest_is_a_bundle_error(bundle: Path) -> None:
    (bundle / "manifest.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(BundleError, match="nested deeper"):
        read_manifest(bundle)
    data = _manifest(SHIPPED / "mnist-cnn-int8")
    node: dict = data["source"]
    for _ in range(100):  # deep inside an otherwise valid manifest
        node["x"] = {}
        node = node["x"]
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="nested deeper"):
        read_manifest(bundle)


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b'{"format": "\xc3"}', b"NaN", b'{"a": Infinity}', b""])
def test_22_non_utf8_or_non_json_manifest_is_a_bundle_error(bundle: Path, content: bytes) -> None:
    (bundle / "manifest.json").write_bytes(content)
    with pytest.raises(BundleError, match="manifest.json"):
        read_manifest(bundle)


def test_22_a_manifest_over_the_cap_is_refused_unread(bundle: Path) -> None:
    with open(bundle / "manifest.json", "wb") as fh:
        fh.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(BundleError, match="more than"):
        read_manifest(bundle)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "directory"])
def test_22_a_model_that_is_not_a_regular_file_is_refused(bundle: Path, target: str) -> None:
    manifest = read_manifest(bundle)
    model = bundle / manifest.model_file
    model.unlink()
    if target == "/dev/zero":
        if not Path("/dev/zero").exists():
            pytest.skip("no /dev/zero")
        model.symlink_to("/dev/zero")
    elif target == "fifo":
        os.mkfifo(model)
    else:
        model.mkdir()
    with pytest.raises(BundleError, match="not a regular file"):
        _within(10, read_model_bytes, bundle, manifest)
    from device.runtime.runtime import Runtime

    with pytest.raises(BundleError, match="not a regular file"):
        _within(10, Runtime, bundle)


def test_22_a_manifest_that_is_a_fifo_is_refused(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()
    os.mkfifo(bundle / "manifest.json")
    with pytest.raises(BundleError, match="not a regular file"):
        _within(10, read_manifest, bundle)


def test_22_at_most_the_declared_size_is_read(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    model = bundle / manifest.model_file
    with open(model, "ab") as fh:
        fh.truncate(model.stat().st_size + (1 << 30))  # 1 GiB more, sparse
    with pytest.raises(IntegrityError, match="more than"):
        read_model_bytes(bundle, manifest)


def test_22_negative_size_and_dot_dot_model_file_are_refused(bundle: Path) -> None:
    data = _manifest(bundle)
    for field, value, message in (("size_bytes", -5, "size_bytes' must be >= 0"), ("file", "..", "plain file name"),
                                  ("file", "../model.tflite", "plain file name"), ("file", ".", "plain file name"),
                                  ("file", "", "plain file name")):
        bad = json.loads(json.dumps(data))
        bad["model"][field] = value
        (bundle / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(BundleError, match=message):
            read_manifest(bundle)


def test_22_a_raw_tflite_with_an_int32_output_runs_without_a_traceback(tmp_path: Path) -> None:
    """A third-party .tflite whose output is INT32 (round(10 x), made with tf.lite from a tf.function):
    its values come back as they are, with no traceback."""
    from device.runtime.runtime import Runtime

    runtime = Runtime(DATA / "int32-output.tflite")
    assert runtime.output_spec.dtype == "int32"
    x = np.array([[0.04, 0.26, -0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(runtime.predict(x)).reshape(-1), np.round(x * 10).reshape(-1))


def test_22_load_json_never_raises_anything_but_bundle_error() -> None:
    rng = np.random.default_rng(0)
    for n in range(300):
        blob = bytes(rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8))
        if n % 3 == 0:  # mostly JSON punctuation, to reach deeper into the parser
            blob = bytes(rng.choice(list(b'[]{}",:0123456789.eE-+ntrufals\\'), size=int(rng.integers(0, 200))))
        try:
            load_json(blob, "fuzz")
        except BundleError:
            pass


def test_22_read_regular_file_reads_a_regular_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    assert read_regular_file(path, 3000) == b"abc" * 1000
    with pytest.raises(BundleError, match="more than"):
        read_regular_file(path, 2999)

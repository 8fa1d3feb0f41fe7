"""The bundle format: ``model.tflite`` plus ``manifest.json`` in one directory.

The manifest says everything a device needs to use the model without the code that
trained it: the input's shape, dtype and preprocessing, the output's labels, the
quantization parameters, and the sha256 that ties the manifest to one exact .tflite.
Parsing and validation are pure; reading and writing files are the two thin functions
at the bottom.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device.errors import BundleError, IntegrityError

FORMAT = "edgeloop-bundle/1"
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.tflite"
MODES = ("float32", "float16", "dynamic", "int8")
TENSOR_DTYPES = ("float32", "int8", "uint8")
OUTPUT_KINDS = ("logits", "probabilities", "scores")
TRAIN_SIGNATURES = ("infer", "train", "get_weights", "set_weights")  # required; "evaluate" is optional


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"quantization scale must be a finite positive number, got {self.scale!r}")


@dataclass(frozen=True)
class Normalization:
    """Preprocessing from raw units to model units: ``model_input = (raw - mean) / std``."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"normalization needs finite mean and std > 0, got mean={self.mean!r} std={self.std!r}")


@dataclass(frozen=True)
class InputSpec:
    """One sample's input, without the batch dimension, and what raw values look like."""

    shape: tuple[int, ...]
    dtype: str
    raw_dtype: str = "uint8"
    raw_range: tuple[float, float] = (0.0, 255.0)
    normalization: Normalization = field(default_factory=Normalization)
    quantization: Quantization | None = None


@dataclass(frozen=True)
class OutputSpec:
    """One sample's output: class scores of a classifier."""

    shape: tuple[int, ...]
    dtype: str
    labels: tuple[str, ...]
    kind: str = "logits"
    quantization: Quantization | None = None


@dataclass(frozen=True)
class VariableSpec:
    """One trainable variable of a trainable .tflite: its signature name, origin, shape, and where
    its initial value sits in the flatbuffer (so new weights can be written without TensorFlow)."""

    name: str
    layer: str
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return 4 * math.prod(self.shape)  # float32


@dataclass(frozen=True)
class TrainableSpec:
    """What makes a bundle trainable on the device: its fixed train batch, optimizer and variables."""

    train_batch: int
    optimizer: str
    learning_rate: float
    signatures: tuple[str, ...]
    variables: tuple[VariableSpec, ...]
    frozen: tuple[str, ...] = ()  # layers baked in as constants (a CNN's convolutions)

    def to_json(self) -> dict[str, Any]:
        return {
            "train_batch": self.train_batch,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "signatures": list(self.signatures),
            "variables": [{"name": v.name, "layer": v.layer, "shape": list(v.shape), "offset": v.offset}
                          for v in self.variables],
            "frozen": list(self.frozen),
        }


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds; see :func:`parse_manifest` for the validation."""

    name: str
    version: str
    created: str
    mode: str
    input: InputSpec
    output: OutputSpec
    sha256: str
    size_bytes: int
    model_file: str = MODEL_NAME
    compat: str = "litert"
    metrics: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    trainable: TrainableSpec | None = None  # None: an inference-only bundle

    def to_json(self) -> dict[str, Any]:
        """The manifest as plain JSON types, in the layout :func:`parse_manifest` reads."""
        def quant(q: Quantization | None) -> dict[str, Any] | None:
            return None if q is None else {"scale": q.scale, "zero_point": q.zero_point}

        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "mode": self.mode,
            "compat": self.compat,
            "model": {"file": self.model_file, "sha256": self.sha256, "size_bytes": self.size_bytes},
            "input": {
                "shape": list(self.input.shape),
                "dtype": self.input.dtype,
                "raw": {"dtype": self.input.raw_dtype, "range": list(self.input.raw_range)},
                "normalization": asdict(self.input.normalization),
                "quantization": quant(self.input.quantization),
            },
            "output": {
                "shape": list(self.output.shape),
                "dtype": self.output.dtype,
                "kind": self.output.kind,
                "labels": list(self.output.labels),
                "quantization": quant(self.output.quantization),
            },
            "metrics": dict(self.metrics),
            "source": dict(self.source),
        } | ({} if self.trainable is None else {"trainable": self.trainable.to_json()})


def _get(obj: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, Mapping):
        raise BundleError(f"manifest field '{where}' must be an object, got {type(obj).__name__}")
    if key not in obj:
        raise BundleError(f"manifest is missing the field '{name}'")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise BundleError(f"manifest field '{name}' must be {expected}, got {type(value).__name__} {value!r}")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value
    ):
        raise BundleError(f"manifest field '{where}' must be a non-empty list of positive ints, got {value!r}")
    return tuple(value)


def _quant(value: Any, where: str) -> Quantization | None:
    if value is None:
        return None
    scale = _get(value, "scale", where, (int, float))
    zero_point = _get(value, "zero_point", where, int)
    try:
        return Quantization(float(scale), int(zero_point))
    except ValueError as exc:
        raise BundleError(f"manifest field '{where}': {exc}") from None


def _choice(value: str, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise BundleError(f"manifest field '{where}' must be one of {', '.join(allowed)}, got {value!r}")
    return value


def parse_manifest(data: Any) -> Manifest:
    """Validate decoded ``manifest.json`` content and build a :class:`Manifest`.

    Raises :class:`BundleError` naming the first field that is missing or wrong.
    """
    if not isinstance(data, Mapping):
        raise BundleError(f"manifest must be a JSON object, got {type(data).__name__}")
    fmt = _get(data, "format", "", str)
    if fmt != FORMAT:
        raise BundleError(f"manifest field 'format' must be {FORMAT!r}, got {fmt!r}")
    model = _get(data, "model", "", dict)
    sha = _get(model, "sha256", "model", str)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BundleError(f"manifest field 'model.sha256' must be 64 lowercase hex digits, got {sha!r}")
    size = _get(model, "size_bytes", "model", int)
    model_file = _get(model, "file", "model", str)
    if not model_file or Path(model_file).name != model_file:
        raise BundleError(f"manifest field 'model.file' must be a plain file name, got {model_file!r}")

    inp = _get(data, "input", "", dict)
    raw = _get(inp, "raw", "input", dict)
    raw_range = _get(raw, "range", "input.raw", list)
    if len(raw_range) != 2 or not all(isinstance(v, (int, float)) for v in raw_range) or not raw_range[0] < raw_range[1]:
        raise BundleError(f"manifest field 'input.raw.range' must be [low, high] with low < high, got {raw_range!r}")
    norm = _get(inp, "normalization", "input", dict)
    try:
        normalization = Normalization(
            float(_get(norm, "mean", "input.normalization", (int, float))),
            float(_get(norm, "std", "input.normalization", (int, float))),
        )
    except ValueError as exc:
        raise BundleError(f"manifest field 'input.normalization': {exc}") from None
    input_spec = InputSpec(
        shape=_shape(_get(inp, "shape", "input", list), "input.shape"),
        dtype=_choice(_get(inp, "dtype", "input", str), TENSOR_DTYPES, "input.dtype"),
        raw_dtype=_get(raw, "dtype", "input.raw", str),
        raw_range=(float(raw_range[0]), float(raw_range[1])),
        normalization=normalization,
        quantization=_quant(inp.get("quantization"), "input.quantization"),
    )

    out = _get(data, "output", "", dict)
    labels = _get(out, "labels", "output", list)
    if not labels or not all(isinstance(label, str) for label in labels):
        raise BundleError(f"manifest field 'output.labels' must be a non-empty list of strings, got {labels!r}")
    output_spec = OutputSpec(
        shape=_shape(_get(out, "shape", "output", list), "output.shape"),
        dtype=_choice(_get(out, "dtype", "output", str), TENSOR_DTYPES, "output.dtype"),
        labels=tuple(labels),
        kind=_choice(_get(out, "kind", "output", str), OUTPUT_KINDS, "output.kind"),
        quantization=_quant(out.get("quantization"), "output.quantization"),
    )
    if output_spec.shape[-1] != len(labels):
        raise BundleError(
            f"manifest has {len(labels)} labels in 'output.labels' but 'output.shape' is {list(output_spec.shape)}"
        )
    for spec, where in ((input_spec, "input"), (output_spec, "output")):
        if spec.dtype in ("int8", "uint8") and spec.quantization is None:
            raise BundleError(f"manifest field '{where}.quantization' is required for dtype {spec.dtype}")

    return Manifest(
        name=_get(data, "name", "", str),
        version=_get(data, "version", "", str),
        created=_get(data, "created", "", str),
        mode=_choice(_get(data, "mode", "", str), MODES, "mode"),
        compat=_get(data, "compat", "", str),
        input=input_spec,
        output=output_spec,
        sha256=sha,
        size_bytes=size,
        model_file=model_file,
        metrics=_optional_object(data, "metrics"),
        source=_optional_object(data, "source"),
        format=fmt,
        trainable=_trainable(data.get("trainable")),
    )


def _trainable(value: Any) -> TrainableSpec | None:
    """The optional ``trainable`` section; bundles written before it existed have none."""
    if value is None:
        return None
    where = "trainable"
    batch = _get(value, "train_batch", where, int)
    if batch < 1:
        raise BundleError(f"manifest field 'trainable.train_batch' must be >= 1, got {batch}")
    lr = float(_get(value, "learning_rate", where, (int, float)))
    if not (math.isfinite(lr) and lr > 0):
        raise BundleError(f"manifest field 'trainable.learning_rate' must be a finite number > 0, got {lr!r}")
    signatures = _get(value, "signatures", where, list)
    missing = [s for s in TRAIN_SIGNATURES if s not in signatures]
    if missing:
        raise BundleError(f"manifest field 'trainable.signatures' lacks {', '.join(missing)}")
    variables = []
    for i, var in enumerate(_get(value, "variables", where, list)):
        at = f"trainable.variables[{i}]"
        offset = _get(var, "offset", at, int)
        if offset < 0:
            raise BundleError(f"manifest field '{at}.offset' must be >= 0, got {offset}")
        variables.append(VariableSpec(_get(var, "name", at, str), _get(var, "layer", at, str),
                                      _shape(_get(var, "shape", at, list), f"{at}.shape"), offset))
    if not variables:
        raise BundleError("manifest field 'trainable.variables' must list at least one variable")
    frozen = value.get("frozen") or []
    return TrainableSpec(batch, _get(value, "optimizer", where, str), lr, tuple(signatures), tuple(variables),
                         tuple(str(f) for f in frozen))


def _optional_object(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BundleError(f"manifest field '{key}' must be an object, got {type(value).__name__}")
    return dict(value)


def sha256_bytes(content: bytes) -> str:
    """Hex sha256 of ``content``."""
    return hashlib.sha256(content).hexdigest()


def check_tflite_bytes(content: bytes, path: Path | str) -> None:
    """Reject content that cannot be a TFLite flatbuffer before an interpreter sees it."""
    if len(content) < 8:
        raise BundleError(f"{path}: {len(content)} bytes is too short to be a TFLite model (truncated?)")
    if content[4:8] != b"TFL3":
        raise BundleError(f"{path}: not a TFLite model (the flatbuffer identifier 'TFL3' is missing)")


def read_manifest(bundle_dir: Path | str) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json``."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path}: no manifest.json in this bundle directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read the manifest ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return parse_manifest(data)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None


def read_model_bytes(bundle_dir: Path | str, manifest: Manifest, verify: bool = True) -> bytes:
    """Read the bundle's .tflite and check it against the manifest's size and sha256."""
    path = Path(bundle_dir) / manifest.model_file
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: the model file named in the manifest is missing") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the model ({exc})") from None
    if verify:
        digest = sha256_bytes(content)
        if digest != manifest.sha256:
            raise IntegrityError(
                f"{path}: sha256 {digest[:16]}… does not match the manifest's {manifest.sha256[:16]}… "
                f"({len(content)} bytes on disk, {manifest.size_bytes} expected): the file is corrupted, "
                "truncated or was replaced"
            )
    check_tflite_bytes(content, path)
    return content


def write_bundle(bundle_dir: Path | str, model: bytes, manifest: Manifest) -> Path:
    """Write ``model.tflite`` and ``manifest.json`` into ``bundle_dir``, each atomically.

    The manifest's sha256 and size must already describe ``model``.
    """
    if sha256_bytes(model) != manifest.sha256 or len(model) != manifest.size_bytes:
        raise BundleError("write_bundle: the manifest's sha256/size_bytes do not describe the model bytes")
    out = Path(bundle_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / manifest.model_file, model)
    _atomic_write(out / MANIFEST_NAME, (json.dumps(manifest.to_json(), indent=2) + "\n").encode("utf-8"))
    return out


def _atomic_write(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a bundle is meant to be read by other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

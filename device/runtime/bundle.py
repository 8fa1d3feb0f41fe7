"""The bundle format: ``model.tflite`` plus ``manifest.json`` in one directory.

The manifest says everything a device needs to use the model without the code that
trained it: the task, each input's shape, dtype and preprocessing, each output's kind and
labels, the quantization parameters, and the sha256 that ties the manifest to one exact
.tflite. Parsing and validation are pure; reading and writing files are the thin functions
at the bottom.

Two versions are read; :data:`FORMAT` (``edgeloop-bundle/2``) is written:

* ``edgeloop-bundle/1``: one ``input`` and one ``output`` object, always a classifier, a scalar
  ``normalization`` (``mean``, ``std``). Every bundle shipped before v2 is one of these; it loads
  as a v2 manifest with ``task = "classification"``.
* ``edgeloop-bundle/2``: ``task`` (``classification`` | ``multilabel`` | ``regression`` | ``raw``),
  lists ``inputs`` and ``outputs`` (each with its tensor ``name``), per-channel ``normalization``
  (``mean``/``std`` lists of length 1 or C), ``raw.range`` may be ``null`` (no range check),
  an input ``layout`` (``image`` | ``vector`` | ``sequence`` | ``tensor``), output kinds
  ``logits`` | ``probabilities`` | ``scores`` | ``values``, an optional ``model.signature`` (the
  signature to run in a multi-signature .tflite) and an optional ``profile`` (the reference data
  profile for drift monitoring). The task is about ``outputs[0]``: a classifier's or multi-label
  model's first output needs one label per class; other outputs may have none.

What the device does with an output, by task and kind (:mod:`device.runtime.runtime`):
``classification``: logits → softmax, probabilities as they are; ``multilabel``: logits → sigmoid,
scores as they are; ``regression`` and ``raw``: values as they are (dequantized).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.errors import BundleError, IntegrityError

FORMAT_V1 = "edgeloop-bundle/1"
FORMAT = "edgeloop-bundle/2"
FORMATS = (FORMAT_V1, FORMAT)
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.tflite"
MODES = ("float32", "float16", "dynamic", "int8")  # the export modes
MANIFEST_MODES = (*MODES, "raw")  # raw: a third-party .tflite described as it is, not exported by edgeloop
TASKS = ("classification", "multilabel", "regression", "raw")
LABELLED_TASKS = ("classification", "multilabel")
TENSOR_DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")
QUANTIZED_DTYPES = ("int8", "uint8", "int16")
OUTPUT_KINDS = ("logits", "probabilities", "scores", "values")
LAYOUTS = ("image", "vector", "sequence", "tensor")
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
    """Preprocessing from raw units to model units: ``model_input = (raw - mean) / std``.

    ``mean`` and ``std`` are per channel (the input's last axis): tuples of length 1 (every
    channel alike) or C. Plain numbers are accepted and stored as 1-tuples.
    """

    mean: tuple[float, ...] | float = (0.0,)
    std: tuple[float, ...] | float = (1.0,)

    def __post_init__(self) -> None:
        mean = tuple(float(v) for v in (self.mean if isinstance(self.mean, (tuple, list)) else (self.mean,)))
        std = tuple(float(v) for v in (self.std if isinstance(self.std, (tuple, list)) else (self.std,)))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if not mean or not std or not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
            raise ValueError(f"normalization needs finite mean and std > 0, got mean={list(mean)} std={list(std)}")
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(f"normalization mean has {len(mean)} channels but std has {len(std)}")

    @property
    def channels(self) -> int:
        """How many channels it names (1: the same for every channel)."""
        return max(len(self.mean), len(self.std))

    @property
    def is_identity(self) -> bool:
        return all(v == 0.0 for v in self.mean) and all(v == 1.0 for v in self.std)


@dataclass(frozen=True)
class InputSpec:
    """One input tensor of one sample, without the batch dimension, and what raw values look like.

    ``raw_range`` ``None`` means any finite value (sensor readings with no natural bounds).
    ``shape`` may hold -1 for a dimension the model leaves open (other than the batch).
    """

    shape: tuple[int, ...]
    dtype: str
    raw_dtype: str = "uint8"
    raw_range: tuple[float, float] | None = (0.0, 255.0)
    normalization: Normalization = field(default_factory=Normalization)
    quantization: Quantization | None = None
    name: str = "input"
    layout: str = ""  # "" = derived from the shape by default_layout()

    def __post_init__(self) -> None:
        if not self.layout:
            object.__setattr__(self, "layout", default_layout(self.shape))


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor of one sample: its kind (what the numbers mean) and labels (may be empty)."""

    shape: tuple[int, ...]
    dtype: str
    labels: tuple[str, ...] = ()
    kind: str = "logits"
    quantization: Quantization | None = None
    name: str = "output"


def default_layout(shape: tuple[int, ...]) -> str:
    """``(F,)`` vector, ``(T, C)`` sequence, ``(H, W, C)`` image; anything else a plain tensor."""
    return {1: "vector", 2: "sequence", 3: "image"}.get(len(shape), "tensor")


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
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    sha256: str
    size_bytes: int
    model_file: str = MODEL_NAME
    compat: str = "litert"
    metrics: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    format: str = field(default=FORMAT, compare=False)  # the version it was read from; always written as v2
    trainable: TrainableSpec | None = None  # None: an inference-only bundle
    task: str = "classification"
    signature: str | None = None  # which signature of a multi-signature .tflite to run; None: the default
    profile: Mapping[str, Any] = field(default_factory=dict)  # reference data profile (drift monitoring)

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ValueError("a manifest needs at least one input and one output")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")

    @property
    def input(self) -> InputSpec:
        """The first (for most models, the only) input."""
        return self.inputs[0]

    @property
    def output(self) -> OutputSpec:
        """The first output: the one ``task`` is about."""
        return self.outputs[0]

    def to_json(self) -> dict[str, Any]:
        """The manifest as plain JSON types, in the v2 layout :func:`parse_manifest` reads."""
        def quant(q: Quantization | None) -> dict[str, Any] | None:
            return None if q is None else {"scale": q.scale, "zero_point": q.zero_point}

        model: dict[str, Any] = {"file": self.model_file, "sha256": self.sha256, "size_bytes": self.size_bytes}
        if self.signature is not None:
            model["signature"] = self.signature
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "mode": self.mode,
            "compat": self.compat,
            "task": self.task,
            "model": model,
            "inputs": [
                {
                    "name": spec.name,
                    "shape": list(spec.shape),
                    "dtype": spec.dtype,
                    "layout": spec.layout,
                    "raw": {"dtype": spec.raw_dtype,
                            "range": None if spec.raw_range is None else list(spec.raw_range)},
                    "normalization": {"mean": list(spec.normalization.mean), "std": list(spec.normalization.std)},
                    "quantization": quant(spec.quantization),
                }
                for spec in self.inputs
            ],
            "outputs": [
                {
                    "name": spec.name,
                    "shape": list(spec.shape),
                    "dtype": spec.dtype,
                    "kind": spec.kind,
                    "labels": list(spec.labels),
                    "quantization": quant(spec.quantization),
                }
                for spec in self.outputs
            ],
            "metrics": json_safe(dict(self.metrics)),
            "source": json_safe(dict(self.source)),
        } | ({} if self.trainable is None else {"trainable": self.trainable.to_json()}) | (
            {"profile": json_safe(dict(self.profile))} if self.profile else {})


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``.

    JSON has no NaN: a manifest that held one (a 0/0 ratio in a random-init model's metrics, say)
    would be refused by every strict reader, our own loader included.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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


def _shape(value: Any, where: str, open_dims: bool = False) -> tuple[int, ...]:
    """A per-sample shape: positive ints (``open_dims``: -1 too, for a dimension the model leaves open)."""
    if not isinstance(value, list) or not value or not all(
        isinstance(d, int) and not isinstance(d, bool) and (d > 0 or (open_dims and d == -1)) for d in value
    ):
        kind = "positive ints (or -1)" if open_dims else "positive ints"
        raise BundleError(f"manifest field '{where}' must be a non-empty list of {kind}, got {value!r}")
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


def _numbers(value: Any, where: str) -> tuple[float, ...]:
    """A number, or a non-empty list of numbers (per channel)."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise BundleError(f"manifest field '{where}' must be a number or a non-empty list of numbers, got {value!r}")
    return tuple(float(v) for v in values)


def _input_spec(inp: Any, where: str, v2: bool) -> InputSpec:
    raw = _get(inp, "raw", where, dict)
    raw_range_value = raw.get("range") if v2 else _get(raw, "range", f"{where}.raw", list)
    raw_range: tuple[float, float] | None = None
    if raw_range_value is not None:
        if (not isinstance(raw_range_value, list) or len(raw_range_value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw_range_value)
                or not raw_range_value[0] < raw_range_value[1]):
            raise BundleError(
                f"manifest field '{where}.raw.range' must be [low, high] with low < high"
                f"{' or null' if v2 else ''}, got {raw_range_value!r}")
        raw_range = (float(raw_range_value[0]), float(raw_range_value[1]))
    norm = _get(inp, "normalization", where, dict)
    try:
        normalization = Normalization(
            _numbers(_get(norm, "mean", f"{where}.normalization", (int, float, list)), f"{where}.normalization.mean"),
            _numbers(_get(norm, "std", f"{where}.normalization", (int, float, list)), f"{where}.normalization.std"),
        )
    except ValueError as exc:
        raise BundleError(f"manifest field '{where}.normalization': {exc}") from None
    shape = _shape(_get(inp, "shape", where, list), f"{where}.shape", open_dims=v2)
    if normalization.channels > 1 and shape[-1] not in (-1, normalization.channels):
        raise BundleError(f"manifest field '{where}.normalization' has {normalization.channels} channels but "
                          f"'{where}.shape' is {list(shape)}")
    spec = InputSpec(
        shape=shape,
        dtype=_choice(_get(inp, "dtype", where, str), TENSOR_DTYPES, f"{where}.dtype"),
        raw_dtype=_get(raw, "dtype", f"{where}.raw", str),
        raw_range=raw_range,
        normalization=normalization,
        quantization=_quant(inp.get("quantization"), f"{where}.quantization"),
        name=_get(inp, "name", where, str) if v2 else "input",
        layout=_choice(_get(inp, "layout", where, str), LAYOUTS, f"{where}.layout") if v2 else "",
    )
    return spec


def _output_spec(out: Any, where: str, v2: bool) -> OutputSpec:
    labels = _get(out, "labels", where, list)
    if not all(isinstance(label, str) for label in labels) or (not v2 and not labels):
        raise BundleError(f"manifest field '{where}.labels' must be a {'' if v2 else 'non-empty '}list of strings, "
                          f"got {labels!r}")
    spec = OutputSpec(
        shape=_shape(_get(out, "shape", where, list), f"{where}.shape", open_dims=v2),
        dtype=_choice(_get(out, "dtype", where, str), TENSOR_DTYPES, f"{where}.dtype"),
        labels=tuple(labels),
        kind=_choice(_get(out, "kind", where, str), OUTPUT_KINDS, f"{where}.kind"),
        quantization=_quant(out.get("quantization"), f"{where}.quantization"),
        name=_get(out, "name", where, str) if v2 else "output",
    )
    if labels and spec.shape[-1] != len(labels):
        raise BundleError(
            f"manifest has {len(labels)} labels in '{where}.labels' but '{where}.shape' is {list(spec.shape)}"
        )
    return spec


def parse_manifest(data: Any) -> Manifest:
    """Validate decoded ``manifest.json`` content (v1 or v2) and build a :class:`Manifest`.

    Raises :class:`BundleError` naming the first field that is missing or wrong.
    """
    if not isinstance(data, Mapping):
        raise BundleError(f"manifest must be a JSON object, got {type(data).__name__}")
    fmt = _get(data, "format", "", str)
    if fmt not in FORMATS:
        raise BundleError(f"manifest field 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    v2 = fmt == FORMAT
    model = _get(data, "model", "", dict)
    sha = _get(model, "sha256", "model", str)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BundleError(f"manifest field 'model.sha256' must be 64 lowercase hex digits, got {sha!r}")
    size = _get(model, "size_bytes", "model", int)
    if size < 0:
        raise BundleError(f"manifest field 'model.size_bytes' must be >= 0, got {size}")
    model_file = _get(model, "file", "model", str)
    if not model_file or Path(model_file).name != model_file or model_file in (".", ".."):
        raise BundleError(f"manifest field 'model.file' must be a plain file name, got {model_file!r}")
    signature = model.get("signature") if v2 else None
    if signature is not None and (not isinstance(signature, str) or not signature):
        raise BundleError(f"manifest field 'model.signature' must be a non-empty string or absent, got {signature!r}")

    if v2:
        task = _choice(_get(data, "task", "", str), TASKS, "task")
        inputs = tuple(_input_spec(inp, f"inputs[{i}]", True) for i, inp in enumerate(_get(data, "inputs", "", list)))
        outputs = tuple(_output_spec(out, f"outputs[{i}]", True)
                        for i, out in enumerate(_get(data, "outputs", "", list)))
        if not inputs or not outputs:
            raise BundleError("manifest fields 'inputs' and 'outputs' must each list at least one tensor")
        for kind, specs in (("inputs", inputs), ("outputs", outputs)):
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise BundleError(f"manifest field '{kind}' names a tensor twice: {names}")
        if task in LABELLED_TASKS and not outputs[0].labels:
            raise BundleError(f"manifest field 'outputs[0].labels' must list the classes of a {task} model")
    else:
        task = "classification"
        inputs = (_input_spec(_get(data, "input", "", dict), "input", False),)
        outputs = (_output_spec(_get(data, "output", "", dict), "output", False),)
    for kind, specs in (("input", inputs), ("output", outputs)):
        for i, spec in enumerate(specs):
            if spec.dtype in QUANTIZED_DTYPES and spec.quantization is None:
                where = f"{kind}s[{i}]" if v2 else kind
                raise BundleError(f"manifest field '{where}.quantization' is required for dtype {spec.dtype}")

    return Manifest(
        name=_get(data, "name", "", str),
        version=_get(data, "version", "", str),
        created=_get(data, "created", "", str),
        mode=_choice(_get(data, "mode", "", str), MANIFEST_MODES, "mode"),
        compat=_get(data, "compat", "", str),
        inputs=inputs,
        outputs=outputs,
        sha256=sha,
        size_bytes=size,
        model_file=model_file,
        metrics=_optional_object(data, "metrics"),
        source=_optional_object(data, "source"),
        format=fmt,
        trainable=_trainable(data.get("trainable")),
        task=task,
        signature=signature,
        profile=_optional_object(data, "profile"),
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


MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KiB; a profile for drift monitoring stays far below this
MAX_JSON_DEPTH = 32  # the deepest manifest edgeloop writes nests 5 levels
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def load_json(content: bytes, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode UTF-8 JSON that an attacker may have written: bounded nesting, no NaN, clear errors.

    Raises :class:`BundleError` naming ``where`` for invalid UTF-8, malformed JSON, nesting deeper
    than ``max_depth`` (checked before decoding, so a 200,000-level document costs one scan, not a
    ``RecursionError``) and the non-JSON constants ``NaN``/``Infinity``.
    """
    depth = 0
    for token in _JSON_TOKENS.finditer(content):
        c = token.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise BundleError(f"{where}: JSON nested deeper than {max_depth} levels")
        elif c in (b"]", b"}"):
            depth -= 1
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    def no_constants(name: str) -> Any:
        raise BundleError(f"{where}: {name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{where}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # unreachable after the depth scan; kept so no input can escape as a traceback
        raise BundleError(f"{where}: JSON nested too deeply") from None


def read_regular_file(path: Path | str, max_bytes: int, what: str = "file") -> bytes:
    """Read at most ``max_bytes`` of a regular file; refuse FIFOs, devices, sockets and directories.

    The file is opened non-blocking and checked with ``fstat`` on the open descriptor, so a
    FIFO cannot hang the reader and a symlink to ``/dev/zero`` cannot fill memory. Raises
    :class:`BundleError` (``FileNotFoundError`` is re-raised for the caller to word).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BundleError(f"{path}: cannot open the {what} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path}: the {what} is not a regular file (a FIFO, device, socket or directory)")
        if st.st_size > max_bytes:
            raise BundleError(f"{path}: the {what} is {st.st_size} bytes, more than the {max_bytes} allowed")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    finally:
        os.close(fd)
    if size > max_bytes:  # it grew while being read
        raise BundleError(f"{path}: the {what} is more than the {max_bytes} bytes allowed")
    return b"".join(chunks)


def read_manifest(bundle_dir: Path | str) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json`` (a regular file of at most :data:`MAX_MANIFEST_BYTES`)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    data = read_manifest_json(bundle_dir)
    try:
        return parse_manifest(data)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None


def read_model_bytes(bundle_dir: Path | str, manifest: Manifest, verify: bool = True) -> bytes:
    """Read the bundle's .tflite and check it against the manifest's size and sha256.

    At most ``manifest.size_bytes`` bytes are read, and only from a regular file.
    """
    path = Path(bundle_dir) / manifest.model_file
    try:
        content = read_regular_file(path, manifest.size_bytes, "model")
    except FileNotFoundError:
        raise BundleError(f"{path}: the model file named in the manifest is missing") from None
    except BundleError as exc:
        if verify and "more than" in str(exc):
            raise IntegrityError(f"{exc}: the manifest says {manifest.size_bytes} bytes; the file is corrupted "
                                 "or was replaced") from None
        raise
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


def read_manifest_json(bundle_dir: Path | str) -> dict[str, Any]:
    """``bundle_dir/manifest.json`` decoded but not rebuilt: every field as written, in either format."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        content = read_regular_file(path, MAX_MANIFEST_BYTES, "manifest")
    except FileNotFoundError:
        raise BundleError(f"{path}: no manifest.json in this bundle directory") from None
    data = load_json(content, str(path))
    if not isinstance(data, dict):
        raise BundleError(f"{path}: manifest must be a JSON object, got {type(data).__name__}")
    return data


def write_manifest_json(bundle_dir: Path | str, data: Mapping[str, Any]) -> Manifest:
    """Validate ``data`` and write it as ``manifest.json``, atomically and as it is (a v1 manifest stays v1).

    For a change to a manifest that leaves the model alone, such as adding a ``profile``; the
    manifest's sha256 and size must still describe the bundle's model file.
    """
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        manifest = parse_manifest(data)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
    model = Path(bundle_dir) / manifest.model_file
    if not model.is_file() or sha256_bytes(model.read_bytes()) != manifest.sha256:
        raise BundleError(f"{path}: model.sha256 does not describe {model}; the manifest was not written")
    _atomic_write(path, (json.dumps(json_safe(dict(data)), indent=2) + "\n").encode("utf-8"))
    return manifest


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

"""Export a trained run as a verified device bundle, in one mode or in all of them.

A bundle is written to a temporary directory, verified there against Keras on the test
split (:mod:`cloud.export.verify`), and only then moved into place: a failed export leaves any
earlier bundle at the destination untouched and exits non-zero.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cloud.errors import ExportVerificationError
from cloud.export.profile import add_profile
from cloud.export.quantize import COMPATS, IO_TYPES, convert
from cloud.export.source import SourceOptions, TrainedRun, keras_logits, load_source  # noqa: F401 (re-exported)
from cloud.export.targets import has_targets
from cloud.export.verify import TOLERANCES, Tolerance, Verification, verify_bundle
from cloud.train.training import TrainConfig
from device.runtime.bundle import (
    MODES,
    InputSpec,
    Manifest,
    Normalization,
    OutputSpec,
    sha256_bytes,
    write_bundle,
)
from device.runtime.interpreter import load_interpreter_class, tensor_quantization


@dataclass(frozen=True)
class ExportConfig:
    """How to export: the mode, the runtime to stay compatible with, the I/O type, and the bundle's identity.

    ``io`` is the input/output tensor type of an ``int8`` export: ``uint8`` (raw pixels go in,
    the normalization is folded into the model), ``int8`` (normalized values, quantized) or
    ``float32`` (quantize/dequantize inside the model). ``None``: ``uint8`` for image models,
    ``int8`` otherwise. Float modes always take float32.
    """

    mode: str = "int8"
    compat: str = "litert"
    name: str | None = None  # default: "<data>-<model>-<mode>"
    version: str = "1"
    created: str | None = None  # ISO 8601 UTC; default: now
    representative_samples: int = 200
    tolerance: Tolerance | None = None  # default: TOLERANCES[mode]
    io: str | None = None
    metadata: bool = True  # embed TFLite metadata (cloud.export.metadata)
    description: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.compat not in COMPATS:
            raise ValueError(f"compat must be one of {', '.join(COMPATS)}, got {self.compat!r}")
        if self.io is not None and self.io not in IO_TYPES:
            raise ValueError(f"--io must be one of {', '.join(IO_TYPES)}, got {self.io!r}")
        if self.representative_samples < 1:
            raise ValueError("representative_samples must be >= 1")
        if not self.version:
            raise ValueError("version must be a non-empty string")

    def io_for(self, layout: str) -> str:
        """The tensor type of the exported input/output for a model whose input has ``layout``."""
        if self.mode != "int8":
            return "float32"
        return self.io or ("uint8" if layout == "image" else "int8")

    def bundle_name(self, train: TrainConfig) -> str:
        """``name``, or ``<data>-<model>-<mode>`` (plus ``-compat`` for tflite-runtime)."""
        if self.name:
            return self.name
        data = Path(train.data).stem if train.data not in ("mnist5k", "digits") else train.data
        return f"{data}-{train.model}-{self.mode}" + ("-compat" if self.compat == "tflite-runtime" else "")


def load_run(run_dir: Path | str, options: SourceOptions | None = None) -> TrainedRun:
    """Load ``RUN/model.keras`` and re-create the exact splits it was trained with.

    Also takes a .keras or .h5 file, and ``options`` override the data, labels, preprocessing
    and task (see :func:`cloud.export.source.load_source`).
    """
    return load_source(run_dir, options)


def weights_sha256(model: Any) -> str:
    """Hash of the Keras weights themselves (a .keras zip stores file times, so its hash varies)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def build_manifest(tflite: bytes, run: TrainedRun, config: ExportConfig, created: str,
                   raw_input: bool = False) -> Manifest:
    """Describe ``tflite`` from the model's own tensors plus the run's preprocessing, task and labels.

    ``raw_input``: the normalization was folded into the model, which takes raw values.
    """
    interpreter_cls, _ = load_interpreter_class()
    interpreter = interpreter_cls(model_content=tflite)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    train = run.splits.train
    mean, std = (0.0, 1.0) if raw_input else train.normalization
    return Manifest(
        name=config.bundle_name(run.config),
        version=config.version,
        created=created,
        mode=config.mode,
        compat=config.compat,
        task=run.task,
        inputs=(InputSpec(
            shape=tuple(int(d) for d in inp["shape"][1:]),
            dtype=np.dtype(inp["dtype"]).name,
            raw_dtype=train.x.dtype.name,
            raw_range=train.raw_range,
            normalization=Normalization(mean, std),
            quantization=tensor_quantization(inp),
        ),),
        outputs=(OutputSpec(
            shape=tuple(int(d) for d in out["shape"][1:]),
            dtype=np.dtype(out["dtype"]).name,
            labels=train.labels if run.task in ("classification", "multilabel") else (),
            kind=run.kind,
            quantization=tensor_quantization(out),
        ),),
        sha256=sha256_bytes(tflite),
        size_bytes=len(tflite),
        source={
            "checkpoint": str(run.checkpoint),
            "weights_sha256": weights_sha256(run.model),
            "train_config": asdict(run.config),
        },
    )


def representative_set(run: TrainedRun, n: int, raw: bool = False) -> np.ndarray:
    """``n`` training samples chosen by the run's seed, for int8 calibration: normalized, or
    (``raw``) raw float32 with the raw range's ends planted in one value each, so that a raw
    uint8 input calibrates to exactly scale 1, zero point 0 (the pixel values themselves)."""
    train = run.splits.train
    idx = np.random.default_rng(run.config.seed).permutation(len(train))[:n]
    subset = train.subset(idx)
    if not raw:
        return subset.normalized()
    x = subset.x.astype(np.float32)
    if subset.x.dtype == np.uint8 and x.size >= 2:
        flat = x.reshape(-1)
        flat[0], flat[-1] = 0.0, 255.0
    return x


def with_normalization(model: Any, normalization: tuple[Any, Any]) -> Any:
    """``model`` behind a layer computing ``(raw - mean) / std``: a model that takes raw values."""
    import keras

    mean, std = (np.asarray(v, dtype=np.float32) for v in normalization)
    inputs = keras.Input(tuple(model.input_shape[1:]), name="raw")
    scaled = keras.layers.Rescaling(scale=1.0 / std, offset=-mean / std, name="normalize")(inputs)
    return keras.Model(inputs, model(scaled), name=f"{model.name}_raw")


def export_bundle(run: TrainedRun, out_dir: Path | str, config: ExportConfig) -> Verification:
    """Convert, write, verify, and only then move the bundle to ``out_dir``.

    Raises :class:`ExportVerificationError` (leaving ``out_dir`` as it was) when the
    export is non-finite or disagrees with Keras beyond tolerance.
    """
    out = Path(out_dir)
    layout = run.splits.train.layout
    io = config.io_for(layout)
    mean, std = run.splits.train.normalization
    identity = all(v == 0.0 for v in np.atleast_1d(mean)) and all(v == 1.0 for v in np.atleast_1d(std))
    raw_input = io == "uint8"  # phones feed raw pixels: fold the normalization into the model
    model = run.model if not raw_input or identity else with_normalization(run.model, run.splits.train.normalization)
    rep = representative_set(run, config.representative_samples, raw=raw_input) if config.mode == "int8" else None
    tflite = convert(model, config.mode, rep, config.compat, io)
    created = config.created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = build_manifest(tflite, run, config, created, raw_input=raw_input)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        write_bundle(staging, tflite, manifest)
        test = run.splits.test
        verification = verify_bundle(staging, run.keras_test_logits, test.x,
                                     test.y if has_targets(test, run.task) else None, config.mode,
                                     config.tolerance or TOLERANCES[config.mode], task=run.task, kind=run.kind)
        if not verification.passed:
            raise ExportVerificationError(
                f"{config.mode} export of {run.checkpoint} failed verification on {verification.samples} test "
                f"samples: " + "; ".join(verification.failures) + f". Nothing was written to {out}."
            )
        if config.metadata:
            tflite, manifest = _with_metadata(tflite, manifest, run, config, staging)
            verification = replace(verification, size_bytes=len(tflite))
        metrics = {**verification.to_json(), "keras_test_accuracy": verification.keras_accuracy}
        write_bundle(staging, tflite, replace(manifest, metrics=metrics))
        add_profile(staging, test.x)  # the reference for drift monitoring: the data it was verified on
        _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return verification


def _with_metadata(tflite: bytes, manifest: Manifest, run: TrainedRun, config: ExportConfig,
                   staging: Path) -> tuple[bytes, Manifest]:
    """The verified model with TFLite metadata embedded, checked to give bit-identical outputs."""
    from cloud.export.metadata import ModelInfo, embed_metadata
    from device.runtime.runtime import Runtime

    x = run.splits.test.x[:16]
    before = Runtime(staging, num_threads=1).logits(x, check_finite=False)
    info = ModelInfo(manifest.name, config.description or _describe(run, config), manifest.version, manifest.task)
    with_md = embed_metadata(tflite, info, manifest.input, manifest.output)
    manifest = replace(manifest, sha256=sha256_bytes(with_md), size_bytes=len(with_md))
    write_bundle(staging, with_md, manifest)
    after = Runtime(staging, num_threads=1).logits(x, check_finite=False)
    if not np.array_equal(before, after, equal_nan=True):
        raise ExportVerificationError(f"{config.mode} export of {run.checkpoint}: embedding the TFLite metadata "
                                      "changed the model's outputs; nothing was written")
    return with_md, manifest


def _describe(run: TrainedRun, config: ExportConfig) -> str:
    shape = "x".join(str(d) for d in run.splits.train.sample_shape)
    return (f"{run.config.model} ({run.task}, {run.kind}) on {shape} {run.splits.train.layout} input, "
            f"exported by edgeloop in {config.mode} mode")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing bundle only once the new one is complete."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


@dataclass(frozen=True)
class ModeResult:
    mode: str
    bundle: Path | None
    verification: Verification | None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        v = self.verification
        return {
            "mode": self.mode,
            "bundle": str(self.bundle) if self.bundle else None,
            "passed": self.error is None,
            "error": self.error,
            **({} if v is None else {
                "task": v.task,
                "size_bytes": v.size_bytes,
                "accuracy": v.tflite_accuracy,
                "keras_accuracy": v.keras_accuracy,
                "samples": v.samples,
                "max_abs_logit_diff": v.max_abs_logit_diff,
                "top1_agreement": v.top1_agreement,
                "median_latency_ms": v.median_latency_ms,
                **{name: getattr(v, name) for name in ("tflite_exact_match", "keras_exact_match", "tflite_mae",
                                                        "keras_mae", "tflite_rmse", "keras_rmse")},
                "target_values": v.target_values,
            }),
        }


def export_all_modes(run: TrainedRun, out_root: Path | str, config: ExportConfig,
                     on_mode: Callable[[str], None] | None = None) -> list[ModeResult]:
    """Export every mode to ``out_root/<name>-<mode>``; a failing mode is reported, not fatal."""
    results = []
    for mode in MODES:
        if on_mode is not None:
            on_mode(mode)
        cfg = replace(config, mode=mode, name=f"{config.name}-{mode}" if config.name else None)
        target = Path(out_root) / cfg.bundle_name(run.config)
        try:
            results.append(ModeResult(mode, target, export_bundle(run, target, cfg)))
        except ExportVerificationError as exc:
            results.append(ModeResult(mode, None, None, str(exc)))
    return results

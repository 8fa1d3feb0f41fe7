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

from cloud.errors import CheckpointError, ExportVerificationError
from cloud.export.profile import add_profile
from cloud.export.quantize import COMPATS, convert
from cloud.export.verify import TOLERANCES, Tolerance, Verification, verify_bundle
from cloud.train.data import Dataset
from cloud.train.training import Splits, TrainConfig, make_splits, read_config
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
    """How to export: the mode, the runtime to stay compatible with, and the bundle's identity."""

    mode: str = "int8"
    compat: str = "litert"
    name: str | None = None  # default: "<data>-<model>-<mode>"
    version: str = "1"
    created: str | None = None  # ISO 8601 UTC; default: now
    representative_samples: int = 200
    tolerance: Tolerance | None = None  # default: TOLERANCES[mode]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.compat not in COMPATS:
            raise ValueError(f"compat must be one of {', '.join(COMPATS)}, got {self.compat!r}")
        if self.representative_samples < 1:
            raise ValueError("representative_samples must be >= 1")
        if not self.version:
            raise ValueError("version must be a non-empty string")

    def bundle_name(self, train: TrainConfig) -> str:
        """``name``, or ``<data>-<model>-<mode>`` (plus ``-compat`` for tflite-runtime)."""
        if self.name:
            return self.name
        data = Path(train.data).stem if train.data not in ("mnist5k", "digits") else train.data
        return f"{data}-{train.model}-{self.mode}" + ("-compat" if self.compat == "tflite-runtime" else "")


@dataclass(frozen=True)
class TrainedRun:
    """A finished training run, loaded: its Keras model, config, data splits and Keras test logits."""

    run_dir: Path
    model: Any
    config: TrainConfig
    splits: Splits
    keras_test_logits: np.ndarray

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "model.keras"


def load_run(run_dir: Path | str) -> TrainedRun:
    """Load ``RUN/model.keras`` and re-create the exact splits it was trained with."""
    import keras

    run = Path(run_dir)
    config = read_config(run)
    path = run / "model.keras"
    if not path.is_file():
        raise CheckpointError(f"{path}: the run has not finished (no model.keras); resume it with --resume")
    model = keras.models.load_model(path, compile=False)
    splits = make_splits(config)
    logits = keras_logits(model, splits.test)
    return TrainedRun(run, model, config, splits, logits)


def keras_logits(model: Any, data: Dataset, batch: int = 500) -> np.ndarray:
    x = data.normalized()
    return np.concatenate([np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)])


def weights_sha256(model: Any) -> str:
    """Hash of the Keras weights themselves (a .keras zip stores file times, so its hash varies)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def build_manifest(tflite: bytes, run: TrainedRun, config: ExportConfig, created: str) -> Manifest:
    """Describe ``tflite`` from the model's own tensors plus the run's preprocessing and labels."""
    interpreter_cls, _ = load_interpreter_class()
    interpreter = interpreter_cls(model_content=tflite)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    train = run.splits.train
    mean, std = train.normalization
    return Manifest(
        name=config.bundle_name(run.config),
        version=config.version,
        created=created,
        mode=config.mode,
        compat=config.compat,
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
            labels=train.labels,
            kind="logits",
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


def representative_set(run: TrainedRun, n: int) -> np.ndarray:
    """``n`` normalized training samples chosen by the run's seed, for int8 calibration."""
    train = run.splits.train
    idx = np.random.default_rng(run.config.seed).permutation(len(train))[:n]
    return train.subset(idx).normalized()


def export_bundle(run: TrainedRun, out_dir: Path | str, config: ExportConfig) -> Verification:
    """Convert, write, verify, and only then move the bundle to ``out_dir``.

    Raises :class:`ExportVerificationError` (leaving ``out_dir`` as it was) when the
    export is non-finite or disagrees with Keras beyond tolerance.
    """
    out = Path(out_dir)
    rep = representative_set(run, config.representative_samples) if config.mode == "int8" else None
    tflite = convert(run.model, config.mode, rep, config.compat)
    created = config.created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = build_manifest(tflite, run, config, created)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        write_bundle(staging, tflite, manifest)
        test = run.splits.test
        verification = verify_bundle(staging, run.keras_test_logits, test.x, test.y, config.mode,
                                     config.tolerance or TOLERANCES[config.mode])
        if not verification.passed:
            raise ExportVerificationError(
                f"{config.mode} export of {run.checkpoint} failed verification on {verification.samples} test "
                f"samples: " + "; ".join(verification.failures) + f". Nothing was written to {out}."
            )
        metrics = {**verification.to_json(), "keras_test_accuracy": verification.keras_accuracy}
        write_bundle(staging, tflite, replace(manifest, metrics=metrics))
        add_profile(staging, test.x)  # the reference for drift monitoring: the data it was verified on
        _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return verification


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
                "size_bytes": v.size_bytes,
                "accuracy": v.tflite_accuracy,
                "keras_accuracy": v.keras_accuracy,
                "max_abs_logit_diff": v.max_abs_logit_diff,
                "top1_agreement": v.top1_agreement,
                "median_latency_ms": v.median_latency_ms,
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

"""New weights into a trainable bundle, without TensorFlow: the flatbuffer is patched in place.

A trainable .tflite keeps each variable's initial value as a constant buffer; the export
records where (``trainable.variables[i].offset``). Writing the global model of round R
into those bytes gives a bundle that starts from that model, byte-for-byte what a fresh
conversion would give, in microseconds. The server does this after every round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import BundleError, InputError, NotTrainableError
from device.runtime.bundle import Manifest, TrainableSpec, read_manifest, read_model_bytes, sha256_bytes, write_bundle


def trainable_spec(manifest: Manifest, where: Path | str) -> TrainableSpec:
    """The manifest's trainable section, or :class:`NotTrainableError` saying how to get one."""
    if manifest.trainable is None:
        raise NotTrainableError(
            f"{where}: bundle '{manifest.name}' is not trainable (its manifest has no 'trainable' section); "
            "export one with 'edgeloop cloud export RUN --trainable'"
        )
    return manifest.trainable


def check_weights(spec: TrainableSpec, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``weights`` as float32 arrays in variable order; :class:`InputError` on count, shape or non-finite values."""
    if len(weights) != len(spec.variables):
        raise InputError(f"expected {len(spec.variables)} weight arrays, got {len(weights)}")
    out = []
    for var, w in zip(spec.variables, weights):
        arr = np.asarray(w)
        if arr.shape != var.shape:
            raise InputError(f"weight {var.name} ({var.layer}) has shape {list(arr.shape)}, expected {list(var.shape)}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InputError(f"weight {var.name} ({var.layer}) holds non-finite values")
        out.append(arr)
    return out


def read_weights(model: bytes, spec: TrainableSpec) -> list[np.ndarray]:
    """The initial weights stored in a trainable .tflite."""
    out = []
    for var in spec.variables:
        if var.offset + var.nbytes > len(model):
            raise BundleError(f"variable {var.name}: offset {var.offset} + {var.nbytes} bytes is past the model's end")
        out.append(np.frombuffer(model, np.float32, count=var.nbytes // 4, offset=var.offset).reshape(var.shape).copy())
    return out


def patch_weights(model: bytes, spec: TrainableSpec, weights: Sequence[np.ndarray]) -> bytes:
    """``model`` with its variables' initial values replaced by ``weights`` (same length, new bytes)."""
    buf = bytearray(model)
    for var, arr in zip(spec.variables, check_weights(spec, weights)):
        if var.offset + var.nbytes > len(buf):
            raise BundleError(f"variable {var.name}: offset {var.offset} + {var.nbytes} bytes is past the model's end")
        buf[var.offset : var.offset + var.nbytes] = arr.astype("<f4").tobytes()
    return bytes(buf)


def rebundle(src: Path | str, dst: Path | str, weights: Sequence[np.ndarray], *, version: str | None = None,
             metrics: Mapping[str, Any] | None = None, source: Mapping[str, Any] | None = None) -> Manifest:
    """Write a copy of the trainable bundle ``src`` to ``dst`` whose model starts from ``weights``."""
    manifest = read_manifest(src)
    spec = trainable_spec(manifest, src)
    model = patch_weights(read_model_bytes(src, manifest), spec, weights)
    new = replace(manifest, sha256=sha256_bytes(model), size_bytes=len(model),
                  version=version or manifest.version,
                  metrics=dict(metrics) if metrics is not None else manifest.metrics,
                  source={**manifest.source, **(source or {})})
    write_bundle(dst, model, new)
    return new

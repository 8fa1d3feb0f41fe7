"""Where a bundle named on the command line lives: a path, an agent's directory, or a shipped bundle's name."""

from __future__ import annotations

from pathlib import Path

from device.errors import EdgeloopError


def resolve_bundle(spec: str) -> Path:
    """A path as given, an agent directory (its current bundle), or a shipped bundle's name (``mnist-cnn-int8``)."""
    path = Path(spec)
    if (path / "current" / "manifest.json").is_file():  # an agent directory: its current model
        return (path / "current").resolve()
    if path.exists() or "/" in spec or spec.endswith(".tflite"):
        return path
    try:
        from models import bundles
    except ImportError:  # pragma: no cover - models is part of the same distribution
        return path
    try:
        return bundles.path(spec)
    except KeyError as exc:
        raise EdgeloopError(f"{spec}: no such file or directory, and {exc.args[0]}") from None

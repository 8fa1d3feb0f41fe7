"""Pretrained bundles shipped in the repository, so a device works before any training.

Regenerate them with ``make bundles`` (``python -m models.ship``). This module only
finds files: it imports nothing heavier than pathlib, so the device side can use it.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def names() -> list[str]:
    """Names of the shipped bundles (directories holding a manifest.json)."""
    return sorted(p.name for p in ROOT.iterdir() if (p / "manifest.json").is_file())


def path(name: str) -> Path:
    """Directory of the shipped bundle ``name``; raises KeyError listing the known names."""
    candidate = ROOT / name
    if name not in names():
        raise KeyError(f"no shipped bundle named {name!r}; shipped: {', '.join(names()) or 'none'}")
    return candidate

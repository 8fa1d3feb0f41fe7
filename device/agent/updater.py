"""The agent's bundle store on disk: install, swap and roll back bundles atomically.

Layout of an agent directory::

    AGENT/bundles/<id>/     one directory per installed bundle (manifest, model, canary, signature)
    AGENT/current           symlink to the bundle that serves; replaced with one rename
    AGENT/state.json        version, ETag, previous bundle, rejected ETags (written atomically)
    AGENT/queue.sqlite      collected samples (device.agent.collector)

A crash at any point leaves ``current`` pointing at a complete bundle: new bundles are
staged in a hidden directory and renamed into ``bundles/`` before the link moves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from device.errors import UpdateRejected

CURRENT = "current"
STATE = "state.json"
BUNDLE_FILES = ("manifest.json", "model.tflite", "canary.npz", "signature.json")
MAX_REJECTED = 16


class BundleStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.bundles = self.root / "bundles"
        self.bundles.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".staging-*"):  # left by a crash mid-download
            shutil.rmtree(stale, ignore_errors=True)

    # -- state -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.root / STATE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def update_state(self, **changes: Any) -> dict[str, Any]:
        state = {**self.state(), **changes}
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".state.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / STATE)
        return state

    def reject(self, etag: str) -> None:
        rejected = [e for e in self.state().get("rejected", []) if e != etag][-(MAX_REJECTED - 1):]
        self.update_state(rejected=[*rejected, etag])

    # -- bundles -----------------------------------------------------------------------------

    def current(self) -> Path | None:
        """The serving bundle's directory (resolved, so a concurrent swap cannot change it under a reader)."""
        link = self.root / CURRENT
        return link.resolve() if link.exists() else None

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def commit(self, staging: Path, bundle_id: str) -> Path:
        """Move a verified staging directory into ``bundles/<bundle_id>`` (a rename)."""
        target = self.bundles / bundle_id
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
        return target

    def install_local(self, src: Path | str, bundle_id: str) -> Path:
        """Copy a local (e.g. shipped) bundle into the store; the caller then :meth:`swap`s to it."""
        staging = self.staging()
        for name in BUNDLE_FILES:
            if (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, staging / name)
        if not (staging / "manifest.json").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            raise UpdateRejected(f"{src}: not a bundle directory (no manifest.json)")
        return self.commit(staging, bundle_id)

    def swap(self, target: Path) -> Path | None:
        """Point ``current`` at ``target`` with one atomic rename; returns the bundle it pointed at before."""
        previous = self.current()
        tmp = self.root / f".current.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, self.root), tmp)
        os.replace(tmp, self.root / CURRENT)
        return previous

    def prune(self, keep: set[Path]) -> None:
        """Delete installed bundles other than ``keep`` (the current and previous ones)."""
        keep = {p.resolve() for p in keep if p is not None}
        for d in self.bundles.iterdir():
            if d.resolve() not in keep:
                shutil.rmtree(d, ignore_errors=True)

"""Ed25519 signatures over a bundle: what is signed, and the device's check of it.

The cloud signs one message that binds the exact ``manifest.json`` bytes, the .tflite's
sha256 and the canary file's sha256; the device pins the public key and refuses any
bundle whose files or signature do not match. Signing lives in :mod:`cloud.release.signing`;
this module only verifies (``cryptography`` is in the device extra).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.errors import BundleError, UpdateRejected
from device.runtime.bundle import MANIFEST_NAME, parse_manifest

SIGNATURE_NAME = "signature.json"
CANARY_NAME = "canary.npz"
SIGNATURE_FORMAT = "edgeloop-signature/1"


def signed_message(manifest_bytes: bytes, model_sha256: str, canary_sha256: str) -> bytes:
    """The bytes an Ed25519 signature covers: the manifest's hash, the model's and the canary's."""
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    return f"{SIGNATURE_FORMAT}\nmanifest {manifest_sha}\nmodel {model_sha256}\ncanary {canary_sha256}\n".encode()


def key_id(public_key_raw: bytes) -> str:
    """A short fingerprint of a raw 32-byte Ed25519 public key, to name it in errors and logs."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def load_public_key(path: Path | str) -> bytes:
    """Read a pinned public key: a file holding the raw key as base64 (what ``cloud keygen`` writes)."""
    try:
        raw = base64.b64decode(Path(path).read_text().strip(), validate=True)
    except (OSError, ValueError) as exc:
        raise UpdateRejected(f"{path}: cannot read the pinned public key ({exc})") from None
    if len(raw) != 32:
        raise UpdateRejected(f"{path}: an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return raw


@dataclass(frozen=True)
class SignatureInfo:
    """What ``signature.json`` holds."""

    key_id: str
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"format": SIGNATURE_FORMAT, "key_id": self.key_id,
                "signature": base64.b64encode(self.signature).decode()}


def parse_signature(data: Any, where: str = SIGNATURE_NAME) -> SignatureInfo:
    if not isinstance(data, dict) or data.get("format") != SIGNATURE_FORMAT:
        raise UpdateRejected(f"{where}: not an {SIGNATURE_FORMAT} signature file")
    try:
        sig = base64.b64decode(str(data["signature"]), validate=True)
        kid = str(data["key_id"])
    except (KeyError, ValueError) as exc:
        raise UpdateRejected(f"{where}: malformed signature ({exc})") from None
    if len(sig) != 64:
        raise UpdateRejected(f"{where}: an Ed25519 signature is 64 bytes, this one is {len(sig)}")
    return SignatureInfo(kid, sig)


def verify_bundle_signature(bundle_dir: Path | str, public_key_raw: bytes) -> None:
    """Check a bundle's files against its signature and the pinned key; raise :class:`UpdateRejected`.

    Checks, in order: the signature file exists and parses, the manifest parses, the
    .tflite and canary hash to what is signed, and the Ed25519 signature is valid for the
    pinned key.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    root = Path(bundle_dir)
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        raise UpdateRejected(f"{root}: unsigned bundle (no {SIGNATURE_NAME})")
    try:
        info = parse_signature(json.loads(sig_path.read_text()), str(sig_path))
    except json.JSONDecodeError as exc:
        raise UpdateRejected(f"{sig_path}: malformed JSON ({exc.msg})") from None
    manifest_bytes = (root / MANIFEST_NAME).read_bytes()
    try:
        manifest = parse_manifest(json.loads(manifest_bytes))
    except (BundleError, json.JSONDecodeError) as exc:
        raise UpdateRejected(f"{root / MANIFEST_NAME}: {exc}") from None
    model_sha = _file_sha256(root / manifest.model_file)
    if model_sha != manifest.sha256:
        raise UpdateRejected(f"{root / manifest.model_file}: sha256 {model_sha[:16]}… is not the manifest's "
                             f"{manifest.sha256[:16]}…")
    canary_sha = _file_sha256(root / CANARY_NAME)
    expected_kid = key_id(public_key_raw)
    if info.key_id != expected_kid:
        raise UpdateRejected(f"{sig_path}: signed by key {info.key_id}, but this device pins key {expected_kid}")
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(
            info.signature, signed_message(manifest_bytes, model_sha, canary_sha))
    except InvalidSignature:
        raise UpdateRejected(f"{sig_path}: the Ed25519 signature does not match the manifest, model and canary "
                             "(tampered bundle)") from None


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise UpdateRejected(f"{path}: cannot read ({exc})") from None

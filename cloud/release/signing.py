"""Ed25519 keys and bundle signatures on the cloud side (the device only verifies).

``edgeloop cloud keygen`` writes ``signing.key`` (PKCS#8 PEM, mode 0600; it never leaves
the cloud) and ``signing.pub`` (the raw 32-byte public key as base64: what a device pins).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.agent.verify_signature import CANARY_NAME, SIGNATURE_NAME, SignatureInfo, key_id, signed_message
from device.errors import EdgeloopError
from device.runtime.bundle import MANIFEST_NAME, read_manifest

PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"


class SigningError(EdgeloopError):
    """A signing key is missing, unreadable or would be overwritten."""


def keygen(out_dir: Path | str, overwrite: bool = False) -> tuple[Path, Path]:
    """Create a new key pair in ``out_dir``; refuses to replace an existing one unless ``overwrite``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    if private_path.exists() and not overwrite:
        raise SigningError(f"{private_path} exists; devices pin its public key, so it is not replaced "
                           "(pass --force to rotate it)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_text(base64.b64encode(public_raw(key)).decode() + "\n")
    return private_path, public_path


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SigningError(f"{path}: cannot read the signing key ({exc}); create one with 'edgeloop cloud keygen'") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def sign_bundle(bundle_dir: Path | str, key: Ed25519PrivateKey) -> Path:
    """Write ``signature.json`` over the bundle's exact manifest bytes, model sha256 and canary sha256."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    canary = root / CANARY_NAME
    if not canary.is_file():
        raise SigningError(f"{root}: no {CANARY_NAME}; a release needs canary inputs for the device's health check")
    message = signed_message((root / MANIFEST_NAME).read_bytes(), manifest.sha256,
                             hashlib.sha256(canary.read_bytes()).hexdigest())
    info = SignatureInfo(key_id(public_raw(key)), key.sign(message))
    path = root / SIGNATURE_NAME
    path.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    return path

"""Ed25519 keys, bundle signatures and release statements on the cloud side (the device only verifies).

Two things are signed, with the same key. ``signature.json`` (``edgeloop-signature/1``, in the
bundle) binds the manifest bytes, the model and the canary: what the files are. A release
statement (``edgeloop-release/1``, served with ``/current``) binds a channel, a sequence number
that only grows on that channel, the version, and the bundle's digest: which files are that
channel's release, and in which order, as TUF's targets metadata does. A device refuses a
statement for another channel, one announced under another version, and one whose sequence
is not above the one it runs (a downgrade, or a freeze on an old release). Bundles signed
before statements existed still verify; their versions need a statement, which
``edgeloop cloud promote VERSION --channel CH`` signs (the migration: re-promote each
channel's current version once).

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

from device.agent.verify_signature import (
    CANARY_NAME,
    SIGNATURE_NAME,
    ReleaseStatement,
    SignatureInfo,
    bundle_digest,
    key_id,
    release_message,
    signed_message,
    valid_channel,
)
from device.errors import EdgeloopError
from device.runtime.bundle import MANIFEST_NAME, MODEL_NAME, read_manifest

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


def sign_release(bundle_dir: Path | str, key: Ed25519PrivateKey, channel: str, sequence: int,
                 version: int) -> ReleaseStatement:
    """Sign the statement "the bundle in ``bundle_dir`` is ``channel``'s ``sequence``-th release, ``version``"."""
    if not valid_channel(channel):
        raise SigningError(f"channel {channel!r}: 1-64 characters of A-Z a-z 0-9 _ . -")
    root = Path(bundle_dir)
    digest = bundle_digest((root / MANIFEST_NAME).read_bytes(), hashlib.sha256((root / MODEL_NAME).read_bytes()).hexdigest(),
                           hashlib.sha256((root / CANARY_NAME).read_bytes()).hexdigest())
    signature = key.sign(release_message(channel, sequence, version, digest))
    return ReleaseStatement(channel, sequence, version, digest, key_id(public_raw(key)), signature)

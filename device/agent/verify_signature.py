"""Ed25519 signatures over a bundle: what is signed, and the device's check of it.

The cloud signs one message that binds the exact ``manifest.json`` bytes, the .tflite's
sha256 and the canary file's sha256; the device pins the public key and refuses any
bundle whose files or signature do not match. Signing lives in :mod:`cloud.release.signing`;
this module only verifies (``cryptography`` is in the device extra).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.errors import BundleError, UpdateRejected
from device.runtime.bundle import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MODEL_NAME,
    Manifest,
    load_json,
    parse_manifest,
    read_regular_file,
)

SIGNATURE_NAME = "signature.json"
CANARY_NAME = "canary.npz"
SIGNATURE_FORMAT = "edgeloop-signature/1"
MAX_SIGNATURE_BYTES = 4096
MAX_FILE_BYTES = 64 << 20  # the most the agent downloads of one file


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


def verify_bundle_signature(bundle_dir: Path | str, public_key_raw: bytes) -> tuple[Manifest, str]:
    """Check a bundle's files against its signature and the pinned key; raise :class:`UpdateRejected`.

    The signature is checked over the raw bytes *before* the manifest is parsed, so nothing an
    attacker wrote is decoded beyond the small, size-capped ``signature.json``. Every file is
    read only if it is a regular file, and at most a bounded size. Returns the (now trusted)
    manifest and the bundle digest that a release statement names (:func:`bundle_digest`).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    root = Path(bundle_dir)
    sig_path = root / SIGNATURE_NAME
    try:
        sig_bytes = read_regular_file(sig_path, MAX_SIGNATURE_BYTES, "signature")
    except FileNotFoundError:
        raise UpdateRejected(f"{root}: unsigned bundle (no {SIGNATURE_NAME})") from None
    except BundleError as exc:
        raise UpdateRejected(str(exc)) from None
    try:
        info = parse_signature(load_json(sig_bytes, str(sig_path), max_depth=4), str(sig_path))
    except BundleError as exc:
        raise UpdateRejected(str(exc)) from None
    expected_kid = key_id(public_key_raw)
    if info.key_id != expected_kid:
        raise UpdateRejected(f"{sig_path}: signed by key {info.key_id}, but this device pins key {expected_kid}")
    manifest_bytes = _read(root / MANIFEST_NAME, MAX_MANIFEST_BYTES)
    model_sha = _file_sha256(root / MODEL_NAME)
    canary_sha = _file_sha256(root / CANARY_NAME)
    message = signed_message(manifest_bytes, model_sha, canary_sha)
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(info.signature, message)
    except InvalidSignature:
        raise UpdateRejected(f"{sig_path}: the Ed25519 signature does not match the manifest, model and canary "
                             f"(tampered bundle{_diagnose(manifest_bytes, model_sha)})") from None
    try:  # signed, so trusted; still parsed defensively (a key compromise must not crash the device either)
        manifest = parse_manifest(load_json(manifest_bytes, str(root / MANIFEST_NAME)))
    except BundleError as exc:
        raise UpdateRejected(f"{root / MANIFEST_NAME}: {exc}") from None
    if manifest.model_file != MODEL_NAME:
        raise UpdateRejected(f"{root / MANIFEST_NAME}: model.file is {manifest.model_file!r}; a release ships "
                             f"{MODEL_NAME}")
    if model_sha != manifest.sha256:
        raise UpdateRejected(f"{root / MODEL_NAME}: sha256 {model_sha[:16]}… is not the manifest's "
                             f"{manifest.sha256[:16]}…")
    return manifest, hashlib.sha256(message).hexdigest()


def _diagnose(manifest_bytes: bytes, model_sha: str) -> str:
    """Why a signature failed, when the untrusted manifest (parsed safely) can say: for the error message only."""
    try:
        claimed = parse_manifest(load_json(manifest_bytes, MANIFEST_NAME)).sha256
    except BundleError:
        return ""
    return "" if claimed == model_sha else f"; the model's sha256 {model_sha[:16]}… is not the manifest's {claimed[:16]}…"


def bundle_digest(manifest_bytes: bytes, model_sha256: str, canary_sha256: str) -> str:
    """The sha256 of a bundle's :func:`signed_message`: what a release statement binds to a version."""
    return hashlib.sha256(signed_message(manifest_bytes, model_sha256, canary_sha256)).hexdigest()


# -- release statements (TUF-style: which bundle is a channel's release, in which order) ------------

RELEASE_FORMAT = "edgeloop-release/1"
MAX_VERSION = 2**53 - 1  # a release version or sequence is an integer JSON can carry exactly
_CHANNEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def valid_channel(channel: str) -> bool:
    """Channel names are 1-64 of ``A-Z a-z 0-9 _ . -`` (they appear in URLs and in signed text)."""
    return isinstance(channel, str) and bool(_CHANNEL.match(channel))


def release_message(channel: str, sequence: int, version: int, bundle: str) -> bytes:
    """The bytes a release statement's Ed25519 signature covers."""
    return (f"{RELEASE_FORMAT}\nchannel {channel}\nsequence {sequence}\nversion {version}\n"
            f"bundle {bundle}\n").encode()


@dataclass(frozen=True)
class ReleaseStatement:
    """The signed claim "``bundle`` is release ``version`` of ``channel``, the ``sequence``-th statement".

    ``sequence`` only grows on a channel (a publish, a promote or a rollback each sign a new
    statement), so a device refuses a replayed older statement (a downgrade or freeze), a
    statement for another channel, and files announced under another version.
    """

    channel: str
    sequence: int
    version: int
    bundle: str  # bundle_digest() of the release's files
    key_id: str
    signature: bytes

    def message(self) -> bytes:
        return release_message(self.channel, self.sequence, self.version, self.bundle)

    def to_json(self) -> dict[str, Any]:
        return {"format": RELEASE_FORMAT, "channel": self.channel, "sequence": self.sequence, "version": self.version,
                "bundle": self.bundle, "key_id": self.key_id, "signature": base64.b64encode(self.signature).decode()}


def parse_statement(data: Any, where: str = "release statement") -> ReleaseStatement:
    """Validate a statement's JSON; raises :class:`UpdateRejected` naming the field."""
    if not isinstance(data, dict) or data.get("format") != RELEASE_FORMAT:
        raise UpdateRejected(f"{where}: missing or not an {RELEASE_FORMAT} statement (unsigned release; "
                             "re-promote it with 'edgeloop cloud promote' to sign one)")
    for name in ("sequence", "version"):
        value = data.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_VERSION:
            raise UpdateRejected(f"{where}: field {name!r} must be an integer in [1, {MAX_VERSION}], got {value!r:.40}")
    channel, bundle, kid = data.get("channel"), data.get("bundle"), data.get("key_id")
    if not valid_channel(channel):
        raise UpdateRejected(f"{where}: field 'channel' is not a channel name: {channel!r:.80}")
    if not isinstance(bundle, str) or not re.fullmatch(r"[0-9a-f]{64}", bundle):
        raise UpdateRejected(f"{where}: field 'bundle' must be 64 lowercase hex digits")
    if not isinstance(kid, str) or len(kid) > 64:
        raise UpdateRejected(f"{where}: field 'key_id' must be a short string")
    try:
        sig = base64.b64decode(str(data.get("signature", ""))[:200], validate=True)
    except ValueError:
        raise UpdateRejected(f"{where}: field 'signature' is not base64") from None
    if len(sig) != 64:
        raise UpdateRejected(f"{where}: an Ed25519 signature is 64 bytes, this one is {len(sig)}")
    return ReleaseStatement(channel, data["sequence"], data["version"], bundle, kid, sig)


def verify_statement(statement: ReleaseStatement, public_key_raw: bytes) -> None:
    """Check a statement's signature against the pinned key; raises :class:`UpdateRejected`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    expected_kid = key_id(public_key_raw)
    if statement.key_id != expected_kid:
        raise UpdateRejected(f"release statement signed by key {statement.key_id}, but this device pins key {expected_kid}")
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(statement.signature, statement.message())
    except InvalidSignature:
        raise UpdateRejected("the release statement's Ed25519 signature does not match its channel, sequence, "
                             "version and bundle (forged or altered)") from None


def _read(path: Path, max_bytes: int) -> bytes:
    try:
        return read_regular_file(path, max_bytes)
    except FileNotFoundError:
        raise UpdateRejected(f"{path}: missing") from None
    except BundleError as exc:
        raise UpdateRejected(str(exc)) from None


def _file_sha256(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    return hashlib.sha256(_read(path, max_bytes)).hexdigest()

"""Ed25519 bundle signatures: a signed bundle verifies; any tampering, a wrong key or no signature is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cloud.release.canary import write_canary
from cloud.release.signing import keygen, load_private_key, sign_bundle
from device.agent.verify_signature import load_public_key, verify_bundle_signature
from device.errors import UpdateRejected
from tests.conftest import SHIPPED


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("keys")
    private, public = keygen(root / "a")
    _, other_public = keygen(root / "b")
    return load_private_key(private), load_public_key(public), load_public_key(other_public)


@pytest.fixture()
def signed(tmp_path: Path, keys) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED / "mnist-cnn-int8", bundle)
    write_canary(bundle, n=4)
    sign_bundle(bundle, keys[0])
    return bundle


def test_signed_bundle_verifies(signed: Path, keys) -> None:
    verify_bundle_signature(signed, keys[1])


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_model_is_rejected(signed: Path, keys) -> None:
    _flip_byte(signed / "model.tflite", 5000)
    with pytest.raises(UpdateRejected, match="sha256"):
        verify_bundle_signature(signed, keys[1])


def test_tampered_model_with_matching_manifest_hash_is_rejected(signed: Path, keys) -> None:
    """An attacker who also rewrites the manifest's sha256 breaks the signature instead."""
    import hashlib

    _flip_byte(signed / "model.tflite", 5000)
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["model"]["sha256"] = hashlib.sha256((signed / "model.tflite").read_bytes()).hexdigest()
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(UpdateRejected, match="signature does not match"):
        verify_bundle_signature(signed, keys[1])


def test_tampered_manifest_is_rejected(signed: Path, keys) -> None:
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["input"]["normalization"]["std"] = 128.0  # valid, but not what was signed
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(UpdateRejected, match="signature does not match"):
        verify_bundle_signature(signed, keys[1])


def test_tampered_canary_is_rejected(signed: Path, keys) -> None:
    _flip_byte(signed / "canary.npz", 200)
    with pytest.raises(UpdateRejected, match="signature does not match"):
        verify_bundle_signature(signed, keys[1])


def test_wrong_key_is_rejected(signed: Path, keys) -> None:
    with pytest.raises(UpdateRejected, match="pins key"):
        verify_bundle_signature(signed, keys[2])


def test_forged_key_id_is_rejected(signed: Path, keys) -> None:
    """A signature from another key that claims the pinned key's id fails the Ed25519 check."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from device.agent.verify_signature import key_id

    sig = json.loads((signed / "signature.json").read_text())
    sign_bundle(signed, Ed25519PrivateKey.generate())
    forged = json.loads((signed / "signature.json").read_text())
    forged["key_id"] = key_id(keys[1])
    assert forged["signature"] != sig["signature"]
    (signed / "signature.json").write_text(json.dumps(forged))
    with pytest.raises(UpdateRejected, match="signature does not match"):
        verify_bundle_signature(signed, keys[1])


def test_unsigned_bundle_is_rejected(signed: Path, keys) -> None:
    (signed / "signature.json").unlink()
    with pytest.raises(UpdateRejected, match="unsigned"):
        verify_bundle_signature(signed, keys[1])


def test_release_statement_binds_channel_sequence_version_and_bundle(signed: Path, keys) -> None:
    """TUF-style release statements (issue 12, item 4): any changed field or another key is refused."""
    from dataclasses import replace

    from cloud.release.signing import sign_release
    from device.agent.verify_signature import parse_statement, verify_statement

    statement = sign_release(signed, keys[0], "stable", 7, 3)
    _, digest = verify_bundle_signature(signed, keys[1])
    assert statement.bundle == digest  # names exactly the files the bundle signature covers
    again = parse_statement(json.loads(json.dumps(statement.to_json())))
    verify_statement(again, keys[1])
    for changed in (replace(again, channel="canary"), replace(again, sequence=8), replace(again, version=99),
                    replace(again, bundle="0" * 64)):
        with pytest.raises(UpdateRejected, match="does not match"):
            verify_statement(changed, keys[1])
    with pytest.raises(UpdateRejected, match="pins key"):
        verify_statement(again, keys[2])
    for bad in (None, {}, {**statement.to_json(), "sequence": 0}, {**statement.to_json(), "version": 2**60},
                {**statement.to_json(), "channel": "a b"}, {**statement.to_json(), "signature": "!!"}):
        with pytest.raises(UpdateRejected):
            parse_statement(bad)

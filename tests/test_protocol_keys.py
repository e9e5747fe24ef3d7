"""Tests of protocol.keys: Ed25519 coordinator key files."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import KeyFormatError
from protocol.keys import (
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    public_key_b64,
    raw_public_key,
)

# RFC 8032, section 7.1, test 1
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b"
    "46bd25bf5f0595bbe24655141438e7a100b")


def test_rfc8032_vector_and_fingerprint() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    assert raw_public_key(key.public_key()) == RFC_PUBLIC
    assert key.sign(b"") == RFC_SIG_EMPTY
    assert public_key_b64(key.public_key()) == base64.b64encode(RFC_PUBLIC).decode()
    assert key_id(key.public_key()) == hashlib.sha256(RFC_PUBLIC).hexdigest()[:16]
    assert key_id(RFC_PUBLIC) == key_id(key.public_key())
    assert len(key_id(RFC_PUBLIC)) == 16


def test_generate_writes_private_0600_and_pub(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "coordinator.key"
    key = generate_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub_text = (tmp_path / "keys" / "coordinator.pub").read_text()
    assert pub_text.endswith("\n") and pub_text.count("\n") == 1
    assert base64.b64decode(pub_text.strip()) == raw_public_key(key.public_key())
    loaded = load_private_key(path)
    assert loaded.private_bytes_raw() == key.private_bytes_raw()


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "c.key"
    generate_signing_key(path)
    before = path.read_bytes()
    with pytest.raises(KeyFormatError, match="refusing to overwrite"):
        generate_signing_key(path)
    assert path.read_bytes() == before
    generate_signing_key(path, overwrite=True)
    assert path.read_bytes() != before


def test_load_public_key_forms(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path / "c.key")
    raw = raw_public_key(key.public_key())
    b64 = base64.b64encode(raw).decode()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "c.pem").write_bytes(pem)
    forms = [
        tmp_path / "c.pub",
        str(tmp_path / "c.pub"),
        b64,
        f"  {b64}\n",
        raw,
        pem,
        pem.decode(),
        tmp_path / "c.pem",
    ]
    for form in forms:
        assert raw_public_key(load_public_key(form)) == raw, form
    assert raw_public_key(load_public_key("c.pub", base_dir=tmp_path)) == raw
    assert raw_public_key(load_public_key(Path("c.pem"), base_dir=tmp_path)) == raw


def test_load_public_key_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFormatError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")
    (tmp_path / "short.pub").write_text(base64.b64encode(b"x" * 31).decode())
    with pytest.raises(KeyFormatError, match="32 bytes"):
        load_public_key(tmp_path / "short.pub")
    (tmp_path / "junk.pub").write_text("not base64 at all!")
    with pytest.raises(KeyFormatError, match="base64"):
        load_public_key(tmp_path / "junk.pub")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ec.pem").write_bytes(ec_pem)
    with pytest.raises(KeyFormatError, match="not an Ed25519"):
        load_public_key(tmp_path / "ec.pem")


def test_load_private_key_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFormatError, match="cannot read"):
        load_private_key(tmp_path / "missing.key")
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "ec.key").write_bytes(ec_key)
    with pytest.raises(KeyFormatError, match="not an Ed25519"):
        load_private_key(tmp_path / "ec.key")


def test_public_key_objects_are_ed25519(tmp_path: Path) -> None:
    generate_signing_key(tmp_path / "c.key")
    assert isinstance(load_public_key(tmp_path / "c.pub"), Ed25519PublicKey)

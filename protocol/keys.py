"""Ed25519 coordinator signing keys.

A coordinator's private key is a PKCS#8 PEM file (mode 0600). Its public key travels as one line
of base64 of the raw 32 bytes (the ``.pub`` file written beside the private key), which is also
the form site policies list under ``trusted_coordinators``. :func:`key_id` is a short fingerprint
for logs, audit trails and error messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import KeyFormatError
from protocol.pki import write_private_file

__all__ = [
    "generate_signing_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_b64",
    "raw_public_key",
]

logger = logging.getLogger(__name__)

_PEM_BEGIN = b"-----BEGIN"


def raw_public_key(pub: Ed25519PublicKey) -> bytes:
    """The raw 32-byte encoding of an Ed25519 public key."""
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(pub: Ed25519PublicKey) -> str:
    """Standard base64 of the raw 32-byte public key (44 characters)."""
    return base64.b64encode(raw_public_key(pub)).decode("ascii")


def key_id(pub: Ed25519PublicKey | bytes) -> str:
    """Fingerprint of a public key: the first 16 hex digits of SHA-256 of its raw bytes.

    ``pub`` may be a key object or its raw 32 bytes (as carried in a signed study).
    """
    raw = pub if isinstance(pub, bytes) else raw_public_key(pub)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_signing_key(path: Path, overwrite: bool = False) -> Ed25519PrivateKey:
    """Create a coordinator signing key: PEM private key at ``path`` (0600) and its ``.pub``.

    The public key is written to ``path.with_suffix('.pub')`` as base64 of the raw key on one
    line.

    Raises
    ------
    KeyFormatError
        If ``path`` or the ``.pub`` file exists and ``overwrite`` is false: replacing a
        coordinator key silently would make every site stop trusting its studies.
    """
    path = Path(path)
    pub_path = path.with_suffix(".pub")
    if pub_path == path:
        raise KeyFormatError(f"{path}: the private key file must not end in .pub")
    if not overwrite:
        for p in (path, pub_path):
            if p.exists():
                raise KeyFormatError(f"{p} already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private_file(path, pem)
    pub_path.write_text(public_key_b64(key.public_key()) + "\n", encoding="ascii")
    logger.info("created signing key %s (key id %s)", path, key_id(key.public_key()))
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file (warns when others may read the file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise KeyFormatError(f"cannot read signing key {path}: {exc}") from exc
    if mode & 0o077:
        logger.warning("signing key %s is readable by others (mode %o); use chmod 600",
                       path, mode)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"{path} is not an Ed25519 private key")
    return key


def _from_raw(raw: bytes, source: str) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise KeyFormatError(f"{source}: an Ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def _from_b64(text: str, source: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"{source}: not base64 of a raw Ed25519 public key") from exc
    return _from_raw(raw, source)


def _from_text(data: bytes, source: str) -> Ed25519PublicKey:
    data = data.strip()
    if data.startswith(_PEM_BEGIN):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFormatError(f"{source}: malformed PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"{source}: not an Ed25519 public key")
        return key
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFormatError(f"{source}: not a base64 or PEM public key") from exc
    return _from_b64(text, source)


def load_public_key(value: str | Path | bytes,
                    base_dir: Path | None = None) -> Ed25519PublicKey:
    """Load a trusted coordinator public key.

    Parameters
    ----------
    value
        A :class:`~pathlib.Path` to a ``.pub`` file (base64 of the raw key, or PEM); a string
        that is either the base64 key itself, PEM text, or a path; or ``bytes`` holding the raw
        32-byte key or PEM. A 44-character string that decodes to 32 bytes is taken as a key,
        anything else as a path.
    base_dir
        Folder that relative paths are resolved against (e.g. the policy file's folder).

    Raises
    ------
    KeyFormatError
        If the key or its file cannot be read or is not an Ed25519 public key.
    """
    if isinstance(value, bytes):
        return _from_raw(value, "public key") if len(value) == 32 else \
            _from_text(value, "public key")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-----BEGIN"):
            return _from_text(text.encode("ascii", "replace"), "public key")
        if len(text) == 44:
            try:
                return _from_b64(text, "public key")
            except KeyFormatError:
                pass
        value = Path(text)
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFormatError(f"cannot read public key {path}: {exc}") from exc
    return _from_text(data, str(path))

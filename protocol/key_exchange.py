"""Signed ephemeral X25519 key announcements for secure aggregation (SecAgg+).

For every attempt of a study each site makes two fresh X25519 key pairs and announces their
public halves, signed with its identity key: the ECDSA P-256 private key of its site
certificate (``key.pem`` of :func:`protocol.pki.issue_site`).

* the **mask key** (``public_key``) derives the pairwise masks with the site's neighbours;
  survivors reveal Shamir shares of it when the site drops out (:mod:`protocol.recovery`);
* the **channel key** (``channel_key``) derives the keys that seal what one site sends another
  through the aggregator (screening counts, shares). It is never shared, so revealing a dropped
  site's mask key does not open its sealed blobs;
* ``self_commit`` is SHA-256 of the site's self-mask seed for the attempt, so a seed
  reconstructed from shares or relayed by the aggregator can be checked.

The signature covers the canonical bytes of ``("heron-sa-v2", study_id, attempt, site_id,
public_key, channel_key, self_commit)`` (see :func:`canonical_bytes`), so an announcement
cannot be moved to another site, study or attempt, nor a key swapped.

Receivers check every announcement with :func:`verify_announcement` before deriving masks.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.errors import PKIError, SecureAggregationError
from protocol.pki import ROLE_SITE, certificate_identity, verify_issued_by

__all__ = [
    "ANNOUNCE_LABEL",
    "EphemeralKeys",
    "KeyAnnouncement",
    "announce",
    "announcement_message",
    "canonical_bytes",
    "self_commitment",
    "verify_announcement",
]

ANNOUNCE_LABEL = "heron-sa-v2"
_X25519_LEN = 32
_BYTES_FIELDS = ("public_key", "channel_key", "self_commit", "certificate_pem", "signature")
_COMMIT_LEN = 32


def canonical_bytes(*fields: str | int | bytes) -> bytes:
    """Encode ``fields`` unambiguously: each as a type tag, a 4-byte length and its bytes.

    Strings are UTF-8, integers signed 8-byte big-endian, bytes as they are.
    """
    out = bytearray()
    for value in fields:
        if isinstance(value, bool) or not isinstance(value, (str, int, bytes)):
            raise TypeError(f"cannot encode {type(value).__name__} canonically")
        if isinstance(value, str):
            tag, data = b"s", value.encode("utf-8")
        elif isinstance(value, int):
            tag, data = b"i", value.to_bytes(8, "big", signed=True)
        else:
            tag, data = b"b", bytes(value)
        out += tag + len(data).to_bytes(4, "big") + data
    return bytes(out)


def announcement_message(site_id: str, study_id: str, attempt: int, public_key: bytes,
                         channel_key: bytes = b"", self_commit: bytes = b"") -> bytes:
    """Return the bytes an announcement's signature covers."""
    return canonical_bytes(ANNOUNCE_LABEL, study_id, attempt, site_id, public_key, channel_key,
                           self_commit)


@dataclass(frozen=True)
class KeyAnnouncement:
    """One site's signed ephemeral X25519 public keys for one attempt of a study."""

    site_id: str
    study_id: str
    attempt: int
    public_key: bytes
    certificate_pem: bytes
    signature: bytes
    channel_key: bytes = b""
    self_commit: bytes = b""

    def to_dict(self) -> dict[str, str | int]:
        """Return a JSON-ready dict (bytes fields in standard base64)."""
        d: dict[str, str | int] = {"site_id": self.site_id, "study_id": self.study_id,
                                   "attempt": self.attempt}
        for name in _BYTES_FIELDS:
            d[name] = base64.b64encode(getattr(self, name)).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: object) -> KeyAnnouncement:
        """Parse :meth:`to_dict` output; raise :class:`SecureAggregationError` if malformed."""
        expected = {"site_id", "study_id", "attempt", *_BYTES_FIELDS}
        if not isinstance(d, dict) or set(d) != expected:
            raise SecureAggregationError(f"a key announcement needs exactly the fields "
                                         f"{sorted(expected)}")
        for name in ("site_id", "study_id"):
            if not isinstance(d[name], str):
                raise SecureAggregationError(f"announcement field {name!r} must be a string")
        attempt = d["attempt"]
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise SecureAggregationError("announcement field 'attempt' must be an integer")
        raw: dict[str, bytes] = {}
        for name in _BYTES_FIELDS:
            try:
                raw[name] = base64.b64decode(d[name], validate=True)
            except (TypeError, ValueError, binascii.Error) as exc:
                raise SecureAggregationError(f"announcement field {name!r} is not "
                                             f"base64: {exc}") from exc
        return cls(site_id=d["site_id"], study_id=d["study_id"], attempt=attempt, **raw)


def _check_attempt(attempt: int) -> None:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise SecureAggregationError(f"attempt must be a non-negative integer, got {attempt!r}")


@dataclass(frozen=True)
class EphemeralKeys:
    """A site's secrets for one attempt (kept in memory only, erased when it ends)."""

    mask: X25519PrivateKey
    channel: X25519PrivateKey
    self_seed: bytes


def self_commitment(seed: bytes) -> bytes:
    """SHA-256 of a self-mask seed (what an announcement commits to)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical_bytes("heron-sa-v2 self", seed))
    return digest.finalize()


def announce(site_id: str, study_id: str, attempt: int,
             identity_key: PrivateKeyTypes,
             certificate_pem: bytes) -> tuple[EphemeralKeys, KeyAnnouncement]:
    """Make fresh mask and channel key pairs, a self-mask seed, and their announcement signed
    by ``identity_key``.

    Returns
    -------
    tuple
        The ephemeral secrets (keep them in memory for this attempt only) and the
        announcement to publish.

    Raises
    ------
    SecureAggregationError
        If ``identity_key`` is not a P-256 key or does not belong to ``certificate_pem``.
    """
    _check_attempt(attempt)
    if not isinstance(identity_key, ec.EllipticCurvePrivateKey) or not isinstance(
            identity_key.curve, ec.SECP256R1):
        raise SecureAggregationError("the identity key must be an ECDSA P-256 private key")
    cert = _load_cert(certificate_pem, site_id)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (identity_key.public_key().public_bytes(serialization.Encoding.DER, spki)
            != cert.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise SecureAggregationError(f"site {site_id!r}: the identity key does not belong to "
                                     f"the certificate")
    keys = EphemeralKeys(X25519PrivateKey.generate(), X25519PrivateKey.generate(),
                         os.urandom(32))
    public = keys.mask.public_key().public_bytes_raw()
    channel = keys.channel.public_key().public_bytes_raw()
    commit = self_commitment(keys.self_seed)
    message = announcement_message(site_id, study_id, attempt, public, channel, commit)
    signature = identity_key.sign(message, ec.ECDSA(hashes.SHA256()))
    return keys, KeyAnnouncement(site_id=site_id, study_id=study_id, attempt=attempt,
                                 public_key=public, certificate_pem=bytes(certificate_pem),
                                 signature=signature, channel_key=channel, self_commit=commit)


def _load_cert(pem: bytes, site_id: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except (TypeError, ValueError) as exc:
        raise SecureAggregationError(f"announcement of {site_id!r}: unreadable certificate: "
                                     f"{exc}") from exc


def verify_announcement(a: KeyAnnouncement, ca_pem: bytes, study_id: str, attempt: int,
                        issued: set[bytes] | None = None) -> None:
    """Check that ``a`` is a genuine announcement of ``a.site_id`` for this study and attempt.

    ``issued``: digests of (certificate, CA) pairs whose issuer signature was already checked
    by this caller; the chain check is skipped for them (validity period, subject and the
    announcement's signature are always checked) and a pair checked now is added.

    Raises
    ------
    SecureAggregationError
        If the announcement is for another study or attempt (replayed), its certificate was not
        issued by the network CA or is outside its validity period, the certificate subject is
        not ``CN=<site_id>, OU=site``, the public key is not 32 bytes, or the signature does
        not verify (forged or tampered with).
    """
    who = f"announcement of {a.site_id!r}"
    if a.study_id != study_id or a.attempt != attempt:
        raise SecureAggregationError(
            f"{who} is replayed: made for study {a.study_id!r} attempt {a.attempt}, expected "
            f"study {study_id!r} attempt {attempt}")
    cert = _load_cert(a.certificate_pem, a.site_id)
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
    except (TypeError, ValueError) as exc:
        raise SecureAggregationError(f"unreadable network CA certificate: {exc}") from exc
    pair = hashlib.sha256(canonical_bytes(a.certificate_pem, ca_pem)).digest()
    if issued is None or pair not in issued:
        try:
            verify_issued_by(cert, ca_cert)
        except PKIError as exc:
            raise SecureAggregationError(f"{who}: certificate not issued by the network CA "
                                         f"({exc})") from exc
        if issued is not None:
            issued.add(pair)
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SecureAggregationError(f"{who}: certificate is not valid now")
    common_name, role = certificate_identity(cert)
    if common_name != a.site_id or role != ROLE_SITE:
        raise SecureAggregationError(
            f"{who}: certificate subject CN={common_name!r}, OU={role!r} does not match "
            f"CN={a.site_id!r}, OU={ROLE_SITE!r}")
    if len(a.public_key) != _X25519_LEN or len(a.channel_key) != _X25519_LEN:
        raise SecureAggregationError(f"{who}: X25519 public key must be {_X25519_LEN} bytes")
    if len(a.self_commit) != _COMMIT_LEN:
        raise SecureAggregationError(f"{who}: self-mask commitment must be {_COMMIT_LEN} bytes")
    if a.channel_key == a.public_key:
        raise SecureAggregationError(f"{who}: the channel key must differ from the mask key")
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
        raise SecureAggregationError(f"{who}: certificate key is not ECDSA P-256")
    message = announcement_message(a.site_id, a.study_id, a.attempt, a.public_key,
                                   a.channel_key, a.self_commit)
    try:
        pub.verify(a.signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SecureAggregationError(f"{who}: bad signature (forged or tampered with)") from exc

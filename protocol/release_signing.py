"""Releases signed by the site that made them, so other sites can rely on relayed releases.

A Cox model's sites check each Newton step themselves from the previous round's releases of
every participant, which the aggregator relays (:mod:`protocol.rounds`). So that the aggregator
cannot invent or alter them, a site signs each such release (after masking, what it sends) with
the ECDSA P-256 key of its site certificate, as it signs its key announcements
(:mod:`protocol.key_exchange`). The signature covers the canonical bytes of
``("heron-release-v1", study_id, attempt, round, site_id, certificate, analysis, kind, error,
metadata without the signature, every vector by name with its dtype, shape and values)``
(:func:`release_message`) and travels in the release's metadata entry :data:`SIGNED` with the
signer's certificate, which receivers check against the network CA
(:func:`verify_release`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from protocol.codec import Release, json_default
from protocol.errors import PKIError, ProtocolError
from protocol.key_exchange import canonical_bytes
from protocol.pki import ROLE_SITE, Credentials, certificate_identity, verify_issued_by

__all__ = ["RELEASE_LABEL", "SIGNED", "ReleaseSigner", "SignedBy", "release_digest",
           "release_message", "sign_release", "verify_release"]

RELEASE_LABEL = "heron-release-v1"
SIGNED = "signed"
"""Metadata key of a release's signature block."""


def _canonical_metadata(metadata: Any) -> str:
    meta = {k: v for k, v in dict(metadata).items() if k != SIGNED}
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), default=json_default,
                      allow_nan=False)


def release_message(release: Release, study_id: str, attempt: int, round: int,
                    site_id: str, certificate_pem: bytes) -> bytes:
    """The bytes a release's signature covers (its signature block left out)."""
    fields: list[str | int | bytes] = [
        RELEASE_LABEL, study_id, int(attempt), int(round), site_id, bytes(certificate_pem),
        release.analysis, release.kind, release.error, _canonical_metadata(release.metadata)]
    for name in sorted(release.vectors):
        arr = np.asarray(release.vectors[name])
        if arr.dtype.kind in "biu":
            kind, data = "i8", arr.astype("<i8").tobytes()
        elif arr.dtype.kind == "f":
            kind, data = "f8", arr.astype("<f8").tobytes()
        else:
            raise ProtocolError(f"vector {name!r} of dtype {arr.dtype} cannot be signed")
        fields += [name, kind, json.dumps(list(arr.shape)), data]
    return canonical_bytes(*fields)


def release_digest(release: Release, study_id: str, attempt: int, round: int, site_id: str,
                   certificate_pem: bytes) -> str:
    """SHA-256 of :func:`release_message` (what a site remembers of its own release)."""
    return hashlib.sha256(release_message(release, study_id, attempt, round, site_id,
                                          certificate_pem)).hexdigest()


@dataclass(frozen=True)
class ReleaseSigner:
    """A site's signing identity: its certificate key and certificate, and the network CA."""

    site_id: str
    key: ec.EllipticCurvePrivateKey
    certificate_pem: bytes
    ca_pem: bytes

    @classmethod
    def from_credentials(cls, site_id: str, credentials: Credentials) -> ReleaseSigner:
        """Load the site's certificate key (ECDSA P-256), certificate and CA.

        Raises
        ------
        ProtocolError
            When the key is not an ECDSA P-256 key.
        """
        key = load_pem_private_key(credentials.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve,
                                                                             ec.SECP256R1):
            raise ProtocolError("the site certificate key must be an ECDSA P-256 key")
        return cls(site_id, key, credentials.cert.read_bytes(), credentials.ca.read_bytes())


def sign_release(release: Release, signer: ReleaseSigner, study_id: str, attempt: int,
                 round: int) -> tuple[Release, str]:
    """``release`` with its signature block, and its digest (:func:`release_digest`)."""
    message = release_message(release, study_id, attempt, round, signer.site_id,
                              signer.certificate_pem)
    signature = signer.key.sign(message, ec.ECDSA(hashes.SHA256()))
    block = {"site": signer.site_id, "study": study_id, "attempt": int(attempt),
             "round": int(round), "certificate": signer.certificate_pem.decode("ascii"),
             "signature": base64.b64encode(signature).decode("ascii")}
    meta = {k: v for k, v in dict(release.metadata).items() if k != SIGNED}
    meta[SIGNED] = block
    signed = Release(release.analysis, release.kind, release.vectors, meta, release.error)
    return signed, hashlib.sha256(message).hexdigest()


@dataclass(frozen=True)
class SignedBy:
    """Who signed a release, for which attempt and round, and the release's digest."""

    site: str
    attempt: int
    round: int
    digest: str


def verify_release(release: Release, ca_pem: bytes, study_id: str) -> SignedBy:
    """Check a relayed release's signature: made by the site its certificate names, for this
    study, with a certificate of the network CA valid now.

    Raises
    ------
    ProtocolError
        When the release is unsigned, signed for another study, its certificate is not a site
        certificate of the network CA (or not valid now), or the signature does not verify
        (forged, or the release was altered).
    """
    block = release.metadata.get(SIGNED)
    fields = {"site": str, "study": str, "attempt": int, "round": int, "certificate": str,
              "signature": str}
    if not isinstance(block, dict) or set(block) != set(fields) or not all(
            isinstance(block[k], t) and not isinstance(block[k], bool)
            for k, t in fields.items()):
        raise ProtocolError(f"release {release.analysis!r} is not signed by a site")
    who = f"release {release.analysis!r} of {block['site']!r}"
    if block["study"] != study_id:
        raise ProtocolError(f"{who} was signed for study {block['study']!r}")
    try:
        cert = x509.load_pem_x509_certificate(block["certificate"].encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_pem)
        verify_issued_by(cert, ca)
        signature = base64.b64decode(block["signature"], validate=True)
    except (ValueError, TypeError, UnicodeError, binascii.Error, PKIError) as exc:
        raise ProtocolError(f"{who}: certificate or signature unusable ({exc})") from None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ProtocolError(f"{who}: certificate is not valid now")
    if certificate_identity(cert) != (block["site"], ROLE_SITE):
        raise ProtocolError(f"{who}: the certificate is not that site's")
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
        raise ProtocolError(f"{who}: certificate key is not ECDSA P-256")
    message = release_message(release, study_id, block["attempt"], block["round"],
                              block["site"], block["certificate"].encode("ascii"))
    try:
        pub.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ProtocolError(f"{who}: bad signature (forged or altered)") from None
    return SignedBy(block["site"], block["attempt"], block["round"],
                    hashlib.sha256(message).hexdigest())

"""Signing and verifying studies with Ed25519 over canonical JSON.

The coordinator signs :func:`canonical_json` of :func:`protocol.study.study_to_dict`. A node
accepts a study only when the signature verifies, the signer's key is trusted, and the signed
bytes are canonical JSON of a valid study (:func:`verify_study`). Expiry is the node's check,
helped by :func:`is_expired`.

The file written by ``heron study sign`` is a JSON envelope::

    {"study": {...study document...}, "signature": "<base64>", "public_key": "<base64>"}

Its ``study`` object re-encodes with :func:`canonical_json` to exactly the signed bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import SignatureError, StudyFormatError
from protocol.keys import key_id, raw_public_key
from protocol.study import Study, study_from_dict, study_to_dict
from protocol.v1 import common_pb2

__all__ = [
    "SignedStudy",
    "canonical_json",
    "is_expired",
    "sign_study",
    "verify_study",
]

logger = logging.getLogger(__name__)


def _check_canonicalisable(obj: object, path: str) -> None:
    if obj is None or isinstance(obj, bool | int | str):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{path or 'value'}: NaN and infinity have no JSON form")
        return
    if isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            _check_canonicalisable(item, f"{path}[{i}]")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{path or 'object'}: key {key!r} is not a string")
            _check_canonicalisable(value, f"{path}.{key}" if path else key)
        return
    raise TypeError(f"{path or 'value'}: {type(obj).__name__} is not a JSON type")


def canonical_json(obj: object) -> bytes:
    """The canonical byte form of a JSON value, the exact bytes that are signed.

    Objects have their keys sorted (by code point), no whitespace is emitted (separators
    ``,`` and ``:``), non-ASCII characters appear as themselves (no ``\\u`` escapes), and the
    result is UTF-8. Floats use Python's shortest round-trip ``repr``; studies hold none.

    Raises
    ------
    ValueError
        For NaN or infinity, or strings that are not valid Unicode (lone surrogates).
    TypeError
        For object keys that are not strings or values that are not JSON types.
    """
    _check_canonicalisable(obj, "")
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in a signed study")


@dataclass(frozen=True)
class SignedStudy:
    """A study as signed: canonical JSON bytes, Ed25519 signature, raw signer public key."""

    canonical_study: bytes
    signature: bytes
    public_key: bytes

    @property
    def signer_key_id(self) -> str:
        """:func:`protocol.keys.key_id` of the embedded (not necessarily trusted) public key."""
        return key_id(self.public_key)

    def to_proto(self) -> common_pb2.SignedStudy:
        """The wire message ``heron.v1.SignedStudy``."""
        return common_pb2.SignedStudy(canonical_study=self.canonical_study,
                                      signature=self.signature, public_key=self.public_key)

    @classmethod
    def from_proto(cls, pb: common_pb2.SignedStudy) -> SignedStudy:
        """Read the wire message (nothing is verified)."""
        return cls(canonical_study=bytes(pb.canonical_study), signature=bytes(pb.signature),
                   public_key=bytes(pb.public_key))

    def study_document(self) -> dict[str, Any]:
        """The signed study as a JSON object, UNVERIFIED (use :func:`verify_study` to trust it).

        Raises
        ------
        StudyFormatError
            If the bytes are not a UTF-8 JSON object.
        """
        try:
            obj = json.loads(self.canonical_study.decode("utf-8"),
                             parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise StudyFormatError(f"signed study is not UTF-8 JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise StudyFormatError("signed study is not a JSON object")
        return obj

    def to_file(self, path: Path) -> None:
        """Write the JSON envelope ``{"study", "signature", "public_key"}`` to ``path``."""
        envelope = {
            "study": self.study_document(),
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
        }
        Path(path).write_text(json.dumps(envelope, indent=2, ensure_ascii=False) + "\n",
                              encoding="utf-8")

    @classmethod
    def from_file(cls, path: Path) -> SignedStudy:
        """Read an envelope written by :meth:`to_file` (nothing is verified).

        Raises
        ------
        StudyFormatError
            If the file is not such an envelope.
        """
        try:
            env = json.loads(Path(path).read_text(encoding="utf-8"),
                             parse_constant=_reject_constant)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise StudyFormatError(f"cannot read signed study {path}: {exc}") from exc
        if not isinstance(env, dict) or set(env) != {"study", "signature", "public_key"}:
            raise StudyFormatError(f"{path}: not a signed study envelope "
                                   "(keys study, signature, public_key)")
        fields: dict[str, bytes] = {}
        for name in ("signature", "public_key"):
            if not isinstance(env[name], str):
                raise StudyFormatError(f"{path}: {name} must be a base64 string")
            try:
                fields[name] = base64.b64decode(env[name], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise StudyFormatError(f"{path}: {name} is not valid base64") from exc
        try:
            canonical = canonical_json(env["study"])
        except (TypeError, ValueError) as exc:
            raise StudyFormatError(f"{path}: study is not plain JSON: {exc}") from exc
        return cls(canonical_study=canonical, **fields)


def sign_study(study: Study, key: Ed25519PrivateKey) -> SignedStudy:
    """Sign ``canonical_json(study_to_dict(study))`` with the coordinator's key."""
    canonical = canonical_json(study_to_dict(study))
    signed = SignedStudy(canonical_study=canonical, signature=key.sign(canonical),
                         public_key=raw_public_key(key.public_key()))
    logger.info("signed study %s with key %s", study.id, signed.signer_key_id)
    return signed


def verify_study(signed: SignedStudy, trusted: Iterable[Ed25519PublicKey]) -> Study:
    """Verify a signed study and return it parsed.

    The signature is checked against the embedded public key first, then that key must be
    one of ``trusted``. Expiry is not checked (see :func:`is_expired`).

    Raises
    ------
    SignatureError
        ``"study is not signed"`` (empty signature), ``"study signature does not verify
        (tampered or corrupted)"``, or ``"study signed by an untrusted key <key_id>"``.
    StudyFormatError
        If the verified bytes are not canonical JSON of a valid study.
    """
    if not signed.signature:
        raise SignatureError("study is not signed")
    try:
        if len(signed.public_key) != 32:
            raise ValueError("public key is not 32 bytes")
        Ed25519PublicKey.from_public_bytes(signed.public_key).verify(signed.signature,
                                                                     signed.canonical_study)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("study signature does not verify (tampered or corrupted)") from exc
    if signed.public_key not in {raw_public_key(k) for k in trusted}:
        raise SignatureError(f"study signed by an untrusted key {signed.signer_key_id}")
    obj = signed.study_document()
    try:
        canonical = canonical_json(obj)
    except (TypeError, ValueError) as exc:  # pragma: no cover - json.loads yields JSON types
        raise StudyFormatError(f"signed study is not plain JSON: {exc}") from exc
    if canonical != signed.canonical_study:
        raise StudyFormatError("signed study is not in canonical JSON form")
    return study_from_dict(obj)


def is_expired(study: Study, today: dt.date) -> bool:
    """True when ``today`` is after the study's ``expires`` date (the last valid day)."""
    return today > study.expires

"""heron's wire protocol: study format, signing, keys, PKI, mutual TLS and the release codec.

Names below are re-exported lazily (on first attribute access), so ``import protocol`` stays
cheap and importing one submodule does not pull in gRPC, numpy or X.509 code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # errors
    "ProtocolError": "errors",
    "StudyFormatError": "errors",
    "SignatureError": "errors",
    "PKIError": "errors",
    "KeyFormatError": "errors",
    "ReleaseFormatError": "errors",
    # study
    "Analysis": "study",
    "Cohort": "study",
    "Privacy": "study",
    "Study": "study",
    "parse_study": "study",
    "study_from_dict": "study",
    "study_to_dict": "study",
    "load_study_yaml": "study_yaml",
    # keys
    "generate_signing_key": "keys",
    "key_id": "keys",
    "load_private_key": "keys",
    "load_public_key": "keys",
    "public_key_b64": "keys",
    "raw_public_key": "keys",
    # signing
    "SignedStudy": "signing",
    "canonical_json": "signing",
    "is_expired": "signing",
    "sign_study": "signing",
    "verify_study": "signing",
    # pki
    "Credentials": "credentials",
    "init_ca": "pki",
    "issue_aggregator": "pki",
    "issue_coordinator": "pki",
    "issue_site": "pki",
    "load_credentials": "pki",
    # tls
    "PeerIdentity": "tls",
    "channel_credentials": "tls",
    "channel_options": "tls",
    "peer_identity": "tls",
    "secure_channel": "tls",
    "server_credentials": "tls",
    "server_options": "tls",
    # codec
    "Release": "codec",
    "decode_release": "codec",
    "encode_release": "codec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'protocol' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"protocol.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

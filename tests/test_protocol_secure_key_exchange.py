"""Tests of protocol.key_exchange: signed X25519 announcements with real network certificates."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol.errors import ProtocolError, SecureAggregationError
from protocol.key_exchange import (
    KeyAnnouncement,
    announce,
    announcement_message,
    canonical_bytes,
    verify_announcement,
)
from protocol.pki import Credentials, init_ca, issue_coordinator, issue_site

STUDY = "study-1"


def _identity(creds: Credentials) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(creds.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Credentials]:
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca")
    other = init_ca(root / "other-ca", name="rogue CA")
    return {
        "ca": ca,
        "alpha": issue_site(root / "ca", "alpha", root / "alpha"),
        "beta": issue_site(root / "ca", "beta", root / "beta"),
        "rogue": issue_site(root / "other-ca", "alpha", root / "rogue"),
        "coord": issue_coordinator(root / "ca", "alpha", root / "coord"),
        "other": other,
    }


def _announce(creds: Credentials, site: str = "alpha", study: str = STUDY,
              attempt: int = 0) -> KeyAnnouncement:
    return announce(site, study, attempt, _identity(creds), creds.cert.read_bytes())[1]


def _ca(network: dict) -> bytes:
    return network["ca"].cert.read_bytes()


def test_genuine_announcement_verifies_and_round_trips_through_json(network: dict) -> None:
    private, a = announce("alpha", STUDY, 2, _identity(network["alpha"]),
                          network["alpha"].cert.read_bytes())
    assert a.public_key == private.mask.public_key().public_bytes_raw()
    assert a.channel_key == private.channel.public_key().public_bytes_raw()
    assert len(a.public_key) == 32
    verify_announcement(a, _ca(network), STUDY, 2)
    back = KeyAnnouncement.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a
    verify_announcement(back, _ca(network), STUDY, 2)


def test_each_announcement_has_a_fresh_key(network: dict) -> None:
    first, second = _announce(network["alpha"]), _announce(network["alpha"])
    assert first.public_key != second.public_key


def test_signature_binds_label_study_attempt_site_and_key(network: dict) -> None:
    a = _announce(network["alpha"])
    cert = network["alpha"].cert.read_bytes()
    pub = x509.load_pem_x509_certificate(cert).public_key()
    message = announcement_message("alpha", STUDY, 0, a.public_key, a.channel_key,
                                   a.self_commit)
    assert message.startswith(canonical_bytes("heron-sa-v2"))
    pub.verify(a.signature, message, ec.ECDSA(hashes.SHA256()))


def test_forged_signature_is_rejected(network: dict) -> None:
    a = _announce(network["alpha"])
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = dataclasses.replace(a, signature=forger.sign(
        announcement_message("alpha", STUDY, 0, a.public_key), ec.ECDSA(hashes.SHA256())))
    with pytest.raises(SecureAggregationError, match="bad signature"):
        verify_announcement(forged, _ca(network), STUDY, 0)


def test_swapped_public_key_is_rejected(network: dict) -> None:
    a, b = _announce(network["alpha"]), _announce(network["alpha"])
    with pytest.raises(SecureAggregationError, match="bad signature"):
        verify_announcement(dataclasses.replace(a, public_key=b.public_key), _ca(network),
                            STUDY, 0)


def test_certificate_of_another_ca_is_rejected(network: dict) -> None:
    a = _announce(network["rogue"])
    verify_announcement(a, network["other"].cert.read_bytes(), STUDY, 0)
    with pytest.raises(SecureAggregationError, match="not issued by the network CA"):
        verify_announcement(a, _ca(network), STUDY, 0)


def test_site_claiming_another_site_id_is_rejected(network: dict) -> None:
    a = _announce(network["beta"], site="alpha")
    with pytest.raises(SecureAggregationError, match=r"CN='beta'.*does not match"):
        verify_announcement(a, _ca(network), STUDY, 0)


def test_non_site_role_is_rejected(network: dict) -> None:
    a = _announce(network["coord"], site="alpha")
    with pytest.raises(SecureAggregationError, match="OU='coordinator'"):
        verify_announcement(a, _ca(network), STUDY, 0)


@pytest.mark.parametrize(("study", "attempt"), [("study-2", 0), (STUDY, 1)])
def test_replayed_announcement_is_rejected(network: dict, study: str, attempt: int) -> None:
    a = _announce(network["alpha"], study=study, attempt=attempt)
    verify_announcement(a, _ca(network), study, attempt)
    with pytest.raises(SecureAggregationError, match="replayed"):
        verify_announcement(a, _ca(network), STUDY, 0)


def test_relabelled_replay_fails_the_signature(network: dict) -> None:
    a = _announce(network["alpha"], attempt=1)
    with pytest.raises(SecureAggregationError, match="bad signature"):
        verify_announcement(dataclasses.replace(a, attempt=0), _ca(network), STUDY, 0)


def test_identity_key_must_belong_to_the_certificate(network: dict) -> None:
    with pytest.raises(SecureAggregationError, match="does not belong"):
        announce("alpha", STUDY, 0, _identity(network["beta"]),
                 network["alpha"].cert.read_bytes())
    with pytest.raises(SecureAggregationError, match="attempt"):
        announce("alpha", STUDY, -1, _identity(network["alpha"]),
                 network["alpha"].cert.read_bytes())


def test_short_public_key_is_rejected(network: dict) -> None:
    a = _announce(network["alpha"])
    with pytest.raises(SecureAggregationError, match="32 bytes"):
        verify_announcement(dataclasses.replace(a, public_key=a.public_key[:31]),
                            _ca(network), STUDY, 0)


@pytest.mark.parametrize("change", [
    {"attempt": "0"}, {"attempt": True}, {"site_id": 3}, {"signature": "not base64!"},
    {"extra": 1},
])
def test_malformed_dict_is_rejected(network: dict, change: dict) -> None:
    d = _announce(network["alpha"]).to_dict() | change
    with pytest.raises(SecureAggregationError):
        KeyAnnouncement.from_dict(d)
    assert issubclass(SecureAggregationError, ProtocolError)


def test_canonical_bytes_is_unambiguous() -> None:
    assert canonical_bytes("ab", "c") != canonical_bytes("a", "bc")
    assert canonical_bytes("1") != canonical_bytes(1)
    assert canonical_bytes(b"x") != canonical_bytes("x")
    with pytest.raises(TypeError):
        canonical_bytes(True)

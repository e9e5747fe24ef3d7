"""Tests of protocol.pki: a real CA and real leaf certificates, checked with ``cryptography``."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.errors import PKIError
from protocol.pki import (
    Credentials,
    init_ca,
    issue_aggregator,
    issue_coordinator,
    issue_site,
    load_credentials,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    return cert.subject.get_attributes_for_oid(oid)[0].value


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Verify the ECDSA signature of ``cert`` with the CA public key (raises if invalid)."""
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(cert.signature, cert.tbs_certificate_bytes,
               ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.issuer == ca.subject


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ca")
    init_ca(d)
    return d


def test_ca_files_and_modes(ca_dir: Path) -> None:
    assert _mode(ca_dir / "ca.key") == 0o600
    ca = _cert(ca_dir / "ca.pem")
    assert _attr(ca, NameOID.COMMON_NAME) == "heron network CA"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    _signed_by(ca, ca)


def test_init_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(PKIError, match="refusing to overwrite"):
        init_ca(ca_dir)
    assert (ca_dir / "ca.key").read_bytes() == before


def test_site_certificate(ca_dir: Path, tmp_path: Path) -> None:
    creds = issue_site(ca_dir, "se-uppsala", tmp_path / "site")
    assert creds == Credentials(tmp_path / "site" / "cert.pem", tmp_path / "site" / "key.pem",
                                tmp_path / "site" / "ca.pem")
    assert _mode(creds.key) == 0o600
    assert creds.ca.read_bytes() == (ca_dir / "ca.pem").read_bytes()
    cert = _cert(creds.cert)
    assert _attr(cert, NameOID.COMMON_NAME) == "se-uppsala"
    assert _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == "site"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    _signed_by(cert, _cert(ca_dir / "ca.pem"))
    assert load_credentials(tmp_path / "site") == creds


def test_coordinator_certificate(ca_dir: Path, tmp_path: Path) -> None:
    creds = issue_coordinator(ca_dir, "eu-coordinating-centre", tmp_path / "coord")
    cert = _cert(creds.cert)
    assert _attr(cert, NameOID.COMMON_NAME) == "eu-coordinating-centre"
    assert _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == "coordinator"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _mode(creds.key) == 0o600
    _signed_by(cert, _cert(ca_dir / "ca.pem"))


def test_aggregator_certificate(ca_dir: Path, tmp_path: Path) -> None:
    creds = issue_aggregator(ca_dir, tmp_path / "agg", hosts=("localhost", "127.0.0.1",
                                                                 "agg.example.org"))
    cert = _cert(creds.cert)
    assert _attr(cert, NameOID.COMMON_NAME) == "aggregator"
    assert _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == "aggregator"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "agg.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    _signed_by(cert, _cert(ca_dir / "ca.pem"))


@pytest.mark.parametrize("bad", ["", "a", "Se-uppsala", "-site", "se_uppsala", "x" * 64,
                                 "se uppsala", "se/../x"])
def test_invalid_site_ids(ca_dir: Path, tmp_path: Path, bad: str) -> None:
    with pytest.raises(PKIError, match="invalid site id"):
        issue_site(ca_dir, bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_valid_edge_site_ids(ca_dir: Path, tmp_path: Path) -> None:
    for good in ("ab", "0-", "a" * 63):
        cert = _cert(issue_site(ca_dir, good, tmp_path / good[:8]).cert)
        assert _attr(cert, NameOID.COMMON_NAME) == good


def test_load_credentials_rejects_mismatches(ca_dir: Path, tmp_path: Path) -> None:
    a = issue_site(ca_dir, "site-a", tmp_path / "a")
    b = issue_site(ca_dir, "site-b", tmp_path / "b")
    b.key.write_bytes(a.key.read_bytes())
    with pytest.raises(PKIError, match="does not belong"):
        load_credentials(tmp_path / "b")
    other = tmp_path / "other-ca"
    init_ca(other, name="another CA")
    issue_site(other, "site-c", tmp_path / "c")
    (tmp_path / "c" / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    with pytest.raises(PKIError, match="not issued by"):
        load_credentials(tmp_path / "c")
    with pytest.raises(PKIError, match="missing"):
        load_credentials(tmp_path / "nothing")


def test_certificate_of_a_namesake_ca_fails_with_a_reason(ca_dir: Path, tmp_path: Path) -> None:
    # Same CA name, other key: the signature check fails with an empty InvalidSignature.
    init_ca(tmp_path / "namesake")
    issue_site(tmp_path / "namesake", "site-d", tmp_path / "d")
    (tmp_path / "d" / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    with pytest.raises(PKIError, match=r"not issued by .*: bad signature$"):
        load_credentials(tmp_path / "d")

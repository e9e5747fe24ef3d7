"""The network's X.509 public key infrastructure (ECDSA P-256, made with ``cryptography``).

One certificate authority signs three kinds of leaf certificates. The subject of each leaf holds
its identity: ``CN`` is the site id, coordinator name or ``aggregator``, ``OU`` is its role
(:data:`ROLE_SITE`, :data:`ROLE_COORDINATOR`, :data:`ROLE_AGGREGATOR`). Site and coordinator
certificates are client certificates (``clientAuth``); the aggregator certificate is a server
certificate (``serverAuth``) whose subject alternative names list the hosts clients dial.

Every issued credential is a folder holding ``cert.pem``, ``key.pem`` (mode 0600) and ``ca.pem``.
P-256 keys are generated in about a millisecond, so tests and the demo may issue freely.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.credentials import Credentials, credential_files
from protocol.errors import PKIError

__all__ = [
    "AGGREGATOR_NAME",
    "ROLES",
    "ROLE_AGGREGATOR",
    "ROLE_COORDINATOR",
    "ROLE_SITE",
    "SITE_ID_PATTERN",
    "Credentials",
    "certificate_identity",
    "init_ca",
    "issue_aggregator",
    "issue_coordinator",
    "issue_site",
    "load_certificate",
    "load_credentials",
    "validate_site_id",
    "verify_issued_by",
    "write_private_file",
]

logger = logging.getLogger(__name__)

ROLE_SITE = "site"
ROLE_COORDINATOR = "coordinator"
ROLE_AGGREGATOR = "aggregator"
ROLES = (ROLE_SITE, ROLE_COORDINATOR, ROLE_AGGREGATOR)
AGGREGATOR_NAME = "aggregator"
SITE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
LEAF_DAYS = 825
_CLOCK_SKEW = dt.timedelta(minutes=5)


def write_private_file(path: Path, data: bytes) -> None:
    """Write secret ``data`` to ``path`` with mode 0600, never readable by others meanwhile.

    The data goes to a 0600 temporary file beside ``path``, synced to disk, that is then
    renamed over it: a crash leaves the old file or the new one, never a half-written one.
    """
    _atomic_write(Path(path), data, 0o600)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_public(path: Path, data: bytes) -> None:
    _atomic_write(path, data, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def validate_site_id(site_id: str) -> str:
    """Return ``site_id`` if it matches ``[a-z0-9][a-z0-9-]{1,62}``, else raise PKIError."""
    if not isinstance(site_id, str) or not SITE_ID_PATTERN.match(site_id):
        raise PKIError(f"invalid site id {site_id!r}: must match [a-z0-9][a-z0-9-]{{1,62}}")
    return site_id


def _validate_name(name: str, what: str) -> str:
    if (not isinstance(name, str) or not name.strip() or len(name) > 64
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)):
        raise PKIError(f"invalid {what} {name!r}: 1 to 64 printable characters")
    return name


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate; raise :class:`PKIError` if it is missing or malformed."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read certificate {path}: {exc}") from exc


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PKIError(f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{path} is not an ECDSA private key")
    return key


def certificate_identity(cert: x509.Certificate) -> tuple[str, str]:
    """Return ``(common_name, role)`` from a certificate subject (CN and OU; "" if absent)."""

    def first(oid: x509.ObjectIdentifier) -> str:
        attrs = cert.subject.get_attributes_for_oid(oid)
        value = attrs[0].value if attrs else ""
        return value.decode() if isinstance(value, bytes) else str(value)

    return first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATIONAL_UNIT_NAME)


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise :class:`PKIError` unless ``cert`` carries a valid signature of ``ca_cert``."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        reason = str(exc) or "bad signature"  # InvalidSignature carries no message
        raise PKIError(f"certificate {cert.subject.rfc4514_string()} was not issued by "
                       f"{ca_cert.subject.rfc4514_string()}: {reason}") from exc


def init_ca(ca_dir: Path, name: str = "heron network CA", days: int = 3650) -> Credentials:
    """Create the network CA: ``ca_dir/ca.pem`` and ``ca_dir/ca.key`` (mode 0600).

    Raises
    ------
    PKIError
        If ``ca.pem`` or ``ca.key`` already exists (a CA is never silently replaced).
    """
    ca_dir = Path(ca_dir)
    cert_path, key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
    for p in (cert_path, key_path):
        if p.exists():
            raise PKIError(f"{p} already exists; refusing to overwrite the network CA")
    _validate_name(name, "CA name")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "heron")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_file(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    logger.info("created network CA %r in %s", name, ca_dir)
    return Credentials(cert=cert_path, key=key_path, ca=cert_path)


def _issue(ca_dir: Path, out_dir: Path, common_name: str, role: str, *,
           server: bool, hosts: Iterable[str] = (), days: int = LEAF_DAYS) -> Credentials:
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert = load_certificate(ca_dir / "ca.pem")
    ca_key = _load_ec_key(ca_dir / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "heron"),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    creds = Credentials(cert=out_dir / "cert.pem", key=out_dir / "key.pem", ca=out_dir / "ca.pem")
    write_private_file(creds.key, _key_pem(key))
    _write_public(creds.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write_public(creds.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    logger.info("issued %s certificate for %r in %s", role, common_name, out_dir)
    return creds


def issue_site(ca_dir: Path, site_id: str, out_dir: Path, days: int = LEAF_DAYS) -> Credentials:
    """Issue a site's client certificate (CN = ``site_id``, OU = ``site``) into ``out_dir``.

    Existing credentials in ``out_dir`` are replaced.
    """
    return _issue(ca_dir, out_dir, validate_site_id(site_id), ROLE_SITE, server=False, days=days)


def issue_coordinator(ca_dir: Path, name: str, out_dir: Path,
                      days: int = LEAF_DAYS) -> Credentials:
    """Issue a coordinator's client certificate (CN = ``name``, OU = ``coordinator``)."""
    return _issue(ca_dir, out_dir, _validate_name(name, "coordinator name"), ROLE_COORDINATOR,
                  server=False, days=days)


def issue_aggregator(ca_dir: Path, out_dir: Path,
                     hosts: Iterable[str] = ("localhost", "127.0.0.1"),
                     days: int = LEAF_DAYS) -> Credentials:
    """Issue the aggregator's server certificate (CN = ``aggregator``, OU = ``aggregator``).

    ``hosts`` become subject alternative names (IP addresses as IP entries, the rest as DNS);
    clients must dial one of them, since gRPC checks the server name against these entries.
    """
    hosts = tuple(hosts)
    if not hosts:
        raise PKIError("the aggregator certificate needs at least one host name")
    for h in hosts:
        _validate_name(h, "host")
    return _issue(ca_dir, out_dir, AGGREGATOR_NAME, ROLE_AGGREGATOR, server=True, hosts=hosts,
                  days=days)


def load_credentials(directory: Path) -> Credentials:
    """Return the credentials in ``directory`` after checking they are complete and consistent.

    Raises
    ------
    PKIError
        If a file is missing or malformed, the key does not belong to the certificate, or the
        certificate was not issued by ``ca.pem``.
    """
    creds = credential_files(directory)
    cert, ca_cert = load_certificate(creds.cert), load_certificate(creds.ca)
    key = _load_ec_key(creds.key)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            != cert.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise PKIError(f"{creds.key} does not belong to {creds.cert}")
    verify_issued_by(cert, ca_cert)
    return creds

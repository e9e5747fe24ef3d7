"""Where a party's PEM credentials live, without parsing them.

:class:`Credentials` names the three files of one party (certificate, private key, CA
certificate). This module imports no X.509 code, so a command that only opens a channel
(``heron study status``) starts without loading ``cryptography.x509``: gRPC reads the PEM bytes
itself, and :func:`protocol.pki.load_credentials` does the full check (key matches
certificate, certificate issued by the CA) where a clear error matters more than start-up time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.errors import PKIError

__all__ = ["Credentials", "credential_files"]


@dataclass(frozen=True)
class Credentials:
    """Paths of one party's PEM credentials: its certificate, private key and the CA certificate.

    For a CA made by :func:`protocol.pki.init_ca`, ``cert`` and ``ca`` are both ``ca.pem`` and
    ``key`` is ``ca.key``.
    """

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return the PEM bytes ``(cert, key, ca)``; raise :class:`PKIError` if unreadable."""
        try:
            return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()
        except OSError as exc:
            raise PKIError(f"cannot read credentials: {exc}") from exc


def credential_files(directory: Path) -> Credentials:
    """Return the credentials in ``directory`` (cert.pem, key.pem, ca.pem), checking only that
    the three files exist.

    Raises
    ------
    PKIError
        If a file is missing.
    """
    directory = Path(directory)
    creds = Credentials(cert=directory / "cert.pem", key=directory / "key.pem",
                        ca=directory / "ca.pem")
    for p in (creds.cert, creds.key, creds.ca):
        if not p.is_file():
            raise PKIError(f"missing credential file {p}")
    return creds

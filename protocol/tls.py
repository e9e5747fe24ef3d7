"""Mutual TLS for gRPC: server and channel credentials and the authenticated peer identity.

The aggregator serves with :func:`server_credentials`, which requires every client to present a
certificate chaining to the network CA (``ca.pem``). Nodes and coordinators dial with
:func:`channel_credentials` (or :func:`secure_channel`). The server identifies the caller with
:func:`peer_identity`, which reads CN and OU from the certificate gRPC authenticated.

The host in the dialled target must match a subject alternative name of the aggregator
certificate (by default ``localhost`` and ``127.0.0.1``, see :func:`protocol.pki.issue_aggregator`):
dial ``localhost:PORT`` or ``127.0.0.1:PORT``, or pass ``target_name_override`` to
:func:`channel_options` when dialling another address.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import grpc

from protocol.credentials import Credentials
from protocol.errors import PKIError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "GrpcOption",
    "PeerIdentity",
    "aio_secure_channel",
    "channel_credentials",
    "channel_options",
    "identity_from_pem",
    "peer_identity",
    "secure_channel",
    "server_credentials",
    "server_options",
]

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

GrpcOption: TypeAlias = tuple[str, int | str]
"""One gRPC channel or server option: its name and an integer or string value."""


class _HasAuthContext(Protocol):
    def auth_context(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end: certificate CN (site id, coordinator name, ``aggregator``)
    and OU (role: ``site``, ``coordinator`` or ``aggregator``)."""

    common_name: str
    role: str


def server_credentials(creds: Credentials) -> grpc.ServerCredentials:
    """Server credentials that demand a client certificate signed by ``creds.ca``."""
    cert, key, ca = creds.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=True)


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials:
    """Channel credentials presenting ``creds.cert`` and trusting only ``creds.ca``."""
    cert, key, ca = creds.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def channel_options(keepalive_s: int = 30, keepalive_timeout_s: int = 10,
                    target_name_override: str | None = None) -> list[GrpcOption]:
    """gRPC client options: keepalive pings (also while idle) and 64 MiB messages.

    Parameters
    ----------
    keepalive_s
        Seconds between keepalive pings; a dead aggregator is noticed after about
        ``keepalive_s + keepalive_timeout_s``.
    keepalive_timeout_s
        Seconds to wait for a ping acknowledgement before the connection is dropped.
    target_name_override
        Name to check against the server certificate instead of the dialled host.
    """
    opts: list[GrpcOption] = [
        ("grpc.keepalive_time_ms", keepalive_s * 1000),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_s * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if target_name_override:
        opts.append(("grpc.ssl_target_name_override", target_name_override))
    return opts


def server_options(min_ping_interval_s: int = 10) -> list[GrpcOption]:
    """gRPC server options accepting the clients' keepalive pings and 64 MiB messages.

    ``min_ping_interval_s`` must not exceed the clients' ``keepalive_s``, otherwise the server
    closes their connections for pinging too often.
    """
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_interval_s * 1000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", min_ping_interval_s * 1000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def secure_channel(target: str, creds: Credentials,
                   options: list[GrpcOption] | None = None) -> grpc.Channel:
    """Open a mutual-TLS channel to ``target`` (``host:port``; host must match the server SAN)."""
    return grpc.secure_channel(target, channel_credentials(creds),
                               options=channel_options() if options is None else options)


def aio_secure_channel(target: str, creds: Credentials,
                       options: list[GrpcOption] | None = None) -> grpc.aio.Channel:
    """The asyncio variant of :func:`secure_channel`."""
    return grpc.aio.secure_channel(target, channel_credentials(creds),
                                   options=channel_options() if options is None else options)


def identity_from_pem(pem: bytes) -> PeerIdentity:
    """Read CN and OU of a PEM certificate into a :class:`PeerIdentity`."""
    from cryptography import x509  # servers only: a client opening a channel skips X.509 code

    from protocol.pki import certificate_identity

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PKIError(f"peer certificate is not valid PEM: {exc}") from exc
    cn, role = certificate_identity(cert)
    return PeerIdentity(common_name=cn, role=role)


def peer_identity(context: _HasAuthContext) -> PeerIdentity:
    """Identity of the authenticated peer of a call (sync or asyncio ``ServicerContext``).

    The certificate was verified against the CA by gRPC during the handshake, so its CN and OU
    can be trusted; ``OU`` is the role the CA issued.

    Raises
    ------
    PKIError
        If the call did not come over mutual TLS with a client certificate.
    """
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise PKIError("the peer presented no client certificate")
    identity = identity_from_pem(pems[0])
    names = auth.get("x509_common_name") or []
    if names and names[0].decode(errors="replace") != identity.common_name:
        raise PKIError("peer common name does not match its certificate")
    if not identity.common_name or not identity.role:
        raise PKIError("peer certificate lacks a common name or role (OU)")
    return identity

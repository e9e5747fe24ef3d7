"""Who is calling: the verified certificate of a gRPC peer, checked against the role a service
needs (sites for the node link, coordinators for the coordinator API)."""

from __future__ import annotations

from typing import Any

import grpc

from aggregator.errors import PermissionDenied
from protocol.errors import ProtocolError
from protocol.tls import PeerIdentity, peer_identity

__all__ = ["require_role"]


def require_role(context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any], role: str,
                 purpose: str) -> PeerIdentity:
    """The caller's identity when its certificate carries ``role``.

    Raises
    ------
    PermissionDenied
        Without a valid client certificate, or with another role (``purpose`` says what the
        role is needed for).
    """
    try:
        identity = peer_identity(context)
    except ProtocolError as exc:
        raise PermissionDenied(f"no valid client certificate: {exc}") from exc
    if identity.role != role:
        raise PermissionDenied(f"{identity.common_name!r} has role {identity.role!r}; "
                               f"only {purpose}")
    return identity

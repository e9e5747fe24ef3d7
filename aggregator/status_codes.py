"""The one table mapping aggregator errors to gRPC status codes."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from aggregator.errors import (
    AggregatorError,
    DuplicateStudy,
    PermissionDenied,
    ProtocolViolation,
    Rejected,
    UnknownStudy,
)

__all__ = ["STATUS_BY_ERROR", "abort", "status_for"]

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[AggregatorError], grpc.StatusCode] = {
    UnknownStudy: grpc.StatusCode.NOT_FOUND,
    DuplicateStudy: grpc.StatusCode.ALREADY_EXISTS,
    Rejected: grpc.StatusCode.INVALID_ARGUMENT,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ProtocolViolation: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for an error: its own class or nearest base in the table, else INTERNAL."""
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: AggregatorError) -> NoReturn:
    """End the call with the status of ``exc`` and its message (raises, as gRPC does)."""
    code = status_for(exc)
    logger.info("call ended with %s: %s", code.name, exc)
    await context.abort(code, str(exc))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises

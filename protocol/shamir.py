"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

A secret ``s`` (read as a 256-bit integer) is the constant term of a random polynomial of
degree ``t - 1``; holder ``x`` (1, 2, ...) gets ``f(x)``. Any ``t`` shares give ``s`` back by
Lagrange interpolation at 0; fewer than ``t`` are uniformly distributed whatever the secret, so
they reveal nothing about it. Coefficients come from :func:`secrets.randbelow`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from protocol.errors import SecureAggregationError

__all__ = ["PRIME", "SHARE_BYTES", "reconstruct", "share_from_bytes", "share_to_bytes", "split"]

PRIME = 2**521 - 1
SHARE_BYTES = 66
_SECRET_BYTES = 32


def split(secret: bytes, holders: Sequence[int], t: int) -> dict[int, int]:
    """Shares of ``secret`` for holder indices ``holders`` (distinct, >= 1); ``t`` of them
    reconstruct it.

    Raises
    ------
    SecureAggregationError
        For a secret that is not 32 bytes, bad holder indices or a threshold outside
        ``1..len(holders)``.
    """
    if len(secret) != _SECRET_BYTES:
        raise SecureAggregationError("a shared secret is 32 bytes")
    if len(set(holders)) != len(holders) or any(x < 1 for x in holders):
        raise SecureAggregationError("share holders need distinct positive indices")
    if not 1 <= t <= len(holders):
        raise SecureAggregationError(f"threshold {t} outside 1..{len(holders)}")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    out = {}
    for x in holders:
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        out[x] = y
    return out


def reconstruct(shares: Mapping[int, int], t: int) -> bytes:
    """The secret from at least ``t`` shares (holder index -> share).

    Raises
    ------
    SecureAggregationError
        With fewer than ``t`` shares, or when the shares do not interpolate to a 32-byte
        secret (some are wrong).
    """
    if len(shares) < t:
        raise SecureAggregationError(f"{len(shares)} shares, fewer than the threshold {t}")
    points = sorted(shares.items())[:t]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * _SECRET_BYTES):
        raise SecureAggregationError("the shares do not give a secret (some are wrong)")
    return secret.to_bytes(_SECRET_BYTES, "big")


def share_to_bytes(share: int) -> bytes:
    """A share as 66 big-endian bytes."""
    return share.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Inverse of :func:`share_to_bytes`."""
    if len(data) != SHARE_BYTES:
        raise SecureAggregationError(f"a share is {SHARE_BYTES} bytes")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise SecureAggregationError("a share is outside the field")
    return value

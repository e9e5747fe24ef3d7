"""Two-limb fixed-point encoding of float64 values for exact sums modulo 2^64.

A real ``x`` becomes the exact integer ``V = round(x * 2^40)`` (:data:`FIXED_POINT_BITS`
fractional bits, ties to even), split into two int64 limbs::

    lo = V mod 2^32            in [0, 2^32)
    hi = floor(V / 2^32)       two's complement int64

Summed over ``n <= 2^31`` sites the ``lo`` limbs stay below ``2^63`` and the ``hi`` limbs are
exact while ``|sum| < 2^63``, so neither wraps even though masks are added modulo 2^64. The
decoded total is ``(hi_sum * 2^32 + lo_sum) / 2^40`` computed with Python integers and one
correctly rounded division.

Error bound: each site's rounding is at most ``2^-41``, so
``|decoded - exact sum| <= n_sites * 2^-41`` plus the float64 rounding of the result
(half an ulp). The representable range is ``|sum| < 2^55``; :func:`encode_reals` takes the
number of sites and rejects any ``|x| >= 2^54 / n_sites``, so a sum can never leave the range.
Non-finite values are rejected.

The float arithmetic below is exact: scaling by powers of two is exact for these magnitudes,
``rint`` of a float is a float, ``floor(V / 2^32)`` fits int64 for ``|V| < 2^94``, and
``V - hi * 2^32`` holds only bits already present in ``V``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocol.errors import SecureAggregationError

__all__ = [
    "FIXED_POINT_BITS",
    "LIMB_BITS",
    "decode_reals",
    "decode_wide",
    "encode_reals",
    "encode_wide",
    "error_bound",
    "max_abs_real",
]

FIXED_POINT_BITS = 40
LIMB_BITS = 32
_SUM_BITS = 54  # per-site limit: |x| < 2^54 / n_sites keeps |sum| < 2^54 < 2^55
_MAX_SITES = 2**31


def max_abs_real(n_sites: int) -> float:
    """Return the largest magnitude (exclusive) one of ``n_sites`` sites may encode."""
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or not 1 <= n_sites <= _MAX_SITES:
        raise SecureAggregationError(f"n_sites must be in 1..2^31, got {n_sites!r}")
    return float(2**_SUM_BITS) / n_sites


def error_bound(
    n_sites: int, total: float | NDArray[np.float64]
) -> float | NDArray[np.float64]:
    """Return the documented bound on ``|decoded - exact sum|`` for a decoded ``total``.

    ``n_sites * 2^-41`` (one fixed-point rounding per site) plus half an ulp of ``total`` (the
    final float64 rounding).
    """
    max_abs_real(n_sites)
    return n_sites * 2.0 ** -(FIXED_POINT_BITS + 1) + np.spacing(np.abs(total)) / 2


def encode_reals(
    values: ArrayLike, n_sites: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Encode float values as ``(hi, lo)`` int64 limbs of the same shape.

    Raises
    ------
    SecureAggregationError
        For a non-finite value or one with ``|x| >= 2^54 / n_sites``.
    """
    x = np.asarray(values, dtype=np.float64)
    limit = max_abs_real(n_sites)
    if not np.all(np.isfinite(x)):
        raise SecureAggregationError("cannot encode NaN or infinite values in fixed point")
    if x.size and float(np.max(np.abs(x))) >= limit:
        raise SecureAggregationError(f"value {float(np.max(np.abs(x)))!r} is out of the "
                                     f"fixed-point range (|x| < {limit!r} for {n_sites} sites)")
    scaled = np.rint(np.ldexp(x, FIXED_POINT_BITS))
    hi_f = np.floor(np.ldexp(scaled, -LIMB_BITS))
    lo_f = scaled - np.ldexp(hi_f, LIMB_BITS)
    return hi_f.astype(np.int64), lo_f.astype(np.int64)


def decode_reals(hi_sum: ArrayLike, lo_sum: ArrayLike) -> NDArray[np.float64]:
    """Decode summed limbs to float64: ``(hi_sum * 2^32 + lo_sum) / 2^40``, one rounding."""
    hi = np.asarray(hi_sum, dtype=np.int64)
    lo = np.asarray(lo_sum, dtype=np.int64)
    if hi.shape != lo.shape:
        raise SecureAggregationError(f"limb shapes differ: {hi.shape} and {lo.shape}")
    scale = 1 << FIXED_POINT_BITS
    flat: Sequence[float] = [((int(h) << LIMB_BITS) + int(lo_)) / scale
                             for h, lo_ in zip(hi.ravel().tolist(), lo.ravel().tolist(),
                                               strict=True)]
    return np.array(flat, dtype=np.float64).reshape(hi.shape)


def encode_wide(values: ArrayLike, n_sites: int) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Encode float values as one 96-bit integer each, ``V = hi * 2^32 + lo`` modulo 2^96:
    ``(hi, lo)`` uint64 arrays with ``lo < 2^32`` (the limbs of :func:`encode_reals`, read
    modulo 2^64). Same checks as :func:`encode_reals`."""
    hi, lo = encode_reals(values, n_sites)
    return hi.ravel().view(np.uint64), lo.ravel().view(np.uint64)


def decode_wide(hi_sum: NDArray[np.uint64], lo_sum: NDArray[np.uint64]) -> NDArray[np.float64]:
    """Decode summed 96-bit values (``lo_sum < 2^32`` after carrying): the high word is read as
    two's complement, ``(hi * 2^32 + lo) / 2^40`` with one correctly rounded division."""
    return decode_reals(np.asarray(hi_sum, dtype=np.uint64).view(np.int64),
                        np.asarray(lo_sum, dtype=np.uint64).view(np.int64))

"""Secure aggregation of analysis releases with pairwise masks (Bonawitz et al., CCS 2017).

The aggregator sees only masked vectors and their exact sum. There is no dropout recovery
(no secret sharing of mask seeds): the network is a set of known institutions, so a round in
which a participant is missing is restarted as a new attempt with fresh keys.

Protocol, per attempt of a study:

1. Each site calls :func:`~protocol.key_exchange.announce` and publishes the signed
   :class:`~protocol.key_exchange.KeyAnnouncement`.
2. Each site checks every participant's announcement with
   :func:`~protocol.key_exchange.verify_announcement` and builds a
   :class:`~protocol.masking.PairwiseMasker`.
3. Each site releases :func:`mask_release` of its plain release; the aggregator calls
   :func:`unmask_sum` on the masked releases of all participants.

Encodings of a release's vectors (all masked modulo 2^64):

* integers: an int64 vector ``K`` is masked as is and travels as ``"i:K"``; the decoded sum is
  the exact sum modulo 2^64 (exact for counts).
* reals: a float64 vector ``K`` is encoded in fixed point with
  :data:`~protocol.fixed_point.FIXED_POINT_BITS` = 40 fractional bits as two int64 limbs
  (see :mod:`protocol.fixed_point`), masked and sent as ``"h:K"`` (high limb) and ``"l:K"``
  (low limb). The decoded sum is within ``n_sites * 2^-41`` of the exact sum, plus the float64
  rounding of the result; each site's values must satisfy ``|x| < 2^54 / n_sites`` (so
  ``|sum| < 2^55`` always holds), and NaN or infinities are rejected.

Masks are derived per ``(round, key)`` with key ``canonical_bytes(analysis, kind, name)``
(hex), so two analyses sharing a round never share a mask. Metadata travels unmasked, as is:
the caller ensures it holds nothing site-specific.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from protocol.codec import Release
from protocol.errors import SecureAggregationError
from protocol.fixed_point import FIXED_POINT_BITS, decode_reals, encode_reals
from protocol.key_exchange import (
    KeyAnnouncement,
    announce,
    canonical_bytes,
    verify_announcement,
)
from protocol.masking import PairwiseMasker, sum_masked

__all__ = [
    "FIXED_POINT_BITS",
    "HIGH_PREFIX",
    "INT_PREFIX",
    "LOW_PREFIX",
    "KeyAnnouncement",
    "PairwiseMasker",
    "announce",
    "mask_release",
    "sum_masked",
    "unmask_sum",
    "verify_announcement",
]

INT_PREFIX = "i:"
HIGH_PREFIX = "h:"
LOW_PREFIX = "l:"


def _mask_key(release: Release, name: str) -> str:
    return canonical_bytes(release.analysis, release.kind, name).hex()


def mask_release(release: Release, masker: PairwiseMasker, round: int) -> Release:
    """Return ``release`` with every vector encoded and masked for ``round``.

    Raises
    ------
    SecureAggregationError
        For an error release, a vector that is neither integer nor float, or a real value
        that is non-finite or outside the fixed-point range.
    """
    if release.error:
        raise SecureAggregationError(f"{release.analysis}: an error release cannot be masked")
    n_sites = len(masker.participants)
    out: dict[str, NDArray[np.int64]] = {}
    for key, value in release.vectors.items():
        arr = np.asarray(value)
        if arr.dtype.kind in "biu":
            name = INT_PREFIX + key
            out[name] = masker.mask(round, _mask_key(release, name), arr)
        elif arr.dtype.kind == "f":
            try:
                hi, lo = encode_reals(arr, n_sites)
            except SecureAggregationError as exc:
                raise SecureAggregationError(f"{release.analysis}: vector {key!r}: "
                                             f"{exc}") from exc
            for prefix, limb in ((HIGH_PREFIX, hi), (LOW_PREFIX, lo)):
                name = prefix + key
                out[name] = masker.mask(round, _mask_key(release, name), limb)
        else:
            raise SecureAggregationError(f"{release.analysis}: vector {key!r} has dtype "
                                         f"{arr.dtype}, neither integer nor float")
    return Release(analysis=release.analysis, kind=release.kind, vectors=out,
                   metadata=dict(release.metadata))


def _check_matching(releases: Sequence[Release]) -> None:
    first = releases[0]
    for r in releases:
        if r.error:
            raise SecureAggregationError(f"{r.analysis}: a masked round cannot include an "
                                         f"error release ({r.error})")
        if (r.analysis, r.kind) != (first.analysis, first.kind):
            raise SecureAggregationError(f"masked releases of different analyses: "
                                         f"{first.analysis}/{first.kind} and "
                                         f"{r.analysis}/{r.kind}")
        if set(r.vectors) != set(first.vectors):
            raise SecureAggregationError(f"{first.analysis}: masked releases have different "
                                         f"vector keys")
        for key, arr in r.vectors.items():
            a, b = np.asarray(arr), np.asarray(first.vectors[key])
            if a.dtype != np.int64:
                raise SecureAggregationError(f"{first.analysis}: masked vector {key!r} is "
                                             f"{a.dtype}, not int64")
            if a.shape != b.shape:
                raise SecureAggregationError(f"{first.analysis}: masked vector {key!r} has "
                                             f"shapes {b.shape} and {a.shape}")


def unmask_sum(releases: Sequence[Release]) -> Release:
    """Sum the masked releases of ALL participants of a round and decode the total.

    Masks cancel only when every participant's release is included; with one missing the
    result is meaningless (the caller must know the round's participants). Integer vectors come
    back as int64 exact sums, real vectors as float64 decoded sums, under their original keys.
    The metadata is that of the first release.

    Raises
    ------
    SecureAggregationError
        If there are no releases, one is an error release, or they differ in analysis, kind,
        vector keys, dtype or shape, or a key is not a masked key (``i:``, or a ``h:``/``l:``
        pair).
    """
    releases = list(releases)
    if not releases:
        raise SecureAggregationError("no masked releases to sum")
    _check_matching(releases)
    first = releases[0]
    sums = {key: sum_masked(r.vectors[key] for r in releases) for key in first.vectors}
    out: dict[str, NDArray[np.int64] | NDArray[np.float64]] = {}
    for name in sorted(sums):
        prefix, key = name[:2], name[2:]
        if not key or prefix not in (INT_PREFIX, HIGH_PREFIX, LOW_PREFIX):
            raise SecureAggregationError(f"{first.analysis}: {name!r} is not a masked key")
        partner = {HIGH_PREFIX: LOW_PREFIX, LOW_PREFIX: HIGH_PREFIX}.get(prefix)
        if partner and partner + key not in sums:
            raise SecureAggregationError(f"{first.analysis}: {name!r} has no matching limb "
                                         f"{partner + key!r}")
        if prefix == LOW_PREFIX:
            continue
        if key in out:
            raise SecureAggregationError(f"{first.analysis}: vector {key!r} is both an "
                                         f"integer and a real vector")
        out[key] = (sums[name] if prefix == INT_PREFIX
                    else decode_reals(sums[name], sums[LOW_PREFIX + key]))
    return Release(analysis=first.analysis, kind=first.kind, vectors=out,
                   metadata=dict(first.metadata))

"""Secure aggregation of analysis releases: SecAgg+ masks, packed fixed-width vectors.

The aggregator sees only masked vectors and exact sums. Protocol, per attempt of a study:

1. Each site calls :func:`~protocol.key_exchange.announce` and publishes the signed
   :class:`~protocol.key_exchange.KeyAnnouncement` (mask key, channel key, self-mask
   commitment).
2. Each site checks every participant's announcement with
   :func:`~protocol.key_exchange.verify_announcement` and builds a
   :class:`~protocol.masking.PairwiseMasker` (its neighbours come from
   :mod:`protocol.neighbours`); in the screening round it also sends its neighbours Shamir
   shares of its mask key and self-mask seed (:mod:`protocol.recovery`).
3. Each site releases :func:`mask_release` of its plain release. The first analysis round of
   an attempt carries self masks as well; the aggregator removes them (and the masks of any
   site that dropped out) with the secrets the survivors reveal (:class:`Revealed`) and calls
   :func:`unmask_sum`.

Wire layout of a masked release (every value fixed-width little-endian, never a varint):

* integers: an int64 vector ``K`` is masked modulo 2^64 and travels as ``"i:K"`` (8 bytes a
  value); the decoded sum is the exact sum modulo 2^64 (exact for counts).
* reals: a float64 vector ``K`` is encoded in fixed point with
  :data:`~protocol.fixed_point.FIXED_POINT_BITS` = 40 fractional bits as one 96-bit integer
  (:mod:`protocol.fixed_point`), masked modulo 2^96 and packed 12 bytes a value (low 32 bits,
  then high 64 bits) into the int64 words of ``"r:K"``; its shape is in the metadata entry
  :data:`SECURE`. The decoded sum is within ``n_sites * 2^-41`` of the exact sum, plus the
  float64 rounding of the result; each site's values must satisfy ``|x| < 2^54 / n_sites``,
  and NaN or infinities are rejected. (Two int64 limbs took 16 bytes a value.)

The metadata entry :data:`SECURE` names the study, attempt and round the masks belong to and
whether the round carries self masks. Other metadata travels unmasked, as is: the caller
ensures it holds nothing site-specific.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from protocol.codec import Release
from protocol.errors import SecureAggregationError
from protocol.fixed_point import FIXED_POINT_BITS, decode_wide, encode_wide
from protocol.key_exchange import (
    KeyAnnouncement,
    announce,
    self_commitment,
    verify_announcement,
)
from protocol.masking import (
    Layout,
    PairwiseMasker,
    add_stream,
    as_uint64,
    exchange,
    normalise,
    pair_key,
    round_stream,
    self_key,
    sum_masked,
    words,
)
from protocol.neighbours import NeighbourGraph, graph_seed

__all__ = [
    "FIXED_POINT_BITS",
    "INT_PREFIX",
    "REAL_PREFIX",
    "SECURE",
    "KeyAnnouncement",
    "PairwiseMasker",
    "Revealed",
    "add_masked",
    "announce",
    "mask_release",
    "remember",
    "sum_masked",
    "unmask_sum",
    "verify_announcement",
]

INT_PREFIX = "i:"
REAL_PREFIX = "r:"
SECURE = "secure"
"""Metadata entry of a masked release: ``{"study", "attempt", "round", "self", "shapes"}``."""
_PACKED = np.dtype([("lo", "<u4"), ("hi", "<u8")])  # 12 bytes, no padding


def _pack(hi: NDArray[np.uint64], lo: NDArray[np.uint64]) -> NDArray[np.int64]:
    rec = np.empty(hi.size, dtype=_PACKED)
    rec["hi"], rec["lo"] = hi, lo
    raw = rec.tobytes()
    raw += bytes(-len(raw) % 8)
    return np.frombuffer(raw, dtype="<i8").astype(np.int64)


def _unpack(words_: NDArray[Any], n: int) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    raw = np.ascontiguousarray(words_, dtype="<i8").tobytes()
    if len(raw) != 8 * ((12 * n + 7) // 8):
        raise SecureAggregationError("a packed real vector has the wrong length")
    rec = np.frombuffer(raw[:12 * n], dtype=_PACKED)
    return rec["hi"].astype(np.uint64), rec["lo"].astype(np.uint64)


def mask_release(release: Release, masker: PairwiseMasker, round: int,
                 self_mask: bool = False) -> Release:
    """Return ``release`` with every vector encoded, masked for ``round`` and packed.

    Raises
    ------
    SecureAggregationError
        For an error release, a vector that is neither integer nor float, or a real value
        that is non-finite or outside the fixed-point range.
    """
    if release.error:
        raise SecureAggregationError(f"{release.analysis}: an error release cannot be masked")
    n_sites = len(masker.participants)
    entries: list[tuple[str, str, int]] = []
    parts: dict[str, list[NDArray[np.uint64]]] = {}
    shapes: dict[str, list[int]] = {}
    for key, value in release.vectors.items():
        arr = np.asarray(value)
        if arr.dtype.kind in "biu":
            entries.append((INT_PREFIX + key, "i", arr.size))
            parts[INT_PREFIX + key] = [as_uint64(arr).ravel()]
            shapes[INT_PREFIX + key] = list(arr.shape)
        elif arr.dtype.kind == "f":
            try:
                hi, lo = encode_wide(arr, n_sites)
            except SecureAggregationError as exc:
                raise SecureAggregationError(f"{release.analysis}: vector {key!r}: "
                                             f"{exc}") from exc
            entries.append((REAL_PREFIX + key, "r", arr.size))
            parts[REAL_PREFIX + key] = [hi.ravel(), lo.ravel()]
            shapes[REAL_PREFIX + key] = list(arr.shape)
        else:
            raise SecureAggregationError(f"{release.analysis}: vector {key!r} has dtype "
                                         f"{arr.dtype}, neither integer nor float")
    layout: Layout = tuple(sorted(entries))
    flat = np.concatenate([p for name, _, _ in layout for p in parts[name]]) if layout \
        else np.zeros(0, dtype=np.uint64)
    masked = masker.mask_words(round, _bound(release, layout), flat.astype(np.uint64),
                               self_mask)
    out: dict[str, NDArray[np.int64]] = {}
    at = 0
    for name, kind, n in layout:
        if kind == "i":
            out[name] = masked[at:at + n].view(np.int64).reshape(shapes[name])
            at += n
        else:
            out[name] = _pack(masked[at:at + n], masked[at + n:at + 2 * n])
            at += 2 * n
    meta = dict(release.metadata)
    meta[SECURE] = {"study": masker.study_id, "attempt": masker.attempt, "round": int(round),
                    "self": bool(self_mask), "shapes": shapes, "site": masker.site_id}
    return Release(analysis=release.analysis, kind=release.kind, vectors=out, metadata=meta)


def _bound(release: Release, layout: Layout) -> Layout:
    """The layout with its analysis and kind in every name: two analyses sharing a round
    never share a keystream."""
    return tuple((f"{release.analysis}/{release.kind}/{name}", kind, n)
                 for name, kind, n in layout)


@dataclass
class Revealed:
    """What the survivors' shares gave the aggregator for one attempt.

    ``round`` is the attempt's self-masked round; ``seeds`` the self-mask seeds of the sites
    that contributed to it, ``keys`` the mask keys (raw X25519 private bytes) of the sites
    that dropped out of it. :meth:`check` verifies both against the signed announcements.
    """

    study_id: str
    attempt: int
    round: int
    announcements: Mapping[str, KeyAnnouncement]
    seeds: dict[str, bytes] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`SecureAggregationError` unless every seed and key is the one its
        site committed to."""
        for site, seed in self.seeds.items():
            a = self.announcements.get(site)
            if a is None or self_commitment(seed) != a.self_commit:
                raise SecureAggregationError(f"the self-mask seed of {site!r} is not the one "
                                             "it committed to")
        for site, raw in self.keys.items():
            a = self.announcements.get(site)
            try:
                public = X25519PrivateKey.from_private_bytes(raw).public_key()
            except ValueError:
                raise SecureAggregationError(f"the mask key of {site!r} is malformed") from None
            if a is None or public.public_bytes_raw() != a.public_key:
                raise SecureAggregationError(f"the mask key of {site!r} is not the one it "
                                             "announced")

    def correction(self, layout: Layout, contributors: Sequence[str]) -> NDArray[np.uint64]:
        """The masks in the sum of ``contributors``' masked vectors of the self-masked round
        that do not cancel: their self masks and their pairwise masks with dropped sites."""
        total = np.zeros(words(layout), dtype=np.uint64)
        for site in contributors:
            if site not in self.seeds:
                raise SecureAggregationError(f"no self-mask seed of {site!r}")
            add_stream(total, round_stream(self_key(self.seeds[site], self.study_id,
                                                    self.attempt, site), self.round, layout),
                       1, layout)
        graph = NeighbourGraph(tuple(self.announcements),
                               graph_seed(self.study_id, self.attempt, self.announcements))
        for gone, raw in self.keys.items():
            private = X25519PrivateKey.from_private_bytes(raw)
            for site in set(graph.neighbours(gone)) & set(contributors):
                shared = exchange(private, self.announcements[site].public_key, site)
                stream = round_stream(pair_key(shared, self.study_id, self.attempt, gone, site),
                                      self.round, layout)
                add_stream(total, stream, 1 if site < gone else -1, layout)
        normalise(total, layout)  # low words below 2^32 again: subtracted as one value
        return total


_REVEALED: OrderedDict[tuple[str, int], Revealed] = OrderedDict()
_REMEMBERED = 256


def remember(revealed: Revealed) -> None:
    """Keep checked revealed secrets, so sums of the self-masked round relayed later (Cox
    checks them at every site) can be unmasked; the most recent 256 attempts are kept."""
    revealed.check()
    _REVEALED[(revealed.study_id, revealed.attempt)] = revealed
    _REVEALED.move_to_end((revealed.study_id, revealed.attempt))
    while len(_REVEALED) > _REMEMBERED:
        _REVEALED.popitem(last=False)


def _marker(releases: Sequence[Release]) -> dict[str, Any]:
    markers = [r.metadata.get(SECURE) for r in releases]
    first = markers[0]
    if not isinstance(first, dict):
        raise SecureAggregationError(f"{releases[0].analysis}: not a masked release")
    for m in markers:
        if not isinstance(m, dict) or any(m.get(k) != first.get(k) for k in
                                          ("study", "attempt", "round", "self", "shapes")):
            raise SecureAggregationError(f"{releases[0].analysis}: masked releases of "
                                         "different rounds or layouts")
    return first


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


def _layout(first: Release, shapes: Mapping[str, Any]) -> Layout:
    entries = []
    for name in first.vectors:
        prefix = name[:2]
        if prefix not in (INT_PREFIX, REAL_PREFIX) or not name[2:] or name not in shapes:
            raise SecureAggregationError(f"{first.analysis}: {name!r} is not a masked key")
        entries.append((name, "i" if prefix == INT_PREFIX else "r",
                        int(np.prod(shapes[name], dtype=np.int64))))
    return tuple(sorted(entries))


def _words(release: Release, layout: Layout) -> NDArray[np.uint64]:
    out = []
    for name, kind, n in layout:
        if kind == "i":
            out.append(as_uint64(release.vectors[name]).ravel())
        else:
            out.extend(_unpack(np.asarray(release.vectors[name]), n))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def unmask_sum(releases: Sequence[Release], contributors: Sequence[str] | None = None,
               revealed: Revealed | None = None) -> Release:
    """Sum masked releases of one round and decode the total.

    Without a dropout the releases are those of ALL participants (their pairwise masks
    cancel). In an attempt's self-masked round the self masks, and the pairwise masks with the
    sites that dropped out, are removed with ``revealed`` (or the secrets :func:`remember`
    kept for the attempt); ``contributors`` are the sites the releases come from (in order).
    Integer vectors come back as int64 exact sums, real vectors as float64 decoded sums,
    under their original keys and shapes; the metadata is that of the first release.

    Raises
    ------
    SecureAggregationError
        If there are no releases, one is an error release, they differ in analysis, kind,
        vector keys, dtype, shape or round, a key is not a masked key, or the round's
        revealed secrets are needed but unknown.
    """
    releases = list(releases)
    if not releases:
        raise SecureAggregationError("no masked releases to sum")
    _check_matching(releases)
    first = releases[0]
    marker = _marker(releases)
    shapes = marker.get("shapes") or {}
    layout = _layout(first, shapes)
    total = np.zeros(words(layout), dtype=np.uint64)
    for r in releases:
        total += _words(r, layout)
    key = (str(marker.get("study")), int(marker.get("attempt", 0)))
    revealed = revealed or _REVEALED.get(key)
    if revealed is not None and int(marker.get("round", -1)) == revealed.round:
        if contributors is None:
            contributors = [_site_of(r) for r in releases]
        bound = _bound(first, layout)
        add_stream(total, revealed.correction(bound, contributors), -1, layout)
    elif marker.get("self"):
        raise SecureAggregationError(f"{first.analysis}: the self masks of round "
                                     f"{marker.get('round')} are not revealed")
    normalise(total, layout)
    out: dict[str, NDArray[np.int64] | NDArray[np.float64]] = {}
    at = 0
    for name, kind, n in layout:
        shape = tuple(shapes[name])
        if kind == "i":
            out[name[2:]] = total[at:at + n].view(np.int64).reshape(shape)
            at += n
        else:
            out[name[2:]] = decode_wide(total[at:at + n], total[at + n:at + 2 * n]
                                        ).reshape(shape)
            at += 2 * n
    meta = {k: v for k, v in first.metadata.items() if k != SECURE}
    return Release(analysis=first.analysis, kind=first.kind, vectors=out, metadata=meta)


def _site_of(release: Release) -> str:
    site = release.metadata.get(SECURE, {}).get("site")
    if not isinstance(site, str):
        raise SecureAggregationError(f"{release.analysis}: the contributors of a recovered "
                                     "round must be named")
    return site


def add_masked(releases: Sequence[Release]) -> Release:
    """The sum of masked releases of one round, still masked (same wire layout): what an
    aggregator keeps of a round until its masks can be removed."""
    releases = list(releases)
    if not releases:
        raise SecureAggregationError("no masked releases to sum")
    _check_matching(releases)
    first = releases[0]
    marker = _marker(releases)
    layout = _layout(first, marker.get("shapes") or {})
    total = np.zeros(words(layout), dtype=np.uint64)
    for r in releases:
        total += _words(r, layout)
    normalise(total, layout)
    out: dict[str, NDArray[np.int64]] = {}
    at = 0
    for name, kind, n in layout:
        if kind == "i":
            out[name] = total[at:at + n].view(np.int64).reshape(first.vectors[name].shape)
            at += n
        else:
            out[name] = _pack(total[at:at + n], total[at + n:at + 2 * n])
            at += 2 * n
    return Release(first.analysis, first.kind, out, dict(first.metadata))

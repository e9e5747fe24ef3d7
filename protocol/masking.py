"""Pairwise and self masks modulo 2^64 / 2^96 with a neighbour graph (SecAgg+).

Site ``i`` adds to each vector, for every *neighbour* ``j`` (:mod:`protocol.neighbours`),
``s_ij * m_ij`` with ``s_ij = +1`` if ``i < j`` (string order of site ids) else ``-1``. Both
ends derive the same ``m_ij``, so the masks cancel in the sum over all participants. In the
first analysis round of an attempt a site also adds a *self mask* ``p_i`` from its self-mask
seed; the aggregator removes it after the survivors reveal shares of the seed
(:mod:`protocol.recovery`), so a site whose mask key is revealed (it was reported dropped) keeps
its vector hidden.

Keys: in the attempt's self-masked round ``k_ij = HKDF-SHA256(X25519(mask_i, mask_j),
info=canonical_bytes("heron-sa-v2 mask", study_id, attempt, min(i, j), max(i, j)))`` (once per
pair and attempt) and ``k_i = HKDF-SHA256(seed_i, info=("heron-sa-v2 self", study_id, attempt,
i))``; in every other round (screening, re-screening, later analysis rounds) ``k_ij`` comes
from the channel keys (:meth:`PairwiseMasker.channel_key`, label ``mask``). Only the mask key
and self seed are secret-shared, so a revealed mask key strips only the self-masked round,
where the self mask still hides a site that was not really dropped. A round's masks
are the ChaCha20 keystream of the key with a nonce from SHA-256 over ``(round, layout)``, the
layout naming every vector of the round with its kind and length, so a keystream is never
reused on other values; :meth:`PairwiseMasker.mask_vectors` refuses to mask other values under
one round and layout. Channel keys (sealed screening counts and shares) come from the separate
channel key pairs: revealing a mask key opens nothing sealed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import ArrayLike, NDArray

from protocol.errors import SecureAggregationError
from protocol.key_exchange import EphemeralKeys, KeyAnnouncement, canonical_bytes
from protocol.neighbours import NeighbourGraph, graph_seed

__all__ = ["MASK_LABEL", "Layout", "PairwiseMasker", "pair_key", "round_stream", "self_key",
           "sum_masked"]

MASK_LABEL = "heron-sa-v2 mask"
SELF_LABEL = "heron-sa-v2 self"
CHANNEL_LABEL = "heron-sa-v2 channel"
LATER_LABEL = "mask"
"""Channel-key label of the pairwise masks of every round but the self-masked one."""
M32 = np.uint64(0xFFFFFFFF)

Layout = tuple[tuple[str, str, int], ...]
"""A round's vectors: ``(name, kind, length)`` sorted by name; kind ``i`` (mod 2^64, one word
a value) or ``r`` (mod 2^96: a high word and a low 32-bit word)."""


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def pair_key(shared: bytes, study_id: str, attempt: int, a: str, b: str) -> bytes:
    """``k_ab`` from the X25519 shared secret of the two sites' mask keys."""
    low, high = sorted((a, b))
    return _hkdf(shared, canonical_bytes(MASK_LABEL, study_id, attempt, low, high))


def self_key(seed: bytes, study_id: str, attempt: int, site: str) -> bytes:
    """``k_i`` from a site's self-mask seed."""
    return _hkdf(seed, canonical_bytes(SELF_LABEL, study_id, attempt, site))


def words(layout: Layout) -> int:
    """Keystream words a layout takes."""
    return sum(n * (2 if kind == "r" else 1) for _, kind, n in layout)


def round_stream(key: bytes, round: int, layout: Layout) -> NDArray[np.uint64]:
    """The keystream of ``key`` for ``round`` and ``layout`` (uint64 words)."""
    nonce = hashlib.sha256(canonical_bytes("heron-sa-v2 round", round,
                                           repr(layout))).digest()[:12]
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), mode=None).encryptor()
    size = words(layout)
    return np.frombuffer(encryptor.update(bytes(8 * size)) + encryptor.finalize(),
                         dtype="<u8").astype(np.uint64)


def as_uint64(values: ArrayLike) -> NDArray[np.uint64]:
    """An integer array as uint64 (two's complement for negatives, i.e. mod 2^64)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "biu":
        raise SecureAggregationError(f"only integer vectors can be masked, got {arr.dtype}")
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    return arr.astype(np.int64).view(np.uint64)


def add_stream(flat: NDArray[np.uint64], stream: NDArray[np.uint64], sign: int,
               layout: Layout) -> None:
    """Add ``sign * stream`` to a round's flat words in place: ``i`` words modulo 2^64; ``r``
    values (n high words, then n low words of 32 bits) modulo 2^96, the low word of the
    stream read as its low 32 bits. Low words may exceed 32 bits until :func:`normalise`."""
    if sign > 0 and not any(kind == "r" for _, kind, _ in layout):
        flat += stream
        return
    at = 0
    for _, kind, n in layout:
        if kind == "i":
            if sign > 0:
                flat[at:at + n] += stream[at:at + n]
            else:
                flat[at:at + n] -= stream[at:at + n]
            at += n
            continue
        mh, ml = stream[at:at + n], stream[at + n:at + 2 * n] & M32
        if sign > 0:
            flat[at:at + n] += mh
            flat[at + n:at + 2 * n] += ml
        else:  # -(mh * 2^32 + ml) mod 2^96
            flat[at:at + n] += ~mh + (ml == 0).astype(np.uint64)
            flat[at + n:at + 2 * n] += (np.uint64(1 << 32) - ml) & M32
        at += 2 * n


def normalise(flat: NDArray[np.uint64], layout: Layout) -> None:
    """Carry the low words of ``r`` values into their high words (in place)."""
    at = 0
    for _, kind, n in layout:
        if kind == "r":
            hi, lo = flat[at:at + n], flat[at + n:at + 2 * n]
            hi += lo >> np.uint64(32)
            lo &= M32
            at += 2 * n
        else:
            at += n


class PairwiseMasker:
    """Masks one site's vectors for one attempt of a study.

    Parameters
    ----------
    site_id
        This site's id.
    keys
        This site's ephemeral secrets from :func:`protocol.key_exchange.announce`.
    announcements
        Every participant's announcement (this site's included), keyed by site id. They must
        already have passed :func:`protocol.key_exchange.verify_announcement`.
    study_id, attempt
        The study and attempt the announcements were made for.

    Raises
    ------
    SecureAggregationError
        If there are fewer than two participants, the mapping is inconsistent, this site's own
        announcement does not hold its keys, or a key exchange fails.
    """

    def __init__(self, site_id: str, keys: EphemeralKeys,
                 announcements: Mapping[str, KeyAnnouncement], study_id: str,
                 attempt: int) -> None:
        if site_id not in announcements:
            raise SecureAggregationError(f"no announcement of this site {site_id!r}")
        if len(announcements) < 2:
            raise SecureAggregationError("secure aggregation needs at least two participants")
        seen: set[bytes] = set()
        for sid, a in announcements.items():
            if a.site_id != sid:
                raise SecureAggregationError(f"announcement of {a.site_id!r} filed under {sid!r}")
            if a.study_id != study_id or a.attempt != attempt:
                raise SecureAggregationError(f"announcement of {sid!r} is for another study "
                                             f"or attempt")
            if a.public_key in seen or a.channel_key in seen:
                raise SecureAggregationError(f"announcement of {sid!r} repeats another "
                                             f"site's public key")
            seen.update((a.public_key, a.channel_key))
        mine = announcements[site_id]
        if (mine.public_key != keys.mask.public_key().public_bytes_raw()
                or mine.channel_key != keys.channel.public_key().public_bytes_raw()):
            raise SecureAggregationError(f"the announcement of {site_id!r} does not hold this "
                                         f"site's public keys")
        self.site_id = site_id
        self.study_id = study_id
        self.attempt = attempt
        self.keys = keys
        self.announcements = dict(announcements)
        self.participants: tuple[str, ...] = tuple(sorted(announcements))
        self.graph = NeighbourGraph(self.participants,
                                    graph_seed(study_id, attempt, announcements))
        self.neighbours = self.graph.neighbours(site_id)
        self.dropped: frozenset[str] = frozenset()
        self._pair: dict[str, bytes] = {}
        for peer in self.neighbours:
            shared = exchange(keys.mask, announcements[peer].public_key, peer)
            self._pair[peer] = pair_key(shared, study_id, attempt, site_id, peer)
        self._self = self_key(keys.self_seed, study_id, attempt, site_id)
        self._channel: dict[str, bytes] = {}
        self._later: dict[str, bytes] = {}
        self._used: dict[tuple[int, Layout], bytes] = {}
        self.own_shares: bytes = b""
        """This site's own pair of shares (mask key, self seed), set by the share split."""
        self.self_round: int | None = None
        """The round whose vectors carry the self mask (the attempt's first analysis round)."""
        self.on_data: Callable[[], None] | None = None
        """Called before the first analysis vector of the attempt is masked (the session
        persists that this site sent masked data in the attempt)."""

    @property
    def active(self) -> tuple[str, ...]:
        """Participants not reported dropped."""
        return tuple(p for p in self.participants if p not in self.dropped)

    def channel_key(self, peer: str, label: str) -> bytes:
        """A 32-byte key only this site and ``peer`` can derive (for ``label``, this study and
        attempt), from the channel keys: it seals what one site sends another."""
        if peer == self.site_id or peer not in self.announcements:
            raise SecureAggregationError(f"{peer!r} is not a peer of {self.site_id!r}")
        if peer not in self._channel:
            self._channel[peer] = exchange(self.keys.channel,
                                            self.announcements[peer].channel_key, peer)
        low, high = sorted((self.site_id, peer))
        return _hkdf(self._channel[peer], canonical_bytes(CHANNEL_LABEL, label, self.study_id,
                                                          self.attempt, low, high))

    def pair_mask(self, peer: str, round: int, layout: Layout,
                  self_mask: bool = False) -> NDArray[np.uint64]:
        """``m_ij`` for ``round`` and ``layout``: the keystream shared with neighbour ``peer``.

        With ``self_mask`` (the attempt's self-masked round) it comes from the mask keys, whose
        shares recover a dropped site; in every other round (screening, later analysis
        rounds) from the channel keys, which are never revealed, so a revealed mask key strips
        nothing but the self-masked round."""
        if peer not in self._pair:
            raise SecureAggregationError(f"{peer!r} is not a neighbour of {self.site_id!r}")
        if self_mask:
            return round_stream(self._pair[peer], round, layout)
        if peer not in self._later:
            self._later[peer] = self.channel_key(peer, LATER_LABEL)
        return round_stream(self._later[peer], round, layout)

    def mask_words(self, round: int, layout: Layout, flat: NDArray[np.uint64],
                   self_mask: bool = False) -> NDArray[np.uint64]:
        """Masked copy of a round's flat words (see :data:`Layout`); the pairwise masks of the
        neighbours not reported dropped, and the self mask when ``self_mask``.

        Masking one ``(round, layout)`` twice is allowed only with the same values (a resend),
        since reusing a mask on other values would reveal their difference.
        """
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise SecureAggregationError(f"round must be a non-negative integer, got {round!r}")
        if flat.size != words(layout):
            raise SecureAggregationError("the words do not match the layout")
        fingerprint = hashlib.sha256(canonical_bytes(repr(layout), int(self_mask),
                                                     flat.tobytes())).digest()
        if self._used.setdefault((round, layout), fingerprint) != fingerprint:
            raise SecureAggregationError(f"round {round} was already masked with other "
                                         f"values; a mask is never reused")
        total = flat.copy()
        for peer in self.neighbours:
            if peer not in self.dropped:
                add_stream(total, self.pair_mask(peer, round, layout, self_mask),
                           1 if self.site_id < peer else -1, layout)
        if self_mask:
            add_stream(total, round_stream(self._self, round, layout), 1, layout)
        normalise(total, layout)
        return total

    def mask(self, round: int, key: str, values: ArrayLike) -> NDArray[np.int64]:
        """Return ``values + sum_j s_ij * m_ij`` modulo 2^64 as int64 (one integer vector
        alone in its layout)."""
        if not isinstance(key, str) or not key:
            raise SecureAggregationError("the mask key must be a non-empty string")
        plain = as_uint64(values)
        layout: Layout = ((key, "i", plain.size),)
        return self.mask_words(round, layout, plain.ravel()).view(np.int64).reshape(plain.shape)

    def drop(self, sites: Iterable[str]) -> None:
        """Stop masking with ``sites`` (they dropped out; their masks were recovered)."""
        unknown = set(sites) - set(self.participants)
        if unknown or self.site_id in set(sites):
            raise SecureAggregationError("only other participants can be dropped")
        self.dropped = frozenset(sites)


def exchange(private: X25519PrivateKey, public: bytes, peer: str) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise SecureAggregationError(f"key exchange with {peer!r} failed: {exc}") from exc


def sum_masked(arrays: Iterable[ArrayLike]) -> NDArray[np.int64]:
    """Sum int64 arrays of one shape modulo 2^64 (wrap-around); return int64."""
    total: NDArray[np.uint64] | None = None
    for arr in arrays:
        u = as_uint64(arr)
        if total is None:
            total = u.copy()
        elif u.shape != total.shape:
            raise SecureAggregationError(f"cannot sum masked arrays of shapes {total.shape} "
                                         f"and {u.shape}")
        else:
            total += u
    if total is None:
        raise SecureAggregationError("nothing to sum")
    return total.view(np.int64)


def layout_of(vectors: Sequence[tuple[str, str, int]]) -> Layout:
    """A layout from ``(name, kind, length)`` entries, sorted by name."""
    return tuple(sorted(vectors))

"""Pairwise additive masks modulo 2^64 (Bonawitz et al., CCS 2017, without dropout recovery).

Site ``i`` adds to its int64 vector, for every other participant ``j``, ``s_ij * m_ij`` modulo
2^64 with ``s_ij = +1`` if ``i < j`` (string order of site ids) else ``-1``. Both ends derive the
same ``m_ij``, so the masks cancel in the sum over all participants and the aggregator learns
only the exact sum; if one participant is missing, its masks do not cancel and the sum is noise.

``m_ij`` is the little-endian uint64 keystream of ChaCha20 (all-zero nonce) keyed by a 32-byte
seed ``HKDF-SHA256(X25519(i, j), info=canonical_bytes("heron-sa-v1 mask", study_id, attempt,
round, key, min(i, j), max(i, j)))``. The seed is unique per (pair, study, attempt, round, key),
so a keystream is never reused; :meth:`PairwiseMasker.mask` refuses to mask different values
under the same round and key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import ArrayLike, NDArray

from protocol.errors import SecureAggregationError
from protocol.key_exchange import KeyAnnouncement, canonical_bytes

__all__ = ["MASK_LABEL", "PairwiseMasker", "sum_masked"]

MASK_LABEL = "heron-sa-v1 mask"
CHANNEL_LABEL = "heron-sa-v1 channel"
_NONCE = bytes(16)  # ChaCha20 in cryptography: 4-byte counter + 12-byte nonce, all zero


def _as_uint64(values: ArrayLike) -> NDArray[np.uint64]:
    """Return an integer array as uint64 (two's complement for negatives, i.e. mod 2^64)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "biu":
        raise SecureAggregationError(f"only integer vectors can be masked, got {arr.dtype}")
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    return arr.astype(np.int64).view(np.uint64)


class PairwiseMasker:
    """Masks one site's vectors for one attempt of a study.

    Parameters
    ----------
    site_id
        This site's id.
    private_key
        This site's ephemeral X25519 private key from :func:`protocol.key_exchange.announce`.
    announcements
        Every participant's announcement (this site's included), keyed by site id. They must
        already have passed :func:`protocol.key_exchange.verify_announcement`.
    study_id, attempt
        The study and attempt the announcements were made for.

    Raises
    ------
    SecureAggregationError
        If there are fewer than two participants, the mapping is inconsistent, this site's own
        announcement does not hold ``private_key``'s public key, or a key exchange fails.
    """

    def __init__(self, site_id: str, private_key: X25519PrivateKey,
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
            if a.public_key in seen:
                raise SecureAggregationError(f"announcement of {sid!r} repeats another "
                                             f"site's public key")
            seen.add(a.public_key)
        own = private_key.public_key().public_bytes_raw()
        if announcements[site_id].public_key != own:
            raise SecureAggregationError(f"the announcement of {site_id!r} does not hold this "
                                         f"private key's public key")
        self.site_id = site_id
        self.study_id = study_id
        self.attempt = attempt
        self.participants: tuple[str, ...] = tuple(sorted(announcements))
        self._shared: dict[str, bytes] = {}
        for peer in self.participants:
            if peer == site_id:
                continue
            try:
                peer_key = X25519PublicKey.from_public_bytes(announcements[peer].public_key)
                self._shared[peer] = private_key.exchange(peer_key)
            except ValueError as exc:
                raise SecureAggregationError(f"key exchange with {peer!r} failed: "
                                             f"{exc}") from exc
        self._used: dict[tuple[int, str], bytes] = {}

    def _seed(self, peer: str, round: int, key: str) -> bytes:
        low, high = sorted((self.site_id, peer))
        info = canonical_bytes(MASK_LABEL, self.study_id, self.attempt, round, key, low, high)
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=info).derive(self._shared[peer])

    def channel_key(self, peer: str, label: str) -> bytes:
        """A 32-byte key only this site and ``peer`` can derive (for ``label``, this study and
        attempt): it seals what one site sends another through the aggregator."""
        if peer not in self._shared:
            raise SecureAggregationError(f"{peer!r} is not a peer of {self.site_id!r}")
        low, high = sorted((self.site_id, peer))
        info = canonical_bytes(CHANNEL_LABEL, label, self.study_id, self.attempt, low, high)
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=info).derive(self._shared[peer])

    def pair_mask(self, peer: str, round: int, key: str, size: int) -> NDArray[np.uint64]:
        """Return ``m_ij``: ``size`` uint64 words shared with ``peer`` for ``round`` and ``key``."""
        if peer not in self._shared:
            raise SecureAggregationError(f"{peer!r} is not a peer of {self.site_id!r}")
        encryptor = Cipher(algorithms.ChaCha20(self._seed(peer, round, key), _NONCE),
                           mode=None).encryptor()
        stream = encryptor.update(bytes(8 * size)) + encryptor.finalize()
        return np.frombuffer(stream, dtype="<u8").astype(np.uint64)

    def mask(self, round: int, key: str, values: ArrayLike) -> NDArray[np.int64]:
        """Return ``values + sum_j s_ij * m_ij`` modulo 2^64 as int64 (same shape).

        ``values`` is an integer array read modulo 2^64. Masking the same ``(round, key)``
        twice is allowed only with the same values (a resend), since reusing a mask on other
        values would reveal their difference.
        """
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise SecureAggregationError(f"round must be a non-negative integer, got {round!r}")
        if not isinstance(key, str) or not key:
            raise SecureAggregationError("the mask key must be a non-empty string")
        plain = _as_uint64(values)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(canonical_bytes(str(plain.shape), np.ascontiguousarray(plain).tobytes()))
        fingerprint = digest.finalize()
        previous = self._used.setdefault((round, key), fingerprint)
        if previous != fingerprint:
            raise SecureAggregationError(f"round {round} key {key!r} was already masked with "
                                         f"other values; a mask is never reused")
        total = plain.ravel().copy()
        for peer in self._shared:
            m = self.pair_mask(peer, round, key, total.size)
            if self.site_id < peer:
                total += m
            else:
                total -= m
        return total.view(np.int64).reshape(plain.shape)


def sum_masked(arrays: Iterable[ArrayLike]) -> NDArray[np.int64]:
    """Sum int64 arrays of one shape modulo 2^64 (wrap-around); return int64."""
    total: NDArray[np.uint64] | None = None
    for arr in arrays:
        u = _as_uint64(arr)
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

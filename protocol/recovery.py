"""Dropout recovery: Shamir shares of each site's mask key and self-mask seed (SecAgg+).

In the screening round every site splits its mask key (the raw X25519 private key) and its
self-mask seed into ``k + 1`` shares, one per *holder* (its neighbours and itself,
:mod:`protocol.neighbours`), threshold ``t = ceil(2 (k + 1) / 3)``, and seals each
neighbour's pair of shares under their channel key (:meth:`PairwiseMasker.channel_key`, label
``shares``); the aggregator relays the blobs. A holder is numbered by its position in the
sorted participants plus one.

After the attempt's self-masked round the aggregator asks every survivor to reveal, for each
site whose shares it holds, the **self-mask-seed share** if that site contributed to the round,
or the **mask-key share** if it dropped out, never both: a survivor fixes the dropped set of an
attempt once (:class:`node.runtime.secure_session.SecureSessions`). Two sets of ``t`` holders
overlap in at least ``2t - k - 1`` holders, so unless that many holders collude (up to
``2t - k - 2`` colluders are tolerated, :func:`protocol.neighbours.tolerated_colluders`), an
aggregator that tells some holders a site dropped and others it did not cannot collect both
secrets of one site: a site reported dropped while its vector was received stays hidden by its
self mask.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Collection, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from protocol.errors import ProtocolError, SecureAggregationError
from protocol.key_exchange import KeyAnnouncement, canonical_bytes
from protocol.masking import PairwiseMasker
from protocol.neighbours import NeighbourGraph, graph_seed
from protocol.secure_agg import Revealed
from protocol.shamir import SHARE_BYTES, reconstruct, share_from_bytes, share_to_bytes, split

__all__ = ["KEY_SHARES", "SEED_SHARES", "open_shares", "reconstruct_revealed", "reveal",
           "seal_shares"]

KEY_SHARES = "keys"
SEED_SHARES = "seeds"
_LABEL = "shares"
_NONCE = 12


def _aad(masker: PairwiseMasker, sender: str, recipient: str) -> bytes:
    return canonical_bytes("heron-sa-v2 shares", masker.study_id, masker.attempt, sender,
                           recipient)


def holder_index(participants: tuple[str, ...], site: str) -> int:
    """A holder's x coordinate: its position among the sorted participants, plus one."""
    return participants.index(site) + 1


def seal_shares(masker: PairwiseMasker) -> dict[str, str]:
    """Split this site's mask key and self-mask seed among its holders; keep its own pair of
    shares in ``masker.own_shares`` and return the others sealed (recipient -> base64)."""
    graph, me = masker.graph, masker.site_id
    holders = graph.holders(me)
    xs = [holder_index(masker.participants, h) for h in holders]
    raw_key = masker.keys.mask.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    key_shares = split(raw_key, xs, graph.threshold)
    seed_shares = split(masker.keys.self_seed, xs, graph.threshold)
    out: dict[str, str] = {}
    for h, x in zip(holders, xs, strict=True):
        pair = share_to_bytes(key_shares[x]) + share_to_bytes(seed_shares[x])
        if h == me:
            masker.own_shares = pair
            continue
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(masker.channel_key(h, _LABEL)).encrypt(nonce, pair, _aad(masker, me, h))
        out[h] = base64.b64encode(nonce + sealed).decode("ascii")
    return out


def open_shares(blob: str, masker: PairwiseMasker, sender: str) -> bytes:
    """The pair of shares ``sender`` sealed for this site (66 + 66 bytes).

    Raises
    ------
    ProtocolError
        When the blob was not sealed by ``sender`` for this site and attempt.
    """
    try:
        raw = base64.b64decode(blob, validate=True)
        pair = AESGCM(masker.channel_key(sender, _LABEL)).decrypt(
            raw[:_NONCE], raw[_NONCE:], _aad(masker, sender, masker.site_id))
    except (binascii.Error, ValueError, TypeError, InvalidTag, SecureAggregationError):
        raise ProtocolError(f"the shares of {sender} do not open: not sealed by that site "
                            "for this site") from None
    if len(pair) != 2 * SHARE_BYTES:
        raise ProtocolError(f"the shares of {sender} are malformed")
    return pair


def reveal(masker: PairwiseMasker, pairs: Mapping[str, bytes],
           dropped: Collection[str]) -> dict[str, dict[str, str]]:
    """What this site reveals: for every site whose shares it holds (``pairs``: sender ->
    pair of shares, its own included), the mask-key share if it dropped, else the self-mask
    seed share. The caller enforces one dropped set per attempt."""
    out: dict[str, dict[str, str]] = {KEY_SHARES: {}, SEED_SHARES: {}}
    for sender, pair in sorted(pairs.items()):
        gone = sender in dropped
        share = pair[:SHARE_BYTES] if gone else pair[SHARE_BYTES:]
        out[KEY_SHARES if gone else SEED_SHARES][sender] = \
            base64.b64encode(share).decode("ascii")
    return out


def reconstruct_revealed(study_id: str, attempt: int, round: int,
                         announcements: Mapping[str, KeyAnnouncement],
                         reveals: Mapping[str, Mapping[str, Mapping[str, str]]],
                         dropped: Collection[str],
                         contributors: Collection[str]) -> Revealed:
    """Rebuild the dropped sites' mask keys and the contributors' self-mask seeds from the
    survivors' reveals (holder -> ``{keys: {site: share}, seeds: {site: share}}``) and check
    them against the announcements.

    Raises
    ------
    SecureAggregationError
        When fewer than the threshold of a site's holders revealed its share, or the
        reconstructed secret is not the one the site announced.
    """
    participants = tuple(sorted(announcements))
    graph = NeighbourGraph(participants, graph_seed(study_id, attempt, announcements))
    out = Revealed(study_id, attempt, round, dict(announcements))
    for kind, targets in ((KEY_SHARES, dropped), (SEED_SHARES, contributors)):
        for site in targets:
            shares: dict[int, int] = {}
            for holder in graph.holders(site):
                got = reveals.get(holder, {}).get(kind, {}).get(site)
                if got is None:
                    continue
                try:
                    shares[holder_index(participants, holder)] = share_from_bytes(
                        base64.b64decode(got, validate=True))
                except (binascii.Error, ValueError):
                    continue
            secret = reconstruct(shares, graph.threshold)
            (out.keys if kind == KEY_SHARES else out.seeds)[site] = secret
    out.check()
    return out

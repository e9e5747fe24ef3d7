"""The neighbour graph of SecAgg+ (Bell et al., CCS 2020): whom each site masks with.

Each site masks with a bounded set of neighbours instead of every other participant. The graph
is a random ``k``-regular Harary graph: the participants are placed on a ring in a random order
and each is joined to the ``k/2`` nearest on either side. The order is drawn from a seed that
every site computes itself from public, signed inputs: SHA-256 over the study id, the attempt
and every participant's verified announcement (site id, mask key, channel key, self-mask
commitment), in site order. The aggregator relays the announcements but cannot choose the
graph: changing it means changing an announcement, whose signature every site checks, and any
relay yields one graph for every site that accepts it.

Degree: ``k = 2 * ceil(DEGREE_FACTOR * log2(n) / 2)`` (even), and the complete graph when that
is ``n - 1`` or more (up to about 20 sites). 50 sites: 18 neighbours; 500 sites: 28.

Shares of a site's secrets go to its *holders*: its neighbours and itself (``k + 1``), and any
``threshold(k) = ceil(2 (k + 1) / 3)`` of them reconstruct. An aggregator that tells some
holders a site dropped and the others it did not, helped by ``c`` colluding holders (who hand
over both of their shares), gets both secrets of the site only if ``2 t <= k + 1 + c``; so
``c <= 2 t - (k + 2)`` colluding holders are tolerated (at least ``(k + 1) / 3 - 1``: 0 with
3 holders, 6 of 19 at 50 sites), and up to ``k + 1 - t`` (about a third) of a site's holders
may drop out (docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

from protocol.errors import SecureAggregationError
from protocol.key_exchange import KeyAnnouncement, canonical_bytes

__all__ = ["DEGREE_FACTOR", "NeighbourGraph", "degree", "graph_seed", "threshold",
           "tolerated_colluders"]

DEGREE_FACTOR = 3.0
_LABEL = "heron-sa-v2 graph"


def degree(n: int) -> int:
    """Neighbours of each site among ``n`` participants."""
    if n < 2:
        raise SecureAggregationError("secure aggregation needs at least two participants")
    k = 2 * math.ceil(DEGREE_FACTOR * math.log2(n) / 2)
    return n - 1 if k >= n - 1 else k


def threshold(k: int) -> int:
    """Shares (of ``k + 1`` holders) that reconstruct a secret: ``ceil(2 (k + 1) / 3)``, at
    least two and above half of them."""
    holders = k + 1
    return max(2, holders // 2 + 1, -(-2 * holders // 3))


def tolerated_colluders(k: int) -> int:
    """Colluding holders of one site against which a split dropped set still yields at most
    one of its two secrets: the largest ``c`` with ``2 t > k + 1 + c``."""
    return max(0, 2 * threshold(k) - (k + 1) - 1)


def graph_seed(study_id: str, attempt: int,
               announcements: Mapping[str, KeyAnnouncement]) -> bytes:
    """The graph's seed: SHA-256 over the study, attempt and every verified announcement."""
    h = hashlib.sha256(canonical_bytes(_LABEL, study_id, attempt, len(announcements)))
    for site in sorted(announcements):
        a = announcements[site]
        h.update(canonical_bytes(site, a.public_key, a.channel_key, a.self_commit))
    return h.digest()


class NeighbourGraph:
    """The neighbours of every participant of one attempt.

    Parameters
    ----------
    participants
        Site ids (any order; the ring order comes from ``seed``).
    seed
        :func:`graph_seed` of the attempt.
    """

    def __init__(self, participants: Sequence[str], seed: bytes) -> None:
        sites = sorted(set(participants))
        if len(sites) != len(participants):
            raise SecureAggregationError("participants repeat a site")
        n = len(sites)
        self.degree = degree(n)
        self.threshold = threshold(self.degree)
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
        ring = [sites[i] for i in rng.permutation(n)]
        pos = {s: i for i, s in enumerate(ring)}
        half = self.degree // 2
        self._neighbours: dict[str, tuple[str, ...]] = {}
        for s in sites:
            if self.degree == n - 1:
                near = [o for o in sites if o != s]
            else:
                i = pos[s]
                near = [ring[(i + d) % n] for d in range(-half, half + 1) if d]
            self._neighbours[s] = tuple(sorted(near))
        self.participants = tuple(sites)

    def neighbours(self, site: str) -> tuple[str, ...]:
        """``site``'s neighbours (sorted)."""
        try:
            return self._neighbours[site]
        except KeyError:
            raise SecureAggregationError(f"{site!r} is not a participant") from None

    def holders(self, site: str) -> tuple[str, ...]:
        """Who holds shares of ``site``'s secrets: its neighbours and itself (sorted)."""
        return tuple(sorted((*self.neighbours(site), site)))

    def edges(self) -> set[tuple[str, str]]:
        """Every edge once, as ``(low, high)``."""
        return {(a, b) for a, near in self._neighbours.items() for b in near if a < b}

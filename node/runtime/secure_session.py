"""The site's side of secure aggregation: ephemeral keys and masked releases.

The key-exchange round of a study with ``secure_aggregation: true`` (an ``announce`` request,
:mod:`protocol.rounds`) only announces an ephemeral X25519 key, signed with the site's
certificate key. Every later round relays every participant's signed announcement: the node
verifies them against the network CA, derives the pairwise masks and releases every vector
masked. After a site dropped out, the aggregator asks for a key for the next attempt. Private
keys live only in this process; a node restarted between rounds cannot mask and refuses the
round ("no ephemeral key"), so the aggregator drops it and restarts the key exchange among the
others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from node.errors import StudyRefused
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.key_exchange import KeyAnnouncement, announce, verify_announcement
from protocol.masking import PairwiseMasker
from protocol.pki import Credentials
from protocol.rounds import KEY_KIND, KEYS, KeyRelay
from protocol.secure_agg import mask_release

__all__ = ["MAX_ATTEMPTS", "SecureSessions"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Key exchanges a site takes part in for one study (the first and two restarts)."""
_KEPT = 8


class SecureSessions:
    """Ephemeral keys of this site's running secure studies."""

    def __init__(self, site_id: str, credentials: Credentials) -> None:
        self.site_id = site_id
        self._identity = load_pem_private_key(credentials.key.read_bytes(), password=None)
        self._certificate = credentials.cert.read_bytes()
        self._ca = credentials.ca.read_bytes()
        self._keys: dict[tuple[str, int], X25519PrivateKey] = {}

    def announce(self, study_id: str, attempt: int) -> Release:
        """A fresh signed ephemeral key for ``attempt`` of a study."""
        private, announcement = announce(self.site_id, study_id, attempt, self._identity,
                                         self._certificate)
        self._keys[(study_id, attempt)] = private
        while len(self._keys) > _KEPT:
            self._keys.pop(next(iter(self._keys)))
        return Release(analysis=KEYS, kind=KEY_KIND, vectors={},
                       metadata={"announcement": announcement.to_dict()})

    def masker(self, study_id: str, keys: KeyRelay) -> tuple[PairwiseMasker, list[str]]:
        """Verify every participant's announcement and build this site's masker.

        Raises
        ------
        StudyRefused
            When an announcement is forged, replayed or not from this network, or this
            site's own key for the attempt is not known here.
        """
        attempt = keys.attempt
        private = self._keys.get((study_id, attempt))
        if private is None:
            raise StudyRefused(f"no ephemeral key for attempt {attempt} (node restarted?)")
        announcements: dict[str, KeyAnnouncement] = {}
        try:
            for raw in keys.announcements:
                a = KeyAnnouncement.from_dict(raw)
                verify_announcement(a, self._ca, study_id, attempt)
                announcements[a.site_id] = a
        except ProtocolError as exc:
            raise StudyRefused(f"secure aggregation: {exc}") from None
        mine = announcements.get(self.site_id)
        own = private.public_key().public_bytes_raw()
        if mine is None or mine.public_key != own:
            raise StudyRefused("secure aggregation: this site's own key is missing or replaced")
        masker = PairwiseMasker(self.site_id, private, announcements, study_id, attempt)
        return masker, sorted(announcements)

    @staticmethod
    def mask(releases: Sequence[Release], masker: PairwiseMasker, round: int) -> list[Release]:
        """Mask every release (error releases stay as they are: they carry no vectors).

        The mask of each vector is bound to the study, attempt, round, analysis and key.
        """
        return [r if r.error else mask_release(r, masker, round) for r in releases]

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

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from node.errors import NodeError, StudyRefused
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.key_exchange import KeyAnnouncement, announce, verify_announcement
from protocol.masking import PairwiseMasker
from protocol.pki import Credentials, write_private_file
from protocol.rounds import KEY_KIND, KEYS, NO_EPHEMERAL_KEY, KeyRelay
from protocol.screening import SCREEN, SCREEN_KIND, SEALED, open_sealed, seal
from protocol.secure_agg import mask_release, unmask_sum

__all__ = ["MAX_ATTEMPTS", "SecureSessions"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Key exchanges a site takes part in for one study (the first and two restarts)."""
_STATE_VERSION = 1


@dataclass
class _StudyKeys:
    """What this site agreed to in one secure study (the aggregator cannot steer it)."""

    attempt: int = 0
    keys: dict[int, X25519PrivateKey] = field(default_factory=dict)
    announced: dict[int, Release] = field(default_factory=dict)
    participants: dict[int, tuple[str, ...]] = field(default_factory=dict)
    rounds: dict[tuple[int, int], str] = field(default_factory=dict)
    erased: set[int] = field(default_factory=set)
    """Attempts whose private key was erased (the attempt ended)."""
    expires: dt.date | None = None
    screens: dict[int, tuple[int, Release]] = field(default_factory=dict)
    maskers: dict[int, tuple[str, PairwiseMasker]] = field(default_factory=dict)
    """The attempt's verified relay (its digest) and masker, built once per attempt."""
    lost: set[int] = field(default_factory=set)
    """Attempts announced before this node restarted: their keys died with the process."""

    def to_dict(self) -> dict[str, Any]:
        """What survives a restart: the rules' state, never a key."""
        return {"attempt": self.attempt,
                "announced": sorted(set(self.announced) | self.lost | self.erased),
                "erased": sorted(self.erased),
                "participants": {str(a): list(p) for a, p in self.participants.items()},
                "rounds": {f"{a}:{r}": d for (a, r), d in self.rounds.items()},
                "expires": None if self.expires is None else self.expires.isoformat()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _StudyKeys:
        """A study's rules after a restart: announced attempts have no key any more."""
        erased = {int(a) for a in d["erased"]}
        return cls(attempt=int(d["attempt"]), erased=erased,
                   lost={int(a) for a in d["announced"]} - erased,
                   participants={int(a): tuple(p) for a, p in d["participants"].items()},
                   rounds={(int(k.split(":")[0]), int(k.split(":")[1])): v
                           for k, v in d["rounds"].items()},
                   expires=None if d["expires"] is None else dt.date.fromisoformat(d["expires"]))


class SecureSessions:
    """Ephemeral keys of this site's running secure studies, and the rules they obey.

    The aggregator chooses attempts, rounds and participants; the site holds it to them:
    attempts only move forward and each is announced once (asking again returns the same
    key), an attempt's participants are fixed by its first relay and are at least the
    study's ``min_sites``, and a round of an attempt is answered for one set of requests
    only (its masks are bound to the round: two answers would differ by the plain values).
    """

    def __init__(self, site_id: str, credentials: Credentials,
                 state_file: Path | None = None) -> None:
        self.site_id = site_id
        self._identity = load_pem_private_key(credentials.key.read_bytes(), password=None)
        self._certificate = credentials.cert.read_bytes()
        self._ca = credentials.ca.read_bytes()
        self._state_file = state_file
        self._studies: dict[str, _StudyKeys] = self._load()

    # The rules' state of every study is kept (never evicted: forgetting a study would let an
    # aggregator start its attempts afresh) and, with a state file, survives a restart; an
    # expired study keeps its rules and loses its keys (sweep).

    def _load(self) -> dict[str, _StudyKeys]:
        if self._state_file is None or not self._state_file.exists():
            return {}
        data = json.loads(self._state_file.read_text(encoding="utf-8"))
        if data.get("version") != _STATE_VERSION:
            raise NodeError(f"{self._state_file}: unknown secure-session state version")
        return {sid: _StudyKeys.from_dict(d) for sid, d in data["studies"].items()}

    def _save(self) -> None:
        if self._state_file is None:
            return
        body = json.dumps({"version": _STATE_VERSION, "studies": {
            sid: k.to_dict() for sid, k in sorted(self._studies.items())}}, sort_keys=True)
        write_private_file(self._state_file, body.encode())

    def _study(self, study_id: str) -> _StudyKeys:
        if study_id not in self._studies:
            self._studies[study_id] = _StudyKeys()
        return self._studies[study_id]

    def announce(self, study_id: str, attempt: int) -> Release:
        """This site's signed ephemeral key for ``attempt`` of a study (made once).

        Raises
        ------
        StudyRefused
            For an attempt older than one already announced.
        """
        keys = self._study(study_id)
        if attempt < keys.attempt:
            raise StudyRefused(f"secure aggregation: key exchange {attempt} comes after "
                               f"{keys.attempt}")
        if attempt in keys.announced:
            return keys.announced[attempt]
        if attempt in keys.lost:
            raise StudyRefused(f"secure aggregation: key exchange {attempt} was announced "
                               "before this node restarted; its key is gone")
        private, announcement = announce(self.site_id, study_id, attempt, self._identity,
                                         self._certificate)
        self._erase(keys)  # a newer attempt ends the older ones: their keys go
        keys.attempt = attempt
        keys.keys = {attempt: private}
        keys.announced = {attempt: Release(analysis=KEYS, kind=KEY_KIND, vectors={},
                                           metadata={"announcement": announcement.to_dict()})}
        self._save()
        return keys.announced[attempt]

    def masker(self, study_id: str, relay: KeyRelay, min_sites: int
               ) -> tuple[PairwiseMasker, list[str]]:
        """Verify every participant's announcement and build this site's masker.

        Raises
        ------
        StudyRefused
            When an announcement is forged, replayed or not from this network, this site's
            own key for the attempt is not known here, fewer than ``min_sites`` take part, or
            the participants differ from those of the attempt's first relay.
        """
        attempt = relay.attempt
        keys = self._study(study_id)
        private = keys.keys.get(attempt)
        if private is None:
            if attempt in keys.erased:
                raise StudyRefused(f"secure aggregation: attempt {attempt} has ended; its "
                                   "ephemeral key was erased")
            raise StudyRefused(f"{NO_EPHEMERAL_KEY} for attempt {attempt} (node restarted?)")
        relayed = hashlib.sha256(json.dumps(list(relay.announcements), sort_keys=True)
                                 .encode()).hexdigest()
        cached = keys.maskers.get(attempt)
        if cached is not None and cached[0] == relayed:
            # the same relay as before: verified then; its masker (and its guard against
            # reusing a mask) serves every round of the attempt
            return cached[1], list(cached[1].participants)
        announcements: dict[str, KeyAnnouncement] = {}
        try:
            for raw in relay.announcements:
                a = KeyAnnouncement.from_dict(raw)
                verify_announcement(a, self._ca, study_id, attempt)
                announcements[a.site_id] = a
        except ProtocolError as exc:
            raise StudyRefused(f"secure aggregation: {exc}") from None
        mine = announcements.get(self.site_id)
        own = private.public_key().public_bytes_raw()
        if mine is None or mine.public_key != own:
            raise StudyRefused("secure aggregation: this site's own key is missing or replaced")
        participants = tuple(sorted(announcements))
        if len(participants) < min_sites:
            raise StudyRefused(f"secure aggregation: {len(participants)} participants, fewer "
                               f"than min_sites {min_sites}")
        if keys.participants.setdefault(attempt, participants) != participants:
            raise StudyRefused(f"secure aggregation: attempt {attempt} already has other "
                               "participants")
        if cached is not None:  # same sites, other keys: refused like other participants
            raise StudyRefused(f"secure aggregation: attempt {attempt} was relayed with "
                               "other announcements before")
        self._save()
        masker = PairwiseMasker(self.site_id, private, announcements, study_id, attempt)
        keys.maskers[attempt] = (relayed, masker)
        return masker, list(participants)

    @staticmethod
    def _erase(keys: _StudyKeys) -> None:
        """Drop every private key of a study (its public announcements stay, so an attempt
        asked again gets the same, now unusable, key rather than a fresh one)."""
        keys.erased.update(keys.keys)
        keys.keys.clear()
        keys.maskers.clear()  # they hold the pairwise secrets derived from the keys

    def sweep(self, today: dt.date, study_id: str | None = None,
              expires: dt.date | None = None) -> None:
        """Note ``study_id``'s expiry and erase the keys of every study expired by ``today``
        (no round of an expired study is answered, so its keys serve nothing)."""
        changed = False
        if study_id is not None and self._study(study_id).expires != expires:
            self._study(study_id).expires, changed = expires, True
        for name, keys in self._studies.items():
            if (keys.keys or keys.screens) and keys.expires is not None \
                    and keys.expires < today:
                # its keys serve nothing any more; its rules stay (a small record per study),
                # so that even a clock set back cannot start its attempts afresh
                self._erase(keys)
                keys.screens.clear()
                logger.info("secure aggregation: study %s expired; ephemeral keys erased",
                            name)
                changed = True
        if changed:
            self._save()

    def end(self, study_id: str) -> None:
        """Erase the study's ephemeral keys now (its last round is answered)."""
        if study_id in self._studies:
            self._erase(self._studies[study_id])

    def claim_round(self, study_id: str, attempt: int, round: int, requests: str) -> None:
        """Answer round ``round`` of ``attempt`` for one set of requests only (a digest);
        the same requests again (a resend) are fine.

        Raises
        ------
        StudyRefused
            When the round was answered for other requests.
        """
        keys = self._study(study_id)
        if keys.rounds.setdefault((attempt, round), requests) != requests:
            raise StudyRefused(f"secure aggregation: round {round} was already answered for "
                               "other requests")
        self._save()

    def screen(self, study_id: str, attempt: int, round: int, masked: Release,
               masker: PairwiseMasker) -> Release:
        """Keep this site's masked screening counts of ``attempt`` (made in ``round``) and
        return them sealed for every other participant (:mod:`protocol.screening`)."""
        self._study(study_id).screens[attempt] = (round, masked)
        return Release(SCREEN, SCREEN_KIND, {}, {SEALED: seal(masked, masker, round)})

    def pooled_screen(self, study_id: str, attempt: int, masker: PairwiseMasker,
                      sealed: Mapping[str, str]) -> tuple[Release, list[dict[str, int]]]:
        """Open the other participants' sealed screening counts and sum them with this
        site's own: the exact pooled counts, and every participant's thresholds.

        Raises
        ------
        StudyRefused
            When this attempt had no screening here, a participant's counts are missing or
            do not open (forged, swapped, or sealed for another round), or they do not add up.
        """
        kept = self._study(study_id).screens.get(attempt)
        if kept is None:
            raise StudyRefused(f"secure aggregation: attempt {attempt} was not screened here")
        round, own = kept
        parts = [own]
        for peer in masker.participants:
            if peer == self.site_id:
                continue
            if peer not in sealed:
                raise StudyRefused(f"secure aggregation: the screening counts of {peer} are "
                                   "missing")
            try:
                parts.append(open_sealed(sealed[peer], masker, round, peer))
            except ProtocolError as exc:
                raise StudyRefused(f"secure aggregation: {exc}") from None
        try:
            pooled = unmask_sum(parts)
        except ProtocolError as exc:
            raise StudyRefused(f"secure aggregation: screening counts do not add up: "
                               f"{exc}") from None
        thresholds = [{k: int(p.metadata[k]) for k in ("min_cohort", "min_cell")
                       if isinstance(p.metadata.get(k), int)} for p in parts]
        return pooled, thresholds

    @staticmethod
    def mask(releases: Sequence[Release], masker: PairwiseMasker, round: int) -> list[Release]:
        """Mask every release (error releases stay as they are: they carry no vectors).

        The mask of each vector is bound to the study, attempt, round, analysis and key.
        """
        return [r if r.error else mask_release(r, masker, round) for r in releases]

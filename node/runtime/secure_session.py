"""The site's side of secure aggregation: ephemeral keys, masked releases, shares.

The key-exchange round of a study with ``secure_aggregation: true`` (an ``announce`` request,
:mod:`protocol.rounds`) only announces ephemeral X25519 keys (mask, channel) and a self-mask
commitment, signed with the site's certificate key. Every later round relays every
participant's signed announcement: the node verifies them against the network CA, derives the
masks with its neighbours (:mod:`protocol.neighbours`) and releases every vector masked. The
screening round also sends the neighbours Shamir shares of the mask key and self-mask seed;
after the first analysis round the node reveals shares (:mod:`protocol.recovery`): of the
self-mask seeds of the sites that answered, of the mask keys of those reported dropped, for
one dropped set per attempt, and after a dropout only if the re-screened pooled counts of the
survivors give the same disclosure decisions.

Once it has sent a masked analysis vector in an attempt (recorded in the state file before
the vector leaves), or revealed shares, the node takes part in no new key exchange of the
study: a new attempt would give the aggregator a second sum over other sites
(docs/threat-model.md, restart differencing). Private keys live only in this process; a node
restarted between rounds cannot mask and refuses the round ("no ephemeral key"); before any
reveal the aggregator may restart the key exchange with it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from node.errors import NodeError, StudyRefused
from node.releases.screening import decide
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.key_exchange import EphemeralKeys, KeyAnnouncement, announce, verify_announcement
from protocol.masking import PairwiseMasker
from protocol.pki import Credentials, write_private_file
from protocol.recovery import open_shares, reveal, seal_shares
from protocol.rounds import (
    KEY_KIND,
    KEYS,
    NO_EPHEMERAL_KEY,
    REVEALED,
    SHARES,
    UNMASK,
    KeyRelay,
    UnmaskRequest,
)
from protocol.screening import SCREEN, SCREEN_KIND, SEALED, open_sealed, seal
from protocol.secure_agg import Revealed, mask_release, remember, unmask_sum
from protocol.study import Study

__all__ = ["MAX_ATTEMPTS", "SecureSessions"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Key exchanges a site takes part in for one study (the first and two restarts)."""
_STATE_VERSION = 1


@dataclass
class _StudyKeys:
    """What this site agreed to in one secure study (the aggregator cannot steer it)."""

    attempt: int = 0
    keys: dict[int, EphemeralKeys] = field(default_factory=dict)
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
    dropped: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """The dropped set of each attempt, fixed by the first relay that names one."""
    revealed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Attempts whose shares this site revealed, with the dropped set it revealed them for."""
    decided: dict[int, tuple[Release, list[dict[str, int]], tuple[str, ...]]] = \
        field(default_factory=dict)
    """The attempt's first pooled screening counts, thresholds and participants."""
    unmasked: dict[int, Release] = field(default_factory=dict)
    sent: set[int] = field(default_factory=set)
    """Attempts in which this site sent a masked analysis vector (persisted before it is
    sent): the study then takes part in no new key exchange."""

    def to_dict(self) -> dict[str, Any]:
        """What survives a restart: the rules' state, never a key."""
        return {"attempt": self.attempt,
                "dropped": {str(a): list(d) for a, d in self.dropped.items()},
                "revealed": {str(a): list(d) for a, d in self.revealed.items()},
                "announced": sorted(set(self.announced) | self.lost | self.erased),
                "erased": sorted(self.erased),
                "sent": sorted(self.sent),
                "participants": {str(a): list(p) for a, p in self.participants.items()},
                "rounds": {f"{a}:{r}": d for (a, r), d in self.rounds.items()},
                "expires": None if self.expires is None else self.expires.isoformat()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _StudyKeys:
        """A study's rules after a restart: announced attempts have no key any more."""
        erased = {int(a) for a in d["erased"]}
        return cls(attempt=int(d["attempt"]), erased=erased,
                   dropped={int(a): tuple(x) for a, x in d.get("dropped", {}).items()},
                   revealed={int(a): tuple(x) for a, x in d.get("revealed", {}).items()},
                   sent={int(a) for a in d.get("sent", [])},
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
        self._remembered: set[tuple[str, int]] = set()
        self._issued: set[bytes] = set()  # certificates whose CA signature was checked

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
        if keys.revealed:
            # the aggregator may hold a sum of this attempt: another attempt would give it a
            # second sum over other sites, their difference one site's vector
            raise StudyRefused("secure aggregation: shares were revealed in attempt "
                               f"{max(keys.revealed)}; no new key exchange for this study")
        if keys.sent:
            # even without a reveal here, others' shares may unmask that attempt's sum
            # (colluders, or the revealers alone): a second attempt would difference it
            raise StudyRefused("secure aggregation: masked data was sent in attempt "
                               f"{max(keys.sent)}; no new key exchange for this study")
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
            self._after_dropout(study_id, keys, cached[1], relay, min_sites)
            return cached[1], list(cached[1].active)
        announcements: dict[str, KeyAnnouncement] = {}
        try:
            for raw in relay.announcements:
                a = KeyAnnouncement.from_dict(raw)
                verify_announcement(a, self._ca, study_id, attempt, self._issued)
                announcements[a.site_id] = a
        except ProtocolError as exc:
            raise StudyRefused(f"secure aggregation: {exc}") from None
        mine = announcements.get(self.site_id)
        own = private.mask.public_key().public_bytes_raw()
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
        # saved with the round's claim (claim_round), which follows in the same answer
        try:
            masker = PairwiseMasker(self.site_id, private, announcements, study_id, attempt)
        except ProtocolError as exc:
            raise StudyRefused(f"secure aggregation: {exc}") from None
        masker.on_data = lambda: self._data_sent(study_id, attempt)
        keys.maskers[attempt] = (relayed, masker)
        self._after_dropout(study_id, keys, masker, relay, min_sites)
        return masker, list(masker.active)

    def _after_dropout(self, study_id: str, keys: _StudyKeys, masker: PairwiseMasker,
                       relay: KeyRelay, min_sites: int) -> None:
        """Hold the relay to the attempt's dropped set (fixed once) and take in the secrets
        the attempt's unmask revealed (checked against the announcements)."""
        attempt = relay.attempt
        dropped = tuple(sorted(relay.dropped))
        if dropped or attempt in keys.dropped:
            if self.site_id in dropped or not set(dropped) <= set(masker.participants):
                raise StudyRefused("secure aggregation: the dropped sites are not other "
                                   "participants")
            if keys.dropped.setdefault(attempt, dropped) != dropped:
                raise StudyRefused(f"secure aggregation: attempt {attempt} already has other "
                                   "dropped sites")
            if len(masker.participants) - len(dropped) < min_sites:
                raise StudyRefused(f"secure aggregation: fewer than min_sites {min_sites} "
                                   "participants remain")
            alive = [n for n in masker.neighbours if n not in dropped]
            if len(alive) + 1 < masker.graph.threshold:
                # this site's masks would rest on too few others (and its shares could not
                # be recovered): an aggregator claiming its neighbours dropped gets nothing
                raise StudyRefused("secure aggregation: too few of this site's neighbours "
                                   "remain")
            if masker.dropped != frozenset(dropped):
                masker.drop(dropped)  # saved with the round's claim
        if relay.revealed is not None and (study_id, attempt) not in self._remembered:
            try:
                remember(_revealed(study_id, attempt, masker, relay.revealed))
            except (ProtocolError, ValueError, KeyError, TypeError) as exc:
                raise StudyRefused(f"secure aggregation: revealed secrets refused: "
                                   f"{exc}") from None
            self._remembered.add((study_id, attempt))

    def _data_sent(self, study_id: str, attempt: int) -> None:
        """Persist, before it is sent, that this site masks analysis data in ``attempt``."""
        keys = self._study(study_id)
        if attempt not in keys.sent:
            keys.sent.add(attempt)
            self._save()

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
        return them sealed for every other participant (:mod:`protocol.screening`); the
        first screening also carries the sealed shares for the neighbours."""
        keys = self._study(study_id)
        first = attempt not in keys.screens
        keys.screens[attempt] = (round, masked)
        meta: dict[str, Any] = {SEALED: seal(masked, masker, round)}
        if first and not masker.dropped:
            meta[SHARES] = seal_shares(masker)
        return Release(SCREEN, SCREEN_KIND, {}, meta)

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
        for peer in masker.active:
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
        self._study(study_id).decided.setdefault(attempt, (pooled, thresholds,
                                                           masker.active))
        return pooled, thresholds

    def unmask(self, study: Study, attempt: int, masker: PairwiseMasker,
               request: UnmaskRequest) -> Release:
        """Reveal this site's shares for the attempt's self-masked round: self-mask-seed
        shares of the sites that answered, mask-key shares of those dropped (never both of
        one site: one dropped set per attempt). After a dropout the survivors' re-screened
        pooled counts must give the decisions the full set gave.

        Raises
        ------
        StudyRefused
            When the attempt had no analysis round or screening here, the dropped set differs
            from one revealed for before, a decision changes without the dropped sites, or a
            neighbour's shares are missing or do not open.
        """
        keys = self._study(study.id)
        dropped = tuple(sorted(masker.dropped))
        if masker.self_round is None:
            raise StudyRefused("secure aggregation: nothing to unmask in this attempt")
        done = keys.revealed.get(attempt)
        if done is not None and done != dropped:
            raise StudyRefused("secure aggregation: shares of this attempt were revealed for "
                               "other dropped sites")
        if done is not None and attempt in keys.unmasked:
            return keys.unmasked[attempt]  # a resend
        if dropped:
            self._same_decisions(study, attempt, masker, request)
        pairs = {self.site_id: masker.own_shares}
        for peer in masker.neighbours:
            blob = request.shares.get(peer)
            if blob is None:
                raise StudyRefused(f"secure aggregation: the shares of {peer} are missing")
            try:
                pairs[peer] = open_shares(blob, masker, peer)
            except ProtocolError as exc:
                raise StudyRefused(f"secure aggregation: {exc}") from None
        keys.revealed[attempt] = dropped
        keys.dropped[attempt] = dropped  # fixed for the rest of the attempt, even if empty
        self._save()
        out = Release(UNMASK, KEY_KIND, {}, {REVEALED: reveal(masker, pairs, dropped)})
        keys.unmasked[attempt] = out
        return out

    def _same_decisions(self, study: Study, attempt: int, masker: PairwiseMasker,
                        request: UnmaskRequest) -> None:
        keys = self._study(study.id)
        first = keys.decided.get(attempt)
        if first is None or request.sealed is None:
            raise StudyRefused("secure aggregation: a dropout is recovered only after the "
                               "survivors screened again")
        pooled, thresholds = self.pooled_screen(study.id, attempt, masker, request.sealed)
        try:
            before = decide(study, first[0], first[1], first[2])
            after = decide(study, pooled, thresholds, masker.active)
        except StudyRefused:
            raise StudyRefused("secure aggregation: the survivors' pooled counts do not pass "
                               "the thresholds; nothing is revealed") from None
        if before != after:
            raise StudyRefused("secure aggregation: without the dropped sites a disclosure "
                               "decision changes; nothing is revealed")

    @staticmethod
    def mask(releases: Sequence[Release], masker: PairwiseMasker, round: int) -> list[Release]:
        """Mask every release (error releases stay as they are: they carry no vectors).

        The mask of each vector is bound to the study, attempt, round, analysis and key. The
        attempt's first analysis round (not a screening) carries self masks too.
        """
        data = any(r.analysis != SCREEN and not r.error for r in releases)
        if data and masker.on_data is not None:
            masker.on_data()
        if masker.self_round is None and data:
            masker.self_round = round
        return [r if r.error else mask_release(
            r, masker, round, self_mask=r.analysis != SCREEN and round == masker.self_round)
            for r in releases]


def _revealed(study_id: str, attempt: int, masker: PairwiseMasker,
              raw: Mapping[str, Any]) -> Revealed:
    """The secrets of an attempt's unmask as relayed (base64), checked when remembered."""
    def unpack(d: Any) -> dict[str, bytes]:
        return {str(k): base64.b64decode(v, validate=True) for k, v in dict(d).items()}
    return Revealed(study_id, attempt, int(raw["round"]), masker.announcements,
                    unpack(raw.get("seeds", {})), unpack(raw.get("keys", {})))

"""The node's study engine: verify, decide, compute, audit. Transport-agnostic.

A transport (the gRPC daemon, or an in-process runtime) hands a task's signed study to
:meth:`NodeEngine.answer` and sends back what it returns: the releases of every analysis, or a
refusal of the whole study with its reason. Every decision lands in the audit trail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.cohorts.cohort import TableSource, select_cohort
from node.cohorts.endpoints import group_labels
from node.cohorts.facts import fact_rows
from node.errors import NodeError, StudyRefused
from node.governance.approvals import Approvals
from node.governance.audit import AuditTrail
from node.governance.digests import INFUSION_ROW, PATIENT_ROW, SnapshotDigests
from node.governance.ledger import INFUSIONS, PATIENTS, DisclosureLedger
from node.governance.policy import Policy
from node.releases import adverse_events, cox_step_release, first_release, release_summary
from node.releases.cox import CoxRound, CoxSite
from node.releases.cox import seal as seal_cox
from node.releases.screening import Screened, decide, screen_counts
from node.runtime.secure_session import MAX_ATTEMPTS, SecureSessions
from node.runtime.snapshot_cache import SnapshotCache
from protocol.approval import awaiting_digest, awaiting_release
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.keys import key_id
from protocol.pki import Credentials
from protocol.release_signing import ReleaseSigner
from protocol.rounds import RoundRequests, parse_requests
from protocol.signing import SignedStudy, is_expired, verify_study
from protocol.study import Study
from protocol.vocabulary import WITHHELD

__all__ = ["NodeEngine", "TaskOutcome"]

logger = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """What a study needs at this site, kept between the rounds of iterative analyses."""

    tables: SnapshotCache
    cohort: pd.DataFrame
    memo: dict[str, CoxSite]
    key: tuple[str, str] = ("", "")
    """(study id, study digest)."""
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    """Cohort rows of each ledger set other than the cohort's patients and infusions."""
    ledger_sets: frozenset[str] = frozenset()
    """Ledger sets (patients, infusions, Cox complete cases) checked and recorded already."""


_CACHED_STUDIES = 4


@dataclass(frozen=True)
class TaskOutcome:
    """What the node answers: releases, or a refusal reason (exactly one is set).

    A study awaiting the data steward's approval is answered with one awaiting-approval
    release (:mod:`protocol.approval`): not a refusal, the aggregator keeps the task open.
    """

    releases: tuple[Release, ...] | None = None
    refusal: str | None = None

    @classmethod
    def awaiting_approval(cls, study_sha256: str) -> TaskOutcome:
        """The answer while the study with this digest awaits approval."""
        return cls(releases=(awaiting_release(study_sha256),))

    @property
    def awaiting(self) -> bool:
        """Whether this is the awaiting-approval answer."""
        return awaiting_digest(self.releases) is not None


class NodeEngine:
    """Answers studies for one site under its policy.

    Parameters
    ----------
    site_id
        This site's id (the CN of its certificate).
    policy
        The site policy.
    trusted_keys
        Coordinator public keys this site trusts.
    open_tables
        Returns the current store (a :class:`~node.cohorts.cohort.TableSource`); called per
        study so a re-ingestion is seen without a restart.
    audit
        The site's audit trail.
    today
        Clock for expiry checks.
    approvals
        For ``approval = "manual"``: the data steward's decisions, bound to each study's
        content digest (:mod:`node.governance.approvals`); unapproved studies wait there.
    credentials
        The site's certificate, key and network CA (needed for secure aggregation).
    ledger
        The disclosure ledger of released cohorts (differencing protection).
    secure_state
        File that keeps the secure-aggregation rules' state of unexpired studies across
        restarts (attempts, participants, answered rounds; never a key).
    """

    def __init__(
        self,
        site_id: str,
        policy: Policy,
        trusted_keys: Sequence[Ed25519PublicKey],
        open_tables: Callable[[], TableSource],
        audit: AuditTrail,
        today: Callable[[], dt.date] = dt.date.today,
        approvals: Approvals | None = None,
        credentials: Credentials | None = None,
        ledger: DisclosureLedger | None = None,
        secure_state: Path | None = None,
    ) -> None:
        self.site_id = site_id
        self.secure = SecureSessions(site_id, credentials, secure_state) \
            if credentials is not None else None
        self.signer = ReleaseSigner.from_credentials(site_id, credentials) \
            if credentials is not None else None
        self.ledger = ledger
        self.policy = policy
        self.trusted_keys = tuple(trusted_keys)
        self.open_tables = open_tables
        self.audit = audit
        self.today = today
        self.approvals = approvals
        self._cache: OrderedDict[tuple[str, str], _Prepared] = OrderedDict()
        self._snapshot: SnapshotCache | None = None
        """The latest snapshot read, shared by the studies on it."""
        self._newton_rounds: dict[tuple[str, str, str], int] = {}
        """Newton rounds answered per (study, digest, Cox analysis) of evicted studies."""

    def _refuse(self, study_id: str, reason: str) -> TaskOutcome:
        self.audit.append("study_refused", study_id, reason=reason)
        logger.info("refused study %s: %s", study_id, reason)
        return TaskOutcome(refusal=reason)

    def _check(self, study_id: str, signed: SignedStudy) -> Study | str | TaskOutcome:
        try:
            study = verify_study(signed, self.trusted_keys)
        except ProtocolError as exc:
            return str(exc)
        if study.id != study_id:
            return f"task names study {study_id} but the signed study is {study.id}"
        if is_expired(study, self.today()):
            return f"study expired on {study.expires.isoformat()}"
        if study.privacy.secure_aggregation and self.secure is None:
            return "secure aggregation needs this site's credentials, which the node lacks"
        if self.policy.approval == "manual":
            return self._approval(study, signed) or study
        return study

    def _approval(self, study: Study, signed: SignedStudy) -> str | TaskOutcome | None:
        """Under manual approval: ``None`` when the steward approved this content, the
        steward's rejection, or (recording the study as pending) the awaiting answer."""
        if self.approvals is None:
            return "manual approval needs the node's approvals folder"
        digest = _sha256(signed.canonical_study)
        if self.approvals.is_approved(digest):
            return None
        rejected = self.approvals.rejection(digest)
        if rejected is not None:
            return f"rejected by the site's data steward: {rejected}"
        signer = key_id(signed.public_key)
        if self.approvals.add_pending(study, signed.canonical_study, digest, signer,
                                      dt.datetime.now(dt.UTC)):
            self.audit.append("study_pending", study.id, study_sha256=digest, signer=signer)
            logger.info("study %s (%s) awaits approval by the data steward", study.id,
                        digest[:12])
        return TaskOutcome.awaiting_approval(digest)

    def _still_pending(self, digest: str) -> bool:
        return self.policy.approval == "manual" and self.approvals is not None \
            and self.approvals.is_pending(digest)

    def _prepared(self, study: Study, digest: str) -> _Prepared:
        key = (study.id, digest)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        store = self.open_tables()
        sid = getattr(store, "snapshot_id", None)
        if sid is not None and self._snapshot is not None and self._snapshot.snapshot_id == sid:
            tables = self._snapshot  # another study on the same snapshot
        else:
            tables = SnapshotCache(store)
            self._snapshot = tables if sid is not None else None
        today = self.today()
        cohort = tables.derived(("cohort", _cohort_key(study), today),
                                lambda: select_cohort(tables, study.cohort, today=today))
        prepared = _Prepared(tables, cohort, {}, key=key)
        self._cache[key] = prepared
        while len(self._cache) > _CACHED_STUDIES:
            old_key, old = self._cache.popitem(last=False)
            for name, site in old.memo.items():  # the Newton cap outlives the cache
                self._newton_rounds[(*old_key, name)] = site.chain.rounds
        return prepared

    def _ledger_refusal(self, study: Study, prepared: _Prepared) -> str | None:
        """Why the ledger forbids releasing anything about this cohort, else None with the
        cohort's patients and infusions recorded: one atomic check-and-record at the first
        round that releases or keys a release (an announcement reserves the cohort), whatever
        its number; later rounds of the same prepared study skip it."""
        return self._ledger_check(study, prepared, (PATIENTS, INFUSIONS))

    def _record(self, study: Study, prepared: _Prepared,
                releases: Sequence[Release] = ()) -> str | None:
        """Check and record the parts of the cohort this round's releases were computed over
        (the complete cases of each Cox model; each group shown, and the union of the groups
        withheld, of each grouped analysis), or why they may not leave the site.

        A withheld union is what ``cohort - shown groups`` gives; recorded, it cannot be
        approached by a later study's cohort or group (e.g. a cohort of the withheld groups
        but one patient)."""
        masks = {f"cox:{n}": site.design.mask for n, site in prepared.memo.items()}
        by_name = {a.name: a for a in study.analyses}
        for release in releases:
            analysis = by_name.get(release.analysis)
            if release.error or analysis is None or analysis.group_by is None \
                    or "groups" not in release.metadata:
                continue
            labels = group_labels(prepared.cohort, analysis.group_by, self.site_id).to_numpy()
            withheld = [str(g) for g in release.metadata.get(WITHHELD) or []]
            for label in release.metadata["groups"]:
                if label not in withheld and np.any(labels == label):
                    masks[f"group:{analysis.name}:{_short(label)}"] = labels == label
            if withheld:
                masks[f"withheld:{analysis.name}"] = np.isin(labels, withheld)
        if not study.privacy.secure_aggregation:
            reason = self._ae_sets(study, prepared, releases, masks)
            if reason:
                return reason
        prepared.masks.update(masks)
        return self._ledger_check(study, prepared, tuple(masks))

    def _ae_sets(self, study: Study, prepared: _Prepared, releases: Sequence[Release],
                 masks: dict[str, np.ndarray]) -> str | None:
        """Unmasked adverse-event counts are this site's: the patients with a term within one
        window, next to another window (of this study, or of another in the ledger), would
        give its onsets between the two days. Each shown term's set joins the ledger, and two
        windows of one term in this study must differ by 0 or ``min_cohort_difference``."""
        by_name = {a.name: a for a in study.analyses}
        k = self.policy.min_cohort_difference
        seen: dict[str, list[np.ndarray]] = {}
        for release in releases:
            analysis = by_name.get(release.analysis)
            if release.error or analysis is None or analysis.kind != "adverse_events":
                continue
            for term, rows in adverse_events.event_rows(analysis, study, prepared.tables,
                                                        prepared.cohort).items():
                if rows.size < self.policy.min_cell:
                    continue  # withheld (or none): its count did not leave the site
                for other in seen.get(term, []):
                    d = int(np.setxor1d(rows, other).size)
                    if 0 < d < k:
                        return (f"two onset windows of {term} differ by fewer than {k} "
                                "patients (differencing risk)")
                seen.setdefault(term, []).append(rows)
                mask = np.zeros(len(prepared.cohort), dtype=bool)
                mask[rows] = True
                masks[f"ae:{analysis.name}:{_short(term)}"] = mask
        return None

    def _ledger_check(self, study: Study, prepared: _Prepared,
                      names: tuple[str, ...]) -> str | None:
        new = [n for n in names if n not in prepared.ledger_sets]
        if self.ledger is None or not new:
            return None
        sets: dict[str, np.ndarray] = {}
        ledger = self.ledger
        cohort = prepared.cohort
        ids = _LazyIds(cohort)  # built only when a set's digests are not cached
        found = fact_rows(prepared.tables, cohort)
        snapshot = getattr(prepared.tables, "ledger_digests", None)
        per_row = None if found is None or snapshot is None else snapshot(ledger, found[0])
        for name in new:
            if per_row is not None and found is not None:  # the snapshot's digests of rows
                sets[name] = _fact_set(prepared, name, per_row, found[1], ledger)
            elif name == PATIENTS:  # the cohort's digests: once per cohort of the snapshot
                sets[name] = prepared.tables.derived(
                    ("digests", name, id(cohort), ledger),
                    lambda: (cohort, ledger.digests(cohort["patient_id"].astype(str))))[1]
            elif name == INFUSIONS:
                sets[name] = prepared.tables.derived(
                    ("digests", name, id(cohort), ledger),
                    lambda: (cohort, ledger.infusion_digests(ids.get())))[1]
            else:
                sets[name] = self.ledger.infusion_digests(ids.get()[prepared.masks[name]])
        reason = self.ledger.check_and_record(study.id, sets, self.policy.min_cohort_difference)
        if reason is None:
            prepared.ledger_sets = prepared.ledger_sets | sets.keys()
        return reason

    def answer(self, study_id: str, signed: SignedStudy, round: int = 1,
               inputs: Sequence[Release] = ()) -> TaskOutcome:
        """Verify and answer one task: the requests of one round (:mod:`protocol.rounds`)."""
        signer = key_id(Ed25519PublicKey.from_public_bytes(signed.public_key)) \
            if len(signed.public_key) == 32 else "none"
        digest = _sha256(signed.canonical_study)
        if not self._still_pending(digest):  # a re-sent pending study was audited once
            self.audit.append("study_received", study_id, signer=signer, study_sha256=digest,
                              round=round)
        checked = self._check(study_id, signed)
        if isinstance(checked, TaskOutcome):
            return checked
        if isinstance(checked, str):
            return self._refuse(study_id, checked)
        study = checked
        if self.secure is not None:  # erase the ephemeral keys of expired studies
            self.secure.sweep(self.today(), study.id if study.privacy.secure_aggregation
                              else None, study.expires)
        try:
            requests = parse_requests(inputs)
        except ProtocolError as exc:
            return self._refuse(study_id, f"malformed round {round}: {exc}")
        try:
            prepared = self._prepared(study, digest)
        except NodeError as exc:
            return self._refuse(study_id, f"site data unavailable: {exc}")
        masked = study.privacy.secure_aggregation
        if not masked and len(prepared.cohort) < self.policy.min_cohort:
            return self._refuse(study_id, f"cohort below {self.policy.min_cohort} patients")
        if requests.announce is not None or requests.analyses or requests.screen:
            reason = self._ledger_refusal(study, prepared)
            if reason:
                return self._refuse(study_id, reason)
        try:
            if requests.announce is not None:
                return self._announce(study, requests.announce, round)
            releases = self._releases(study, prepared, requests, round)
        except StudyRefused as exc:
            return self._refuse(study_id, str(exc))
        if requests.analyses:
            reason = self._record(study, prepared, releases)
            if reason:  # computed over too few records apart from a release: not sent
                return self._refuse(study_id, reason)
        for release in releases:
            if release.error:
                self.audit.append("analysis_refused", study_id, analysis=release.analysis,
                                  round=round, reason=release.error)
        self.audit.append("release", study_id, round=round, masked=masked,
                          cohort_size=None if masked else len(prepared.cohort),
                          thresholds={"min_cohort": self.policy.min_cohort,
                                      "min_cell": self.policy.min_cell,
                                      "min_bin_events": self.policy.min_bin_events},
                          analyses=release_summary({r.analysis: r for r in releases}))
        return TaskOutcome(releases=tuple(releases))

    def _announce(self, study: Study, attempt: int, round: int) -> TaskOutcome:
        if not study.privacy.secure_aggregation or self.secure is None:
            raise StudyRefused("a key exchange was asked for a study without secure "
                               "aggregation")
        if attempt > MAX_ATTEMPTS:
            # each restart without a site hands the aggregator another sum; a few restarts are
            # dropouts, many look like an attempt to isolate sites (docs/threat-model.md)
            raise StudyRefused(f"more than {MAX_ATTEMPTS} key exchanges for one study")
        release = self.secure.announce(study.id, attempt)
        self.audit.append("release", study.id, round=round, key_announcement=attempt)
        return TaskOutcome(releases=(release,))

    def _releases(self, study: Study, prepared: _Prepared, requests: RoundRequests,
                  round: int) -> list[Release]:
        """This round's releases, masked when the study uses secure aggregation."""
        masked = study.privacy.secure_aggregation
        if masked != (requests.relay is not None):
            raise StudyRefused("a secure study's rounds must be masked, and only its rounds"
                               if masked else "a key relay was sent for an unmasked study")
        participants: list[str] | None = None
        if requests.relay is not None:
            assert self.secure is not None
            masker, participants = self.secure.masker(study.id, requests.relay,
                                                      study.privacy.min_sites)
            self.secure.claim_round(study.id, requests.relay.attempt, round,
                                    _requests_digest(requests))
        if requests.relay is not None and requests.unmask is not None:
            assert self.secure is not None
            return [self.secure.unmask(study, requests.relay.attempt, masker, requests.unmask)]
        screened: Screened | None = None
        if requests.relay is not None and requests.screen:
            assert self.secure is not None and participants is not None
            counts = screen_counts(study, prepared.tables, prepared.cohort, self.site_id,
                                   self.policy, participants)
            return [self.secure.screen(study.id, requests.relay.attempt, round,
                                       SecureSessions.mask([counts], masker, round)[0], masker)]
        if requests.relay is not None and requests.summaries:
            assert self.secure is not None and participants is not None
            if requests.screened is None:
                raise StudyRefused("secure aggregation: analyses are released only with the "
                                   "screening counts of every participant")
            pooled, thresholds = self.secure.pooled_screen(
                study.id, requests.relay.attempt, masker, requests.screened)
            screened = decide(study, pooled, thresholds, participants)
        by_name = {a.name: a for a in study.analyses}
        unknown = [n for n in requests.analyses if n not in by_name]
        if unknown:
            raise StudyRefused(f"round {round} names an unknown analysis {unknown[0]!r}")
        releases = [first_release(by_name[name], study, prepared.tables, prepared.cohort,
                                  self.site_id, self.policy, prepared.memo, participants,
                                  screened)
                    for name in requests.summaries]
        for name in requests.summaries:  # a study read again keeps its count of Newton rounds
            site = prepared.memo.get(name)
            carried = self._newton_rounds.get((*prepared.key, name))
            if site is not None and carried is not None:
                site.chain.rounds = max(site.chain.rounds, carried)
        attempt = requests.relay.attempt if requests.relay is not None else 0
        # signatures bind the signed study's content, not only its id
        bound = f"{study.id}@{prepared.key[1]}"
        cox_round = CoxRound(self.signer, bound, attempt, round,
                             None if participants is None else tuple(participants))
        for newton in requests.newton:
            releases.append(cox_step_release(by_name[newton.analysis], study, prepared.tables,
                                             prepared.cohort, self.policy, prepared.memo,
                                             newton, cox_round))
        if requests.relay is not None:
            releases = SecureSessions.mask(releases, masker, round)
        # Cox releases are signed as sent, so other sites can check relayed ones
        return seal_cox(releases, prepared.memo, self.signer, bound, attempt, round)


def _fact_set(prepared: _Prepared, name: str, per_row: SnapshotDigests, rows: np.ndarray,
              ledger: DisclosureLedger) -> np.ndarray:
    """A ledger set from the snapshot's per-infusion digests: the cohort's patients or
    infusions (once per cohort of the snapshot), or the infusions of a part of the cohort."""
    which = PATIENT_ROW if name == PATIENTS else INFUSION_ROW
    keep = np.zeros(per_row.sorted.shape[1], dtype=bool)
    if name not in (PATIENTS, INFUSIONS):
        keep[rows[prepared.masks[name]]] = True
        return per_row.subset(which, keep)
    keep[rows] = True
    cohort = prepared.cohort
    return prepared.tables.derived(  # type: ignore[no-any-return]
        ("digests", name, id(cohort), ledger), lambda: (cohort, per_row.subset(which, keep)))[1]


class _LazyIds:
    """The cohort's infusion ids as strings, made on first use."""

    def __init__(self, cohort: pd.DataFrame) -> None:
        self._cohort = cohort
        self._ids: np.ndarray | None = None

    def get(self) -> np.ndarray:
        if self._ids is None:
            self._ids = self._cohort["infusion_id"].astype(str).to_numpy()
        return self._ids


def _cohort_key(study: Study) -> Hashable:
    """What a cohort depends on besides the snapshot and the day: the study's cohort filters."""
    return study.cohort


def _short(label: str) -> str:
    """A ledger-safe name for a group label."""
    return hashlib.sha256(label.encode()).hexdigest()[:16]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _requests_digest(requests: RoundRequests) -> str:
    """A digest of what a round asks (analyses and Newton coefficients)."""
    h = hashlib.sha256()
    if requests.screen:
        h.update(b"screen;")
    if requests.unmask is not None:
        h.update(b"unmask;")
    for sender, blob in sorted((requests.screened or {}).items()):
        h.update(f"screened:{sender}:{blob};".encode())
    for name in requests.summaries:
        h.update(f"summary:{name};".encode())
    for n in requests.newton:
        h.update(f"newton:{n.analysis}:{','.join(n.columns)};".encode())
        h.update(n.beta.tobytes())
        h.update(b"-" if n.centre is None else n.centre.tobytes())
    return h.hexdigest()

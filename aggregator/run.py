"""The round loop of a study: one loop for every study, pure (the engine persists and sends).

A study is a sequence of rounds. In each round every participant gets one task holding what
each analysis' strategy asks of it (:mod:`aggregator.strategy`); when every task of the round
is answered or has failed, :meth:`StudyRun.advance` hands each strategy its answers and the
next round begins, until every analysis is done.

Participants. A site that refuses or stays silent before it ever answered leaves the study
(``refused`` or ``unreachable``). After that, unmasked, its failure is an error of the analyses
it was asked about (a Cox model then restarts without it).

Secure aggregation adds a key-exchange round, an ordinary round whose only request is
``announce``; every later round carries the verified announcements (``relay``) and is masked.
The runtime sums the masked releases of all participants, so the masks cancel, and hands each
strategy the exact sum as its only contribution. The screening round also relays each site's
sealed Shamir shares to its neighbours. The attempt's first analysis round carries self masks:
it is followed by an ``unmask`` round in which the sites reveal shares of the self-mask seeds
(:mod:`protocol.recovery`). If sites fail that first analysis round, the survivors screen again
among themselves (``rescreen``) and reveal the dropped sites' mask-key shares instead, so the
round completes with the exact sum of the survivors and no new key exchange. A participant
that fails a masked round before that (key exchange, screening) is dropped and a new key
exchange among the others starts again; once a site has sent masked analysis data in an
attempt it takes part in no new key exchange of the study (a second sum over other sites would
difference the first), so a failure that cannot be recovered after that ends the study. Rounds
after the self-masked one are masked among the attempt's fixed survivors with masks no share
recovers: a site failing one of them ends the study. Fewer than ``min_sites`` participants end the
study without a pooled release.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.strategy import MASKED_SUM, Contributions, Strategy
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.key_exchange import KeyAnnouncement, verify_announcement
from protocol.recovery import reconstruct_revealed
from protocol.rounds import (
    KEYS,
    NO_EPHEMERAL_KEY,
    REVEALED,
    SHARES,
    UNMASK,
    announce_request,
    key_relay,
    screen_request,
    screened_relay,
    unmask_request,
    unwire_release,
    wire_release,
)
from protocol.screening import SCREEN, SEALED
from protocol.secure_agg import add_masked, remember, unmask_sum
from protocol.study import Study

__all__ = ["Answer", "Failure", "RunState", "StudyRun"]

logger = logging.getLogger(__name__)

_ISSUED: set[bytes] = set()
"""Site certificates whose CA signature this aggregator process has checked."""


@dataclass(frozen=True)
class Failure:
    """A site's task that produced no releases: a refusal, or silence (``silent``)."""

    reason: str
    silent: bool = False


Answer = tuple[Release, ...] | Failure
"""What one site's task of a round produced."""


@dataclass
class RunState:
    """Where a study stands between rounds (JSON-ready; the engine persists it)."""

    round: int = 1
    phase: str = "data"  # keys | screen | data | done
    participants: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    attempt: int = 0
    announcements: dict[str, dict[str, Any]] = field(default_factory=dict)
    sealed: dict[str, dict[str, str]] = field(default_factory=dict)
    screened: list[str] = field(default_factory=list)
    shares: dict[str, dict[str, str]] = field(default_factory=dict)
    """Sender -> recipient -> sealed shares (the attempt's screening)."""
    lost: list[str] = field(default_factory=list)
    """Sites that failed the attempt's self-masked round (their masks are recovered)."""
    self_round: int = 0
    """The attempt's self-masked round (0: not yet)."""
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Analysis -> the still-masked sum of the self-masked round, its contributors and (Cox)
    each one's signed release (base64 wire releases)."""
    revealed: dict[str, Any] = field(default_factory=dict)
    analyses: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: list[list[int]] = field(default_factory=list)
    coarsened: bool = False
    study_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunState:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


class StudyRun:
    """The pure round logic of one study.

    Parameters
    ----------
    study
        The verified study.
    strategies
        Strategy by analysis kind.
    ca_pem
        The network CA, to check key announcements here too (the nodes always do).
    """

    def __init__(self, study: Study, strategies: Mapping[str, Strategy[Any]],
                 ca_pem: bytes | None = None) -> None:
        self.study = study
        self.ca_pem = ca_pem
        self.masked = study.privacy.secure_aggregation
        unknown = sorted({a.kind for a in study.analyses} - set(strategies))
        if unknown:
            raise ValueError(f"no strategy for analysis kind {unknown[0]!r}")
        self._strategies = {a.name: strategies[a.kind] for a in study.analyses}
        self._analyses = {a.name: a for a in study.analyses}

    # -- the loop --------------------------------------------------------------------------------

    def start(self, participants: list[str]) -> RunState:
        """The state before round 1."""
        state = RunState(participants=sorted(participants))
        if self.masked:
            state.phase, state.attempt = "keys", 1
        else:
            self._restart_analyses(state)
        return state

    def requests(self, state: RunState) -> dict[str, tuple[Release, ...]]:
        """Each site's requests in the current round (sites with none are left out)."""
        if state.phase == "keys":
            return {s: (announce_request(state.attempt),) for s in state.participants}
        relay = (key_relay(state.attempt, [state.announcements[s] for s in
                                           sorted(state.announcements)],
                           state.lost, state.revealed or None),) if self.masked else ()
        if state.phase in ("screen", "rescreen"):
            return {s: (*relay, screen_request()) for s in state.participants}
        if state.phase == "unmask":
            return {s: (*relay, unmask_request(
                {p: b[s] for p, b in state.shares.items() if s in b},
                {p: state.sealed[p][s] for p in state.participants if p != s}
                if state.lost else None)) for s in state.participants}
        if state.phase != "data":
            return {}
        out: dict[str, tuple[Release, ...]] = {}
        for site in state.participants:
            asked = tuple(r for r in (self._strategy(n).request(self._state(state, n), site)
                                      for n in self._running(state)) if r is not None)
            if asked and self.masked and any(n in state.screened for n in
                                             (r.analysis for r in asked)):
                # the first summaries of an attempt carry what the others sealed for the site
                sealed = {p: state.sealed[p][site] for p in state.participants if p != site}
                asked = (screened_relay(sealed), *asked)
            if asked:
                out[site] = relay + asked
        return out

    def advance(self, state: RunState, answers: Mapping[str, Answer]) -> RunState:
        """The next state from the current round's answers (never raises for bad answers).

        ``answers`` should hold every site that was sent a task; a missing one counts as
        silent.
        """
        asked = self.requests(state)
        got = {s: answers.get(s, Failure("no answer", silent=True)) for s in asked}
        if state.phase == "keys":
            self._keys(state, got)
        elif state.phase in ("screen", "rescreen"):
            self._screen(state, got)
        elif state.phase == "unmask":
            self._unmask(state, got)
        elif state.phase == "data":
            self._data(state, asked, got)
        if state.phase == "data" and not self._running(state):
            state.phase = "done"
        state.round += 1
        return state

    def finished(self, state: RunState) -> bool:
        """Whether the study has its results."""
        return state.phase == "done"

    def results(self, state: RunState) -> dict[str, Any]:
        """results.json entries of every analysis, in study order."""
        out = {}
        for name, analysis in self._analyses.items():
            if state.study_error or name not in state.analyses:
                out[name] = {"kind": analysis.kind, "error": state.study_error or
                             "the study ended before this analysis ran"}
                continue
            out[name] = self._strategy(name).result(self._state(state, name), analysis)
        return out

    # -- rounds ----------------------------------------------------------------------------------

    def _keys(self, state: RunState, got: Mapping[str, Answer]) -> None:
        announcements: dict[str, dict[str, Any]] = {}
        for site, answer in got.items():
            if isinstance(answer, Failure):
                self._leave(state, site, answer)
                continue
            reason = self._check_key(site, answer, state.attempt)
            if reason:
                state.dropped[site] = reason
                logger.warning("study %s: key of %s rejected: %s", self.study.id, site, reason)
                continue
            announcements[site] = dict(next(r for r in answer if r.analysis == KEYS)
                                       .metadata["announcement"])
            for left in (state.dropped, state.refused, state.unreachable):
                left.pop(site, None)  # it rejoined
            if site not in state.answered:
                state.answered.append(site)
        state.announcements = announcements
        state.participants = sorted(announcements)
        if self._enough_sites(state):
            state.phase = "screen"

    def _screen(self, state: RunState, got: Mapping[str, Answer]) -> None:
        """Keep every participant's sealed screening counts (only the sites can open them)."""
        failed: dict[str, Failure] = {}
        sealed: dict[str, dict[str, str]] = {}
        for site, answer in got.items():
            if isinstance(answer, Failure):
                failed[site] = answer
                continue
            blob = next((r.metadata.get(SEALED) for r in answer if r.analysis == SCREEN),
                        None)
            others = set(state.participants) - {site}
            if not isinstance(blob, dict) or set(blob) != others or not all(
                    isinstance(v, str) for v in blob.values()):
                failed[site] = Failure("sent no sealed screening counts for every participant")
                continue
            sealed[site] = dict(blob)
            shares = next((r.metadata.get(SHARES) for r in answer if r.analysis == SCREEN),
                          None)
            if state.phase == "screen" and isinstance(shares, dict):
                state.shares[site] = {str(k): str(v) for k, v in shares.items()}
        if failed:
            self._rekey(state, failed)
            return
        state.sealed = sealed
        if state.phase == "rescreen":
            state.phase = "unmask"
            return
        state.phase = "data"
        self._restart_analyses(state)
        state.screened = list(state.analyses)

    def _check_key(self, site: str, releases: tuple[Release, ...], attempt: int) -> str:
        keys = next((r for r in releases if r.analysis == KEYS), None)
        if keys is None or not isinstance(keys.metadata.get("announcement"), dict):
            return "no key announcement"
        if self.ca_pem is None:
            return ""
        try:
            announcement = KeyAnnouncement.from_dict(keys.metadata["announcement"])
            if announcement.site_id != site:
                return f"rejected key announcement: it names site {announcement.site_id}"
            if len(_ISSUED) > 100_000:
                _ISSUED.clear()
            verify_announcement(announcement, self.ca_pem, self.study.id, attempt, _ISSUED)
        except ProtocolError as exc:
            return f"rejected key announcement: {exc}"
        return ""

    def _data(self, state: RunState, asked: Mapping[str, tuple[Release, ...]],
              got: Mapping[str, Answer]) -> None:
        failed = {s: a for s, a in got.items() if isinstance(a, Failure)}
        if self.masked and not state.self_round:
            self._self_masked(state, asked, got, failed)
            return
        if self.masked and failed:
            self._rekey(state, failed)
            return
        for site, failure in failed.items():
            if site not in state.answered:
                self._leave(state, site, failure)
        state.screened = [n for n in state.screened if n not in asked_names(asked)]
        for site, answer in got.items():
            if not isinstance(answer, Failure):
                self._note_privacy(state, answer)
                if site not in state.answered:
                    state.answered.append(site)
        if not self.masked and len(state.answered) < self.study.privacy.min_sites:
            self._end(state, f"fewer than {self.study.privacy.min_sites} participating sites "
                             "(min_sites)")
            return
        for name in self._running(state):
            askers = [s for s, reqs in asked.items() if any(r.analysis == name for r in reqs)]
            self._combine(state, name, self._contributions(name, askers, got, state))

    def _self_masked(self, state: RunState, asked: Mapping[str, tuple[Release, ...]],
                     got: Mapping[str, Answer], failed: Mapping[str, Failure]) -> None:
        """The attempt's first analysis round: keep the survivors' masked sums until the
        unmask round reveals the self masks (and the masks of the sites that failed)."""
        reasons = {f.reason for f in failed.values()}
        if set(failed) == set(state.participants) or (len(reasons) == 1 and len(failed) == len(
                got) and not any(f.silent for f in failed.values())):
            self._rekey(state, failed)  # nobody sent masked data: a new key exchange is safe
            return
        if len(state.participants) - len(failed) < self.study.privacy.min_sites:
            # the others sent masked data: they take part in no new key exchange
            for site, failure in failed.items():
                self._leave(state, site, failure)
            self._end(state, f"fewer than {self.study.privacy.min_sites} participating sites "
                             "(min_sites) after the first masked round; no pooled release")
            return
        survivors = [s for s in state.participants if s not in failed]
        state.screened = [n for n in state.screened if n not in asked_names(asked)]
        for site in survivors:
            answer = got[site]
            assert not isinstance(answer, Failure)
            self._note_privacy(state, answer)
            if site not in state.answered:
                state.answered.append(site)
        for name in self._running(state):
            mine: dict[str, Release] = {}
            errors: dict[str, str] = {}
            for site in survivors:
                answer = got[site]
                assert not isinstance(answer, Failure)
                release = next((r for r in answer if r.analysis == name), None)
                if release is None or release.error:
                    errors[site] = release.error if release else "sent no release for this " \
                                                                 "analysis"
                else:
                    mine[site] = release
            odd = [] if errors else _odd_shapes(mine)
            if odd:
                errors = {s: "masked release does not match the other sites' vectors (keys or "
                          "lengths)" for s in odd}
            entry: dict[str, Any] = {"sites": survivors, "errors": errors}
            if not errors:
                try:
                    entry["sum"] = wire_release(add_masked([mine[s] for s in survivors]))
                except ProtocolError as exc:
                    entry["errors"] = {s: f"masked releases do not add up: {exc}"
                                       for s in survivors}
                if self._analyses[name].kind == "cox":
                    entry["signed"] = {s: wire_release(r) for s, r in mine.items()}
            state.pending[name] = entry
        for site, failure in failed.items():
            self._leave(state, site, failure)
        state.lost = sorted(failed)
        state.self_round = state.round
        state.participants = survivors
        state.phase = "rescreen" if failed else "unmask"
        if failed:
            logger.info("study %s: %d sites lost in the first masked round; the survivors "
                        "screen again and recover their masks", self.study.id, len(failed))

    def _unmask(self, state: RunState, got: Mapping[str, Answer]) -> None:
        """Rebuild the self-mask seeds (and dropped sites' mask keys) from the revealed shares
        and hand each strategy the survivors' exact sums of the self-masked round."""
        reveals = {}
        for site, answer in got.items():
            if isinstance(answer, Failure):
                continue
            release = next((r for r in answer if r.analysis == UNMASK), None)
            if release is not None and isinstance(release.metadata.get(REVEALED), dict):
                reveals[site] = release.metadata[REVEALED]
        try:
            announcements = {s: KeyAnnouncement.from_dict(a)
                             for s, a in state.announcements.items()}
            revealed = reconstruct_revealed(self.study.id, state.attempt, state.self_round,
                                            announcements, reveals, state.lost,
                                            state.participants)
        except ProtocolError as exc:
            refusals = {f.reason for f in got.values() if isinstance(f, Failure)}
            self._end(state, "the masks of the first analysis round could not be removed: "
                      + (next(iter(refusals)) if len(refusals) == 1 else str(exc)))
            return
        remember(revealed)
        state.revealed = {"round": state.self_round,
                          "seeds": {s: _enc(v) for s, v in revealed.seeds.items()},
                          "keys": {s: _enc(v) for s, v in revealed.keys.items()}}
        for name, entry in state.pending.items():
            sites = tuple(entry["sites"])
            if entry["errors"]:
                answers = Contributions({}, dict(entry["errors"]), sites, masked=True)
            else:
                try:
                    summed = unmask_sum([unwire_release(entry["sum"])], sites, revealed)
                    answers = Contributions({MASKED_SUM: summed}, {}, sites, masked=True,
                                            signed={s: unwire_release(b) for s, b in
                                                    entry.get("signed", {}).items()})
                except ProtocolError as exc:
                    answers = Contributions({}, {s: f"masked releases do not add up: {exc}"
                                                 for s in sites}, (), masked=True)
            self._combine(state, name, answers)
        state.pending = {}
        state.phase = "data" if self._running(state) else "done"

    def _rekey(self, state: RunState, failed: Mapping[str, Failure]) -> None:
        """Sites failed a masked round: drop them and start a new key exchange among the
        others (every site refusing for one reason ends the study with that reason)."""
        reasons = {f.reason for f in failed.values()}
        everyone = set(failed) == set(state.participants)
        if everyone and len(reasons) == 1 and not any(f.silent for f in failed.values()):
            for site, failure in failed.items():
                self._leave(state, site, failure)
            self._end(state, next(iter(reasons)))
            return
        # a site that went silent or restarted (its ephemeral key is gone) is asked to
        # rejoin with a new key; a site that refused stays out
        rejoin = sorted(s for s, f in failed.items() if f.silent or _restarted(f))
        for site, failure in failed.items():
            self._leave(state, site, failure)
        logger.info("study %s: %d sites lost in a masked round; new key exchange",
                    self.study.id, len(failed))
        state.participants = sorted(
            {s for s in state.participants if s not in failed} | set(rejoin))
        state.attempt += 1
        state.phase = "keys"
        state.analyses = {}
        state.sealed, state.screened = {}, []
        state.shares, state.lost, state.self_round = {}, [], 0
        state.pending, state.revealed = {}, {}
        self._enough_sites(state)

    def _contributions(self, name: str, askers: list[str], got: Mapping[str, Answer],
                       state: RunState) -> Contributions:
        releases: dict[str, Release] = {}
        failures: dict[str, str] = {}
        for site in askers:
            answer = got[site]
            if isinstance(answer, Failure):
                if site in state.participants and site in state.answered:
                    failures[site] = answer.reason
                continue
            release = next((r for r in answer if r.analysis == name), None)
            if release is None:
                failures[site] = "sent no release for this analysis"
            elif self.masked and release.error:
                failures[site] = release.error
            else:
                releases[site] = release
        if not self.masked:
            return Contributions(releases, failures, tuple(sorted(releases)), masked=False)
        if failures:
            return Contributions({}, failures, tuple(state.participants), masked=True)
        if any(r.metadata.get("overflow") for r in releases.values()):
            # a site's weights overflowed at these coefficients: no sum exists, the strategy
            # steps back (Cox halves the step), as it does unmasked
            kind = next(iter(releases.values())).kind
            overflow = Release(name, kind, {}, {"overflow": True})
            return Contributions({MASKED_SUM: overflow}, {}, tuple(state.participants),
                                 masked=True, signed=dict(releases))
        odd = _odd_shapes(releases)
        if odd:
            return Contributions({}, {s: "masked release does not match the other sites' "
                                      "vectors (keys or lengths)" for s in odd},
                                 tuple(state.participants), masked=True)
        try:
            summed = unmask_sum([releases[s] for s in state.participants])
        except (ProtocolError, KeyError, ValueError) as exc:
            return Contributions({}, {s: f"masked releases do not add up: {exc}"
                                      for s in state.participants}, (), masked=True)
        return Contributions({MASKED_SUM: summed}, {}, tuple(state.participants), masked=True,
                             signed=dict(releases))

    def _combine(self, state: RunState, name: str, answers: Contributions) -> None:
        strategy, st = self._strategy(name), self._state(state, name)
        try:
            strategy.combine(st, self._analyses[name], self.study, answers)
        except Exception as exc:  # a bug or an unforeseen answer ends this analysis only
            logger.exception("study %s: analysis %s failed", self.study.id, name)
            st.fail(f"pooling failed: {exc}")
        state.analyses[name] = strategy.dump(st)

    # -- helpers ---------------------------------------------------------------------------------

    def _strategy(self, name: str) -> Strategy[Any]:
        return self._strategies[name]

    def _state(self, state: RunState, name: str) -> Any:
        return self._strategy(name).load(state.analyses[name])

    def _running(self, state: RunState) -> list[str]:
        return [n for n in self._analyses if n in state.analyses
                and not state.analyses[n]["done"]]

    def _restart_analyses(self, state: RunState) -> None:
        sites = tuple(state.participants)
        state.analyses = {
            name: self._strategy(name).dump(self._strategy(name).start(a, self.study, sites))
            for name, a in self._analyses.items()}

    def _leave(self, state: RunState, site: str, failure: Failure) -> None:
        if site in state.answered:
            state.dropped[site] = failure.reason
            if not failure.silent:
                state.refused[site] = failure.reason or "refused without a reason"
        elif failure.silent:
            state.unreachable[site] = failure.reason
        else:
            state.refused[site] = failure.reason or "refused without a reason"
        state.participants = [s for s in state.participants if s != site]

    def _enough_sites(self, state: RunState) -> bool:
        if len(state.participants) >= self.study.privacy.min_sites:
            return True
        self._end(state, f"fewer than {self.study.privacy.min_sites} participating sites "
                         "(min_sites); no pooled release")
        return False

    def _end(self, state: RunState, reason: str) -> None:
        state.study_error = reason
        state.phase = "done"

    @staticmethod
    def _note_privacy(state: RunState, releases: tuple[Release, ...]) -> None:
        for r in releases:
            if "min_cell" in r.metadata and "min_bin_events" in r.metadata:
                pair = [int(r.metadata["min_cell"]), int(r.metadata["min_bin_events"])]
                if pair not in state.thresholds:
                    state.thresholds.append(pair)
            state.coarsened = state.coarsened or bool(r.metadata.get("coarsened"))


def _enc(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _restarted(failure: Failure) -> bool:
    """Whether a site refused a masked round only because it restarted (no key)."""
    return failure.reason.startswith(NO_EPHEMERAL_KEY)


def asked_names(asked: Mapping[str, tuple[Release, ...]]) -> set[str]:
    """Names of the analyses any site was asked about."""
    return {r.analysis for reqs in asked.values() for r in reqs}


def _odd_shapes(releases: Mapping[str, Release]) -> list[str]:
    """Sites whose vectors (names and shapes) differ from what most sites sent."""
    shapes = {site: tuple(sorted((k, np.shape(v)) for k, v in r.vectors.items()))
              for site, r in releases.items()}
    counts = Counter(shapes.values())
    if len(counts) < 2:
        return []
    common, n = counts.most_common(1)[0]
    if list(counts.values()).count(n) > 1:  # no majority: cannot tell who is wrong
        return sorted(releases)
    return sorted(site for site, shape in shapes.items() if shape != common)

"""Analyses answered in one round: every site sends its statistics once, they are pooled.

Kaplan-Meier, Nelson-Aalen, log-rank, cumulative incidence and adverse events all work so:
the strategy asks every participant for a ``summary``, checks each site's release on its own
(so a malformed one is named), and pools the usable ones with the kind's ``pool`` function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aggregator.strategy import AnalysisState, Contributions, Strategy
from analytics import AnalyticsError
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.rounds import summary_request
from protocol.study import Analysis, Study
from protocol.vocabulary import WITHHELD

__all__ = ["GroupedStrategy", "OneShotState", "OneShotStrategy"]



@dataclass
class OneShotState(AnalysisState):
    """State of a one-round analysis: who is asked, then the result."""

    sites: list[str] = field(default_factory=list)


class OneShotStrategy(Strategy[OneShotState]):
    """Base of the one-round kinds; subclasses give :meth:`check` and :meth:`pool`."""

    state_type = OneShotState

    def start(self, analysis: Analysis, study: Study, sites: tuple[str, ...]) -> OneShotState:
        return OneShotState(analysis.name, analysis.kind, sites=sorted(sites))

    def request(self, state: OneShotState, site: str) -> Release | None:
        if state.done or site not in state.sites:
            return None
        return summary_request(state.name, state.kind)

    def check(self, release: Release, analysis: Analysis, study: Study) -> None:
        """Raise :class:`ProtocolError` when one contributor's release is malformed."""

    def pool(self, analysis: Analysis, study: Study,
             releases: Mapping[str, Release]) -> dict[str, Any]:
        """Pool the usable releases into the analysis' results.json fields."""
        raise NotImplementedError

    def combine(self, state: OneShotState, analysis: Analysis, study: Study,
                answers: Contributions) -> None:
        state.done = True
        state.site_errors.update(answers.failures)
        usable: dict[str, Release] = {}
        for who, release in answers.releases.items():
            if release.error:
                state.site_errors[who] = release.error
                continue
            try:
                self.check(release, analysis, study)
            except (ProtocolError, ValueError, KeyError, TypeError) as exc:
                state.site_errors[who] = f"malformed release: {exc}"
                continue
            usable[who] = release
        sites = sorted(answers.sites) if answers.masked else sorted(usable)
        if not usable:
            reasons = sorted(set(state.site_errors.values()))
            state.fail("no site released this analysis"
                       + (f": {'; '.join(reasons)}" if reasons else ""))
            return
        if len(sites) < study.privacy.min_sites:
            state.fail(f"only {len(sites)} sites released this analysis, fewer than "
                       f"min_sites {study.privacy.min_sites}")
            return
        try:
            result = self.pool(analysis, study, usable)
        except (AnalyticsError, ProtocolError, ValueError) as exc:
            state.fail(str(exc))
            return
        withheld = sorted({str(g) for r in usable.values()
                           for g in r.metadata.get(WITHHELD) or []})
        if withheld:
            # groups a site (unmasked) or every site (screened, secure) withheld: never
            # shown, and no count says how small they were
            result["withheld_groups"] = withheld
        result["sites"] = sites
        result["time_resolution_days"] = max(
            int(r.metadata.get("time_resolution_days", 1)) for r in usable.values())
        state.result = result


class _Counts(Protocol):
    @property
    def n(self) -> int: ...


C = TypeVar("C", bound=_Counts)


class GroupedStrategy(OneShotStrategy, Generic[C]):
    """Base of the kinds whose releases hold per-group day counts of type ``C``.

    Subclasses give :meth:`decode` (one release's groups) and :meth:`add` (a group's sum).
    """

    def decode(self, release: Release, horizon: int) -> Mapping[str, C]:
        """The groups of one release (raises :class:`ProtocolError` when malformed)."""
        raise NotImplementedError

    def add(self, parts: list[C]) -> C:
        """One group's counts summed over the sites."""
        raise NotImplementedError

    def check(self, release: Release, analysis: Analysis, study: Study) -> None:
        self.decode(release, study.horizon_days)

    def groups(self, study: Study, releases: Iterable[Release]) -> dict[str, C]:
        """Each group's counts summed over ``releases``, by group name, sorted.

        Groups nobody is in are left out: fixed-shape (secure) releases carry every level.
        """
        releases = list(releases)
        withheld = {str(g) for r in releases for g in r.metadata.get(WITHHELD) or []}
        merged: dict[str, list[C]] = {}
        for release in releases:
            for name, counts in self.decode(release, study.horizon_days).items():
                if name not in withheld:
                    merged.setdefault(name, []).append(counts)
        pooled = {name: self.add(parts) for name, parts in sorted(merged.items())}
        return {name: c for name, c in pooled.items() if c.n > 0}

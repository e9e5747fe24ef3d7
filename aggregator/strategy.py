"""The interface every analysis kind implements: one strategy object per kind.

A study runs as rounds (:mod:`aggregator.run`). In each round a strategy says what every site
is asked about its analysis (:meth:`Strategy.request`), and when the round's answers are in it
combines them (:meth:`Strategy.combine`); it is done when it has a result or an error.
Strategies are pure: no I/O, no clock, state in a typed dataclass that round-trips through
JSON (:meth:`Strategy.dump`, :meth:`Strategy.load`), so a restarted aggregator resumes.

Secure aggregation is not the strategies' business: under it the runtime hands a strategy the
exact sum of every participant's release as the single contribution :data:`MASKED_SUM`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from protocol.codec import Release
from protocol.study import Analysis, Study

__all__ = ["MASKED_SUM", "AnalysisState", "Contributions", "Strategy"]

MASKED_SUM = "*"
"""Contributor name of the unmasked sum of all participants' releases (secure aggregation)."""


@dataclass(frozen=True)
class Contributions:
    """One round's answers about one analysis.

    Attributes
    ----------
    releases
        Usable releases by contributor: site ids, or under secure aggregation the single key
        :data:`MASKED_SUM` holding the exact sum over :attr:`sites`.
    failures
        Sites that were asked but gave no usable release, with the reason (naming the site's
        own words where it gave any).
    sites
        The sites whose data :attr:`releases` hold.
    masked
        Whether the round was masked (secure aggregation).
    signed
        Masked: every participant's own (masked, signed) release of this analysis, for a
        strategy that relays them so the nodes can check the sum themselves (Cox).
    """

    releases: Mapping[str, Release]
    failures: Mapping[str, str] = field(default_factory=dict)
    sites: tuple[str, ...] = ()
    masked: bool = False
    signed: Mapping[str, Release] = field(default_factory=dict)


@dataclass
class AnalysisState:
    """What every strategy state has: whether it is done, and its result or error."""

    name: str
    kind: str
    done: bool = False
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    site_errors: dict[str, str] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        """End the analysis with an error."""
        self.done, self.error = True, reason


S = TypeVar("S", bound=AnalysisState)


class Strategy(ABC, Generic[S]):
    """How one analysis kind runs over the network (see the module docstring)."""

    kinds: ClassVar[tuple[str, ...]]
    """The ``kind`` values of study analyses this strategy runs."""
    state_type: type[S]
    """The dataclass of this strategy's state (its fields are JSON-ready)."""

    @abstractmethod
    def start(self, analysis: Analysis, study: Study, sites: tuple[str, ...]) -> S:
        """The state before the first round, over the study's participants."""

    @abstractmethod
    def request(self, state: S, site: str) -> Release | None:
        """What ``site`` is asked in the next round (``None``: nothing)."""

    @abstractmethod
    def combine(self, state: S, analysis: Analysis, study: Study,
                answers: Contributions) -> None:
        """Update ``state`` from one round's answers (it may end the analysis)."""

    def result(self, state: S, analysis: Analysis) -> dict[str, Any]:
        """The analysis' entry of results.json."""
        base: dict[str, Any] = {"kind": state.kind}
        if analysis.endpoint:
            base["endpoint"] = analysis.endpoint
        if analysis.group_by:
            base["group_by"] = analysis.group_by
        if state.site_errors:
            base["site_errors"] = dict(sorted(state.site_errors.items()))
        if state.error:
            return {**base, "error": state.error}
        return {**base, **state.result}

    def dump(self, state: S) -> dict[str, Any]:
        """The state as JSON-ready data: its fields, not copied (they are JSON-ready already;
        ``dataclasses.asdict`` deep-copied every pooled table: 10 ms of a 60-patient KM)."""
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}

    def load(self, data: Mapping[str, Any]) -> S:
        """The state back from :meth:`dump`."""
        return self.state_type(**data)

"""Pool one round of per-site releases without a network: the one-round kinds' strategies.

For tools and tests that hold sites' unmasked releases (for example read back from an
aggregator database): the same strategies as a live study, run on one round of answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aggregator.strategies import OneShotStrategy, default_strategies
from aggregator.strategy import Contributions
from protocol.codec import Release
from protocol.study import Study

__all__ = ["pool_study"]


def pool_study(study: Study, releases: Mapping[str, Sequence[Release]]) -> dict[str, Any]:
    """Pool every one-round analysis of a study over the sites that released it.

    Parameters
    ----------
    study
        The verified study.
    releases
        Per site, its releases (one per analysis).

    Returns
    -------
    dict
        ``{"analyses": {name: result}}`` in the results.json format (Cox models, which need
        further rounds, are left out).
    """
    strategies = default_strategies()
    analyses: dict[str, Any] = {}
    for analysis in study.analyses:
        strategy = strategies[analysis.kind]
        if not isinstance(strategy, OneShotStrategy):
            continue
        state = strategy.start(analysis, study, tuple(sorted(releases)))
        mine = {site: r for site, rs in releases.items() for r in rs
                if r.analysis == analysis.name}
        strategy.combine(state, analysis, study, Contributions(mine, sites=tuple(sorted(mine))))
        analyses[analysis.name] = strategy.result(state, analysis)
    return {"analyses": analyses}

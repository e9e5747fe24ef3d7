"""One strategy per analysis kind (see :class:`aggregator.strategy.Strategy`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aggregator.strategies.adverse_events import AdverseEventStrategy
from aggregator.strategies.cox import CoxStrategy
from aggregator.strategies.cumulative_incidence import CumulativeIncidenceStrategy
from aggregator.strategies.one_shot import OneShotStrategy
from aggregator.strategies.survival import EstimatorStrategy, LogrankStrategy
from aggregator.strategy import Strategy

__all__ = [
    "AdverseEventStrategy",
    "CoxStrategy",
    "CumulativeIncidenceStrategy",
    "EstimatorStrategy",
    "LogrankStrategy",
    "OneShotStrategy",
    "default_strategies",
]


def default_strategies() -> Mapping[str, Strategy[Any]]:
    """Every analysis kind heron runs, by kind."""
    out: dict[str, Strategy[Any]] = {}
    for strategy in (EstimatorStrategy(), LogrankStrategy(), CumulativeIncidenceStrategy(),
                     AdverseEventStrategy(), CoxStrategy()):
        for kind in strategy.kinds:
            out[kind] = strategy
    return out

"""Pure survival computations on aggregate sufficient statistics.

Sites turn individual data into :class:`SurvivalCounts`; the aggregator pools them and runs the
estimators here, which equal the same analysis on the pooled individual-level data.
"""

from analytics.disclosure import CoarsenedCounts, coarsen_counts, round_up_to_bins, suppress_count
from analytics.errors import AnalyticsError, DisclosureError, EstimationError
from analytics.kaplan_meier import RMST, KaplanMeierResult, TimepointEstimate, kaplan_meier
from analytics.logrank import LogRankResult, logrank
from analytics.nelson_aalen import CumulativeHazardEstimate, NelsonAalenResult, nelson_aalen
from analytics.survival_counts import SurvivalCounts, pool_counts, survival_counts

__all__ = [
    "RMST",
    "AnalyticsError",
    "CoarsenedCounts",
    "CumulativeHazardEstimate",
    "DisclosureError",
    "EstimationError",
    "KaplanMeierResult",
    "LogRankResult",
    "NelsonAalenResult",
    "SurvivalCounts",
    "TimepointEstimate",
    "coarsen_counts",
    "kaplan_meier",
    "logrank",
    "nelson_aalen",
    "pool_counts",
    "round_up_to_bins",
    "suppress_count",
    "survival_counts",
]

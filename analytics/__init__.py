"""Pure survival computations on aggregate sufficient statistics.

Sites turn individual data into :class:`SurvivalCounts`; the aggregator pools them and runs the
estimators here, which equal the same analysis on the pooled individual-level data.
"""

from analytics.adverse_events import (
    AdverseEventStats,
    adverse_event_stats,
    ae_term_result,
    median_from_histogram,
    poisson_rate_ci,
    proportion_ci,
)
from analytics.competing_counts import CompetingCounts, competing_counts, pool_competing
from analytics.cumulative_incidence import (
    CumulativeIncidenceResult,
    IncidenceAt,
    cumulative_incidence,
)
from analytics.disclosure import (
    CoarsenedCompeting,
    CoarsenedCounts,
    coarsen_competing,
    coarsen_counts,
    round_up_to_bins,
    suppress_count,
)
from analytics.errors import AnalyticsError, DisclosureError, EstimationError
from analytics.gray import GrayResult, gray_test
from analytics.kaplan_meier import RMST, KaplanMeierResult, TimepointEstimate, kaplan_meier
from analytics.logrank import LogRankResult, logrank
from analytics.nelson_aalen import CumulativeHazardEstimate, NelsonAalenResult, nelson_aalen
from analytics.survival_counts import SurvivalCounts, pool_counts, survival_counts

__all__ = [
    "RMST",
    "AdverseEventStats",
    "AnalyticsError",
    "CoarsenedCompeting",
    "CoarsenedCounts",
    "CompetingCounts",
    "CumulativeHazardEstimate",
    "CumulativeIncidenceResult",
    "DisclosureError",
    "EstimationError",
    "GrayResult",
    "IncidenceAt",
    "KaplanMeierResult",
    "LogRankResult",
    "NelsonAalenResult",
    "SurvivalCounts",
    "TimepointEstimate",
    "adverse_event_stats",
    "ae_term_result",
    "coarsen_competing",
    "coarsen_counts",
    "competing_counts",
    "cumulative_incidence",
    "gray_test",
    "kaplan_meier",
    "logrank",
    "median_from_histogram",
    "nelson_aalen",
    "poisson_rate_ci",
    "pool_competing",
    "pool_counts",
    "proportion_ci",
    "round_up_to_bins",
    "suppress_count",
    "survival_counts",
]

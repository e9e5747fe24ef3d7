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
from analytics.cox import CoxResult, cox_result
from analytics.cox_bins import (
    MAX_NEWTON_ROUNDS,
    MAX_NEWTON_STEPS,
    MIN_BIN_EVENTS,
    CoxStep,
    bin_index,
    cox_bins,
    cox_step,
    pooled_derivatives,
)
from analytics.cox_stats import CoxDayStats
from analytics.cox_sums import CoxRows, cox_day_stats, cox_rows
from analytics.cumulative_incidence import (
    CumulativeIncidenceResult,
    IncidenceAt,
    cumulative_incidence,
)
from analytics.disclosure import (
    CoarsenedColumns,
    CoarsenedCompeting,
    CoarsenedCounts,
    CountColumns,
    coarsen_columns,
    coarsen_competing,
    coarsen_counts,
    round_up_to_bins,
    suppress_count,
)
from analytics.efron import (
    CoxDerivatives,
    efron_derivatives,
    site_derivatives,
    stratum_derivatives,
)
from analytics.errors import (
    AnalyticsError,
    DisclosureError,
    EstimationError,
    NumericalOverflowError,
)
from analytics.gray import GrayResult, gray_test
from analytics.kaplan_meier import RMST, KaplanMeierResult, TimepointEstimate, kaplan_meier
from analytics.logrank import LogRankResult, logrank, logrank_from_terms, stratum_terms
from analytics.nelson_aalen import CumulativeHazardEstimate, NelsonAalenResult, nelson_aalen
from analytics.newton import NewtonState, fit_cox, newton_start, newton_update
from analytics.suppression import hide_cells, withhold_groups
from analytics.survival_counts import SurvivalCounts, pool_counts, survival_counts

__all__ = [
    "MAX_NEWTON_ROUNDS",
    "MAX_NEWTON_STEPS",
    "MIN_BIN_EVENTS",
    "RMST",
    "AdverseEventStats",
    "AnalyticsError",
    "CoarsenedColumns",
    "CoarsenedCompeting",
    "CoarsenedCounts",
    "CompetingCounts",
    "CountColumns",
    "CoxDayStats",
    "CoxDerivatives",
    "CoxResult",
    "CoxRows",
    "CoxStep",
    "CumulativeHazardEstimate",
    "CumulativeIncidenceResult",
    "DisclosureError",
    "EstimationError",
    "GrayResult",
    "IncidenceAt",
    "KaplanMeierResult",
    "LogRankResult",
    "NelsonAalenResult",
    "NewtonState",
    "NumericalOverflowError",
    "SurvivalCounts",
    "TimepointEstimate",
    "adverse_event_stats",
    "ae_term_result",
    "bin_index",
    "coarsen_columns",
    "coarsen_competing",
    "coarsen_counts",
    "competing_counts",
    "cox_bins",
    "cox_day_stats",
    "cox_result",
    "cox_rows",
    "cox_step",
    "cumulative_incidence",
    "efron_derivatives",
    "fit_cox",
    "gray_test",
    "hide_cells",
    "kaplan_meier",
    "logrank",
    "logrank_from_terms",
    "median_from_histogram",
    "nelson_aalen",
    "newton_start",
    "newton_update",
    "poisson_rate_ci",
    "pool_competing",
    "pool_counts",
    "pooled_derivatives",
    "proportion_ci",
    "round_up_to_bins",
    "site_derivatives",
    "stratum_derivatives",
    "stratum_terms",
    "suppress_count",
    "survival_counts",
    "withhold_groups",
]

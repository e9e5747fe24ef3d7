"""What a study analyses at the site: the cohort, its endpoints and its Cox covariates."""

from node.cohorts.cohort import TableSource, select_cohort
from node.cohorts.covariates import Design, build_design
from node.cohorts.endpoints import competing_endpoint, group_labels, survival_endpoint

__all__ = ["Design", "TableSource", "build_design", "competing_endpoint", "group_labels",
           "select_cohort", "survival_endpoint"]

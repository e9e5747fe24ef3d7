"""Upper limits of every size parameter of a study (docs/study-format.md, "Limits").

A study fixes how much every node allocates: per-day vectors of ``horizon_days + 1`` (or
``window_days + 1``) entries per group, term and timepoint, Newton-step sums per covariate, one
release per analysis. The study parser (:mod:`protocol.study`) rejects a value above its limit
with an error naming the field and the limit, and nodes parse every signed study with the same
parser, so a study can never make a node allocate more than these bounds allow.

The limits are generous for outcomes research on advanced therapies: 20 years of follow-up
(gene-therapy long-term follow-up runs for 15), a hundred reporting days per analysis, fifty
analyses per study.
"""

from __future__ import annotations

__all__ = [
    "MAX_AGE_YEARS",
    "MAX_ANALYSES",
    "MAX_COVARIATES",
    "MAX_HORIZON_DAYS",
    "MAX_ID_LENGTH",
    "MAX_LIST_VALUES",
    "MAX_MIN_SITES",
    "MAX_NAME_LENGTH",
    "MAX_STUDY_BYTES",
    "MAX_TERMS",
    "MAX_TIMEPOINTS",
    "MAX_TITLE_LENGTH",
    "MAX_VALUE_LENGTH",
    "MAX_WINDOW_DAYS",
]

#: ``horizon_days``: 20 years of follow-up (20 x 365.25 days).
MAX_HORIZON_DAYS = 7305
#: ``window_days`` of an adverse-events analysis: as long as the longest horizon.
MAX_WINDOW_DAYS = 7305
#: ``timepoints`` per analysis.
MAX_TIMEPOINTS = 100
#: ``analyses`` per study.
MAX_ANALYSES = 50
#: ``covariates`` per Cox analysis.
MAX_COVARIATES = 20
#: ``terms`` per adverse-events analysis (the data model has 11).
MAX_TERMS = 20
#: values in each cohort list (``atmp_class``, ``route``, ``origin``, ``product``,
#: ``indication_group``, ``sex``, ``disease_status``) and in ``censor_at``.
MAX_LIST_VALUES = 100
#: characters of ``id`` (its pattern ``[a-z0-9][a-z0-9-]{2,63}`` says the same).
MAX_ID_LENGTH = 64
#: characters of ``title``.
MAX_TITLE_LENGTH = 200
#: characters of an analysis ``name`` (a key in results.json).
MAX_NAME_LENGTH = 64
#: characters of any other string: cohort values, covariates, terms, endpoints.
MAX_VALUE_LENGTH = 100
#: ``privacy.min_sites``.
MAX_MIN_SITES = 1000
#: ``cohort.age_at_infusion`` bounds, in years.
MAX_AGE_YEARS = 150
#: bytes of a study document (YAML or JSON) handed to the parser; a study within every
#: other limit is far smaller.
MAX_STUDY_BYTES = 1024 * 1024

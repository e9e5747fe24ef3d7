"""The Cox design convention shared by sites and aggregator: covariates and their columns.

Numeric covariates enter as they are; a categorical covariate becomes indicator columns
``"<covariate>=<level>"`` against its first level (in sorted order) present in the pooled
cohort, as R's and patsy's treatment coding. Sites build their matrices from these column
names; the aggregator chooses them from the levels the sites report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from protocol.errors import StudyFormatError

__all__ = ["CATEGORICAL_COVARIATES", "LAB_PREFIX", "NUMERIC_COVARIATES", "check_covariates",
           "design_columns", "is_categorical"]

NUMERIC_COVARIATES = ("age_at_infusion", "ecog", "prior_lines")
CATEGORICAL_COVARIATES = ("sex", "route", "origin", "disease_status", "atmp_class", "product",
                          "indication_group")
LAB_PREFIX = "lab:"


def is_categorical(covariate: str) -> bool:
    """Whether ``covariate`` is coded as indicator columns."""
    return covariate in CATEGORICAL_COVARIATES


def check_covariates(covariates: Sequence[str]) -> tuple[str, ...]:
    """The covariates as a tuple.

    Raises
    ------
    StudyFormatError
        For an unknown, empty or repeated covariate name.
    """
    if isinstance(covariates, str):
        covariates = [covariates]
    seen: set[str] = set()
    for cov in covariates:
        known = (cov in NUMERIC_COVARIATES or cov in CATEGORICAL_COVARIATES
                 or (isinstance(cov, str) and cov.startswith(LAB_PREFIX)
                     and len(cov) > len(LAB_PREFIX)))
        if not known:
            raise StudyFormatError(
                f"covariate {cov!r} is unknown; use one of "
                f"{', '.join(NUMERIC_COVARIATES + CATEGORICAL_COVARIATES)} or lab:<measurement>")
        if cov in seen:
            raise StudyFormatError(f"covariate {cov!r} is listed twice")
        seen.add(cov)
    return tuple(covariates)


def design_columns(covariates: Sequence[str],
                   pooled_levels: Mapping[str, Sequence[str]]) -> list[str]:
    """Columns of the pooled Cox design.

    Numeric covariates give one column each (their name). A categorical covariate gives
    ``"<covariate>=<level>"`` for every pooled level except the first in sorted order, the
    reference ("indicators against the first level present"). A categorical covariate with a
    single pooled level (or none) gives no column; the caller reports it.

    Parameters
    ----------
    covariates : sequence of str
        The study's covariates, in order.
    pooled_levels : mapping
        Categorical covariate -> levels present at any site (duplicates allowed).
    """
    out: list[str] = []
    for cov in check_covariates(covariates):
        if not is_categorical(cov):
            out.append(cov)
            continue
        if cov not in pooled_levels:
            raise ValueError(f"pooled_levels has no entry for categorical covariate {cov!r}")
        levels = sorted({str(v) for v in pooled_levels[cov]})
        out.extend(f"{cov}={level}" for level in levels[1:])
    return out

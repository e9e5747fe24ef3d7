"""k-group log-rank test, optionally stratified (one stratum per site), from per-day counts.

With one stratum the statistic equals lifelines' ``multivariate_logrank_test`` (and
``logrank_test`` for two groups); with several strata it equals the stratified test of
``statsmodels.duration.survfunc.survdiff(..., strata=site)`` and R's
``survdiff(... + strata(site))``: observed-minus-expected vectors and hypergeometric covariance
matrices are summed over strata before forming the quadratic form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import chi2

from analytics._event_table import json_float
from analytics.errors import EstimationError
from analytics.survival_counts import SurvivalCounts

__all__ = ["LogRankResult", "logrank"]


@dataclass(frozen=True)
class LogRankResult:
    """Result of a (stratified) log-rank test.

    Attributes
    ----------
    statistic : float
        Chi-square statistic ``(O - E)' V^- (O - E)`` on the first ``k - 1`` groups.
    df : int
        Degrees of freedom, ``k - 1`` for the ``k`` groups with subjects.
    p_value : float
        Upper tail of the chi-square distribution.
    observed, expected : dict[str, float]
        Events observed and expected under the null in each group, summed over strata.
    """

    statistic: float
    df: int
    p_value: float
    observed: dict[str, float]
    expected: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Body of a ``logrank`` analysis in results.json (JSON-ready)."""
        return {
            "statistic": json_float(self.statistic),
            "df": int(self.df),
            "p_value": json_float(self.p_value),
            "groups": {
                g: {
                    "observed": json_float(self.observed[g]),
                    "expected": json_float(self.expected[g]),
                }
                for g in self.observed
            },
        }


def _stratum_terms(
    stratum: Mapping[str, SurvivalCounts], groups: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Observed, expected and covariance matrix of one stratum (zeros for absent groups)."""
    k = len(groups)
    present = [g for g in groups if g in stratum]
    if not present:
        return np.zeros(k), np.zeros(k), np.zeros((k, k))
    horizons = {stratum[g].horizon for g in present}
    if len(horizons) != 1:
        raise ValueError(f"groups of one stratum must share a horizon, got {sorted(horizons)}")
    size = horizons.pop() + 1
    events = np.zeros((k, size))
    at_risk = np.zeros((k, size))
    for i, g in enumerate(groups):
        if g in stratum:
            events[i] = stratum[g].events
            at_risk[i] = stratum[g].at_risk
    d = events.sum(axis=0)
    n = at_risk.sum(axis=0)
    keep = d > 0
    events, at_risk, d, n = events[:, keep], at_risk[:, keep], d[keep], n[keep]

    observed = events.sum(axis=1)
    expected = (at_risk * (d / n)).sum(axis=1)
    # Hypergeometric covariance: d (n - d) / (n^2 (n - 1)) * (n diag(n_g) - n_g n_l'),
    # with (n - d) / (n - 1) read as 1 when n == 1 (the term is zero then), as in lifelines.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n > 1, (n - d) / (n - 1), 1.0)
    factor = ratio * d / n**2
    weighted = at_risk * factor
    covariance = np.diag(weighted @ n) - weighted @ at_risk.T
    return observed, expected, covariance


def logrank(strata: Sequence[Mapping[str, SurvivalCounts]]) -> LogRankResult:
    """Log-rank test comparing groups, stratified when several strata are given.

    Parameters
    ----------
    strata : sequence of mapping
        One mapping per stratum (e.g. per site) from group label to that group's counts in
        the stratum. A group missing from a stratum contributes nothing there. Pass a
        single mapping (``[counts_by_group]``) for the unstratified test on pooled counts.

    Returns
    -------
    LogRankResult
        Groups are ordered by label; groups without subjects in any stratum are left out.

    Raises
    ------
    EstimationError
        If fewer than two groups have subjects or there is no event at all.
    ValueError
        If the groups of one stratum have different horizons.
    TypeError
        If ``strata`` is a single mapping rather than a sequence of them.
    """
    if isinstance(strata, Mapping):
        raise TypeError("strata must be a sequence of mappings; wrap one mapping in a list")
    strata = list(strata)
    labels: set[str] = set()
    for stratum in strata:
        labels.update(g for g, c in stratum.items() if c.n > 0)
    groups = sorted(labels)
    if len(groups) < 2:
        raise EstimationError(
            f"the log-rank test needs at least two groups with subjects, got {len(groups)}"
        )
    k = len(groups)
    observed = np.zeros(k)
    expected = np.zeros(k)
    covariance = np.zeros((k, k))
    for stratum in strata:
        o, e, v = _stratum_terms({g: c for g, c in stratum.items() if g in labels}, groups)
        observed += o
        expected += e
        covariance += v
    return logrank_from_terms(groups, observed, expected, covariance)


def stratum_terms(
    stratum: Mapping[str, SurvivalCounts], groups: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Observed and expected events per group and their covariance, for one stratum.

    Sums of these over strata (e.g. over sites, masked) give the stratified test through
    :func:`logrank_from_terms`.
    """
    return _stratum_terms(stratum, groups)


def logrank_from_terms(groups: Sequence[str], observed: NDArray[np.float64],
                       expected: NDArray[np.float64],
                       covariance: NDArray[np.float64]) -> LogRankResult:
    """The k-group test from observed, expected and covariance summed over strata.

    ``groups`` must hold only groups with subjects (drop empty ones first), in order.
    """
    groups = list(groups)
    k = len(groups)
    if k < 2:
        raise EstimationError(
            f"the log-rank test needs at least two groups with subjects, got {k}")
    if observed.sum() == 0:
        raise EstimationError("the log-rank test needs at least one event")

    # Drop the last group and use a generalized inverse, as lifelines does.
    z = (observed - expected)[:-1]
    statistic = float(z @ np.linalg.pinv(covariance[:-1, :-1]) @ z)
    df = k - 1
    return LogRankResult(
        statistic=statistic,
        df=df,
        p_value=float(chi2.sf(statistic, df)),
        observed={g: float(o) for g, o in zip(groups, observed, strict=True)},
        expected={g: float(e) for g, e in zip(groups, expected, strict=True)},
    )

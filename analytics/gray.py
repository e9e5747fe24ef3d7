"""Gray's (1988) k-sample test for equal cumulative incidence of cause 1, from per-day counts.

Follows the score and variance of R cmprsk's ``crstm`` (Fortran ``crst``, one stratum,
``rho`` the weight exponent, 0 by default as in ``cuminc``), which uses the data only through
each group's numbers at risk, events of cause 1, events of cause 2 and censorings at each time.
Tied events of one day are processed together, as in ``crst``. The statistic
``s' V^- s`` on the scores of the first ``k - 1`` groups (ordered by label) is chi-square with
``k - 1`` degrees of freedom under the null.

Reference values: ``cuminc(ftime, Status, D)`` on the ``bmtcrr`` data of Scrucca, Santucci and
Aversa (2010, Bone Marrow Transplant 45:1388) gives 2.8623325 (p 0.09067592) for cause 1 and
0.4481279 (p 0.50322531) for cause 2 (tests/test_analytics_cif_gray.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy.stats import chi2

from analytics._event_table import json_float
from analytics.competing_counts import CompetingCounts
from analytics.errors import EstimationError

__all__ = ["GrayResult", "gray_test"]

_FloatT = TypeVar("_FloatT", bound=np.floating)


@dataclass(frozen=True)
class GrayResult:
    """Result of Gray's test.

    Attributes
    ----------
    statistic : float
        Chi-square statistic ``s' V^- s`` on the first ``k - 1`` groups.
    df : int
        Degrees of freedom, ``k - 1`` for the ``k`` groups with subjects.
    p_value : float
        Upper tail of the chi-square distribution.
    """

    statistic: float
    df: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"statistic", "df", "p_value"}``."""
        return {
            "statistic": json_float(self.statistic),
            "df": int(self.df),
            "p_value": json_float(self.p_value),
        }


def _before(values: NDArray[_FloatT], first: float) -> NDArray[_FloatT]:
    """Left-continuous version of a per-row curve along the last axis."""
    out = np.empty_like(values)
    out[..., 0] = first
    out[..., 1:] = values[..., :-1]
    return out


def _score_and_variance(
    rs: NDArray[np.float64], d1: NDArray[np.float64], d2: NDArray[np.float64], rho: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Scores (k,) and their covariance (k, k) over event days; arrays are (k groups, days)."""
    pos = rs > 0
    safe_rs = np.where(pos, rs, 1.0)
    # Per-group all-cause KM (skm / skmm) and cause-1 incidence (f1m), as in crst.
    survives: NDArray[np.float64] = np.where(pos, (safe_rs - d1 - d2) / safe_rs, 1.0)
    skm = np.cumprod(survives, axis=1)
    skmm = _before(skm, 1.0)
    f1m = _before(np.cumsum(np.where(pos, skmm * d1 / safe_rs, 0.0), axis=1), 0.0)
    t1 = np.where(pos, rs / np.where(pos, skmm, 1.0), 0.0)  # rs / skmm: R_r in Gray (1988)
    tr = t1.sum(axis=0)
    tq = np.where(pos, t1 * (1.0 - f1m), 0.0).sum(axis=0)
    nd1 = d1.sum(axis=0)
    f = np.cumsum(nd1 / tr)
    fm = _before(f, 0.0)
    fb = (1.0 - fm) ** rho

    score = (fb * (d1 - nd1 * np.where(pos, t1 * (1.0 - f1m), 0.0) / tq)).sum(axis=1)

    # a[t] = fb (diag(t1) - t1 t1' / tr); c = running sum of a nd1 / (tr (1 - fm)).
    k = rs.shape[0]
    a = fb[:, None, None] * (
        np.eye(k)[None] * t1.T[:, :, None] - t1.T[:, :, None] * t1.T[:, None, :] / tr[:, None, None]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(nd1 > 0, nd1 / (tr * (1.0 - fm)), 0.0)
    c = np.cumsum(a * weight[:, None, None], axis=0)

    safe_skm = np.where(skm > 0, skm, 1.0)
    # Cause-1 terms (days with nd1 > 0, groups at risk).
    t4 = np.where(skm > 0, 1.0 - (1.0 - f) / safe_skm, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t5 = np.where(nd1 > 1, 1.0 - (nd1 - 1.0) / (tr * skmm - 1.0), 1.0)
    t3 = np.where(pos & (nd1 > 0), t5 * skmm * nd1 / (tr * safe_rs), 0.0)
    v3 = (t4 * t4 * t3).sum(axis=1)
    u = a - t4.T[:, None, :] * c  # u[t, i, k] = a(i, k) - t4(k) c(i, k)
    v2 = np.einsum("tik,kt->ik", u, t4 * t3)
    v = np.einsum("tik,tjk,kt->ij", u, u, t3)

    # Cause-2 terms (groups with competing events and skm > 0).
    use2 = (skm > 0) & (d2 > 0) & pos
    t4 = (1.0 - f) / safe_skm
    with np.errstate(divide="ignore", invalid="ignore"):
        t5 = np.where(d2 > 1, 1.0 - (d2 - 1.0) / (rs - 1.0), 1.0)
    t3 = np.where(use2, t5 * skmm**2 * d2 / safe_rs**2, 0.0)
    v3 += (t4 * t4 * t3).sum(axis=1)
    w = t4 * t4 * t3
    v2 -= np.einsum("tik,kt->ik", c, w)
    v += np.einsum("tik,tjk,kt->ij", c, c, w)

    c_end = c[-1]
    v += (c_end * v3) @ c_end.T + c_end @ v2.T + v2 @ c_end.T
    return score, v


def gray_test(groups: Mapping[str, CompetingCounts], rho: float = 0.0) -> GrayResult:
    """Gray's test comparing the cumulative incidence of cause 1 across groups.

    Parameters
    ----------
    groups : mapping
        Group label to that group's (pooled) competing-risks counts, all with one horizon.
    rho : float
        Weight exponent: scores are weighted by ``(1 - F(t-))^rho`` (0 as in ``cuminc``).

    Returns
    -------
    GrayResult
        Groups are ordered by label; groups without subjects are left out.

    Raises
    ------
    EstimationError
        If fewer than two groups have subjects or there is no event of cause 1.
    ValueError
        If the groups have different horizons.
    """
    labels = sorted(g for g, c in groups.items() if c.n > 0)
    if len(labels) < 2:
        raise EstimationError(
            f"Gray's test needs at least two groups with subjects, got {len(labels)}"
        )
    horizons = {groups[g].horizon for g in labels}
    if len(horizons) != 1:
        raise ValueError(f"groups must share a horizon, got {sorted(horizons)}")
    rs = np.array([groups[g].at_risk for g in labels], dtype=np.float64)
    d1 = np.array([groups[g].cause1 for g in labels], dtype=np.float64)
    d2 = np.array([groups[g].cause2 for g in labels], dtype=np.float64)
    if d1.sum() == 0:
        raise EstimationError("Gray's test needs at least one event of cause 1")
    days = np.flatnonzero((d1 + d2).sum(axis=0) > 0)  # crst skips days without events
    score, v = _score_and_variance(rs[:, days], d1[:, days], d2[:, days], float(rho))
    s = score[:-1]
    statistic = float(s @ np.linalg.pinv(v[:-1, :-1]) @ s)
    df = len(labels) - 1
    return GrayResult(statistic=statistic, df=df, p_value=float(chi2.sf(statistic, df)))

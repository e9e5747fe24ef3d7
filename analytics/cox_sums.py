"""A site's per-day Cox sums, from its subjects sorted once (one answer per Newton round).

The subjects never change between the rounds of one fit, only the coefficients do. So
:func:`cox_rows` validates them and sorts them once by (day, event first); each round
(:meth:`CoxRows.day_stats`) then computes the weights ``exp(x'beta)`` and their ``1 + p +
p (p + 1) / 2`` weighted moments (``w``, ``w x`` and the upper triangle of ``w x x'``) in
covariate-major arrays and sums them per (day, event) group with one ``np.add.reduceat``;
the risk-set sums are reverse cumulative sums over the days. :func:`cox_day_stats` is the
one-shot form (sort and evaluate).

Sums are the same as a per-day ``bincount`` of every subject's terms up to floating-point
rounding (additions in another order). The products over all subjects use ``einsum``, not
BLAS (whose threads stall on a busy machine), and the centred covariates are kept between
rounds of one centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics.cox_stats import CoxDayStats, expected_lengths
from analytics.errors import NumericalOverflowError

__all__ = ["CoxRows", "cox_day_stats", "cox_rows"]

_MAX_EXPONENT = 700.0  # exp(+-700) stays a normal float64 with room for sums


def _check_individuals(
    durations: ArrayLike, events: ArrayLike, X: ArrayLike
) -> tuple[NDArray[np.integer | np.floating], NDArray[np.bool_], NDArray[np.float64]]:
    t = np.asarray(durations)
    e = np.asarray(events)
    x = np.asarray(X, dtype=np.float64)
    if t.ndim != 1 or e.ndim != 1:
        raise ValueError("durations and events must be 1-D")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"X must be a 2-D array with at least one covariate, got {x.shape}")
    if not t.size == e.size == x.shape[0]:
        raise ValueError(
            f"durations, events and X differ in length ({t.size}, {e.size}, {x.shape[0]})"
        )
    if t.size and not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)):
        raise ValueError(f"durations must be numeric, got dtype {t.dtype}")
    if t.size and (not np.all(np.isfinite(t)) or np.any(t != np.floor(t)) or np.any(t < 0)):
        raise ValueError("durations must be finite whole days >= 0")
    if e.size and not np.all((e == 0) | (e == 1)):
        raise ValueError("events must be 0/1 or boolean")
    if not np.all(np.isfinite(x)):
        raise ValueError("covariates must be finite (no missing values)")
    return t, e.astype(bool), x


def _vector(values: ArrayLike, p: int, name: str) -> NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (p,):
        raise ValueError(f"{name} must have shape ({p},), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite")
    return v


def _dot(b: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``b @ x`` for a short ``b`` and a wide ``x``, without BLAS: a matrix-vector product
    of this shape is a few hundred microseconds in one thread, but BLAS's threads, waiting
    on two cores shared with the other sites' processes, made it tens of milliseconds."""
    out: NDArray[np.float64] = np.einsum("i,ij->j", b, x)
    return out


@dataclass(frozen=True, eq=False)
class CoxRows:
    """One site's subjects sorted by (day, event first), ready for any number of rounds.

    Attributes
    ----------
    horizon : int
        Last day of the grid (a duration beyond it is a censoring on the horizon).
    x : numpy.ndarray
        ``(p, n)`` covariates, covariate-major, in sorted order.
    observed : numpy.ndarray
        ``(n,)`` float 1.0 for an event (on or before the horizon), else 0.0.
    starts, group_day, group_event : numpy.ndarray
        First row, day and event flag of each (day, event) group of the sorted rows.
    d : numpy.ndarray
        ``(horizon + 1,)`` events per day.
    means : numpy.ndarray or None
        Covariate means (``None`` without subjects): the centre of a stratum of its own.
    """

    horizon: int
    x: NDArray[np.float64]
    observed: NDArray[np.float64]
    starts: NDArray[np.intp]
    group_day: NDArray[np.int64]
    group_event: NDArray[np.bool_]
    d: NDArray[np.int64]
    means: NDArray[np.float64] | None
    _held: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def p(self) -> int:
        """Number of covariates."""
        return int(self.x.shape[0])

    @property
    def n(self) -> int:
        """Number of subjects."""
        return int(self.x.shape[1])

    def day_stats(self, beta: ArrayLike, centre: ArrayLike | None = None) -> CoxDayStats:
        """The per-day sums at ``beta`` (see :func:`cox_day_stats`).

        Raises
        ------
        NumericalOverflowError
            If a linear predictor lies outside ``[-700, 700]`` or a sum overflows.
        ValueError
            On a malformed ``beta`` or ``centre``.
        """
        p, size = self.p, self.horizon + 1
        b = _vector(beta, p, "beta")
        x = self.x if centre is None else self._centred(_vector(centre, p, "centre"))
        xb = _dot(b, x)
        if xb.size and not np.max(np.abs(xb)) <= _MAX_EXPONENT:
            raise NumericalOverflowError(
                f"exp(x'beta) leaves the float64 range at these coefficients (|x'beta| up to "
                f"{np.max(np.abs(xb)):.4g} > {_MAX_EXPONENT:g}): covariate values too large "
                "for this step"
            )
        iu = np.triu_indices(p)
        q = 1 + p + iu[0].size
        exits = np.zeros((q, size))
        events = np.zeros((q, size))
        if self.n:
            with np.errstate(over="ignore", invalid="ignore"):
                moments = np.empty((q, self.n))
                np.exp(xb, out=moments[0])
                np.multiply(x, moments[0], out=moments[1 : 1 + p])
                for k, (i, j) in enumerate(zip(iu[0], iu[1], strict=True)):
                    np.multiply(moments[1 + i], x[j], out=moments[1 + p + k])
                sums = np.add.reduceat(moments, self.starts, axis=1)
            if not np.all(np.isfinite(sums)):
                raise NumericalOverflowError(
                    "the weighted covariate sums overflow float64 at these coefficients"
                )
            ev = self.group_event
            exits[:, self.group_day[~ev]] = sums[:, ~ev]
            events[:, self.group_day[ev]] = sums[:, ev]
        with np.errstate(over="ignore", invalid="ignore"):  # CoxDayStats refuses non-finite
            exits += events
            risk = np.cumsum(exits[:, ::-1], axis=1)[:, ::-1]

        def split(
            sums: NDArray[np.float64],
        ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
            square = np.empty((size, p, p))
            square[:, iu[0], iu[1]] = sums[1 + p :].T
            square[:, iu[1], iu[0]] = sums[1 + p :].T
            return sums[0], sums[1 : 1 + p].T, square

        s0, s1, s2 = split(risk)
        e0, e1, e2 = split(events)
        return CoxDayStats(s0=s0, s1=s1, s2=s2, e0=e0, e1=e1, e2=e2, d=self.d,
                           event_x=np.einsum("ij,j->i", x, self.observed),
                           event_xb=float(np.einsum("j,j->", xb, self.observed)))

    def _centred(self, centre: NDArray[np.float64]) -> NDArray[np.float64]:
        """``x - centre``, computed once per centre (a fit sends the same one every round)."""
        held = self._held.get("centred")
        if held is not None and np.array_equal(held[0], centre):
            return held[1]  # type: ignore[no-any-return]
        out = self.x - centre[:, None]
        out.flags.writeable = False
        self._held["centred"] = (centre.copy(), out)
        return out


def cox_rows(durations: ArrayLike, events: ArrayLike, X: ArrayLike, horizon: int) -> CoxRows:
    """Validate and sort one site's subjects for :meth:`CoxRows.day_stats`.

    Parameters
    ----------
    durations : array_like
        Whole days since infusion (>= 0), one per subject.
    events : array_like
        1 (or True) for an event, 0 for a censoring.
    X : array_like
        ``(n, p)`` covariates, finite.
    horizon : int
        Last day; a duration beyond it is a censoring on day ``horizon``.

    Raises
    ------
    ValueError
        On malformed input.
    """
    size = expected_lengths(horizon, 1)["s0"]  # validates horizon
    t, e, x = _check_individuals(durations, events, X)
    beyond = t > horizon
    observed = e & ~beyond
    days = np.where(beyond, horizon, t).astype(np.int64)
    key = 2 * days + ~observed  # events first within a day
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else \
        np.zeros(0, dtype=np.intp)
    group = key[starts]
    return CoxRows(
        horizon=int(horizon),
        x=np.ascontiguousarray(x[order].T),
        observed=observed[order].astype(np.float64),
        starts=starts.astype(np.intp),
        group_day=group // 2,
        group_event=group % 2 == 0,
        d=np.bincount(days[observed], minlength=size).astype(np.int64),
        means=x.mean(axis=0) if t.size else None,
    )


def cox_day_stats(
    durations: ArrayLike,
    events: ArrayLike,
    X: ArrayLike,
    beta: ArrayLike,
    horizon: int,
    centre: ArrayLike | None = None,
) -> CoxDayStats:
    """One site's per-day Cox sums at ``beta`` from its individual-level data.

    Parameters
    ----------
    durations : array_like
        Whole days since infusion (>= 0), one per subject.
    events : array_like
        1 (or True) for an event, 0 for a censoring.
    X : array_like
        ``(n, p)`` covariates, finite.
    beta : array_like
        ``(p,)`` coefficients at which to evaluate the weights ``exp(x'beta)``.
    horizon : int
        Last day; a duration beyond it is a censoring on day ``horizon``.
    centre : array_like, optional
        ``(p,)`` values subtracted from every subject's covariates before anything is
        summed (default: none). The Efron log-likelihood and its derivatives do not depend
        on it, but it must be the same at every site of one round (never a site's own
        means). The aggregator should send the pooled covariate means, read off the pooled
        ``beta = 0`` statistics as ``s1[0] / s0[0]`` (everyone is at risk on day 0): large
        uncentred covariates (e.g. calendar years) otherwise overflow ``exp(x'beta)`` and
        lose digits in the second moments.

    Returns
    -------
    CoxDayStats

    Raises
    ------
    NumericalOverflowError
        If a linear predictor ``(x - centre)'beta`` lies outside ``[-700, 700]`` (its weight
        would overflow or underflow float64) or a sum overflows.
    ValueError
        On malformed input.
    """
    return cox_rows(durations, events, X, horizon).day_stats(beta, centre)

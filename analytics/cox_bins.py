"""Time bins of a federated Cox model, and the round logic both aggregator and sites run.

Per-day Cox sums at known coefficients give away patients: on a day with one death, ``e1 / e0``
is that patient's covariate vector, and consecutive risk-set sums differ by the patients who
left the risk set. A secure Cox model is therefore fitted on time bins chosen from the pooled
event table (:func:`cox_bins`): bins grow greedily from day 0 and close once they hold
``min_events`` events; trailing days without enough events join the last bin. Every bin then
holds at least ``min_events`` events and as many exits (events and censorings), so every
pooled per-bin sum (risk set, events, and the difference of two consecutive risk sets) covers
at least ``min_events`` patients. Follow-up is rounded up to the end of its bin
(:func:`bin_index` numbers the bins), ties within a bin are handled by Efron's method, so the
fit equals the Cox model (lifelines ``CoxPHFitter``) on the pooled data with durations rounded
up to the bin ends.

The aggregator may not choose the coefficients: sites recompute every Newton step from the
pooled sums of the previous round. :func:`pooled_derivatives` and :func:`cox_step` are the one
implementation both sides run, so from the same sums they reach bit-identical coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics._pooling import pool
from analytics.cox_stats import CoxDayStats
from analytics.efron import CoxDerivatives, efron_derivatives
from analytics.errors import DisclosureError
from analytics.newton import NewtonState, newton_update

__all__ = [
    "MAX_NEWTON_ROUNDS",
    "MAX_NEWTON_STEPS",
    "MIN_BIN_EVENTS",
    "CoxStep",
    "bin_index",
    "cox_bins",
    "cox_step",
    "pooled_derivatives",
]

MIN_BIN_EVENTS = 5
"""Fewest events (and exits) in a bin of a secure Cox model."""
MAX_NEWTON_STEPS = 50
"""Newton steps (halvings included) before a fit gives up."""
MAX_NEWTON_ROUNDS = MAX_NEWTON_STEPS + 2
"""Rounds of one fit: ``beta = 0``, the steps, and one at the optimum."""


def _counts(values: ArrayLike, name: str) -> NDArray[np.int64]:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector")
    if not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 0):
        raise ValueError(f"{name} must hold non-negative integer counts")
    return arr.astype(np.int64)


def cox_bins(events: ArrayLike, exits: ArrayLike,
             min_events: int = MIN_BIN_EVENTS) -> tuple[int, ...]:
    """Bin ends (days) from a pooled per-day event table over ``0..horizon``.

    Parameters
    ----------
    events, exits : array_like
        Per-day events and exits (events plus censorings) of the complete cases, length
        ``horizon + 1`` (exits on the horizon include everyone followed beyond it).
    min_events : int
        Fewest events per bin.

    Returns
    -------
    tuple of int
        Increasing bin ends, the last one the horizon; bin ``k`` covers days
        ``ends[k-1] + 1 .. ends[k]``. Every bin holds at least ``min_events`` events and exits.

    Raises
    ------
    DisclosureError
        With fewer than ``min_events`` events in all.
    ValueError
        On malformed counts (exits below events, unequal lengths).
    """
    ev, ex = _counts(events, "events"), _counts(exits, "exits")
    if ev.shape != ex.shape or np.any(ex < ev):
        raise ValueError("exits must have the length of events and include them")
    if int(ev.sum()) < min_events:
        raise DisclosureError(f"{int(ev.sum())} events in all, fewer than the {min_events} a "
                              "time bin needs")
    ends: list[int] = []
    held = 0
    for day, count in enumerate(ev.tolist()):
        held += count
        if held >= min_events:
            ends.append(day)
            held = 0
    ends[-1] = ev.size - 1  # trailing days without enough events join the last bin
    edges = np.concatenate([[0], np.asarray(ends[:-1]) + 1])
    for name, column in (("events", ev), ("exits", ex)):
        per_bin = np.add.reduceat(column, edges)
        if np.any(per_bin < min_events):  # cannot happen: the guarantee, checked
            raise DisclosureError(f"a time bin holds fewer than {min_events} {name}")
    return tuple(ends)


def bin_index(durations: ArrayLike, events: ArrayLike, horizon: int,
              bin_ends: Sequence[int]) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Each subject's bin number and event flag (follow-up beyond the horizon is censored on
    the horizon); :func:`~analytics.cox_sums.cox_day_stats` over ``horizon = len(bin_ends) -
    1`` then gives the per-bin sums."""
    days = np.asarray(durations, dtype=np.int64)
    observed = np.asarray(events, dtype=bool) & (days <= horizon)
    ends = np.asarray(bin_ends, dtype=np.int64)
    if ends.ndim != 1 or ends.size == 0 or ends[-1] != horizon or np.any(np.diff(ends) <= 0):
        raise ValueError(f"bin ends must increase up to the horizon {horizon}")
    return np.searchsorted(ends, np.minimum(days, horizon), side="left").astype(np.int64), \
        observed


def pooled_derivatives(parts: Sequence[CoxDayStats] | Sequence[CoxDerivatives] | None,
                       centre: tuple[float, ...] | None
                       ) -> tuple[CoxDerivatives | None, tuple[float, ...] | None]:
    """Derivatives of one round from its parts, added in the given order, and the centre.

    ``parts`` are per-bin sums (one stratum) or per-site derivatives (``strata: site``);
    ``None`` when some site's weights overflowed (no sum exists). The centre of later rounds
    is fixed at the first sums: the pooled covariate means ``s1[0] / s0[0]`` (everyone is at
    risk in the first bin).
    """
    if parts is None:
        return None, centre
    if all(isinstance(p, CoxDerivatives) for p in parts):
        return pool([p for p in parts if isinstance(p, CoxDerivatives)],
                    "no Cox derivatives to pool"), centre
    total = pool([p for p in parts if isinstance(p, CoxDayStats)], "no Cox sums to pool")
    if centre is None and total.s0[0] > 0:
        centre = tuple(float(v) for v in total.s1[0] / total.s0[0])
    return efron_derivatives(total), centre


@dataclass(frozen=True)
class CoxStep:
    """What follows a round: the Newton state, and whether another round is asked.

    Attributes
    ----------
    state : NewtonState
        After the update; the next round (if any) is at ``state.beta``.
    ask : bool
        Whether another round is asked.
    final : bool
        Whether that round only evaluates the optimum (after it the fit ends).
    """

    state: NewtonState
    ask: bool
    final: bool


def cox_step(newton: NewtonState, deriv: CoxDerivatives | None) -> CoxStep:
    """The Newton update after a round at ``newton.beta`` (``deriv`` None: overflow)."""
    evaluated = newton.beta
    nxt = newton_update(newton, deriv, max_iter=MAX_NEWTON_STEPS)
    if nxt.status == "failed":
        return CoxStep(nxt, ask=False, final=True)
    if nxt.status == "converged":
        return CoxStep(nxt, ask=not (nxt.beta == evaluated and deriv is not None), final=True)
    return CoxStep(nxt, ask=True, final=False)

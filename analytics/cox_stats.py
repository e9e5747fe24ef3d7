"""Per-day risk-set and event sums of a Cox model at given coefficients (one site's release).

For the unstratified federated Cox model every site returns, at the coefficients ``beta`` the
aggregator sent, weighted sums over the integer day grid ``0..horizon`` with
``w = exp(x'beta)``:

* over subjects at risk on day ``t`` (duration ``>= t``): ``s0 = sum w``, ``s1 = sum w x``,
  ``s2 = sum w x x'``;
* over subjects with the event on day ``t``: ``e0``, ``e1``, ``e2`` likewise, and the count
  ``d``;
* over all events: ``event_x = sum x`` and ``event_xb = sum x'beta``.

(``x`` minus ``centre`` throughout when a common centre is given.)

Every entry is a plain sum over subjects, so pooled statistics are the elementwise sums of the
sites' statistics and the Efron log-likelihood and its derivatives computed from them
(:mod:`analytics.efron`) equal those of the pooled individual-level data. Covariates are
centred only on values common to all sites (``centre``, e.g. the pooled means): a site's own
means would break the additivity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics._pooling import Pooled, flat_vectors
from analytics.errors import NumericalOverflowError

__all__ = ["CoxDayStats", "expected_lengths"]

_FLOAT_KEYS = ("s0", "s1", "s2", "e0", "e1", "e2")

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def _frozen(
    values: ArrayLike, shape: tuple[int, ...], name: str, dtype: type[_ScalarT]
) -> NDArray[_ScalarT]:
    arr = np.array(values, dtype=dtype, copy=True)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    arr.setflags(write=False)
    return arr


def _packed_length(p: int) -> int:
    return p * (p + 1) // 2


@dataclass(frozen=True, eq=False)
class CoxDayStats(Pooled):
    """Sufficient statistics of the unstratified Cox model at one ``beta``, per day.

    Attributes
    ----------
    s0, s1, s2 : numpy.ndarray
        Risk-set sums of ``w``, ``w x`` and ``w x x'``; shapes ``(T,)``, ``(T, p)``,
        ``(T, p, p)`` with ``T = horizon + 1``.
    e0, e1, e2 : numpy.ndarray
        The same sums over the subjects with the event on each day.
    d : numpy.ndarray
        int64 ``(T,)``: number of events on each day.
    event_x : numpy.ndarray
        ``(p,)``: sum of ``x`` over all events.
    event_xb : float
        Sum of the linear predictors ``(x - centre)'beta`` over all events (the log-weights
        of the events; see :func:`cox_day_stats`).

    Notes
    -----
    Arrays are read-only copies; ``a + b`` pools two sites (same horizon and ``p``) and the
    builtin ``sum`` works. Non-finite sums raise :class:`NumericalOverflowError`.
    """

    s0: NDArray[np.float64]
    s1: NDArray[np.float64]
    s2: NDArray[np.float64]
    e0: NDArray[np.float64]
    e1: NDArray[np.float64]
    e2: NDArray[np.float64]
    d: NDArray[np.int64]
    event_x: NDArray[np.float64]
    event_xb: float

    def __post_init__(self) -> None:
        s1 = np.asarray(self.s1)
        if s1.ndim != 2 or s1.shape[0] < 1 or s1.shape[1] < 1:
            raise ValueError(f"s1 must have shape (horizon + 1, p) with p >= 1, got {s1.shape}")
        size, p = s1.shape
        shapes = {
            "s0": (size,),
            "s1": (size, p),
            "s2": (size, p, p),
            "e0": (size,),
            "e1": (size, p),
            "e2": (size, p, p),
        }
        for key in _FLOAT_KEYS:
            object.__setattr__(self, key, _frozen(getattr(self, key), shapes[key], key, np.float64))
        d = np.asarray(self.d)
        if not (np.issubdtype(d.dtype, np.integer) or np.all(d == np.floor(d))):
            raise ValueError("d must hold integer counts")
        d = _frozen(d, (size,), "d", np.int64)
        if np.any(d < 0):
            raise ValueError("d must be non-negative")
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "event_x", _frozen(self.event_x, (p,), "event_x", np.float64))
        object.__setattr__(self, "event_xb", float(self.event_xb))
        finite = all(np.all(np.isfinite(getattr(self, k))) for k in (*_FLOAT_KEYS, "event_x"))
        if not finite or not np.isfinite(self.event_xb):
            raise NumericalOverflowError(
                "Cox risk-set sums are not finite: exp(x'beta) overflows at these coefficients"
            )

    @property
    def horizon(self) -> int:
        """Last day of the grid."""
        return int(self.s0.size - 1)

    @property
    def p(self) -> int:
        """Number of covariates."""
        return int(self.s1.shape[1])

    @property
    def n_events(self) -> int:
        """Total number of events."""
        return int(self.d.sum())

    def _check_poolable(self, other: CoxDayStats) -> None:
        if (self.horizon, self.p) != (other.horizon, other.p):
            raise ValueError(
                "cannot pool Cox statistics of different shapes "
                f"(horizon {self.horizon} vs {other.horizon}, p {self.p} vs {other.p})"
            )

    def to_vectors(self) -> dict[str, NDArray[np.float64] | NDArray[np.int64]]:
        """Flat vectors for transport and (masked) summation.

        Returns
        -------
        dict
            ``s0``, ``e0``: ``T`` floats; ``s1``, ``e1``: ``T * p`` (row-major ``(T, p)``);
            ``s2``, ``e2``: ``T * p (p + 1) / 2``, the upper triangle of each day's ``p x p``
            matrix in ``numpy.triu_indices(p)`` order; ``d``: ``T`` int64; ``event_x``:
            ``p``; ``event_xb``: 1. ``T = horizon + 1``. Lengths depend on
            ``(horizon, p)`` only, and the vectors of several sites add up to the vectors of
            the pooled statistics.
        """
        iu = np.triu_indices(self.p)
        return {
            "s0": self.s0.copy(),
            "s1": self.s1.ravel().copy(),
            "s2": self.s2[:, iu[0], iu[1]].ravel(),
            "e0": self.e0.copy(),
            "e1": self.e1.ravel().copy(),
            "e2": self.e2[:, iu[0], iu[1]].ravel(),
            "d": self.d.copy(),
            "event_x": self.event_x.copy(),
            "event_xb": np.array([self.event_xb]),
        }

    @classmethod
    def from_vectors(cls, vectors: Mapping[str, ArrayLike], horizon: int, p: int) -> CoxDayStats:
        """Rebuild statistics from :meth:`to_vectors` output (possibly summed over sites).

        Raises
        ------
        ValueError
            On a missing or unknown key or a vector of the wrong length.
        """
        lengths = expected_lengths(horizon, p)
        flat = flat_vectors(vectors, lengths, "Cox statistics")
        size = horizon + 1
        iu = np.triu_indices(p)

        def square(packed: NDArray[np.float64]) -> NDArray[np.float64]:
            out = np.zeros((size, p, p))
            tri = packed.reshape(size, _packed_length(p))
            out[:, iu[0], iu[1]] = tri
            out[:, iu[1], iu[0]] = tri
            return out

        return cls(
            s0=flat["s0"],
            s1=flat["s1"].reshape(size, p),
            s2=square(flat["s2"]),
            e0=flat["e0"],
            e1=flat["e1"].reshape(size, p),
            e2=square(flat["e2"]),
            d=flat["d"],
            event_x=flat["event_x"],
            event_xb=float(flat["event_xb"][0]),
        )


def expected_lengths(horizon: int, p: int) -> dict[str, int]:
    """Length of each vector of :meth:`CoxDayStats.to_vectors` for a horizon and ``p``."""
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 0:
        raise ValueError(f"horizon must be a non-negative integer, got {horizon!r}")
    if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 1:
        raise ValueError(f"p must be a positive integer, got {p!r}")
    size, packed = int(horizon) + 1, _packed_length(int(p))
    return {
        "s0": size,
        "s1": size * p,
        "s2": size * packed,
        "e0": size,
        "e1": size * p,
        "e2": size * packed,
        "d": size,
        "event_x": int(p),
        "event_xb": 1,
    }

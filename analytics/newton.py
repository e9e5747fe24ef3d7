"""Newton-Raphson with step halving for the federated Cox model, as a resumable state machine.

The aggregator holds a :class:`NewtonState`, sends ``state.beta`` to the sites, pools their
answers into :class:`~analytics.efron.CoxDerivatives` at that ``beta`` and calls
:func:`newton_update`, which returns the next ``beta`` to evaluate (one network round per
step) or a final state. The state is plain JSON (:meth:`NewtonState.to_dict`), so a restarted
aggregator resumes where it stopped.

Rules, in order, after each evaluation:

1. The first evaluation (``beta = 0``) records the null log-likelihood.
2. A log-likelihood worse than the best accepted one (beyond rounding), or a ``beta`` where
   the weights overflowed (passed as ``None``), halves the step back toward the best
   ``beta``; after 30 halvings in a row the fit fails.
3. The information ``-H`` is checked: a covariate without information (a zero diagonal,
   rounding noise included, or a near-zero eigenvalue of the scaled matrix) fails the fit
   with "covariate j is constant or collinear" at ``beta = 0``. Later it is "separation"
   (monotone likelihood), unless the slope points back along the last move: then the step
   overshot into a flat region and is halved.
4. Otherwise the point is accepted and the Newton step ``solve(-H, g)`` formed. Separation is
   also diagnosed when, after a full step, the gain was marginal (``< 1e-8`` relative), the
   next step still promises a comparable gain (linear, not quadratic, convergence) and a
   coefficient keeps moving away from zero by at least 1% of its value: the fit fails naming
   that covariate.
5. Converged when ``max |step_j| / max(1, |beta_j|) <= tol``, or when the last step changed
   the log-likelihood by less than ``1e-12`` relative and the next one promises no more. The
   converged ``beta`` is the last evaluated one, so the derivatives at it give the standard
   errors.
6. Otherwise the Newton step is taken (at most 10 times as long as the previous move, a
   trust radius against flat regions), unless ``max_iter`` steps were already taken: then
   "did not converge after N Newton steps".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, SupportsFloat

import numpy as np
from numpy.typing import NDArray

from analytics.efron import CoxDerivatives
from analytics.errors import NumericalOverflowError

__all__ = ["NewtonState", "fit_cox", "newton_start", "newton_update"]

Status = Literal["running", "converged", "failed"]

MAX_HALVINGS = 30
_STALL = 1e-12  # relative log-likelihood change read as "no change" after a full step
_MARGINAL = 1e-8  # relative gain below which a still-moving coefficient means separation
_SINGULAR = 1e-10  # smallest eigenvalue of the scaled information read as singular
_NOISE = 1e-12  # relative log-likelihood loss within rounding, accepted as no change
_OVERFLOW = "exp(x'beta) overflowed at a trial step; centre the covariates on their pooled means"
_GROWTH = 10.0  # a step is at most this many times as long as the previous move

_FIELDS = (
    "beta",
    "iteration",
    "best_loglik",
    "best_beta",
    "step_halvings",
    "null_loglik",
    "status",
    "message",
    "covariate",
)


@dataclass(frozen=True)
class NewtonState:
    """Where a Newton-Raphson fit stands between two network rounds.

    Attributes
    ----------
    beta : tuple of float
        Coefficients to evaluate next (``running``), or the final ones.
    iteration : int
        Newton steps taken so far (a halved retry counts: each costs a round).
    best_loglik : float or None
        Log-likelihood at ``best_beta``, the best accepted point; None before the first.
    best_beta : tuple of float or None
    step_halvings : int
        Halvings since the last accepted point.
    null_loglik : float or None
        Log-likelihood at ``beta = 0``.
    status : {"running", "converged", "failed"}
    message : str
        Why the fit stopped; while running, empty or a note that a trial step overflowed.
    covariate : int or None
        Index of the covariate a failure message names (see :meth:`explain`).
    """

    beta: tuple[float, ...]
    iteration: int = 0
    best_loglik: float | None = None
    best_beta: tuple[float, ...] | None = None
    step_halvings: int = 0
    null_loglik: float | None = None
    status: Status = "running"
    message: str = ""
    covariate: int | None = None

    @property
    def p(self) -> int:
        """Number of covariates."""
        return len(self.beta)

    def explain(self, names: Sequence[str]) -> str:
        """The message with the covariate index replaced by its name."""
        if self.covariate is None:
            return self.message
        j = self.covariate
        return self.message.replace(f"covariate {j}", f"covariate {names[j]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (floats round-trip exactly through ``json``)."""
        return {
            "beta": list(self.beta),
            "iteration": self.iteration,
            "best_loglik": self.best_loglik,
            "best_beta": None if self.best_beta is None else list(self.best_beta),
            "step_halvings": self.step_halvings,
            "null_loglik": self.null_loglik,
            "status": self.status,
            "message": self.message,
            "covariate": self.covariate,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NewtonState:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            On missing or unknown keys or values of the wrong kind.
        """
        if set(data) != set(_FIELDS):
            raise ValueError(f"a Newton state needs exactly the keys {sorted(_FIELDS)}")
        if data["status"] not in ("running", "converged", "failed"):
            raise ValueError(f"unknown Newton status {data['status']!r}")

        def floats(values: Iterable[SupportsFloat] | None) -> tuple[float, ...] | None:
            return None if values is None else tuple(float(v) for v in values)

        def number(value: SupportsFloat | None) -> float | None:
            return None if value is None else float(value)

        state = cls(
            beta=floats(data["beta"]) or (),
            iteration=int(data["iteration"]),
            best_loglik=number(data["best_loglik"]),
            best_beta=floats(data["best_beta"]),
            step_halvings=int(data["step_halvings"]),
            null_loglik=number(data["null_loglik"]),
            status=data["status"],
            message=str(data["message"]),
            covariate=None if data["covariate"] is None else int(data["covariate"]),
        )
        if state.p < 1 or (state.best_beta is not None and len(state.best_beta) != state.p):
            raise ValueError("a Newton state needs beta (and best_beta) of one length >= 1")
        return state


def newton_start(p: int) -> NewtonState:
    """Initial state: evaluate ``beta = 0`` first."""
    if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 1:
        raise ValueError(f"p must be a positive integer, got {p!r}")
    return NewtonState(beta=(0.0,) * int(p))


def _as_tuple(values: NDArray[np.float64]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _fail(state: NewtonState, message: str, covariate: int | None = None) -> NewtonState:
    beta = state.best_beta if state.best_beta is not None else state.beta
    return replace(state, beta=beta, status="failed", message=message, covariate=covariate)


def _steps(n: int) -> str:
    return f"{n} Newton step" + ("" if n == 1 else "s")


def _singular_covariate(information: NDArray[np.float64]) -> int | None:
    """Index of a covariate without information, or None if ``information`` is positive definite."""
    diag = np.diag(information)
    if np.any(diag <= 0):
        return int(np.flatnonzero(diag <= 0)[-1])
    scale = 1.0 / np.sqrt(diag)
    values, vectors = np.linalg.eigh(information * np.outer(scale, scale))
    if values[0] > _SINGULAR:
        return None
    weights = np.abs(vectors[:, 0])
    return int(np.flatnonzero(weights >= 1e-3 * weights.max())[-1])


def _newton_step(
    information: NDArray[np.float64], gradient: NDArray[np.float64]
) -> NDArray[np.float64]:
    scale = 1.0 / np.sqrt(np.diag(information))
    scaled = information * np.outer(scale, scale)
    return scale * np.linalg.solve(scaled, scale * gradient)


def newton_update(
    state: NewtonState,
    deriv_at_state_beta: CoxDerivatives | None,
    *,
    max_iter: int = 50,
    tol: float = 1e-9,
) -> NewtonState:
    """Take the derivatives at ``state.beta`` and return the next state.

    Parameters
    ----------
    state : NewtonState
        A ``running`` state.
    deriv_at_state_beta : CoxDerivatives or None
        Pooled derivatives at ``state.beta``; None when they could not be computed because
        the weights overflow there (:class:`~analytics.errors.NumericalOverflowError`), which
        is treated as a step too far and halved.
    max_iter : int
        Most Newton steps (rounds after the first) before giving up.
    tol : float
        Convergence threshold on the next step, relative to ``max(1, |beta_j|)``.

    Returns
    -------
    NewtonState
        ``running`` with the next ``beta`` to evaluate, ``converged`` (``beta`` is the
        evaluated optimum) or ``failed`` (``beta`` is the best point found).

    Raises
    ------
    ValueError
        If the state is not running or the derivatives have the wrong size.
    """
    if state.status != "running":
        raise ValueError(f"the Newton fit is already {state.status}")
    deriv = deriv_at_state_beta
    if deriv is not None and deriv.p != state.p:
        raise ValueError(f"derivatives for {deriv.p} covariates, state has {state.p}")
    beta = np.array(state.beta)
    first = state.best_loglik is None

    if first:
        if deriv is None:
            return _fail(state, "the log-likelihood overflows at beta = 0")
        state = replace(state, null_loglik=deriv.loglik)
        if not np.any(deriv.hessian) and not np.any(deriv.gradient):
            return _fail(state, "the Cox model needs at least one event with subjects at risk")
        gain = 0.0
    else:
        best = float(state.best_loglik)  # type: ignore[arg-type]
        if deriv is None:
            return _halve(replace(state, message=_OVERFLOW), max_iter)
        if deriv.loglik < best - _NOISE * max(1.0, abs(best)):
            return _halve(state, max_iter)
        gain = deriv.loglik - best

    information = -deriv.hessian
    bad = _singular_covariate(information)
    previous = None if first else np.array(state.best_beta)
    if bad is not None and previous is not None and deriv.gradient @ (beta - previous) < 0:
        # No curvature left but the slope points back: the step overshot into a flat region.
        return _halve(state, max_iter)

    # Accepted: beta becomes the best point.
    full_step = state.step_halvings == 0
    state = replace(state, best_loglik=deriv.loglik, best_beta=state.beta, step_halvings=0)
    if bad is not None:
        if first:
            return _fail(state, f"covariate {bad} is constant or collinear", bad)
        return _fail(state, _separation(bad), bad)
    step = _newton_step(information, deriv.gradient)
    if not np.all(np.isfinite(step)):
        return _fail(state, "the Newton step is not finite")
    decrement = float(deriv.gradient @ step)  # twice the gain the quadratic model promises
    scale = max(1.0, abs(deriv.loglik))

    linear = decrement / 2.0 > max(0.1 * gain, 1e-14 * scale)
    if not first and full_step and gain <= _MARGINAL * scale and linear:
        outward = (step * beta > 0) & (np.abs(step) >= 0.01 * np.abs(beta))
        if np.any(outward):
            relative = np.where(outward, np.abs(step) / np.maximum(np.abs(beta), 1e-300), -1.0)
            j = int(np.argmax(relative))
            return _fail(state, _separation(j), j)

    small = np.max(np.abs(step) / np.maximum(1.0, np.abs(beta))) <= tol
    stalled = not first and abs(gain) <= _STALL * scale and decrement / 2.0 <= _STALL * scale
    if small or stalled:
        done = f"converged after {_steps(state.iteration)}"
        return replace(state, status="converged", message=done)
    if state.iteration >= max_iter:
        return _not_converged(state, max_iter)
    if previous is not None:
        # Trust radius: a step may be at most _GROWTH times as long as the last move, so a
        # nearly flat region (tiny curvature) cannot throw beta far away in one round.
        radius = _GROWTH * float(np.linalg.norm(beta - previous))
        length = float(np.linalg.norm(step))
        if 0.0 < radius < length:
            step = step * (radius / length)
    return replace(state, beta=_as_tuple(beta + step), iteration=state.iteration + 1)


def _halve(state: NewtonState, max_iter: int) -> NewtonState:
    """Retry halfway between ``state.beta`` and the best accepted point."""
    if state.step_halvings >= MAX_HALVINGS:
        return _fail(
            state,
            f"step halving failed to improve the log-likelihood after {MAX_HALVINGS} halvings",
        )
    if state.iteration >= max_iter:
        return _not_converged(state, max_iter)
    toward = np.array(state.best_beta)
    return replace(
        state,
        beta=_as_tuple(toward + (np.array(state.beta) - toward) / 2.0),
        iteration=state.iteration + 1,
        step_halvings=state.step_halvings + 1,
    )


def _not_converged(state: NewtonState, max_iter: int) -> NewtonState:
    note = f" ({state.message})" if state.message else ""
    return _fail(state, f"did not converge after {_steps(max_iter)}{note}")


def _separation(j: int) -> str:
    return f"separation: the likelihood has no maximum in covariate {j} (monotone likelihood)"


def fit_cox(
    derivatives_fn: Callable[[NDArray[np.float64]], CoxDerivatives],
    p: int,
    *,
    max_iter: int = 50,
    tol: float = 1e-9,
    state: NewtonState | None = None,
) -> tuple[NewtonState, CoxDerivatives]:
    """Run :func:`newton_update` to the end with in-process evaluations.

    Parameters
    ----------
    derivatives_fn : callable
        ``beta -> CoxDerivatives`` pooled over sites; may raise
        :class:`~analytics.errors.NumericalOverflowError` (the step is then halved).
    p : int
        Number of covariates.
    max_iter, tol
        As for :func:`newton_update`.
    state : NewtonState, optional
        A persisted running state to resume from (default: :func:`newton_start`).

    Returns
    -------
    state : NewtonState
        Converged or failed.
    derivatives : CoxDerivatives
        At ``state.beta`` (the optimum when converged, the best point when failed).
    """
    state = newton_start(p) if state is None else state
    if state.p != p:
        raise ValueError(f"the state has {state.p} covariates, expected {p}")
    best: tuple[tuple[float, ...] | None, CoxDerivatives | None] = (None, None)
    while state.status == "running":
        try:
            deriv: CoxDerivatives | None = derivatives_fn(np.array(state.beta))
        except NumericalOverflowError:
            deriv = None
        evaluated = state.beta
        state = newton_update(state, deriv, max_iter=max_iter, tol=tol)
        if deriv is not None and state.best_beta == evaluated:
            best = (evaluated, deriv)
    if best[0] == state.beta and best[1] is not None:
        return state, best[1]
    return state, derivatives_fn(np.array(state.beta))

"""A Cox fit as one site checks it between Newton rounds (the rounds of :mod:`node.releases.cox`).

The aggregator does not choose the coefficients. Each Newton request relays the previous
round's releases of the model's sites, each signed by its site (:mod:`protocol.release_signing`);
the site verifies every signature (:func:`verified`), sums them itself (masks cancel) and
recomputes the design columns, bins, centre and Newton step with the aggregator's own functions
(:func:`analytics.pooled_derivatives`, :func:`analytics.cox_step`; :func:`expected`). It
answers only a request equal to its own result (:func:`check_request`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from analytics import (
    CoxDayStats,
    CoxDerivatives,
    DisclosureError,
    EstimationError,
    NewtonState,
    cox_bins,
    cox_step,
    newton_start,
    pooled_derivatives,
)
from node.errors import NodeError
from protocol.codec import Release
from protocol.design import design_columns
from protocol.errors import ProtocolError
from protocol.release_signing import ReleaseSigner, verify_release
from protocol.releases import masked_cox_description, masked_cox_event_table
from protocol.rounds import NewtonRequest
from protocol.secure_agg import unmask_sum
from protocol.study import Analysis, Study

__all__ = ["CoxChain", "CoxRound", "Refused", "check_request", "expected", "request_key",
           "verified"]

logger = logging.getLogger(__name__)

_SAME = 1e-12  # relative tolerance of a requested coefficient against the site's own


@dataclass
class CoxChain:
    """What this site released and checked so far in one Cox fit (see the module docstring).

    ``round``/``attempt``/``digest``/``sent``: this site's last signed release of the
    analysis (as sent), which the next request relays unaltered or leaves out (the site then
    sums the one it kept); the rest is the fit as this site computed it.
    """

    round: int = -1
    attempt: int = 0
    digest: str = ""
    fitting: bool = False
    sites: tuple[str, ...] = ()
    levels: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    bins: tuple[int, ...] | None = None
    newton: NewtonState | None = None
    centre: tuple[float, ...] | None = None
    final: bool = False
    rounds: int = 0
    answered: tuple[int, str, Release] | None = None
    sent: Release | None = None


@dataclass(frozen=True)
class CoxRound:
    """What a Newton round is checked against: the site's signing identity (with the network
    CA), the study, attempt (0 unmasked) and round, and a masked round's participants."""

    signer: ReleaseSigner | None
    study_id: str
    attempt: int
    round: int
    participants: tuple[str, ...] | None = None


class Refused(NodeError):
    """A Newton request this site will not answer (the reason becomes an error release)."""


def request_key(request: NewtonRequest) -> str:
    h = hashlib.sha256(",".join(request.columns).encode())
    h.update(request.beta.tobytes())
    h.update(b"-" if request.centre is None else request.centre.tobytes())
    h.update(repr(request.bins).encode())
    return h.hexdigest()


def _same(got: npt.NDArray[np.float64] | None, want: Sequence[float] | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    expected = np.asarray(want, dtype=np.float64)
    return got.shape == expected.shape and bool(
        np.all(np.abs(got - expected) <= _SAME * np.abs(expected)))


def verified(analysis: Analysis, study: Study, chain: CoxChain, request: NewtonRequest,
              context: CoxRound) -> dict[str, Release]:
    """The relayed releases by site, each signature checked, the set checked."""
    assert context.signer is not None
    if not request.relayed:
        raise Refused("the request relays no releases of the previous round")
    got: dict[str, Release] = {}
    for release in request.relayed:
        try:
            by = verify_release(release, context.signer.ca_pem, context.study_id)
        except ProtocolError as exc:
            raise Refused(f"relayed release refused: {exc}") from None
        if release.analysis != analysis.name or release.kind != "cox" or release.error:
            raise Refused(f"relayed release of {by.site} is not a release of this model")
        if (by.round, by.attempt) != (chain.round, chain.attempt):
            raise Refused(f"relayed release of {by.site} is from round {by.round}, not "
                           f"{chain.round}")
        if by.site in got:
            raise Refused(f"two relayed releases of {by.site}")
        if by.site == context.signer.site_id and by.digest != chain.digest:
            raise Refused("this site's own relayed release was altered")
        got[by.site] = release
    if context.signer.site_id not in got:  # not relayed back: the one this site sent
        if chain.sent is None:
            raise Refused("this site's own release is not relayed")
        got[context.signer.site_id] = chain.sent
    sites = tuple(sorted(got))
    if context.participants is not None:
        if sites != tuple(context.participants):
            raise Refused("the relayed releases are not those of this round's participants")
    elif len(sites) < study.privacy.min_sites:
        raise Refused(f"{len(sites)} relayed sites, fewer than min_sites "
                       f"{study.privacy.min_sites}")
    elif chain.fitting and not set(sites) <= set(chain.sites):
        raise Refused("the relayed releases name sites outside the model")
    return {s: got[s] for s in sites}


def _levels(release: Release) -> dict[str, list[str]]:
    raw = release.metadata.get("levels") or {}
    if not isinstance(raw, dict):
        raise Refused("a relayed model description has malformed levels")
    return {str(c): sorted(str(v) for v in names) for c, names in raw.items()}


def _design(analysis: Analysis, parts: Sequence[Mapping[str, list[str]]]) -> tuple[str, ...]:
    levels: dict[str, set[str]] = {}
    for part in parts:
        for cov, names in part.items():
            levels.setdefault(cov, set()).update(names)
    return tuple(design_columns(analysis.covariates, {c: sorted(v) for c, v in levels.items()}))


def _parts(analysis: Analysis, study: Study, chain: CoxChain, got: Mapping[str, Release],
           masked: bool) -> list[CoxDayStats] | list[CoxDerivatives] | None:
    """The round's sums as the aggregator pools them (None: a site's weights overflowed)."""
    if any(r.metadata.get("overflow") for r in got.values()):
        return None
    p = len(chain.columns)
    horizon = len(chain.bins) - 1 if chain.bins is not None else study.horizon_days
    releases = [unmask_sum(list(got.values()))] if masked else list(got.values())
    if analysis.strata == "site":
        return [CoxDerivatives.from_vectors(r.vectors, p) for r in releases]
    return [CoxDayStats.from_vectors(r.vectors, horizon, p) for r in releases]


def expected(analysis: Analysis, study: Study, chain: CoxChain, got: Mapping[str, Release],
              masked: bool) -> CoxChain:
    """The fit after the relayed round, as this site computes it (a new chain, uncommitted)."""
    sites = tuple(got)
    new = CoxChain(**{**chain.__dict__})
    try:
        if not chain.fitting:  # the relayed round is the description
            if masked:
                summed = unmask_sum(list(got.values()))
                levels = masked_cox_description(summed)[0]
                new.levels = {"*": {c: sorted(v) for c, v in levels.items()}}
                new.bins = cox_bins(*masked_cox_event_table(summed, study.horizon_days))
            else:
                new.levels = {s: _levels(r) for s, r in got.items()}
                new.bins = None
            new.columns = _design(analysis, list(new.levels.values()))
        elif not masked and sites != chain.sites:  # the fit starts again without some sites
            new.columns = _design(analysis, [chain.levels[s] for s in sites])
        else:
            if chain.final or chain.newton is None:
                raise Refused("the fit has ended; no further Newton round")
            deriv, new.centre = pooled_derivatives(_parts(analysis, study, chain, got, masked),
                                                   chain.centre)
            nxt = cox_step(chain.newton, deriv)
            if not nxt.ask:
                raise Refused(f"the fit has ended ({nxt.state.status}); no further round")
            new.newton, new.final = nxt.state, nxt.final
            return new
    except (ProtocolError, ValueError, KeyError, TypeError, EstimationError,
            DisclosureError) as exc:
        raise Refused(f"the relayed releases do not give a model this site can check: "
                       f"{exc}") from None
    if not new.columns:
        raise Refused("no covariate varies in the pooled cohort")
    new.fitting, new.sites, new.final, new.centre = True, sites, False, None
    new.newton = newton_start(len(new.columns))
    return new


def check_request(request: NewtonRequest, new: CoxChain) -> None:
    assert new.newton is not None
    if tuple(request.columns) != new.columns:
        raise Refused("the requested design columns differ from those this site computed")
    if request.bins != new.bins:
        raise Refused("the requested time bins differ from those this site computed")
    if not _same(request.beta, new.newton.beta):
        raise Refused("the requested coefficients differ from the Newton step this site "
                       "computed from the relayed sums")
    if not _same(request.centre, new.centre):
        raise Refused("the requested centre differs from the pooled means this site computed")

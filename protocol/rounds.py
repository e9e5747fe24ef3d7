"""What the aggregator asks a site in one round: the request vocabulary both sides share.

Every round of a study is one task per site carrying a list of *requests*. Requests travel as
:class:`~protocol.codec.Release` messages (the wire type of ``StudyTask.inputs``); this module
is the only place that knows their names and fields:

``announce``
    (analysis :data:`KEYS`) announce a signed ephemeral key for attempt ``attempt`` of a
    secure study. The site answers with one release named :data:`KEYS` whose metadata holds
    ``{"announcement": {...}}``. This is the key-exchange round of secure aggregation.
``relay``
    (analysis :data:`KEYS`) the verified announcements of every participant of attempt
    ``attempt``. Its presence makes the round *masked*: the site masks every release of the
    round with the pairwise keys derived from these announcements.
``summary``
    (analysis = the analysis' name) release this analysis' sufficient statistics (for Cox: the
    description of the site's part of the model).
``newton``
    (analysis = a Cox analysis' name) release the Cox sums at the coefficients ``beta`` for the
    design ``columns`` (optionally centred on ``centre``): one Newton step.

A site answers a task with one release per analysis request (an error release carries the
reason it will not answer), plus its key announcement when asked for one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.study import Study

__all__ = [
    "KEYS",
    "KEY_KIND",
    "STEP_ANNOUNCE",
    "STEP_NEWTON",
    "STEP_RELAY",
    "STEP_SUMMARY",
    "KeyRelay",
    "NewtonRequest",
    "RoundRequests",
    "announce_request",
    "key_relay",
    "newton_from_release",
    "newton_request",
    "parse_requests",
    "summary_request",
    "summary_requests",
]

KEYS = "__keys__"
"""Analysis name of the key-exchange requests and of a site's key announcement."""
KEY_KIND = "keys"
STEP_ANNOUNCE = "announce"
STEP_RELAY = "relay"
STEP_SUMMARY = "summary"
STEP_NEWTON = "newton"
_STEP = "step"


def announce_request(attempt: int) -> Release:
    """Ask a site for a signed ephemeral key for ``attempt`` (1, 2, ...)."""
    return Release(KEYS, KEY_KIND, {}, {_STEP: STEP_ANNOUNCE, "attempt": int(attempt)})


def key_relay(attempt: int, announcements: Sequence[Mapping[str, Any]]) -> Release:
    """The participants' announcements of ``attempt``: the round is masked with them."""
    return Release(KEYS, KEY_KIND, {}, {_STEP: STEP_RELAY, "attempt": int(attempt),
                                        "announcements": [dict(a) for a in announcements]})


def summary_request(analysis: str, kind: str) -> Release:
    """Ask a site for an analysis' sufficient statistics (Cox: the model description)."""
    return Release(analysis, kind, {}, {_STEP: STEP_SUMMARY})


def summary_requests(study: Study) -> tuple[Release, ...]:
    """A summary request for every analysis of a study (an unmasked first round)."""
    return tuple(summary_request(a.name, a.kind) for a in study.analyses)


def newton_request(analysis: str, columns: Sequence[str], beta: Sequence[float],
                   centre: Sequence[float] | None = None) -> Release:
    """Ask a site for a Cox analysis' sums at ``beta`` (one Newton step)."""
    vectors: dict[str, npt.NDArray[np.float64]] = {
        "beta": np.asarray(beta, dtype=np.float64)}
    if centre is not None:
        vectors["centre"] = np.asarray(centre, dtype=np.float64)
    return Release(analysis, "cox", vectors, {_STEP: STEP_NEWTON, "columns": list(columns)})


@dataclass(frozen=True)
class KeyRelay:
    """The announcements a masked round is masked with."""

    attempt: int
    announcements: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class NewtonRequest:
    """Coefficients at which a site evaluates one Cox analysis."""

    analysis: str
    columns: tuple[str, ...]
    beta: npt.NDArray[np.float64]
    centre: npt.NDArray[np.float64] | None


@dataclass(frozen=True)
class RoundRequests:
    """One task's requests, parsed (what the node acts on)."""

    announce: int | None = None
    relay: KeyRelay | None = None
    summaries: tuple[str, ...] = ()
    newton: tuple[NewtonRequest, ...] = ()

    @property
    def analyses(self) -> tuple[str, ...]:
        """Names of the analyses this round asks about, in request order."""
        return (*self.summaries, *(n.analysis for n in self.newton))


def _attempt(request: Release) -> int:
    attempt = request.metadata.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise ProtocolError(f"key request: attempt must be a positive integer, got {attempt!r}")
    return attempt


def _newton(request: Release) -> NewtonRequest:
    columns = request.metadata.get("columns")
    beta = np.asarray(request.vectors.get("beta", ()), dtype=np.float64)
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ProtocolError(f"newton request {request.analysis}: columns must list names")
    if beta.ndim != 1 or beta.size == 0 or beta.size != len(columns):
        raise ProtocolError(f"newton request {request.analysis}: one coefficient per column")
    if not np.all(np.isfinite(beta)):
        raise ProtocolError(f"newton request {request.analysis}: coefficients must be finite")
    centre = request.vectors.get("centre")
    centre_arr = None if centre is None else np.asarray(centre, dtype=np.float64)
    if centre_arr is not None and (centre_arr.shape != beta.shape
                                   or not np.all(np.isfinite(centre_arr))):
        raise ProtocolError(f"newton request {request.analysis}: centre must be finite and "
                            "match beta")
    return NewtonRequest(request.analysis, tuple(columns), beta, centre_arr)


def newton_from_release(request: Release) -> NewtonRequest:
    """A Cox round input (vectors ``beta``, optional ``centre``; metadata ``columns``).

    Raises
    ------
    ProtocolError
        For missing or inconsistent columns and coefficients.
    """
    return _newton(request)


def parse_requests(inputs: Sequence[Release]) -> RoundRequests:
    """Parse a task's requests.

    Raises
    ------
    ProtocolError
        For an unknown step, a repeated analysis or key request, or malformed fields.
    """
    announce: int | None = None
    relay: KeyRelay | None = None
    summaries: list[str] = []
    newton: list[NewtonRequest] = []
    seen: set[str] = set()
    for request in inputs:
        step = request.metadata.get(_STEP)
        if request.analysis in seen:
            raise ProtocolError(f"round names {request.analysis!r} twice")
        seen.add(request.analysis)
        if request.analysis == KEYS and step == STEP_ANNOUNCE:
            announce = _attempt(request)
        elif request.analysis == KEYS and step == STEP_RELAY:
            raw = request.metadata.get("announcements")
            if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
                raise ProtocolError("key relay: announcements must be a list of objects")
            relay = KeyRelay(_attempt(request), tuple(raw))
        elif request.analysis == KEYS:
            raise ProtocolError(f"unknown key request step {step!r}")
        elif step == STEP_SUMMARY:
            summaries.append(request.analysis)
        elif step == STEP_NEWTON:
            newton.append(_newton(request))
        else:
            raise ProtocolError(f"request for {request.analysis!r} has unknown step {step!r}")
    if announce is not None and (relay is not None or summaries or newton):
        raise ProtocolError("a key announcement round asks for nothing else")
    return RoundRequests(announce, relay, tuple(summaries), tuple(newton))

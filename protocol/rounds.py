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
``screen``
    (analysis :data:`~protocol.screening.SCREEN`) a masked round of a secure study whose only
    request: release the counts that decide what may be released, masked and sealed for every
    other participant (:mod:`protocol.screening`).
``screened``
    (analysis :data:`~protocol.screening.SCREEN`) the sealed screening counts every other
    participant addressed to this site; they come with the round's first summaries.
``unmask``
    (analysis :data:`UNMASK`) after an attempt's first analysis round: reveal shares of the
    self-mask seeds of the sites that contributed and of the mask keys of those reported
    dropped (relay ``dropped``), from the sealed shares relayed (metadata ``shares``: sender
    -> blob) and, after a dropout, the survivors' sealed re-screening counts (``sealed``).
    A relay may also carry the secrets revealed (``revealed``) so sites can unmask relayed
    sums of that round themselves (:mod:`protocol.recovery`).
``summary``
    (analysis = the analysis' name) release this analysis' sufficient statistics (for Cox: the
    description of the site's part of the model).
``newton``
    (analysis = a Cox analysis' name) release the Cox sums at the coefficients ``beta`` for the
    design ``columns`` (optionally centred on ``centre``, over the time ``bins`` of a secure
    model): one Newton step. It relays the previous round's signed releases of the model's
    sites, from which the site checks the request itself.

A site answers a task with one release per analysis request (an error release carries the
reason it will not answer), plus its key announcement when asked for one.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from protocol.codec import Release, decode_release, encode_release
from protocol.errors import ProtocolError
from protocol.screening import SCREEN, SCREEN_KIND, SEALED
from protocol.study import Study
from protocol.v1.common_pb2 import AnalysisRelease

__all__ = [
    "KEYS",
    "KEY_KIND",
    "NO_EPHEMERAL_KEY",
    "STEP_ANNOUNCE",
    "STEP_NEWTON",
    "STEP_RELAY",
    "STEP_SUMMARY",
    "UNMASK",
    "KeyRelay",
    "NewtonRequest",
    "RoundRequests",
    "UnmaskRequest",
    "announce_request",
    "key_relay",
    "newton_from_release",
    "newton_request",
    "parse_requests",
    "screen_request",
    "screened_relay",
    "summary_request",
    "summary_requests",
    "unmask_request",
    "unwire_release",
    "wire_release",
]

NO_EPHEMERAL_KEY = "no ephemeral key"
"""How a site's refusal of a masked round begins when it lost its ephemeral key (it restarted):
such a site is asked to rejoin the next attempt, unlike one that refused."""
UNMASK = "__unmask__"
"""Analysis name of the unmask request and of a site's revealed shares."""
SHARES = "shares"
"""Metadata key of the sealed shares of a screening answer (recipient -> blob) or of an
unmask request (sender -> blob)."""
REVEALED = "revealed"
KEYS = "__keys__"
"""Analysis name of the key-exchange requests and of a site's key announcement."""
KEY_KIND = "keys"
STEP_ANNOUNCE = "announce"
STEP_RELAY = "relay"
STEP_SUMMARY = "summary"
STEP_NEWTON = "newton"
STEP_SCREEN = "screen"
STEP_SCREENED = "screened"
STEP_UNMASK = "unmask"
_STEP = "step"


def announce_request(attempt: int) -> Release:
    """Ask a site for a signed ephemeral key for ``attempt`` (1, 2, ...)."""
    return Release(KEYS, KEY_KIND, {}, {_STEP: STEP_ANNOUNCE, "attempt": int(attempt)})


def key_relay(attempt: int, announcements: Sequence[Mapping[str, Any]],
              dropped: Sequence[str] = (), revealed: Mapping[str, Any] | None = None
              ) -> Release:
    """The participants' announcements of ``attempt``: the round is masked with them (not
    with the ``dropped`` sites); ``revealed``: the secrets of the attempt's unmask."""
    meta: dict[str, Any] = {_STEP: STEP_RELAY, "attempt": int(attempt),
                            "announcements": [dict(a) for a in announcements]}
    if dropped:
        meta["dropped"] = sorted(dropped)
    if revealed:
        meta[REVEALED] = dict(revealed)
    return Release(KEYS, KEY_KIND, {}, meta)


def unmask_request(shares: Mapping[str, str], sealed: Mapping[str, str] | None = None
                   ) -> Release:
    """Ask a site to reveal its shares (sender -> sealed pair of shares for this site), with
    the survivors' re-screening counts after a dropout."""
    meta: dict[str, Any] = {_STEP: STEP_UNMASK, SHARES: dict(shares)}
    if sealed is not None:
        meta[SEALED] = dict(sealed)
    return Release(UNMASK, KEY_KIND, {}, meta)


def screen_request() -> Release:
    """Ask a site for its sealed screening counts (a masked round of a secure study)."""
    return Release(SCREEN, SCREEN_KIND, {}, {_STEP: STEP_SCREEN})


def screened_relay(sealed: Mapping[str, str]) -> Release:
    """The screening counts each other participant sealed for one site (sender -> blob)."""
    return Release(SCREEN, SCREEN_KIND, {}, {_STEP: STEP_SCREENED, SEALED: dict(sealed)})


def summary_request(analysis: str, kind: str) -> Release:
    """Ask a site for an analysis' sufficient statistics (Cox: the model description)."""
    return Release(analysis, kind, {}, {_STEP: STEP_SUMMARY})


def summary_requests(study: Study) -> tuple[Release, ...]:
    """A summary request for every analysis of a study (an unmasked first round)."""
    return tuple(summary_request(a.name, a.kind) for a in study.analyses)


def wire_release(release: Release) -> str:
    """A release as a Newton request relays it: base64 of its encoded ``AnalysisRelease``."""
    return base64.b64encode(encode_release(release).SerializeToString()).decode("ascii")


def unwire_release(text: str) -> Release:
    """The release :func:`wire_release` encoded (raises ``ValueError``, :class:`ProtocolError`
    or protobuf's ``DecodeError`` when ``text`` is not one)."""
    return decode_release(AnalysisRelease.FromString(base64.b64decode(text, validate=True)))


def newton_request(analysis: str, columns: Sequence[str], beta: Sequence[float],
                   centre: Sequence[float] | None = None, bins: Sequence[int] | None = None,
                   relayed: Sequence[Release | str] = ()) -> Release:
    """Ask a site for a Cox analysis' sums at ``beta`` (one Newton step).

    ``bins``: the time bins of a secure model (bin ends in days). ``relayed``: the previous
    round's signed releases of the model's sites, from which the site checks ``columns``,
    ``bins``, ``beta`` and ``centre`` itself (metadata ``relayed``: base64 wire releases; one
    given as a string is already in that form, :func:`wire_release`, and is relayed as is).
    """
    vectors: dict[str, npt.NDArray[np.float64]] = {
        "beta": np.asarray(beta, dtype=np.float64)}
    if centre is not None:
        vectors["centre"] = np.asarray(centre, dtype=np.float64)
    metadata: dict[str, Any] = {_STEP: STEP_NEWTON, "columns": list(columns),
                                "relayed": [r if isinstance(r, str) else wire_release(r)
                                            for r in relayed]}
    if bins is not None:
        metadata["bins"] = [int(b) for b in bins]
    return Release(analysis, "cox", vectors, metadata)


@dataclass(frozen=True)
class KeyRelay:
    """The announcements a masked round is masked with."""

    attempt: int
    announcements: tuple[Mapping[str, Any], ...]
    dropped: tuple[str, ...] = ()
    revealed: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class UnmaskRequest:
    """The shares relayed to a site and, after a dropout, the re-screening counts."""

    shares: Mapping[str, str]
    sealed: Mapping[str, str] | None = None


@dataclass(frozen=True)
class NewtonRequest:
    """Coefficients at which a site evaluates one Cox analysis."""

    analysis: str
    columns: tuple[str, ...]
    beta: npt.NDArray[np.float64]
    centre: npt.NDArray[np.float64] | None
    bins: tuple[int, ...] | None = None
    relayed: tuple[Release, ...] = ()


@dataclass(frozen=True)
class RoundRequests:
    """One task's requests, parsed (what the node acts on)."""

    announce: int | None = None
    relay: KeyRelay | None = None
    screen: bool = False
    screened: Mapping[str, str] | None = None
    summaries: tuple[str, ...] = ()
    newton: tuple[NewtonRequest, ...] = ()
    unmask: UnmaskRequest | None = None

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
    bins = request.metadata.get("bins")
    if bins is not None and (not isinstance(bins, list) or not bins or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in bins)):
        raise ProtocolError(f"newton request {request.analysis}: bins must list bin ends")
    raw = request.metadata.get("relayed", [])
    if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
        raise ProtocolError(f"newton request {request.analysis}: relayed must list releases")
    try:
        relayed = tuple(unwire_release(r) for r in raw)
    except (ValueError, ProtocolError, DecodeError) as exc:
        raise ProtocolError(f"newton request {request.analysis}: unreadable relayed release "
                            f"({exc})") from None
    return NewtonRequest(request.analysis, tuple(columns), beta, centre_arr,
                         None if bins is None else tuple(bins), relayed)


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
    screen = False
    screened: dict[str, str] | None = None
    summaries: list[str] = []
    newton: list[NewtonRequest] = []
    unmask: UnmaskRequest | None = None
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
            dropped = request.metadata.get("dropped", [])
            revealed = request.metadata.get(REVEALED)
            if not isinstance(dropped, list) or not all(isinstance(d, str) for d in dropped):
                raise ProtocolError("key relay: dropped must list site ids")
            if revealed is not None and not isinstance(revealed, dict):
                raise ProtocolError("key relay: revealed must be an object")
            relay = KeyRelay(_attempt(request), tuple(raw), tuple(dropped), revealed)
        elif request.analysis == KEYS:
            raise ProtocolError(f"unknown key request step {step!r}")
        elif request.analysis == UNMASK and step == STEP_UNMASK:
            shares = request.metadata.get(SHARES)
            sealed_ = request.metadata.get(SEALED)
            if not isinstance(shares, dict) or not _str_map(shares) or (
                    sealed_ is not None and not _str_map(sealed_)):
                raise ProtocolError("unmask request: shares and sealed map site ids to blobs")
            unmask = UnmaskRequest(dict(shares), None if sealed_ is None else dict(sealed_))
        elif request.analysis == UNMASK:
            raise ProtocolError(f"unknown unmask request step {step!r}")
        elif request.analysis == SCREEN and step == STEP_SCREEN:
            screen = True
        elif request.analysis == SCREEN and step == STEP_SCREENED:
            raw_sealed = request.metadata.get(SEALED)
            if not isinstance(raw_sealed, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in raw_sealed.items()):
                raise ProtocolError("screened relay: sealed must map site ids to blobs")
            screened = dict(raw_sealed)
        elif request.analysis == SCREEN:
            raise ProtocolError(f"unknown screening request step {step!r}")
        elif step == STEP_SUMMARY:
            summaries.append(request.analysis)
        elif step == STEP_NEWTON:
            newton.append(_newton(request))
        else:
            raise ProtocolError(f"request for {request.analysis!r} has unknown step {step!r}")
    if announce is not None and (relay is not None or summaries or newton or screen
                                 or screened is not None):
        raise ProtocolError("a key announcement round asks for nothing else")
    if screen and (relay is None or summaries or newton or screened is not None):
        raise ProtocolError("a screening round is masked and asks for nothing else")
    if screened is not None and (relay is None or not summaries):
        raise ProtocolError("screened counts come with a masked round's summaries")
    if unmask is not None and (relay is None or summaries or newton or screen):
        raise ProtocolError("an unmask round is masked and asks for nothing else")
    return RoundRequests(announce, relay, screen, screened, tuple(summaries), tuple(newton),
                         unmask)


def _str_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in value.items())

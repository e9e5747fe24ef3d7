"""The ``Coordinator`` gRPC service: submit signed studies, read status and results.

Only peers whose certificate carries the ``coordinator`` role may call it. Domain errors become
gRPC statuses through :mod:`aggregator.status_codes`.

``WaitStudy`` pushes completion: the call returns as soon as the study has ended (or after the
requested time, at most :data:`MAX_WAIT_S` and never past the call's deadline). A waiting call
holds one of the server's service threads, so at most ``max_waiters`` calls wait at once
(the server keeps two service threads free of them); beyond that the call answers at once with
the current status, and the client waits a little before it asks again.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from aggregator.engine import StudyEngine, StudyStatus
from aggregator.errors import AggregatorError
from aggregator.peers import require_role
from aggregator.status_codes import abort
from protocol.pki import ROLE_COORDINATOR
from protocol.signing import SignedStudy
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

__all__ = ["MAX_WAIT_S", "CoordinatorServicer", "iso_time", "status_message"]

logger = logging.getLogger(__name__)

MAX_WAIT_S = 30.0
"""The longest one ``WaitStudy`` call waits; a client wanting longer calls again."""
_DEADLINE_MARGIN_S = 0.05  # answer this long before the caller's deadline

_Method = TypeVar("_Method", bound=Callable[..., Any])


def iso_time(unix_s: float | None) -> str:
    """ISO 8601 UTC time (``2026-01-31T12:00:00Z``) of Unix seconds; ``""`` for ``None``."""
    if unix_s is None:
        return ""
    t = dt.datetime.fromtimestamp(unix_s, dt.UTC).replace(microsecond=0)
    return t.isoformat().replace("+00:00", "Z")


def status_message(status: StudyStatus) -> pb.StudyStatus:
    """The wire form of a study's status."""
    return pb.StudyStatus(
        study_id=status.study_id, status=status.status, title=status.title,
        submitted_at=iso_time(status.submitted_at), completed_at=iso_time(status.completed_at),
        sites=[pb.SiteState(site_id=s.site_id, state=s.state, reason=s.reason,
                            updated_at=iso_time(s.updated_at)) for s in status.sites])


def _coordinator_only(method: _Method) -> _Method:
    """Check the caller's role, then run the method mapping domain errors to statuses."""

    @functools.wraps(method)
    def wrapper(self: CoordinatorServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            require_role(context, ROLE_COORDINATOR, "coordinators may use this service")
            return method(self, request, context)
        except AggregatorError as exc:
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """gRPC front of the :class:`StudyEngine` for the coordinating centre.

    ``max_waiters`` bounds the ``WaitStudy`` calls waiting at once (see the module docstring).
    """

    def __init__(self, engine: StudyEngine, max_waiters: int = 4) -> None:
        self._engine = engine
        self._waiters = threading.Semaphore(max(0, max_waiters))

    @_coordinator_only
    def SubmitStudy(self, request: Any, context: grpc.ServicerContext) -> pb.StudyRef:
        """Verify and start a signed study."""
        study_id = self._engine.submit(SignedStudy.from_proto(request))
        return pb.StudyRef(study_id=study_id)

    @_coordinator_only
    def GetStatus(self, request: pb.StudyRef, context: grpc.ServicerContext) -> pb.StudyStatus:
        """A study's status and its sites' states."""
        return status_message(self._engine.status(request.study_id))

    @_coordinator_only
    def WaitStudy(self, request: pb.WaitStudyRequest,
                  context: grpc.ServicerContext) -> pb.StudyStatus:
        """The study's status once it has ended, or when the wait is over."""
        timeout = min(request.timeout_ms / 1000.0, MAX_WAIT_S)
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining - _DEADLINE_MARGIN_S)
        if timeout <= 0 or not self._waiters.acquire(blocking=False):
            return status_message(self._engine.status(request.study_id))
        try:
            wake = threading.Event()
            context.add_callback(wake.set)  # the caller went away: stop waiting
            return status_message(self._engine.wait(request.study_id, timeout, wake))
        finally:
            self._waiters.release()

    @_coordinator_only
    def GetResults(self, request: pb.StudyRef,
                   context: grpc.ServicerContext) -> pb.StudyResults:
        """results.json of a finished study (empty ``results_json`` while it runs)."""
        status = self._engine.status(request.study_id)
        results = self._engine.results(request.study_id)
        text = "" if results is None else json.dumps(results)
        return pb.StudyResults(study_id=status.study_id, status=status.status,
                               results_json=text)

    @_coordinator_only
    def ListStudies(self, request: pb.ListStudiesRequest,
                    context: grpc.ServicerContext) -> pb.StudyList:
        """Every study, oldest first."""
        return pb.StudyList(studies=[status_message(s) for s in self._engine.list_studies()])

    @_coordinator_only
    def ListSites(self, request: pb.ListSitesRequest,
                  context: grpc.ServicerContext) -> pb.SiteList:
        """The site registry with connection state and data freshness."""
        return pb.SiteList(sites=[
            pb.SiteInfo(site_id=s.site_id, connected=s.connected,
                        software_version=s.software_version, last_seen=iso_time(s.last_seen),
                        ingested_at=s.ingested_at)
            for s in self._engine.list_sites()])

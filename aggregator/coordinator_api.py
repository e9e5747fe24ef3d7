"""The ``Coordinator`` gRPC service: submit signed studies, read status and results.

Only peers whose certificate carries the ``coordinator`` role may call it. Domain errors become
gRPC statuses through :mod:`aggregator.status_codes`.

The servicer runs on the aggregator's ``grpc.aio`` event loop; each call's engine work (SQLite,
signature checks) runs on a small thread pool (``service_threads``), so the loop never waits
for the database and node streams never wait for coordinator calls.

``WaitStudy`` pushes completion: the call returns as soon as the study has ended (or after the
requested time, at most :data:`MAX_WAIT_S` and never past the call's deadline). A waiting call
is a coroutine holding no thread; at most ``max_waiters`` wait at once, beyond that the call
answers at once with the current status and the client waits a little before it asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
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

__all__ = ["MAX_WAITERS", "MAX_WAIT_S", "CoordinatorServicer", "iso_time", "status_message"]

logger = logging.getLogger(__name__)

MAX_WAIT_S = 30.0
"""The longest one ``WaitStudy`` call waits; a client wanting longer calls again."""
MAX_WAITERS = 4096
"""``WaitStudy`` calls waiting at once, by default (each is a coroutine and a small object)."""
_DEADLINE_MARGIN_S = 0.05  # answer this long before the caller's deadline

_Method = TypeVar("_Method", bound=Callable[..., Any])
_T = TypeVar("_T")


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
    async def wrapper(self: CoordinatorServicer, request: Any,
                      context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            require_role(context, ROLE_COORDINATOR, "coordinators may use this service")
            return await method(self, request, context)
        except AggregatorError as exc:
            await abort(context, exc)

    return wrapper  # type: ignore[return-value]


class _LoopWaker:
    """Sets an asyncio event from any thread (the engine's :class:`~aggregator.engine.Waker`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.event = asyncio.Event()
        self._loop = loop

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(self.event.set)


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """``grpc.aio`` front of the :class:`StudyEngine` for the coordinating centre.

    Parameters
    ----------
    engine
        The study engine.
    executor
        Runs the engine calls (off the event loop).
    max_waiters
        ``WaitStudy`` calls waiting at once (see the module docstring).
    """

    def __init__(self, engine: StudyEngine, executor: Executor,
                 max_waiters: int = MAX_WAITERS) -> None:
        self._engine = engine
        self._executor = executor
        self._max_waiters = max(0, max_waiters)
        self._waiting = 0  # only touched on the event loop

    def _run(self, fn: Callable[..., _T], *args: Any) -> Awaitable[_T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @_coordinator_only
    async def SubmitStudy(self, request: Any,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.StudyRef:
        """Verify and start a signed study."""
        study_id = await self._run(self._engine.submit, SignedStudy.from_proto(request))
        return pb.StudyRef(study_id=study_id)

    @_coordinator_only
    async def GetStatus(self, request: pb.StudyRef,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.StudyStatus:
        """A study's status and its sites' states."""
        return status_message(await self._run(self._engine.status, request.study_id))

    @_coordinator_only
    async def WaitStudy(self, request: pb.WaitStudyRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.StudyStatus:
        """The study's status once it has ended, or when the wait is over."""
        timeout = min(request.timeout_ms / 1000.0, MAX_WAIT_S)
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining - _DEADLINE_MARGIN_S)
        if timeout <= 0 or self._waiting >= self._max_waiters:
            return status_message(await self._run(self._engine.status, request.study_id))
        self._waiting += 1
        waker = _LoopWaker(asyncio.get_running_loop())
        try:
            status = await self._run(self._engine.watch, request.study_id, waker)
            if status.status != "running":
                return status_message(status)
            try:
                async with asyncio.timeout(timeout):
                    await waker.event.wait()
            except TimeoutError:
                pass
            return status_message(await self._run(self._engine.status, request.study_id))
        finally:  # also when the caller went away (the call's task is cancelled)
            self._waiting -= 1
            with contextlib.suppress(RuntimeError):  # shutting down: no more waiters
                self._executor.submit(self._engine.unwatch, request.study_id, waker)

    @_coordinator_only
    async def GetResults(self, request: pb.StudyRef,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.StudyResults:
        """results.json of a finished study (empty ``results_json`` while it runs)."""
        def read() -> pb.StudyResults:
            status = self._engine.status(request.study_id)
            results = self._engine.results(request.study_id)
            text = "" if results is None else json.dumps(results)
            return pb.StudyResults(study_id=status.study_id, status=status.status,
                                   results_json=text)
        return await self._run(read)

    @_coordinator_only
    async def ListStudies(self, request: pb.ListStudiesRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.StudyList:
        """Every study, oldest first."""
        studies = await self._run(self._engine.list_studies)
        return pb.StudyList(studies=[status_message(s) for s in studies])

    @_coordinator_only
    async def ListSites(self, request: pb.ListSitesRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.SiteList:
        """The site registry with connection state and data freshness."""
        sites = await self._run(self._engine.list_sites)
        return pb.SiteList(sites=[
            pb.SiteInfo(site_id=s.site_id, connected=s.connected,
                        software_version=s.software_version, last_seen=iso_time(s.last_seen),
                        ingested_at=s.ingested_at)
            for s in sites])

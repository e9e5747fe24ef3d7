"""The gRPC node link: ``NodeLink.Connect`` as the aggregator's :class:`NodeTransport`.

Each site node dials out and holds one bidirectional stream. The peer is authenticated by
mutual TLS: its certificate must carry the ``site`` role and its ``Hello.site_id`` must equal the
certificate's common name (else ``PERMISSION_DENIED``). The first message must be ``Hello``
(else ``FAILED_PRECONDITION``); the aggregator answers ``Welcome``, then pushes ``StudyTask``s
from a per-connection queue (and a ``Heartbeat`` whenever idle for the heartbeat interval),
while a reader turns the node's results and refusals into :class:`TaskReply` events.
A second connection of the same site replaces the first.

**No thread per stream.** The servicer runs on a ``grpc.aio`` server (:mod:`aggregator.aio`):
a stream is two coroutines on the server's event loop (the writer, which is the call, and its
reader task), so a thousand connected sites cost no threads. Transport events go to the
listener (the study engine, synchronous, on SQLite) through one *event thread*
(:mod:`aggregator.link_events`), in the order they happened: ``on_connect`` (awaited before
``Welcome``, so it precedes any task), replies (decoded there, not on the loop; those that
queued up together handed over as one batch, ``on_replies``, when the listener takes
batches), ``on_disconnect``. :meth:`NodeLinkServicer.send_task`
may be called from any thread: it hands the task to the stream's queue on the loop.

One site cannot stall the aggregator:

- **Hello deadline.** A stream that sends no ``Hello`` within ``hello_timeout_s`` is ended
  with ``CANCELLED``.
- **Stream limits.** Node streams are counted by the certificate that opened them, from the
  moment the call arrives (before ``Hello``): at most ``max_streams_per_site`` (2: the live link
  and one reconnect replacing it) per site certificate and ``max_streams`` in all; a stream
  beyond either is refused with ``RESOURCE_EXHAUSTED`` at once.
- **Replies checked before they are decoded.** A result or refusal must name a task that was
  sent down this stream and is not answered yet (else it is dropped, counted in
  :attr:`NodeLinkServicer.stats`, and its releases are never decoded); then its values are
  counted against ``max_message_bytes // 8`` (what a message of fixed-width values can hold);
  only then are the releases decoded, with numpy (:mod:`protocol.codec`). A reply over the cap
  becomes a refusal naming the sizes.
- **Transport limit.** ``Welcome`` tells the node ``max_message_bytes``; the node refuses a task
  whose answer would be larger, with a reason giving both sizes, instead of sending a message
  gRPC would drop together with the link.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from aggregator.errors import AggregatorError, PermissionDenied, ProtocolViolation
from aggregator.link_events import EventThread
from aggregator.peers import require_role
from aggregator.status_codes import abort
from aggregator.transport import (
    HelloInfo,
    NodeTransport,
    StudyTask,
    TaskReply,
    TransportListener,
)
from protocol.codec import decode_release, encode_release, release_value_count
from protocol.errors import ProtocolError
from protocol.pki import ROLE_SITE
from protocol.tls import MAX_MESSAGE_BYTES
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc

__all__ = ["AGGREGATOR_VERSION", "LinkStats", "NodeLinkServicer", "reply_from_message"]

logger = logging.getLogger(__name__)

AGGREGATOR_VERSION = "heron-aggregator/1"
MAX_STREAMS_PER_SITE = 2
"""Node streams one site certificate may hold at once: its link and one reconnect."""
MAX_REASON_CHARS = 2000
"""A refusal reason longer than this is cut (it is stored and shown in results.json)."""
_MAX_OPEN_TASKS = 4096  # tasks remembered per stream; the oldest unanswered ones are forgotten
_VALUE_BYTES = 8
_CLOSE = object()
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # end of the node's messages


@dataclass
class LinkStats:
    """What the node link refused or cut off, for operators and tests (counts since start)."""

    hello_timeouts: int = 0
    """Streams cancelled because no ``Hello`` came within the deadline."""
    streams_refused: int = 0
    """Streams refused at once: the site's or the total stream limit was reached."""
    replies_not_open: int = 0
    """Results and refusals dropped undecoded: no open task of this stream has that id."""
    replies_over_cap: int = 0
    """Results refused undecoded: more values than the per-message cap."""


@dataclass(frozen=True)
class _Reply:
    """A reply read from a stream and checked, waiting for the event thread."""

    site_id: str
    msg: pb.NodeMessage
    refused: TaskReply | None  # the refusal that replaces a result over the value cap


class _Connection:
    """One node stream: its outgoing queue (on the loop), the tasks sent down it and whether
    it has ended. :meth:`push` and :meth:`close` may be called from any thread."""

    def __init__(self, site_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.site_id = site_id
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = threading.Event()
        self._loop = loop
        self._lock = threading.Lock()
        self._open: OrderedDict[str, str] = OrderedDict()  # task id -> study id

    def push(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self.outbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: the stream is gone with it
            self.closed.set()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.push(_CLOSE)

    def sent(self, task: StudyTask) -> None:
        """Remember a task queued on this stream (until it is answered)."""
        with self._lock:
            self._open[task.task_id] = task.study_id
            self._open.move_to_end(task.task_id)
            while len(self._open) > _MAX_OPEN_TASKS:
                self._open.popitem(last=False)

    def answered(self, task_id: str, study_id: str) -> bool:
        """Take an open task of this stream; ``False`` when no open task has this id."""
        with self._lock:
            if self._open.get(task_id) != study_id:
                return False
            del self._open[task_id]
            return True


def _over_cap(res: pb.TaskResult, max_values: int) -> TaskReply | None:
    """A refusal when the result's releases hold more than ``max_values`` values (counted
    without decoding them); ``None`` when they fit. Raises ``ProtocolError`` for a bytes field
    that is not a whole number of values."""
    total = sum(release_value_count(x) for x in res.releases)
    if total <= max_values:
        return None
    return TaskReply(res.task_id, res.study_id, refusal=(
        f"release of {total} values exceeds the cap of {max_values} values per message"))


def reply_from_message(msg: pb.NodeMessage, max_values: int | None = None) -> TaskReply | None:
    """The :class:`TaskReply` in a node's result or refusal message (``None`` for others).

    A result whose releases cannot be decoded becomes a refusal naming the problem, so that the
    coordinator sees it instead of waiting for a timeout. With ``max_values``, a result whose
    releases hold more values in all is refused before any of them is decoded. A refusal
    reason is cut to :data:`MAX_REASON_CHARS`.
    """
    which = msg.WhichOneof("body")
    if which == "refusal":
        r = msg.refusal
        reason = r.reason if len(r.reason) <= MAX_REASON_CHARS \
            else r.reason[:MAX_REASON_CHARS] + "..."
        return TaskReply(r.task_id, r.study_id, refusal=reason)
    if which == "result":
        res = msg.result
        try:
            if max_values is not None and (refused := _over_cap(res, max_values)) is not None:
                return refused
            releases = tuple(decode_release(x) for x in res.releases)
        except (ProtocolError, ValueError, TypeError) as exc:
            return TaskReply(res.task_id, res.study_id, refusal=f"malformed release: {exc}")
        return TaskReply(res.task_id, res.study_id, releases=releases)
    return None


class NodeLinkServicer(pb_grpc.NodeLinkServicer, NodeTransport):
    """``grpc.aio`` servicer of ``NodeLink`` and the transport the study engine sends tasks
    through.

    Parameters
    ----------
    heartbeat_interval_s
        Told to nodes in ``Welcome``; also the idle time after which the aggregator sends a
        heartbeat down the stream.
    hello_timeout_s
        How long a new stream may wait before its ``Hello``; then it is cancelled.
    max_streams
        Node streams served at once (sites and their reconnects, counted before ``Hello``).
    max_streams_per_site
        Node streams one site certificate may hold at once.
    max_message_bytes
        The transport limit: told to nodes in ``Welcome``; a result holding more than
        ``max_message_bytes // 8`` values is refused undecoded.
    """

    def __init__(self, heartbeat_interval_s: int = 5, *, hello_timeout_s: float = 10.0,
                 max_streams: int = 64, max_streams_per_site: int = MAX_STREAMS_PER_SITE,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._heartbeat_s = max(1, int(heartbeat_interval_s))
        self._hello_timeout_s = float(hello_timeout_s)
        self._max_streams = int(max_streams)
        self._max_per_site = int(max_streams_per_site)
        self._max_message_bytes = int(max_message_bytes)
        self._lock = threading.Lock()
        self._served = threading.Condition(self._lock)  # notified when a stream ends
        self._connections: dict[str, _Connection] = {}
        self._streams: Counter[str] = Counter()  # live node streams by certificate name
        self._serving = 0  # streams past Hello whose call has not ended
        self._listener: TransportListener | None = None
        self._closing = False
        self._events: EventThread[_Reply] = EventThread(self._deliver)
        self.stats = LinkStats()

    # -- NodeTransport ---------------------------------------------------------------------------

    def set_listener(self, listener: TransportListener) -> None:
        """Set the receiver of connect, disconnect and reply events."""
        self._listener = listener

    def connected_sites(self) -> list[str]:
        """Ids of the sites with an open stream, sorted."""
        with self._lock:
            return sorted(self._connections)

    def stream_count(self) -> int:
        """Node streams being served now (including those still waiting for ``Hello``)."""
        with self._lock:
            return sum(self._streams.values())

    def send_task(self, site_id: str, task: StudyTask) -> bool:
        """Queue a task on the site's stream (from any thread); ``False`` if the site is not
        connected."""
        with self._lock:
            conn = self._connections.get(site_id)
        if conn is None or conn.closed.is_set():
            return False
        conn.sent(task)
        conn.push(task)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """End every stream (nodes reconnect later), refuse new ones and wait up to
        ``timeout_s`` for the streams' calls to end (call it from outside the loop)."""
        with self._lock:
            self._closing = True
            conns = list(self._connections.values())
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + timeout_s
        with self._served:
            self._served.wait_for(lambda: self._serving == 0,
                                  max(0.0, deadline - time.monotonic()))
        self._events.close(wait=False)  # events already queued still run (see drain)

    def drain(self) -> None:
        """Wait until the events queued before :meth:`close` have been handled (later ones
        are dropped): call it before the listener's store goes away."""
        self._events.close(wait=True)

    # -- gRPC ------------------------------------------------------------------------------------

    async def Connect(self, request_iterator: AsyncIterator[pb.NodeMessage],
                      context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Serve one node's stream (see the module docstring)."""
        try:
            identity = require_role(context, ROLE_SITE, "sites may open a node link")
        except AggregatorError as exc:
            await abort(context, exc)
        name = identity.common_name
        refusal = self._take_slot(name)
        if refusal is not None:
            logger.warning("node stream of %s refused: %s", name, refusal)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        try:
            await self._serve(name, context)
        finally:
            self._give_slot(name)

    def _take_slot(self, name: str) -> str | None:
        """Count a new stream of certificate ``name``; the reason when a limit forbids it."""
        with self._lock:
            if self._streams[name] >= self._max_per_site:
                reason = (f"site {name!r} already has {self._streams[name]} node streams "
                          f"open (at most {self._max_per_site})")
            elif sum(self._streams.values()) >= self._max_streams:
                reason = f"the aggregator serves at most {self._max_streams} node streams"
            else:
                self._streams[name] += 1
                return None
            self.stats.streams_refused += 1
            return reason

    def _give_slot(self, name: str) -> None:
        with self._lock:
            self._streams[name] -= 1
            if self._streams[name] <= 0:
                del self._streams[name]

    async def _serve(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            async with asyncio.timeout(self._hello_timeout_s):
                first = await context.read()
        except TimeoutError:
            with self._lock:
                self.stats.hello_timeouts += 1
            logger.warning("node stream of %s closed: no Hello within %g s", name,
                           self._hello_timeout_s)
            await context.abort(grpc.StatusCode.CANCELLED,
                                f"no Hello within {self._hello_timeout_s:g} s")
        if first is _EOF:
            return  # the node hung up before saying Hello
        try:
            site_id, info = self._handshake(name, first)
        except AggregatorError as exc:
            await abort(context, exc)
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the aggregator is shutting down")
        conn = _Connection(site_id, asyncio.get_running_loop())
        self._register(conn)
        reader: asyncio.Task[None] | None = None
        try:
            reader = asyncio.create_task(self._read(conn, context))
            if self._listener is not None:  # may queue outstanding tasks, after the Welcome
                await asyncio.wrap_future(
                    self._events.call(self._listener.on_connect, site_id, info))
            await context.write(pb.AggregatorMessage(welcome=pb.Welcome(
                aggregator_version=AGGREGATOR_VERSION, heartbeat_interval_s=self._heartbeat_s,
                max_message_bytes=self._max_message_bytes)))
            await self._outgoing(conn, context)
        finally:
            conn.close()
            if reader is not None:
                reader.cancel()
            if self._unregister(conn) and self._listener is not None:
                self._events.call(self._listener.on_disconnect, site_id)
            with self._served:
                self._serving -= 1
                self._served.notify_all()

    def _handshake(self, name: str, first: pb.NodeMessage) -> tuple[str, HelloInfo]:
        if first.WhichOneof("body") != "hello":
            raise ProtocolViolation("the first message of a node link must be Hello")
        hello = first.hello
        if hello.site_id != name:
            raise PermissionDenied(f"Hello names site {hello.site_id!r} but the certificate "
                                   f"is for {name!r}")
        info = HelloInfo(site_id=hello.site_id, software_version=hello.software_version,
                         ingested_at=hello.freshness.ingested_at)
        return hello.site_id, info

    async def _outgoing(self, conn: _Connection,
                        context: grpc.aio.ServicerContext[Any, Any]) -> None:
        while True:
            try:
                async with asyncio.timeout(self._heartbeat_s):
                    item = await conn.outbox.get()
            except TimeoutError:
                await context.write(pb.AggregatorMessage(heartbeat=pb.Heartbeat(
                    sent_unix_ms=int(time.time() * 1000))))
                continue
            if item is _CLOSE:
                return
            task: StudyTask = item
            logger.info("task %s of study %s to %s", task.task_id, task.study_id, conn.site_id)
            await context.write(pb.AggregatorMessage(task=pb.StudyTask(
                task_id=task.task_id, study_id=task.study_id, study=task.signed.to_proto(),
                round=task.round, inputs=[encode_release(r) for r in task.inputs])))

    def _check(self, conn: _Connection, msg: pb.NodeMessage) -> TaskReply | bool:
        """Check a result or refusal against the stream's open tasks, then the value cap,
        without decoding it: ``False`` (dropped), a refusal (over the cap) or ``True``."""
        which = msg.WhichOneof("body")
        body = msg.result if which == "result" else msg.refusal
        if not conn.answered(body.task_id, body.study_id):
            with self._lock:
                self.stats.replies_not_open += 1
            logger.warning("site %s answered task %r of study %r, which is not an open task "
                           "of its link; dropped undecoded", conn.site_id, body.task_id[:64],
                           body.study_id[:64])
            return False
        if which == "result":
            try:
                refused = _over_cap(msg.result, self._max_message_bytes // _VALUE_BYTES)
            except ProtocolError:
                refused = None  # reply_from_message names the problem
            if refused is not None:
                with self._lock:
                    self.stats.replies_over_cap += 1
                logger.warning("site %s: %s", conn.site_id, refused.refusal)
                return refused
        return True

    async def _read(self, conn: _Connection, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            while (msg := await context.read()) is not _EOF:
                which = msg.WhichOneof("body")
                if which == "heartbeat":
                    continue
                if which not in ("result", "refusal"):
                    logger.warning("site %s sent an unexpected %s; ignored", conn.site_id, which)
                    continue
                if not self._is_current(conn):
                    logger.info("dropping reply of %s over a replaced link", conn.site_id)
                    continue
                checked = self._check(conn, msg)
                if checked is not False and self._listener is not None:
                    self._events.reply(_Reply(conn.site_id, msg,
                                              None if checked is True else checked))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream was cancelled or broke: the writer ends the call
            logger.debug("node link reader of %s ended: %r", conn.site_id, exc)
        finally:
            conn.close()

    def _deliver(self, replies: Sequence[_Reply]) -> None:
        """On the event thread: decode checked replies and hand them to the listener (in one
        batch when it takes batches)."""
        decoded = [(r.site_id, r.refused or reply_from_message(r.msg)) for r in replies]
        ready = [(site, reply) for site, reply in decoded if reply is not None]
        listener = self._listener
        if listener is None or not ready:
            return
        on_replies = getattr(listener, "on_replies", None)
        if on_replies is not None:
            on_replies(ready)
            return
        for site, reply in ready:
            try:
                listener.on_reply(site, reply)
            except Exception:
                logger.exception("handling the reply of %s failed", site)

    def _register(self, conn: _Connection) -> None:
        with self._lock:
            old = self._connections.get(conn.site_id)
            self._connections[conn.site_id] = conn
            self._serving += 1
        if old is not None:
            logger.info("site %s reconnected; replacing its previous link", conn.site_id)
            old.close()

    def _unregister(self, conn: _Connection) -> bool:
        with self._lock:
            if self._connections.get(conn.site_id) is conn:
                del self._connections[conn.site_id]
                return True
            return False

    def _is_current(self, conn: _Connection) -> bool:
        with self._lock:
            return self._connections.get(conn.site_id) is conn and not conn.closed.is_set()

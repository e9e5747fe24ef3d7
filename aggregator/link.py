"""The gRPC node link: ``NodeLink.Connect`` as the aggregator's :class:`NodeTransport`.

Each site node dials out and holds one bidirectional stream. The peer is authenticated by
mutual TLS: its certificate must carry the ``site`` role and its ``Hello.site_id`` must equal the
certificate's common name (else ``PERMISSION_DENIED``). The first message must be ``Hello``
(else ``FAILED_PRECONDITION``); the aggregator answers ``Welcome``, then pushes ``StudyTask``s
from a per-connection queue (and a ``Heartbeat`` whenever idle for the heartbeat interval),
while a reader thread turns the node's results and refusals into :class:`TaskReply` events.
A second connection of the same site replaces the first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from aggregator.errors import AggregatorError, PermissionDenied, ProtocolViolation
from aggregator.peers import require_role
from aggregator.status_codes import abort
from aggregator.transport import (
    HelloInfo,
    NodeTransport,
    StudyTask,
    TaskReply,
    TransportListener,
)
from protocol.codec import decode_release, encode_release
from protocol.errors import ProtocolError
from protocol.pki import ROLE_SITE
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc

__all__ = ["AGGREGATOR_VERSION", "NodeLinkServicer", "reply_from_message"]

logger = logging.getLogger(__name__)

AGGREGATOR_VERSION = "heron-aggregator/1"
_CLOSE = object()


class _Connection:
    """One node stream: its outgoing queue and whether it has ended."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.closed = threading.Event()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.outbox.put(_CLOSE)


def reply_from_message(msg: pb.NodeMessage) -> TaskReply | None:
    """The :class:`TaskReply` in a node's result or refusal message (``None`` for others).

    A result whose releases cannot be decoded becomes a refusal naming the problem, so that the
    coordinator sees it instead of waiting for a timeout.
    """
    which = msg.WhichOneof("body")
    if which == "refusal":
        r = msg.refusal
        return TaskReply(r.task_id, r.study_id, refusal=r.reason)
    if which == "result":
        res = msg.result
        try:
            releases = tuple(decode_release(x) for x in res.releases)
        except (ProtocolError, ValueError, TypeError) as exc:
            return TaskReply(res.task_id, res.study_id, refusal=f"malformed release: {exc}")
        return TaskReply(res.task_id, res.study_id, releases=releases)
    return None


class NodeLinkServicer(pb_grpc.NodeLinkServicer, NodeTransport):
    """gRPC servicer of ``NodeLink`` and the transport the study engine sends tasks through.

    Parameters
    ----------
    heartbeat_interval_s
        Told to nodes in ``Welcome``; also the idle time after which the aggregator sends a
        heartbeat down the stream.
    """

    def __init__(self, heartbeat_interval_s: int = 5) -> None:
        self._heartbeat_s = max(1, int(heartbeat_interval_s))
        self._lock = threading.Lock()
        self._connections: dict[str, _Connection] = {}
        self._readers: list[threading.Thread] = []
        self._listener: TransportListener | None = None
        self._closing = False

    # -- NodeTransport ---------------------------------------------------------------------------

    def set_listener(self, listener: TransportListener) -> None:
        """Set the receiver of connect, disconnect and reply events."""
        self._listener = listener

    def connected_sites(self) -> list[str]:
        """Ids of the sites with an open stream, sorted."""
        with self._lock:
            return sorted(self._connections)

    def send_task(self, site_id: str, task: StudyTask) -> bool:
        """Queue a task on the site's stream; ``False`` if the site is not connected."""
        with self._lock:
            conn = self._connections.get(site_id)
        if conn is None or conn.closed.is_set():
            return False
        conn.outbox.put(task)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """End every stream (nodes reconnect later) and refuse new ones."""
        with self._lock:
            self._closing = True
            conns = list(self._connections.values())
            readers = list(self._readers)
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + timeout_s
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    # -- gRPC ------------------------------------------------------------------------------------

    def Connect(self, request_iterator: Iterator[pb.NodeMessage],
                context: grpc.ServicerContext) -> Iterator[pb.AggregatorMessage]:
        """Serve one node's stream (see the module docstring)."""
        try:
            site_id, info = self._handshake(request_iterator, context)
        except AggregatorError as exc:
            abort(context, exc)
        except (StopIteration, grpc.RpcError):
            return  # the node hung up before saying Hello
        if self._closing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the aggregator is shutting down")
        conn = _Connection(site_id)
        context.add_callback(conn.close)
        self._register(conn)
        try:
            reader = threading.Thread(target=self._read, args=(conn, request_iterator),
                                      name=f"node-link-{site_id}", daemon=True)
            with self._lock:
                self._readers = [t for t in self._readers if t.is_alive()]
                self._readers.append(reader)
            reader.start()
            if self._listener is not None:
                self._listener.on_connect(site_id, info)  # may queue outstanding tasks
            yield pb.AggregatorMessage(welcome=pb.Welcome(
                aggregator_version=AGGREGATOR_VERSION, heartbeat_interval_s=self._heartbeat_s))
            yield from self._outgoing(conn)
        finally:
            conn.close()
            if self._unregister(conn) and self._listener is not None:
                self._listener.on_disconnect(site_id)

    def _handshake(self, request_iterator: Iterator[pb.NodeMessage],
                   context: grpc.ServicerContext) -> tuple[str, HelloInfo]:
        identity = require_role(context, ROLE_SITE, "sites may open a node link")
        first = next(request_iterator)
        if first.WhichOneof("body") != "hello":
            raise ProtocolViolation("the first message of a node link must be Hello")
        hello = first.hello
        if hello.site_id != identity.common_name:
            raise PermissionDenied(f"Hello names site {hello.site_id!r} but the certificate "
                                   f"is for {identity.common_name!r}")
        info = HelloInfo(site_id=hello.site_id, software_version=hello.software_version,
                         ingested_at=hello.freshness.ingested_at)
        return hello.site_id, info

    def _outgoing(self, conn: _Connection) -> Iterator[pb.AggregatorMessage]:
        while True:
            try:
                item = conn.outbox.get(timeout=self._heartbeat_s)
            except queue.Empty:
                yield pb.AggregatorMessage(heartbeat=pb.Heartbeat(
                    sent_unix_ms=int(time.time() * 1000)))
                continue
            if item is _CLOSE:
                return
            task: StudyTask = item
            logger.info("task %s of study %s to %s", task.task_id, task.study_id, conn.site_id)
            yield pb.AggregatorMessage(task=pb.StudyTask(
                task_id=task.task_id, study_id=task.study_id, study=task.signed.to_proto(),
                round=task.round, inputs=[encode_release(r) for r in task.inputs]))

    def _read(self, conn: _Connection, request_iterator: Iterator[pb.NodeMessage]) -> None:
        try:
            for msg in request_iterator:
                which = msg.WhichOneof("body")
                if which == "heartbeat":
                    continue
                reply = reply_from_message(msg)
                if reply is None:
                    logger.warning("site %s sent an unexpected %s; ignored", conn.site_id, which)
                elif not self._is_current(conn):
                    logger.info("dropping reply of %s over a replaced link", conn.site_id)
                elif self._listener is not None:
                    try:
                        self._listener.on_reply(conn.site_id, reply)
                    except Exception:
                        logger.exception("handling the reply of %s failed", conn.site_id)
        except grpc.RpcError:
            pass  # the stream was cancelled or closed; the writer side ends the call
        except Exception:
            logger.exception("node link reader of %s failed", conn.site_id)
        finally:
            conn.close()

    def _register(self, conn: _Connection) -> None:
        with self._lock:
            old = self._connections.get(conn.site_id)
            self._connections[conn.site_id] = conn
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

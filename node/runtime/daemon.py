"""The node daemon: dials out to the aggregator, holds the node link, answers tasks.

Hospitals accept no inbound connections, so the node opens one bidirectional gRPC stream
(mutual TLS) and keeps it: hello, heartbeats, tasks down, results up. When the aggregator is
away it reconnects with exponential backoff and jitter. SIGTERM stops it gracefully: the task
in hand is finished and sent, then the stream is closed.

No answer exceeds the transport limit silently: before an answer goes up the stream its
encoded size is compared with the limit, the smaller of this node's ``max_message_bytes`` and
the one the aggregator announced in ``Welcome``. A larger answer is replaced by a refusal of
the task saying "release of N bytes exceeds the transport limit of M bytes", which the
aggregator records for this site; gRPC would otherwise drop the message and the whole link.
"""

from __future__ import annotations

import logging
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

import grpc

from node.runtime.engine import TaskOutcome
from protocol.codec import Release, answer_message, decode_release
from protocol.pki import Credentials
from protocol.signing import SignedStudy
from protocol.tls import MAX_MESSAGE_BYTES, channel_credentials, channel_options
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc
from protocol.version import __version__

__all__ = ["Backoff", "NodeDaemon", "oversize_reason"]

logger = logging.getLogger(__name__)

Answer = Callable[[str, SignedStudy, int, tuple[Release, ...]], TaskOutcome]
_MESSAGE_LIMIT_OPTIONS = ("grpc.max_send_message_length", "grpc.max_receive_message_length")


def oversize_reason(size: int, limit: int) -> str:
    """The refusal reason of an answer of ``size`` bytes over a transport limit of ``limit``."""
    return f"release of {size} bytes exceeds the transport limit of {limit} bytes"


@dataclass
class Backoff:
    """Exponential backoff with full jitter, reset after a successful connection."""

    initial_s: float = 0.5
    maximum_s: float = 30.0
    attempt: int = 0

    def next_delay(self, rng: random.Random) -> float:
        """Delay before the next attempt."""
        ceiling = min(self.maximum_s, self.initial_s * (2 ** self.attempt))
        self.attempt += 1
        return ceiling / 2 + rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """Forget earlier failures."""
        self.attempt = 0


class NodeDaemon:
    """One site's connection to the aggregator.

    Parameters
    ----------
    site_id, target
        This site's id and the aggregator address (host must match its certificate).
    credentials
        ``protocol.pki.Credentials`` of this site.
    answer
        ``answer(study_id, signed_study, round, inputs) -> TaskOutcome`` (the node engine).
    freshness
        Returns ``ingested_at`` (ISO time of the last ingestion, "" for never) for the hello.
    max_message_bytes
        The largest message this node sends or receives; the aggregator's ``Welcome`` may
        lower it for the link (:attr:`message_limit`).
    """

    def __init__(self, site_id: str, target: str, credentials: Credentials, answer: Answer,
                 freshness: Callable[[], str], heartbeat_s: float = 5.0,
                 backoff_max_s: float = 30.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.site_id = site_id
        self.target = target
        self.credentials = credentials
        self.answer = answer
        self.freshness = freshness
        self.heartbeat_s = heartbeat_s
        self.backoff = Backoff(maximum_s=backoff_max_s)
        self.max_message_bytes = int(max_message_bytes)
        self.message_limit = self.max_message_bytes
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._out: queue.Queue[pb.NodeMessage | None] | None = None
        self._busy = threading.Lock()
        self._rng = random.Random()
        self.connected = threading.Event()

    def stop(self, drain_s: float = 5.0) -> None:
        """Finish the task in hand, send its answer, close the link and leave.

        The outbound stream is half-closed after the last answer; the call is cancelled if the
        aggregator has not ended it within ``drain_s`` seconds.
        """
        self._stop.set()
        if self._busy.acquire(blocking=False):
            try:
                self._close_outbound()
            finally:
                self._busy.release()
        timer = threading.Timer(drain_s, self._cancel)
        timer.daemon = True
        timer.start()

    def _close_outbound(self) -> None:
        out = self._out
        if out is not None:
            out.put(None)
        elif self._call is not None:
            self._call.cancel()

    def _cancel(self) -> None:
        call = self._call
        if call is not None:
            call.cancel()

    def _outbound(self, out: queue.Queue[pb.NodeMessage | None]) -> Iterator[pb.NodeMessage]:
        ingested_at = self.freshness()
        yield pb.NodeMessage(hello=pb.Hello(
            site_id=self.site_id, software_version=__version__,
            freshness=pb.DataFreshness(ingested_at=ingested_at)))
        while True:
            try:
                msg = out.get(timeout=self.heartbeat_s)
            except queue.Empty:
                msg = pb.NodeMessage(heartbeat=pb.Heartbeat(sent_unix_ms=int(time.time() * 1000)))
            if msg is None:
                return
            yield self._within_limit(msg)

    def _within_limit(self, msg: pb.NodeMessage) -> pb.NodeMessage:
        """``msg``, or a refusal of its task when it is larger than the transport limit."""
        if msg.WhichOneof("body") != "result":
            return msg
        size, limit = msg.ByteSize(), self.message_limit
        if size <= limit:
            return msg
        reason = oversize_reason(size, limit)
        logger.warning("task %s of study %s refused: %s", msg.result.task_id,
                       msg.result.study_id, reason)
        return answer_message(msg.result.task_id, msg.result.study_id, None, reason)

    def _handle_task(self, task: pb.StudyTask, out: queue.Queue[pb.NodeMessage | None]) -> None:
        with self._busy:
            self._answer_task(task, out)
            if self._stop.is_set():
                out.put(None)

    def _answer_task(self, task: pb.StudyTask, out: queue.Queue[pb.NodeMessage | None]) -> None:
        signed = SignedStudy.from_proto(task.study)
        try:
            inputs = tuple(decode_release(r) for r in task.inputs)
            outcome = self.answer(task.study_id, signed, max(task.round, 1), inputs)
        except Exception:  # the node must keep running; the reason goes upstream
            logger.exception("task %s for study %s failed", task.task_id, task.study_id)
            outcome = TaskOutcome(refusal="internal error at the site node")
        out.put(answer_message(task.task_id, task.study_id, outcome.releases, outcome.refusal))

    def _session(self) -> None:
        out: queue.Queue[pb.NodeMessage | None] = queue.Queue()
        self._out = out
        options = [o for o in channel_options() if o[0] not in _MESSAGE_LIMIT_OPTIONS]
        options += [(name, self.max_message_bytes) for name in _MESSAGE_LIMIT_OPTIONS]
        self.message_limit = self.max_message_bytes
        channel = grpc.secure_channel(self.target, channel_credentials(self.credentials),
                                      options=options)
        try:
            stub = pb_grpc.NodeLinkStub(channel)
            call = stub.Connect(self._outbound(out))
            self._call = call
            if self._stop.is_set():
                out.put(None)
            for msg in call:
                which = msg.WhichOneof("body")
                if which == "welcome":
                    announced = msg.welcome.max_message_bytes
                    if announced > 0:
                        self.message_limit = min(self.max_message_bytes, announced)
                    logger.info("connected to aggregator %s", self.target)
                    self.backoff.reset()
                    self.connected.set()
                elif which == "task":
                    logger.info("task %s: study %s", msg.task.task_id, msg.task.study_id)
                    self._handle_task(msg.task, out)
            out.put(None)
        finally:
            self.connected.clear()
            self._call = None
            self._out = None
            channel.close()

    def run(self) -> None:
        """Connect and serve until :meth:`stop`; reconnect with backoff when the link drops."""
        while not self._stop.is_set():
            try:
                self._session()
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                code = exc.code() if hasattr(exc, "code") else None
                logger.warning("aggregator link lost (%s)", getattr(code, "name", code))
            if self._stop.is_set():
                break
            delay = self.backoff.next_delay(self._rng)
            logger.info("reconnecting in %.1f s", delay)
            self._stop.wait(delay)
        logger.info("node %s stopped", self.site_id)

    def run_until_signal(self) -> None:
        """Run in the foreground; SIGTERM and SIGINT stop gracefully."""
        def _handler(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: shutting down", signum)
            self.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
        self.run()

"""The transport between the study engine and the site nodes, independent of gRPC.

The engine (:mod:`aggregator.engine`) sees nodes only through :class:`NodeTransport`: which sites
are connected, send a task to one, and hear about connects, disconnects and replies through a
:class:`TransportListener`. :class:`aggregator.link.NodeLinkServicer` is the gRPC implementation;
:class:`LocalTransport` runs "nodes" that are Python callables, for tests and in-process runs.

Contract of every implementation (checked by ``tests/test_aggregator_transport_contract.py``):

- ``send_task`` never blocks on the node and never calls the listener from the caller's thread,
  so the engine may call it while holding its lock;
- a second connection of the same site replaces the first (no ``on_disconnect`` for the replaced
  one); replies arriving over a replaced or closed connection are dropped;
- ``on_connect`` is called before any task can be sent to the site, ``on_disconnect`` once when
  the site's current connection ends.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from protocol.codec import Release
from protocol.signing import SignedStudy

__all__ = [
    "HelloInfo",
    "LocalTransport",
    "NodeHandler",
    "NodeTransport",
    "NullListener",
    "StudyTask",
    "TaskReply",
    "TransportListener",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HelloInfo:
    """What a node says about itself when it connects (never patient-level data)."""

    site_id: str
    software_version: str = ""
    ingested_at: str = ""


@dataclass(frozen=True)
class StudyTask:
    """A request to one site to run a signed study; ``task_id`` is unique per study, site and
    round; ``inputs`` are the round's requests (:mod:`protocol.rounds`)."""

    task_id: str
    study_id: str
    signed: SignedStudy
    round: int = 1
    inputs: tuple[Release, ...] = ()


@dataclass(frozen=True)
class TaskReply:
    """A node's answer to a task: its releases, or a refusal with the reason.

    Exactly one of ``releases`` and ``refusal`` is set.
    """

    task_id: str
    study_id: str
    releases: tuple[Release, ...] | None = None
    refusal: str | None = None

    def __post_init__(self) -> None:
        if (self.releases is None) == (self.refusal is None):
            raise ValueError("a TaskReply has exactly one of releases and refusal")


class TransportListener(Protocol):
    """Receiver of transport events (the study engine)."""

    def on_connect(self, site_id: str, hello: HelloInfo) -> None:
        """A site connected (or reconnected) and introduced itself."""

    def on_disconnect(self, site_id: str) -> None:
        """The current connection of a site ended."""

    def on_reply(self, site_id: str, reply: TaskReply) -> None:
        """A site answered a task."""


class NodeTransport(ABC):
    """How the engine reaches connected site nodes."""

    @abstractmethod
    def connected_sites(self) -> list[str]:
        """Ids of the sites connected now, sorted."""

    @abstractmethod
    def send_task(self, site_id: str, task: StudyTask) -> bool:
        """Queue ``task`` for ``site_id``; ``False`` when that site is not connected."""

    @abstractmethod
    def set_listener(self, listener: TransportListener) -> None:
        """Set the receiver of connect, disconnect and reply events."""


NodeHandler = Callable[[StudyTask], TaskReply | None]
"""An in-process node: answers a task, or returns ``None`` to stay silent."""


class NullListener:
    """A listener that ignores every event (before one is set, or for a stopped engine)."""

    def on_connect(self, site_id: str, hello: HelloInfo) -> None:
        logger.debug("no listener for connect of %s", site_id)

    def on_disconnect(self, site_id: str) -> None:
        logger.debug("no listener for disconnect of %s", site_id)

    def on_reply(self, site_id: str, reply: TaskReply) -> None:
        logger.debug("no listener for reply of %s", site_id)


@dataclass(frozen=True)
class _LocalNode:
    handler: NodeHandler
    generation: int


class LocalTransport(NodeTransport):
    """An in-process transport whose nodes are callables run on worker threads.

    Parameters
    ----------
    max_workers
        Threads running node handlers concurrently.
    """

    def __init__(self, max_workers: int = 8) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, _LocalNode] = {}
        self._generation = 0
        self._listener: TransportListener = NullListener()
        self._executor = ThreadPoolExecutor(max_workers=max_workers,
                                            thread_name_prefix="local-node")

    def set_listener(self, listener: TransportListener) -> None:
        """Set the receiver of transport events."""
        self._listener = listener

    def connect(self, site_id: str, handler: NodeHandler, hello: HelloInfo | None = None) -> None:
        """Connect a node (replacing an earlier connection of the same site)."""
        with self._lock:
            self._generation += 1
            self._nodes[site_id] = _LocalNode(handler, self._generation)
        self._listener.on_connect(site_id, hello or HelloInfo(site_id=site_id))

    def disconnect(self, site_id: str) -> None:
        """Disconnect a node; unknown sites are ignored."""
        with self._lock:
            node = self._nodes.pop(site_id, None)
        if node is not None:
            self._listener.on_disconnect(site_id)

    def connected_sites(self) -> list[str]:
        """Ids of the connected nodes, sorted."""
        with self._lock:
            return sorted(self._nodes)

    def send_task(self, site_id: str, task: StudyTask) -> bool:
        """Run the site's handler on a worker thread; ``False`` if the site is not connected."""
        with self._lock:
            node = self._nodes.get(site_id)
        if node is None:
            return False
        self._executor.submit(self._run, site_id, node, task)
        return True

    def close(self) -> None:
        """Disconnect every node and wait for running handlers to finish."""
        for site_id in self.connected_sites():
            self.disconnect(site_id)
        self._executor.shutdown(wait=True)

    def _run(self, site_id: str, node: _LocalNode, task: StudyTask) -> None:
        try:
            reply = node.handler(task)
        except Exception:
            logger.exception("local node %s failed on task %s", site_id, task.task_id)
            return
        if reply is None:
            return
        with self._lock:
            current = self._nodes.get(site_id)
        if current is None or current.generation != node.generation:
            logger.info("dropping reply of %s to %s: connection gone", site_id, task.task_id)
            return
        self._listener.on_reply(site_id, reply)

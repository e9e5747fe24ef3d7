"""Helpers shared by the aggregator tests: PKI, signed studies, a fake pool, a gRPC test node.

Everything here is real (certificates from :mod:`protocol.pki`, Ed25519 signatures, gRPC with
mutual TLS) except the analysis strategies, which the engine receives injected: the engine
tests use :class:`FakeStrategy` instead of the real statistics of :mod:`aggregator.strategies`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.strategies import OneShotStrategy
from aggregator.transport import HelloInfo, StudyTask, TaskReply
from protocol import pki
from protocol.codec import Release, answer_message
from protocol.signing import SignedStudy, sign_study
from protocol.study import Study, study_from_dict
from protocol.tls import channel_credentials
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc

WAIT_S = 15.0


class FakeClock:
    """A settable clock (Unix seconds), injected into the engine instead of ``time.time``."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStrategy(OneShotStrategy):
    """A FAKE strategy (the real ones are in aggregator.strategies).

    Sums every released vector per analysis, so tests can see which releases were pooled;
    ``pooled`` records each call's releases, ``broken`` makes pooling raise.
    """

    kinds = ("kaplan_meier", "adverse_events")

    def __init__(self, broken: str = "") -> None:
        self.pooled: list[dict[str, Release]] = []
        self.broken = broken

    def pool(self, analysis: Any, study: Any, releases: Any) -> dict[str, Any]:
        if self.broken:
            raise ValueError(self.broken)
        self.pooled.append(dict(releases))
        return {"total": sum(int(np.sum(v)) for r in releases.values()
                             for v in r.vectors.values())}

    def result(self, state: Any, analysis: Any) -> dict[str, Any]:
        if state.error:
            return {"kind": state.kind, "error": state.error}
        return {"kind": state.kind, "sites": state.result["sites"],
                "total": state.result["total"]}


def fake_strategies(broken: str = "") -> dict[str, FakeStrategy]:
    """The FAKE strategy for both kinds of :func:`make_study`."""
    fake = FakeStrategy(broken)
    return {"kaplan_meier": fake, "adverse_events": fake}


def make_study(study_id: str = "test-study", min_sites: int = 1,
               expires: str = "2099-12-31") -> Study:
    """A small valid study with two analyses."""
    return study_from_dict({
        "heron": 1, "id": study_id, "title": f"Study {study_id}", "expires": expires,
        "horizon_days": 30,
        "analyses": [
            {"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"},
            {"name": "crs", "kind": "adverse_events", "terms": ["CRS"]},
        ],
        "privacy": {"secure_aggregation": False, "min_sites": min_sites},
    })


def signed(study: Study, key: Ed25519PrivateKey) -> SignedStudy:
    """The study signed with ``key``."""
    return sign_study(study, key)


def site_releases(study: Study, value: int = 1) -> tuple[Release, ...]:
    """One release per analysis whose vectors sum to ``value * 3`` each."""
    return tuple(Release(analysis=a.name, kind=a.kind,
                         vectors={"counts": np.array([value, value, value], dtype=np.int64)},
                         metadata={"groups": ["all"]}) for a in study.analyses)


def releasing_node(value: int = 1) -> Callable[[StudyTask], TaskReply]:
    """A node handler that releases :func:`site_releases` for the task's study."""
    def handler(task: StudyTask) -> TaskReply:
        study = study_from_dict(task.signed.study_document())
        return TaskReply(task.task_id, task.study_id, releases=site_releases(study, value))
    return handler


def refusing_node(reason: str) -> Callable[[StudyTask], TaskReply]:
    """A node handler that refuses every task with ``reason``."""
    def handler(task: StudyTask) -> TaskReply:
        return TaskReply(task.task_id, task.study_id, refusal=reason)
    return handler


def silent_node(task: StudyTask) -> None:
    """A node handler that never answers."""
    return None


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds (a bound, not a
    timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


@dataclass
class Network:
    """Credentials of a test network made with protocol.pki."""

    root: Path
    ca_dir: Path
    aggregator: pki.Credentials
    coordinator: pki.Credentials

    def site(self, site_id: str) -> pki.Credentials:
        """Issue (once) and return a site's credentials."""
        out = self.root / "sites" / site_id
        if not (out / "cert.pem").exists():
            pki.issue_site(self.ca_dir, site_id, out)
        return pki.load_credentials(out)


def make_network(root: Path) -> Network:
    """A CA with aggregator and coordinator credentials under ``root``."""
    ca_dir = root / "ca"
    pki.init_ca(ca_dir)
    agg = pki.issue_aggregator(ca_dir, root / "aggregator")
    coord = pki.issue_coordinator(ca_dir, "ecc", root / "coordinator")
    return Network(root, ca_dir, agg, coord)


class GrpcTestNode:
    """A minimal site node speaking NodeLink with the generated stub (for tests only).

    Parameters
    ----------
    target
        ``127.0.0.1:PORT`` of the aggregator.
    creds
        The site's (or, in negative tests, anyone's) credentials.
    site_id
        Sent in ``Hello``.
    handler
        Answers tasks in domain form (see :data:`aggregator.transport.NodeHandler`).
    """

    def __init__(self, target: str, creds: pki.Credentials, site_id: str,
                 handler: Callable[[StudyTask], TaskReply | None] = silent_node,
                 hello: HelloInfo | None = None, first_message: pb.NodeMessage | None = None):
        self.site_id = site_id
        self.handler = handler
        self.hello = hello or HelloInfo(site_id, "test-node/1", "2026-01-01T00:00:00Z")
        self.first_message = first_message
        self.tasks: list[StudyTask] = []
        self.welcome: pb.Welcome | None = None
        self.error: grpc.RpcError | None = None
        self.welcomed = threading.Event()
        self.done = threading.Event()
        self._out: queue.Queue[pb.NodeMessage | None] = queue.Queue()
        self._channel = grpc.secure_channel(target, channel_credentials(creds))
        self._call = pb_grpc.NodeLinkStub(self._channel).Connect(self._requests())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[pb.NodeMessage]:
        if self.first_message is not None:
            yield self.first_message
        else:
            yield pb.NodeMessage(hello=pb.Hello(
                site_id=self.site_id, software_version=self.hello.software_version,
                freshness=pb.DataFreshness(ingested_at=self.hello.ingested_at)))
        while (msg := self._out.get()) is not None:
            yield msg

    def _run(self) -> None:
        try:
            for msg in self._call:
                which = msg.WhichOneof("body")
                if which == "welcome":
                    self.welcome = msg.welcome
                    self.welcomed.set()
                elif which == "task":
                    self._answer(msg.task)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()

    def _answer(self, t: pb.StudyTask) -> None:
        task = StudyTask(t.task_id, t.study_id, SignedStudy.from_proto(t.study), t.round)
        self.tasks.append(task)
        reply = self.handler(task)
        if reply is None:
            return
        self.send(answer_message(reply.task_id, reply.study_id, reply.releases, reply.refusal))

    def send(self, msg: pb.NodeMessage) -> None:
        """Send a raw message up the stream."""
        self._out.put(msg)

    def wait_done(self, timeout: float = WAIT_S) -> grpc.RpcError | None:
        """Wait for the stream to end; return its error, if any."""
        assert self.done.wait(timeout), "the node stream did not end"
        return self.error

    def close(self) -> None:
        """End the stream from the node side (half-close), then close the channel."""
        self._out.put(None)
        self.done.wait(WAIT_S)
        self._call.cancel()
        self._channel.close()

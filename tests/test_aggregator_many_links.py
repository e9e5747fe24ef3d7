"""A node stream holds no thread (issue 9): the real ``grpc.aio`` aggregator, mutual TLS.

A hundred light site nodes (each with its own site certificate, all asyncio clients on one
event loop of this process) stay connected to an aggregator whose coordinator pool has two
threads; meanwhile health checks and coordinator calls answer, and a study over all hundred
completes with every site's answer pooled.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.aio import LoopThread
from aggregator.config import AggregatorConfig
from aggregator.server import AggregatorServer, create_server
from protocol.codec import answer_message
from protocol.keys import public_key_b64
from protocol.pki import Credentials
from protocol.signing import SignedStudy
from protocol.study import study_from_dict
from protocol.tls import aio_secure_channel, channel_credentials
from protocol.v1 import coordinator_pb2 as cpb
from protocol.v1 import coordinator_pb2_grpc as cpb_grpc
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc
from tests.aggregator_helpers import (
    WAIT_S,
    Network,
    fake_strategies,
    make_network,
    make_study,
    signed,
    site_releases,
    wait_until,
)

KEY = Ed25519PrivateKey.generate()
NODES = 100
THREADS = 2  # the coordinator pool: far fewer threads than node streams
CALL_S = 5.0  # a bound on a call that must not be starved, not a timing assertion


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return make_network(Path(tmp_path_factory.mktemp("pki")))


class AioNode:
    """A light site node: one NodeLink stream on an asyncio loop, answering every task with
    :func:`site_releases` of its study (site ``i`` releases ``i``)."""

    def __init__(self, target: str, creds: Credentials, site_id: str, value: int) -> None:
        self.site_id = site_id
        self.value = value
        self.welcomed = asyncio.Event()
        self._out: asyncio.Queue[pb.NodeMessage | None] = asyncio.Queue()
        self._channel = aio_secure_channel(target, creds)
        self._call = pb_grpc.NodeLinkStub(self._channel).Connect(self._requests())
        self._task = asyncio.create_task(self._run())

    async def _requests(self) -> AsyncIterator[pb.NodeMessage]:
        yield pb.NodeMessage(hello=pb.Hello(site_id=self.site_id, software_version="aio/1"))
        while (msg := await self._out.get()) is not None:
            yield msg

    async def _run(self) -> None:
        async for msg in self._call:
            which = msg.WhichOneof("body")
            if which == "welcome":
                self.welcomed.set()
            elif which == "task":
                t = msg.task
                study = study_from_dict(SignedStudy.from_proto(t.study).study_document())
                self._out.put_nowait(answer_message(
                    t.task_id, t.study_id, site_releases(study, self.value), None))

    async def close(self) -> None:
        self._out.put_nowait(None)
        self._call.cancel()
        await self._channel.close()


@pytest.fixture
def server(network: Network, tmp_path: Path) -> AggregatorServer:
    config = AggregatorConfig(listen="127.0.0.1:0", credentials_dir=network.root / "aggregator",
                              db_path=tmp_path / "agg.sqlite",
                              trusted_coordinators=(public_key_b64(KEY.public_key()),),
                              max_node_streams=NODES + 10, service_threads=THREADS)
    srv = create_server(config, strategies=fake_strategies())  # FAKE statistics
    srv.start()
    return srv


def test_more_node_streams_than_threads_and_coordinator_calls_answer(
        server: AggregatorServer, network: Network) -> None:
    threads_before = threading.active_count()  # the server's own threads are running
    target = f"127.0.0.1:{server.port}"
    ids = [f"site-{i:03d}" for i in range(NODES)]
    creds = {s: network.site(s) for s in ids}
    clients = LoopThread("test-nodes")

    async def connect() -> list[AioNode]:
        nodes = [AioNode(target, creds[s], s, i + 1) for i, s in enumerate(ids)]
        await asyncio.wait_for(asyncio.gather(*(n.welcomed.wait() for n in nodes)), WAIT_S)
        return nodes

    nodes = clients.run(connect())
    channel = grpc.secure_channel(target, channel_credentials(network.coordinator))
    try:
        wait_until(lambda: server.link.connected_sites() == ids)
        assert server.workers == THREADS
        # no thread per stream on either side: the clients' loop and a few gRPC helpers
        assert threading.active_count() - threads_before < 10
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_S).status \
            == health_pb2.HealthCheckResponse.SERVING
        coord = cpb_grpc.CoordinatorStub(channel)
        coord.ListStudies(cpb.ListStudiesRequest(), timeout=CALL_S)
        sites = coord.ListSites(cpb.ListSitesRequest(), timeout=CALL_S).sites
        assert sorted(s.site_id for s in sites if s.connected) == ids

        study = make_study("hundred-sites", min_sites=NODES)
        ref = coord.SubmitStudy(signed(study, KEY).to_proto(), timeout=CALL_S)
        final = coord.WaitStudy(cpb.WaitStudyRequest(study_id=ref.study_id, timeout_ms=20_000),
                                timeout=30)
        assert final.status == "completed"
        assert {s.state for s in final.sites} == {"released"}
        results = json.loads(coord.GetResults(ref, timeout=CALL_S).results_json)
        assert results["sites"]["participated"] == ids
        # every site's vector [i, i, i] pooled: 3 * (1 + ... + 100)
        assert results["analyses"]["os"]["total"] == 3 * NODES * (NODES + 1) // 2
        assert server.link.stream_count() == NODES
    finally:
        channel.close()

        async def close() -> None:
            await asyncio.gather(*(n.close() for n in nodes))

        clients.run(close())
        clients.close()
        server.stop(1.0)

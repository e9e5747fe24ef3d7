"""Light site nodes for the round-trip benchmark: asyncio NodeLink clients, one process.

Each :class:`LightNode` is one site with its own real site certificate (issued by the
benchmark's CA with :mod:`protocol.pki`) holding a NodeLink stream over mutual TLS and
answering every task at once with canned releases. A :class:`Fleet` runs any number of them
as coroutines on one event-loop thread of one child process, so a thousand connected nodes
cost one thread there and take neither the GIL nor the CPU time of the measured aggregator
from it (they do share the machine's two cores). :func:`cached_pki` keeps the CA and the
certificates under ``/tmp`` between runs (issuing a thousand takes a few seconds; keys are
written 0600 by :mod:`protocol.pki`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

from aggregator.aio import LoopThread
from protocol import pki
from protocol.codec import Release, encode_release
from protocol.tls import channel_credentials, channel_options
from protocol.v1 import common_pb2
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc

__all__ = ["PKI_CACHE", "BenchPki", "Fleet", "LightNode", "cached_pki", "site_name"]

logger = logging.getLogger(__name__)

PKI_CACHE = Path("/tmp/heron-round-trip-pki")


def site_name(i: int) -> str:
    """The benchmark's name of site ``i`` (from 0)."""
    return f"node-{i:04d}"


@dataclass(frozen=True)
class BenchPki:
    """The benchmark network's CA and credentials."""

    ca_dir: Path
    aggregator_dir: Path
    coordinator_dir: Path
    sites: Mapping[str, pki.Credentials]


def cached_pki(root: Path, count: int) -> BenchPki:
    """A CA with aggregator, coordinator and ``count`` site credentials under ``root``,
    reusing those issued by earlier runs."""
    ca_dir = root / "ca"
    if not (ca_dir / "ca.pem").exists():
        pki.init_ca(ca_dir)
    agg = root / "aggregator"
    if not (agg / "cert.pem").exists():
        pki.issue_aggregator(ca_dir, agg, hosts=("127.0.0.1",))
    coord = root / "coordinator"
    if not (coord / "cert.pem").exists():
        pki.issue_coordinator(ca_dir, "bench", coord)
    sites = {}
    for i in range(count):
        name = site_name(i)
        out = root / "sites" / name
        if not (out / "cert.pem").exists():
            pki.issue_site(ca_dir, name, out)
        sites[name] = pki.load_credentials(out)
    return BenchPki(ca_dir, agg, coord, sites)


class LightNode:
    """A site's NodeLink stream answering every task at once with canned (encoded) releases
    (create it on the fleet's loop)."""

    def __init__(self, target: str, creds: pki.Credentials, site_id: str,
                 releases: Sequence[common_pb2.AnalysisRelease]) -> None:
        self.site_id = site_id
        self.welcomed = asyncio.Event()
        self._releases = list(releases)
        self._out: asyncio.Queue[pb.NodeMessage | None] = asyncio.Queue()
        options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
        self._channel = grpc.aio.secure_channel(target, channel_credentials(creds),
                                                options=options)
        self._call = pb_grpc.NodeLinkStub(self._channel).Connect(self._requests())
        self._task = asyncio.create_task(self._run())

    async def _requests(self) -> AsyncIterator[pb.NodeMessage]:
        yield pb.NodeMessage(hello=pb.Hello(site_id=self.site_id, software_version="bench/1"))
        while (msg := await self._out.get()) is not None:
            yield msg

    async def _run(self) -> None:
        try:
            async for msg in self._call:
                which = msg.WhichOneof("body")
                if which == "welcome":
                    self.welcomed.set()
                elif which == "task":
                    self._out.put_nowait(pb.NodeMessage(result=pb.TaskResult(
                        task_id=msg.task.task_id, study_id=msg.task.study_id,
                        releases=self._releases)))
        except grpc.aio.AioRpcError as exc:
            logger.debug("light node %s: %s", self.site_id, exc.code())

    async def close(self) -> None:
        self._out.put_nowait(None)
        self._call.cancel()
        await self._channel.close()


async def _connect(target: str, sites: Sequence[tuple[str, str, Sequence[bytes]]],
                   timeout_s: float) -> list[LightNode]:
    new = [LightNode(target, pki.load_credentials(Path(folder)), site,
                     [common_pb2.AnalysisRelease.FromString(r) for r in blobs])
           for site, folder, blobs in sites]
    await asyncio.wait_for(asyncio.gather(*(n.welcomed.wait() for n in new)), timeout_s)
    return new


def _fleet_main(conn: Connection) -> None:
    """The fleet process: connect and close light nodes as the parent asks."""
    loop = LoopThread("light-nodes")
    nodes: list[LightNode] = []
    try:
        while True:
            command = conn.recv()
            if command[0] == "close":
                break
            _, target, sites, timeout_s = command
            try:
                nodes.extend(loop.run(_connect(target, sites, timeout_s)))
                conn.send(("ok", len(nodes)))
            except Exception as exc:
                conn.send(("error", repr(exc)))

        async def _close() -> None:
            await asyncio.gather(*(n.close() for n in nodes), return_exceptions=True)
        loop.run(_close(), timeout=60)
        conn.send(("ok", 0))
    finally:
        loop.close()


class Fleet:
    """Light nodes as coroutines on one event-loop thread of a child process (so that they
    share neither the GIL nor the event loop of the aggregator measured in this one)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process running gRPC
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_fleet_main, args=(child,), name="light-nodes",
                                    daemon=True)
        self._process.start()
        self.count = 0

    def connect(self, target: str, creds: Mapping[str, pki.Credentials],
                releases: Mapping[str, Sequence[Release]], timeout_s: float) -> None:
        """Connect one node per site of ``releases`` and wait until each is welcomed."""
        sites = [(s, str(creds[s].cert.parent),
                  [encode_release(r).SerializeToString() for r in releases[s]])
                 for s in releases]
        self._conn.send(("connect", target, sites, timeout_s))
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"light nodes did not connect: {value}")
        self.count = value

    def close(self) -> None:
        """Close every stream and end the fleet process."""
        try:
            self._conn.send(("close",))
            if self._conn.poll(60):
                self._conn.recv()
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()

"""Benchmark: the aggregator's fixed cost of a study, against the bare node link beneath it.

Three timings of one round to N connected nodes (default 20), each over R repeats (median,
min, max), all in one process:

``link``
    the bare node link: the aggregator's :class:`~aggregator.link.NodeLinkServicer` on a gRPC
    server with mutual TLS, one task pushed to every node and every answer decoded; no study
    engine, no database. The floor under a study.
``engine``
    the study engine on its SQLite store with the in-process transport (no wire): submit a
    one-analysis study, every node answers at once, results.json written.
``study``
    the whole thing: the real aggregator server (:func:`aggregator.server.create_server`: node
    link, coordinator API, engine, store), light node clients with real site certificates
    holding a NodeLink stream each, and the coordinator client over mutual TLS:
    ``submit`` then ``wait_for_completion`` until the study has ended.

Every node answers with canned releases: the real Kaplan-Meier releases of a synthetic site of
P patients (default 60), computed once by the real node engine before the timings. The study
is one unmasked Kaplan-Meier analysis. The ratio study / link is the aggregator's overhead.
The SQLite transactions (commits) of one study are counted with a trace callback on the
store's connection, with those made inside the submit call.

Run: ``.venv/bin/python benchmarks/round_trip.py [--nodes 20] [--patients 60] [--repeats 30]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.config import AggregatorConfig
from aggregator.engine import StudyEngine
from aggregator.link import NodeLinkServicer
from aggregator.server import create_server
from aggregator.store import Store
from aggregator.transport import HelloInfo, LocalTransport, StudyTask, TaskReply
from heron.coordinator import CoordinatorClient
from heron.simulation import SimulatedNetwork, make_study, synthetic_sites
from node.governance.policy import Policy
from protocol import pki
from protocol.codec import Release, encode_release
from protocol.keys import public_key_b64
from protocol.signing import SignedStudy, sign_study
from protocol.study import Study
from protocol.tls import channel_credentials, channel_options, server_credentials, server_options
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc

KEY = Ed25519PrivateKey.generate()
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
KM = {"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"}
WAIT_S = 60.0


def study(i: int, label: str) -> Study:
    """The benchmark's one-analysis study (unmasked Kaplan-Meier, every patient)."""
    return make_study(f"bench-{label}-{i:04d}", [KM], cohort={}, min_sites=2,
                      expires=dt.date.today() + dt.timedelta(days=30))


def canned_releases(work: Path, nodes: int, patients: int) -> dict[str, tuple[Release, ...]]:
    """Each site's real answer to the study, computed once by the real node engines."""
    sites = synthetic_sites(work / "sites", [patients] * nodes, prefix="node", policy=DAY)
    got: dict[str, tuple[Release, ...]] = {}

    def keep(site: str) -> Callable[[Callable[[StudyTask], TaskReply | None]],
                                    Callable[[StudyTask], TaskReply | None]]:
        def wrap(handler: Callable[[StudyTask], TaskReply | None]
                 ) -> Callable[[StudyTask], TaskReply | None]:
            def answer(task: StudyTask) -> TaskReply | None:
                reply = handler(task)
                assert reply is not None and reply.releases is not None, reply
                got[site] = reply.releases
                return reply
            return answer
        return wrap

    with SimulatedNetwork(work / "canned", sites, KEY,
                          node_wrappers={s.site_id: keep(s.site_id) for s in sites}) as net:
        results = net.run(study(0, "canned"))
    assert len(results["sites"]["participated"]) == nodes, results["sites"]
    return got


class LightNode:
    """A site's NodeLink stream answering every task at once with canned releases."""

    def __init__(self, target: str, creds: pki.Credentials, site_id: str,
                 releases: Sequence[Release]) -> None:
        self.site_id = site_id
        self._releases = [encode_release(r) for r in releases]
        self.welcomed = threading.Event()
        self._out: queue.Queue[pb.NodeMessage | None] = queue.Queue()
        self._channel = grpc.secure_channel(target, channel_credentials(creds),
                                            options=channel_options())
        self._call = pb_grpc.NodeLinkStub(self._channel).Connect(self._requests())
        self._thread = threading.Thread(target=self._run, name=f"light-{site_id}", daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[pb.NodeMessage]:
        yield pb.NodeMessage(hello=pb.Hello(site_id=self.site_id, software_version="bench/1"))
        while (msg := self._out.get()) is not None:
            yield msg

    def _run(self) -> None:
        try:
            for msg in self._call:
                which = msg.WhichOneof("body")
                if which == "welcome":
                    self.welcomed.set()
                elif which == "task":
                    self._out.put(pb.NodeMessage(result=pb.TaskResult(
                        task_id=msg.task.task_id, study_id=msg.task.study_id,
                        releases=self._releases)))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()
        self._channel.close()


def issue_sites(ca_dir: Path, root: Path, ids: Sequence[str]) -> dict[str, pki.Credentials]:
    """Real site certificates of the network CA."""
    out = {}
    for site in ids:
        pki.issue_site(ca_dir, site, root / site)
        out[site] = pki.load_credentials(root / site)
    return out


def connect(target: str, creds: Mapping[str, pki.Credentials],
            canned: Mapping[str, tuple[Release, ...]]) -> list[LightNode]:
    nodes = [LightNode(target, creds[s], s, canned[s]) for s in sorted(canned)]
    for node in nodes:
        assert node.welcomed.wait(WAIT_S), f"{node.site_id} was not welcomed"
    return nodes


class _Counter:
    """Counts the replies the bare link delivers (the link's listener)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.replies = 0
        self.connected: set[str] = set()

    def on_connect(self, site_id: str, hello: HelloInfo) -> None:
        with self.cond:
            self.connected.add(site_id)
            self.cond.notify_all()

    def on_disconnect(self, site_id: str) -> None:
        pass

    def on_reply(self, site_id: str, reply: TaskReply) -> None:
        assert reply.releases is not None, reply.refusal
        with self.cond:
            self.replies += 1
            self.cond.notify_all()


def bench_link(work: Path, creds: Mapping[str, pki.Credentials], aggregator: pki.Credentials,
               canned: Mapping[str, tuple[Release, ...]], repeats: int) -> list[float]:
    """One task to every node over the bare node link, until every answer is decoded."""
    link = NodeLinkServicer(heartbeat_interval_s=5, max_streams=len(canned) + 8)
    counter = _Counter()
    link.set_listener(counter)
    server = grpc.server(_pool(len(canned) + 8), options=server_options())
    pb_grpc.add_NodeLinkServicer_to_server(link, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(aggregator))
    server.start()
    nodes = connect(f"127.0.0.1:{port}", creds, canned)
    times = []
    try:
        with counter.cond:
            assert counter.cond.wait_for(lambda: len(counter.connected) == len(canned), WAIT_S)
        for i in range(repeats):
            s = study(i, "link")
            signed = sign_study(s, KEY)
            request = _km_request(s)
            with counter.cond:
                counter.replies = 0
            t0 = time.perf_counter()
            for site in sorted(canned):
                assert link.send_task(site, StudyTask(f"{s.id}-{site}", s.id, signed, 1,
                                                      request))
            with counter.cond:
                assert counter.cond.wait_for(lambda: counter.replies == len(canned), WAIT_S)
            times.append(time.perf_counter() - t0)
    finally:
        for node in nodes:
            node.close()
        link.close(timeout_s=2.0)
        server.stop(1.0).wait()
    return times


def _pool(workers: int) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-grpc")


def _km_request(s: Study) -> tuple[Release, ...]:
    """What the engine asks each site in round 1 of the study."""
    from aggregator.run import StudyRun
    from aggregator.strategies import default_strategies

    run = StudyRun(s, default_strategies())
    return run.requests(run.start(["x"]))["x"]


class Commits:
    """Counts the committed transactions of a store (sqlite3 trace callback)."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        conn = store._conn  # the benchmark's one look inside the store
        assert conn is not None
        conn.set_trace_callback(self._trace)

    def _trace(self, sql: str) -> None:
        if sql.strip().upper().startswith("COMMIT"):
            self.count += 1


def bench_engine(work: Path, canned: Mapping[str, tuple[Release, ...]],
                 repeats: int) -> tuple[list[float], list[int], list[int]]:
    """The study engine on SQLite with in-process nodes answering at once."""
    store = Store(work / "engine" / "aggregator.db")
    commits = Commits(store)
    transport = LocalTransport(max_workers=len(canned))
    engine = StudyEngine(store, transport, [KEY.public_key()])
    for site, releases in canned.items():
        transport.connect(site, _answering(releases))
    times, per_study, in_submit = [], [], []
    try:
        for i in range(repeats):
            signed = sign_study(study(i, "engine"), KEY)
            before = commits.count
            t0 = time.perf_counter()
            study_id = engine.submit(signed)
            in_submit.append(commits.count - before)
            _wait_engine(engine, study_id)
            times.append(time.perf_counter() - t0)
            per_study.append(commits.count - before)
            assert engine.results(study_id)["status"] == "completed"  # type: ignore[index]
    finally:
        transport.close()
        store.close()
    return times, per_study, in_submit


def _answering(releases: tuple[Release, ...]) -> Callable[[StudyTask], TaskReply]:
    def answer(task: StudyTask) -> TaskReply:
        return TaskReply(task.task_id, task.study_id, releases=releases)
    return answer


def _wait_engine(engine: StudyEngine, study_id: str) -> None:
    wait = getattr(engine, "wait", None)
    if wait is not None:  # completion pushed (issue 9)
        assert wait(study_id, WAIT_S).status != "running"
        return
    deadline = time.monotonic() + WAIT_S
    while engine.results(study_id) is None:
        assert time.monotonic() < deadline, "study did not finish"
        time.sleep(0.0005)


def bench_study(work: Path, ca_dir: Path, creds: Mapping[str, pki.Credentials],
                canned: Mapping[str, tuple[Release, ...]],
                repeats: int) -> tuple[list[float], list[int], list[int]]:
    """The real aggregator server, light nodes, the coordinator client: submit to the end."""
    pki.issue_aggregator(ca_dir, work / "server" / "credentials", hosts=("127.0.0.1",))
    coordinator = pki.issue_coordinator(ca_dir, "bench", work / "coordinator")
    config = AggregatorConfig(listen="127.0.0.1:0", credentials_dir=work / "server" /
                              "credentials", db_path=work / "server" / "aggregator.db",
                              trusted_coordinators=(public_key_b64(KEY.public_key()),),
                              max_node_streams=len(canned) + 8)
    server = create_server(config)
    commits = Commits(server.store)
    server.start()
    target = f"127.0.0.1:{server.port}"
    nodes = connect(target, creds, canned)
    times, per_study, in_submit = [], [], []
    try:
        deadline = time.monotonic() + WAIT_S
        while set(server.link.connected_sites()) != set(canned):
            assert time.monotonic() < deadline, "nodes did not connect"
            time.sleep(0.01)
        with CoordinatorClient(target, coordinator.cert.parent) as client:
            for i in range(repeats):
                signed: SignedStudy = sign_study(study(i, "study"), KEY)
                before = commits.count
                t0 = time.perf_counter()
                study_id = client.submit(signed)
                submitted = commits.count
                status = client.wait_for_completion(study_id, WAIT_S)
                times.append(time.perf_counter() - t0)
                per_study.append(commits.count - before)
                in_submit.append(submitted - before)
                assert status["status"] == "completed", status
                assert all(v["state"] == "released" for v in status["sites"].values()), status
    finally:
        for node in nodes:
            node.close()
        server.stop(1.0)
    return times, per_study, in_submit


def _ms(times: Sequence[float]) -> str:
    return (f"median {statistics.median(times) * 1000:7.1f} ms   "
            f"min {min(times) * 1000:7.1f} ms   max {max(times) * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"canned answers: {args.nodes} sites x {args.patients} patients "
              "(real node engines, once)", flush=True)
        canned = canned_releases(work, args.nodes, args.patients)
        ca_dir = work / "ca"
        pki.init_ca(ca_dir)
        agg = pki.issue_aggregator(ca_dir, work / "link" / "credentials", hosts=("127.0.0.1",))
        creds = issue_sites(ca_dir, work / "creds", sorted(canned))
        n = args.warmup + args.repeats
        w = args.warmup
        link = bench_link(work, creds, agg, canned, n)[w:]
        engine, engine_tx, engine_submit_tx = bench_engine(work, canned, n)
        study_t, study_tx, study_submit_tx = bench_study(work, ca_dir, creds, canned, n)
    engine, study_t = engine[w:], study_t[w:]
    engine_tx, engine_submit_tx = engine_tx[w:], engine_submit_tx[w:]
    study_tx, study_submit_tx = study_tx[w:], study_submit_tx[w:]
    print(f"one round to {args.nodes} connected nodes, {args.repeats} repeats "
          f"(after {args.warmup} warm-up)")
    print(f"  link   (bare node link, gRPC + mTLS):         {_ms(link)}")
    print(f"  engine (study engine + SQLite, in-process):   {_ms(engine)}")
    print(f"  study  (server + nodes + coordinator client): {_ms(study_t)}")
    print(f"  ratio study / link (medians):                 "
          f"{statistics.median(study_t) / statistics.median(link):.1f}")
    print(f"  SQLite transactions per study: engine {statistics.median(engine_tx):g} "
          f"({statistics.median(engine_submit_tx):g} inside submit), "
          f"server {statistics.median(study_tx):g} "
          f"({statistics.median(study_submit_tx):g} inside submit)")


if __name__ == "__main__":
    main()

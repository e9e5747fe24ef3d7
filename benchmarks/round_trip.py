"""Benchmark: the aggregator's fixed cost of a study against the bare node link, and its load.

Three timings of one round to N connected nodes (20, then 200), each over R repeats (median,
min, max), all in one process:

``link``
    the bare node link: the aggregator's :class:`~aggregator.link.NodeLinkServicer` on a
    ``grpc.aio`` server with mutual TLS, one task pushed to every node and every answer
    decoded; no study engine, no database. The floor under a study.
``engine``
    the study engine on its SQLite store with the in-process transport (no wire): submit a
    one-analysis study, every node answers at once, results.json written. The in-process
    transport hands answers over one by one (a commit each); the server's node link hands
    over those that arrived together as one batch (one commit).
``study``
    the whole thing: the real aggregator server (:func:`aggregator.server.create_server`: node
    link, coordinator API, engine, store), light node clients with real site certificates
    holding a NodeLink stream each, and the coordinator client over mutual TLS:
    ``submit`` then ``wait_for_completion`` until the study has ended.

Then the **load test**: the real server holding L connected node links (default 1,000, each
its own site certificate, asyncio clients in one child process, :mod:`light_nodes`): a
one-analysis study over the first S of them (default 500) before the others connect (wall
time), then coordinator calls (GetStatus, ListStudies, health Check) timed one by one with all
L links connected, idle and during a study over all of them.

Every node answers with canned releases: the real Kaplan-Meier releases of a synthetic site of
P patients (default 60), computed once by the real node engines of 20 sites before the
timings (site i answers with those of site i mod 20). The study is one unmasked Kaplan-Meier
analysis. The ratio study / link is the aggregator's overhead. The SQLite transactions
(commits) of one study are counted with a trace callback on the store's connection, with
those made inside the submit call.

Run: ``.venv/bin/python benchmarks/round_trip.py [--nodes 20] [--big 200] [--load 1000]
[--load-study 500] [--patients 60] [--repeats 30]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from light_nodes import PKI_CACHE, BenchPki, Fleet, cached_pki, site_name

from aggregator.aio import AioServer
from aggregator.config import AggregatorConfig
from aggregator.engine import StudyEngine
from aggregator.link import NodeLinkServicer
from aggregator.server import AggregatorServer, create_server
from aggregator.store import Store
from aggregator.transport import HelloInfo, LocalTransport, StudyTask, TaskReply
from heron.coordinator import CoordinatorClient
from heron.simulation import SimulatedNetwork, make_study, synthetic_sites
from node.governance.policy import Policy
from protocol import pki
from protocol.codec import Release
from protocol.keys import public_key_b64
from protocol.signing import SignedStudy, sign_study
from protocol.study import Study
from protocol.tls import channel_credentials, server_credentials, server_options
from protocol.v1 import node_link_pb2_grpc as pb_grpc

KEY = Ed25519PrivateKey.generate()
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
KM = {"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"}
WAIT_S = 60.0
CONNECT_S = 300.0
CANNED_SITES = 20


def study(i: int, label: str) -> Study:
    """The benchmark's one-analysis study (unmasked Kaplan-Meier, every patient)."""
    return make_study(f"bench-{label}-{i:04d}", [KM], cohort={}, min_sites=2,
                      expires=dt.date.today() + dt.timedelta(days=30))


def canned_releases(work: Path, nodes: int, patients: int) -> list[tuple[Release, ...]]:
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
    return [got[s] for s in sorted(got)]


def answers(canned: Sequence[tuple[Release, ...]], first: int,
            count: int) -> dict[str, tuple[Release, ...]]:
    """Sites ``first .. first + count - 1`` by name, each with its canned answer."""
    return {site_name(i): canned[i % len(canned)] for i in range(first, first + count)}


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


def bench_link(net: BenchPki, nodes: Mapping[str, tuple[Release, ...]],
               repeats: int) -> list[float]:
    """One task to every node over the bare node link, until every answer is decoded."""
    link = NodeLinkServicer(heartbeat_interval_s=5, max_streams=len(nodes) + 8)
    counter = _Counter()
    link.set_listener(counter)
    server = AioServer(server_options(), name="bench-link")
    server.add(pb_grpc.add_NodeLinkServicer_to_server, link)
    port = server.add_secure_port("127.0.0.1:0",
                                  server_credentials(pki.load_credentials(net.aggregator_dir)))
    server.start()
    fleet = Fleet()
    times = []
    try:
        fleet.connect(f"127.0.0.1:{port}", net.sites, nodes, CONNECT_S)
        with counter.cond:
            assert counter.cond.wait_for(lambda: len(counter.connected) == len(nodes), WAIT_S)
        for i in range(repeats):
            s = study(i, "link")
            signed = sign_study(s, KEY)
            request = _km_request(s)
            with counter.cond:
                counter.replies = 0
            t0 = time.perf_counter()
            for site in sorted(nodes):
                assert link.send_task(site, StudyTask(f"{s.id}-{site}", s.id, signed, 1,
                                                      request))
            with counter.cond:
                assert counter.cond.wait_for(lambda: counter.replies == len(nodes), WAIT_S)
            times.append(time.perf_counter() - t0)
    finally:
        fleet.close()
        link.close(timeout_s=2.0)
        server.stop(1.0)
    return times


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


def bench_engine(work: Path, nodes: Mapping[str, tuple[Release, ...]],
                 repeats: int) -> tuple[list[float], list[int], list[int]]:
    """The study engine on SQLite with in-process nodes answering at once."""
    store = Store(work / f"engine-{len(nodes)}" / "aggregator.db")
    commits = Commits(store)
    transport = LocalTransport(max_workers=min(len(nodes), 32))
    engine = StudyEngine(store, transport, [KEY.public_key()])
    for site, releases in nodes.items():
        transport.connect(site, _answering(releases))
    times, per_study, in_submit = [], [], []
    try:
        for i in range(repeats):
            signed = sign_study(study(i, "engine"), KEY)
            before = commits.count
            t0 = time.perf_counter()
            study_id = engine.submit(signed)
            in_submit.append(commits.count - before)
            assert engine.wait(study_id, WAIT_S).status != "running"
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


def _server(work: Path, net: BenchPki, label: str, streams: int) -> AggregatorServer:
    config = AggregatorConfig(listen="127.0.0.1:0", credentials_dir=net.aggregator_dir,
                              db_path=work / f"server-{label}" / "aggregator.db",
                              trusted_coordinators=(public_key_b64(KEY.public_key()),),
                              max_node_streams=streams + 16, site_timeout_s=300.0)
    (work / f"server-{label}").mkdir(parents=True, exist_ok=True)
    server = create_server(config)
    server.start()
    return server


def _wait_connected(server: AggregatorServer, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(server.link.connected_sites()) < count:
        assert time.monotonic() < deadline, "nodes did not connect"
        time.sleep(0.01)


def _run_study(client: CoordinatorClient, i: int, label: str, sites: int) -> float:
    """Submit one study and wait for its end; the wall time, checked completed by ``sites``."""
    signed: SignedStudy = sign_study(study(i, label), KEY)
    t0 = time.perf_counter()
    study_id = client.submit(signed)
    status = client.wait_for_completion(study_id, CONNECT_S)
    elapsed = time.perf_counter() - t0
    assert status["status"] == "completed", status
    released = [v for v in status["sites"].values() if v["state"] == "released"]
    assert len(released) == sites == len(status["sites"]), status
    return elapsed


def bench_study(work: Path, net: BenchPki, nodes: Mapping[str, tuple[Release, ...]],
                repeats: int) -> tuple[list[float], list[int], list[int]]:
    """The real aggregator server, light nodes, the coordinator client: submit to the end."""
    server = _server(work, net, f"study-{len(nodes)}", len(nodes))
    commits = Commits(server.store)
    fleet = Fleet()
    times, per_study, in_submit = [], [], []
    try:
        fleet.connect(f"127.0.0.1:{server.port}", net.sites, nodes, CONNECT_S)
        _wait_connected(server, len(nodes))
        with CoordinatorClient(f"127.0.0.1:{server.port}", net.coordinator_dir) as client:
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
        fleet.close()
        server.stop(1.0)
    return times, per_study, in_submit


def _time_calls(target: str, net: BenchPki, study_id: str, rounds: int,
                until: threading.Event | None = None) -> dict[str, list[float]]:
    """GetStatus, ListStudies and a health Check, timed one by one, ``rounds`` times (and on
    until ``until`` is set)."""
    from protocol.v1 import coordinator_pb2 as cpb
    from protocol.v1 import coordinator_pb2_grpc as cpb_grpc

    channel = grpc.secure_channel(target, channel_credentials(
        pki.load_credentials(net.coordinator_dir)))
    coord = cpb_grpc.CoordinatorStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    calls: dict[str, Callable[[], Any]] = {
        "GetStatus": lambda: coord.GetStatus(cpb.StudyRef(study_id=study_id), timeout=WAIT_S),
        "ListStudies": lambda: coord.ListStudies(cpb.ListStudiesRequest(), timeout=WAIT_S),
        "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    try:
        i = 0
        while i < rounds or (until is not None and not until.is_set()):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
            i += 1
    finally:
        channel.close()
    return times


def bench_load(work: Path, net: BenchPki, canned: Sequence[tuple[Release, ...]], total: int,
               first: int, calls: int, repeats: int) -> None:
    """``first`` nodes and a study over them; then ``total`` links and coordinator calls."""
    server = _server(work, net, "load", total)
    target = f"127.0.0.1:{server.port}"
    fleet = Fleet()
    try:
        t0 = time.perf_counter()
        fleet.connect(target, net.sites, answers(canned, 0, first), CONNECT_S)
        _wait_connected(server, first)
        connect_first = time.perf_counter() - t0
        with CoordinatorClient(target, net.coordinator_dir, timeout_s=WAIT_S) as client:
            first_studies = [_run_study(client, i, "load-first", first) for i in range(repeats)]
            t0 = time.perf_counter()
            fleet.connect(target, net.sites, answers(canned, first, total - first), CONNECT_S)
            _wait_connected(server, total)
            connect_rest = time.perf_counter() - t0
            idle = _time_calls(target, net, "bench-load-first-0000", calls)
            done = threading.Event()
            whole: list[float] = []

            def run_whole() -> None:
                try:
                    whole.append(_run_study(client, 0, "load-all", total))
                finally:
                    done.set()

            runner = threading.Thread(target=run_whole)
            runner.start()
            busy = _time_calls(target, net, "bench-load-first-0000", 1, until=done)
            runner.join()
        threads = threading.active_count()
        streams = server.link.stream_count()
    finally:
        fleet.close()
        server.stop(1.0)
    print(f"load: {total} node links (one site certificate each, mutual TLS, asyncio clients "
          "in one process)")
    print(f"  connect {first} links: {connect_first:.1f} s; {total - first} more: "
          f"{connect_rest:.1f} s; node streams served: {streams}; threads in the aggregator's "
          f"process: {threads}")
    print(f"  study over {first} connected nodes (before the rest connect), {repeats} "
          f"repeats: {_ms(first_studies)}")
    for label, times in ((f"{total} links idle", idle),
                         (f"{total} links, during a study over all {total}", busy)):
        print(f"  coordinator calls, {label}:")
        for name, ts in times.items():
            print(f"    {name:12s} n={len(ts):4d}   {_ms(ts)}")
    print(f"  study over all {total} connected nodes: wall {whole[0] * 1000:.0f} ms")


def _ms(times: Sequence[float]) -> str:
    return (f"median {statistics.median(times) * 1000:7.1f} ms   "
            f"min {min(times) * 1000:7.1f} ms   max {max(times) * 1000:7.1f} ms")


def _scale(work: Path, net: BenchPki, canned: Sequence[tuple[Release, ...]], nodes: int,
           repeats: int, warmup: int) -> None:
    """link, engine and study to ``nodes`` connected nodes, side by side."""
    sites = answers(canned, 0, nodes)
    n, w = warmup + repeats, warmup
    link = bench_link(net, sites, n)[w:]
    engine, engine_tx, engine_submit_tx = (x[w:] for x in bench_engine(work, sites, n))
    study_t, study_tx, study_submit_tx = (x[w:] for x in bench_study(work, net, sites, n))
    print(f"one round to {nodes} connected nodes, {repeats} repeats (after {warmup} warm-up)")
    print(f"  link   (bare node link, gRPC + mTLS):                     {_ms(link)}")
    print(f"  engine (engine + SQLite, in-process, a commit per answer): {_ms(engine)}")
    print(f"  study  (server + nodes + coordinator client):             {_ms(study_t)}")
    print(f"  ratio study / link (medians):                             "
          f"{statistics.median(study_t) / statistics.median(link):.1f}")
    print(f"  SQLite transactions per study: engine {statistics.median(engine_tx):g} "
          f"({statistics.median(engine_submit_tx):g} inside submit), "
          f"server {statistics.median(study_tx):g} "
          f"({statistics.median(study_submit_tx):g} inside submit)", flush=True)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert soft == resource.RLIM_INFINITY or soft >= needed, \
        f"open-file limit {soft} is below the {needed} the load test needs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--big", type=int, default=200, help="second scale (0: skip)")
    parser.add_argument("--big-repeats", type=int, default=10)
    parser.add_argument("--load", type=int, default=1000, help="links held (0: skip)")
    parser.add_argument("--load-study", type=int, default=500)
    parser.add_argument("--load-calls", type=int, default=100)
    parser.add_argument("--load-repeats", type=int, default=3)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pki", type=Path, default=PKI_CACHE,
                        help="where the benchmark's CA and certificates are kept between runs")
    args = parser.parse_args()
    _raise_fd_limit(4 * max(args.load, args.big, args.nodes) + 256)  # both ends + files
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"canned answers: {CANNED_SITES} sites x {args.patients} patients "
              "(real node engines, once)", flush=True)
        canned = canned_releases(work, CANNED_SITES, args.patients)
        t0 = time.perf_counter()
        net = cached_pki(args.pki, max(args.load, args.big, args.nodes))
        print(f"site certificates: {len(net.sites)} ({time.perf_counter() - t0:.1f} s, "
              f"cached under {args.pki})", flush=True)
        _scale(work, net, canned, args.nodes, args.repeats, args.warmup)
        if args.big:
            _scale(work, net, canned, args.big, args.big_repeats, args.warmup)
        if args.load:
            bench_load(work, net, canned, args.load, args.load_study, args.load_calls,
                       args.load_repeats)


if __name__ == "__main__":
    main()

"""A whole heron network in one process, for tests, benchmarks and ``heron simulate``.

:class:`SimulatedNetwork` wires the real parts together: one
:class:`~node.runtime.engine.NodeEngine` per site (its own store, audit trail, optional
disclosure ledger and a site certificate for secure aggregation), the real
:class:`~aggregator.engine.StudyEngine` on a real SQLite :class:`~aggregator.store.Store`,
and one of two transports behind the same API:

``"inprocess"``
    :class:`~aggregator.transport.LocalTransport`: every site is a
    :data:`~aggregator.transport.NodeHandler` made by :func:`node_handler`, the one adapter
    from a study task to the node engine and back.
``"grpc"``
    the aggregator's :class:`~aggregator.link.NodeLinkServicer` on a free loopback port with
    mutual TLS (certificates made by :mod:`protocol.pki`), and one
    :class:`~node.runtime.daemon.NodeDaemon` per site running as a thread of this process.

Both runtimes give the same ``results.json``. ``node_wrappers`` wrap a site's handler so a test
can make that site misbehave (stay silent, drop an analysis, send garbage) in either runtime.

Workspace layout under ``workdir``: ``ca/`` (the network CA unless one is given),
``aggregator/aggregator.db`` (and ``aggregator/credentials/`` for gRPC) and, per site,
``nodes/<site>/`` with ``audit.jsonl``, ``ledger/``, ``ledger.salt`` and ``credentials/``.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aggregator.aio import AioServer
from aggregator.engine import StudyEngine
from aggregator.link import NodeLinkServicer
from aggregator.store import Store
from aggregator.transport import (
    HelloInfo,
    LocalTransport,
    NodeHandler,
    NodeTransport,
    StudyTask,
    TaskReply,
)
from heron import __version__
from heron.errors import HeronError
from heron.synth import synthesize_site
from node.cohorts.cohort import TableSource, select_cohort
from node.cohorts.covariates import build_design
from node.cohorts.endpoints import group_labels, survival_endpoint
from node.errors import StoreError
from node.governance.audit import AuditTrail
from node.governance.ledger import DisclosureLedger, load_or_create_salt
from node.governance.policy import Policy, default_policy
from node.ingestion.ingest import ingest
from node.ingestion.pseudonym import load_or_create_secret
from node.ingestion.store import open_store
from node.runtime.daemon import NodeDaemon
from node.runtime.engine import NodeEngine
from protocol.codec import answer_message, decode_release
from protocol.pki import Credentials, init_ca, issue_aggregator, issue_site, load_credentials
from protocol.signing import SignedStudy, sign_study
from protocol.study import Study, study_from_dict
from protocol.tls import server_credentials, server_options
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc

__all__ = [
    "RUNTIMES",
    "HandlerWrapper",
    "Runtime",
    "SimulatedNetwork",
    "SimulatedSite",
    "SimulationTimeout",
    "ingest_sites",
    "make_study",
    "node_handler",
    "pooled_cox_data",
    "pooled_survival_data",
    "synthetic_sites",
]

logger = logging.getLogger(__name__)

Runtime = Literal["inprocess", "grpc"]
RUNTIMES: tuple[Runtime, ...] = ("inprocess", "grpc")

HandlerWrapper = Callable[[NodeHandler], NodeHandler]
"""Wraps a site's handler, e.g. to make the site misbehave in a test."""

INTERNAL_ERROR = "internal error at the site node"
"""The refusal a site sends when answering a task raised (as :mod:`node.runtime.daemon` does)."""

_TICK_S = 0.25


class SimulationTimeout(HeronError, TimeoutError):
    """A simulated study did not finish in time."""


@dataclass(frozen=True)
class SimulatedSite:
    """One site of a simulated network.

    Parameters
    ----------
    site_id
        The site's id (the CN of its certificate).
    store_dir
        The site's Parquet store (as ``heron node ingest`` writes it).
    policy
        The site policy (its ``trusted_coordinators`` are ignored: every node trusts the
        network's coordinator key).
    credentials_dir
        The site's certificate, key and CA; ``None`` issues them from the network CA.
    tables
        Instead of ``store_dir``: returns a :class:`~node.cohorts.cohort.TableSource` (an object
        with ``.table(name)``, for hand-made tables).
    """

    site_id: str
    store_dir: Path | None = None
    policy: Policy = field(default_factory=default_policy)
    credentials_dir: Path | None = None
    tables: Callable[[], TableSource] | None = None

    def __post_init__(self) -> None:
        if (self.store_dir is None) == (self.tables is None):
            raise ValueError(f"site {self.site_id}: give exactly one of store_dir and tables")

    def open_tables(self) -> TableSource:
        """The site's current tables."""
        if self.tables is not None:
            return self.tables()
        assert self.store_dir is not None
        return open_store(self.store_dir)

    def ingested_at(self) -> str:
        """When the store was last ingested ("" for hand-made tables or no store)."""
        if self.store_dir is None:
            return ""
        try:
            return open_store(self.store_dir).ingested_at
        except StoreError:
            return ""


def node_handler(engine: NodeEngine) -> NodeHandler:
    """The node engine as an in-process node: a study task in, the engine's answer out.

    Parameters
    ----------
    engine
        The site's node engine.

    Returns
    -------
    NodeHandler
        ``handler(task) -> TaskReply`` with the engine's releases or refusal.
    """
    def handle(task: StudyTask) -> TaskReply:
        outcome = engine.answer(task.study_id, task.signed, task.round, task.inputs)
        return TaskReply(task.task_id, task.study_id, outcome.releases, outcome.refusal)

    return handle


def make_study(study_id: str, analyses: Sequence[Mapping[str, Any]], *, horizon: int = 1826,
               min_sites: int = 2, expires: dt.date | None = None,
               cohort: Mapping[str, Any] | None = None,
               secure_aggregation: bool = False) -> Study:
    """A study over the (synthetic) LBCL cohort, expiring in 30 days unless told.

    Parameters
    ----------
    study_id
        The study id (also its title, prefixed with "test").
    analyses
        Analysis entries as in the study format.
    horizon
        ``horizon_days``.
    min_sites
        ``privacy.min_sites``.
    expires
        Expiry date (default: 30 days from today).
    cohort
        Cohort filters (default: indication group LBCL; ``{}`` selects everybody).
    secure_aggregation
        ``privacy.secure_aggregation``.
    """
    return study_from_dict({
        "heron": 1, "id": study_id, "title": f"test {study_id}",
        "expires": (expires or dt.date.today() + dt.timedelta(days=30)).isoformat(),
        "horizon_days": horizon,
        "cohort": {"indication_group": ["LBCL"]} if cohort is None else dict(cohort),
        "analyses": [dict(a) for a in analyses],
        "privacy": {"secure_aggregation": secure_aggregation, "min_sites": min_sites},
    })


def ingest_sites(workdir: Path, folders: Mapping[str, Path], *, policy: Policy | None = None,
                 progress: Callable[[str], None] | None = None) -> list[SimulatedSite]:
    """Validate and load site data folders into stores under ``workdir/nodes/<site>/store``.

    Each site gets its own pseudonymisation secret (``nodes/<site>/secret``).

    Parameters
    ----------
    workdir
        The simulation workspace.
    folders
        Site id -> site data folder (CSV or Parquet, as ``heron node ingest`` reads).
    policy
        The policy of every site (default: :func:`node.governance.policy.default_policy`).
    progress
        Receives one line per site.
    """
    sites = []
    for site_id, folder in folders.items():
        node_dir = Path(workdir) / "nodes" / site_id
        node_dir.mkdir(parents=True, exist_ok=True)
        secret = load_or_create_secret(node_dir / "secret")
        report = ingest(Path(folder), node_dir / "store", secret)
        if progress is not None:
            progress(f"  {site_id}: {report.summary().splitlines()[0]}")
        sites.append(SimulatedSite(site_id, node_dir / "store", policy or default_policy()))
    return sites


def synthetic_sites(workdir: Path, sizes: Sequence[int], *, prefix: str = "site",
                    seed: int = 100, policy: Policy | None = None, fmt: str = "parquet",
                    progress: Callable[[str], None] | None = None) -> list[SimulatedSite]:
    """Synthesise sites of the given sizes and ingest each into its own store.

    Site ``i`` (from 0) is called ``{prefix}-{i + 1:02d}``, its data are seeded by
    ``(seed + i, i)`` and written under ``workdir/sites``; the stores are made by
    :func:`ingest_sites`.

    Parameters
    ----------
    workdir
        The simulation workspace.
    sizes
        Patients of each site.
    prefix
        Site id prefix.
    seed
        Seed of the first site.
    policy
        The policy of every site (default: :func:`node.governance.policy.default_policy`).
    fmt
        Format of the synthetic data folders (``"parquet"`` or ``"csv"``).
    progress
        Receives, per site, how long synthesis and ingestion took, then the total.
    """
    say = progress or (lambda msg: None)
    sites = []
    t0 = time.perf_counter()
    for i, n in enumerate(sizes):
        site = f"{prefix}-{i + 1:02d}"
        t1 = time.perf_counter()
        folder = synthesize_site(Path(workdir) / "sites" / site, site, n, seed=seed + i,
                                 fmt=fmt, site_index=i)
        t2 = time.perf_counter()
        sites.extend(ingest_sites(workdir, {site: folder.path}, policy=policy))
        say(f"  {site}: synthesised {n:,} patients in {t2 - t1:.1f} s, "
            f"ingested in {time.perf_counter() - t2:.1f} s")
    say(f"  synthesised and ingested {len(sizes)} sites in {time.perf_counter() - t0:.1f} s")
    return sites


def pooled_survival_data(stores: Mapping[str, Path], study: Study, endpoint: str,
                         group_by: str | None, *, today: dt.date | None = None) -> pd.DataFrame:
    """The reference of a federated survival analysis: every site's individual rows pooled.

    Parameters
    ----------
    stores
        Site id -> store folder.
    study
        The study (its cohort, horizon and censoring).
    endpoint
        A survival endpoint (``overall_survival``, ``progression_free_survival``).
    group_by
        The analysis' grouping (``None``: one group "all").
    today
        The cohort's calendar (default: today).

    Returns
    -------
    pandas.DataFrame
        Columns ``duration``, ``event`` (bool), ``group`` and ``site``, one row per infusion.
    """
    frames = []
    for site, store_dir in stores.items():
        store = open_store(store_dir)
        cohort = select_cohort(store, study.cohort, today=today)
        out = survival_endpoint(store, cohort, endpoint, study.horizon_days, study.censor_at)
        frames.append(pd.DataFrame({
            "duration": out["duration"].to_numpy(), "event": out["event"].to_numpy(dtype=bool),
            "group": group_labels(cohort, group_by, site).to_numpy(), "site": site}))
    return pd.concat(frames, ignore_index=True)


def pooled_cox_data(stores: Mapping[str, Path], study: Study, covariates: Sequence[str], *,
                    today: dt.date | None = None) -> pd.DataFrame:
    """The reference of a federated Cox model: the complete cases of every site pooled.

    Parameters
    ----------
    stores
        Site id -> store folder.
    study
        The study (its cohort and horizon; the endpoint is overall survival).
    covariates
        The model's covariates; ``lab:NAME`` columns hold the design's lab values.
    today
        The cohort's calendar (default: today).

    Returns
    -------
    pandas.DataFrame
        The covariates (categorical ones uncoded), ``duration``, ``event`` (0/1) and ``site``.
    """
    frames = []
    for site, store_dir in stores.items():
        store = open_store(store_dir)
        cohort = select_cohort(store, study.cohort, today=today)
        design = build_design(store, cohort, covariates)
        out = survival_endpoint(store, cohort, "overall_survival", study.horizon_days)
        frame = cohort.loc[design.mask, [c for c in covariates if not c.startswith("lab:")]]
        for lab in (c for c in covariates if c.startswith("lab:")):
            frame[lab] = design.matrix([lab])[:, 0]
        frame = frame.assign(duration=out["duration"].to_numpy()[design.mask],
                             event=out["event"].to_numpy()[design.mask].astype(int), site=site)
        frames.append(frame.reset_index(drop=True))
    return pd.concat(frames, ignore_index=True)


def _study_engine(store: Store, transport: NodeTransport,
                  trusted_keys: Sequence[Ed25519PublicKey], *, clock: Callable[[], float],
                  site_timeout_s: float, ca_pem: bytes | None) -> StudyEngine:
    """The study engine of a simulated network (the only place it is constructed)."""
    return StudyEngine(store, transport, trusted_keys, clock=clock,
                       site_timeout_s=site_timeout_s, ca_pem=ca_pem)


def _guarded(site_id: str, handler: NodeHandler) -> NodeHandler:
    """A handler that refuses with :data:`INTERNAL_ERROR` when ``handler`` raises."""
    def guarded(task: StudyTask) -> TaskReply | None:
        try:
            return handler(task)
        except Exception:  # the node must keep running; the reason goes upstream
            logger.exception("site %s failed on task %s", site_id, task.task_id)
            return TaskReply(task.task_id, task.study_id, refusal=INTERNAL_ERROR)

    return guarded


def _unused_answer(*args: object) -> NoReturn:
    raise AssertionError("a handler daemon answers through its handler")


class _HandlerDaemon(NodeDaemon):
    """A real node daemon whose tasks are answered by a :data:`NodeHandler` (a wrapped site).

    Connection, hello, heartbeats, reconnects and shutdown are :class:`NodeDaemon`'s own; only
    the answer of a task goes through the handler, so it may stay silent or send anything.
    """

    def __init__(self, handler: NodeHandler, **kwargs: Any) -> None:
        if not callable(getattr(NodeDaemon, "_answer_task", None)):
            raise HeronError("node.runtime.daemon.NodeDaemon no longer answers tasks in "
                             "_answer_task; heron.simulation must follow it")
        super().__init__(answer=_unused_answer, **kwargs)
        self._handler = handler

    def _answer_task(self, task: pb.StudyTask, out: queue.Queue[pb.NodeMessage | None]) -> None:
        try:
            domain = StudyTask(task.task_id, task.study_id, SignedStudy.from_proto(task.study),
                               max(task.round, 1), tuple(decode_release(r) for r in task.inputs))
        except Exception:
            logger.exception("site %s: undecodable task %s", self.site_id, task.task_id)
            reply: TaskReply | None = TaskReply(task.task_id, task.study_id,
                                                refusal=INTERNAL_ERROR)
        else:
            reply = self._handler(domain)
        if reply is None:
            return
        out.put(answer_message(reply.task_id, reply.study_id, reply.releases, reply.refusal))


@dataclass
class _Grpc:
    """The running parts of the gRPC runtime."""

    server: AioServer
    link: NodeLinkServicer
    port: int
    daemons: list[NodeDaemon] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


class SimulatedNetwork:
    """An aggregator and one node per site in this process (a context manager).

    Parameters
    ----------
    workdir
        Workspace for the network's files (see the module docstring); created if needed.
    sites
        The sites.
    trusted_key
        The coordinator's signing key: :meth:`run` signs studies with it, and the study engine
        and every node trust its public key.
    runtime
        ``"inprocess"`` (:class:`~aggregator.transport.LocalTransport`) or ``"grpc"`` (node
        daemons over mutual TLS on a free loopback port).
    today
        The nodes' calendar (study expiry, ages).
    site_timeout_s
        How long the aggregator waits for a site (per round) before it is unreachable.
    ca_dir
        The network CA (``ca.pem``, ``ca.key``); created under ``workdir/ca`` when ``None``.
        Sites that bring their own ``credentials_dir`` must hold certificates of this CA.
    ledger
        Give every node a disclosure ledger (differencing protection across studies).
    clock
        The study engine's clock (Unix seconds).
    node_wrappers
        Site id -> wrapper of that site's handler (fault injection).
    connect_timeout_s
        gRPC runtime: how long to wait for every node daemon to connect.

    Raises
    ------
    ValueError
        For an unknown runtime, duplicate site ids or wrappers of unknown sites.
    HeronError
        When the gRPC runtime cannot bind a port or its nodes do not connect in time.
    """

    def __init__(self, workdir: Path, sites: Sequence[SimulatedSite],
                 trusted_key: Ed25519PrivateKey, *, runtime: Runtime = "inprocess",
                 today: Callable[[], dt.date] = dt.date.today, site_timeout_s: float = 60.0,
                 ca_dir: Path | None = None, ledger: bool = False,
                 clock: Callable[[], float] = time.time,
                 node_wrappers: Mapping[str, HandlerWrapper] | None = None,
                 connect_timeout_s: float = 60.0) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
        ids = [s.site_id for s in sites]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate site ids in {ids}")
        wrappers = dict(node_wrappers or {})
        unknown = sorted(set(wrappers) - set(ids))
        if unknown:
            raise ValueError(f"node_wrappers name unknown sites: {unknown}")
        self._workdir = Path(workdir)
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._key = trusted_key
        self._runtime: Runtime = runtime
        self._sites = {s.site_id: s for s in sites}
        self._closed = False
        self._grpc: _Grpc | None = None
        self._local: LocalTransport | None = None
        self._ca_dir = self._network_ca(ca_dir)
        self._credentials = {s.site_id: self._site_credentials(s) for s in sites}
        self._nodes = {s.site_id: self._node_engine(s, today, ledger) for s in sites}
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._store = Store(self.db_path)
        keys = [trusted_key.public_key()]
        ca_pem = (self._ca_dir / "ca.pem").read_bytes()
        try:
            if runtime == "inprocess":
                self._local = LocalTransport()
                self._engine = _study_engine(self._store, self._local, keys, clock=clock,
                                             site_timeout_s=site_timeout_s, ca_pem=ca_pem)
                for site in sites:
                    handler = self._handler(site.site_id, wrappers.get(site.site_id))
                    self._local.connect(site.site_id, handler, HelloInfo(
                        site.site_id, __version__, site.ingested_at()))
            else:
                link = NodeLinkServicer(heartbeat_interval_s=5)
                self._engine = _study_engine(self._store, link, keys, clock=clock,
                                             site_timeout_s=site_timeout_s, ca_pem=ca_pem)
                self._start_grpc(link, wrappers, connect_timeout_s)
        except BaseException:
            self.close()
            raise

    # -- properties ------------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """``"inprocess"`` or ``"grpc"``."""
        return self._runtime

    @property
    def engine(self) -> StudyEngine:
        """The aggregator's study engine."""
        return self._engine

    @property
    def store(self) -> Store:
        """The aggregator's SQLite store."""
        return self._store

    @property
    def db_path(self) -> Path:
        """The aggregator's database file."""
        return self._workdir / "aggregator" / "aggregator.db"

    @property
    def nodes(self) -> Mapping[str, NodeEngine]:
        """Site id -> the site's node engine."""
        return self._nodes

    @property
    def transport(self) -> NodeTransport:
        """The study engine's transport (LocalTransport or the gRPC node link)."""
        if self._grpc is not None:
            return self._grpc.link
        assert self._local is not None
        return self._local

    @property
    def target(self) -> str | None:
        """``127.0.0.1:PORT`` of the aggregator (gRPC runtime), else ``None``."""
        return None if self._grpc is None else f"127.0.0.1:{self._grpc.port}"

    @property
    def ca_dir(self) -> Path:
        """The network CA folder."""
        return self._ca_dir

    # -- running studies -------------------------------------------------------------------------

    def submit(self, study: Study | SignedStudy) -> str:
        """Sign (a :class:`Study`) with the coordinator key and submit; return the study id."""
        signed = study if isinstance(study, SignedStudy) else sign_study(study, self._key)
        return self._engine.submit(signed)

    def wait(self, study_id: str, timeout_s: float = 120.0,
             tick: Callable[[], None] | None = None) -> dict[str, Any]:
        """Wait for a submitted study's results.json.

        Site timeouts are checked every quarter second, as the aggregator's ticker does;
        ``tick`` (if given) is called at every poll, e.g. to advance a fake clock.

        Raises
        ------
        SimulationTimeout
            When the study is still running after ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        next_check = time.monotonic() + _TICK_S
        while True:
            results = self._engine.results(study_id)
            if results is not None:
                return results
            now = time.monotonic()
            if now > deadline:
                raise SimulationTimeout(f"study {study_id} still running after {timeout_s:g} s:"
                                        f" {self._engine.status(study_id)}")
            if tick is not None:
                tick()
            if now >= next_check:
                self._engine.check_timeouts()
                next_check = now + _TICK_S
            time.sleep(0.01)

    def run(self, study: Study | SignedStudy, timeout_s: float = 120.0,
            tick: Callable[[], None] | None = None) -> dict[str, Any]:
        """Submit a study and return its results.json (see :meth:`submit` and :meth:`wait`)."""
        return self.wait(self.submit(study), timeout_s, tick)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the nodes and the transport (idempotent).

        The aggregator's store stays open, so the database can still be inspected through
        :attr:`store`; it is closed with the network object or by ``store.close()``.
        """
        if self._closed:
            return
        self._closed = True
        if self._grpc is not None:
            for daemon in self._grpc.daemons:
                daemon.stop(drain_s=2.0)
            for thread in self._grpc.threads:
                thread.join(10.0)
            self._grpc.link.close(timeout_s=2.0)
            self._grpc.server.stop(1.0)
        if self._local is not None:
            self._local.close()

    def __enter__(self) -> SimulatedNetwork:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- assembly --------------------------------------------------------------------------------

    def _network_ca(self, ca_dir: Path | None) -> Path:
        if ca_dir is not None:
            return Path(ca_dir)
        own = self._workdir / "ca"
        if not (own / "ca.pem").exists():
            init_ca(own, name="heron simulation CA")
        return own

    def _node_dir(self, site_id: str) -> Path:
        path = self._workdir / "nodes" / site_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _site_credentials(self, site: SimulatedSite) -> Credentials:
        if site.credentials_dir is not None:
            return load_credentials(site.credentials_dir)
        out = self._node_dir(site.site_id) / "credentials"
        if not (out / "cert.pem").exists():
            issue_site(self._ca_dir, site.site_id, out)
        return load_credentials(out)

    def _node_engine(self, site: SimulatedSite, today: Callable[[], dt.date],
                     ledger: bool) -> NodeEngine:
        node_dir = self._node_dir(site.site_id)
        return NodeEngine(
            site.site_id, site.policy, [self._key.public_key()], site.open_tables,
            AuditTrail(node_dir / "audit.jsonl"), today=today,
            credentials=self._credentials[site.site_id],
            ledger=DisclosureLedger(node_dir / "ledger",
                                    load_or_create_salt(node_dir / "ledger.salt"))
            if ledger else None,
            secure_state=node_dir / "secure-sessions.json")

    def _handler(self, site_id: str, wrapper: HandlerWrapper | None) -> NodeHandler:
        handler = node_handler(self._nodes[site_id])
        return _guarded(site_id, wrapper(handler) if wrapper is not None else handler)

    def _start_grpc(self, link: NodeLinkServicer, wrappers: Mapping[str, HandlerWrapper],
                    connect_timeout_s: float) -> None:
        creds = issue_aggregator(self._ca_dir, self._workdir / "aggregator" / "credentials",
                                 hosts=("127.0.0.1",))
        server = AioServer(server_options(), name="sim-grpc")  # the node link is grpc.aio
        server.add(pb_grpc.add_NodeLinkServicer_to_server, link)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
        if port == 0:
            server.stop(None)
            raise HeronError("cannot bind a loopback port for the simulated aggregator")
        server.start()
        self._grpc = _Grpc(server, link, port)
        for site_id, site in self._sites.items():
            kwargs: dict[str, Any] = {
                "site_id": site_id, "target": f"127.0.0.1:{port}",
                "credentials": self._credentials[site_id],
                "freshness": lambda s=site: s.ingested_at(),
                "backoff_max_s": 2.0,
            }
            wrapper = wrappers.get(site_id)
            daemon: NodeDaemon = (
                NodeDaemon(answer=self._nodes[site_id].answer, **kwargs) if wrapper is None
                else _HandlerDaemon(self._handler(site_id, wrapper), **kwargs))
            thread = threading.Thread(target=daemon.run, name=f"sim-node-{site_id}",
                                      daemon=True)
            self._grpc.daemons.append(daemon)
            self._grpc.threads.append(thread)
            thread.start()
        deadline = time.monotonic() + connect_timeout_s
        while not set(self._sites) <= set(link.connected_sites()):
            if time.monotonic() > deadline:
                missing = sorted(set(self._sites) - set(link.connected_sites()))
                raise HeronError(f"simulated nodes did not connect within "
                                 f"{connect_timeout_s:g} s: {', '.join(missing)}")
            time.sleep(0.02)

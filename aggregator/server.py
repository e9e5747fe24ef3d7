"""The aggregator daemon: one mutual-TLS gRPC port with NodeLink, Coordinator and health.

:func:`create_server` wires the store, the node link (the engine's transport), the study
engine, the coordinator service and the standard gRPC health service; :class:`AggregatorServer`
adds the ticker thread that expires silent sites. :func:`serve` runs it in the foreground until
SIGTERM or SIGINT, then shuts down gracefully: health turns ``NOT_SERVING``, node links are
closed, in-flight calls get a grace period, and the database is closed.

**Threads.** The gRPC server is ``grpc.aio`` on one event-loop thread (:mod:`aggregator.aio`):
every connection, node stream and waiting ``WaitStudy`` call is a coroutine there, so a
connected site holds no thread and a thousand of them cost memory, not workers. What blocks
runs beside the loop: the coordinator API's engine calls on a pool of ``service_threads``
threads (:mod:`aggregator.coordinator_api`), the node link's events (connects, replies,
disconnects, in order) on one event thread (:mod:`aggregator.link`), and the timeout ticker.
Health checks are answered on the loop itself. The node link still refuses a stream beyond
``max_node_streams`` (or a third stream of one site certificate) at once and cancels a stream
that sends no ``Hello`` within ``hello_timeout_s``. ``max_message_bytes`` is the gRPC message
limit of both directions, told to nodes in ``Welcome``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator.aio import AioServer
from aggregator.config import AggregatorConfig
from aggregator.coordinator_api import CoordinatorServicer
from aggregator.engine import StudyEngine
from aggregator.errors import ConfigError
from aggregator.link import NodeLinkServicer
from aggregator.store import Store
from aggregator.strategy import Strategy
from protocol.errors import ProtocolError
from protocol.keys import load_public_key
from protocol.pki import load_credentials
from protocol.tls import GrpcOption, server_credentials, server_options
from protocol.v1 import coordinator_pb2, coordinator_pb2_grpc, node_link_pb2, node_link_pb2_grpc

__all__ = ["SERVICE_NAMES", "AggregatorServer", "create_server", "grpc_server_options",
           "raise_open_file_limit", "serve"]

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    node_link_pb2.DESCRIPTOR.services_by_name["NodeLink"].full_name,
    coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
)
TICK_S = 0.5
_SPARE_FILES = 256  # the database, its journal, certificates, logs, coordinator connections
_MESSAGE_LIMIT_OPTIONS = ("grpc.max_send_message_length", "grpc.max_receive_message_length")


def grpc_server_options(config: AggregatorConfig) -> list[GrpcOption]:
    """The server options of :func:`protocol.tls.server_options` with the configured message
    limit."""
    options = [o for o in server_options() if o[0] not in _MESSAGE_LIMIT_OPTIONS]
    return options + [(name, config.max_message_bytes) for name in _MESSAGE_LIMIT_OPTIONS]


class AggregatorServer:
    """A configured, bound (not yet started) aggregator.

    Attributes
    ----------
    port
        The bound port (the real one when the config asked for port 0).
    engine, store, link, health
        The parts, for inspection and tests.
    workers
        Threads running the coordinator API's engine calls (``service_threads``).
    """

    def __init__(self, config: AggregatorConfig, *,
                 clock: Callable[[], float] = time.time,
                 strategies: Mapping[str, Strategy[Any]] | None = None) -> None:
        try:
            creds = load_credentials(config.credentials_dir)
            trusted = [load_public_key(k) for k in config.trusted_coordinators]
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
        self.config = config
        if not trusted:
            logger.warning("no trusted coordinator keys: study signatures are checked only "
                           "by the nodes")
        self.store = Store(config.db_path)
        self.link = NodeLinkServicer(config.heartbeat_interval_s,
                                     hello_timeout_s=config.hello_timeout_s,
                                     max_streams=config.max_node_streams,
                                     max_message_bytes=config.max_message_bytes)
        self.engine = StudyEngine(self.store, self.link, trusted, clock=clock,
                                  site_timeout_s=config.site_timeout_s,
                                  ca_pem=creds.ca.read_bytes(), strategies=strategies)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.workers = config.service_threads
        self._calls = ThreadPoolExecutor(max_workers=self.workers,
                                         thread_name_prefix="coordinator")
        self._server = AioServer(grpc_server_options(config), name="aggregator-loop")
        self._server.add(node_link_pb2_grpc.add_NodeLinkServicer_to_server, self.link)
        self._server.add(coordinator_pb2_grpc.add_CoordinatorServicer_to_server,
                         CoordinatorServicer(self.engine, self._calls))
        self._server.add(health_pb2_grpc.add_HealthServicer_to_server, self.health)
        self.port = self._server.add_secure_port(config.listen, server_credentials(creds))
        if self.port == 0:
            self._server.stop(None)
            self._calls.shutdown()
            self.store.close()
            raise ConfigError(f"listen: cannot bind {config.listen}")
        self._stop_ticker = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="aggregator-ticker",
                                        daemon=True)
        self._stopped = False
        self.engine.resume()

    def start(self) -> None:
        """Start serving, mark every service SERVING and start the timeout ticker."""
        self._server.start()
        for name in ("", *SERVICE_NAMES):
            self._server.loop_thread.run(
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING))
        self._ticker.start()
        host = self.config.listen.rpartition(":")[0]
        logger.info("aggregator listening on %s:%d", host, self.port)

    def begin_shutdown(self) -> None:
        """Report NOT_SERVING to health checks (the first step of a graceful stop)."""
        if not self._server.loop.is_closed():
            self._server.loop_thread.run(self.health.enter_graceful_shutdown())

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop gracefully: NOT_SERVING, close node links, drain calls, close the store."""
        if self._stopped:
            return
        self._stopped = True
        self.begin_shutdown()
        self.engine.wake_waiters()  # WaitStudy calls answer now instead of holding the drain
        self.link.close(timeout_s=grace or 0.0)
        self._server.stop(grace)
        self._calls.shutdown(wait=True)
        self.link.drain()
        self._stop_ticker.set()
        if self._ticker.is_alive():
            self._ticker.join()
        self.store.close()
        logger.info("aggregator stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the gRPC server has stopped; ``True`` if it did."""
        return self._server.wait(timeout)

    def _tick(self) -> None:
        while not self._stop_ticker.wait(TICK_S):
            try:
                self.engine.check_timeouts()
            except Exception:
                logger.exception("timeout check failed")


def create_server(config: AggregatorConfig, *, clock: Callable[[], float] = time.time,
                  strategies: Mapping[str, Strategy[Any]] | None = None) -> AggregatorServer:
    """Build the aggregator and bind its port; call ``.start()`` to serve.

    Parameters
    ----------
    config
        Settings; ``listen`` may use port 0.
    clock
        Unix time in seconds (for site timeouts and stored times).
    strategies
        Strategy by analysis kind (default: every kind heron runs).

    Raises
    ------
    ConfigError
        When the credentials or coordinator keys cannot be read, or the port cannot be bound.
    """
    return AggregatorServer(config, clock=clock, strategies=strategies)


def raise_open_file_limit(streams: int) -> int:
    """Raise the soft open-file limit (up to the hard one) so that ``streams`` connections and
    the aggregator's own files fit; return the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = streams + _SPARE_FILES
    if soft == resource.RLIM_INFINITY or soft >= want:
        return int(soft)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        logger.warning("open-file limit %d (hard) is below the %d that max_node_streams=%d "
                       "needs", new, want, streams)
    else:
        logger.info("open-file limit raised from %d to %d", soft, new)
    return int(new)


def serve(config: AggregatorConfig, grace_s: float = 10.0,
          on_started: Callable[[AggregatorServer], None] | None = None,
          strategies: Mapping[str, Strategy[Any]] | None = None) -> int:
    """Run the aggregator until SIGTERM or SIGINT, then stop gracefully; return exit code 0.

    Must be called from the main thread (signal handlers). ``on_started`` is called once the
    server is serving (for example to write ``server.port`` to a port file).
    """
    raise_open_file_limit(config.max_node_streams)
    server = create_server(config, strategies=strategies)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: shutting down", signum)
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if on_started is not None:
            on_started(server)
        while not stop.wait(1.0):
            pass
    finally:
        server.stop(grace_s)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0

"""A ``grpc.aio`` server on its own event-loop thread, driven from ordinary threads.

The aggregator serves every connection on one asyncio event loop (:mod:`aggregator.server`):
a node stream or a waiting coordinator call is a coroutine, not a thread. The rest of the
aggregator (the study engine, the SQLite store, the timeout ticker, tests and the simulation
harness) is synchronous, so :class:`LoopThread` runs the loop on a daemon thread and lets other
threads run coroutines on it; :class:`AioServer` is a ``grpc.aio`` server created, started
and stopped there, with the bind / start / stop calls of the synchronous ``grpc.server``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc

__all__ = ["AioServer", "LoopThread"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_START_S = 10.0


class LoopThread:
    """An asyncio event loop running on its own daemon thread.

    Parameters
    ----------
    name
        The thread's name.
    """

    def __init__(self, name: str = "aio-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and return its result (never call this on the loop)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called on its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], _T], timeout: float | None = None) -> _T:
        """Call ``fn`` on the loop thread and return its result."""
        async def _call() -> _T:
            return fn()
        return self.run(_call(), timeout)

    def close(self) -> None:
        """Stop the loop (cancelling what still runs on it) and join its thread."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                self.run(_cancel_others(), timeout=_START_S)
            except Exception:  # pragma: no cover - best effort at shutdown
                logger.debug("cancelling the loop's tasks failed", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()


async def _cancel_others() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1.0)


class AioServer:
    """A ``grpc.aio`` server on a :class:`LoopThread` of its own.

    Parameters
    ----------
    options
        gRPC server options.
    name
        Name of the loop thread.
    """

    def __init__(self, options: Sequence[tuple[str, Any]], name: str = "grpc-aio") -> None:
        self.loop_thread = LoopThread(name)
        self.loop = self.loop_thread.loop
        self._stopped = threading.Event()
        self._closed = False

        async def _make() -> grpc.aio.Server:
            return grpc.aio.server(options=list(options))

        self.server = self.loop_thread.run(_make(), timeout=_START_S)

    def add(self, register: Callable[[Any, Any], None], servicer: Any) -> None:
        """Register a servicer (``register`` is a generated ``add_XServicer_to_server``)."""
        self.loop_thread.call(lambda: register(servicer, self.server), timeout=_START_S)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        """Bind ``address`` with TLS; return the port (0 when it cannot be bound)."""
        def _bind() -> int:
            try:
                return self.server.add_secure_port(address, credentials)
            except RuntimeError as exc:  # grpc.aio raises where grpc.server returns 0
                logger.error("cannot bind %s: %s", address, exc)
                return 0
        return self.loop_thread.call(_bind, timeout=_START_S)

    def start(self) -> None:
        """Start serving."""
        self.loop_thread.run(self.server.start(), timeout=_START_S)

    def stop(self, grace: float | None) -> None:
        """Stop the server (calls still running get ``grace`` seconds), then the loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self.loop_thread.run(self.server.stop(grace))
        finally:
            self.loop_thread.close()
            self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` has finished; ``True`` if it did within ``timeout``."""
        return self._stopped.wait(timeout)

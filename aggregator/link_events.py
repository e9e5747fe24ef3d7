"""The node link's event thread: listener calls in order, replies handed over in batches.

The study engine is synchronous and writes to SQLite, so the node link (on the event loop)
does not call it directly: every transport event is queued here and run on one thread, in the
order it was queued. Replies that queue up while the thread is busy (a round's answers arrive
together) are handed to the listener as one batch, so the engine records them in one
transaction, one commit, instead of one commit each (:meth:`StudyEngine.on_replies`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["MAX_BATCH", "EventThread"]

logger = logging.getLogger(__name__)

MAX_BATCH = 512
"""Replies handed to the listener at once, at most."""

_R = TypeVar("_R")


class _Call:
    """A queued listener call and the future of its result."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.future: Future[Any] = Future()


class EventThread(Generic[_R]):
    """Runs queued calls and batches of replies on one thread, in order.

    Parameters
    ----------
    on_batch
        Called (on the thread) with consecutive replies, at most :data:`MAX_BATCH` at once.
    name
        The thread's name.
    """

    def __init__(self, on_batch: Callable[[Sequence[_R]], None],
                 name: str = "node-link-events") -> None:
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._items: deque[_Call | _R] = deque()
        self._scheduled = False
        self._closed = False

    def call(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``fn(*args)``; its future holds the result (or the exception)."""
        item = _Call(fn, args)
        if not self._put(item):
            item.future.set_exception(RuntimeError("the node link is closed"))
        return item.future

    def reply(self, reply: _R) -> None:
        """Queue a reply (dropped once closed)."""
        if not self._put(reply):
            logger.debug("reply after close; dropped")

    def close(self, wait: bool) -> None:
        """Accept nothing more; with ``wait``, return once what was queued has run."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait)

    def _put(self, item: _Call | _R) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._items.append(item)
            if self._scheduled:
                return True
            self._scheduled = True
        self._executor.submit(self._drain)
        return True

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    self._scheduled = False
                    return
                first = self._items.popleft()
                batch: list[_R] = []
                if not isinstance(first, _Call):
                    batch.append(first)
                    while self._items and len(batch) < MAX_BATCH \
                            and not isinstance(self._items[0], _Call):
                        batch.append(self._items.popleft())  # type: ignore[arg-type]
            if isinstance(first, _Call):
                self._run(first)
            else:
                try:
                    self._on_batch(batch)
                except Exception:
                    logger.exception("handling %d node replies failed", len(batch))

    @staticmethod
    def _run(item: _Call) -> None:
        try:
            item.future.set_result(item.fn(*item.args))
        except Exception as exc:
            logger.exception("node link event %s failed", getattr(item.fn, "__name__", item.fn))
            item.future.set_exception(exc)

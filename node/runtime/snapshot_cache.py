"""The node's cache of one store snapshot, shared by every analysis and study on it."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from node.cohorts.cohort import TableSource
from node.cohorts.facts import Facts
from node.governance.digests import SnapshotDigests
from node.governance.ledger import DisclosureLedger

__all__ = ["SnapshotCache"]

logger = logging.getLogger(__name__)


class SnapshotCache:
    """One snapshot of the store as the studies see it: each table (or the columns of it asked
    for) read once, the snapshot's facts and ledger digests read once, and what is derived
    from the snapshot alone (cohorts, endpoints, ledger digests of a cohort; :meth:`derived`)
    computed once, for every analysis and every study on it.

    The engine keeps the cache of the latest snapshot only: a re-ingestion (a new snapshot id)
    starts a new one, so nothing derived from older data is ever reused. Tables and derived
    values are bounded together by bytes (``HERON_NODE_CACHE_MB``, default 2048; the facts
    columns apart): past it the least recently used go (a study holding one keeps it until it
    ends). A value derived for a cohort is kept with that cohort (its identity) and counts its
    own bytes only.
    """

    reads_columns = True

    def __init__(self, store: TableSource, limit_bytes: int | None = None) -> None:
        self._store = store
        self._tables: OrderedDict[tuple[str, tuple[str, ...] | None], pd.DataFrame] = \
            OrderedDict()
        self._derived: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._limit = _cache_limit() if limit_bytes is None else limit_bytes
        self._facts: Facts | bool | None = False
        self._digests: dict[str, SnapshotDigests] = {}
        self.snapshot_id: str | None = getattr(store, "snapshot_id", None)

    def table(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        full = (name, None)
        if full in self._tables:
            return self._tables[full]
        key = full if columns is None or not getattr(self._store, "reads_columns", False) \
            else (name, tuple(columns))
        if key not in self._tables:
            frame = self._store.table(name) if key[1] is None \
                else self._store.table(name, columns=key[1])  # type: ignore[call-arg]
            self._keep(self._tables, key, frame)
        self._tables.move_to_end(key)
        return self._tables[key]

    def derived(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per ``key`` for this snapshot (the result must not be changed)."""
        if key not in self._derived:
            self._keep(self._derived, key, compute())
        self._derived.move_to_end(key)
        return self._derived[key]

    def facts(self) -> Facts | None:
        """The snapshot's facts (:mod:`node.cohorts.facts`), None for a store without them."""
        if self._facts is False:
            get = getattr(self._store, "facts", None)
            self._facts = get() if callable(get) else None
        return self._facts if isinstance(self._facts, Facts) else None

    def ledger_digests(self, ledger: DisclosureLedger, facts: Facts) -> SnapshotDigests | None:
        """Per-infusion ledger digests of the snapshot under ``ledger``'s salt, or None."""
        get = getattr(self._store, "ledger_digests", None)
        if not callable(get):
            return None
        if ledger.fingerprint not in self._digests:
            self._digests[ledger.fingerprint] = get(ledger, facts)
        return self._digests[ledger.fingerprint]

    def _keep(self, where: OrderedDict[Any, Any], key: Hashable, value: Any) -> None:
        where[key] = value
        self._sizes[key] = _nbytes(value)
        while len(self._tables) + len(self._derived) > 1 \
                and sum(self._sizes.values()) > self._limit:
            oldest = [d for d in (self._tables, self._derived) if d and next(iter(d)) != key]
            if not oldest:
                break
            old_key, _ = oldest[0].popitem(last=False)
            self._sizes.pop(old_key, None)
            logger.debug("snapshot cache over %d bytes: dropped %r", self._limit, old_key)


def _cache_limit() -> int:
    try:
        return int(float(os.environ.get("HERON_NODE_CACHE_MB", "2048")) * (1 << 20))
    except ValueError:
        return 2 << 30


def _nbytes(value: Any) -> int:
    """Bytes held by a cached value (frames, arrays, tuples of them); others count 0."""
    if isinstance(value, pd.DataFrame | pd.Series):
        return int(value.memory_usage(index=False, deep=False).sum()) \
            if isinstance(value, pd.DataFrame) else int(value.memory_usage(index=False))
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple):  # (cohort held for its identity, value): the value's
        return _nbytes(value[-1]) if value else 0  # bytes (the cohort is its own entry)
    return 0

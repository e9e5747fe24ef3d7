"""The node's local Parquet store, replaced atomically on every ingestion.

Layout::

    store_dir/
        current -> snapshots/<id>        symlink to the active snapshot
        snapshots/<id>/<table>.parquet   accepted rows (patient_id pseudonymised)
        snapshots/<id>/quarantine.parquet
        snapshots/<id>/warnings.parquet
        snapshots/<id>/facts.parquet      one row per infusion: what studies read (derived)
        snapshots/<id>/baseline_labs.parquet  baseline lab values per facts row (derived)
        snapshots/<id>/ledger-<fp>.npz    per-infusion ledger digests under one salt (derived)
        snapshots/<id>/manifest.json

A snapshot is written into a hidden temporary folder, fsynced, renamed into place, and only
then made current by replacing the ``current`` symlink (new link under a temporary name,
``os.replace``).  A crash at any point leaves the previous snapshot current and intact; left-over
folders are removed by the next write.  Readers resolve ``current`` once when opening, so one
:class:`Store` never mixes two snapshots.

The derived files are written into the temporary folder with the tables, so a snapshot is never
current without them (:mod:`node.cohorts.facts`; the ledger digests when the ingestion was given
the ledger salt). A snapshot written before they existed, or digests under another salt, are
derived on first use and added to the snapshot folder atomically (temporary file, fsync,
``os.replace``); until then the snapshot is complete without them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from node.errors import StoreError
from node.ingestion.schema import TABLE_NAMES, StoredDtype, all_column_names, get_table

if TYPE_CHECKING:
    from node.cohorts.facts import Facts
    from node.governance.digests import SnapshotDigests
    from node.governance.ledger import DisclosureLedger

logger = logging.getLogger(__name__)

SNAPSHOTS = "snapshots"
CURRENT = "current"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.parquet"
WARNINGS = "warnings.parquet"
_LOCK = ".lock"

#: Leading columns of quarantine.parquet; the raw fields of every table follow as strings.
QUARANTINE_META: dict[str, StoredDtype] = {
    "table": "string", "file": "string", "row": "Int64", "column": "string", "rule": "string",
    "message": "string", "rules": "string",
}
#: Columns of warnings.parquet.
WARNING_COLUMNS: dict[str, StoredDtype] = {
    "table": "string", "file": "string", "row": "Int64", "column": "string", "rule": "string",
    "message": "string", "infusion_id": "string",
}

Writer = Callable[[pd.DataFrame, Path], None]
_ARROW_STRINGS = {pa.string(): pd.StringDtype("pyarrow"),
                  pa.large_string(): pd.StringDtype("pyarrow")}


def quarantine_dtypes() -> dict[str, StoredDtype]:
    """Column -> dtype of quarantine.parquet (meta columns, then every data-model column)."""
    return {**QUARANTINE_META, **{c: "string" for c in all_column_names()}}


def _as(series: pd.Series, dtype: StoredDtype, keep_arrow: bool = True) -> pd.Series:
    """Cast to ``dtype``; an Arrow-backed string column stays Arrow-backed if ``keep_arrow``."""
    if keep_arrow and dtype == "string" and isinstance(series.dtype, pd.StringDtype):
        return series
    return series.astype(dtype)


def _conform(frame: pd.DataFrame | None, dtypes: Mapping[str, StoredDtype],
             keep_arrow: bool = True) -> pd.DataFrame:
    """``frame`` with exactly these columns and dtypes (absent columns are all-missing)."""
    frame = pd.DataFrame() if frame is None else frame
    cols = {c: (_as(frame[c], t, keep_arrow) if c in frame
                else pd.Series(index=frame.index, dtype=t)) for c, t in dtypes.items()}
    return pd.DataFrame(cols, index=frame.index).reset_index(drop=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write one frame as Parquet and fsync it (the default writer)."""
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    _fsync_path(path)


@contextlib.contextmanager
def _locked(store_dir: Path) -> Iterator[None]:
    """Exclusive writer lock (released by the OS if the process dies)."""
    with open(store_dir / _LOCK, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _current_id(store_dir: Path) -> str | None:
    link = store_dir / CURRENT
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


def _remove_except(store_dir: Path, keep: str | None) -> None:
    """Delete every snapshot folder but ``keep`` and any stray temporary link."""
    for entry in (store_dir / SNAPSHOTS).iterdir():
        if entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
            logger.info("removed old snapshot %s", entry.name)
    for entry in store_dir.glob(".current-*"):
        entry.unlink(missing_ok=True)


def _switch_current(store_dir: Path, snapshot_id: str) -> None:
    """Point ``current`` at a snapshot atomically."""
    tmp = store_dir / f".current-{snapshot_id}"
    os.symlink(f"{SNAPSHOTS}/{snapshot_id}", tmp)
    _fsync_path(store_dir)
    os.replace(tmp, store_dir / CURRENT)
    _fsync_path(store_dir)


def new_snapshot_id() -> str:
    """Sortable unique id: UTC time plus random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def write_snapshot(store_dir: Path | str, tables: Mapping[str, pd.DataFrame],
                   quarantine: pd.DataFrame, manifest: Mapping[str, Any],
                   warnings: pd.DataFrame | None = None, *,
                   writer: Writer | None = None, ledger_salt: bytes | None = None) -> Path:
    """Write a complete snapshot and make it current; return its folder.

    Parameters
    ----------
    store_dir : path
        Store root (created if absent).
    tables : mapping
        Table name -> accepted rows with the data-model columns (patient_id pseudonymised).
        Tables left out are absent (read back as empty frames).
    quarantine, warnings : DataFrame
        Quarantined rows and warnings (columns of :func:`quarantine_dtypes`, ``WARNING_COLUMNS``).
    manifest : mapping
        Written as manifest.json, with ``snapshot_id`` and ``tables_present`` added.
    writer : callable, optional
        ``writer(frame, path)`` writing one Parquet file; default :func:`write_parquet`.
    ledger_salt : bytes, optional
        The node's ledger salt: the snapshot then holds the ledger digests of every infusion.
    """
    writer = writer or write_parquet

    def fill(tmp: Path) -> list[str]:
        stored = {}
        for name, frame in tables.items():
            stored[name] = _conform(frame, get_table(name).dtypes())
            writer(stored[name], tmp / f"{name}.parquet")
        _write_derived(tmp, stored, ledger_salt)
        del stored
        writer(_conform(quarantine, quarantine_dtypes()), tmp / QUARANTINE)
        writer(_conform(warnings, WARNING_COLUMNS), tmp / WARNINGS)
        return list(tables)

    return write_snapshot_with(store_dir, fill, manifest)


def write_snapshot_with(store_dir: Path | str, fill: Callable[[Path], list[str]],
                        manifest: Mapping[str, Any]) -> Path:
    """Make a snapshot current whose files ``fill(folder)`` writes (returning the tables it
    wrote); the manifest (read after ``fill``), atomicity and clean-up of
    :func:`write_snapshot`."""
    store_dir = Path(store_dir)
    (store_dir / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
    with _locked(store_dir):
        _remove_except(store_dir, _current_id(store_dir))
        sid = new_snapshot_id()
        tmp = store_dir / SNAPSHOTS / f".tmp-{sid}"
        final = store_dir / SNAPSHOTS / sid
        tmp.mkdir(mode=0o700)
        try:
            present = fill(tmp)
            body = {**manifest, "snapshot_id": sid, "tables_present": present}
            (tmp / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
            _fsync_path(tmp / MANIFEST)
            _fsync_path(tmp)
            os.rename(tmp, final)
            _fsync_path(store_dir / SNAPSHOTS)
            _switch_current(store_dir, sid)
        except BaseException:
            logger.error("snapshot %s not completed; previous snapshot stays current", sid)
            if _current_id(store_dir) != sid:
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.rmtree(final, ignore_errors=True)
            raise
        _remove_except(store_dir, sid)
    logger.info("snapshot %s is current", sid)
    return final


def _write_derived(folder: Path, tables: Mapping[str, pd.DataFrame],
                   ledger_salt: bytes | None) -> None:
    """Write the snapshot's facts and baseline lab values (and its ledger digests under
    ``ledger_salt``)."""
    from node.cohorts.covariates import baseline_labs
    from node.cohorts.facts import FACTS_FILE, LABS_FILE, build_facts, write_facts
    from node.governance.digests import salt_fingerprint, snapshot_digests
    facts = build_facts(tables)
    write_facts(facts, folder / FACTS_FILE)
    write_labs(baseline_labs(tables, facts.column("infusion_id")), folder / LABS_FILE)
    if ledger_salt is not None:
        snapshot_digests(facts.column("patient_id").to_pylist(),
                         facts.column("infusion_id").to_pylist(), ledger_salt).save(
            folder / _digests_file(salt_fingerprint(ledger_salt)))


def write_facts_file(table: pa.Table, path: Path) -> None:
    """Write a snapshot's facts (:func:`node.cohorts.facts.write_facts`)."""
    from node.cohorts.facts import write_facts
    write_facts(table, path)


def write_labs(table: pa.Table, path: Path) -> None:
    """Write a snapshot's baseline lab values (:data:`node.cohorts.facts.LABS_FILE`)."""
    from node.cohorts.facts import LABS_VERSION, write_facts
    write_facts(table.replace_schema_metadata({"heron_labs": LABS_VERSION}), path)


def _digests_file(fingerprint: str) -> str:
    return f"ledger-{fingerprint}.npz"


class Store:
    """Read access to one snapshot of the store (the one current when opened)."""

    def __init__(self, store_dir: Path, snapshot_dir: Path, manifest: dict[str, Any]):
        self.store_dir = store_dir
        self.path = snapshot_dir
        self._manifest = manifest

    @property
    def manifest(self) -> dict[str, Any]:
        """The snapshot's manifest (a copy)."""
        return json.loads(json.dumps(self._manifest))

    @property
    def snapshot_id(self) -> str:
        """Id of the snapshot this store reads."""
        return str(self._manifest.get("snapshot_id", self.path.name))

    @property
    def ingested_at(self) -> str:
        """ISO 8601 UTC time of the ingestion that wrote the snapshot."""
        return str(self._manifest.get("ingested_at", ""))

    def stored_rows(self, table: str) -> int:
        """Rows stored for ``table`` (0 for an absent optional table)."""
        get_table(table)
        return int(self._manifest.get("tables", {}).get(table, {}).get("stored", 0))

    reads_columns = True
    """:meth:`table` reads a subset of the columns when asked
    (:func:`node.cohorts.cohort.get_table`)."""

    def _read(self, filename: str, dtypes: Mapping[str, StoredDtype],
              required: bool, columns: Sequence[str] | None = None) -> pd.DataFrame:
        if columns is not None:
            dtypes = {c: dtypes[c] for c in columns if c in dtypes}
        path = self.path / filename
        if not path.exists():
            if required:
                raise StoreError(f"store snapshot {self.path} lacks {filename}; it is damaged "
                                 "or was replaced (reopen the store)")
            return _conform(None, dtypes, keep_arrow=False)
        _choose_memory_pool()
        try:
            # Arrow-backed strings: several times faster to read than Python objects. Only
            # the columns asked for are read (absent ones come back all-missing).
            names = None if columns is None else \
                [c for c in pq.read_schema(path).names if c in dtypes]
            frame = pq.read_table(path, columns=names).to_pandas(
                types_mapper=_ARROW_STRINGS.get)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"cannot read {path}: {type(exc).__name__}") from None
        return _conform(frame, dtypes, keep_arrow=True)

    def table(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Stored rows of table ``name`` with the data-model columns and stored dtypes.

        ``columns``, when given, reads only those of the table's columns (in the table's order;
        names the table lacks are ignored): a node reads only what a study uses.

        Raises
        ------
        StoreError
            If ``name`` is not a data-model table or the snapshot is damaged.
        """
        if name not in TABLE_NAMES:
            raise StoreError(f"unknown table {name!r}; known: {', '.join(TABLE_NAMES)}")
        present = name in self._manifest.get("tables_present", [])
        return self._read(f"{name}.parquet", get_table(name).dtypes(), required=present,
                          columns=columns)

    def facts(self) -> Facts:
        """The snapshot's facts (:mod:`node.cohorts.facts`); a snapshot without them (written
        before they existed) derives them from its tables once and keeps them. Its baseline
        lab values likewise, on their first use."""
        from node.cohorts.facts import FACTS_FILE, Facts, build_facts
        path = self.path / FACTS_FILE
        if not path.exists():
            logger.info("snapshot %s has no facts yet: deriving them", self.snapshot_id)
            table = build_facts(self)
            if not self._keep(table, path, write_facts_file):
                return Facts(table, self.snapshot_id,
                             labs=lambda: self._labs(table.column("infusion_id")))
        _choose_memory_pool()
        return Facts(path, self.snapshot_id,
                     labs=lambda: self._labs(pq.ParquetFile(path).read(columns=["infusion_id"])
                                             .column("infusion_id")))

    def _labs(self, ids: pa.ChunkedArray) -> Path | pa.Table:
        """The snapshot's baseline lab values file; a snapshot without it (written before it
        existed) derives it for the facts' ``ids`` once and keeps it."""
        from node.cohorts.covariates import baseline_labs
        from node.cohorts.facts import LABS_FILE
        path = self.path / LABS_FILE
        if path.exists():
            return path
        logger.info("snapshot %s has no baseline lab values yet: deriving them",
                    self.snapshot_id)
        table = baseline_labs(self, ids)
        return path if self._keep(table, path, write_labs) else table

    def _keep(self, table: pa.Table, path: Path,
              write: Callable[[pa.Table, Path], None]) -> bool:
        """Add a derived file to the snapshot folder atomically; False if it cannot be."""
        try:
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            write(table, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("cannot keep %s in %s (%s); it stays in memory", path.name,
                           self.path, type(exc).__name__)
            return False
        return True

    def ledger_digests(self, ledger: DisclosureLedger, facts: Facts) -> SnapshotDigests:
        """Per-infusion ledger digests under ``ledger``'s salt, aligned with ``facts``
        (:mod:`node.governance.digests`): read from the snapshot, or computed once and kept
        there."""
        from node.governance.digests import SnapshotDigests
        path = self.path / _digests_file(ledger.fingerprint)
        found = SnapshotDigests.load(path, len(facts)) if path.exists() else None
        if found is not None:
            return found
        logger.info("snapshot %s has no ledger digests under this salt: computing them",
                    self.snapshot_id)
        made = ledger.snapshot_digests(facts.column("patient_id").to_pylist(),
                                       facts.column("infusion_id").to_pylist())
        try:
            made.save(path)
        except OSError as exc:
            logger.warning("cannot keep the ledger digests in %s (%s)", self.path,
                           type(exc).__name__)
        return made

    def quarantine(self) -> pd.DataFrame:
        """Quarantined rows: table, file, row, column, rule, message, rules, raw fields."""
        return self._read(QUARANTINE, quarantine_dtypes(), required=True)

    def warnings(self) -> pd.DataFrame:
        """Warnings raised on stored rows."""
        return self._read(WARNINGS, WARNING_COLUMNS, required=True)


_POOL_CHOSEN = False


def _choose_memory_pool() -> None:
    """Make jemalloc Arrow's memory pool for this process, once, before the first read.

    pyarrow's wheels default to mimalloc, which on this workload (reading and converting
    million-row tables, freed within a study) returns and re-faults pages so often that a 1M
    patient answer spent seconds in the kernel; jemalloc keeps them (benchmarks/node_answer.py
    measures both: ``--pools mimalloc,jemalloc``). An operator's ``ARROW_DEFAULT_MEMORY_POOL``
    is left alone, and so is a pyarrow without jemalloc.
    """
    global _POOL_CHOSEN
    if _POOL_CHOSEN:
        return
    _POOL_CHOSEN = True
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, pa.ArrowException):  # a build without jemalloc
        logger.debug("Arrow's jemalloc pool is unavailable; keeping %s",
                     pa.default_memory_pool().backend_name)


def open_store(store_dir: Path | str) -> Store:
    """Open the current snapshot of the store at ``store_dir``.

    Raises
    ------
    StoreError
        If there is no store, nothing was ingested yet, or the snapshot is damaged.
    """
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        raise StoreError(f"no store at {store_dir}: run 'heron node ingest' first")
    link = store_dir / CURRENT
    if not link.is_symlink():
        raise StoreError(f"store {store_dir} holds no ingested data yet: "
                         "run 'heron node ingest' first")
    snapshot = link.resolve()
    try:
        manifest = json.loads((snapshot / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"store {store_dir}: current snapshot is missing or incomplete") \
            from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"store {store_dir}: unreadable manifest ({type(exc).__name__})") \
            from None
    return Store(store_dir, snapshot, manifest)

"""Ingest a site delivered in parts, holding one part in memory at a time.

A site of millions of patients does not fit validation in memory at once (pandas holds every
table's rows several times over). Its export may then come as several site folders, each
holding *whole patients*: every row of a patient (its patients row, its infusions and
everything that references them) in the same part. Each part is read, validated and
pseudonymised alone (:func:`node.ingestion.ingest.accepted`), appended to the snapshot's
Parquet files as row groups, and dropped; the facts of each part are kept (a few columns)
and written at the end, sorted by infusion_id, with the ledger digests of every infusion.

Rules that span parts are checked on the pseudonymised ids: an infusion id in two parts, or a
patient with infusions in two parts, refuses the whole ingestion (the previous snapshot stays
current), since the parts would then not hold whole patients. The snapshot is written,
fsynced and made current exactly as by :func:`node.ingestion.store.write_snapshot`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from node.errors import IngestError
from node.ingestion.ingest import IngestReport, Progress, TableCounts, accepted, snapshot_manifest
from node.ingestion.schema import TABLE_NAMES, get_table
from node.ingestion.store import (
    QUARANTINE,
    WARNING_COLUMNS,
    WARNINGS,
    _conform,
    _digests_file,
    quarantine_dtypes,
    write_labs,
    write_snapshot_with,
)

__all__ = ["ingest_parts"]

logger = logging.getLogger(__name__)


class _Appender:
    """Parquet files of the snapshot, each written one part (row group) at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writers: dict[str, pq.ParquetWriter] = {}

    def append(self, filename: str, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = self._writers.get(filename)
        if writer is None:
            writer = self._writers[filename] = pq.ParquetWriter(self.folder / filename,
                                                                table.schema)
        writer.write_table(table.cast(writer.schema))

    def close(self) -> None:
        for filename, writer in self._writers.items():
            writer.close()
            fd = os.open(self.folder / filename, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _add(total: dict[str, TableCounts], part: IngestReport) -> None:
    for name, c in part.tables.items():
        old = total.get(name)
        total[name] = c if old is None or old.file is None else TableCounts(
            name, old.file if c.file is None else f"{old.file}+", old.input + c.input,
            old.stored + c.stored, old.quarantined + c.quarantined, old.warnings + c.warnings)


def _unique_ids(facts: pa.Table) -> None:
    """Refuse parts that split a patient or repeat an infusion id."""
    n = facts.num_rows
    if pc.count_distinct(facts["infusion_id"]).as_py() != n:
        raise IngestError("an infusion_id appears in two parts: each part must hold whole "
                          "patients")
    first = facts.filter(facts["first"])
    if pc.count_distinct(first["patient_id"]).as_py() != first.num_rows or \
            pc.count_distinct(facts["patient_id"]).as_py() != first.num_rows:
        raise IngestError("a patient appears in two parts: each part must hold whole patients")


def _concat_labs(parts: Sequence[pa.Table], sizes: Sequence[int]) -> pa.Table:
    """The parts' baseline lab values one under the other (a measurement a part lacks is
    missing, NaN, for its rows)."""
    names = sorted({n for part in parts for n in part.column_names})
    out = {}
    for name in names:
        chunks = [part.column(name).combine_chunks() if name in part.column_names
                  else pa.array(np.full(size, np.nan), pa.float64())
                  for part, size in zip(parts, sizes, strict=True)]
        out[name] = pa.chunked_array(chunks, pa.float64())
    return pa.table(out) if out else pa.table({})


def ingest_parts(sources: Sequence[Path | str], store_dir: Path | str, secret: bytes,
                 today: date | None = None, progress: Progress | None = None,
                 ledger_salt: bytes | None = None) -> IngestReport:
    """Validate site folders that each hold whole patients and store them as one snapshot.

    The counts of the report are summed over the parts (input = stored + quarantined per
    table); its issues name each part's file and row.

    Raises
    ------
    IngestError
        For a structural problem of any part, or a patient or infusion in two parts.
    """
    from node.cohorts.covariates import baseline_labs
    from node.cohorts.facts import FACTS_FILE, LABS_FILE, build_facts, write_facts
    from node.governance.digests import salt_fingerprint, snapshot_digests
    today = today or date.today()
    counts: dict[str, TableCounts] = {}
    issues: list[pd.DataFrame] = []
    ignored: list[str] = []
    manifest: dict[str, object] = {}

    def fill(folder: Path) -> list[str]:
        files = _Appender(folder)
        facts, labs, present, n_warnings = [], [], set(), 0
        for k, source in enumerate(sources):
            got = accepted(source, secret, today, progress)
            stored = {name: _conform(frame, get_table(name).dtypes())
                      for name, frame in got.tables.items()}
            for name, frame in stored.items():
                files.append(f"{name}.parquet", frame)
                present.add(name)
            files.append(QUARANTINE, _conform(got.quarantine, quarantine_dtypes()))
            files.append(WARNINGS, _conform(got.warnings, WARNING_COLUMNS))
            facts.append(build_facts(stored))
            labs.append(baseline_labs(stored, facts[-1].column("infusion_id")))
            n_warnings += len(got.warnings)
            _add(counts, got.report)
            issues.append(got.report.issue_frame)
            ignored.extend(got.report.ignored_files)
            logger.info("part %d of %d stored", k + 1, len(sources))
            del got, stored
        files.close()
        table = pa.concat_tables(facts)
        sizes = [f.num_rows for f in facts]
        del facts
        _unique_ids(table)
        order = pc.sort_indices(table, [("infusion_id", "ascending")])
        table = table.take(order)
        write_facts(table, folder / FACTS_FILE)
        lab_values = _concat_labs(labs, sizes)
        write_labs(lab_values.take(order) if lab_values.num_columns else lab_values,
                   folder / LABS_FILE)
        del labs, lab_values
        if ledger_salt is not None:
            snapshot_digests(table.column("patient_id").to_pylist(),
                             table.column("infusion_id").to_pylist(), ledger_salt).save(
                folder / _digests_file(salt_fingerprint(ledger_salt)))
        report = IngestReport(today.isoformat(), counts, pd.concat(issues, ignore_index=True),
                              tuple(ignored))
        manifest.update(snapshot_manifest(report, n_warnings), parts=len(sources))
        return [n for n in TABLE_NAMES if n in present]

    if not sources:
        raise IngestError("no part to ingest")
    path = write_snapshot_with(store_dir, fill, manifest)
    return IngestReport(today.isoformat(), counts, pd.concat(issues, ignore_index=True),
                        tuple(ignored), path.name, stored=True)

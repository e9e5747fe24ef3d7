"""Read a site data folder, validate it and load it into the node's store.

The folder holds one file per table, ``<table>.csv`` (UTF-8, header row, ISO dates) or
``<table>.parquet``.  Structural problems (missing required table, unreadable file, unknown or
missing column) raise :class:`~node.errors.IngestError`; row problems quarantine the row and are
listed in the :class:`IngestReport`.  Messages name file, row, column and rule, never values.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from node.errors import IngestError
from node.ingestion import rules as R
from node.ingestion.pseudonym import pseudonymise_series
from node.ingestion.rules import Issue
from node.ingestion.schema import REQUIRED_TABLES, TABLE_NAMES, get_table
from node.ingestion.store import quarantine_dtypes, write_snapshot
from node.ingestion.validate import TEXT, RawTable, TableResult, to_text, validate_tables
from protocol.version import __version__

__all__ = ["Accepted", "IngestReport", "Issue", "TableCounts", "accepted", "ingest",
           "read_folder", "snapshot_manifest", "validate_folder"]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TableCounts:
    """Row counts of one table; ``file`` is None when an optional table is absent."""

    table: str
    file: str | None
    input: int
    stored: int
    quarantined: int
    warnings: int = 0


def _counts(tables: Mapping[str, TableCounts]) -> dict[str, dict[str, Any]]:
    return {n: {"file": c.file, "input": c.input, "stored": c.stored,
                "quarantined": c.quarantined, "warnings": c.warnings} for n, c in tables.items()}


ISSUE_COLUMNS = ("table", "file", "row", "column", "rule", "severity", "message")


@dataclass(frozen=True)
class IngestReport:
    """Outcome of validating (and possibly storing) a site folder; holds no patient data.

    ``issues`` lists every broken rule per row, ordered by table, row and rule; it is built
    on first access from ``issue_frame`` (the same data as a DataFrame).
    """

    today: str
    tables: Mapping[str, TableCounts]
    issue_frame: pd.DataFrame = field(repr=False, compare=False)
    ignored_files: tuple[str, ...] = ()
    snapshot: str | None = None
    stored: bool = False

    @cached_property
    def issues(self) -> tuple[Issue, ...]:
        """Every issue as an :class:`Issue`."""
        return tuple(Issue(*rec) for rec in self._records())

    def _records(self, limit: int | None = None) -> list[tuple]:
        frame = self.issue_frame if limit is None else self.issue_frame.head(limit)
        rows = [None if pd.isna(r) else int(r) for r in frame["row"].tolist()]
        cols = [rows if c == "row" else frame[c].tolist() for c in ISSUE_COLUMNS]
        return list(zip(*cols, strict=True))

    @property
    def errors(self) -> int:
        """Number of error issues (one row may have several)."""
        return int((self.issue_frame["severity"] == R.ERROR).sum())

    @property
    def warnings(self) -> int:
        """Number of warning issues."""
        return int((self.issue_frame["severity"] == R.WARNING).sum())

    @property
    def quarantined(self) -> int:
        """Rows quarantined over all tables."""
        return sum(c.quarantined for c in self.tables.values())

    @property
    def ok(self) -> bool:
        """True when no row was quarantined (warnings allowed)."""
        return self.quarantined == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "ok": self.ok, "stored": self.stored, "snapshot": self.snapshot,
            "today": self.today, "errors": self.errors, "warnings": self.warnings,
            "quarantined": self.quarantined, "ignored_files": list(self.ignored_files),
            "tables": _counts(self.tables),
            "issues": [dict(zip(ISSUE_COLUMNS, r, strict=True)) for r in self._records()],
        }

    def summary(self, max_issues: int = 20) -> str:
        """Human-readable text: counts per table, then the first ``max_issues`` issues."""
        lines = []
        for c in self.tables.values():
            lines.append(f"{c.table}: absent" if c.file is None else
                         f"{c.file}: {c.input} rows, {c.stored} stored, "
                         f"{c.quarantined} quarantined, {c.warnings} warnings")
        if self.ignored_files:
            lines.append("ignored (not a data-model table): " + ", ".join(self.ignored_files))
        verb = "stored" if self.stored else "validated (nothing written)"
        lines.append(f"{verb}: {self.quarantined} rows quarantined, {self.errors} errors, "
                     f"{self.warnings} warnings" + (f", snapshot {self.snapshot}"
                                                    if self.snapshot else ""))
        for rec in self._records(max_issues):
            lines.append(f"  {rec[5]}: {rec[6]}")
        if len(self.issue_frame) > max_issues:
            lines.append(f"  ... and {len(self.issue_frame) - max_issues} more issues")
        return "\n".join(lines)


def _say(progress: Progress | None, message: str) -> None:
    logger.info(message)
    if progress is not None:
        progress(message)


def discover(source: Path) -> tuple[dict[str, Path], tuple[str, ...]]:
    """Map table name -> file in ``source``; also return the names of ignored entries."""
    if not source.is_dir():
        raise IngestError(f"{source} is not a folder")
    found: dict[str, Path] = {}
    ignored = []
    for entry in sorted(source.iterdir()):
        stem, suffix = entry.stem.lower(), entry.suffix.lower()
        if entry.is_file() and suffix in (".csv", ".parquet") and stem in TABLE_NAMES:
            if stem in found:
                raise IngestError(f"{source}: both {found[stem].name} and {entry.name} hold "
                                  f"table {stem}; keep one")
            found[stem] = entry
        else:
            ignored.append(entry.name)
            logger.warning("%s: not a data-model table file; ignored", entry.name)
    missing = [t for t in REQUIRED_TABLES if t not in found]
    if missing:
        raise IngestError(f"{source}: required table file missing: "
                          + ", ".join(f"{t}.csv or {t}.parquet" for t in missing))
    return found, tuple(ignored)


def _csv_problem(path: Path, n_fields: int) -> str:
    """Locate a CSV structure error (row number only, never content)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for row, record in enumerate(csv.reader(fh)):
                if row and record and len(record) != n_fields:
                    return f"data row {row} has {len(record)} fields, the header {n_fields}"
    except UnicodeDecodeError:
        return "file is not valid UTF-8"
    except csv.Error:
        return "malformed quoting"
    return "malformed CSV"


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), None)
    except (UnicodeDecodeError, csv.Error):
        raise IngestError(f"{path.name}: header is not valid UTF-8 CSV") from None
    if not header:
        raise IngestError(f"{path.name}: file is empty (no header row)")
    _check_header(path.name, header)
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header}, strings_can_be_null=False,
                quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError):  # arrow's message may quote row content: not shown
        raise IngestError(f"{path.name}: {_csv_problem(path, len(header))}") from None
    frame = table.combine_chunks().to_pandas(types_mapper={pa.string(): TEXT}.get)
    frame.columns = [h.strip().lower() for h in header]
    return frame


def _arrow_to_pandas(path: Path, table: pa.Table) -> pd.DataFrame:
    cols = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        typ = col.type
        if pa.types.is_dictionary(typ):
            col, typ = col.cast(typ.value_type), typ.value_type
        if pa.types.is_null(typ):
            cols[name] = pd.Series([None] * len(col), dtype=TEXT)
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_date(typ) \
                or pa.types.is_decimal(typ):
            cols[name] = col.cast(pa.string()).to_pandas(types_mapper={pa.string(): TEXT}.get)
        elif pa.types.is_integer(typ):
            cols[name] = col.to_pandas(types_mapper=lambda _: pd.Int64Dtype())
        elif pa.types.is_boolean(typ):
            cols[name] = col.to_pandas(types_mapper=lambda _: pd.BooleanDtype())
        elif pa.types.is_floating(typ):
            cols[name] = col.to_pandas().astype("float64")
        elif pa.types.is_timestamp(typ):
            s = col.to_pandas()
            cols[name] = s.dt.tz_localize(None) if s.dt.tz is not None else s
        else:
            raise IngestError(f"{path.name}: column {name} has unsupported type {typ}")
    return pd.DataFrame(cols)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{path.name}: not a readable Parquet file "
                          f"({type(exc).__name__})") from None
    index_cols = [c for c in table.column_names if re.fullmatch(r"__index_level_\d+__", c)]
    table = table.drop_columns(index_cols).combine_chunks()  # pandas index: not data
    _check_header(path.name, table.column_names)
    frame = _arrow_to_pandas(path, table)
    frame.columns = [h.strip().lower() for h in table.column_names]
    return frame


def _check_header(file: str, header: list[str]) -> None:
    table = get_table(Path(file).stem.lower())
    names = [h.strip().lower() for h in header]
    for name in names:
        if name not in table.column_names:
            raise IngestError(f"{file}: unknown column {name!r} (table {table.name} has: "
                              f"{', '.join(table.column_names)})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise IngestError(f"{file}: column {dupes[0]!r} appears more than once")
    missing = [c for c in table.required_columns if c not in names]
    if missing:
        raise IngestError(f"{file}: required column {missing[0]!r} missing from the header")


def read_folder(source: Path | str, progress: Progress | None = None,
                ) -> tuple[dict[str, RawTable], tuple[str, ...]]:
    """Read every table file of a site folder (values unparsed); return tables, ignored."""
    files, ignored = discover(Path(source))
    raw = {}
    for name, path in files.items():
        _say(progress, f"reading {path.name}")
        frame = _read_csv(path) if path.suffix.lower() == ".csv" else _read_parquet(path)
        raw[name] = RawTable(name, path.name, frame)
    return raw, ignored


def findings_frame(res: TableResult, severity: str | None = None) -> pd.DataFrame:
    """All findings of one table, one record per (row, rule, column), sorted by row and rule.

    Columns: pos (0-based), order (rule priority) and :data:`ISSUE_COLUMNS`.
    """
    parts = [pd.DataFrame({"pos": f.positions, "order": R.RULE_ORDER[f.rule],
                           "column": f.column, "rule": f.rule, "detail": f.detail})
             for f in res.findings.items if severity in (None, f.severity)]
    if not parts:
        empty = pd.Series([], dtype=object)
        parts = [pd.DataFrame({"pos": np.array([], np.int64), "order": np.array([], np.int64),
                               "column": empty, "rule": empty, "detail": empty})]
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.sort_values(["pos", "order"], kind="stable").reset_index(drop=True)
    row = frame["pos"] + 1
    return pd.DataFrame({
        "pos": frame["pos"], "order": frame["order"], "table": res.name, "file": res.file,
        "row": row.astype("Int64"), "column": frame["column"], "rule": frame["rule"],
        "severity": frame["rule"].map({r: sev for r, (sev, _) in R.RULES.items()}),
        "message": (res.file + " row " + row.astype(str) + ", column " + frame["column"]
                    + ": " + frame["rule"] + ": " + frame["detail"])})


def _joined_rules(errors: pd.DataFrame) -> pd.Series:
    """``column:rule;column:rule...`` per quarantined row (indexed by pos), vectorised."""
    tag = errors["column"] + ":" + errors["rule"]
    level = errors.groupby("pos").cumcount().to_numpy()
    out = pd.Series(tag[level == 0].to_numpy(), index=errors["pos"][level == 0].to_numpy())
    for k in range(1, int(level.max(initial=0)) + 1):
        more = pd.Series(tag[level == k].to_numpy(), index=errors["pos"][level == k].to_numpy())
        out[more.index] = out[more.index] + ";" + more
    return out


def quarantine_frame(res: TableResult) -> pd.DataFrame:
    """One record per quarantined row: primary rule and column, all rules, raw fields."""
    errors = findings_frame(res, R.ERROR)
    primary = errors.drop_duplicates("pos").reset_index(drop=True)
    out = primary[["table", "file", "row", "column", "rule", "message"]].copy()
    out["rules"] = _joined_rules(errors).reindex(primary["pos"]).to_numpy()
    raw = res.raw.iloc[primary["pos"].to_numpy()]
    for col in raw.columns:
        out[col] = to_text(raw[col]).astype("string").to_numpy()
    return out


def warnings_frame(res: TableResult) -> pd.DataFrame:
    """One record per warning."""
    found = findings_frame(res, R.WARNING)
    out = found[["table", "file", "row", "column", "rule", "message"]].copy()
    if "infusion_id" in res.typed:
        out["infusion_id"] = res.typed["infusion_id"].iloc[found["pos"].to_numpy()].to_numpy()
    return out


def _report(results: Mapping[str, TableResult], today: date,
            ignored: tuple[str, ...]) -> IngestReport:
    counts = {}
    for name in TABLE_NAMES:
        res = results.get(name)
        if res is None:
            counts[name] = TableCounts(name, None, 0, 0, 0)
            continue
        n_warn = sum(f.positions.size for f in res.findings.items if f.severity == R.WARNING)
        counts[name] = TableCounts(name, res.file, res.n_input, res.n_stored,
                                   res.n_quarantined, n_warn)
    frames = [findings_frame(res) for res in results.values() if res.findings.items]
    issues = (pd.concat(frames, ignore_index=True) if frames  # tables in dependency order
              else findings_frame(next(iter(results.values()))))
    return IngestReport(today.isoformat(), counts, issues[list(ISSUE_COLUMNS)], ignored)


def validate_folder(source: Path | str, today: date | None = None,
                    progress: Progress | None = None) -> IngestReport:
    """Validate a site folder without writing anything."""
    today = today or date.today()
    raw, ignored = read_folder(source, progress)
    _say(progress, "validating")
    return _report(validate_tables(raw, today), today, ignored)


def accepted(source: Path | str, secret: bytes, today: date,
             progress: Progress | None = None) -> Accepted:
    """Read, validate and pseudonymise a site folder: what :func:`ingest` stores.

    Raw patient ids are pseudonymised with ``secret`` (tables and quarantine alike).
    """
    raw, ignored = read_folder(source, progress)
    _say(progress, "validating")
    results = validate_tables(raw, today)
    _say(progress, "pseudonymising patient ids")
    tables = {name: res.stored() for name, res in results.items()}
    raw_ids = tables["patients"]["patient_id"]
    hashed = pseudonymise_series(raw_ids, secret)
    tables["patients"]["patient_id"] = hashed
    infusion_ids = tables["infusions"]["patient_id"]  # all among the stored patients
    tables["infusions"]["patient_id"] = R.take(hashed, R.positions_in(infusion_ids, raw_ids))
    parts = [quarantine_frame(r) for r in results.values() if r.n_quarantined]
    quarantine = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    quarantine = quarantine.astype({c: t for c, t in quarantine_dtypes().items()
                                    if c in quarantine})
    if "patient_id" in quarantine:
        quarantine["patient_id"] = pseudonymise_series(quarantine["patient_id"], secret)
    parts = [warnings_frame(r) for r in results.values()
             if any(f.severity == R.WARNING for f in r.findings.items)]
    warnings = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    for name, res in results.items():
        n_q = int(np.sum(quarantine["table"].to_numpy() == name)) if len(quarantine) else 0
        if res.n_input != len(tables[name]) + n_q:
            raise AssertionError(f"{res.file}: input rows != stored + quarantined")
    return Accepted(tables, quarantine, warnings, _report(results, today, ignored))


@dataclass(frozen=True)
class Accepted:
    """A validated, pseudonymised site folder (:func:`accepted`)."""

    tables: dict[str, pd.DataFrame]
    quarantine: pd.DataFrame
    warnings: pd.DataFrame
    report: IngestReport


def snapshot_manifest(report: IngestReport, warnings: int) -> dict[str, Any]:
    """The manifest of a snapshot stored from ``report``."""
    return {
        "format": 1,
        "ingested_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software_version": __version__,
        "today": report.today,
        "tables": _counts(report.tables),
        "quarantined": report.quarantined,
        "warnings": warnings,
        "ignored_files": list(report.ignored_files),
    }


def ingest(source: Path | str, store_dir: Path | str, secret: bytes,
           today: date | None = None, progress: Progress | None = None,
           ledger_salt: bytes | None = None) -> IngestReport:
    """Validate a site folder and replace the store's data with its accepted rows.

    Raw patient ids are pseudonymised with ``secret`` before anything is written (tables and
    quarantine alike).  The new snapshot becomes current atomically; on any failure the
    previous snapshot stays current. The snapshot holds its derived facts
    (:mod:`node.cohorts.facts`) and, given the node's ``ledger_salt``, the ledger digests of
    every infusion (otherwise the first study computes them). A site too large to validate in
    one piece is ingested in parts (:func:`node.ingestion.parts.ingest_parts`).
    """
    today = today or date.today()
    got = accepted(source, secret, today, progress)
    report = got.report
    _say(progress, "writing snapshot")
    path = write_snapshot(store_dir, got.tables, got.quarantine,
                          snapshot_manifest(report, len(got.warnings)), got.warnings,
                          ledger_salt=ledger_salt)
    _say(progress, f"done: snapshot {path.name}, {report.quarantined} rows quarantined, "
                   f"{report.warnings} warnings")
    return IngestReport(report.today, report.tables, report.issue_frame, report.ignored_files,
                        path.name, stored=True)

"""Type parsing and the validation pipeline over all tables of a site folder.

:func:`validate_tables` takes the raw frames read from a folder and returns, per table, the
parsed values, which rows are accepted and which are quarantined, and the list of issues.
Parsing is vectorised per column; the rules themselves live in :mod:`node.ingestion.rules`.

Missing values are empty strings (or nulls in Parquet); whitespace around a value is ignored.
Enumerations match case-insensitively and are stored canonically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from node.ingestion import rules as R
from node.ingestion.schema import TABLE_NAMES, Column, ColumnType, Table, get_table

logger = logging.getLogger(__name__)

TEXT = R.TEXT
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")
_NON_FINITE = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")


@dataclass(frozen=True)
class RawTable:
    """A table as read from its file: column names normalised, values not yet parsed."""

    name: str
    file: str
    frame: pd.DataFrame


def to_text(series: pd.Series) -> pd.Series:
    """Text form of a raw column: stripped strings, missing as NA.

    Typed (Parquet) columns are rendered the way a CSV would spell them: integral floats
    without a decimal part, booleans as true/false, midnight timestamps as ISO dates.
    """
    s = series
    text: pd.Series
    if pd.api.types.is_bool_dtype(s):
        text = s.astype("boolean").map({True: "true", False: "false"}, na_action="ignore")
    elif pd.api.types.is_datetime64_any_dtype(s):
        midnight = bool((s.dropna() == s.dropna().dt.normalize()).all())
        text = s.dt.strftime("%Y-%m-%d" if midnight else "%Y-%m-%dT%H:%M:%S")
    elif pd.api.types.is_float_dtype(s):
        finite = s.dropna()
        integral = bool(np.isfinite(finite).all() and (finite == np.floor(finite)).all())
        text = s.astype("Int64") if integral and finite.abs().max(skipna=True) < 2**53 else s
    elif pd.api.types.is_string_dtype(s) and not pd.api.types.is_object_dtype(s):
        text = s
    elif pd.api.types.is_object_dtype(s):
        text = s.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
    else:
        text = s
    arr = pc.utf8_trim_whitespace(R._arrow(text))
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)
    return arr.to_pandas(types_mapper=lambda _: TEXT).set_axis(series.index)


def _flag(f: R.Findings, rule: str, col: Column, mask: pd.Series | np.ndarray,
          detail: str | None = None) -> np.ndarray:
    arr = R._b(mask)
    f.add(rule, col.name, arr, detail)
    return arr


def _cast(text: pd.Series, typ: pa.DataType) -> pa.Array | None:
    """Arrow's strict cast of a whole text column, or None if any value fails to parse."""
    try:
        return pc.cast(R._arrow(text), typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # Arrow's message quotes the offending value: never surfaced


def _choose(text: pd.Series, words: tuple[str, ...]) -> np.ndarray:
    """Index of each value in ``words`` ignoring case (-1 if none or missing)."""
    return R.positions_in(text.str.lower(), pd.Series([w.lower() for w in words], dtype=TEXT))


def _numbers(text: pd.Series, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float values, unparsed mask) of a text column; nan/inf words parse as non-finite."""
    arr = _cast(text, pa.float64())
    if arr is not None:
        num = arr.to_numpy(zero_copy_only=False)
    else:
        num = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    unparsed = ~missing & np.isnan(num)
    if unparsed.any():
        words = R._b(text.str.lower().isin(_NON_FINITE))
        num = np.where(unparsed & words, np.inf, num)  # non-finite, not unparseable
        unparsed &= ~words
    return num, unparsed


def _parse_date(raw: pd.Series, text: pd.Series | None) -> tuple[pd.Series, np.ndarray]:
    """(datetime64[ns] values, bad mask); text must be strict ISO YYYY-MM-DD."""
    if text is None:
        try:
            parsed = raw.astype("datetime64[ns]")
            return parsed, R._b(parsed.notna() & (parsed != parsed.dt.normalize()))
        except (OverflowError, ValueError):  # out of the datetime64[ns] range
            text = to_text(raw)
    days = _cast(text, pa.date32())
    values: pd.Series | None = None
    if days is not None:
        try:
            stamps = pc.cast(days, pa.timestamp("ns"))
            values = pd.Series(stamps.to_numpy(zero_copy_only=False), dtype="datetime64[ns]")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = None
    if values is None:
        values = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    return values, R._b(text.notna()) & R._b(values.isna())


def _outside(values: pd.Series, low: float, high: float) -> pd.Series:
    """``values < low`` or ``values > high``, elementwise."""
    return (values < low) | (values > high)


def parse_column(raw: pd.Series, col: Column, today: date, f: R.Findings) -> pd.Series:
    """Parse one raw column into its stored dtype, recording type and static-range findings.

    Unparseable values become NA in the result and break ``bad_type``, ``unknown_enum`` or
    ``non_finite_value``; missing required values break ``missing_required``.  Each type has
    a fast whole-column Arrow path and a slower pandas path when some value fails.
    """
    t = col.type
    native = (
        (t is ColumnType.INT and pd.api.types.is_integer_dtype(raw))
        or (t is ColumnType.FLOAT and pd.api.types.is_numeric_dtype(raw)
            and not pd.api.types.is_bool_dtype(raw))
        or (t is ColumnType.BOOL and pd.api.types.is_bool_dtype(raw))
        or (t is ColumnType.DATE and pd.api.types.is_datetime64_any_dtype(raw))
    )
    text = None if native else to_text(raw)  # None exactly when native
    missing = R._b(raw.isna()) if text is None else R._b(text.isna())
    values: pd.Series
    if t is ColumnType.STRING:
        assert text is not None  # strings and enums are never native
        values = text
    elif t is ColumnType.ENUM:
        assert text is not None
        pos = _choose(text, col.enum)
        index = pa.array(pos, mask=pos < 0)
        values = pc.take(pa.array(col.enum, pa.large_string()), index).to_pandas(
            types_mapper=lambda _: TEXT)
        _flag(f, "unknown_enum", col, ~missing & (pos < 0),
              "value is not one of " + ", ".join(col.enum))
    elif t is ColumnType.INT:
        ints = None if text is None else _cast(text, pa.int64())
        if text is None:
            values = raw.astype("Int64")
        elif ints is not None:
            values = ints.to_pandas(types_mapper=lambda _: pd.Int64Dtype())
        else:
            num, unparsed = _numbers(text, missing)
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(num) & (num == np.floor(num)) & (np.abs(num) < 2**53)
            _flag(f, "bad_type", col, ~missing & ~ok)
            values = pd.Series(np.where(ok, num, np.nan)).astype("Int64")
    elif t is ColumnType.FLOAT:
        if text is None:  # native: a Parquet NaN is a missing value
            num = raw.to_numpy(dtype="float64", na_value=np.nan)
            missing, unparsed = np.isnan(num), np.zeros(len(raw), dtype=bool)
        else:
            num, unparsed = _numbers(text, missing)
        infinite = ~missing & ~unparsed & ~np.isfinite(num)
        _flag(f, "bad_type", col, unparsed)
        _flag(f, "non_finite_value", col, infinite)
        values = pd.Series(np.where(unparsed | infinite, np.nan, num), dtype="float64")
    elif t is ColumnType.DATE:
        values, bad = _parse_date(raw, text)
        _flag(f, "bad_type", col, bad)
        values = values.mask(bad)
        _flag(f, "date_in_future", col, values > pd.Timestamp(today))
    else:  # BOOL
        if text is None:
            values = raw.astype("boolean")
        else:
            pos = _choose(text, _TRUE + _FALSE)
            values = pd.Series(pd.array(pos < len(_TRUE), dtype="boolean")).mask(pos < 0)
            _flag(f, "bad_type", col, ~missing & (pos < 0))
    if col.required:
        _flag(f, "missing_required", col, missing)
    if col.min_value is not None or col.max_value is not None:
        low = col.min_value if col.min_value is not None else -np.inf
        high = col.max_value if col.max_value is not None else np.inf
        if col.range_rule == "birth_year_out_of_range":
            high = min(high, today.year)
        _flag(f, col.range_rule, col, _outside(values, low, high))
    if t in (ColumnType.STRING, ColumnType.ENUM):
        return values.astype(TEXT)
    return values.astype(col.dtype)


@dataclass
class TableResult:
    """Validation state of one table: raw rows, parsed values, findings, accepted rows."""

    schema: Table
    file: str
    raw: pd.DataFrame
    typed: pd.DataFrame
    findings: R.Findings
    accepted: np.ndarray

    @property
    def name(self) -> str:
        """Table name."""
        return self.schema.name

    @property
    def n_input(self) -> int:
        """Rows read from the file."""
        return len(self.raw)

    @property
    def n_stored(self) -> int:
        """Rows accepted."""
        return int(self.accepted.sum())

    @property
    def n_quarantined(self) -> int:
        """Rows quarantined."""
        return self.n_input - self.n_stored

    def accept(self) -> np.ndarray:
        """Freeze the accepted rows from the error findings so far; return the mask."""
        self.accepted = ~self.findings.error_mask()
        return self.accepted

    def stored(self) -> pd.DataFrame:
        """Accepted rows in stored dtypes (patient_id still raw), index 0..n-1.

        String columns stay Arrow-backed (``string[pyarrow]``) for speed; the store reads
        them back as ``string``.
        """
        out = self.typed if self.accepted.all() else self.typed.loc[self.accepted]
        out = out.reset_index(drop=True)
        return out.astype({c.name: c.dtype for c in self.schema.columns
                           if c.type not in (ColumnType.STRING, ColumnType.ENUM)}, copy=False)


def parse_table(raw: RawTable, today: date) -> TableResult:
    """Parse every column of a raw table (row-local rules only)."""
    schema = get_table(raw.name)
    frame = raw.frame.reset_index(drop=True)
    f = R.Findings(schema.name, len(frame))
    typed = {}
    for col in schema.columns:
        source = frame[col.name] if col.name in frame else pd.Series([None] * len(frame),
                                                                     dtype=TEXT)
        typed[col.name] = parse_column(source, col, today, f)
    result = TableResult(schema, raw.file, frame, pd.DataFrame(typed), f,
                         np.ones(len(frame), dtype=bool))
    if schema.primary_key:
        key = schema.primary_key
        f.add("duplicate_key", key, R.first_in_file_order_conflicts(result.typed[key]))
    return result


class Parent:
    """Accepted rows of a parent table, found by their key (unique once duplicates are out)."""

    def __init__(self, res: TableResult, key: str):
        self.res = res
        self.key = key
        self.rows = res.typed.loc[res.accepted].reset_index(drop=True)
        self.extra: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def locate(self, values: pd.Series) -> np.ndarray:
        """Position of each value among the accepted keys (-1 if none)."""
        return R.positions_in(values, self.rows[self.key])

    def column(self, name: str, pos: np.ndarray) -> pd.Series:
        """The parent's ``name`` for each position (NA where the position is -1)."""
        return R.take(self.rows[name], pos)

    def codes(self, name: str, pos: np.ndarray) -> np.ndarray:
        """An integer ``extra`` array of the parent for each position (-1 where none)."""
        values = self.extra[name]
        return np.where(pos >= 0, values[np.maximum(pos, 0)] if len(values) else -1, -1)

    def check_reference(self, child: TableResult, column: str) -> np.ndarray:
        """``unknown_reference`` on the child; return each child row's parent position."""
        values = child.typed[column]
        pos = self.locate(values)
        unknown = R._b(values.notna()) & (pos < 0)
        quarantined_parent = np.zeros(len(values), dtype=bool)
        if unknown.any():
            rest = self.res.typed[self.key][~self.res.accepted].dropna().drop_duplicates()
            hit = R.positions_in(values[unknown], rest.reset_index(drop=True)) >= 0
            quarantined_parent[np.flatnonzero(unknown)[hit]] = True
        R.check_reference(child.findings, column, unknown, quarantined_parent)
        return pos


def _infusions(inf: TableResult, patients: Parent) -> np.ndarray:
    """Infusion rules; return each infusion row's patient position."""
    pos = patients.check_reference(inf, "patient_id")
    birth = patients.column("birth_year", pos).astype("Int64")
    R.check_infusion_vs_patient(inf.findings, inf.typed["infusion_date"], birth)
    R.check_batch_reused(inf.findings, inf.typed)
    inf.accept()
    return pos


def _followup(fu: TableResult, infs: Parent, n_patients: int) -> np.ndarray:
    """Follow-up rules; return the accepted death date of each patient (NaT if none)."""
    pos = infs.check_reference(fu, "infusion_id")
    t, f = fu.typed, fu.findings
    infusion_date = infs.column("infusion_date", pos)
    patient = infs.codes("patient", pos)
    R.check_death_fields(f, t)
    R.check_not_before(f, t["contact_date"], infusion_date, "contact_date")
    R.check_not_before(f, t["death_date"], infusion_date, "death_date", "death_before_infusion")
    dead = R._b(t["vital_status"] == "dead")
    candidates = dead & ~f.error_mask() & (patient >= 0)
    R.check_conflicting_death_dates(f, patient, t["death_date"], candidates)
    deaths = candidates & ~f.error_mask()
    who, when = patient[deaths], t["death_date"].to_numpy()[deaths]
    first = ~pd.Series(who).duplicated().to_numpy()
    death = np.full(n_patients, np.datetime64("NaT", "ns"), dtype="datetime64[ns]")
    death[who[first]] = when[first]
    R.check_not_after_death(f, t["contact_date"], _death_of(patient, death), "contact_date",
                            extra=~dead)
    fu.accept()
    return death


def _death_of(patient: np.ndarray, death: np.ndarray) -> pd.Series:
    """Death date of each row's patient (NaT where unknown or alive)."""
    nat = np.datetime64("NaT", "ns")
    picked = death[np.maximum(patient, 0)] if len(death) else np.full(len(patient), nat)
    return pd.Series(np.where(patient >= 0, picked, nat), dtype="datetime64[ns]")


_DATED = {"clinical_events": "event_date", "adverse_events": "onset_date",
          "responses": "assessment_date"}


def _child(res: TableResult, infs: Parent, death: np.ndarray) -> None:
    """Rules of the optional per-infusion tables."""
    pos = infs.check_reference(res, "infusion_id")
    t, f = res.typed, res.findings
    dated = _DATED.get(res.name)
    infusion_date: pd.Series | None = None
    if dated is not None:
        infusion_date = infs.column("infusion_date", pos)
        died = _death_of(infs.codes("patient", pos), death)
        if res.name == "adverse_events":
            R.check_onset_resolution(f, t)
            R.check_grades(f, t, died.notna())
        R.check_not_before(f, t[dated], infusion_date, dated)
        R.check_not_after_death(f, t[dated], died, dated)
    if res.name == "responses":
        R.check_multiple_best(f, t)
    if res.name == "baseline_measurements":
        R.check_units(f, t)
    accepted = res.accept()
    if res.name == "adverse_events":
        assert infusion_date is not None  # adverse_events is dated
        R.warn_late_onset(f, t, infusion_date, accepted)


def validate_tables(raw: Mapping[str, RawTable], today: date) -> dict[str, TableResult]:
    """Run every rule of the data model; return the results of the present tables.

    Tables are processed in dependency order, so references and cross-table rules see only
    accepted parent rows and a quarantined parent quarantines its children.
    """
    results = {name: parse_table(raw[name], today) for name in TABLE_NAMES if name in raw}
    patients, inf, fu = results["patients"], results["infusions"], results["followup"]
    patients.accept()
    pats = Parent(patients, "patient_id")
    patient_of_row = _infusions(inf, pats)
    infs = Parent(inf, "infusion_id")
    infs.extra["patient"] = patient_of_row[inf.accepted]
    death = _followup(fu, infs, len(pats))
    R.warn_stale_contacts(fu.findings, fu.typed, fu.accepted, today)
    for name, res in results.items():
        if name not in ("patients", "infusions", "followup"):
            _child(res, infs, death)
    for res in results.values():
        assert res.n_input == res.n_stored + res.n_quarantined, res.name
        logger.info("%s: %d rows, %d accepted, %d quarantined", res.file, res.n_input,
                    res.n_stored, res.n_quarantined)
    return results

"""Per-snapshot facts: one row per stored infusion, derived once at ingestion.

A study's cohort and endpoints are functions of a few per-infusion facts: the infusion day,
whether it is the patient's first infusion, the filter and grouping columns, the latest
contact, the death day and the first day of each clinical event an endpoint uses. Ingestion
computes them once (:func:`build_facts`, with the same code the raw path runs, so they are
equal by construction) and stores them in the snapshot as ``facts.parquet``, sorted by
infusion_id; a study then costs reading a few of its columns, a boolean mask and a
``bincount`` (:func:`select_from_facts`, :func:`fact_rows`).

The facts hold for every study whose day is on or after the latest stored infusion (ingestion
quarantines infusions dated in the future); for an earlier day (:meth:`Facts.covers`) the raw
path runs, since the first infusion of a patient may then differ.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from node.cohorts import endpoints
from node.cohorts.cohort import (
    COHORT_COLUMNS,
    INFUSION_COLUMNS,
    PATIENT_COLUMNS,
    Tables,
    cohort_index,
    first_infusions,
    get_table,
    patient_columns,
)
from protocol.study import CENSOR_EVENTS, COHORT_LIST_KEYS, Cohort

__all__ = ["EVENT_COLUMNS", "FACTS_FILE", "LABS_FILE", "Facts", "build_facts", "fact_rows",
           "facts_of", "select_from_facts"]

logger = logging.getLogger(__name__)

FACTS_FILE = "facts.parquet"
FACTS_VERSION = "1"
LABS_FILE = "baseline_labs.parquet"
"""The snapshot's baseline lab values: a float64 column per measurement name, a row per facts
row (:func:`node.cohorts.covariates.baseline_labs`)."""
LABS_VERSION = "1"
EVENT_COLUMNS = {e: f"first_{e}" for e in ("relapse_progression", *CENSOR_EVENTS)}
"""Clinical event -> facts column of its first day (days since infusion)."""
_NUMBERS = ("t0", "last_contact", "death", *EVENT_COLUMNS.values())
_INTEGERS = ("age_at_infusion", "ecog", "prior_lines")
_CATEGORIES = ("sex", "route", "atmp_class", "origin", "product", "indication_group",
               "disease_status")
_IDS = ("infusion_id", "patient_id")
_STRINGS = (*_IDS, *_CATEGORIES)
_ARROW_STRING = pd.StringDtype("pyarrow")


def build_facts(tables: Tables) -> pa.Table:
    """The facts of every stored infusion (sorted by infusion_id), from the raw tables.

    Raises
    ------
    ValueError
        When an infusion id appears twice (ingestion never stores that).
    """
    inf = get_table(tables, "infusions", INFUSION_COLUMNS)
    inf = inf.sort_values("infusion_id", kind="stable").reset_index(drop=True)
    pat = get_table(tables, "patients", PATIENT_COLUMNS)
    first = np.zeros(len(inf), dtype=bool)
    first[first_infusions(inf).index.to_numpy()] = True
    df = pd.concat([inf, patient_columns(inf, pat)], axis=1)
    df["age_at_infusion"] = (df["infusion_date"].dt.year.astype("Int64")
                             - df["birth_year"].astype("Int64"))
    ids = cohort_index(df)
    base = endpoints.base_facts(tables, df, ids)
    cols: dict[str, pa.Array | np.ndarray] = {
        "t0": base.t0, "last_contact": base.last_contact, "death": base.death}
    for event, name in EVENT_COLUMNS.items():
        cols[name] = endpoints.first_clinical(tables, ids, base.t0, (event,))
    out = {c: pa.array(df[c].astype(_ARROW_STRING).array) for c in _STRINGS}
    out["infusion_date"] = pa.array(df["infusion_date"].to_numpy(dtype="datetime64[ns]"),
                                    pa.timestamp("ns"))
    out["first"] = pa.array(first)
    for c in _INTEGERS:
        out[c] = pa.array(df[c].astype("Int64").array, pa.int64())
    for c, v in cols.items():
        out[c] = pa.array(v, pa.float64())
    return pa.table(out).replace_schema_metadata({"heron_facts": FACTS_VERSION})


def write_facts(table: pa.Table, path: Path) -> None:
    """Write a facts table as Parquet (row groups of 1M rows) and fsync it."""
    pq.write_table(table, path, row_group_size=1 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LabsSource = Callable[[], Path | pa.Table]
"""Gives a snapshot's baseline lab values (:data:`LABS_FILE`, or the table in memory),
deriving them first for a snapshot written without them."""


class Facts:
    """Read access to one snapshot's facts: each column read once, on first use.

    ``labs``, when given, gives the snapshot's baseline lab values aligned with the facts rows
    (:meth:`baseline_labs`), asked for on first use only.
    """

    def __init__(self, source: Path | pa.Table, key: str,
                 labs: LabsSource | None = None) -> None:
        self._source = source
        self.key = key
        """Identifies the snapshot (its id)."""
        self._cols: dict[str, pa.ChunkedArray] = {}
        self._numbers: dict[str, np.ndarray] = {}
        self._max_day: float | None = None
        self._labs_source = labs
        self._labs: Path | pa.Table | None = None
        self._lab_values: dict[str, np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of the columns held."""
        return sum(c.nbytes for c in self._cols.values()) + \
            sum(a.nbytes for a in self._numbers.values()) + \
            sum(a.nbytes for a in self._lab_values.values())

    def baseline_labs(self, names: Sequence[str]) -> dict[str, np.ndarray] | None:
        """Per measurement name: its baseline value for every facts row (float64, NaN where
        missing; read-only), each read once; None for facts without lab values (the raw
        path then runs). A name this snapshot never measured is all missing."""
        if self._labs_source is None:
            return None
        missing = [n for n in dict.fromkeys(names) if n not in self._lab_values]
        if missing:
            if self._labs is None:
                self._labs = self._labs_source()
            source = self._labs
            if isinstance(source, pa.Table):
                found = [n for n in missing if n in source.schema.names]
                read = source.select(found)
            else:
                parquet = pq.ParquetFile(source)
                found = [n for n in missing if n in parquet.schema_arrow.names]
                read = parquet.read(columns=found)
            for name in missing:
                if name in found:
                    col = read.column(name)
                    out = np.asarray(pc.fill_null(col, np.nan).to_numpy(), dtype=np.float64)
                else:
                    out = np.full(len(self), np.nan)
                out.flags.writeable = False
                self._lab_values[name] = out
        return {n: self._lab_values[n] for n in names}

    def column(self, name: str) -> pa.ChunkedArray:
        """One facts column as Arrow (the low-cardinality strings dictionary-encoded)."""
        return self.columns((name,))[name]

    def columns(self, names: tuple[str, ...]) -> dict[str, pa.ChunkedArray]:
        """Facts columns as Arrow, those not held yet read in one pass."""
        missing = [n for n in names if n not in self._cols]
        if missing:
            if isinstance(self._source, pa.Table):
                read = self._source.select(missing)
            else:
                # ParquetFile, not read_table: no pyarrow.dataset (imported on a first study)
                read = pq.ParquetFile(self._source, read_dictionary=[
                    n for n in missing if n in _CATEGORIES]).read(columns=missing)
            for name in missing:
                self._cols[name] = read.column(name)
        return {n: self._cols[n] for n in names}

    def numbers(self, name: str) -> np.ndarray:
        """A numeric column as floats (NaN where missing); read-only. Whole numbers below
        2**24 in magnitude (days, ages: every facts number) come as float32, which holds them
        exactly, in half the memory; anything else as float64."""
        if name not in self._numbers:
            col = pc.cast(self.column(name), pa.float64())
            out = pc.fill_null(col, np.nan).to_numpy() if col.null_count else col.to_numpy()
            out = np.asarray(out, dtype=np.float64)
            finite = out[~np.isnan(out)]
            if not finite.size or (np.abs(finite).max() < 2**24
                                   and bool(np.all(finite == np.floor(finite)))):
                out = out.astype(np.float32)
            out.flags.writeable = False
            self._numbers[name] = out
            self._cols.pop(name, None)  # the numbers are kept, not the Arrow column too
        return self._numbers[name]

    def flags(self, name: str) -> np.ndarray:
        """A boolean column (missing is False)."""
        return np.asarray(pc.fill_null(self.column(name), False).to_numpy(zero_copy_only=False),
                          dtype=bool)

    def __len__(self) -> int:
        return len(self.numbers("t0"))

    def covers(self, today: dt.date) -> bool:
        """Whether no stored infusion is dated after ``today`` (the facts then hold)."""
        if self._max_day is None:
            t0 = self.numbers("t0")
            self._max_day = float(np.nanmax(t0)) if np.any(~np.isnan(t0)) else -np.inf
        return self._max_day <= (today - dt.date(1970, 1, 1)).days

    def frame(self, keep: np.ndarray) -> pd.DataFrame:
        """The cohort frame (:data:`COHORT_COLUMNS`) of the rows where ``keep`` is true.

        Built one column at a time, each read one row group at a time and filtered as read,
        none kept by the facts for it: a 10M-patient snapshot never holds a column twice.
        The low-cardinality string columns are pandas categoricals of the same values (Arrow
        dictionaries; their categories the values present, sorted), a few bytes a row instead
        of a string each.
        """
        mask = None if keep.all() else pa.array(keep)
        out = {}
        for name in COHORT_COLUMNS:
            col = self._cols.get(name)
            if col is None and isinstance(self._source, Path):
                col = _read_kept(self._source, name, keep)  # a row group at a time, not kept
            else:
                if col is None:
                    col = self.columns((name,))[name]
                if mask is not None:
                    col = col.filter(mask)
            if name in _CATEGORIES:
                if not pa.types.is_dictionary(col.type):
                    col = col.dictionary_encode()
                out[name] = _sorted_categories(col.to_pandas())
            elif name in _STRINGS:
                out[name] = col.to_pandas(types_mapper={pa.string(): _ARROW_STRING,
                                                        pa.large_string(): _ARROW_STRING}.get)
            elif name in _INTEGERS:
                out[name] = col.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            else:
                out[name] = col.to_pandas().astype("datetime64[ns]")
            del col
        return pd.DataFrame(out)


def _read_kept(path: Path, name: str, keep: np.ndarray) -> pa.ChunkedArray:
    """Column ``name`` of the rows where ``keep`` is true, read and filtered one row group at
    a time (the whole column is never in memory)."""
    parquet = pq.ParquetFile(path, read_dictionary=[name] if name in _CATEGORIES else None)
    chunks, start = [], 0
    for group in range(parquet.num_row_groups):
        part = parquet.read_row_group(group, columns=[name]).column(name)
        stop = start + len(part)
        chunks.extend(part.filter(pa.array(keep[start:stop])).chunks)
        start = stop
    kind = chunks[0].type if chunks else parquet.schema_arrow.field(name).type
    return pa.chunked_array(chunks, type=kind)


def _sorted_categories(values: pd.Series) -> pd.Series:
    """A categorical of the values present only, in sorted order (as ``sorted(set(...))`` of
    the strings: dummies, groupings and orderings then see what they see of strings)."""
    codes = values.cat.codes.to_numpy()
    categories = np.asarray(values.cat.categories, dtype=object)
    present = np.bincount(codes[codes >= 0], minlength=len(categories)) > 0
    order = sorted(np.flatnonzero(present), key=lambda k: categories[k])
    remap = np.full(len(categories) + 1, -1, dtype=codes.dtype)  # the last entry: missing
    remap[order] = np.arange(len(order), dtype=codes.dtype)
    return pd.Series(pd.Categorical.from_codes(remap[codes],  # type: ignore[arg-type]
                                               categories[order].tolist()),
                     index=values.index)


_ROWS: dict[int, tuple[weakref.ref[pd.DataFrame], str, np.ndarray]] = {}


def _remember(frame: pd.DataFrame, facts: Facts, rows: np.ndarray) -> None:
    key = id(frame)
    _ROWS[key] = (weakref.ref(frame), facts.key, rows)
    weakref.finalize(frame, _ROWS.pop, key, None)


def facts_of(tables: Tables) -> Facts | None:
    """The facts of a source that has them (the node's store and its cache), else None."""
    get = getattr(tables, "facts", None)
    return get() if callable(get) else None  # type: ignore[no-any-return]


def fact_rows(tables: Tables, cohort_df: pd.DataFrame) -> tuple[Facts, np.ndarray] | None:
    """(facts, row of each cohort infusion) for a cohort selected from these facts, else None
    (the raw path then runs)."""
    held = _ROWS.get(id(cohort_df))
    if held is None or held[0]() is not cohort_df:
        return None
    facts = facts_of(tables)
    if facts is None or facts.key != held[1]:
        return None
    return facts, held[2]


def _is_in(facts: Facts, column: str, values: tuple[str, ...]) -> np.ndarray:
    found = pc.is_in(facts.column(column), value_set=pa.array(list(values), pa.string()))
    return np.asarray(pc.fill_null(found, False).to_numpy(zero_copy_only=False), dtype=bool)


def select_from_facts(facts: Facts, cohort: Cohort, today: dt.date) -> pd.DataFrame:
    """:func:`node.cohorts.cohort.select_cohort` over the facts (the caller checked
    :meth:`Facts.covers`): the same rows, columns and dtypes."""
    keep = facts.flags("first") if cohort.first_infusion_only else np.ones(len(facts), bool)
    for key in COHORT_LIST_KEYS:
        values = getattr(cohort, key)
        if values is not None:
            keep &= _is_in(facts, key, tuple(values))
    epoch = dt.date(1970, 1, 1)
    if cohort.infusion_date_from is not None:
        keep &= facts.numbers("t0") >= (cohort.infusion_date_from - epoch).days
    if cohort.infusion_date_to is not None:
        keep &= facts.numbers("t0") <= (cohort.infusion_date_to - epoch).days
    if cohort.age_min is not None:
        keep &= facts.numbers("age_at_infusion") >= cohort.age_min
    if cohort.age_max is not None:
        keep &= facts.numbers("age_at_infusion") <= cohort.age_max
    rows = np.flatnonzero(keep)
    rows.flags.writeable = False
    out = facts.frame(keep)
    _remember(out, facts, rows)
    logger.debug("cohort selected from the snapshot's facts: %d of %d infusions", len(out),
                 len(facts))
    return out

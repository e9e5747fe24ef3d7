"""Cohort selection: the infusions a study analyses (docs/study-format.md, ``cohort``).

Pure functions over the node's tables. ``tables`` is either a mapping of table name to
DataFrame or an object with a ``.table(name)`` method (the node's store); both give frames with
the docs/data-model.md columns in canonical spelling.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from protocol.study import COHORT_LIST_KEYS, Cohort
from protocol.vocabulary import GROUPING_COLUMNS

__all__ = ["COHORT_COLUMNS", "TableSource", "Tables", "cohort_index", "get_table", "select_cohort"]

log = logging.getLogger(__name__)

COHORT_COLUMNS = (
    "infusion_id",
    "patient_id",
    "infusion_date",
    "age_at_infusion",
    *GROUPING_COLUMNS,
    "prior_lines",
)

# Columns (and dtypes) of the tables this package reads, for absent optional tables.
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "patients": {"patient_id": "string", "sex": "string", "birth_year": "Int64"},
    "infusions": {
        "infusion_id": "string", "patient_id": "string", "infusion_date": "datetime64[ns]",
        "product": "string", "atmp_class": "string", "route": "string", "origin": "string",
        "batch_id": "string", "indication_icd10": "string", "indication_group": "string",
        "disease_status": "string", "prior_lines": "Int64", "ecog": "Int64",
        "manufacturing_site": "string",
    },
    "followup": {
        "infusion_id": "string", "contact_date": "datetime64[ns]", "vital_status": "string",
        "death_date": "datetime64[ns]", "cause_of_death": "string",
    },
    "clinical_events": {
        "infusion_id": "string", "event": "string", "event_date": "datetime64[ns]",
    },
    "adverse_events": {
        "infusion_id": "string", "term": "string", "meddra_pt": "string", "grading": "string",
        "max_grade": "Int64", "onset_date": "datetime64[ns]",
        "resolution_date": "datetime64[ns]", "serious": "boolean",
    },
}

INFUSION_COLUMNS = tuple(c for c in TABLE_COLUMNS["infusions"]
                         if c in ("infusion_id", "patient_id", "infusion_date", "prior_lines",
                                  *GROUPING_COLUMNS, *COHORT_LIST_KEYS))
"""The infusions columns :func:`select_cohort` reads (the store reads no other)."""
PATIENT_COLUMNS = ("patient_id", "sex", "birth_year")
"""The patients columns :func:`select_cohort` reads."""


class TableSource(Protocol):
    """Anything with ``.table(name) -> DataFrame``, such as the node's store."""

    def table(self, name: str) -> pd.DataFrame: ...


Tables = Mapping[str, pd.DataFrame] | TableSource
"""What the functions of :mod:`node.cohorts` and :mod:`node.releases` read: a mapping of table
name to DataFrame, or a :class:`TableSource`."""


def empty_table(name: str) -> pd.DataFrame:
    """An empty frame with the columns of table ``name``."""
    cols = TABLE_COLUMNS.get(name, {})
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})


def get_table(tables: Tables, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Table ``name`` from a mapping or a store; an absent table is an empty frame.

    ``columns`` says which columns the caller uses: a source whose ``reads_columns`` is true
    (the node's store) reads only those; others give the whole table.
    """
    if isinstance(tables, Mapping):
        frame = tables.get(name)
        return empty_table(name) if frame is None else frame
    if columns is not None and getattr(tables, "reads_columns", False):
        return tables.table(name, columns=columns)  # type: ignore[call-arg]
    return tables.table(name)


def first_infusions(inf: pd.DataFrame) -> pd.DataFrame:
    """Each patient's first infusion: earliest date, ties broken by the smallest infusion_id."""
    codes, _ = pd.factorize(inf["patient_id"])
    raw = inf["infusion_date"].to_numpy(dtype="datetime64[ns]")
    dates = np.where(np.isnat(raw), np.iinfo(np.int64).max, raw.view("int64"))
    is_first = dates == pd.Series(dates).groupby(codes).transform("min").to_numpy()
    tied = is_first & pd.Series(np.where(is_first, codes, -1)).duplicated(keep=False).to_numpy()
    if not tied.any():
        return inf.loc[is_first]
    ties = (inf.loc[tied].assign(_code=codes[tied])
            .sort_values(["_code", "infusion_id"], kind="stable")
            .drop_duplicates("_code").drop(columns="_code"))
    return pd.concat([inf.loc[is_first & ~tied], ties])


def _strings(col: pd.Series) -> pd.Series:
    """``col`` as strings; an Arrow-backed string column (the store's) stays so."""
    return col if isinstance(col.dtype, pd.StringDtype) else col.astype("string")


def patient_columns(inf: pd.DataFrame, pat: pd.DataFrame) -> pd.DataFrame:
    """sex and birth_year of each infusion's patient (missing when the patient is unknown)."""
    index = pd.Index(pat["patient_id"])
    if not index.is_unique:
        raise ValueError("patients table has duplicate patient_id values")
    pos = index.get_indexer(inf["patient_id"])
    return pd.DataFrame({
        "sex": _strings(pat["sex"]).array.take(pos, allow_fill=True),
        "birth_year": pat["birth_year"].astype("Int64").array.take(pos, allow_fill=True),
    }, index=inf.index)


def select_cohort(tables: Tables, cohort: Cohort,
                  today: dt.date | None = None) -> pd.DataFrame:
    """The infusions of ``cohort``: one row per selected infusion.

    With ``first_infusion_only`` (the default) each patient's first ATMP infusion (earliest
    infusion_date, ties by infusion_id) is taken *before* the other filters, as the index
    infusion of EBMT/CIBMTR analyses: a patient whose first infusion does not meet the filters
    is not in the cohort, even if a later infusion would. List filters mean "any of" and match
    canonical values exactly (case-sensitive); a missing value never matches a set filter.
    Date and age ranges are inclusive; age_at_infusion = infusion year - birth_year. Infusions
    dated after ``today`` (default: the current date) are not real infusions yet and are left
    out before anything else.

    A source with the snapshot's facts (the node's store, :mod:`node.cohorts.facts`) answers
    from them: the same rows, columns and values, from a mask over a few columns (the
    low-cardinality string columns as pandas categoricals).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COHORT_COLUMNS`, sorted by infusion_id, with a fresh RangeIndex.
    """
    today = today or dt.date.today()
    from node.cohorts.facts import facts_of, select_from_facts  # facts import this module
    facts = facts_of(tables)
    if facts is not None and facts.covers(today):
        return select_from_facts(facts, cohort, today)
    inf = get_table(tables, "infusions", INFUSION_COLUMNS)
    pat = get_table(tables, "patients", PATIENT_COLUMNS)
    inf = inf.loc[~(inf["infusion_date"] > pd.Timestamp(today)).fillna(False)]
    if cohort.first_infusion_only:
        inf = first_infusions(inf)
    df = pd.concat([inf, patient_columns(inf, pat)], axis=1)
    df["age_at_infusion"] = (df["infusion_date"].dt.year.astype("Int64")
                             - df["birth_year"].astype("Int64"))
    keep = pd.Series(True, index=df.index)
    for key in COHORT_LIST_KEYS:
        values = getattr(cohort, key)
        if values is not None:
            keep &= df[key].isin(list(values)).fillna(False).astype(bool)
    if cohort.infusion_date_from is not None:
        keep &= (df["infusion_date"] >= pd.Timestamp(cohort.infusion_date_from)).fillna(False)
    if cohort.infusion_date_to is not None:
        keep &= (df["infusion_date"] <= pd.Timestamp(cohort.infusion_date_to)).fillna(False)
    if cohort.age_min is not None:
        keep &= (df["age_at_infusion"] >= cohort.age_min).fillna(False).astype(bool)
    if cohort.age_max is not None:
        keep &= (df["age_at_infusion"] <= cohort.age_max).fillna(False).astype(bool)
    out = df.loc[keep, list(COHORT_COLUMNS)]
    out = out.sort_values("infusion_id", kind="stable").reset_index(drop=True)
    log.debug("cohort selected: %d of %d infusions", len(out), len(inf))
    return out


def cohort_index(cohort_df: pd.DataFrame) -> pd.Index:
    """The cohort's infusion ids as an index (the row order of every per-infusion result).

    Raises
    ------
    ValueError
        When an infusion id appears twice.
    """
    col = cohort_df["infusion_id"]
    # an Arrow-backed string column (the store's) stays so: no copy into Python strings
    ids = pd.Index(col if isinstance(col.dtype, pd.StringDtype) else col.astype("string"))
    if not ids.is_unique:
        raise ValueError("cohort_df has duplicate infusion_id values")
    return ids

"""The Cox design at a site: covariate values of the cohort's complete cases (``kind: cox``).

Covariates (in the study's order):

- numeric, used as is: ``age_at_infusion``, ``ecog``, ``prior_lines`` (cohort columns) and
  ``lab:<measurement>`` (baseline_measurements);
- categorical, coded as indicator columns ``"<covariate>=<level>"``: ``sex``, ``route``,
  ``origin``, ``disease_status``, ``atmp_class``, ``product``, ``indication_group``.

Rules:

- ``lab:<measurement>``: among the infusion's rows of that measurement (exact, case-sensitive
  name) with ``day <= 0`` and a finite value, the row whose day is closest to day 0 counts. When
  several rows share that day their values are averaged (arithmetic mean). No such row = missing.
- A categorical value that is missing or blank is missing; ``unknown``, ``U`` and the
  disease_status ``NA`` are real levels (docs/data-model.md).
- Complete cases only: a cohort row missing any covariate is dropped. Each dropped row is
  counted once, under the FIRST missing covariate in the study's order (reason
  ``"missing <covariate>"``), so the counts add up to the rows dropped. Every covariate has a
  reason key, zero included, so the keys do not depend on the data.
- Reference levels are chosen on the pooled levels (:func:`design_columns`): all levels but the
  first in sorted order get an indicator; a covariate with a single pooled level gets none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from node.cohorts.cohort import Tables, cohort_index, get_table
from node.cohorts.facts import fact_rows
from node.errors import StudyRefused
from node.ingestion.schema import BASELINE_MEASUREMENTS
from protocol.design import (
    CATEGORICAL_COVARIATES,
    LAB_PREFIX,
    NUMERIC_COVARIATES,
    check_covariates,
    is_categorical,
)
from protocol.design import design_columns as _design_columns
from protocol.errors import StudyFormatError

__all__ = ["CATEGORICAL_COVARIATES", "LAB_PREFIX", "NUMERIC_COVARIATES", "Design",
           "baseline_labs", "build_design", "design_columns", "is_categorical"]

log = logging.getLogger(__name__)

def _check_covariates(covariates: Sequence[str]) -> tuple[str, ...]:
    """The covariates as a tuple; StudyRefused for an unknown, empty or repeated name."""
    try:
        return check_covariates(covariates)
    except StudyFormatError as exc:
        raise StudyRefused(str(exc)) from None


def design_columns(covariates: Sequence[str],
                   pooled_levels: Mapping[str, Sequence[str]]) -> list[str]:
    """:func:`protocol.design.design_columns`, refusing unknown covariates as a node does."""
    try:
        return _design_columns(covariates, pooled_levels)
    except StudyFormatError as exc:
        raise StudyRefused(str(exc)) from None


@dataclass(frozen=True, eq=False)
class Design:
    """Covariate values of a site's complete cases.

    Attributes
    ----------
    covariates : tuple of str
        The study's covariates, in order.
    mask : numpy.ndarray of bool
        Over the cohort rows (in cohort order): True for a complete case.
    dropped : dict of str to int
        ``"missing <covariate>"`` -> rows dropped for it (first missing covariate wins).
    levels : dict of str to list of str
        Categorical covariate -> levels present among complete cases, sorted.
    """

    covariates: tuple[str, ...]
    mask: np.ndarray
    dropped: dict[str, int]
    levels: dict[str, list[str]]
    _numeric: dict[str, np.ndarray] = field(repr=False)
    _codes: dict[str, np.ndarray] = field(repr=False)

    @property
    def n(self) -> int:
        """Number of complete cases."""
        return int(self.mask.sum())

    def matrix(self, columns: Sequence[str]) -> np.ndarray:
        """The design matrix (float64, complete cases x ``columns``).

        A column is a numeric covariate's name or ``"<covariate>=<level>"`` for a categorical
        covariate of this design; a level absent at this site gives a column of zeros.
        """
        out = np.empty((self.n, len(columns)), dtype="float64")
        for j, col in enumerate(columns):
            if col in self._numeric:
                out[:, j] = self._numeric[col]
                continue
            cov, sep, level = col.partition("=")
            if not sep or cov not in self._codes:
                raise StudyRefused(f"design column {col!r} names no covariate of this analysis")
            levels = self.levels[cov]
            code = levels.index(level) if level in levels else -1
            out[:, j] = self._codes[cov] == code
        return out



def _numeric_values(col: pd.Series) -> np.ndarray:
    """float64 values with NaN for missing or non-finite entries."""
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    values[~np.isfinite(values)] = np.nan
    return values


def _categorical_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques) with code -1 for a missing or blank value. A categorical column (the
    facts' cohort frame) gives its own codes and categories, as strings."""
    codes: np.ndarray
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = np.asarray(col.cat.codes.to_numpy(), dtype=np.intp)
        uniques = np.array([str(c) for c in col.cat.categories], dtype=object)
    else:
        codes, levels = pd.factorize(col.astype("string"))
        uniques = np.asarray(levels.astype(object), dtype=object)
    blank = np.array([str(u).strip() == "" for u in uniques], dtype=bool)
    if blank.any():
        codes = np.where(blank[np.maximum(codes, 0)] & (codes >= 0), -1, codes)
    return codes, uniques


_LAB_COLUMNS = ("infusion_id", "measurement", "value", "day")


def _arrow_strings(values: pd.Series | pd.Index) -> pa.ChunkedArray:
    """``values`` as Arrow large strings (no copy for the store's Arrow-backed columns)."""
    arr = values.array
    if not isinstance(arr.dtype, pd.StringDtype) or arr.dtype.storage != "pyarrow":
        arr = pd.Series(values, copy=False).astype(pd.StringDtype("pyarrow")).array
    return pa.chunked_array(pa.array(arr)).cast(pa.large_string())


def _lab_rows(tables: Tables, ids: pa.Array, measurements: Sequence[str]
              ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per measurement: (row in ``ids``, day, value) of its baseline_measurements rows of
    these infusions with a finite value on a day <= 0. Only the needed columns are read and
    only the rows of these measurements (exact names) are matched to ``ids`` (Arrow
    ``is_in`` / ``index_in``). An absent table, or one lacking columns, has no rows."""
    bm = get_table(tables, "baseline_measurements", _LAB_COLUMNS)
    if any(c not in bm.columns for c in _LAB_COLUMNS):
        bm = BASELINE_MEASUREMENTS.empty_frame()
    names = pa.array(list(measurements), type=pa.large_string())
    code = np.asarray(pc.fill_null(pc.index_in(_arrow_strings(bm["measurement"]),
                                               value_set=names), -1).to_numpy(), dtype=np.intp)
    wanted = np.flatnonzero(code >= 0)
    code = code[wanted]
    rows = bm.iloc[wanted] if len(wanted) < len(bm) else bm
    day = _numeric_values(rows["day"])
    value = _numeric_values(rows["value"])
    pos = pc.index_in(_arrow_strings(rows["infusion_id"]), value_set=ids)
    pos_np = np.asarray(pc.fill_null(pos, -1).to_numpy(), dtype=np.intp)
    ok = (pos_np >= 0) & ~np.isnan(value) & (day <= 0)
    return {name: (pos_np[sel], day[sel], value[sel])
            for k, name in enumerate(measurements) for sel in [ok & (code == k)]}


def _id_values(ids: pd.Index | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Infusion ids as one Arrow large-string array (an ``index_in`` value set)."""
    if isinstance(ids, pd.Index):
        return _arrow_strings(ids).combine_chunks()
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    return ids.cast(pa.large_string())


def baseline_labs(tables: Tables, ids: pa.Array | pa.ChunkedArray) -> pa.Table:
    """The baseline value of every measurement for each infusion of ``ids`` (the rule of the
    module docstring): one float64 column per measurement name present (exact names), a row
    per id in order, NaN where missing. Built once per snapshot over the facts' infusions
    (:mod:`node.cohorts.facts`), so a design reads its columns instead of the raw table; the
    same code as the raw path, so equal values."""
    bm = get_table(tables, "baseline_measurements", ("measurement",))
    names: list[str] = []
    if "measurement" in bm.columns and len(bm):
        found = pc.unique(_arrow_strings(bm["measurement"])).drop_null()
        names = sorted(found.to_pylist())
    del bm
    values = _id_values(ids)
    rows = _lab_rows(tables, values, names) if names else {}
    out = {name: pa.array(_lab_values(*rows[name], len(values)), pa.float64())
           for name in names}
    return pa.table(out) if out else pa.table({})


def _lab_values(pos: np.ndarray, day: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """Per cohort row: mean value on the latest day <= 0 (NaN if none)."""
    out = np.full(n, np.nan)
    latest = np.full(n, -np.inf)
    np.maximum.at(latest, pos, day)
    on_latest = day == latest[pos]
    counts = np.bincount(pos[on_latest], minlength=n)
    sums = np.bincount(pos[on_latest], weights=value[on_latest], minlength=n)
    has = counts > 0
    out[has] = sums[has] / counts[has]
    return out


def _cohort_labs(tables: Tables, cohort_df: pd.DataFrame,
                 names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per measurement: the baseline value of each cohort row (NaN if none). A cohort
    selected from the snapshot's facts reads the snapshot's baseline values (a few columns);
    any other reads baseline_measurements (the raw path)."""
    held = fact_rows(tables, cohort_df)
    got = held[0].baseline_labs(names) if held is not None else None
    if got is not None and held is not None:
        return {name: got[name][held[1]] for name in names}
    rows = _lab_rows(tables, _id_values(cohort_index(cohort_df)), names)
    return {name: _lab_values(*rows[name], len(cohort_df)) for name in names}


def build_design(tables: Tables, cohort_df: pd.DataFrame,
                 covariates: Sequence[str]) -> Design:
    """Cox design of the cohort's complete cases (rules in the module docstring).

    Parameters
    ----------
    tables : mapping or store
        Table name -> DataFrame, or an object with ``.table(name)``.
    cohort_df : DataFrame
        Output of :func:`node.cohorts.cohort.select_cohort` (one row per infusion).
    covariates : sequence of str
        The study's covariates, in order.

    Raises
    ------
    StudyRefused
        For an unknown or repeated covariate name.
    """
    covs = _check_covariates(covariates)
    n_rows = len(cohort_df)
    numeric: dict[str, np.ndarray] = {}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    missing = np.zeros((n_rows, len(covs)), dtype=bool)
    wanted = [cov[len(LAB_PREFIX):] for cov in covs if cov.startswith(LAB_PREFIX)]
    labs = _cohort_labs(tables, cohort_df, wanted) if wanted else {}
    for j, cov in enumerate(covs):
        if is_categorical(cov):
            codes[cov] = _categorical_codes(cohort_df[cov])
            missing[:, j] = codes[cov][0] < 0
            continue
        if cov.startswith(LAB_PREFIX):
            numeric[cov] = labs[cov[len(LAB_PREFIX):]]
        else:
            numeric[cov] = _numeric_values(cohort_df[cov])
        missing[:, j] = np.isnan(numeric[cov])
    incomplete = np.asarray(missing.any(axis=1))
    first = missing.argmax(axis=1)[incomplete]
    counts = np.bincount(first, minlength=len(covs))
    dropped = {f"missing {cov}": int(counts[j]) for j, cov in enumerate(covs)}
    mask = ~incomplete
    levels: dict[str, list[str]] = {}
    kept_codes: dict[str, np.ndarray] = {}
    for cov, (c, uniques) in codes.items():
        kept = c[mask]
        present = np.flatnonzero(np.bincount(kept, minlength=len(uniques)) > 0)
        names = [str(uniques[i]) for i in present]
        order = sorted(range(len(names)), key=names.__getitem__)
        levels[cov] = [names[i] for i in order]
        remap = np.full(len(uniques), -1, dtype="int64")
        remap[present[order]] = np.arange(len(order))
        kept_codes[cov] = remap[kept] if len(kept) else kept.astype("int64")
    kept_numeric = {cov: v[mask] for cov, v in numeric.items()}
    log.debug("design: %d complete cases of %d cohort rows, %d covariates",
              int(mask.sum()), n_rows, len(covs))
    return Design(covariates=covs, mask=mask, dropped=dropped, levels=levels,
                  _numeric=kept_numeric, _codes=kept_codes)

"""Data-quality rules of the data model, vectorised over whole tables.

A rule finding is a set of row positions of one table, the rule's stable snake_case name and
the column it concerns.  Rules never look at one row at a time in Python; each check is a
handful of pandas operations, so a million-row table costs the same few passes.

Findings hold row positions and a fixed explanation only: no value from a row ever enters a
message.

Conventions where the data model leaves a choice:

* Key-like conflicts are resolved in file order: the first row wins, later rows break the rule
  (``duplicate_key``, ``batch_reused``, ``unit_inconsistent``, ``multiple_best_response``,
  conflicting death dates).  These are judged on the parsed values of all rows, whether or not
  the first row is otherwise valid, so fixing one row never silently swaps which row is kept.
* References and cross-table rules use only accepted parent rows; a child of a quarantined
  parent breaks ``unknown_reference`` (cascade).
* A patient's death date is the one on the first accepted ``dead`` follow-up row of any of the
  patient's infusions; contacts, events, AE onsets and assessments after it break ``after_death``.
* Birth year against infusion year is checked on the infusion row (column infusion_date): a
  patient may have several infusions and only the offending one is quarantined.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from node.ingestion.schema import MAX_GRADE

logger = logging.getLogger(__name__)

TEXT = pd.StringDtype("pyarrow")
ERROR = "error"
WARNING = "warning"

#: Every rule: name -> (severity, short explanation).  The order is the priority used to pick
#: the primary reason of a quarantined row.
RULES: dict[str, tuple[str, str]] = {
    "missing_required": (ERROR, "a required value is missing"),
    "bad_type": (ERROR, "value cannot be parsed as the column's type"),
    "unknown_enum": (ERROR, "value is not one of the allowed values"),
    "non_finite_value": (ERROR, "value is not a finite number"),
    "value_out_of_range": (ERROR, "value is outside the allowed range"),
    "birth_year_out_of_range": (ERROR, "birth year is before 1900 or after the current year"),
    "day_after_infusion": (ERROR, "baseline day is after the infusion (day > 0)"),
    "date_in_future": (ERROR, "date is in the future"),
    "duplicate_key": (ERROR, "key already used by an earlier row"),
    "unknown_reference": (ERROR, "refers to an id that does not exist or was quarantined"),
    "birth_year_after_infusion": (ERROR, "infusion year is before the patient's birth year"),
    "age_out_of_range": (ERROR, "age at infusion is outside 0-100 years"),
    "batch_reused": (ERROR, "autologous batch already given to another patient"),
    "death_date_mismatch": (ERROR, "vital status, death date and cause of death disagree"),
    "death_before_infusion": (ERROR, "death date is before the infusion date"),
    "before_infusion": (ERROR, "date is before the infusion date"),
    "after_death": (ERROR, "date is after the patient's death date"),
    "onset_after_resolution": (ERROR, "resolution date is before the onset date"),
    "grade_out_of_range": (ERROR, "grade is outside the range of its grading system"),
    "grade5_without_death": (ERROR, "grade 5 (fatal) adverse event but no recorded death"),
    "multiple_best_response": (ERROR, "another row is already the best response"),
    "unit_inconsistent": (ERROR, "unit differs from the unit of earlier rows of this measurement"),
    "crs_onset_after_day_14": (WARNING, "CRS onset after day 14"),
    "icans_onset_after_day_28": (WARNING, "ICANS onset after day 28"),
    "stale_alive_contact": (WARNING, "last contact is over 2 years old and the patient alive"),
}
RULE_ORDER: dict[str, int] = {name: i for i, name in enumerate(RULES)}


def severity(rule: str) -> str:
    """Severity ('error' or 'warning') of a rule."""
    return RULES[rule][0]


@dataclass(frozen=True)
class Issue:
    """One broken rule on one row (or a file-level note when ``row`` is None)."""

    table: str | None
    file: str
    row: int | None
    column: str | None
    rule: str
    severity: str
    message: str

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """Rows of one table that break one rule on one column."""

    rule: str
    column: str
    positions: np.ndarray
    detail: str

    @property
    def severity(self) -> str:
        """'error' or 'warning'."""
        return severity(self.rule)


@dataclass
class Findings:
    """Accumulates the findings of one table of ``n`` rows."""

    table: str
    n: int
    items: list[Finding] = field(default_factory=list)

    def add(self, rule: str, column: str, mask: np.ndarray | pd.Series,
            detail: str | None = None) -> int:
        """Record the rows where ``mask`` is true; return how many."""
        arr = np.asarray(mask.fillna(False) if isinstance(mask, pd.Series) else mask, dtype=bool)
        positions = np.flatnonzero(arr)
        if positions.size:
            self.items.append(Finding(rule, column, positions, detail or RULES[rule][1]))
            logger.debug("%s: %d rows break %s on %s", self.table, positions.size, rule, column)
        return int(positions.size)

    def error_mask(self) -> np.ndarray:
        """Boolean mask of the rows with at least one error."""
        mask = np.zeros(self.n, dtype=bool)
        for f in self.items:
            if f.severity == ERROR:
                mask[f.positions] = True
        return mask


def _b(series: pd.Series | np.ndarray) -> np.ndarray:
    """Nullable boolean series -> numpy bool array (NA is False)."""
    if isinstance(series, np.ndarray):
        return series.astype(bool, copy=False)
    return series.to_numpy(dtype=bool, na_value=False)


def _arrow(series: pd.Series) -> pa.Array:
    """The column as one contiguous Arrow string array (no copy when already one chunk)."""
    arr = pa.array(series.astype(TEXT).array)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


def positions_in(values: pd.Series, keys: pd.Series) -> np.ndarray:
    """Position of each value among unique ``keys`` (-1 when absent or missing).

    Hash lookup in Arrow: a million ids against a million keys takes a fraction of a second.
    """
    if len(keys) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    found = pc.index_in(_arrow(values), value_set=_arrow(keys))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def codes(series: pd.Series) -> np.ndarray:
    """Integer code per distinct value (-1 for missing), via Arrow dictionary encoding."""
    if not isinstance(series.dtype, pd.StringDtype):
        return pd.factorize(series, use_na_sentinel=True)[0]
    encoded = pc.dictionary_encode(_arrow(series))
    return encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def take(values: pd.Series, pos: np.ndarray) -> pd.Series:
    """``values[pos]`` with NA where ``pos`` is -1; index 0..len(pos)-1."""
    if len(values) == 0:
        # pandas-stubs overloads pd.array for specific dtypes only, not any ExtensionDtype
        return pd.Series(pd.array([None] * len(pos), dtype=values.dtype))  # type: ignore[call-overload]
    out = values.iloc[np.maximum(pos, 0)].reset_index(drop=True)
    return out.mask(pd.Series(pos < 0))


def first_in_file_order_conflicts(keys: pd.Series, values: pd.Series | None = None) -> np.ndarray:
    """Rows that conflict with the first row sharing their key.

    With ``values`` None every later row of a key conflicts (duplicates); otherwise a later row
    conflicts when its value differs from the first row's value.  Rows with a missing key or
    value never conflict.
    """
    present = _b(keys.notna() if values is None else keys.notna() & values.notna())
    out = np.zeros(len(keys), dtype=bool)
    if not present.any():
        return out
    k = codes(keys)[present]
    if values is None:
        out[present] = pd.Series(k).duplicated(keep="first").to_numpy()
        return out
    v = pd.Series(codes(values)[present])
    first = v.groupby(k, sort=False).transform("first")
    out[present] = (v != first).to_numpy(dtype=bool)
    return out


def check_reference(f: Findings, column: str, unknown: np.ndarray,
                    quarantined_parent: np.ndarray) -> None:
    """``unknown_reference`` for ids with no accepted parent row."""
    f.add("unknown_reference", column, unknown & quarantined_parent,
          "refers to a row that was quarantined")
    f.add("unknown_reference", column, unknown & ~quarantined_parent,
          "refers to an id that does not exist")


def check_infusion_vs_patient(f: Findings, infusion_date: pd.Series,
                              birth_year: pd.Series) -> None:
    """Birth year against infusion year; ``birth_year`` is aligned to the infusion rows."""
    age = infusion_date.dt.year.astype("Int64") - birth_year
    f.add("birth_year_after_infusion", "infusion_date", _b(age < 0))
    f.add("age_out_of_range", "infusion_date", _b(age > 100))


def check_batch_reused(f: Findings, typed: pd.DataFrame) -> None:
    """An autologous batch given to a second patient: later patients' rows break the rule."""
    auto = _b(typed["origin"] == "autologous")
    batch = typed["batch_id"].where(auto)
    conflict = first_in_file_order_conflicts(batch, typed["patient_id"].where(auto))
    f.add("batch_reused", "batch_id", conflict)


def check_death_fields(f: Findings, typed: pd.DataFrame) -> None:
    """Within-row agreement of vital status, death date and cause of death."""
    status = typed["vital_status"]
    dead = _b(status == "dead")
    known_status = _b(status.notna())
    has_date = _b(typed["death_date"].notna())
    f.add("death_date_mismatch", "death_date", dead & ~has_date,
          "vital status is dead but death date is missing")
    f.add("death_date_mismatch", "death_date", known_status & ~dead & has_date,
          "death date is given but vital status is not dead")
    f.add("death_date_mismatch", "cause_of_death", dead & _b(typed["cause_of_death"].isna()),
          "vital status is dead but cause of death is missing")


def check_not_before(f: Findings, dates: pd.Series, infusion_date: pd.Series, column: str,
                     rule: str = "before_infusion") -> None:
    """Dates before the infusion date (aligned to the rows) break ``rule``."""
    f.add(rule, column, _b(dates < infusion_date))


def check_not_after_death(f: Findings, dates: pd.Series, death_date: pd.Series, column: str,
                          extra: np.ndarray | None = None) -> None:
    """Dates after the patient's death date (aligned to the rows) break ``after_death``."""
    mask = _b(dates > death_date)
    if extra is not None:
        mask &= extra
    f.add("after_death", column, mask)


def check_conflicting_death_dates(f: Findings, patient: np.ndarray, death_date: pd.Series,
                                  candidates: np.ndarray) -> None:
    """Dead rows whose death date differs from the first one recorded for the patient."""
    keys = pd.Series(patient, dtype="Int64").where(candidates)
    conflict = first_in_file_order_conflicts(keys, death_date.where(candidates))
    f.add("death_date_mismatch", "death_date", conflict,
          "death date differs from the one recorded for this patient in an earlier row")


def check_grades(f: Findings, typed: pd.DataFrame, patient_dead: pd.Series) -> None:
    """Grade range per grading system, and grade 5 only with a recorded death."""
    top = typed["grading"].map(MAX_GRADE).astype("Int64")
    grade = typed["max_grade"]
    f.add("grade_out_of_range", "max_grade", _b((grade < 1) | (grade > top)))
    fatal = _b((grade == 5) & (grade <= top))
    f.add("grade5_without_death", "max_grade", fatal & ~_b(patient_dead))


def check_onset_resolution(f: Findings, typed: pd.DataFrame) -> None:
    """Resolution before onset."""
    f.add("onset_after_resolution", "resolution_date",
          _b(typed["resolution_date"] < typed["onset_date"]))


def check_multiple_best(f: Findings, typed: pd.DataFrame) -> None:
    """A second best-response row of one infusion."""
    best = _b(typed["best"] == True)  # noqa: E712 (nullable boolean)
    f.add("multiple_best_response", "best",
          first_in_file_order_conflicts(typed["infusion_id"].where(best)))


def check_units(f: Findings, typed: pd.DataFrame) -> None:
    """A unit differing from the first unit seen for the same measurement."""
    f.add("unit_inconsistent", "unit",
          first_in_file_order_conflicts(typed["measurement"], typed["unit"]))


def warn_late_onset(f: Findings, typed: pd.DataFrame, infusion_date: pd.Series,
                    accepted: np.ndarray) -> None:
    """CRS after day 14 and ICANS after day 28 (warnings on stored rows)."""
    day = (typed["onset_date"] - infusion_date).dt.days
    f.add("crs_onset_after_day_14", "onset_date",
          accepted & _b(typed["term"] == "CRS") & _b(day > 14))
    f.add("icans_onset_after_day_28", "onset_date",
          accepted & _b(typed["term"] == "ICANS") & _b(day > 28))


def two_years_before(today: date) -> date:
    """The same calendar day two years before ``today`` (29 Feb -> 28 Feb)."""
    try:
        return today.replace(year=today.year - 2)
    except ValueError:
        return today.replace(year=today.year - 2, day=28)


def warn_stale_contacts(f: Findings, typed: pd.DataFrame, accepted: np.ndarray,
                        today: date) -> None:
    """Latest stored contact of an infusion alive and more than two years before ``today``."""
    rows = typed.loc[accepted, ["infusion_id", "contact_date", "vital_status"]]
    if rows.empty:
        return
    infusion = codes(rows["infusion_id"])
    contact = rows["contact_date"]
    is_latest = _b(contact == contact.groupby(infusion).transform("max"))
    not_alive = pd.Series(is_latest & _b(rows["vital_status"] != "alive"), index=rows.index)
    any_not_alive = not_alive.groupby(infusion).transform("any").to_numpy(dtype=bool)
    stale = is_latest & ~any_not_alive & _b(contact < pd.Timestamp(two_years_before(today)))
    # one warning per infusion: its first latest row in file order
    stale &= ~pd.Series(np.where(stale, infusion, -1)).duplicated(keep="first").to_numpy()
    mask = np.zeros(f.n, dtype=bool)
    mask[np.flatnonzero(accepted)[stale]] = True
    f.add("stale_alive_contact", "contact_date", mask)

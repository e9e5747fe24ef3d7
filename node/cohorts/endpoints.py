"""Endpoints derived at the site (docs/data-model.md, "Endpoints derived at the site").

Every function is vectorised over the cohort (numpy/pandas, no per-patient Python loops) and
works in whole days since infusion (infusion = day 0). Rules shared by all endpoints:

- The latest follow-up contact counts. A patient whose latest contact says ``dead`` (with a
  death_date) died on death_date; otherwise (``alive`` or ``unknown``) the patient is censored
  at that contact. If two rows share the latest contact date and one says ``dead``, death wins.
- An infusion with no follow-up row (impossible after ingestion) is censored at day 0; events
  recorded in clinical_events / adverse_events still count.
- ``censor_at`` (``subsequent_cell_therapy``, ``subsequent_hct``): when the first such event
  happens strictly before the endpoint event, the patient is censored on its day; on the same
  day the endpoint event counts. Without an endpoint event the patient is censored on the day
  of that event (even past the last contact: the record shows follow-up to that day).
- Follow-up beyond ``horizon`` is censored at the horizon (duration = horizon, no event); an
  event exactly on the horizon day stays an event.
- Durations below 0 (only possible with data that ingestion rejects) are set to 0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from node.cohorts.cohort import Tables, cohort_index, get_table
from node.errors import StudyRefused
from protocol.study import AE_ENDPOINT, CENSOR_EVENTS
from protocol.vocabulary import ALL, GROUP_BY, SITE, UNKNOWN

__all__ = ["AE_TERMS", "competing_endpoint", "group_labels", "parse_ae_endpoint",
           "survival_endpoint"]

log = logging.getLogger(__name__)

AE_TERMS = (
    "CRS", "ICANS", "IEC_HS", "infection_bacterial", "infection_viral", "infection_fungal",
    "prolonged_cytopenia", "hypogammaglobulinaemia", "TLS", "second_malignancy", "other",
)
_NS_PER_DAY = 86_400 * 10**9


def _days(values: pd.Series) -> np.ndarray:
    """Dates as float days since 1970-01-01 (NaN where missing)."""
    v = pd.to_datetime(values).to_numpy(dtype="datetime64[ns]")
    out = np.floor_divide(v.view("int64"), _NS_PER_DAY).astype("float64")
    out[np.isnat(v)] = np.nan
    return out


@dataclass(frozen=True)
class _Base:
    """Per-infusion facts every endpoint uses, aligned with the cohort rows."""

    t0: np.ndarray  # infusion day (days since epoch)
    last_contact: np.ndarray  # days since infusion; 0 when no follow-up row
    death: np.ndarray  # days since infusion; NaN when not dead


def _arrow_strings(values: pd.Series | pd.Index) -> pa.ChunkedArray:
    """``values`` as Arrow large strings (Arrow-backed columns without a copy)."""
    arr = values.array
    if not isinstance(arr.dtype, pd.StringDtype) or arr.dtype.storage != "pyarrow":
        arr = pd.Series(values, copy=False).astype(pd.StringDtype("pyarrow")).array
    return pa.chunked_array(pa.array(arr)).cast(pa.large_string())


def _positions(cohort_ids: pd.Index, ids: pd.Series) -> np.ndarray:
    """Row position in the cohort of each id (-1 when not in the cohort)."""
    if cohort_ids.dtype != object and not isinstance(cohort_ids.dtype, pd.StringDtype):
        return cohort_ids.get_indexer(pd.Index(ids.astype(cohort_ids.dtype)))
    pos = pc.index_in(_arrow_strings(ids), value_set=_arrow_strings(cohort_ids).combine_chunks())
    return np.asarray(pc.fill_null(pos, -1).to_numpy(), dtype=np.intp)


def _eq(col: pd.Series, value: str) -> np.ndarray:
    """Boolean array: ``col == value`` with missing values False."""
    return col.eq(value).fillna(False).to_numpy(dtype=bool)


def _group_min(n: int, pos: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-cohort-row minimum of ``values`` over rows at ``pos`` (NaN where none)."""
    out = np.full(n, np.inf)
    ok = ~np.isnan(values)
    np.minimum.at(out, pos[ok], values[ok])
    out[out == np.inf] = np.nan
    return out


def _group_max(n: int, pos: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-cohort-row maximum of ``values`` over rows at ``pos`` (NaN where none)."""
    out = np.full(n, -np.inf)
    ok = ~np.isnan(values)
    np.maximum.at(out, pos[ok], values[ok])
    out[out == -np.inf] = np.nan
    return out


def base_facts(tables: Tables, cohort_df: pd.DataFrame, ids: pd.Index) -> _Base:
    """Infusion day, latest contact (NaN without follow-up) and death day of each row."""
    n = len(ids)
    t0 = _days(cohort_df["infusion_date"])
    fu = get_table(tables, "followup", ("infusion_id", "contact_date", "vital_status",
                                        "death_date"))
    pos = _positions(ids, fu["infusion_id"])
    sel = pos >= 0
    pos = pos[sel]
    contact = _days(fu["contact_date"])[sel] - t0[pos]
    latest = _group_max(n, pos, contact)
    dead = _eq(fu["vital_status"], "dead")[sel]
    death_days = _days(fu["death_date"])[sel] - t0[pos]
    on_latest = contact == latest[pos]
    death_days[~(dead & on_latest)] = np.nan
    return _Base(t0=t0, last_contact=latest, death=_group_min(n, pos, death_days))


def _censored_at_zero(base: _Base) -> _Base:
    """``base`` with a missing latest contact (no follow-up row) as day 0, with a warning."""
    missing = int(np.isnan(base.last_contact).sum())
    if missing:
        log.warning("%d cohort infusions have no follow-up; censored at day 0", missing)
    return _Base(t0=base.t0, last_contact=np.nan_to_num(base.last_contact, nan=0.0),
                 death=base.death)


def _base(tables: Tables, cohort_df: pd.DataFrame, ids: pd.Index) -> _Base:
    return _censored_at_zero(base_facts(tables, cohort_df, ids))


def _from_facts(tables: Tables, cohort_df: pd.DataFrame
                ) -> tuple[_Base, Callable[[tuple[str, ...]], np.ndarray]] | None:
    """The base facts of a cohort selected from the snapshot's facts, and the first day of
    any of some clinical events; None for any other cohort (the raw path then runs)."""
    from node.cohorts.facts import EVENT_COLUMNS, fact_rows  # facts import this module
    found = fact_rows(tables, cohort_df)
    if found is None:
        return None
    facts, rows = found
    base = _censored_at_zero(_Base(
        t0=facts.numbers("t0")[rows], last_contact=facts.numbers("last_contact")[rows],
        death=facts.numbers("death")[rows]))

    def first(events: tuple[str, ...]) -> np.ndarray:
        out = np.full(len(rows), np.nan, dtype=np.float32)  # whole days: exact
        for event in events:
            out = np.fmin(out, facts.numbers(EVENT_COLUMNS[event])[rows])
        return out
    return base, first


def first_clinical(tables: Tables, ids: pd.Index, t0: np.ndarray,
                   events: tuple[str, ...]) -> np.ndarray:
    """Day of the first clinical event of any of ``events`` per infusion (NaN where none)."""
    ce = get_table(tables, "clinical_events", ("infusion_id", "event", "event_date"))
    mask = ce["event"].isin(list(events)).fillna(False).to_numpy(dtype=bool)
    ce = ce.loc[mask]
    pos = _positions(ids, ce["infusion_id"])
    sel = pos >= 0
    return _group_min(len(ids), pos[sel], _days(ce["event_date"])[sel] - t0[pos[sel]])


def _check_censor_at(censor_at: tuple[str, ...]) -> None:
    bad = [c for c in censor_at if c not in CENSOR_EVENTS]
    if bad:
        raise StudyRefused(f"censor_at {bad[0]!r} is not one of {', '.join(CENSOR_EVENTS)}")


class _Source:
    """A cohort's base facts and first clinical event days: from the snapshot's facts when
    the cohort was selected from them, else from the raw tables."""

    def __init__(self, tables: Tables, cohort_df: pd.DataFrame) -> None:
        self.tables = tables
        self.cohort_df = cohort_df
        fast = _from_facts(tables, cohort_df)
        self._ids: pd.Index | None = None
        if fast is not None:
            self.base, self._first = fast
        else:
            self.base = _base(tables, cohort_df, self.ids)
            self._first = lambda events: first_clinical(tables, self.ids, self.base.t0, events)
        self.from_facts = fast is not None

    @property
    def ids(self) -> pd.Index:
        """The cohort's infusion ids (:func:`cohort_index`)."""
        if self._ids is None:
            self._ids = cohort_index(self.cohort_df)
        return self._ids

    def first(self, events: tuple[str, ...]) -> np.ndarray:
        """Day of the first clinical event of any of ``events`` (NaN where none)."""
        return self._first(events)

    def censor_day(self, censor_at: tuple[str, ...]) -> np.ndarray:
        _check_censor_at(censor_at)
        if not censor_at:
            return np.full(len(self.cohort_df), np.nan)
        return self.first(tuple(censor_at))

    def frame(self, duration: np.ndarray, last_col: str, last: np.ndarray) -> pd.DataFrame:
        if self.from_facts:  # unique by construction; the Arrow-backed ids as they are
            return pd.DataFrame({"infusion_id": self.cohort_df["infusion_id"].array,
                                 "duration": duration, last_col: last},
                                index=self.cohort_df.index)
        return _frame(self.cohort_df, self.ids, duration, last_col, last)


def _assemble(base: _Base, event_day: np.ndarray, censor_day: np.ndarray,
              horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(duration, event flag) from the endpoint event day, censoring day and horizon."""
    if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 0:
        raise ValueError(f"horizon must be a non-negative integer, not {horizon!r}")
    has_e = ~np.isnan(event_day)
    has_c = ~np.isnan(censor_day)
    censored_first = has_c & ~(event_day <= censor_day)
    event = has_e & ~censored_first
    duration = np.where(event, event_day, np.where(has_c, censor_day, base.last_contact))
    beyond = duration > horizon
    duration = np.where(beyond, horizon, duration)
    event &= ~beyond
    negative = duration < 0
    if negative.any():
        log.warning("%d durations below day 0 set to 0", int(negative.sum()))
        duration = np.where(negative, 0, duration)
    return duration.astype("int64"), event


def _frame(cohort_df: pd.DataFrame, ids: pd.Index, duration: np.ndarray,
           last_col: str, last: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"infusion_id": ids.to_numpy(), "duration": duration, last_col: last},
                        index=cohort_df.index)


def survival_endpoint(tables: Tables, cohort_df: pd.DataFrame, endpoint: str, horizon: int,
                      censor_at: tuple[str, ...] = ()) -> pd.DataFrame:
    """Time to ``overall_survival`` or ``progression_free_survival`` for each cohort infusion.

    Overall survival: event = death. Progression-free survival: event = the earlier of the
    first relapse_progression and death. Otherwise censored at the latest contact; see the
    module docstring for censor_at, the horizon and edge cases.

    Returns
    -------
    pandas.DataFrame
        Columns infusion_id, duration (int64 days), event (bool), indexed like ``cohort_df``.
    """
    if endpoint not in ("overall_survival", "progression_free_survival"):
        raise StudyRefused(f"endpoint {endpoint!r} is not a survival endpoint")
    _check_censor_at(censor_at)
    src = _Source(tables, cohort_df)
    base = src.base
    event_day = base.death
    if endpoint == "progression_free_survival":
        event_day = np.fmin(src.first(("relapse_progression",)), base.death)
    duration, event = _assemble(base, event_day, src.censor_day(censor_at), horizon)
    return src.frame(duration, "event", event.astype(bool))


def parse_ae_endpoint(endpoint: str) -> tuple[str, int]:
    """(canonical term, minimum grade) of an ``ae:<TERM>[>=G]`` endpoint.

    The term is matched case-insensitively to the data-model spelling.
    """
    m = AE_ENDPOINT.match(endpoint)
    canon = {t.lower(): t for t in AE_TERMS}
    if not m or m.group(1).lower() not in canon:
        raise StudyRefused(f"endpoint {endpoint!r} is not ae:<TERM>[>=G] with TERM one of "
                           f"{', '.join(AE_TERMS)}")
    return canon[m.group(1).lower()], int(m.group(2) or 1)


def _first_ae(tables: Tables, ids: pd.Index, t0: np.ndarray, term: str,
              min_grade: int) -> np.ndarray:
    ae = get_table(tables, "adverse_events", ("infusion_id", "term", "max_grade", "onset_date"))
    grade = pd.to_numeric(ae["max_grade"], errors="coerce").to_numpy(dtype="float64",
                                                                    na_value=np.nan)
    mask = _eq(ae["term"], term) & (grade >= min_grade)
    ae = ae.loc[mask]
    pos = _positions(ids, ae["infusion_id"])
    sel = pos >= 0
    return _group_min(len(ids), pos[sel], _days(ae["onset_date"])[sel] - t0[pos[sel]])


def competing_endpoint(tables: Tables, cohort_df: pd.DataFrame, endpoint: str, horizon: int,
                       censor_at: tuple[str, ...] = ()) -> pd.DataFrame:
    """Competing-risks endpoint for each cohort infusion.

    ``relapse``: cause 1 = first relapse_progression, 2 = death without prior relapse.
    ``non_relapse_mortality``: cause 1 = death without prior relapse, 2 = relapse.
    ``ae:<TERM>[>=G]``: cause 1 = onset of the first adverse event of TERM with max_grade >= G
    (default 1), 2 = death without that event. A relapse (or adverse event) on the day of death
    counts as preceding it. Cause 0 = censored (latest contact, censor_at, horizon as in the
    module docstring).

    Returns
    -------
    pandas.DataFrame
        Columns infusion_id, duration (int64 days), cause (int64 0/1/2), indexed like
        ``cohort_df``.
    """
    if endpoint in ("relapse", "non_relapse_mortality"):
        _check_censor_at(censor_at)
        src = _Source(tables, cohort_df)
        first = src.first(("relapse_progression",))
        first_cause = 1 if endpoint == "relapse" else 2
    elif endpoint.startswith("ae:"):
        term, grade = parse_ae_endpoint(endpoint)
        _check_censor_at(censor_at)
        src = _Source(tables, cohort_df)
        first = _first_ae(tables, src.ids, src.base.t0, term, grade)
        first_cause = 1
    else:
        raise StudyRefused(f"endpoint {endpoint!r} is not a competing-risks endpoint")
    base = src.base
    # ``first`` wins ties with death: an event on the day of death precedes it.
    first_wins = ~np.isnan(first) & ~(base.death < first)
    event_day = np.where(first_wins, first, base.death)
    cause_if_event = np.where(first_wins, first_cause, 3 - first_cause)
    duration, event = _assemble(base, event_day, src.censor_day(censor_at), horizon)
    cause = np.where(event, cause_if_event, 0).astype("int64")
    return src.frame(duration, "cause", cause)


_MISSING = re.compile(r"^\s*$")


def group_labels(cohort_df: pd.DataFrame, group_by: str | None, site_id: str) -> pd.Series:
    """Group label (str) of each cohort row for ``group_by``.

    ``None`` gives "all", ``"site"`` gives ``site_id``; a missing or blank value gives
    "unknown"; ecog is labelled by its integer ("0" .. "4").
    """
    if group_by is None:
        return pd.Series(ALL, index=cohort_df.index, dtype=object)
    if group_by == SITE:
        return pd.Series(site_id, index=cohort_df.index, dtype=object)
    if group_by not in GROUP_BY:
        raise StudyRefused(f"group_by {group_by!r} is not one of {', '.join(GROUP_BY)}")
    col = cohort_df[group_by]
    if group_by == "ecog":
        col = pd.to_numeric(col, errors="coerce").astype("Int64")
    labels = col.astype("string")
    labels = labels.mask(labels.str.match(_MISSING).fillna(True).astype(bool), UNKNOWN)
    return labels.fillna(UNKNOWN).astype(object)

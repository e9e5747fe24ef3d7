"""Declarative definition of the site data model (docs/data-model.md, v1).

Every table a site may load is described here once: its columns, their types, whether a value
is required, the canonical spelling of enumerations, the primary key and the references to
other tables.  Validation, ingestion and the store all derive their behaviour from these
definitions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import pandas as pd

from protocol.vocabulary import ATMP_CLASS, DISEASE_STATUS, ORIGIN, ROUTE, SEX

logger = logging.getLogger(__name__)


class ColumnType(StrEnum):
    """Logical type of a column."""

    STRING = "string"
    ENUM = "enum"
    INT = "int"
    FLOAT = "float"
    DATE = "date"
    BOOL = "bool"


StoredDtype = Literal["string", "Int64", "float64", "datetime64[ns]", "boolean"]
"""The pandas dtypes of stored columns (names pandas' ``astype`` takes)."""

#: pandas dtype a stored column of each logical type has.
PANDAS_DTYPES: dict[ColumnType, StoredDtype] = {
    ColumnType.STRING: "string",
    ColumnType.ENUM: "string",
    ColumnType.INT: "Int64",
    ColumnType.FLOAT: "float64",
    ColumnType.DATE: "datetime64[ns]",
    ColumnType.BOOL: "boolean",
}


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Parameters
    ----------
    name : str
        Column name as written in the input header.
    type : ColumnType
        Logical type.
    required : bool
        Whether every row must carry a value.  Conditional requirements (death_date,
        cause_of_death) are rules, not this flag.
    enum : tuple of str
        Allowed values in canonical spelling (input is matched case-insensitively).
    references : str or None
        ``"table.column"`` this column must refer to.
    min_value, max_value : int or None
        Static bounds of an int column; a value outside them breaks ``range_rule``.
    range_rule : str
        Rule name used when a bound is broken.
    """

    name: str
    type: ColumnType
    required: bool = True
    enum: tuple[str, ...] = ()
    references: str | None = None
    min_value: int | None = None
    max_value: int | None = None
    range_rule: str = "value_out_of_range"

    @property
    def dtype(self) -> StoredDtype:
        """pandas dtype of the stored column."""
        return PANDAS_DTYPES[self.type]

    def canonical(self, value: str) -> str | None:
        """Return the canonical spelling of an enumeration value, or None if unknown."""
        lookup = {v.lower(): v for v in self.enum}
        return lookup.get(value.strip().lower())


@dataclass(frozen=True)
class Table:
    """One table of the data model."""

    name: str
    columns: tuple[Column, ...]
    required: bool = False
    primary_key: str | None = None

    @property
    def column_names(self) -> list[str]:
        """Column names in data-model order."""
        return [c.name for c in self.columns]

    @property
    def required_columns(self) -> list[str]:
        """Names of the columns that must be present in every row."""
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        """Return the column called ``name`` (KeyError if there is none)."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name} has no column {name}")

    def dtypes(self) -> dict[str, StoredDtype]:
        """Mapping column name -> stored pandas dtype."""
        return {c.name: c.dtype for c in self.columns}

    def empty_frame(self) -> pd.DataFrame:
        """An empty frame with this table's columns and stored dtypes."""
        return pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in self.columns})


S, E, INT, F, D, B = (ColumnType.STRING, ColumnType.ENUM, ColumnType.INT, ColumnType.FLOAT,
                    ColumnType.DATE, ColumnType.BOOL)

# SEX, ATMP_CLASS, ROUTE, ORIGIN, DISEASE_STATUS: protocol.vocabulary (fixed grouping levels)
VITAL_STATUS = ("alive", "dead", "unknown")
CAUSE_OF_DEATH = ("primary_disease", "infection", "CRS", "ICANS", "IEC_HS", "second_malignancy",
                  "other_treatment_related", "other", "unknown")
EVENT = ("relapse_progression", "new_anticancer_treatment", "subsequent_hct",
         "subsequent_cell_therapy", "new_malignancy")
AE_TERM = ("CRS", "ICANS", "IEC_HS", "infection_bacterial", "infection_viral", "infection_fungal",
           "prolonged_cytopenia", "hypogammaglobulinaemia", "TLS", "second_malignancy", "other")
GRADING = ("ASTCT2019", "CTCAE5", "CTCAE6")
RESPONSE = ("CR", "PR", "SD", "PD", "NE")

#: Highest grade each grading system allows (the lowest is 1).
MAX_GRADE: dict[str, int] = {"ASTCT2019": 4, "CTCAE5": 5, "CTCAE6": 5}

_INFUSION_REF = "infusions.infusion_id"

PATIENTS = Table("patients", (
    Column("patient_id", S),
    Column("sex", E, enum=SEX),
    Column("birth_year", INT, min_value=1900, range_rule="birth_year_out_of_range"),
), required=True, primary_key="patient_id")

INFUSIONS = Table("infusions", (
    Column("infusion_id", S),
    Column("patient_id", S, references="patients.patient_id"),
    Column("infusion_date", D),
    Column("product", S),
    Column("atmp_class", E, enum=ATMP_CLASS),
    Column("route", E, enum=ROUTE),
    Column("origin", E, enum=ORIGIN),
    Column("batch_id", S, required=False),
    Column("indication_icd10", S),
    Column("indication_group", S),
    Column("disease_status", E, required=False, enum=DISEASE_STATUS),
    Column("prior_lines", INT, required=False, min_value=0),
    Column("ecog", INT, required=False, min_value=0, max_value=4),
    Column("manufacturing_site", S, required=False),
), required=True, primary_key="infusion_id")

FOLLOWUP = Table("followup", (
    Column("infusion_id", S, references=_INFUSION_REF),
    Column("contact_date", D),
    Column("vital_status", E, enum=VITAL_STATUS),
    Column("death_date", D, required=False),
    Column("cause_of_death", E, required=False, enum=CAUSE_OF_DEATH),
), required=True)

CLINICAL_EVENTS = Table("clinical_events", (
    Column("infusion_id", S, references=_INFUSION_REF),
    Column("event", E, enum=EVENT),
    Column("event_date", D),
))

ADVERSE_EVENTS = Table("adverse_events", (
    Column("infusion_id", S, references=_INFUSION_REF),
    Column("term", E, enum=AE_TERM),
    Column("meddra_pt", S, required=False),
    Column("grading", E, enum=GRADING),
    Column("max_grade", INT),
    Column("onset_date", D),
    Column("resolution_date", D, required=False),
    Column("serious", B),
))

RESPONSES = Table("responses", (
    Column("infusion_id", S, references=_INFUSION_REF),
    Column("assessment_date", D),
    Column("response", E, enum=RESPONSE),
    Column("best", B),
))

BASELINE_MEASUREMENTS = Table("baseline_measurements", (
    Column("infusion_id", S, references=_INFUSION_REF),
    Column("measurement", S),
    Column("value", F),
    Column("unit", S),
    Column("day", INT, max_value=0, range_rule="day_after_infusion"),
))

#: All tables, in dependency order (a table only references tables before it).
TABLES: dict[str, Table] = {t.name: t for t in (
    PATIENTS, INFUSIONS, FOLLOWUP, CLINICAL_EVENTS, ADVERSE_EVENTS, RESPONSES,
    BASELINE_MEASUREMENTS,
)}
TABLE_NAMES: tuple[str, ...] = tuple(TABLES)
REQUIRED_TABLES: tuple[str, ...] = tuple(n for n, t in TABLES.items() if t.required)


def get_table(name: str) -> Table:
    """Return the definition of table ``name``.

    Raises
    ------
    KeyError
        If the data model has no such table.
    """
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLE_NAMES)}") from None


def all_column_names() -> list[str]:
    """Union of column names over all tables, in first-seen order."""
    seen: dict[str, None] = {}
    for table in TABLES.values():
        for col in table.columns:
            seen.setdefault(col.name, None)
    return list(seen)

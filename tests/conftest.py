"""Shared pytest configuration and helpers used by several test modules.

Test modules never import from each other. Shared helpers live here (``from tests.conftest
import ...``) or in the helper modules beside it: ``aggregator_helpers`` (PKI, fake strategies,
a gRPC test node), ``network_helpers`` (subprocess daemons), ``survival_cohorts``,
``competing_cohorts`` and ``cox_cohorts`` (analytics reference cohorts) and ``site_data`` (a
hand-checked site folder). In-process networks are :mod:`heron.simulation`'s.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from lifelines import CoxPHFitter

from heron.simulation import pooled_cox_data
from protocol.study import Study

INFUSED = dt.date(2022, 1, 1)
"""Infusion date of every patient of :func:`site_tables`."""

COX_TODAY = dt.date(2026, 11, 1)
"""The calendar of the federated Cox tests (cohort selection of :func:`pooled_frame`)."""


def site_tables(durations: list[int], dead: list[bool],
                routes: list[int]) -> dict[str, pd.DataFrame]:
    """Hand-made site tables: one LBCL infusion per patient on :data:`INFUSED`, followed for
    ``durations`` days, dead or alive, route 0 (hospital exemption) or 1 (central)."""
    n = len(durations)
    ids = [f"p{i}" for i in range(n)]
    inf = [f"i{i}" for i in range(n)]
    day0 = pd.Timestamp(INFUSED)
    end = day0 + pd.to_timedelta(np.asarray(durations), unit="D")
    dead_arr = np.asarray(dead)
    patients = pd.DataFrame({"patient_id": pd.array(ids, "string"),
                             "sex": pd.array(["F"] * n, "string"),
                             "birth_year": pd.array([1960] * n, "Int64")})
    infusions = pd.DataFrame({
        "infusion_id": pd.array(inf, "string"), "patient_id": pd.array(ids, "string"),
        "infusion_date": pd.Series([day0] * n, dtype="datetime64[ns]"),
        "product": pd.array(["HE-CD19-01"] * n, "string"),
        "atmp_class": pd.array(["GTMP"] * n, "string"),
        "route": pd.array([["hospital_exemption", "centrally_authorised"][r] for r in routes],
                          "string"),
        "origin": pd.array(["autologous"] * n, "string"),
        "batch_id": pd.array([None] * n, "string"),
        "indication_icd10": pd.array(["C83.3"] * n, "string"),
        "indication_group": pd.array(["LBCL"] * n, "string"),
        "disease_status": pd.array([None] * n, "string"),
        "prior_lines": pd.array([None] * n, "Int64"), "ecog": pd.array([None] * n, "Int64"),
        "manufacturing_site": pd.array([None] * n, "string")})
    followup = pd.DataFrame({
        "infusion_id": pd.array(inf, "string"),
        "contact_date": pd.Series(end, dtype="datetime64[ns]"),
        "vital_status": pd.array(np.where(dead_arr, "dead", "alive"), "string"),
        "death_date": pd.Series(np.where(dead_arr, end, pd.NaT), dtype="datetime64[ns]"),
        "cause_of_death": pd.array(np.where(dead_arr, "primary_disease", None), "string")})
    return {"patients": patients, "infusions": infusions, "followup": followup}


def pooled_frame(stores: Mapping[str, Path], study: Study,
                 covariates: Sequence[str]) -> pd.DataFrame:
    """The pooled complete cases of the sites' stores for a Cox model (as of :data:`COX_TODAY`)."""
    return pooled_cox_data(stores, study, covariates, today=COX_TODAY)


def lifelines_reference(data: pd.DataFrame, categorical: Sequence[str],
                        strata: list[str] | None = None) -> CoxPHFitter:
    """lifelines' Cox fit (Efron ties, to full convergence) with treatment-coded categoricals."""
    data = data.copy()
    for col in data.columns:
        if col not in categorical and col not in ("site",):
            data[col] = data[col].astype(float)
    coded = pd.get_dummies(data, columns=categorical, prefix_sep="=", drop_first=True,
                           dtype=float)
    if strata is None:
        coded = coded.drop(columns="site")
    # lifelines stops at a step norm of 1e-7 by default, which leaves a rare level (sex=U)
    # 2e-5 short of the maximum; run it to full convergence to compare at 1e-6
    return CoxPHFitter().fit(coded, "duration", "event", strata=strata,
                             fit_options={"precision": 1e-14, "max_steps": 200})


EVERY_KIND: list[dict[str, Any]] = [
    {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival", "group_by": "route",
     "timepoints": [365]},
    {"name": "na", "kind": "nelson_aalen", "endpoint": "progression_free_survival"},
    {"name": "lr", "kind": "logrank", "endpoint": "overall_survival", "group_by": "sex"},
    {"name": "lr_site", "kind": "logrank", "endpoint": "overall_survival", "group_by": "route",
     "stratify_by_site": True},
    {"name": "cif", "kind": "cumulative_incidence", "endpoint": "relapse",
     "group_by": "origin"},
    {"name": "ae", "kind": "adverse_events", "terms": ["CRS", "ICANS"], "by_grade": True,
     "window_days": 28},
    {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
     "covariates": ["age_at_infusion", "sex", "ecog", "lab:LDH"]},
    {"name": "cox_site", "kind": "cox", "endpoint": "overall_survival",
     "covariates": ["age_at_infusion", "ecog"], "strata": "site"},
]
"""One analysis of every kind (and both Cox strata), all usable under secure aggregation."""


def assert_close(a: Any, b: Any, *, rel: float, abs_tol: float = 1e-12, path: str = "",
                 ignore: tuple[str, ...] = ()) -> None:
    """Two results.json parts agree: structure, strings and integers exactly; reals to ``rel``
    (or ``abs_tol``); keys in ``ignore`` are skipped at every depth."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, \
        f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        keys = sorted(k for k in a if k not in ignore)
        assert keys == sorted(k for k in b if k not in ignore), path
        for key in keys:
            assert_close(a[key], b[key], rel=rel, abs_tol=abs_tol, path=f"{path}.{key}",
                         ignore=ignore)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, rel=rel, abs_tol=abs_tol, path=f"{path}[{i}]", ignore=ignore)
    elif isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), path
        else:
            assert a == pytest.approx(b, rel=rel, abs=abs_tol), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def write_simulate_inputs(folder: Path, study_id: str) -> tuple[Path, Path]:
    """A day-resolution site policy allowing only Kaplan-Meier, and a study of a KM and a
    Nelson-Aalen analysis, as files for ``heron simulate``: ``(study, policy)``."""
    policy = folder / "policy.toml"
    policy.write_text('allowed_kinds = ["kaplan_meier"]\nmin_cohort = 1\nmin_cell = 1\n'
                      "min_bin_events = 1\n")
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump({
        "heron": 1, "id": study_id, "title": "simulate", "expires": "2099-01-01",
        "horizon_days": 730,
        "analyses": [{"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"},
                     {"name": "na", "kind": "nelson_aalen", "endpoint": "overall_survival"}],
        "privacy": {"secure_aggregation": False, "min_sites": 2}}))
    return study, policy

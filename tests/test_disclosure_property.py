"""Property: under the default site policy nothing the researcher or the aggregator gets breaks
the disclosure rules, whatever the study asks (issue 8).

Hypothesis draws studies over the synthetic network of issue 8 (99, 73 and 8 patients): cohort
filters (products, routes, indications, infusion years, ages), groupings, adverse-event terms
and windows, secure aggregation on or off. Each study runs through the real runtime; then

- in results.json: no group below ``min_cohort`` (10); no shown adverse-event count below
  ``min_cell`` (5); hidden grades at least two and together at least 5, so none is
  derivable; no person-time next to a withheld count;
- in everything :func:`aggregator.inspect.inspect_study` can compute from the aggregator's
  database (every site's unmasked release and every pooled sum of every round): no group of
  1 to 9 patients, no adverse-event count of 1 to 4;
- Cox models (when a study has one): no pooled per-time sum over fewer than 5 events, and
  a fitted model only over 10 complete cases or more.
"""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.inspect import AnalysisInspection, inspect_study
from heron.simulation import SimulatedNetwork, SimulatedSite, make_study
from node.ingestion.schema import AE_TERM
from tests.synthetic_sites import synthetic_network

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
MIN_COHORT, MIN_CELL = 10, 5
_IDS = itertools.count()

PRODUCTS = ["HE-CD19-01", "tisa-cel", "axi-cel", "HE-BCMA-01", "liso-cel", "cilta-cel",
            "brexu-cel", "CT-CD19-02", "ide-cel", "CT-BCMA-03"]
GROUP_BY = [None, "route", "sex", "origin", "ecog", "disease_status", "atmp_class"]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    return synthetic_network(tmp_path_factory.mktemp("property"))


def _subset(values: list[str]) -> st.SearchStrategy[list[str] | None]:
    return st.one_of(st.none(), st.lists(st.sampled_from(values), min_size=1, max_size=4,
                                         unique=True))


@st.composite
def studies(draw: st.DrawFn) -> dict[str, Any]:
    cohort: dict[str, Any] = {}
    for key, values in (("product", PRODUCTS), ("route", ["hospital_exemption",
                                                          "centrally_authorised",
                                                          "clinical_trial"]),
                        ("indication_group", ["LBCL", "MM", "B-ALL"])):
        chosen = draw(_subset(values))
        if chosen:
            cohort[key] = chosen
    if draw(st.booleans()):
        start = draw(st.integers(2018, 2025))
        end = draw(st.integers(start, 2025))
        cohort["infusion_date"] = {"from": f"{start}-01-01", "to": f"{end}-12-31"}
    if draw(st.booleans()):
        cohort["age_at_infusion"] = {"min": draw(st.integers(18, 70))}
    if draw(st.booleans()):
        cohort["first_infusion_only"] = False
    analyses = [
        {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival",
         "group_by": draw(st.sampled_from(GROUP_BY))},
        {"name": "cif", "kind": "cumulative_incidence", "endpoint": "relapse",
         "group_by": draw(st.sampled_from(GROUP_BY))},
        {"name": "ae", "kind": "adverse_events", "by_grade": True,
         "terms": draw(st.lists(st.sampled_from(AE_TERM), min_size=1, max_size=5, unique=True)),
         "window_days": draw(st.integers(7, 365))},
    ]
    if draw(st.booleans()):
        analyses.append({"name": "cox", "kind": "cox", "endpoint": "overall_survival",
                         "covariates": ["age_at_infusion"]})
    return {"cohort": cohort, "analyses": [{k: v for k, v in a.items() if v is not None}
                                           for a in analyses],
            "secure": draw(st.booleans())}


def _check_results(results: Mapping[str, Any]) -> None:
    for name, analysis in results["analyses"].items():
        for label, group in (analysis.get("groups") or {}).items():
            assert group["n"] >= MIN_COHORT, (name, label, group["n"])
        if "n" in analysis and analysis.get("kind") == "cox":
            assert analysis["n"] >= MIN_COHORT and analysis["events"] >= MIN_CELL, name
        for term, t in (analysis.get("terms") or {}).items():
            if not isinstance(t["with_event"], int):
                assert t["person_years"] is None, (term, t)
                continue
            assert t["with_event"] == 0 or t["with_event"] >= MIN_CELL, (term, t)
            grades = t.get("grades") or {}
            shown = [v for v in grades.values() if isinstance(v, int)]
            assert all(v == 0 or v >= MIN_CELL for v in shown), (term, grades)
            hidden = [g for g, v in grades.items() if not isinstance(v, int)]
            if hidden and all(isinstance(v, str) and not v.startswith(">=")
                              for v in grades.values() if not isinstance(v, int)):
                assert len(hidden) >= 2 and t["with_event"] - sum(shown) >= MIN_CELL, (
                    term, grades)


def _group_sizes(vectors: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Patients per group of a grouped release (``GROUP.events``, ``GROUP.censored``, ...)."""
    sizes: dict[str, int] = {}
    for label, vec in vectors.items():
        group, _, part = label.rpartition(".")
        if part in ("events", "censored", "cause1", "cause2"):
            sizes[group] = sizes.get(group, 0) + int(np.sum(vec))
    return sizes


def _check_vectors(kind: str, vectors: Mapping[str, np.ndarray], where: str) -> None:
    if kind in ("kaplan_meier", "nelson_aalen", "logrank", "cumulative_incidence"):
        for group, n in _group_sizes(vectors).items():
            assert n == 0 or n >= MIN_COHORT, (where, group, n)
    elif kind == "adverse_events":
        for label, vec in vectors.items():
            term, _, part = label.rpartition(".")
            values = np.asarray(vec).ravel()
            cells = values[1:2] if part == "counts" else values if part == "grades" else []
            for v in cells:  # -1: withheld by an unmasked site
                assert v <= 0 or v >= MIN_CELL, (where, term, part, values)
    elif kind == "cox":
        d = vectors.get("d")
        if d is not None:
            d = np.asarray(d)
            assert np.all((d == 0) | (d >= MIN_CELL)), (where, d[(d > 0) & (d < MIN_CELL)])


def _check_inspection(analysis: AnalysisInspection, where: str) -> None:
    if analysis.pooled is not None:
        _check_vectors(analysis.kind, analysis.pooled, f"{where} pooled")
    for site, release in analysis.releases.items():
        _check_vectors(analysis.kind, release.vectors, f"{where} {site}")


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=studies())
def test_nothing_released_or_stored_breaks_the_rules(sites: list[SimulatedSite],
                                                     spec: dict[str, Any]) -> None:
    study = make_study(f"prop-{next(_IDS)}", spec["analyses"], cohort=spec["cohort"],
                       min_sites=2, secure_aggregation=spec["secure"])
    with tempfile.TemporaryDirectory() as tmp, SimulatedNetwork(
            Path(tmp) / "net", sites, KEY, today=lambda: TODAY, site_timeout_s=10) as net:
        results = net.run(study, timeout_s=120)
        inspection = inspect_study(net.store, study.id)
    _check_results(results)
    for rnd, name, analysis in inspection.pooled_sums():
        _check_inspection(analysis, f"round {rnd} {name}")
    for r in inspection.rounds:
        for name, analysis in r.analyses.items():
            for site, release in analysis.releases.items():
                _check_vectors(analysis.kind, release.vectors, f"round {r.round} {name} {site}")

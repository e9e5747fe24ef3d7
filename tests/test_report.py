"""Tests of heron.report: a hand-written results document rendered to one offline HTML file."""

from __future__ import annotations

import copy
import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lifelines import KaplanMeierFitter

from heron.report import render_report, report_html
from heron.report_plots import at_risk_at, km_figure, time_ticks

# Group A: 10 patients; group B: 8. at_risk[i + 1] = at_risk[i] - events[i] - censored[i].
TABLE_A = {"time": [0, 30, 200, 400, 500, 900], "at_risk": [10, 10, 8, 6, 4, 2],
           "events": [0, 2, 1, 2, 0, 1], "censored": [0, 0, 1, 0, 2, 1],
           "survival": [1.0, 0.8, 0.7, 0.4667, 0.4667, 0.2333],
           "ci_lower": [1.0, 0.41, 0.33, 0.15, 0.15, 0.02],
           "ci_upper": [1.0, 0.95, 0.89, 0.74, 0.74, 0.58]}
TABLE_B = {"time": [0, 100, 150, 365, 600], "at_risk": [8, 8, 7, 6, 4],
           "events": [0, 1, 0, 2, 2], "censored": [0, 0, 1, 0, 2],
           "survival": [1.0, 0.875, 0.875, 0.5833, 0.2917],
           "ci_lower": [1.0, 0.39, 0.39, 0.21, 0.05], "ci_upper": [1.0, 0.98, 0.98, 0.84, 0.6]}
# Ticks for a 1000-day horizon are 0, 180, ..., 900. At risk = patients with time >= tick:
# A: 10 (day 0); 8 (first listed day >= 180 is 200); 6 (400); 2, 2, 2 (900).
# B: 8; 6 (365); 6 (365); 4 (600); 0 and 0 (after day 600: 4 - 2 - 2 remain).
AT_RISK_A = [10, 8, 6, 2, 2, 2]
AT_RISK_B = [8, 6, 6, 4, 0, 0]
REFUSED_SITE = "<b>mt-valletta</b>"
REFUSAL = 'cohort below 10 patients & "tiny" <script>alert(1)</script>'


def results() -> dict[str, Any]:
    rmst = {"horizon": 1000, "estimate": 612.5, "se": 88.1}
    return {
        "heron": 1, "study_id": "lbcl-os-2026", "title": "OS after CAR-T <LBCL>",
        "status": "completed",
        "sites": {"participated": ["se-uppsala", "pt-lisbon", "si-ljubljana"],
                  "refused": {REFUSED_SITE: REFUSAL}, "unreachable": ["de-heidelberg"]},
        "privacy": {"secure_aggregation": True, "time_resolution_days": 1, "min_sites": 3},
        "analyses": {
            "os": {"kind": "kaplan_meier", "sites": ["se-uppsala", "pt-lisbon"],
                   "time_resolution_days": 30, "groups": {
                "hospital_exemption": {"n": 10, "events": 6, "table": TABLE_A,
                                       "median": 400.0, "median_ci": [200.0, None],
                                       "timepoints": {"365": {"survival": 0.7,
                                                              "ci": [0.33, 0.89],
                                                              "at_risk": 6}},
                                       "rmst": rmst},
                "centrally_authorised": {"n": 8, "events": 5, "table": TABLE_B,
                                         "median": None, "median_ci": [365.0, None],
                                         "timepoints": {"365": {"survival": 0.5833,
                                                                "ci": [0.21, 0.84],
                                                                "at_risk": 6}},
                                         "rmst": rmst}}},
            "os_by_route": {"kind": "logrank", "statistic": 4.1, "df": 1, "p_value": 0.043,
                            "groups": {"hospital_exemption": {"observed": 6, "expected": 4.2},
                                       "centrally_authorised": {"observed": 5,
                                                                "expected": 6.8}}},
            "pfs": {"kind": "kaplan_meier", "error": "policy refuses <kind> & more"},
        },
    }


def at_risk_rows(doc: str, figure_index: int = 0) -> list[list[str]]:
    """Numbers at risk printed under the axis of one figure, by row (group) and tick."""
    svg = re.findall(r"<svg.*?</svg>", doc, re.S)[figure_index]
    cells = re.findall(r'<g id="atrisk-(\d+)-(\d+)">\s*<text[^>]*>([^<]*)</text>', svg)
    rows: dict[int, dict[int, str]] = {}
    for i, j, text in cells:
        rows.setdefault(int(i), {})[int(j)] = html.unescape(text)
    return [[row[j] for j in sorted(row)] for _, row in sorted(rows.items())]


def assert_offline(doc: str) -> None:
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", doc, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", doc, re.I)
    assert "@import" not in doc and "<link" not in doc.lower() and "<script" not in doc.lower()
    assert "<iframe" not in doc.lower() and "<img" not in doc.lower()


def test_report_contents(tmp_path: Path) -> None:
    out = render_report(results(), tmp_path / "sub" / "report.html")
    assert out == tmp_path / "sub" / "report.html"
    doc = out.read_text("utf-8")
    assert doc.startswith("<!DOCTYPE html>") and doc.count("<svg") == 1
    assert_offline(doc)
    assert "OS after CAR-T &lt;LBCL&gt;" in doc and "lbcl-os-2026" in doc
    assert "completed" in doc
    assert at_risk_rows(doc) == [[str(v) for v in AT_RISK_A], [str(v) for v in AT_RISK_B]]
    assert "Number at risk" in doc
    # refused site and reason, escaped; no raw markup from the results document
    assert html.escape(REFUSED_SITE) in doc and html.escape(REFUSAL) in doc
    assert REFUSED_SITE not in doc and "<script>" not in doc
    assert "Participation and disclosure" in doc and "de-heidelberg" in doc
    # the error analysis shows its reason; other analyses still render
    assert "policy refuses &lt;kind&gt; &amp; more" in doc
    assert "4.10" in doc and "0.043" in doc and "1.43" in doc  # O/E of hospital_exemption
    assert "400 (200–NR)" in doc and "NR (365–NR)" in doc  # medians, not reached
    assert "70.0% (33.0–89.0)" in doc and "612.5 (88.1)" in doc
    assert "Pooled from 2 sites: se-uppsala, pt-lisbon." in doc and "up to 30 days" in doc


def test_report_is_deterministic() -> None:
    assert report_html(results()) == report_html(results())


def test_other_kinds_and_broken_results(tmp_path: Path) -> None:
    doc_in = results()
    doc_in["privacy"].update({"coarsened": True, "time_resolution_days": 14})
    doc_in["analyses"].update({
        "os_cox": {"kind": "cox", "n": 18, "events": 11, "strata": "none",
                   "coefficients": {"age_at_infusion": {"coef": 0.012, "se": 0.006, "hr": 1.012,
                                                        "hr_ci": [1.0, 1.024], "z": 2.0,
                                                        "p": 0.045},
                                    "ecog": {"coef": 0.5, "se": 0.2, "hr": 1.65,
                                             "hr_ci": [1.11, 2.44], "z": 2.5, "p": 0.012}},
                   "log_likelihood": -30.2, "lr_test": {"statistic": 9.1, "df": 2,
                                                        "p_value": 0.011},
                   "iterations": 5},
        "relapse": {"kind": "cumulative_incidence", "groups": {"all": {
            "table": {"time": [0, 30, 90], "cif": [0.0, 0.2, 0.31],
                      "ci_lower": [0.0, 0.1, 0.2], "ci_upper": [0.0, 0.3, 0.45]},
            "timepoints": {"365": {"cif": 0.31, "ci": [0.25, 0.38]}}}}},
        "crs": {"kind": "adverse_events", "terms": {"CRS": {
            "at_risk": 350, "with_event": 240, "proportion": 0.686, "ci": [0.634, 0.734],
            "grades": {"1": 130, "2": 80, "3": 22, "4": "<5"}}}},
        "hazard": {"kind": "nelson_aalen", "groups": {"all": {"n": 10, "events": 6, "table": {
            "time": [0, 30, 200], "cumulative_hazard": [0.0, 0.2, 0.325],
            "ci_lower": [0.0, 0.05, 0.1], "ci_upper": [0.0, 0.8, 1.0]}}}},
        "future": {"kind": "quantum_survival", "value": 3},
        "broken": {"kind": "cox", "coefficients": {"age": {"hr": 1.2, "hr_ci": "bad"}}},
    })
    doc = render_report(doc_in, tmp_path / "report.html").read_text("utf-8")
    assert_offline(doc)
    assert doc.count("<svg") == 4  # KM, forest, cumulative incidence, cumulative hazard
    assert "1.65 (1.11–2.44)" in doc and "χ² = 9.10, df = 2, p = 0.011" in doc
    assert "31.0% (25.0–38.0)" in doc
    assert "&lt;5" in doc and "68.6% (63.4–73.4)" in doc
    assert "crs</strong>: 1 count" in doc and "14 days" in doc  # what was withheld
    assert "quantum_survival" in doc and "could not be rendered" in doc
    assert "Participation and disclosure" in doc


def test_ticks_and_at_risk_by_hand() -> None:
    assert time_ticks(1000) == [0, 180, 360, 540, 720, 900]
    assert time_ticks(1826) == [0, 365, 730, 1095, 1460, 1825]
    assert time_ticks(100) == [0, 30, 60, 90]
    assert at_risk_at(TABLE_A, time_ticks(1000)) == AT_RISK_A
    assert at_risk_at(TABLE_B, time_ticks(1000)) == AT_RISK_B
    assert at_risk_at(TABLE_B, [0, 100, 101, 150, 600, 601]) == [8, 8, 7, 7, 4, 0]
    truncated = {"time": [0, 10], "at_risk": [9, 9], "events": [0, 2], "censored": [0, 1]}
    assert at_risk_at(truncated, [5, 10, 11, 50]) == [9, 9, 6, 6]  # 6 still followed
    suppressed = {"time": [0, 10, 20], "at_risk": [12, 7, "<5"], "events": [0, 5, "<5"],
                  "censored": [0, 0, 0]}
    assert at_risk_at(suppressed, [0, 15, 25]) == [12, "<5", "<5"]
    assert at_risk_at({"time": [], "at_risk": []}, [0, 10]) == ["–", "–"]


def test_at_risk_matches_lifelines_event_table() -> None:
    rng = np.random.default_rng(7)
    durations = rng.integers(0, 900, 300)
    observed = rng.random(300) < 0.6
    fit = KaplanMeierFitter().fit(durations, observed)
    et = fit.event_table
    table = {"time": et.index.to_numpy().tolist(), "at_risk": et["at_risk"].tolist(),
             "events": et["observed"].tolist(), "censored": et["censored"].tolist()}
    ticks = [*range(0, 1001, 50), int(durations.max())]
    assert at_risk_at(table, ticks) == [int((durations >= t).sum()) for t in ticks]


def test_km_figure_png_and_empty_groups() -> None:
    png = km_figure({"all": {"n": 10, "table": TABLE_A}}, xmax=1000, fmt="png")
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    doc_in = copy.deepcopy(results())
    doc_in["analyses"] = {}
    doc_in["sites"] = {}
    doc = report_html(doc_in)
    assert "Refused:</strong> none" in doc and "Nothing was suppressed" in doc


@pytest.mark.parametrize("status", ["failed", "running"])
def test_status_badge(status: str) -> None:
    doc_in = results()
    doc_in["status"] = status
    assert f">{status}</span>" in report_html(doc_in)

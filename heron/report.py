"""Render a results.json document as one self-contained ``report.html``.

The report reads offline: figures are inline SVG, styles are inline and a content security
policy forbids fetching anything. Every analysis kind of docs/results-format.md has a section;
an analysis that failed or was refused shows its reason, and one that cannot be drawn shows
why instead of breaking the report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from heron import __version__
from heron.report_html import (
    count,
    day_value,
    error_box,
    esc,
    figure,
    interval,
    num,
    p_value,
    page,
    pct,
    plain,
    slug,
    status_badge,
    table,
)
from heron.report_plots import as_number, cumulative_figure, forest_figure, km_figure

log = logging.getLogger(__name__)

KIND_LABELS = {"kaplan_meier": "Kaplan–Meier", "nelson_aalen": "Nelson–Aalen",
               "logrank": "log-rank test", "cox": "Cox proportional hazards",
               "cumulative_incidence": "cumulative incidence (Aalen–Johansen)",
               "adverse_events": "adverse events"}
ENDPOINT_LABELS = {"overall_survival": "Overall survival (%)",
                   "progression_free_survival": "Progression-free survival (%)"}
PRIVACY_LABELS = {"secure_aggregation": "Secure aggregation (sites' vectors masked)",
                  "time_resolution_days": "Time resolution of released tables (days)",
                  "min_sites": "Fewest participating sites for a pooled release",
                  "coarsened": "Event tables coarsened to time bins",
                  "site_thresholds": "Site disclosure thresholds"}
_Section = Callable[[Mapping[str, Any]], str]


def render_report(results: Mapping[str, Any], out_path: Path) -> Path:
    """Write ``report.html`` for a results document and return its path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(report_html(results), encoding="utf-8")
    os.replace(tmp, out_path)
    log.info("report written to %s", out_path)
    return out_path


def report_html(results: Mapping[str, Any]) -> str:
    """The report as one HTML string."""
    study = results.get("study_id", "")
    title = results.get("title") or f"Study {study}"
    analyses = results.get("analyses") or {}
    sites = results.get("sites") or {}
    n_sites = [len(sites.get(k) or []) for k in ("participated", "refused", "unreachable")]
    parts = [f"<header><h1>{esc(title)}</h1>",
             f'<p class="meta">Study <code>{esc(study)}</code> · status '
             f"{status_badge(results.get('status', 'unknown'))} · {n_sites[0]} sites took part, "
             f"{n_sites[1]} refused, {n_sites[2]} unreachable</p></header>"]
    links = [f'<li><a href="#analysis-{slug(n)}">{esc(n)}</a></li>' for n in analyses]
    links.append('<li><a href="#participation">Participation and disclosure</a></li>')
    parts.append(f"<nav><ul>{''.join(links)}</ul></nav>")
    parts += [_analysis(name, res) for name, res in analyses.items()]
    parts.append(_participation(results))
    parts.append(f"<footer><p>heron {esc(__version__)} · results format "
                 f"{esc(results.get('heron', '?'))} · aggregate results only; no patient-level "
                 "data were pooled.</p></footer>")
    return page(f"{title} — heron report", "\n".join(parts))


def _analysis(name: str, res: Any) -> str:
    res = res if isinstance(res, Mapping) else {"error": f"malformed result: {res!r}"}
    kind = str(res.get("kind", "unknown"))
    head = (f'<section id="analysis-{slug(name)}"><h2>{esc(name)}'
            f'<span class="kind">{esc(KIND_LABELS.get(kind, kind))}</span></h2>')
    if "error" in res:
        return f"{head}{error_box(res['error'])}</section>"
    try:
        body = _provenance(res) + _RENDERERS.get(kind, _generic)(res)
    except Exception as exc:  # a report must still be written; say what could not be drawn
        log.exception("could not render analysis %s", name)
        body = error_box(f"this result could not be rendered ({type(exc).__name__}: {exc})")
    return f"{head}{body}</section>"


def _provenance(res: Mapping[str, Any]) -> str:
    """Which sites an analysis pools and at what time resolution it was released."""
    notes = []
    if isinstance(sites := res.get("sites"), list | tuple) and sites:
        notes.append(f"Pooled from {len(sites)} sites: {', '.join(map(str, sites))}.")
    days = as_number(res.get("time_resolution_days"))
    if days is not None and days > 1:
        notes.append(f"Released in time bins up to {days:g} days wide (disclosure control): "
                     "events and censorings sit at bin ends, so curves step there.")
    return f'<p class="note">{esc(" ".join(notes))}</p>' if notes else ""


def _groups(res: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    groups = res.get("groups") or {}
    return {str(g): v for g, v in groups.items() if isinstance(v, Mapping)}


def _day_key(t: str) -> tuple[float, str]:
    try:
        return float(t), t
    except ValueError:
        return float("inf"), t


def _timepoints(groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted({str(t) for g in groups.values() for t in (g.get("timepoints") or {})},
                  key=_day_key)


def _has_tables(groups: Mapping[str, Mapping[str, Any]]) -> bool:
    return any(isinstance(g.get("table"), Mapping) for g in groups.values())


def _horizon(groups: Mapping[str, Mapping[str, Any]]) -> float | None:
    for g in groups.values():
        horizon = as_number((g.get("rmst") or {}).get("horizon"))
        if horizon:
            return horizon
    return None


def _estimate_table(groups: Mapping[str, Mapping[str, Any]], key: str, label: str,
                    fmt: Callable[[Any], str] = pct) -> str:
    """Values at the study's timepoints with 95% CI and numbers at risk."""
    points = _timepoints(groups)
    if not points:
        return ""
    with_risk = any("at_risk" in tp for g in groups.values()
                    for tp in (g.get("timepoints") or {}).values() if isinstance(tp, Mapping))
    headers = ["Group"]
    for t in points:
        headers += [f"{label} at day {t} (95% CI)"] + ([f"At risk at day {t}"] * with_risk)
    rows = []
    for g, v in groups.items():
        row: list[Any] = [g]
        for t in points:
            tp = (v.get("timepoints") or {}).get(t) or {}
            row.append(f"{fmt(tp.get(key))} {interval(tp.get('ci'), fmt)}".strip())
            row += [count(tp.get("at_risk"))] * with_risk
        rows.append(row)
    return "<h3>At the study's timepoints</h3>" + table(
        headers, rows, [False] + [True] * (len(headers) - 1))


def _kaplan_meier(res: Mapping[str, Any]) -> str:
    groups = _groups(res)
    ylabel = ENDPOINT_LABELS.get(str(res.get("endpoint")), "Survival (%)")
    out = []
    if _has_tables(groups):
        svg = km_figure(groups, xmax=_horizon(groups), ylabel=ylabel)
        out.append(figure(str(svg), "Kaplan–Meier estimate with 95% confidence bands "
                          "(log(−log)); ticks mark censorings; numbers at risk (time ≥ day) "
                          "under the axis."))
    rows = []
    for g, v in groups.items():
        rmst = v.get("rmst") or {}
        median_ci = interval(v.get("median_ci"), day_value, "NR")
        rows.append([g, count(v.get("n")), count(v.get("events")),
                     f"{day_value(v.get('median'))} {median_ci}",
                     f"{num(rmst.get('estimate'))} ({num(rmst.get('se'))})",
                     count(rmst.get("horizon"))])
    out.append(table(["Group", "N", "Events", "Median, days (95% CI)", "RMST, days (SE)",
                      "RMST horizon, days"], rows, [False, True, True, True, True, True]))
    out.append(_estimate_table(groups, "survival", "Survival"))
    out.append('<p class="note">NR: not reached. RMST: restricted mean survival time.</p>')
    return "".join(out)


def _nelson_aalen(res: Mapping[str, Any]) -> str:
    groups = _groups(res)
    out = []
    if _has_tables(groups):
        svg = cumulative_figure(groups, "cumulative_hazard", "Cumulative hazard", percent=False)
        out.append(figure(str(svg), "Nelson–Aalen cumulative hazard with 95% confidence bands."))
    rows = [[g, count(v.get("n")), count(v.get("events"))] for g, v in groups.items()]
    out.append(table(["Group", "N", "Events"], rows, [False, True, True]))
    out.append(_estimate_table(groups, "cumulative_hazard", "Cumulative hazard",
                               lambda x: num(x, 3)))
    return "".join(out)


def _logrank(res: Mapping[str, Any]) -> str:
    headers = ["Statistic (χ²)", "df", "p-value"]
    row = [num(res.get("statistic"), 2), count(res.get("df")), p_value(res.get("p_value"))]
    if "stratified_by_site" in res:
        headers.append("Stratified by site")
        row.append(plain(res["stratified_by_site"]))
    test = table(headers, [row], [True, True, True, False][: len(headers)])
    rows = []
    for g, v in _groups(res).items():
        o, e = as_number(v.get("observed")), as_number(v.get("expected"))
        rows.append([g, count(v.get("observed")), num(v.get("expected"), 1),
                     num(o / e, 2) if o is not None and e else "–"])
    return test + table(["Group", "Observed events", "Expected events", "O/E"], rows,
                        [False, True, True, True])


def _cox(res: Mapping[str, Any]) -> str:
    coefs = {str(k): v for k, v in (res.get("coefficients") or {}).items()
             if isinstance(v, Mapping)}
    out = []
    if any(as_number(v.get("hr")) is not None for v in coefs.values()):
        out.append(figure(str(forest_figure(coefs)), "Hazard ratios with 95% confidence "
                          "intervals (log scale); the dashed line marks no effect."))
    rows = [[name, f"{num(v.get('hr'), 2)} {interval(v.get('hr_ci'), lambda x: num(x, 2))}",
             num(v.get("coef"), 4), num(v.get("se"), 4), num(v.get("z"), 2),
             p_value(v.get("p"))] for name, v in coefs.items()]
    out.append(table(["Covariate", "HR (95% CI)", "coef", "SE", "z", "p"], rows,
                     [False, True, True, True, True, True]))
    lr = res.get("lr_test") or {}
    model = [["N", count(res.get("n"))], ["Events", count(res.get("events"))],
             ["Strata", plain(res.get("strata", "none"))],
             ["Log-likelihood", num(res.get("log_likelihood"), 2)],
             ["Likelihood-ratio test", f"χ² = {num(lr.get('statistic'), 2)}, df = "
              f"{count(lr.get('df'))}, p = {p_value(lr.get('p_value'))}"],
             ["Iterations", count(res.get("iterations"))]]
    return "".join(out) + table(["Model", ""], model, [False, True])


def _cumulative_incidence(res: Mapping[str, Any]) -> str:
    groups = _groups(res)
    out = []
    if _has_tables(groups):
        svg = cumulative_figure(groups, "cif", "Cumulative incidence (%)")
        out.append(figure(str(svg), "Aalen–Johansen cumulative incidence of the event of "
                          "interest, with competing events, and 95% confidence bands."))
    if any("n" in v for v in groups.values()):
        out.append(table(["Group", "N", "Events"], [[g, count(v.get("n")), count(
            v.get("events"))] for g, v in groups.items()], [False, True, True]))
    out.append(_estimate_table(groups, "cif", "Cumulative incidence"))
    return "".join(out)


def _adverse_events(res: Mapping[str, Any]) -> str:
    terms = {str(k): v for k, v in (res.get("terms") or {}).items() if isinstance(v, Mapping)}
    grades = sorted({str(g) for v in terms.values() for g in (v.get("grades") or {})},
                    key=lambda g: (len(g), g))
    headers = ["Term", "At risk", "With event", "% (95% CI)", "Per 100 patient-years (95% CI)",
               "Median onset, day"] + [f"Grade {g}" for g in grades]
    rows = []
    for term, v in terms.items():
        rate = v.get("rate_per_100py", v.get("rate"))
        onset = v.get("median_onset_day", v.get("median_onset"))
        rows.append([term, count(v.get("at_risk")), count(v.get("with_event")),
                     f"{pct(v.get('proportion'))} {interval(v.get('ci'), pct)}".strip(),
                     f"{num(rate, 1)} {interval(v.get('rate_ci'), num)}".strip(),
                     num(onset, 0)] + [count((v.get("grades") or {}).get(g, 0)) for g in grades])
    return table(headers, rows, [False] + [True] * (len(headers) - 1)) + (
        '<p class="note">Counts below the disclosure threshold are shown as released '
        '(for example "&lt;5").</p>')


def _generic(res: Mapping[str, Any]) -> str:
    rows = [[k, plain(v)] for k, v in res.items()
            if k not in ("kind", "sites", "time_resolution_days")]
    return ('<p class="note">This report does not know this kind of analysis; its values '
            "follow as released.</p>" + table(["Key", "Value"], rows))


_RENDERERS: dict[str, _Section] = {
    "kaplan_meier": _kaplan_meier, "nelson_aalen": _nelson_aalen, "logrank": _logrank,
    "cox": _cox, "cumulative_incidence": _cumulative_incidence,
    "adverse_events": _adverse_events}


def _suppressed(value: Any) -> int:
    """Number of released strings like ``"<5"`` inside a value."""
    if isinstance(value, str):
        return int(value.startswith("<"))
    if isinstance(value, Mapping):
        return sum(_suppressed(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_suppressed(v) for v in value)
    return 0


def _participation(results: Mapping[str, Any]) -> str:
    sites = results.get("sites") or {}
    privacy = results.get("privacy") or {}
    analyses = results.get("analyses") or {}
    took_part = [str(s) for s in sites.get("participated") or []]
    refused = sites.get("refused") or {}
    if isinstance(refused, list | tuple):  # tolerate a bare list of site ids
        refused = {str(s): "no reason given" for s in refused}
    unreachable = [str(s) for s in sites.get("unreachable") or []]
    out = ['<section id="participation"><h2>Participation and disclosure</h2>',
           f"<p><strong>Took part ({len(took_part)}):</strong> "
           f"{esc(', '.join(took_part) or 'none')}</p>"]
    if isinstance(refused, Mapping) and refused:
        out.append(f"<h3>Refused ({len(refused)})</h3>"
                   + table(["Site", "Reason"], [[s, r] for s, r in refused.items()]))
    else:
        out.append("<p><strong>Refused:</strong> none</p>")
    out.append(f"<p><strong>Unreachable ({len(unreachable)}):</strong> "
               f"{esc(', '.join(unreachable) or 'none')}</p>")
    rows = [[PRIVACY_LABELS.get(str(k), str(k)), plain(v)] for k, v in privacy.items()]
    out.append("<h3>Privacy settings</h3>" + table(["Setting", "Value"], rows))
    out.append("<h3>What was withheld</h3>" + _withheld(privacy, analyses) + "</section>")
    return "".join(out)


def _withheld(privacy: Mapping[str, Any], analyses: Mapping[str, Any]) -> str:
    items = []
    for name, res in analyses.items():
        if isinstance(res, Mapping) and "error" in res:
            items.append(f"<li><strong>{esc(name)}</strong>: not released "
                         f"({esc(res['error'])})</li>")
        elif n := _suppressed(res):
            items.append(f"<li><strong>{esc(name)}</strong>: {n} count"
                         f"{'s' if n > 1 else ''} below the threshold shown as “&lt;N”</li>")
    resolution = as_number(privacy.get("time_resolution_days"))
    if privacy.get("coarsened") or (resolution or 1) > 1:
        items.append(f"<li>Event times were rounded up to time bins (up to "
                     f"{esc(count(resolution))} days wide) so that each bin holds enough events; "
                     "pooled estimates equal the reference analysis on those rounded times.</li>")
    if "suppressed" in privacy:
        items.append(f"<li>{esc(plain(privacy['suppressed']))}</li>")
    if not items:
        return "<p>Nothing was suppressed: every analysis was released in full.</p>"
    return f"<ul>{''.join(items)}</ul>"

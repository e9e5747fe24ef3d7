"""Journal-style figures for the report: survival curves with numbers at risk, cumulative
hazard and incidence curves, forest plots. Rendered with matplotlib's object API (no pyplot,
no global backend) to inline SVG, or PNG bytes for previews."""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from matplotlib.typing import RcKeyType

log = logging.getLogger(__name__)

# Okabe-Ito, safe for colour-blind readers; a single curve is drawn in black.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
           "#000000")
_STYLE: dict[RcKeyType, Any] = {"svg.fonttype": "none", "svg.hashsalt": "heron", "font.size": 9,
          "axes.spines.top": False, "axes.spines.right": False, "axes.linewidth": 0.8,
          "xtick.direction": "out", "ytick.direction": "out", "legend.frameon": False}
_TICK_STEPS = (7, 14, 30, 60, 90, 180, 365, 730, 1826)
_Number = int | float


def as_number(value: Any) -> float | None:
    """A finite float, or None for missing, suppressed (``"<5"``) or non-finite values."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _floats(values: Sequence[Any] | None) -> np.ndarray:
    return np.array([np.nan if as_number(v) is None else float(v) for v in values or []])


def time_ticks(xmax: float, max_ticks: int = 7) -> list[int]:
    """Day ticks from 0 with the smallest readable step giving at most ``max_ticks`` ticks."""
    xmax = max(float(xmax), 1.0)
    step = next((s for s in _TICK_STEPS if xmax / s < max_ticks), _TICK_STEPS[-1])
    while xmax / step >= max_ticks:
        step *= 2
    return list(range(0, int(xmax) + 1, step))


def at_risk_at(table: Mapping[str, Sequence[Any]], ticks: Sequence[float]) -> list[int | str]:
    """Number at risk (time >= t) at each tick, read from a Kaplan-Meier event table.

    Nobody leaves the risk set between two listed days, so the number at risk at ``t`` is
    the one at the first listed day >= ``t``; after the last listed day it is the last
    number at risk minus that day's events and censorings. A suppressed count (``"<5"``)
    is shown as it was released; a number that cannot be derived is shown as ``"–"``.
    """
    time = _floats(table.get("time"))
    at_risk, events, censored = (list(table.get(k) or []) for k in ("at_risk", "events",
                                                                      "censored"))
    out: list[int | str] = []
    for t in ticks:
        i = int(np.searchsorted(time, t, side="left"))
        if i < len(time):
            value = at_risk[i] if i < len(at_risk) else None
            number = as_number(value)
            out.append(int(number) if number is not None else str(value or "–"))
            continue
        left, gone, lost = (as_number(seq[-1]) if seq else None
                            for seq in (at_risk, events, censored))
        if len(time) == 0 or left is None or gone is None or lost is None:
            out.append(str(at_risk[-1]) if at_risk and isinstance(at_risk[-1], str) else "–")
        else:
            out.append(max(int(left - gone - lost), 0))
    return out


def _svg(fig: Figure, fmt: str = "svg") -> str | bytes:
    """Serialise a figure: inline SVG text (no XML prolog, no metadata) or PNG bytes."""
    if fmt == "png":
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150, metadata={"Software": None})
        return buf.getvalue()
    text = io.StringIO()
    fig.savefig(text, format="svg", metadata={"Date": None, "Creator": None})
    svg = text.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)


def _step_band(ax: Axes, time: np.ndarray, value: np.ndarray, lower: np.ndarray,
               upper: np.ndarray, color: str, label: str) -> None:
    ax.fill_between(time, lower, upper, step="post", color=color, alpha=0.15, linewidth=0)
    ax.step(time, value, where="post", color=color, linewidth=1.5, label=label)


def _colors(n: int) -> list[str]:
    return ["#000000"] if n == 1 else [PALETTE[i % len(PALETTE)] for i in range(n)]


def _curve(table: Mapping[str, Any], key: str,
           start: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Time, value and band of a step curve, starting at day 0 with ``start``."""
    time = _floats(table.get("time"))
    cols = [_floats(table.get(k)) for k in (key, "ci_lower", "ci_upper")]
    cols = [c if len(c) == len(time) else np.full(len(time), np.nan) for c in cols]
    if len(time) == 0 or time[0] > 0:
        time = np.concatenate([[0.0], time])
        cols = [np.concatenate([[start], c]) for c in cols]
    value, lower, upper = cols
    return time, value, lower, upper


def km_figure(groups: Mapping[str, Mapping[str, Any]], xmax: float | None = None,
              ylabel: str = "Survival (%)", fmt: str = "svg") -> str | bytes:
    """Kaplan-Meier curves with 95% bands, censoring ticks and a numbers-at-risk table."""
    names = [g for g in groups if isinstance(groups[g].get("table"), Mapping)]
    tables = {g: groups[g]["table"] for g in names}
    last = max((np.nanmax(_floats(t.get("time")), initial=0.0) for t in tables.values()),
               default=0.0)
    xmax = float(xmax) if xmax else max(last, 1.0)
    ticks = time_ticks(xmax)
    rows = max(len(names), 1)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(7.0, 3.9 + 0.24 * rows + 0.35), layout="constrained")
        grid = fig.add_gridspec(2, 1, height_ratios=[3.9, 0.24 * rows + 0.35])
        ax, risk = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
        for color, g in zip(_colors(len(names)), names, strict=True):
            time, surv, low, up = _curve(tables[g], "survival", 1.0)
            n = groups[g].get("n")
            _step_band(ax, time, surv, low, up, color, f"{g} (n={n})" if n is not None else g)
            cens = _floats([1 if isinstance(c, str) else c
                            for c in tables[g].get("censored") or []])
            cens = np.concatenate([[0.0], cens]) if len(cens) < len(time) else cens
            hit = np.nan_to_num(cens) > 0
            ax.plot(time[hit], surv[hit], linestyle="none", marker="|", markersize=5,
                    markeredgewidth=0.8, color=color)
        ax.set(xlim=(0, xmax), ylim=(0, 1.02), xticks=ticks, ylabel=ylabel,
               xlabel="Days since infusion")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{100 * y:.0f}"))
        ax.legend(loc="lower left")
        risk.set(xlim=(0, xmax), ylim=(rows - 0.5, -0.9), xticks=ticks)
        risk.tick_params(bottom=False, labelbottom=False, left=False, pad=16)
        for side in ("left", "bottom"):
            risk.spines[side].set_visible(False)
        risk.set_yticks(range(len(names)), labels=names)
        risk.text(0, -0.75, "Number at risk", fontweight="bold", ha="left", va="center",
                  transform=risk.get_yaxis_transform())
        for i, (color, g) in enumerate(zip(_colors(len(names)), names, strict=True)):
            risk.get_yticklabels()[i].set_color(color)
            for j, (t, value) in enumerate(zip(ticks, at_risk_at(tables[g], ticks),
                                               strict=True)):
                risk.text(t, i, str(value), ha="center", va="center", gid=f"atrisk-{i}-{j}")
        return _svg(fig, fmt)


def cumulative_figure(groups: Mapping[str, Mapping[str, Any]], key: str, ylabel: str,
                      xmax: float | None = None, percent: bool = True,
                      fmt: str = "svg") -> str | bytes:
    """Increasing step curves with 95% bands (cumulative hazard or incidence)."""
    names = [g for g in groups if isinstance(groups[g].get("table"), Mapping)]
    curves = {g: _curve(groups[g]["table"], key, 0.0) for g in names}
    top = max((np.nanmax(np.concatenate([c[1], c[3]]), initial=0.0) for c in curves.values()),
              default=0.0)
    last = max((c[0][-1] for c in curves.values()), default=1.0)
    xmax = float(xmax) if xmax else max(last, 1.0)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(7.0, 3.9), layout="constrained")
        ax = fig.add_subplot()
        for color, g in zip(_colors(len(names)), names, strict=True):
            _step_band(ax, *curves[g], color, g)
        ceiling = min(math.ceil(top * 1.15 * 10) / 10, 1.0) if percent else top * 1.05
        ax.set(xlim=(0, xmax), xticks=time_ticks(xmax), xlabel="Days since infusion",
               ylabel=ylabel, ylim=(0, max(ceiling, 0.1)))
        if percent:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{100 * y:.0f}"))
        if len(names) > 1:
            ax.legend(loc="upper left")
        return _svg(fig, fmt)


def forest_figure(coefficients: Mapping[str, Mapping[str, Any]],
                  fmt: str = "svg") -> str | bytes:
    """Hazard ratios with 95% confidence intervals on a log scale."""
    names = [c for c in coefficients if as_number(coefficients[c].get("hr")) is not None]
    hr = np.array([float(coefficients[c]["hr"]) for c in names])
    ci = np.array([[as_number(v) or np.nan for v in (coefficients[c].get("hr_ci") or [None] * 2)]
                   for c in names]).reshape(len(names), 2)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(7.0, 1.0 + 0.32 * max(len(names), 1)), layout="constrained")
        ax = fig.add_subplot()
        y = np.arange(len(names))
        ok = np.isfinite(ci).all(axis=1) & (ci > 0).all(axis=1)
        ax.hlines(y[ok], ci[ok, 0], ci[ok, 1], color="#000000", linewidth=1.2)
        ax.plot(hr, y, linestyle="none", marker="s", markersize=5, color="#000000")
        ax.axvline(1.0, color="#777777", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        values = np.concatenate([hr, ci[ok].ravel(), [1.0]])
        lo, hi = float(np.min(values[values > 0])) / 1.25, float(np.max(values)) * 1.25
        nice = [v * 10.0**e for e in range(-3, 4) for v in (1, 2, 5)] + [0.75, 1.5]
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator([v for v in nice if lo <= v <= hi]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(y, labels=names)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlabel("Hazard ratio (95% CI, log scale)")
        ax.spines["left"].set_visible(False)
        ax.tick_params(left=False)
        for i in range(len(names)):  # the numbers, as a column right of the plot
            low, up = (f"{v:.2f}" if np.isfinite(v) else "–" for v in ci[i])
            ax.text(1.02, i, f"{hr[i]:.2f} ({low}–{up})", va="center",
                    transform=ax.get_yaxis_transform())
        ax.text(1.02, -0.9, "HR (95% CI)", fontweight="bold", va="center",
                transform=ax.get_yaxis_transform())
        return _svg(fig, fmt)

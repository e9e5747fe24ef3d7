"""HTML building blocks for the report: escaping, number formats, tables and the page.

Every string that comes from a results document goes through :func:`esc`; numbers are
formatted here so all sections print them alike.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from heron.report_plots import as_number

MISSING = "–"
CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; color: #1a1a1a; max-width: 980px; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.4rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
.meta { color: #555; margin-top: 0; }
.kind { font-size: .8rem; font-weight: normal; color: #555; margin-left: .5rem; }
.status { padding: .05rem .45rem; border-radius: .25rem; font-weight: 600; }
.status-completed { background: #e3f3e6; color: #1b5e20; }
.status-other { background: #fff3cd; color: #7a5a00; }
.status-failed { background: #fde2e1; color: #8e1c16; }
.error { border-left: 4px solid #c62828; background: #fdecea; padding: .5rem .8rem; }
.note { color: #555; font-size: .9rem; }
figure { margin: 1rem 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { font-size: .85rem; color: #555; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e2e2e2; text-align: left;
         vertical-align: top; }
th { border-bottom: 1.5px solid #333; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-size: .9em; }
nav ul { columns: 2; padding-left: 1.2rem; }
footer { margin-top: 3rem; color: #666; font-size: .8rem; border-top: 1px solid #ddd; }
@media print { body { max-width: none; } h2 { break-after: avoid; }
               figure { break-inside: avoid; } }
"""
# No resource may be fetched: the report must read the same offline as online.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


class Raw(str):
    """Markup that is already safe (built here), not escaped again by :func:`cell`."""


def esc(value: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(value), quote=True)


def slug(value: Any) -> str:
    """An id-safe slug of ``value`` (letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-") or "x"


def count(value: Any) -> str:
    """A count: integers as is, suppressed strings (``"<5"``) as released."""
    if value is None:
        return MISSING
    number = as_number(value)
    if number is None:
        return str(value)
    return f"{number:.0f}" if float(number).is_integer() else f"{number:.1f}"


def num(value: Any, digits: int = 1, missing: str = MISSING) -> str:
    """A number with ``digits`` decimals; non-numbers are shown as released."""
    number = as_number(value)
    if number is None:
        return missing if value is None else str(value)
    return f"{number:.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    """A proportion as a percentage."""
    number = as_number(value)
    return MISSING if number is None else f"{100 * number:.{digits}f}%"


def interval(ci: Any, fmt: Any = num, missing: str = MISSING) -> str:
    """``(lower–upper)`` from a two-element list; missing bounds shown as ``missing``.

    Percentages print the unit once, as journals do: ``54.5% (50.1–58.6)``.
    """
    if not isinstance(ci, Sequence) or isinstance(ci, str) or len(ci) != 2:
        return ""
    lo, hi = (missing if as_number(v) is None else fmt(v).rstrip("%") for v in ci)
    return f"({lo}–{hi})"


def p_value(value: Any) -> str:
    """A p-value as journals print it."""
    p = as_number(value)
    if p is None:
        return MISSING if value is None else str(value)
    if p < 0.001:
        return "<0.001"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def day_value(value: Any) -> str:
    """A day count such as a median; None means not reached."""
    number = as_number(value)
    return "NR" if number is None else f"{number:g}"


def cell(value: Any, numeric: bool = False) -> str:
    """One table cell; numeric cells are right-aligned."""
    text = value if isinstance(value, Raw) else esc(value)
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
          numeric: Sequence[bool] | None = None, caption: str | None = None) -> str:
    """An HTML table; ``numeric[i]`` right-aligns column ``i``."""
    numeric = list(numeric or [False] * len(headers))
    head = "".join(f'<th class="num">{esc(h)}</th>' if n else f"<th>{esc(h)}</th>"
                   for h, n in zip(headers, numeric, strict=True))
    body = "".join("<tr>" + "".join(cell(v, n) for v, n in zip(row, numeric, strict=True))
                   + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(svg: str, caption: str) -> str:
    """An inline SVG figure with its caption."""
    return f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def error_box(message: Any) -> str:
    """A highlighted message for a failed or refused analysis."""
    return f'<p class="error"><strong>Not available:</strong> {esc(message)}</p>'


def status_badge(status: Any) -> str:
    """The study status as a coloured badge."""
    kind = {"completed": "completed", "failed": "failed"}.get(str(status), "other")
    return f'<span class="status status-{kind}">{esc(status)}</span>'


def plain(value: Any) -> str:
    """Compact text for a value of unknown shape (settings, unknown result kinds)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {plain(v)}" for k, v in value.items()) or MISSING
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value) or "none"
    return MISSING if value is None else str(value)


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML document."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            "</body>\n</html>\n")

"""The study format (docs/study-format.md) as frozen dataclasses.

A study is parsed from a YAML or JSON document into :class:`Study`. Unknown keys are errors
(a typo must never widen a cohort); every error names the offending field. Every size parameter
is bounded by :mod:`protocol.limits`, and YAML is read by :mod:`protocol.study_yaml` (no
repeated keys, no YAML 1.1 octal, sexagesimal or yes/no values), so the study that is signed
is the one the coordinator read.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol import limits
from protocol.errors import StudyFormatError
from protocol.study_yaml import load_study_yaml
from protocol.vocabulary import GROUP_BY

__all__ = [
    "ANALYSIS_KINDS",
    "ENDPOINTS",
    "GROUP_BY",
    "Analysis",
    "Cohort",
    "Privacy",
    "Study",
    "load_study_document",
    "parse_study",
    "study_from_dict",
    "study_problems",
    "study_to_dict",
]

FORMAT_VERSION = 1
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")
ANALYSIS_KINDS = (
    "kaplan_meier",
    "nelson_aalen",
    "logrank",
    "cox",
    "cumulative_incidence",
    "adverse_events",
)
SURVIVAL_ENDPOINTS = ("overall_survival", "progression_free_survival")
COMPETING_ENDPOINTS = ("relapse", "non_relapse_mortality")  # plus ae:<TERM>[>=G]
ENDPOINTS = SURVIVAL_ENDPOINTS + COMPETING_ENDPOINTS
CENSOR_EVENTS = ("subsequent_cell_therapy", "subsequent_hct")
COHORT_LIST_KEYS = (
    "atmp_class",
    "route",
    "origin",
    "product",
    "indication_group",
    "sex",
    "disease_status",
)
MAX_HORIZON_DAYS = limits.MAX_HORIZON_DAYS
DATE_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# what a YAML 1.1 reader would take for a number (octal 010, sexagesimal 1:30, 1_000, 0x1F)
_NOT_DECIMAL = re.compile(r"^[-+]?(?:0[0-9_]+|0[xXoObB][0-9a-fA-F_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+"
                          r"|[0-9][0-9_]*_[0-9_]*)$")
AE_ENDPOINT = re.compile(r"^ae:([A-Za-z_]+)(?:>=([1-5]))?$")


@dataclass(frozen=True)
class Cohort:
    """Cohort filter; every set field is ANDed, a tuple means "any of"."""

    atmp_class: tuple[str, ...] | None = None
    route: tuple[str, ...] | None = None
    origin: tuple[str, ...] | None = None
    product: tuple[str, ...] | None = None
    indication_group: tuple[str, ...] | None = None
    sex: tuple[str, ...] | None = None
    disease_status: tuple[str, ...] | None = None
    infusion_date_from: dt.date | None = None
    infusion_date_to: dt.date | None = None
    age_min: int | None = None
    age_max: int | None = None
    first_infusion_only: bool = True


@dataclass(frozen=True)
class Analysis:
    """One analysis of a study; which fields matter depends on ``kind``."""

    name: str
    kind: str
    endpoint: str | None = None
    group_by: str | None = None
    timepoints: tuple[int, ...] = ()
    stratify_by_site: bool = False
    covariates: tuple[str, ...] = ()
    strata: str = "none"
    terms: tuple[str, ...] = ()
    by_grade: bool = False
    window_days: int | None = None


@dataclass(frozen=True)
class Privacy:
    """Privacy settings of a study."""

    secure_aggregation: bool = True
    min_sites: int = 3


@dataclass(frozen=True)
class Study:
    """A parsed, validated study specification."""

    id: str
    title: str
    expires: dt.date
    horizon_days: int
    analyses: tuple[Analysis, ...]
    cohort: Cohort = field(default_factory=Cohort)
    censor_at: tuple[str, ...] = ()
    privacy: Privacy = field(default_factory=Privacy)
    heron: int = FORMAT_VERSION


class _Problems:
    """Collects every problem of a study document, each as ``"<field path>: <message>"``."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_keys(obj: object, allowed: set[str], required: set[str], path: str,
                pr: _Problems) -> Mapping[str, Any] | None:
    """``obj`` when it is a mapping (its unknown and missing keys recorded), else None."""
    if not isinstance(obj, Mapping):
        pr.add(path or "study", "must be a mapping")
        return None
    for key in sorted(set(obj) - allowed, key=str):
        pr.add(_join(path, key), "unknown key")
    for key in sorted(required - set(obj)):
        pr.add(_join(path, key), "required key missing")
    return obj


def _str(value: object, path: str, pr: _Problems,
         max_length: int = limits.MAX_VALUE_LENGTH) -> str | None:
    if not isinstance(value, str) or not value:
        pr.add(path, "must be a non-empty string")
        return None
    if len(value) > max_length:
        pr.add(path, f"must be at most {max_length} characters (has {len(value)})")
        return None
    return value


def _too_long(value: object, path: str, what: str, limit: int, pr: _Problems) -> bool:
    """Record a problem when the list ``value`` has more than ``limit`` items."""
    if isinstance(value, list) and len(value) > limit:
        pr.add(path, f"at most {limit} {what} (has {len(value)})")
        return True
    return False


def _int(value: object, path: str, pr: _Problems, minimum: int | None = None,
         maximum: int | None = None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and _NOT_DECIMAL.match(value):
            pr.add(path, f"must be an integer; {value!r} is not read as a number (write "
                         "decimal digits without a leading zero, e.g. 10 or 90)")
        else:
            pr.add(path, "must be an integer")
        return None
    if minimum is not None and value < minimum:
        pr.add(path, f"must be >= {minimum}")
        return None
    if maximum is not None and value > maximum:
        pr.add(path, f"must be at most {maximum}")
        return None
    return value


def _bool(value: object, path: str, pr: _Problems) -> bool | None:
    if not isinstance(value, bool):
        pr.add(path, "must be true or false")
        return None
    return value


def _date(value: object, path: str, pr: _Problems) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and DATE_PATTERN.match(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    pr.add(path, "must be an ISO 8601 date (YYYY-MM-DD)")
    return None


def _str_list(value: object, path: str, pr: _Problems,
              choices: tuple[str, ...] | None = None, limit: int = limits.MAX_LIST_VALUES,
              what: str = "values") -> tuple[str, ...] | None:
    """A non-empty list of at most ``limit`` strings (a single string counts as a list of one;
    ints as text)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        pr.add(path, "must be a non-empty list")
        return None
    if _too_long(value, path, what, limit, pr):
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        s = _str(item, f"{path}[{i}]", pr)
        if s is None:
            continue
        if choices is not None and s not in choices:
            pr.add(f"{path}[{i}]", f"{s!r} is not one of {', '.join(choices)}")
            continue
        out.append(s)
    return tuple(out) if len(out) == len(value) else None


def _cohort(obj: object, pr: _Problems) -> Cohort:
    allowed = {*COHORT_LIST_KEYS, "infusion_date", "age_at_infusion", "first_infusion_only"}
    obj = _check_keys(obj, allowed, set(), "cohort", pr)
    if obj is None:
        return Cohort()
    kwargs: dict[str, Any] = {}
    for key in COHORT_LIST_KEYS:
        if key in obj:
            kwargs[key] = _str_list(obj[key], f"cohort.{key}", pr)
    for key, path, lower, upper, parse in (
        ("infusion_date", "cohort.infusion_date", "from", "to", _date),
        ("age_at_infusion", "cohort.age_at_infusion", "min", "max",
         lambda v, p, pr: _int(v, p, pr, 0, limits.MAX_AGE_YEARS)),
    ):
        rng = _check_keys(obj[key], {lower, upper}, set(), path, pr) if key in obj else None
        if rng is None:
            continue
        field_prefix = "infusion_date_" if key == "infusion_date" else "age_"
        for bound in (lower, upper):
            if bound in rng:
                kwargs[field_prefix + bound] = parse(rng[bound], f"{path}.{bound}", pr)
    if "first_infusion_only" in obj:
        first = _bool(obj["first_infusion_only"], "cohort.first_infusion_only", pr)
        kwargs["first_infusion_only"] = True if first is None else first
    return Cohort(**kwargs)


def _endpoint(value: object, kind: str, path: str, pr: _Problems) -> str | None:
    s = _str(value, path, pr)
    if s is None:
        return None
    if kind in ("kaplan_meier", "nelson_aalen", "logrank", "cox"):
        if s not in SURVIVAL_ENDPOINTS:
            pr.add(path, f"{s!r} is not one of {', '.join(SURVIVAL_ENDPOINTS)}")
            return None
    elif s not in COMPETING_ENDPOINTS and not AE_ENDPOINT.match(s):
        pr.add(path, f"{s!r} is not relapse, non_relapse_mortality or ae:<TERM>[>=G]")
        return None
    return s


_ANALYSIS_KEYS: dict[str, set[str]] = {
    "kaplan_meier": {"endpoint", "group_by", "timepoints"},
    "nelson_aalen": {"endpoint", "group_by", "timepoints"},
    "logrank": {"endpoint", "group_by", "stratify_by_site"},
    "cox": {"endpoint", "covariates", "strata"},
    "cumulative_incidence": {"endpoint", "group_by", "timepoints"},
    "adverse_events": {"terms", "by_grade", "window_days"},
}


def _strata(value: object, path: str, pr: _Problems) -> str | None:
    s = _str(value, path, pr)
    if s is not None and s not in ("none", "site"):
        pr.add(path, "must be none or site")
    return s


# Keys of an analysis whose value is checked on its own, in the order problems are reported.
_ANALYSIS_VALUES: dict[str, Callable[[object, str, _Problems], object]] = {
    "stratify_by_site": _bool,
    "covariates": lambda value, path, pr: _str_list(value, path, pr, None,
                                                    limits.MAX_COVARIATES, "covariates"),
    "strata": _strata,
    "terms": lambda value, path, pr: _str_list(value, path, pr, None, limits.MAX_TERMS, "terms"),
    "by_grade": _bool,
    "window_days": lambda value, path, pr: _int(value, path, pr, 0, limits.MAX_WINDOW_DAYS),
}


def _analysis(obj: object, path: str, horizon: int | None, pr: _Problems) -> Analysis | None:
    """One analysis; None when it has a problem (every problem is recorded)."""
    before = len(pr.items)
    obj = _check_keys(obj, {"name", "kind", *set().union(*_ANALYSIS_KEYS.values())},
                      {"name", "kind"}, path, pr)
    if obj is None:
        return None
    name = (_str(obj["name"], f"{path}.name", pr, limits.MAX_NAME_LENGTH)
            if "name" in obj else None)
    kind = _str(obj["kind"], f"{path}.kind", pr) if "kind" in obj else None
    if kind is not None and kind not in ANALYSIS_KINDS:
        pr.add(f"{path}.kind", f"{kind!r} is not one of {', '.join(ANALYSIS_KINDS)}")
        kind = None
    if kind is None:
        return None
    for key in sorted(set(obj) & set().union(*_ANALYSIS_KEYS.values()) - _ANALYSIS_KEYS[kind]):
        pr.add(f"{path}.{key}", f"not a key of kind {kind}")
    required = {"endpoint"} if kind != "adverse_events" else {"terms"}
    if kind == "logrank":
        required.add("group_by")
    if kind == "cox":
        required.add("covariates")
    for key in sorted(required - set(obj)):
        pr.add(f"{path}.{key}", "required key missing")
    kw: dict[str, Any] = {"name": name, "kind": kind}
    if "endpoint" in obj:
        kw["endpoint"] = _endpoint(obj["endpoint"], kind, f"{path}.endpoint", pr)
    if "group_by" in obj:
        g = _str(obj["group_by"], f"{path}.group_by", pr)
        if g is not None and g not in GROUP_BY:
            pr.add(f"{path}.group_by", f"{g!r} is not one of {', '.join(GROUP_BY)}")
        kw["group_by"] = g
    if "timepoints" in obj:
        tps = obj["timepoints"]
        if not isinstance(tps, list):
            pr.add(f"{path}.timepoints", "must be a list of days")
        elif not _too_long(tps, f"{path}.timepoints", "timepoints", limits.MAX_TIMEPOINTS, pr):
            days = tuple(_int(t, f"{path}.timepoints[{i}]", pr, 0) for i, t in enumerate(tps))
            for i, t in enumerate(days):
                if t is not None and horizon is not None and t > horizon:
                    pr.add(f"{path}.timepoints[{i}]", f"{t} is beyond horizon_days {horizon}")
            kw["timepoints"] = days
    for key, parse in _ANALYSIS_VALUES.items():
        if key in obj:
            kw[key] = parse(obj[key], f"{path}.{key}", pr)
    if len(pr.items) > before:
        return None
    return Analysis(**kw)


_TOP_KEYS = {"heron", "id", "title", "expires", "horizon_days", "cohort", "censor_at",
             "analyses", "privacy"}
_REQUIRED_TOP_KEYS = {"heron", "id", "title", "expires", "horizon_days", "analyses"}


def _parse(obj: object) -> tuple[Study | None, list[str]]:
    """The study and an empty list, or None and every problem of the document."""
    pr = _Problems()
    doc = _check_keys(obj, _TOP_KEYS, _REQUIRED_TOP_KEYS, "", pr)
    if doc is None:
        return None, pr.items
    if "heron" in doc and doc["heron"] != FORMAT_VERSION:
        pr.add("heron", f"unsupported format version {doc['heron']!r} (expected 1)")
    sid = _str(doc["id"], "id", pr, limits.MAX_ID_LENGTH) if "id" in doc else None
    if sid is not None and not ID_PATTERN.match(sid):
        pr.add("id", "must match [a-z0-9][a-z0-9-]{2,63}")
    title = _str(doc["title"], "title", pr, limits.MAX_TITLE_LENGTH) if "title" in doc else None
    expires = _date(doc["expires"], "expires", pr) if "expires" in doc else None
    horizon = (_int(doc["horizon_days"], "horizon_days", pr, 1, MAX_HORIZON_DAYS)
               if "horizon_days" in doc else None)
    cohort = _cohort(doc.get("cohort", {}), pr)
    censor_at: tuple[str, ...] | None = ()
    if "censor_at" in doc:
        censor_at = _str_list(doc["censor_at"], "censor_at", pr, CENSOR_EVENTS)
    analyses: list[Analysis | None] = []
    if "analyses" in doc:
        raw = doc["analyses"]
        if not isinstance(raw, list) or not raw:
            pr.add("analyses", "must be a non-empty list")
        elif not _too_long(raw, "analyses", "analyses", limits.MAX_ANALYSES, pr):
            analyses = [_analysis(a, f"analyses[{i}]", horizon, pr) for i, a in enumerate(raw)]
            names = [a.get("name") if isinstance(a, Mapping) else None for a in raw]
            for i, n in enumerate(names):
                if isinstance(n, str) and n and names.index(n) != i:
                    pr.add(f"analyses[{i}].name", f"duplicate analysis name {n!r}")
    privacy = Privacy()
    p = (_check_keys(doc["privacy"], {"secure_aggregation", "min_sites"}, set(), "privacy", pr)
         if "privacy" in doc else None)
    if p is not None:
        secure = _bool(p.get("secure_aggregation", True), "privacy.secure_aggregation", pr)
        min_sites = _int(p.get("min_sites", 3), "privacy.min_sites", pr, 1, limits.MAX_MIN_SITES)
        if secure is not None and min_sites is not None:
            privacy = Privacy(secure_aggregation=secure, min_sites=min_sites)
    if pr.items:
        return None, pr.items
    assert sid is not None and title is not None and expires is not None
    assert horizon is not None and censor_at is not None
    return Study(
        id=sid,
        title=title,
        expires=expires,
        horizon_days=horizon,
        analyses=tuple(a for a in analyses if a is not None),
        cohort=cohort,
        censor_at=censor_at,
        privacy=privacy,
    ), []


def study_problems(obj: object) -> list[str]:
    """Every problem of a decoded study document, each ``"<field path>: <message>"``.

    An empty list means :func:`study_from_dict` accepts the document. Paths look like
    ``analyses[2].endpoint`` or ``cohort.age_at_infusion.min``.
    """
    return _parse(obj)[1]


def study_from_dict(obj: object) -> Study:
    """Validate a decoded study document and build a :class:`Study`.

    Raises
    ------
    StudyFormatError
        When a key is unknown or missing or a value is invalid. The message lists every
        problem (``"; "``-separated), each naming its field.
    """
    study, problems = _parse(obj)
    if study is None:
        raise StudyFormatError("; ".join(problems))
    return study


def load_study_document(text: str | bytes) -> Any:
    """Decode a YAML or JSON study document (JSON is valid YAML) without validating it.

    The text is read by :func:`protocol.study_yaml.load_study_yaml`: a repeated key is an
    error, and only ``true``/``false``, decimal integers without a leading zero and plain
    decimal numbers are read as booleans and numbers (``010``, ``1:30`` and ``yes`` are
    strings).

    Raises
    ------
    StudyFormatError
        When the text is longer than :data:`protocol.limits.MAX_STUDY_BYTES`, is not valid
        YAML or JSON, or repeats a key (the message names the key and its lines).
    """
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > limits.MAX_STUDY_BYTES:
        raise StudyFormatError(f"study document is {size} bytes; at most "
                               f"{limits.MAX_STUDY_BYTES} bytes")
    return load_study_yaml(text)


def parse_study(text: str | bytes) -> Study:
    """Parse a YAML or JSON study document (JSON is valid YAML)."""
    return study_from_dict(load_study_document(text))


def study_to_dict(study: Study) -> dict[str, Any]:
    """The study as a plain JSON-ready document; ``study_from_dict`` reads it back equal."""
    c = study.cohort
    cohort: dict[str, Any] = {k: list(getattr(c, k)) for k in COHORT_LIST_KEYS
                              if getattr(c, k) is not None}
    if c.infusion_date_from or c.infusion_date_to:
        cohort["infusion_date"] = {
            k: v.isoformat() for k, v in (("from", c.infusion_date_from),
                                          ("to", c.infusion_date_to)) if v is not None}
    if c.age_min is not None or c.age_max is not None:
        cohort["age_at_infusion"] = {k: v for k, v in (("min", c.age_min), ("max", c.age_max))
                                     if v is not None}
    cohort["first_infusion_only"] = c.first_infusion_only
    analyses = []
    for a in study.analyses:
        d: dict[str, Any] = {"name": a.name, "kind": a.kind}
        for key in sorted(_ANALYSIS_KEYS[a.kind]):
            value = getattr(a, key)
            if value is None or (key == "timepoints" and not value):
                continue
            d[key] = list(value) if isinstance(value, tuple) else value
        analyses.append(d)
    out: dict[str, Any] = {
        "heron": study.heron,
        "id": study.id,
        "title": study.title,
        "expires": study.expires.isoformat(),
        "horizon_days": study.horizon_days,
        "cohort": cohort,
        "analyses": analyses,
        "privacy": {"secure_aggregation": study.privacy.secure_aggregation,
                    "min_sites": study.privacy.min_sites},
    }
    if study.censor_at:
        out["censor_at"] = list(study.censor_at)
    return out


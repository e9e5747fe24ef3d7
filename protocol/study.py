"""The study specification (study.md) as frozen dataclasses.

A study is parsed from a YAML or JSON document into :class:`Study`. Unknown keys are errors
(a typo must never widen a cohort); every error names the offending field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from protocol.errors import StudyFormatError

__all__ = [
    "ANALYSIS_KINDS",
    "ENDPOINTS",
    "GROUP_BY",
    "Analysis",
    "Cohort",
    "Privacy",
    "Study",
    "parse_study",
    "study_from_dict",
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
GROUP_BY = (
    "sex",
    "route",
    "atmp_class",
    "origin",
    "product",
    "indication_group",
    "disease_status",
    "ecog",
    "site",
)
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


def _fail(path: str, message: str) -> StudyFormatError:
    return StudyFormatError(f"{path}: {message}")


def _check_keys(obj: Any, allowed: set[str], required: set[str], path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _fail(path, "must be a mapping")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}" if path else unknown[0], "unknown key")
    missing = sorted(required - set(obj))
    if missing:
        raise _fail(f"{path}.{missing[0]}" if path else missing[0], "required key missing")
    return obj


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, "must be a non-empty string")
    return value


def _int(value: Any, path: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, "must be an integer")
    if minimum is not None and value < minimum:
        raise _fail(path, f"must be >= {minimum}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "must be true or false")
    return value


def _date(value: Any, path: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise _fail(path, "must be an ISO 8601 date (YYYY-MM-DD)")


def _str_list(value: Any, path: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(path, "must be a non-empty list")
    out = []
    for i, item in enumerate(value):
        s = _str(str(item) if isinstance(item, int) and not isinstance(item, bool) else item,
                 f"{path}[{i}]")
        if choices is not None and s not in choices:
            raise _fail(f"{path}[{i}]", f"{s!r} is not one of {', '.join(choices)}")
        out.append(s)
    return tuple(out)


def _cohort(obj: Any) -> Cohort:
    allowed = {*COHORT_LIST_KEYS, "infusion_date", "age_at_infusion", "first_infusion_only"}
    obj = _check_keys(obj, allowed, set(), "cohort")
    kwargs: dict[str, Any] = {k: _str_list(obj[k], f"cohort.{k}") for k in COHORT_LIST_KEYS
                              if k in obj}
    if "infusion_date" in obj:
        rng = _check_keys(obj["infusion_date"], {"from", "to"}, set(), "cohort.infusion_date")
        if "from" in rng:
            kwargs["infusion_date_from"] = _date(rng["from"], "cohort.infusion_date.from")
        if "to" in rng:
            kwargs["infusion_date_to"] = _date(rng["to"], "cohort.infusion_date.to")
    if "age_at_infusion" in obj:
        rng = _check_keys(obj["age_at_infusion"], {"min", "max"}, set(), "cohort.age_at_infusion")
        if "min" in rng:
            kwargs["age_min"] = _int(rng["min"], "cohort.age_at_infusion.min", 0)
        if "max" in rng:
            kwargs["age_max"] = _int(rng["max"], "cohort.age_at_infusion.max", 0)
    if "first_infusion_only" in obj:
        kwargs["first_infusion_only"] = _bool(obj["first_infusion_only"],
                                              "cohort.first_infusion_only")
    return Cohort(**kwargs)


def _endpoint(value: Any, kind: str, path: str) -> str:
    s = _str(value, path)
    if kind in ("kaplan_meier", "nelson_aalen", "logrank", "cox"):
        if s not in SURVIVAL_ENDPOINTS:
            raise _fail(path, f"{s!r} is not one of {', '.join(SURVIVAL_ENDPOINTS)}")
    elif s not in COMPETING_ENDPOINTS and not AE_ENDPOINT.match(s):
        raise _fail(path, f"{s!r} is not relapse, non_relapse_mortality or ae:<TERM>[>=G]")
    return s


_ANALYSIS_KEYS: dict[str, set[str]] = {
    "kaplan_meier": {"endpoint", "group_by", "timepoints"},
    "nelson_aalen": {"endpoint", "group_by", "timepoints"},
    "logrank": {"endpoint", "group_by", "stratify_by_site"},
    "cox": {"endpoint", "covariates", "strata"},
    "cumulative_incidence": {"endpoint", "group_by", "timepoints"},
    "adverse_events": {"terms", "by_grade", "window_days"},
}


def _analysis(obj: Any, path: str, horizon: int) -> Analysis:
    obj = _check_keys(obj, {"name", "kind", *set().union(*_ANALYSIS_KEYS.values())},
                      {"name", "kind"}, path)
    kind = _str(obj["kind"], f"{path}.kind")
    if kind not in ANALYSIS_KINDS:
        raise _fail(f"{path}.kind", f"{kind!r} is not one of {', '.join(ANALYSIS_KINDS)}")
    extra = sorted(set(obj) - {"name", "kind"} - _ANALYSIS_KEYS[kind])
    if extra:
        raise _fail(f"{path}.{extra[0]}", f"not a key of kind {kind}")
    required = {"endpoint"} if kind != "adverse_events" else {"terms"}
    if kind == "logrank":
        required.add("group_by")
    if kind == "cox":
        required.add("covariates")
    _check_keys(obj, set(obj), required, path)
    kw: dict[str, Any] = {"name": _str(obj["name"], f"{path}.name"), "kind": kind}
    if "endpoint" in obj:
        kw["endpoint"] = _endpoint(obj["endpoint"], kind, f"{path}.endpoint")
    if "group_by" in obj:
        g = _str(obj["group_by"], f"{path}.group_by")
        if g not in GROUP_BY:
            raise _fail(f"{path}.group_by", f"{g!r} is not one of {', '.join(GROUP_BY)}")
        kw["group_by"] = g
    if "timepoints" in obj:
        tps = obj["timepoints"]
        if not isinstance(tps, list):
            raise _fail(f"{path}.timepoints", "must be a list of days")
        kw["timepoints"] = tuple(
            _int(t, f"{path}.timepoints[{i}]", 0) for i, t in enumerate(tps))
        for i, t in enumerate(kw["timepoints"]):
            if t > horizon:
                raise _fail(f"{path}.timepoints[{i}]", f"{t} is beyond horizon_days {horizon}")
    if "stratify_by_site" in obj:
        kw["stratify_by_site"] = _bool(obj["stratify_by_site"], f"{path}.stratify_by_site")
    if "covariates" in obj:
        kw["covariates"] = _str_list(obj["covariates"], f"{path}.covariates")
    if "strata" in obj:
        s = _str(obj["strata"], f"{path}.strata")
        if s not in ("none", "site"):
            raise _fail(f"{path}.strata", "must be none or site")
        kw["strata"] = s
    if "terms" in obj:
        kw["terms"] = _str_list(obj["terms"], f"{path}.terms")
    if "by_grade" in obj:
        kw["by_grade"] = _bool(obj["by_grade"], f"{path}.by_grade")
    if "window_days" in obj:
        kw["window_days"] = _int(obj["window_days"], f"{path}.window_days", 0)
    return Analysis(**kw)


def study_from_dict(obj: Any) -> Study:
    """Validate a decoded study document and build a :class:`Study`.

    Raises
    ------
    StudyFormatError
        When a key is unknown or missing or a value is invalid; the message names the field.
    """
    top = {"heron", "id", "title", "expires", "horizon_days", "cohort", "censor_at",
           "analyses", "privacy"}
    obj = _check_keys(obj, top, {"heron", "id", "title", "expires", "horizon_days", "analyses"},
                      "")
    if obj["heron"] != FORMAT_VERSION:
        raise _fail("heron", f"unsupported format version {obj['heron']!r} (expected 1)")
    sid = _str(obj["id"], "id")
    if not ID_PATTERN.match(sid):
        raise _fail("id", "must match [a-z0-9][a-z0-9-]{2,63}")
    horizon = _int(obj["horizon_days"], "horizon_days", 1)
    if horizon > 36525:
        raise _fail("horizon_days", "must be at most 36525 (100 years)")
    analyses_raw = obj["analyses"]
    if not isinstance(analyses_raw, list) or not analyses_raw:
        raise _fail("analyses", "must be a non-empty list")
    analyses = tuple(_analysis(a, f"analyses[{i}]", horizon) for i, a in enumerate(analyses_raw))
    names = [a.name for a in analyses]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise _fail(f"analyses[{i}].name", f"duplicate analysis name {n!r}")
    privacy = Privacy()
    if "privacy" in obj:
        p = _check_keys(obj["privacy"], {"secure_aggregation", "min_sites"}, set(), "privacy")
        privacy = Privacy(
            secure_aggregation=_bool(p.get("secure_aggregation", True),
                                     "privacy.secure_aggregation"),
            min_sites=_int(p.get("min_sites", 3), "privacy.min_sites", 1),
        )
    censor_at: tuple[str, ...] = ()
    if "censor_at" in obj:
        censor_at = _str_list(obj["censor_at"], "censor_at", CENSOR_EVENTS)
    return Study(
        id=sid,
        title=_str(obj["title"], "title"),
        expires=_date(obj["expires"], "expires"),
        horizon_days=horizon,
        analyses=analyses,
        cohort=_cohort(obj.get("cohort", {})),
        censor_at=censor_at,
        privacy=privacy,
    )


def parse_study(text: str | bytes) -> Study:
    """Parse a YAML or JSON study document (JSON is valid YAML)."""
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StudyFormatError(f"not valid YAML or JSON: {exc}") from exc
    return study_from_dict(obj)


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


def study_to_json(study: Study) -> str:
    """Readable JSON of the study (not the canonical signing form)."""
    return json.dumps(study_to_dict(study), indent=2)

"""Writing and checking study documents: ``heron study new`` and ``heron study check``.

:func:`check_study_file` reports every problem of a study at once, each naming its field
(``analyses[2].endpoint: ...``). It needs no site data and no keys. Beyond the study format
(:func:`protocol.study.study_problems`) it reports what every node would refuse anyway: unknown
Cox covariates, unknown adverse-event terms, cohort values not spelled as in the data model
(cohort filters match exactly, so a misspelt value silently selects nobody) and an expiry date
in the past.

:func:`describe_signed_study` is what ``heron study sign`` prints: the signed study as the
nodes will read it (every default filled in) and the SHA-256 digest of the exact signed bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heron.errors import HeronError
from node.ingestion.schema import AE_TERM, ATMP_CLASS, DISEASE_STATUS, ORIGIN, ROUTE, SEX
from protocol.design import check_covariates
from protocol.errors import StudyFormatError
from protocol.study import AE_ENDPOINT, Study, load_study_document, study_from_dict, study_problems

if TYPE_CHECKING:
    from protocol.signing import SignedStudy

__all__ = ["StudyCheck", "check_study_document", "check_study_file", "describe_signed_study",
           "study_template", "write_study_template"]

#: Cohort filters whose values are data-model enumerations (matched exactly).
_COHORT_ENUMS: dict[str, tuple[str, ...]] = {
    "atmp_class": ATMP_CLASS,
    "route": ROUTE,
    "origin": ORIGIN,
    "sex": SEX,
    "disease_status": DISEASE_STATUS,
}


@dataclass(frozen=True)
class StudyCheck:
    """Outcome of checking one study document.

    ``problems`` is empty exactly when ``study`` is not None.
    """

    source: str
    problems: tuple[str, ...]
    study: Study | None

    @property
    def ok(self) -> bool:
        """Whether the study has no problem."""
        return not self.problems

    def summary(self) -> str:
        """Human-readable report: one line per problem, or a short description of the study."""
        if self.study is None:
            n = len(self.problems)
            lines = [f"{self.source}: {p}" for p in self.problems]
            return "\n".join([*lines, f"{n} problem{'s' if n != 1 else ''} found"])
        s = self.study
        kinds = ", ".join(f"{a.name} ({a.kind})" for a in s.analyses)
        return (f"{self.source}: study {s.id} is valid: {len(s.analyses)} analyses "
                f"[{kinds}], horizon {s.horizon_days} days, expires {s.expires.isoformat()}, "
                f"secure aggregation {'on' if s.privacy.secure_aggregation else 'off'}, "
                f"min_sites {s.privacy.min_sites}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``--json``."""
        return {"source": self.source, "ok": self.ok, "problems": list(self.problems),
                "study_id": self.study.id if self.study else None}


def _ae_term_problem(term: Any) -> str | None:
    if isinstance(term, str) and term.strip().lower() in {t.lower() for t in AE_TERM}:
        return None
    return f"{term!r} is not an adverse-event term; use one of {', '.join(AE_TERM)}"


def _analysis_problems(i: int, analysis: Any) -> list[str]:
    if not isinstance(analysis, Mapping):
        return []
    path = f"analyses[{i}]"
    out: list[str] = []
    covariates = analysis.get("covariates")
    if analysis.get("kind") == "cox" and isinstance(covariates, list):
        seen: set[str] = set()
        for j, cov in enumerate(covariates):
            if not isinstance(cov, str):
                continue
            try:
                check_covariates([cov])
            except StudyFormatError as exc:
                out.append(f"{path}.covariates[{j}]: {exc}")
            if cov in seen:
                out.append(f"{path}.covariates[{j}]: covariate {cov!r} is listed twice")
            seen.add(cov)
    terms = analysis.get("terms")
    if analysis.get("kind") == "adverse_events" and isinstance(terms, list | str):
        for j, term in enumerate([terms] if isinstance(terms, str) else terms):
            problem = _ae_term_problem(term)
            if problem and isinstance(term, str) and term:
                out.append(f"{path}.terms[{j}]: {problem}")
    endpoint = analysis.get("endpoint")
    m = AE_ENDPOINT.match(endpoint) if isinstance(endpoint, str) else None
    if m and analysis.get("kind") == "cumulative_incidence":
        problem = _ae_term_problem(m.group(1))
        if problem:
            out.append(f"{path}.endpoint: {problem}")
    return out


def _semantic_problems(doc: Any, today: dt.date) -> list[str]:
    """What every node would refuse although the study format allows it."""
    if not isinstance(doc, Mapping):
        return []
    out: list[str] = []
    expires = doc.get("expires")
    if isinstance(expires, str):
        try:
            expires = dt.date.fromisoformat(expires)
        except ValueError:
            expires = None
    if isinstance(expires, dt.date) and not isinstance(expires, dt.datetime) and expires < today:
        out.append(f"expires: {expires.isoformat()} is in the past; nodes refuse expired studies")
    cohort = doc.get("cohort")
    if isinstance(cohort, Mapping):
        for key, allowed in _COHORT_ENUMS.items():
            values = cohort.get(key)
            for j, value in enumerate([values] if isinstance(values, str) else
                                      values if isinstance(values, list) else []):
                if isinstance(value, str) and value and value not in allowed:
                    out.append(f"cohort.{key}[{j}]: {value!r} is not one of "
                               f"{', '.join(allowed)} (spelling matters)")
    analyses = doc.get("analyses")
    if isinstance(analyses, list):
        for i, analysis in enumerate(analyses):
            out.extend(_analysis_problems(i, analysis))
    return out


def check_study_document(doc: Any, source: str = "<study>",
                         today: dt.date | None = None) -> StudyCheck:
    """Check a decoded study document; every problem is reported, none stops the others."""
    problems = [*study_problems(doc), *_semantic_problems(doc, today or dt.date.today())]
    if problems:
        return StudyCheck(source, tuple(problems), None)
    return StudyCheck(source, (), study_from_dict(doc))


def check_study_file(path: Path, today: dt.date | None = None) -> StudyCheck:
    """Check a study YAML or JSON file.

    Raises
    ------
    HeronError
        When the file cannot be read (a syntax error is a problem, not an exception).
    """
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise HeronError(f"{path}: {exc.strerror}") from None
    try:
        doc = load_study_document(text)
    except StudyFormatError as exc:
        return StudyCheck(str(path), (" ".join(str(exc).split()),), None)
    return check_study_document(doc, str(path), today)


def _indented_json(value: Any, depth: int = 0) -> str:
    """JSON with sorted keys, one member per line, lists of plain values on one line."""
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_indented_json(v, depth + 1)}"
                 for k, v in sorted(value.items())]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        items = [inner + _indented_json(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def describe_signed_study(signed: SignedStudy) -> str:
    """What a signature covers, for the coordinator to read before sending the study.

    The lines are the study id, the values that decide what is disclosed (expiry, horizon,
    privacy), the signed study itself, re-read from the signed bytes and indented in canonical
    key order (so a value the coordinator did not write, or a repeated key, cannot pass
    unseen), and the SHA-256 of the exact signed bytes with the signer's key id.
    """
    doc = signed.study_document()
    privacy = doc.get("privacy")
    privacy = privacy if isinstance(privacy, Mapping) else {}
    secure = privacy.get("secure_aggregation")
    analyses = doc.get("analyses")
    analyses = analyses if isinstance(analyses, list) else []
    digest = hashlib.sha256(signed.canonical_study).hexdigest()
    return "\n".join([
        f"signing study {doc.get('id')}: {doc.get('title')}",
        f"  expires {doc.get('expires')}, horizon {doc.get('horizon_days')} days, "
        f"{len(analyses)} analyses, secure aggregation "
        f"{'on' if secure is True else 'off' if secure is False else secure}, "
        f"min_sites {privacy.get('min_sites')}",
        f"signed content (canonical JSON, {len(signed.canonical_study)} bytes, shown indented):",
        _indented_json(doc),
        f"sha256 of the signed bytes: {digest}",
        f"signer key: {signed.signer_key_id}",
    ])


_TEMPLATE = """\
# A heron study. Check it with `heron study check FILE`, sign it with `heron study sign`.
# Full reference: docs/study-format.md. Unknown keys are errors (a typo never widens a cohort).
heron: 1                     # format version; always 1
id: my-study-{year}            # unique in the network: [a-z0-9][a-z0-9-]{{2,63}}
title: Outcomes after CAR-T in large B-cell lymphoma
expires: {expires}          # nodes refuse the study after this date (YYYY-MM-DD)
horizon_days: 1826           # follow-up is censored here (1..7305); 1826 = 5 years

# Which infusions are analysed. Every key is optional and all are ANDed; a list means "any of".
# Values must be spelled as in the data model (docs/data-model.md).
cohort:
  atmp_class: [GTMP]                       # GTMP, sCTMP, TEP, combined
  indication_group: [LBCL]                 # the site's coarse indication groups
  # route: [hospital_exemption]            # hospital_exemption, centrally_authorised,
  #                                        # clinical_trial, compassionate
  # origin: [autologous]                   # autologous, allogeneic
  # infusion_date: {{from: 2018-01-01, to: 2025-12-31}}   # inclusive
  age_at_infusion: {{min: 18, max: 90}}      # inclusive; infusion year - birth year
  first_infusion_only: true                # default true: each patient's first infusion only

# Optional: censor a patient when one of these happens first.
censor_at: [subsequent_cell_therapy]       # subsequent_cell_therapy, subsequent_hct

analyses:                    # at least one; names unique within the study
  - name: os
    kind: kaplan_meier       # also nelson_aalen (same keys)
    endpoint: overall_survival               # or progression_free_survival
    # group_by: route        # sex, route, atmp_class, origin, product, indication_group,
    #                        # disease_status, ecog, site (default: one group "all")
    timepoints: [365, 730]   # days (<= horizon_days) reported separately; default none
  - name: os_by_route
    kind: logrank
    endpoint: overall_survival
    group_by: route          # required for logrank
    stratify_by_site: false  # default false
  - name: os_cox
    kind: cox
    endpoint: overall_survival
    covariates: [age_at_infusion, sex, ecog, "lab:LDH"]   # required
    strata: none             # none (default, one baseline hazard) or site
  - name: relapse
    kind: cumulative_incidence
    endpoint: relapse        # relapse, non_relapse_mortality or ae:<TERM>[>=G], e.g. ae:CRS>=3
    timepoints: [365]
  - name: toxicity
    kind: adverse_events
    terms: [CRS, ICANS]      # required; data-model adverse-event terms
    by_grade: true           # default false
    window_days: 28          # onsets on days 0..window_days count; default horizon_days

privacy:
  secure_aggregation: true   # default true: sites mask their vectors, the aggregator sees sums
  min_sites: 3               # default 3: fewer participating sites, no pooled result
"""


def study_template(today: dt.date | None = None) -> str:
    """A commented study YAML covering the common keys; it passes :func:`check_study_document`.

    ``expires`` is set one year after ``today`` (default: the current date).
    """
    today = today or dt.date.today()
    return _TEMPLATE.format(year=today.year, expires=(today + dt.timedelta(days=365)).isoformat())


def write_study_template(out: Path | None, today: dt.date | None = None) -> str:
    """The template text; written to ``out`` when given (an existing file is not overwritten).

    Raises
    ------
    HeronError
        When ``out`` exists or cannot be written.
    """
    text = study_template(today)
    if out is not None:
        try:
            with out.open("x", encoding="utf-8") as fh:
                fh.write(text)
        except FileExistsError:
            raise HeronError(f"{out}: already exists; not overwritten") from None
        except OSError as exc:
            raise HeronError(f"{out}: {exc.strerror}") from None
    return text

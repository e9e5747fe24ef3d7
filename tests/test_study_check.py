"""heron study check / new: every problem of a study at once, each naming its field."""

from __future__ import annotations

import datetime as dt
import json
import textwrap

import pytest

from heron.cli import main
from heron.study_tools import check_study_document, study_template
from protocol.errors import StudyFormatError
from protocol.study import load_study_document, study_from_dict, study_problems

TODAY = dt.date(2026, 6, 1)

BAD_STUDY = textwrap.dedent("""\
    heron: 1
    id: Bad_ID
    title: A study with many problems
    horizon_days: 365
    cohort:
      indication_grup: [LBCL]
      age_at_infusion: {min: -3}
    analyses:
      - name: os
        kind: kaplan_meier
        endpoint: overall_survival
        timepoints: [180, 400]
      - name: os
        kind: logrank
        endpoint: overall_survival
      - name: bad
        kind: kaplan_meier
        endpoint: foo
      - name: cox
        kind: cox
        endpoint: overall_survival
        covariates: [age_at_infusion, weight]
      - name: tox
        kind: adverse_events
        terms: [CRS, headache]
    privacy:
      min_sites: 0
""")

EXPECTED = [
    "expires: required key missing",
    "id: must match [a-z0-9][a-z0-9-]{2,63}",
    "cohort.indication_grup: unknown key",
    "cohort.age_at_infusion.min: must be >= 0",
    "analyses[0].timepoints[1]: 400 is beyond horizon_days 365",
    "analyses[1].group_by: required key missing",
    "analyses[1].name: duplicate analysis name 'os'",
    "analyses[2].endpoint: 'foo' is not one of overall_survival, progression_free_survival",
    "privacy.min_sites: must be >= 1",
]
SEMANTIC = ["analyses[3].covariates[1]:", "analyses[4].terms[1]:"]


def test_study_problems_lists_every_format_problem():
    problems = study_problems(load_study_document(BAD_STUDY))
    assert sorted(problems) == sorted(EXPECTED)


def test_study_from_dict_raises_the_existing_error_listing_every_problem():
    with pytest.raises(StudyFormatError) as exc:
        study_from_dict(load_study_document(BAD_STUDY))
    message = str(exc.value)
    assert "\n" not in message
    for problem in EXPECTED:
        assert problem in message


def test_missing_expires_is_reported_with_the_other_problems():
    doc = {"heron": 1, "id": "ok-study", "title": "t", "horizon_days": 0,
           "analyses": [{"name": "os", "kind": "kaplan_meier", "endpoint": "os"}]}
    problems = study_problems(doc)
    assert "expires: required key missing" in problems
    assert "horizon_days: must be >= 1" in problems
    assert any(p.startswith("analyses[0].endpoint:") for p in problems)


def test_check_adds_what_nodes_would_refuse():
    check = check_study_document(load_study_document(BAD_STUDY), "bad.yaml", TODAY)
    assert not check.ok and check.study is None
    for problem in EXPECTED:
        assert problem in check.problems
    for prefix in SEMANTIC:
        assert any(p.startswith(prefix) for p in check.problems), prefix
    assert "'weight'" in next(p for p in check.problems if p.startswith(SEMANTIC[0]))
    assert "'headache'" in next(p for p in check.problems if p.startswith(SEMANTIC[1]))


def test_check_reports_expired_studies_and_misspelt_cohort_values():
    doc = load_study_document(study_template(TODAY))
    doc["expires"] = "2020-01-01"
    doc["cohort"]["route"] = ["Hospital_Exemption"]
    doc["analyses"][3]["endpoint"] = "ae:Headache>=3"
    check = check_study_document(doc, "s.yaml", TODAY)
    assert len(check.problems) == 3, check.problems
    assert check.problems[0].startswith("expires: 2020-01-01 is in the past")
    assert check.problems[1].startswith("cohort.route[0]: 'Hospital_Exemption'")
    assert check.problems[2].startswith("analyses[3].endpoint: 'Headache'")
    assert study_problems(doc) == []  # the format itself allows all three


def test_template_passes_check():
    text = study_template(TODAY)
    check = check_study_document(load_study_document(text), "template", TODAY)
    assert check.ok, check.problems
    assert check.study is not None
    assert {a.kind for a in check.study.analyses} == {
        "kaplan_meier", "logrank", "cox", "cumulative_incidence", "adverse_events"}
    assert "docs/study-format.md" in text


def test_cli_new_then_check(tmp_path, capsys):
    out = tmp_path / "study.yaml"
    assert main(["study", "new", "--out", str(out)]) == 0
    assert main(["study", "check", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "is valid" in stdout
    assert main(["study", "new", "--out", str(out)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    assert main(["study", "new"]) == 0
    assert capsys.readouterr().out == out.read_text()


def test_cli_check_reports_every_problem_and_exits_1(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_STUDY)
    assert main(["study", "check", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    for problem in EXPECTED:
        assert f"{path}: {problem}" in lines
    assert lines[-1] == f"{len(lines) - 1} problems found"
    assert main(["study", "check", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and set(EXPECTED) <= set(doc["problems"])


def test_cli_check_yaml_syntax_error_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("heron: 1\nanalyses: [\n")
    assert main(["study", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "not valid YAML or JSON" in out and "1 problem found" in out
    assert main(["study", "check", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("heron: error: ")


def test_the_demo_study_passes_check():
    from pathlib import Path

    from heron.study_tools import check_study_file

    path = Path(__file__).resolve().parent.parent / "heron" / "data" / "demo-study.yaml"
    check = check_study_file(path, TODAY)
    assert check.ok, check.problems
    assert "is valid" in check.summary()

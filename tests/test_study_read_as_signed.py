"""Studies read as signed (issue 8, attack 11) and bounded studies.

- A repeated key at any depth is an error naming the key and its lines (``yaml.safe_load``
  would keep the last value: a second ``privacy:`` block turned ``min_sites: 5`` into 1).
- Values are read by a YAML 1.2 core-like schema: ``010``, ``1:30``, ``0x1F``, ``yes`` are not
  numbers or booleans.
- Every size parameter has an upper limit (protocol.limits); limit + 1 is refused with the
  field and the limit named, the limit itself is accepted.
- ``heron study sign`` prints what it signs and the SHA-256 of the signed bytes.

Expected values are written out by hand.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heron.cli import main
from heron.coordinator import sign_study_file
from heron.errors import HeronError
from heron.study_tools import check_study_file
from protocol import limits
from protocol.errors import StudyFormatError
from protocol.keys import generate_signing_key, raw_public_key
from protocol.signing import SignedStudy, sign_study, verify_study
from protocol.study import load_study_document, parse_study, study_from_dict, study_problems

# The attack of issue 8 (attack 11): the first privacy block is the one a reviewer reads.
ATTACK_YAML = """\
heron: 1
id: abc-study
title: T
expires: 2099-01-01
horizon_days: 365
privacy:
  min_sites: 5
analyses:
  - {name: os, kind: kaplan_meier, endpoint: overall_survival, timepoints: [100]}
privacy:
  min_sites: 1
"""
# the same study without the second block
HONEST_YAML = "\n".join(ATTACK_YAML.splitlines()[:9]) + "\n"
# written by hand: sorted keys, no whitespace, defaults filled in
HONEST_CANONICAL = (
    b'{"analyses":[{"endpoint":"overall_survival","kind":"kaplan_meier","name":"os",'
    b'"timepoints":[100]}],"cohort":{"first_infusion_only":true},"expires":"2099-01-01",'
    b'"heron":1,"horizon_days":365,"id":"abc-study","privacy":{"min_sites":5,'
    b'"secure_aggregation":true},"title":"T"}'
)

BASE: dict[str, Any] = {
    "heron": 1, "id": "abc-study", "title": "T", "expires": "2099-01-01",
    "horizon_days": 365,
    "analyses": [{"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"}],
}


def _doc(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc.update(changes)
    return doc


# ---------------------------------------------------------------------------------------------
# repeated keys


def test_attack_yaml_is_what_safe_load_would_misread() -> None:
    import yaml

    assert yaml.safe_load(ATTACK_YAML)["privacy"] == {"min_sites": 1}  # the attack, as it was
    assert HONEST_YAML.count("privacy:") == 1


def test_duplicate_privacy_block_is_refused_by_the_parser() -> None:
    with pytest.raises(StudyFormatError) as exc:
        parse_study(ATTACK_YAML)
    assert str(exc.value) == (
        "privacy: duplicate key 'privacy' on line 10 (first on line 6); YAML would keep only "
        "the last value, so a study gives each key once")


def test_duplicate_privacy_block_is_not_signed(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    generate_signing_key(key)
    study = tmp_path / "study.yaml"
    study.write_text(ATTACK_YAML, encoding="utf-8")
    out = tmp_path / "study.signed.json"
    with pytest.raises(HeronError, match=r"duplicate key 'privacy' on line 10 \(first on line 6"):
        sign_study_file(study, key, out)
    assert not out.exists()


def test_duplicate_privacy_block_through_the_cli(tmp_path: Path, capsys) -> None:
    key = tmp_path / "signing.key"
    generate_signing_key(key)
    study = tmp_path / "study.yaml"
    study.write_text(ATTACK_YAML, encoding="utf-8")
    out = tmp_path / "study.signed.json"
    code = main(["study", "sign", str(study), "--key", str(key), "--out", str(out)])
    captured = capsys.readouterr()
    assert code != 0
    assert captured.out == ""
    assert "privacy: duplicate key 'privacy' on line 10 (first on line 6)" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not out.exists()
    # heron study check reports it as a problem of the file
    check = check_study_file(study)
    assert not check.ok
    assert len(check.problems) == 1 and "duplicate key 'privacy' on line 10" in check.problems[0]


@pytest.mark.parametrize("text, message", [
    ("a: 1\nb:\n  c: 1\n  c: 2\n", "b.c: duplicate key 'c' on line 4 (first on line 3)"),
    ("analyses:\n  - name: os\n    kind: cox\n    name: other\n",
     "analyses[0].name: duplicate key 'name' on line 4 (first on line 2)"),
    ("cohort:\n  age_at_infusion: {min: 18, max: 90, min: 0}\n",
     "cohort.age_at_infusion.min: duplicate key 'min' on line 2 (first on line 2)"),
    ('{"privacy": {"min_sites": 5}, "privacy": {"min_sites": 1}}',  # JSON too
     "privacy: duplicate key 'privacy' on line 1 (first on line 1)"),
    ("'id': x\nid: y\n", "id: duplicate key 'id' on line 2 (first on line 1)"),  # quoted or not
])
def test_duplicate_keys_at_any_depth(text: str, message: str) -> None:
    with pytest.raises(StudyFormatError) as exc:
        load_study_document(text)
    assert str(exc.value).startswith(message)


def test_every_duplicate_is_reported_at_once() -> None:
    with pytest.raises(StudyFormatError) as exc:
        load_study_document("a: 1\na: 2\nb: {c: 1, c: 2}\n")
    assert str(exc.value).count("duplicate key") == 2
    assert "a: duplicate key 'a' on line 2" in str(exc.value)
    assert "b.c: duplicate key 'c' on line 3" in str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("a: &x 5\nb: *x\n", "line 2: alias *x is not allowed"),
    ("a: !!merge {b: 1}\n", "line 1: the tag tag:yaml.org,2002:merge is not allowed"),
    ("a: {!!merge <<: {b: 1}}\n", "line 1: merge keys (<<) are not allowed"),
    ("a: !!timestamp 2030-01-01\n", "line 1: the tag tag:yaml.org,2002:timestamp is not allowed"),
    ("a: !!python/object:os.system x\n", "is not allowed in a study"),
])
def test_aliases_merge_keys_and_other_tags_are_refused(text: str, message: str) -> None:
    with pytest.raises(StudyFormatError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        load_study_document(text)


# ---------------------------------------------------------------------------------------------
# the schema: what is a number


@pytest.mark.parametrize("text, value", [
    ("010", "010"), ("1:30", "1:30"), ("0x1F", "0x1F"), ("0o17", "0o17"), ("1_000", "1_000"),
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("NO", "NO"), ("y", "y"),
    ("2030-12-31", "2030-12-31"),
    ("10", 10), ("0", 0), ("-3", -3), ("+7", 7), ("1.5", 1.5), ("true", True), ("False", False),
    ("null", None), ("~", None), ("'10'", "10"), ("!!str 010", "010"), ("!!int 10", 10),
])
def test_scalars_are_read_by_the_core_like_schema(text: str, value: object) -> None:
    doc = load_study_document(f"a: {text}\n")
    assert doc == {"a": value}
    assert type(doc["a"]) is type(value)


@pytest.mark.parametrize("text", ["!!int 010", "!!int 1:30", "!!int 0x1F", "!!bool yes",
                                  "1234567890123456789"])
def test_explicit_tags_cannot_bring_yaml_1_1_back(text: str) -> None:
    with pytest.raises(StudyFormatError, match="line 1: "):
        load_study_document(f"a: {text}\n")


def test_octal_and_sexagesimal_are_errors_in_integer_fields() -> None:
    text = HONEST_YAML.replace("horizon_days: 365", "horizon_days: 010").replace(
        "min_sites: 5", "min_sites: 1:30")
    problems = study_problems(load_study_document(text))
    assert problems == [
        "horizon_days: must be an integer; '010' is not read as a number (write decimal digits "
        "without a leading zero, e.g. 10 or 90)",
        "privacy.min_sites: must be an integer; '1:30' is not read as a number (write decimal "
        "digits without a leading zero, e.g. 10 or 90)",
    ]
    tp = HONEST_YAML.replace("timepoints: [100]", "timepoints: [010, 1:30]")
    assert study_problems(load_study_document(tp)) == [
        "analyses[0].timepoints[0]: must be an integer; '010' is not read as a number (write "
        "decimal digits without a leading zero, e.g. 10 or 90)",
        "analyses[0].timepoints[1]: must be an integer; '1:30' is not read as a number (write "
        "decimal digits without a leading zero, e.g. 10 or 90)",
    ]


def test_string_fields_keep_what_was_written() -> None:
    text = HONEST_YAML.replace("horizon_days: 365\n",
                               "horizon_days: 365\ncohort:\n  product: [010, 1:30, 0x1F, 7]\n"
                               "  sex: [NO]\n  first_infusion_only: true\n")
    study = parse_study(text)
    assert study.cohort.product == ("010", "1:30", "0x1F", "7")
    assert study.cohort.sex == ("NO",)  # a string, not false


def test_yes_is_not_a_boolean() -> None:
    text = HONEST_YAML.replace("min_sites: 5", "min_sites: 5\n  secure_aggregation: off")
    assert study_problems(load_study_document(text)) == [
        "privacy.secure_aggregation: must be true or false"]


def test_dates_are_written_yyyy_mm_dd() -> None:
    for bad in ("20991231", "2099-W01-1", "2099-12-31 10:00"):
        text = HONEST_YAML.replace("expires: 2099-01-01", f"expires: {bad}")
        assert study_problems(load_study_document(text)) == [
            "expires: must be an ISO 8601 date (YYYY-MM-DD)"], bad


# ---------------------------------------------------------------------------------------------
# limits


def test_limits_are_the_documented_numbers() -> None:
    assert limits.MAX_HORIZON_DAYS == 7305 == round(20 * 365.25)
    assert limits.MAX_WINDOW_DAYS == 7305
    assert (limits.MAX_TIMEPOINTS, limits.MAX_ANALYSES, limits.MAX_COVARIATES,
            limits.MAX_TERMS, limits.MAX_LIST_VALUES) == (100, 50, 20, 20, 100)
    assert (limits.MAX_ID_LENGTH, limits.MAX_TITLE_LENGTH, limits.MAX_NAME_LENGTH,
            limits.MAX_VALUE_LENGTH) == (64, 200, 64, 100)
    assert (limits.MAX_MIN_SITES, limits.MAX_AGE_YEARS, limits.MAX_STUDY_BYTES) == (
        1000, 150, 1048576)
    doc = Path(__file__).resolve().parent.parent / "docs" / "study-format.md"
    text = doc.read_text(encoding="utf-8")
    rows = {"`horizon_days`": 7305, "`window_days` (adverse events)": 7305,
            "`timepoints` per analysis": 100, "`analyses` per study": 50,
            "`covariates` per Cox analysis": 20, "`terms` per adverse-events analysis": 20,
            "`id`": 64, "`title`": 200, "analysis `name`": 64,
            "any other string (cohort value, covariate, term, endpoint)": 100,
            "`privacy.min_sites`": 1000, "`cohort.age_at_infusion` `min` and `max`": 150,
            "the study document (YAML or JSON)": 1048576}
    for label, number in rows.items():
        assert f"| {label} | {number} |" in text, label
    assert "`censor_at` | 100 | values |" in text


def _ae(**kw: Any) -> dict[str, Any]:
    return {"name": "ae", "kind": "adverse_events", "terms": ["CRS"], **kw}


def _cox(covariates: list[str]) -> dict[str, Any]:
    return {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
            "covariates": covariates}


def _km_timepoints(n: int) -> list[dict[str, Any]]:
    return [{"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival",
             "timepoints": list(range(n))}]


def _analyses(n: int) -> list[dict[str, Any]]:
    return [{"name": f"os{i}", "kind": "kaplan_meier", "endpoint": "overall_survival"}
            for i in range(n)]


# (field, document at a given size, the limit, the problem of limit + 1)
CASES: list[tuple[str, Any, int, str]] = [
    ("horizon_days", lambda n: _doc(horizon_days=n), 7305, "horizon_days: must be at most 7305"),
    ("window_days", lambda n: _doc(analyses=[_ae(window_days=n)]), 7305,
     "analyses[0].window_days: must be at most 7305"),
    ("timepoints", lambda n: _doc(analyses=_km_timepoints(n)), 100,
     "analyses[0].timepoints: at most 100 timepoints (has 101)"),
    ("analyses", lambda n: _doc(analyses=_analyses(n)), 50,
     "analyses: at most 50 analyses (has 51)"),
    ("covariates", lambda n: _doc(analyses=[_cox([f"lab:m{i}" for i in range(n)])]), 20,
     "analyses[0].covariates: at most 20 covariates (has 21)"),
    ("terms", lambda n: _doc(analyses=[_ae(terms=[f"t{i}" for i in range(n)])]), 20,
     "analyses[0].terms: at most 20 terms (has 21)"),
    *[(f"cohort.{key}", (lambda k: lambda n: _doc(cohort={k: [f"v{i}" for i in range(n)]}))(key),
       100, f"cohort.{key}: at most 100 values (has 101)")
      for key in ("atmp_class", "route", "origin", "product", "indication_group", "sex",
                  "disease_status")],
    ("censor_at", lambda n: _doc(censor_at=["subsequent_hct"] * n), 100,
     "censor_at: at most 100 values (has 101)"),
    ("id", lambda n: _doc(id="a" * n), 64, "id: must be at most 64 characters (has 65)"),
    ("title", lambda n: _doc(title="T" * n), 200,
     "title: must be at most 200 characters (has 201)"),
    ("analysis name", lambda n: _doc(analyses=[{**_analyses(1)[0], "name": "n" * n}]), 64,
     "analyses[0].name: must be at most 64 characters (has 65)"),
    ("cohort value", lambda n: _doc(cohort={"product": ["p" * n]}), 100,
     "cohort.product[0]: must be at most 100 characters (has 101)"),
    ("covariate", lambda n: _doc(analyses=[_cox(["lab:" + "x" * (n - 4)])]), 100,
     "analyses[0].covariates[0]: must be at most 100 characters (has 101)"),
    ("min_sites", lambda n: _doc(privacy={"min_sites": n}), 1000,
     "privacy.min_sites: must be at most 1000"),
    ("age max", lambda n: _doc(cohort={"age_at_infusion": {"max": n}}), 150,
     "cohort.age_at_infusion.max: must be at most 150"),
]


@pytest.mark.parametrize("name, make, limit, problem", CASES, ids=[c[0] for c in CASES])
def test_each_limit_accepts_the_limit_and_refuses_one_more(name, make, limit, problem) -> None:
    assert study_problems(make(limit)) == []
    assert study_problems(make(limit + 1)) == [problem]


def test_the_limits_hold_for_yaml_text_too() -> None:
    at = HONEST_YAML.replace("horizon_days: 365", "horizon_days: 7305")
    assert parse_study(at).horizon_days == 7305
    with pytest.raises(StudyFormatError, match=r"^horizon_days: must be at most 7305$"):
        parse_study(HONEST_YAML.replace("horizon_days: 365", "horizon_days: 7306"))


def test_the_allocation_attacks_are_refused_before_any_node_allocates() -> None:
    # window_days 10^12 would make a node allocate 7 TiB; 3*10^7 took 1.36 GB for one term
    for window in (10**12, 3 * 10**7):
        assert study_problems(_doc(analyses=[_ae(window_days=window)])) == [
            "analyses[0].window_days: must be at most 7305"]


def test_a_node_refuses_a_signed_study_beyond_a_limit() -> None:
    """Signed by a trusted key without the parser (an old or careless signer): still refused."""
    from protocol.signing import canonical_json

    key = Ed25519PrivateKey.generate()
    doc = json.loads(HONEST_CANONICAL)
    doc["analyses"] = [_ae(window_days=10**12)]
    canonical = canonical_json(doc)
    signed = SignedStudy(canonical_study=canonical, signature=key.sign(canonical),
                         public_key=raw_public_key(key.public_key()))
    with pytest.raises(StudyFormatError, match=r"analyses\[0\]\.window_days: must be at most 7305"):
        verify_study(signed, [key.public_key()])


def test_document_size_limit() -> None:
    body = HONEST_YAML.encode("utf-8")
    pad = limits.MAX_STUDY_BYTES - len(body) - 2  # "# " + pad spaces... + "\n"
    at = body + b"#" + b" " * pad + b"\n"
    assert len(at) == 1048576
    assert parse_study(at).privacy.min_sites == 5
    with pytest.raises(StudyFormatError, match=r"^study document is 1048577 bytes; at most "
                                               r"1048576 bytes$"):
        load_study_document(at + b" ")


# ---------------------------------------------------------------------------------------------
# heron study sign shows what it signs


def test_sign_prints_what_it_signs(tmp_path: Path, capsys) -> None:
    key_path = tmp_path / "signing.key"
    key = generate_signing_key(key_path)
    study = tmp_path / "study.yaml"
    study.write_text(HONEST_YAML, encoding="utf-8")
    out = tmp_path / "study.signed.json"
    capsys.readouterr()
    assert main(["study", "sign", str(study), "--key", str(key_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    digest = hashlib.sha256(HONEST_CANONICAL).hexdigest()
    assert lines[0] == "signing study abc-study: T"
    assert lines[1] == ("  expires 2099-01-01, horizon 365 days, 1 analyses, "
                        "secure aggregation on, min_sites 5")
    assert lines[2] == "signed content (canonical JSON, 270 bytes, shown indented):"
    assert len(HONEST_CANONICAL) == 270
    # the indented block is the signed document, key for key
    end = lines.index("}")
    block = "\n".join(lines[3:end + 1])
    assert json.loads(block) == json.loads(HONEST_CANONICAL)
    assert '    "min_sites": 5,' in lines
    assert '      "timepoints": [100]' in lines
    assert lines[end + 1] == f"sha256 of the signed bytes: {digest}"
    pub = raw_public_key(key.public_key())
    assert lines[end + 2] == f"signer key: {hashlib.sha256(pub).hexdigest()[:16]}"
    assert lines[end + 3] == f"signed study written to {out} (64-byte Ed25519 signature)"
    # and the file holds exactly those bytes, signed
    signed = SignedStudy.from_file(out)
    assert signed.canonical_study == HONEST_CANONICAL
    assert base64.b64decode(json.loads(out.read_text())["public_key"]) == pub
    assert verify_study(signed, [key.public_key()]).privacy.min_sites == 5


def test_sign_study_of_the_parsed_honest_file_matches_the_hand_written_bytes() -> None:
    signed = sign_study(parse_study(HONEST_YAML), Ed25519PrivateKey.generate())
    assert signed.canonical_study == HONEST_CANONICAL
    assert study_from_dict(json.loads(HONEST_CANONICAL)) == parse_study(HONEST_YAML)

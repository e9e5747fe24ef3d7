"""Site policy: defaults, loading, validation errors, writing, checks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from node.errors import PolicyError
from node.governance.policy import (
    DEFAULT_COVARIATES,
    Policy,
    default_policy,
    load_policy,
    policy_to_toml,
    write_policy,
)
from protocol.study import ANALYSIS_KINDS, GROUP_BY, Analysis


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_those_of_study_md() -> None:
    p = default_policy()
    assert p.approval == "auto"
    assert p.trusted_coordinators == ()
    assert p.allowed_kinds == ("kaplan_meier", "nelson_aalen", "logrank", "cox",
                               "cumulative_incidence", "adverse_events")
    assert p.allowed_group_by == ("sex", "route", "atmp_class", "origin", "product",
                                  "indication_group", "disease_status", "ecog", "site")
    assert p.allowed_covariates == ("age_at_infusion", "sex", "ecog", "prior_lines",
                                    "disease_status", "route", "origin", "lab:*")
    assert (p.min_cohort, p.min_cell, p.min_bin_events) == (10, 5, 5)


def test_empty_file_gives_defaults_and_base_dir(tmp_path: Path) -> None:
    p = load_policy(_write(tmp_path, "# nothing set\n"))
    assert p == default_policy()
    assert p.base_dir == tmp_path.resolve()


def test_keys_left_out_take_defaults(tmp_path: Path) -> None:
    p = load_policy(_write(tmp_path, 'approval = "manual"\nmin_cell = 1\n'
                                     'allowed_kinds = ["kaplan_meier"]\n'))
    assert p.approval == "manual"
    assert p.min_cell == 1
    assert p.allowed_kinds == ("kaplan_meier",)
    assert p.min_cohort == 10 and p.min_bin_events == 5
    assert p.allowed_covariates == DEFAULT_COVARIATES


def test_the_study_md_example_loads(tmp_path: Path) -> None:
    text = """
approval = "auto"
trusted_coordinators = ["coordinator.pub"]
allowed_kinds = ["kaplan_meier", "nelson_aalen", "logrank", "cox", "cumulative_incidence", "adverse_events"]
allowed_group_by = ["sex", "route", "atmp_class", "origin", "product", "indication_group", "disease_status", "ecog", "site"]
allowed_covariates = ["age_at_infusion", "sex", "ecog", "prior_lines", "disease_status", "route", "origin", "lab:*"]
min_cohort = 10
min_cell = 5
min_bin_events = 5
"""  # noqa: E501
    p = load_policy(_write(tmp_path, text))
    assert p == default_policy().with_trusted("coordinator.pub")


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'approval = "auto"\nmin_cels = 3\n')
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "min_cels" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("text", "key"), [
    ('approval = "sometimes"', "approval"),
    ("approval = 1", "approval"),
    ('min_cell = "5"', "min_cell"),
    ("min_cohort = 0", "min_cohort"),
    ("min_bin_events = -2", "min_bin_events"),
    ("min_cohort = true", "min_cohort"),
    ("min_cell = 2.5", "min_cell"),
    ('allowed_kinds = ["kaplan"]', "allowed_kinds"),
    ('allowed_kinds = "cox"', "allowed_kinds"),
    ('allowed_group_by = ["age"]', "allowed_group_by"),
    ("allowed_covariates = [1]", "allowed_covariates"),
    ('trusted_coordinators = [""]', "trusted_coordinators"),
    ('trusted_coordinators = "coordinator.pub"', "trusted_coordinators"),
])
def test_bad_type_or_value_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text + "\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert key in str(err.value)
    assert str(path) in str(err.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(_write(tmp_path, "approval = \n"))
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")


def test_write_read_round_trip(tmp_path: Path) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    policy = Policy(approval="manual", trusted_coordinators=("keys/coord.pub", key, 'odd"name\\'),
                    allowed_kinds=("kaplan_meier", "cox"), allowed_group_by=("site",),
                    allowed_covariates=("age_at_infusion", "lab:LDH"),
                    min_cohort=1, min_cell=1, min_bin_events=1)
    path = write_policy(tmp_path / "policy.toml", policy)
    assert load_policy(path) == policy
    assert "# " in path.read_text()  # commented
    default_path = write_policy(tmp_path / "default.toml", default_policy())
    assert load_policy(default_path) == default_policy()
    assert not (tmp_path / "policy.toml.tmp").exists()


def test_written_defaults_show_every_key() -> None:
    text = policy_to_toml(default_policy())
    for key in ("approval", "trusted_coordinators", "allowed_kinds", "allowed_group_by",
                "allowed_covariates", "min_cohort", "min_cell", "min_bin_events"):
        assert f"\n{key} = " in text


def test_with_trusted_appends_without_duplicates() -> None:
    p = default_policy().with_trusted("a.pub").with_trusted("b.pub", "a.pub")
    assert p.trusted_coordinators == ("a.pub", "b.pub")
    assert default_policy().trusted_coordinators == ()


def test_trusted_key_sources_resolve_paths_and_decode_keys(tmp_path: Path) -> None:
    raw = bytes(range(32))
    key = base64.b64encode(raw).decode()
    path = write_policy(tmp_path / "policy.toml",
                        default_policy().with_trusted("coordinator.pub", key, "/abs/c.pub"))
    sources = load_policy(path).trusted_key_sources()
    assert sources == (tmp_path.resolve() / "coordinator.pub", raw, Path("/abs/c.pub"))


def test_allowed_checks() -> None:
    p = Policy(allowed_kinds=("kaplan_meier",), allowed_group_by=("route",),
               allowed_covariates=("age_at_infusion", "lab:*"))
    assert p.kind_allowed("kaplan_meier") and not p.kind_allowed("cox")
    assert p.group_by_allowed("route") and p.group_by_allowed(None)
    assert not p.group_by_allowed("site")
    assert p.covariate_allowed("lab:LDH") and p.covariate_allowed("age_at_infusion")
    assert not p.covariate_allowed("sex") and not p.covariate_allowed("LDH")
    assert not Policy(allowed_covariates=("lab:*",)).covariate_allowed("LAB:LDH")


def test_check_analysis_reasons() -> None:
    p = Policy(allowed_kinds=("kaplan_meier", "cox"), allowed_group_by=("route",),
               allowed_covariates=("age_at_infusion", "lab:*"))
    km = Analysis(name="os", kind="kaplan_meier", endpoint="overall_survival", group_by="route")
    assert p.check_analysis(km) is None
    reason = p.check_analysis(Analysis(name="lr", kind="logrank", group_by="route"))
    assert reason is not None and "logrank" in reason and "'lr'" in reason
    reason = p.check_analysis(Analysis(name="by_site", kind="kaplan_meier", group_by="site"))
    assert reason is not None and "site" in reason
    cox = Analysis(name="c", kind="cox", covariates=("age_at_infusion", "lab:LDH", "sex"))
    reason = p.check_analysis(cox)
    assert reason is not None and "'sex'" in reason
    ok = Analysis(name="c", kind="cox", covariates=("age_at_infusion", "lab:CRP"))
    assert p.check_analysis(ok) is None
    everything = default_policy()
    for kind in ANALYSIS_KINDS:
        for g in GROUP_BY:
            assert everything.check_analysis(Analysis(name="a", kind=kind, group_by=g)) is None


def test_to_dict_is_json_ready_and_complete(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path / "p.toml", default_policy().with_trusted("c.pub")))
    d = json.loads(json.dumps(p.to_dict()))
    assert d == {
        "approval": "auto", "trusted_coordinators": ["c.pub"],
        "allowed_kinds": list(ANALYSIS_KINDS), "allowed_group_by": list(GROUP_BY),
        "allowed_covariates": list(DEFAULT_COVARIATES),
        "min_cohort": 10, "min_cell": 5, "min_bin_events": 5, "min_cohort_difference": 5,
        "site_level_release": False,
    }


def test_policy_is_frozen_and_base_dir_not_compared(tmp_path: Path) -> None:
    p = default_policy()
    with pytest.raises(AttributeError):
        p.min_cell = 1  # type: ignore[misc]
    assert Policy(base_dir=tmp_path) == Policy(base_dir=None)

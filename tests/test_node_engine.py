"""The node's study engine: verification, policy decisions, releases and the audit trail."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heron.simulation import make_study
from heron.synth import synthesize
from node.governance.approvals import Approvals
from node.governance.audit import AuditTrail, verify_audit
from node.governance.policy import Policy
from node.ingestion.ingest import ingest
from node.ingestion.store import open_store
from node.runtime.engine import NodeEngine
from protocol.rounds import summary_requests
from protocol.signing import sign_study

KEY = Ed25519PrivateKey.generate()
KM = {"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    folder = synthesize(tmp / "sites", sites=1, patients=150, seed=11)[0]
    ingest(folder.path, tmp / "store", b"k" * 32)
    return tmp / "store"


def _engine(store_dir, tmp_path, policy=None):
    return NodeEngine("se-test", policy or Policy(), [KEY.public_key()],
                      lambda: open_store(store_dir), AuditTrail(tmp_path / "audit.jsonl"),
                      today=lambda: dt.date(2026, 11, 1),
                      approvals=Approvals(tmp_path / "approvals"))


def _events(tmp_path):
    return [(e["event"], e["details"]) for e in AuditTrail(tmp_path / "audit.jsonl").entries()]


def test_answers_a_valid_study_and_audits_the_release(store_dir, tmp_path):
    study = make_study("eng-ok", [KM, {**KM, "name": "os_route", "group_by": "route"}])
    day_resolution = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
    outcome = _engine(store_dir, tmp_path, day_resolution).answer(
        study.id, sign_study(study, KEY), 1, summary_requests(study))
    assert outcome.refusal is None
    assert [r.analysis for r in outcome.releases] == ["os", "os_route"]
    assert all(not r.error for r in outcome.releases)
    events = [e for e, _ in _events(tmp_path)]
    assert events == ["study_received", "release"]
    assert verify_audit(tmp_path / "audit.jsonl").ok


def test_forbidden_kind_is_an_analysis_error_and_the_rest_is_released(store_dir, tmp_path):
    policy = Policy(allowed_kinds=("kaplan_meier",))
    study = make_study("eng-policy", [KM, {"name": "na", "kind": "nelson_aalen",
                                           "endpoint": "overall_survival"}])
    outcome = _engine(store_dir, tmp_path, policy).answer(study.id, sign_study(study, KEY), 1,
                                                          summary_requests(study))
    by_name = {r.analysis: r for r in outcome.releases}
    assert not by_name["os"].error
    assert "nelson_aalen" in by_name["na"].error and by_name["na"].vectors == {}
    assert ("analysis_refused", {"analysis": "na", "round": 1,
                                 "reason": by_name["na"].error}) in \
        _events(tmp_path)


def test_cohort_below_min_cohort_is_refused(store_dir, tmp_path):
    study = make_study("eng-small", [KM])
    outcome = _engine(store_dir, tmp_path, Policy(min_cohort=10_000)).answer(
        study.id, sign_study(study, KEY), 1, summary_requests(study))
    assert outcome.refusal == "cohort below 10000 patients"
    assert _events(tmp_path)[-1] == ("study_refused", {"reason": outcome.refusal})


def test_manual_approval_waits_for_the_data_steward(store_dir, tmp_path):
    study = make_study("eng-manual", [KM])
    signed = sign_study(study, KEY)
    policy = Policy(approval="manual")
    engine = _engine(store_dir, tmp_path, policy)
    assert engine.answer(study.id, signed).awaiting  # pending, not refused
    engine.approvals.approve(study.id, dt.datetime.now(dt.UTC))
    outcome = engine.answer(study.id, signed, 1, summary_requests(study))
    assert outcome.refusal is None and not outcome.awaiting


def test_task_naming_another_study_is_refused(store_dir, tmp_path):
    study = make_study("eng-mismatch", [KM])
    outcome = _engine(store_dir, tmp_path).answer("other-study", sign_study(study, KEY))
    assert "signed study is eng-mismatch" in outcome.refusal


def test_secure_aggregation_needs_the_site_credentials(store_dir, tmp_path):
    study = make_study("eng-secure", [KM])
    study = dataclasses.replace(study, privacy=dataclasses.replace(study.privacy,
                                                                   secure_aggregation=True))
    outcome = _engine(store_dir, tmp_path).answer(study.id, sign_study(study, KEY))
    assert outcome.refusal == ("secure aggregation needs this site's credentials, which the "
                               "node lacks")


COX = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
       "covariates": ["age_at_infusion"]}


def test_a_newton_only_round_still_passes_the_disclosure_ledger(store_dir, tmp_path):
    """A Cox step releases per-day sums over the cohort: an aggregator that skips the
    summary round must not get them for a cohort differing by one patient from a released
    one."""
    from node.cohorts.cohort import select_cohort
    from node.governance.ledger import DisclosureLedger
    from protocol.rounds import newton_request

    study = make_study("eng-newton", [COX], expires=dt.date(2026, 12, 1))
    ledger = DisclosureLedger(tmp_path / "ledger", b"l" * 32)
    cohort = select_cohort(open_store(store_dir), study.cohort, today=dt.date(2026, 11, 1))
    ids = cohort["patient_id"].tolist()
    ledger.record("earlier-study", ids[1:])  # the same cohort but one patient
    engine = NodeEngine("se-test", Policy(min_cohort=1, min_cell=1, min_bin_events=1),
                        [KEY.public_key()], lambda: open_store(store_dir),
                        AuditTrail(tmp_path / "audit.jsonl"), today=lambda: dt.date(2026, 11, 1),
                        ledger=ledger)
    outcome = engine.answer(study.id, sign_study(study, KEY), 2,
                            (newton_request("cox", ["age_at_infusion"], [0.0]),))
    assert outcome.releases is None
    assert "differ" in (outcome.refusal or "")
    assert _events(tmp_path)[-1] == ("study_refused", {"reason": outcome.refusal})


@pytest.mark.parametrize("beta", [float("nan"), float("inf")])
def test_a_non_finite_coefficient_is_a_refused_malformed_round(store_dir, tmp_path, beta):
    from protocol.rounds import newton_request

    study = make_study("eng-nan", [COX], expires=dt.date(2026, 12, 1))
    outcome = _engine(store_dir, tmp_path, Policy(min_cohort=1, min_cell=1,
                                                  min_bin_events=1)).answer(
        study.id, sign_study(study, KEY), 2, (newton_request("cox", ["age_at_infusion"],
                                                             [beta]),))
    assert outcome.refusal == ("malformed round 2: newton request cox: coefficients must be "
                               "finite")
    assert _events(tmp_path)[-1] == ("study_refused", {"reason": outcome.refusal})

"""Manual approval by a site's data steward, bound to the study's content (issue 8).

With ``approval = "manual"`` a node records a study it has not been told to answer as pending
(node/governance/approvals.py) and answers the task "awaiting approval"; the aggregator keeps
the task open, shows the site as awaiting approval and sends the task again until the node
answers (approved), refuses (rejected, with the steward's reason) or the study expires. The
approval binds the SHA-256 of the signed study's canonical bytes, not its id (attack 10).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heron.cli import main
from heron.simulation import SimulatedNetwork, SimulatedSite, ingest_sites, make_study
from heron.synth import synthesize
from node.governance.approvals import ApprovalError, Approvals
from node.governance.audit import AuditTrail, verify_audit
from node.governance.policy import Policy, load_policy, write_policy
from node.ingestion.store import open_store
from node.runtime import service
from node.runtime.config import NodeConfig
from node.runtime.engine import NodeEngine
from protocol.keys import key_id, raw_public_key
from protocol.rounds import summary_requests
from protocol.signing import sign_study
from tests.conftest import EVERY_KIND, assert_close

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date.today()
EXPIRES = TODAY + dt.timedelta(days=30)
KM = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival", "group_by": "sex"}
KM_ALL = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"}
STEWARD = "mt-valletta"


class _Clock:
    """The aggregator's clock: real time, moved on by the tests (approval polls, expiry)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def tick(self) -> None:
        self.t += 1.0


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    tmp = tmp_path_factory.mktemp("approval")
    folders = {f.site_id: f.path for f in synthesize(tmp / "data", sites=3, patients=80,
                                                     seed=8)}
    return ingest_sites(tmp / "stores", folders, policy=Policy())


def _network(workdir: Path, sites: list[SimulatedSite], clock: _Clock, *,
             manual: tuple[str, ...] = (STEWARD,), runtime: Any = "inprocess"
             ) -> SimulatedNetwork:
    chosen = [dataclasses.replace(s, policy=Policy(approval="manual"))
              if s.site_id in manual else s for s in sites]
    net = SimulatedNetwork(workdir, chosen, KEY, runtime=runtime, today=lambda: TODAY,
                           clock=clock, site_timeout_s=3600)
    for site in manual:
        net.nodes[site].approvals = Approvals(workdir / "approvals" / site)
    return net


def _await_state(net: SimulatedNetwork, study_id: str, site: str, state: str,
                 clock: _Clock, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = net.engine.status(study_id)
        found = {s.site_id: s for s in status.sites}[site]
        if found.state == state:
            return found
        net.engine.check_timeouts()
        time.sleep(0.02)
    raise AssertionError(f"{site} never reached {state}: {net.engine.status(study_id)}")


def _await_others(net: SimulatedNetwork, study_id: str, sites: list[SimulatedSite],
                  clock: _Clock) -> None:
    """Wait until every site but the steward's answered the first round."""
    for site in sites:
        if site.site_id != STEWARD:
            _await_state(net, study_id, site.site_id, "released", clock)


def _approvals(net: SimulatedNetwork, site: str = STEWARD) -> Approvals:
    approvals = net.nodes[site].approvals
    assert approvals is not None
    return approvals


# -- attack 10: an approval binds the content, not the id ------------------------------------------

def test_other_content_signed_under_an_approved_id_waits_for_a_new_approval(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    site = sites[0]
    approvals = Approvals(tmp_path / "approvals")
    engine = NodeEngine(site.site_id, Policy(approval="manual"), [KEY.public_key()],
                        site.open_tables, AuditTrail(tmp_path / "audit.jsonl"),
                        today=lambda: TODAY, approvals=approvals)
    content_a = make_study("attack-ten", [KM], cohort={}, expires=EXPIRES)
    content_b = make_study("attack-ten", [KM, {"name": "ae", "kind": "adverse_events",
                                               "terms": ["CRS"]}],
                           cohort={"sex": ["F"]}, expires=EXPIRES)
    signed_a, signed_b = sign_study(content_a, KEY), sign_study(content_b, KEY)

    assert engine.answer("attack-ten", signed_a, 1, summary_requests(content_a)).awaiting
    approvals.approve("attack-ten", dt.datetime.now(dt.UTC))
    answered = engine.answer("attack-ten", signed_a, 1, summary_requests(content_a))
    assert answered.refusal is None and not answered.awaiting

    # same id, other content, validly signed: not answered, pending on its own digest
    replaced = engine.answer("attack-ten", signed_b, 1, summary_requests(content_b))
    assert replaced.awaiting and replaced.releases is not None
    assert [r.analysis for r in replaced.releases] == ["__awaiting_approval__"]
    assert not any(r.vectors for r in replaced.releases)
    [pending] = approvals.pending()
    assert pending.study_id == "attack-ten"
    assert pending.canonical_study.encode() == signed_b.canonical_study
    # the first content is still approved; approving B needs its own decision
    assert not engine.answer("attack-ten", signed_a, 1, summary_requests(content_a)).awaiting
    approvals.approve(pending.digest[:10], dt.datetime.now(dt.UTC))
    assert not engine.answer("attack-ten", signed_b, 1, summary_requests(content_b)).awaiting
    events = [e["event"] for e in AuditTrail(tmp_path / "audit.jsonl").entries()]
    assert events.count("study_pending") == 2
    assert verify_audit(tmp_path / "audit.jsonl").ok


def test_two_pending_contents_under_one_id_need_a_digest_prefix(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    site = sites[0]
    approvals = Approvals(tmp_path / "approvals")
    engine = NodeEngine(site.site_id, Policy(approval="manual"), [KEY.public_key()],
                        site.open_tables, AuditTrail(tmp_path / "audit.jsonl"),
                        today=lambda: TODAY, approvals=approvals)
    for cohort in ({}, {"sex": ["M"]}):
        study = make_study("twin-ids", [KM], cohort=cohort, expires=EXPIRES)
        assert engine.answer(study.id, sign_study(study, KEY)).awaiting
    with pytest.raises(ApprovalError, match="names 2 pending studies"):
        approvals.approve("twin-ids", dt.datetime.now(dt.UTC))
    first = approvals.pending()[0]
    assert approvals.approve(first.digest[:8], dt.datetime.now(dt.UTC)) == first
    assert len(approvals.pending()) == 1


# -- the aggregator keeps an awaiting site's task open --------------------------------------

def test_approval_of_a_pending_study_completes_it_as_under_auto_approval(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    study = make_study("steward-every-kind", EVERY_KIND, cohort={}, min_sites=3,
                       secure_aggregation=True, expires=EXPIRES)
    clock = _Clock()
    with _network(tmp_path / "auto", sites, clock, manual=()) as net:
        reference = net.run(study, timeout_s=120, tick=clock.tick)
    assert reference["sites"]["participated"] == sorted(s.site_id for s in sites), reference

    clock = _Clock()
    with _network(tmp_path / "manual", sites, clock) as net:
        net.submit(study)
        waiting = _await_state(net, study.id, STEWARD, "awaiting_approval", clock)
        assert waiting.reason == f"awaiting approval at {STEWARD}"
        _await_others(net, study.id, sites, clock)
        for _ in range(50):  # a day of approval polls later, it still waits (no timeout)
            clock.t += 1800
            net.engine.check_timeouts()
        assert net.engine.results(study.id) is None
        assert net.engine.status(study.id).status == "running"
        [pending] = _approvals(net).pending()
        assert pending.study_id == study.id
        _approvals(net).approve(study.id, dt.datetime.now(dt.UTC))
        results = net.wait(study.id, timeout_s=120, tick=clock.tick)
        states = {s.site_id: s.state for s in net.engine.status(study.id).sites}
    assert results["status"] == "completed"
    assert results["sites"] == reference["sites"], results["sites"]
    assert_close(results["analyses"], reference["analyses"], rel=1e-12)
    assert states == {s.site_id: "released" for s in sites}


def test_a_rejected_study_is_a_refusal_with_the_stewards_reason(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    study = make_study("steward-reject", [KM_ALL], cohort={}, min_sites=2, expires=EXPIRES)
    clock = _Clock()
    with _network(tmp_path / "net", sites, clock) as net:
        net.submit(study)
        _await_state(net, study.id, STEWARD, "awaiting_approval", clock)
        _approvals(net).reject(study.id, "outside our ethics approval", dt.datetime.now(dt.UTC))
        results = net.wait(study.id, timeout_s=60, tick=clock.tick)
        site_state = {s.site_id: s for s in net.engine.status(study.id).sites}[STEWARD]
    reason = "rejected by the site's data steward: outside our ethics approval"
    assert results["sites"]["refused"] == {STEWARD: reason}
    assert STEWARD not in results["sites"]["participated"]
    assert (site_state.state, site_state.reason) == ("refused", reason)
    assert "error" not in results["analyses"]["km"]


def test_no_approval_before_the_study_expires_ends_as_a_refusal(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    study = make_study("steward-silent", [KM_ALL], cohort={}, min_sites=2, expires=EXPIRES)
    clock = _Clock()
    with _network(tmp_path / "net", sites, clock) as net:
        net.submit(study)
        _await_state(net, study.id, STEWARD, "awaiting_approval", clock)
        _await_others(net, study.id, sites, clock)
        clock.t += 40 * 86400
        net.engine.check_timeouts()
        results = net.wait(study.id, timeout_s=30)
    assert results["sites"]["refused"] == {
        STEWARD: f"no approval at {STEWARD} before the end of {EXPIRES.isoformat()} "
                 "(study expiry)"}
    assert results["sites"]["unreachable"] == []


def test_approval_over_grpc_with_real_node_daemons(tmp_path: Path,
                                                   sites: list[SimulatedSite]) -> None:
    study = make_study("steward-grpc", [KM], cohort={}, min_sites=3,
                       secure_aggregation=True, expires=EXPIRES)
    clock = _Clock()
    with _network(tmp_path / "net", sites, clock, runtime="grpc") as net:
        net.submit(study)
        _await_state(net, study.id, STEWARD, "awaiting_approval", clock)
        _approvals(net).approve(study.id, dt.datetime.now(dt.UTC))
        results = net.wait(study.id, timeout_s=60, tick=clock.tick)
    assert results["sites"]["participated"] == sorted(s.site_id for s in sites)
    assert results["sites"]["refused"] == {}


# -- the node folder and the command line --------------------------------------------------------

@pytest.fixture
def node_dir(tmp_path: Path) -> Iterator[tuple[NodeConfig, Path]]:
    data = synthesize(tmp_path / "data", sites=1, patients=60, seed=4)[0]
    config = NodeConfig(node_dir=tmp_path / "node", site_id="se-test")
    trusted = base64.b64encode(raw_public_key(KEY.public_key())).decode()
    service.init_node(config, trusted=(trusted,))
    policy_path = config.path("policy_file")
    write_policy(policy_path, dataclasses.replace(load_policy(policy_path), approval="manual"))
    service.ingest_site(config, data.path)
    yield config, config.path("store_dir")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_node_pending_approve_and_reject_on_the_command_line(
        node_dir: tuple[NodeConfig, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, store_dir = node_dir
    d = str(config.node_dir)
    engine = service.build_engine(config)
    study = make_study("cli-steward", [
        KM, {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
             "covariates": ["age_at_infusion", "sex"]},
        {"name": "ae", "kind": "adverse_events", "terms": ["CRS", "ICANS"]}],
        cohort={"indication_group": ["LBCL"]}, min_sites=2, expires=EXPIRES)
    signed = sign_study(study, KEY)
    assert engine.answer(study.id, signed, 1, summary_requests(study)).awaiting

    code, out, _ = _cli(capsys, "node", "pending", "--dir", d)
    assert code == 0
    listed = json.loads(_cli(capsys, "node", "pending", "--dir", d, "--json")[1])[0]
    digest = listed["digest"]
    # the content shown is what was signed, and the digest is its SHA-256
    assert listed["content"] == json.loads(signed.canonical_study)
    assert digest == hashlib.sha256(signed.canonical_study).hexdigest()
    assert '"min_sites": 2' in out
    for expected in ("cli-steward", digest, key_id(KEY.public_key()), "kaplan_meier",
                     "endpoint overall_survival", "group_by sex",
                     "covariates age_at_infusion, sex", "AE terms CRS, ICANS",
                     "indication_group LBCL", "secure aggregation OFF", "min_sites 2",
                     f"expires: {EXPIRES.isoformat()}"):
        assert expected in out, expected
    store = open_store(store_dir)
    private = set(store.table("patients")["patient_id"].astype(str)) \
        | set(store.table("infusions")["infusion_id"].astype(str))
    assert private and not any(value in out for value in private)

    # approvals live in a node-owned folder keyed by digest
    root = config.path("approvals_dir")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    [pending_file] = (root / "pending").iterdir()
    assert pending_file.name == f"{digest}.json"
    assert stat.S_IMODE(pending_file.stat().st_mode) == 0o600

    code, out, _ = _cli(capsys, "node", "approve", "--dir", d, digest[:12])
    assert code == 0 and "cli-steward approved" in out
    assert stat.S_IMODE((root / "approved" / f"{digest}.json").stat().st_mode) == 0o600
    outcome = engine.answer(study.id, signed, 1, summary_requests(study))
    assert outcome.refusal is None and not outcome.awaiting
    assert _cli(capsys, "node", "pending", "--dir", d)[1].strip() == "no study awaits approval"

    other = make_study("cli-rejected", [KM], cohort={}, min_sites=2, expires=EXPIRES)
    assert engine.answer(other.id, sign_study(other, KEY)).awaiting
    code, out, _ = _cli(capsys, "node", "reject", "--dir", d, "cli-rejected",
                        "--reason", "not covered by our DPIA")
    assert code == 0
    refused = engine.answer(other.id, sign_study(other, KEY))
    assert refused.refusal == "rejected by the site's data steward: not covered by our DPIA"
    events = [(e["event"], e["study_id"]) for e in AuditTrail(config.path("audit_file"))
              .entries() if e["event"] in ("study_pending", "study_approved", "study_rejected")]
    assert events == [("study_pending", "cli-steward"), ("study_approved", "cli-steward"),
                      ("study_pending", "cli-rejected"), ("study_rejected", "cli-rejected")]
    assert verify_audit(config.path("audit_file")).ok


@pytest.mark.parametrize("ref", ["../../pwned", "..", "a/../../b", "/etc/passwd",
                                 "x" * 80, "UPPER", ""])
def test_path_traversal_and_bad_ids_are_rejected(
        node_dir: tuple[NodeConfig, Path], capsys: pytest.CaptureFixture[str],
        ref: str) -> None:
    config, _ = node_dir
    before = sorted(p for p in config.node_dir.parent.rglob("*"))
    for command in (["approve"], ["reject", "--reason", "x"]):
        code, _, err = _cli(capsys, "node", *command, "--dir", str(config.node_dir), ref)
        assert code == 2 and err.startswith("heron: error: ")
    after = sorted(p for p in config.node_dir.parent.rglob("*"))
    assert [p for p in after if p not in before and "approvals" not in p.parts] == []
    assert not (config.node_dir.parent.parent / "pwned").exists()
    with pytest.raises(ApprovalError):
        Approvals(config.path("approvals_dir")).is_approved("../" + "0" * 61)

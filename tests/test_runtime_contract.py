"""The runtime contract of a study: the same study gives the same results in process and over
real gRPC, unmasked and under secure aggregation; a site that leaves an analysis out or sends a
malformed release in any round costs that analysis (an error or a site error naming the site),
never the study or the other analyses, and never hangs it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.transport import NodeHandler, StudyTask, TaskReply
from heron.simulation import SimulatedNetwork, SimulatedSite, ingest_sites, make_study
from heron.synth import synthesize
from node.governance.policy import Policy
from protocol.codec import Release
from protocol.rounds import RoundRequests, parse_requests
from tests.conftest import EVERY_KIND, assert_close
from tests.cox_cohorts import assert_binned_cox_equals_lifelines

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
ANALYSES = EVERY_KIND
NAMES = [a["name"] for a in ANALYSES]
IGNORED = ("sites", "time_resolution_days")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    tmp = tmp_path_factory.mktemp("contract")
    folders = {f.site_id: f.path for f in synthesize(tmp / "data", sites=3, patients=100,
                                                     seed=11)}
    return [dataclasses.replace(s, policy=DAY) for s in ingest_sites(tmp / "stores", folders)]


def _study(study_id: str, secure: bool, min_sites: int = 3) -> Any:
    return make_study(study_id, ANALYSES, cohort={}, min_sites=min_sites,
                      secure_aggregation=secure)


def _run(workdir: Path, sites: list[SimulatedSite], study: Any, runtime: str = "inprocess",
         wrappers: dict[str, Callable[[NodeHandler], NodeHandler]] | None = None
         ) -> dict[str, Any]:
    with SimulatedNetwork(workdir, sites, KEY, runtime=runtime,  # type: ignore[arg-type]
                          today=lambda: TODAY, site_timeout_s=10,
                          node_wrappers=wrappers) as net:
        return net.run(study, timeout_s=60)


def test_every_kind_gives_the_same_results_in_every_runtime(tmp_path: Path,
                                                            sites: list[SimulatedSite]) -> None:
    plain, secure = _study("rc-plain", False), _study("rc-secure", True)
    runs = {(s, rt): _run(tmp_path / f"{s}-{rt}", sites, plain if s == "plain" else secure, rt)
            for s in ("plain", "secure") for rt in ("inprocess", "grpc")}
    ids = sorted(s.site_id for s in sites)
    for (mode, runtime), results in runs.items():
        assert results["status"] == "completed", (mode, runtime)
        assert results["privacy"]["secure_aggregation"] is (mode == "secure")
        assert results["sites"]["participated"] == ids, (mode, runtime)
        errors = {n: a for n, a in results["analyses"].items() if "error" in a}
        assert not errors, (mode, runtime, errors)
    for mode in ("plain", "secure"):  # the transport changes nothing
        assert_close(runs[mode, "inprocess"], runs[mode, "grpc"], rel=1e-12)
    reference = runs["plain", "inprocess"]["analyses"]
    masked = runs["secure", "inprocess"]["analyses"]
    stores = {s.site_id: s.store_dir for s in sites}
    for name in NAMES:
        if name == "ae":
            continue
        if reference[name]["kind"] == "cox":
            # secure Cox runs on time bins of >= 5 pooled events: its reference is lifelines on
            # the binned times (Newton to convergence: coefficients to 1e-6)
            analysis = next(a for a in ANALYSES if a["name"] == name)
            assert_binned_cox_equals_lifelines(masked[name], stores, secure,
                                               analysis["covariates"],
                                               analysis.get("strata", "none"))
            continue
        assert_close(masked[name], reference[name], rel=1e-9,
                 abs_tol=1e-12, path=f".{name}", ignore=IGNORED)
    for term, ref in reference["ae"]["terms"].items():
        got = masked["ae"]["terms"][term]
        assert got["at_risk"] == ref["at_risk"] and got["with_event"] == ref["with_event"]
        for grade, count in ref["grades"].items():  # pooled small counts are hidden
            if got["grades"][grade] != count:
                assert isinstance(got["grades"][grade], str), (term, grade)


# -- faults ---------------------------------------------------------------------------------------

Fault = Callable[[Release], Release | None]
"""What a misbehaving site sends instead of one release (``None``: nothing)."""


def _omit(release: Release) -> Release | None:
    return None


def _junk(release: Release) -> Release | None:
    return Release(release.analysis, release.kind, {"junk": np.array([1, 2, 3])},
                   {"groups": ["x"]})


def _short(release: Release) -> Release | None:
    """A masked release with its first vector one element short."""
    key = next(iter(release.vectors))
    vectors: dict[str, Any] = dict(release.vectors)
    vectors[key] = np.asarray(vectors[key]).ravel()[:-1]
    return dataclasses.replace(release, vectors=vectors)


def _summary_of(name: str) -> Callable[[RoundRequests], bool]:
    return lambda req: name in req.summaries


def _newton_of(name: str) -> Callable[[RoundRequests], bool]:
    return lambda req: any(n.analysis == name for n in req.newton)


def _faulty(name: str, when: Callable[[RoundRequests], bool], fault: Fault
            ) -> Callable[[NodeHandler], NodeHandler]:
    """A wrapper: in every task ``when`` matches, ``fault`` replaces the release of ``name``."""
    def wrap(handler: NodeHandler) -> NodeHandler:
        def answer(task: StudyTask) -> TaskReply | None:
            reply = handler(task)
            if reply is None or reply.refusal is not None or not when(
                    parse_requests(task.inputs)):
                return reply
            out = []
            for release in reply.releases or ():
                if release.analysis == name:
                    changed = fault(release)
                    if changed is not None:
                        out.append(changed)
                else:
                    out.append(release)
            return dataclasses.replace(reply, releases=tuple(out))
        return answer
    return wrap


def _names_site(entry: dict[str, Any], site: str) -> bool:
    return site in entry.get("error", "") or site in entry.get("site_errors", {})


CASES = [
    pytest.param("km", "summary", "omit", False, "inprocess", id="omit-km-unmasked"),
    pytest.param("km", "summary", "omit", True, "inprocess", id="omit-km-secure"),
    pytest.param("cox", "newton", "omit", False, "inprocess", id="omit-cox-newton-unmasked"),
    pytest.param("cox", "newton", "omit", True, "inprocess", id="omit-cox-newton-secure"),
    pytest.param("km", "summary", "malformed", False, "inprocess", id="malformed-km-unmasked"),
    pytest.param("km", "summary", "malformed", True, "inprocess", id="malformed-km-secure"),
    pytest.param("cox", "newton", "malformed", False, "inprocess",
                 id="malformed-cox-newton-unmasked"),
    pytest.param("cox", "newton", "malformed", True, "inprocess",
                 id="malformed-cox-newton-secure"),
    # the same faults through a node daemon over gRPC
    pytest.param("cox", "newton", "omit", False, "grpc", id="omit-cox-newton-unmasked-grpc"),
    pytest.param("km", "summary", "malformed", True, "grpc", id="malformed-km-secure-grpc"),
]


@pytest.mark.parametrize(("name", "step", "fault", "secure", "runtime"), CASES)
def test_a_faulty_release_costs_only_its_analysis(tmp_path: Path, sites: list[SimulatedSite],
                                                  name: str, step: str, fault: str,
                                                  secure: bool, runtime: str) -> None:
    bad = sites[0].site_id
    others = sorted(s.site_id for s in sites if s.site_id != bad)
    when = _summary_of(name) if step == "summary" else _newton_of(name)
    action = _omit if fault == "omit" else _short if secure else _junk
    study = _study(f"rc-{fault}-{name}-{'secure' if secure else 'plain'}", secure, min_sites=2)
    results = _run(tmp_path, sites, study, runtime, wrappers={bad: _faulty(name, when, action)})
    assert results["status"] == "completed"
    assert results["sites"]["participated"] == sorted(s.site_id for s in sites)
    entry = results["analyses"][name]
    assert _names_site(entry, bad), entry
    if secure:
        # a masked sum without the site (or with its bad vector) cannot be released, and the
        # error blames that site alone (the others' vectors agree with each other)
        assert "error" in entry, entry
        assert not any(o in entry["error"] for o in others), entry
        assert list(entry.get("site_errors", {bad: ""})) == [bad], entry
    else:
        # unmasked: the analysis of the other sites (a Cox fit starts again without the site)
        assert "error" not in entry, entry
        assert entry["sites"] == others, entry
        assert list(entry["site_errors"]) == [bad], entry
    if name == "cox" and secure:
        assert bad in entry["error"], entry
    for other in NAMES:
        if other != name:
            assert "error" not in results["analyses"][other], (other,
                                                                results["analyses"][other])


@pytest.mark.parametrize("secure", [False, True], ids=["unmasked", "secure"])
def test_an_overflow_at_one_site_halves_the_step_and_blames_nobody(
        tmp_path: Path, sites: list[SimulatedSite], secure: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A site whose weights overflow at the proposed coefficients says so (no vectors); the
    fit steps back and converges to the uninterrupted fit, masked or not."""
    import node.releases.cox as node_cox

    sent = {"overflow": False}
    lock = threading.Lock()
    sums = node_cox._sums

    def overflow_once(analysis: Any, study: Any, site: Any, chain: Any, request: Any
                      ) -> Release:
        # the first site asked for a step after beta = 0 overflows (a genuine, signed release)
        with lock:
            if not sent["overflow"] and np.any(request.beta != 0):
                sent["overflow"] = True
                return Release(analysis.name, "cox", {}, {"overflow": True})
        return sums(analysis, study, site, chain, request)

    study = _study(f"rc-overflow-{'secure' if secure else 'plain'}", secure, min_sites=2)
    reference = _run(tmp_path / "reference", sites, study)
    monkeypatch.setattr(node_cox, "_sums", overflow_once)
    results = _run(tmp_path / "overflow", sites, study)
    assert sent["overflow"]
    entry = results["analyses"]["cox"]
    assert "error" not in entry and "site_errors" not in entry, entry
    assert entry["sites"] == sorted(s.site_id for s in sites)
    assert entry["iterations"] > reference["analyses"]["cox"]["iterations"]  # a halving
    assert_close(entry["coefficients"], reference["analyses"]["cox"]["coefficients"], rel=1e-6,
             abs_tol=1e-9)


def test_a_site_refusing_after_it_answered_is_reported_refused(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    """Secure: a site that refuses a later round leaves the study as refused (with its
    reason), not as unreachable; the others finish without it."""
    bad = sites[0].site_id

    def refuse_data(handler: NodeHandler) -> NodeHandler:
        def answer(task: StudyTask) -> TaskReply | None:
            if parse_requests(task.inputs).relay is not None:
                return TaskReply(task.task_id, task.study_id, refusal="withdrawn by steward")
            return handler(task)
        return answer

    study = _study("rc-withdrawn", True, min_sites=2)
    results = _run(tmp_path, sites, study, wrappers={bad: refuse_data})
    assert results["sites"]["refused"] == {bad: "withdrawn by steward"}
    assert bad not in results["sites"]["unreachable"]
    assert results["sites"]["dropped_during_study"] == {bad: "withdrawn by steward"}
    assert results["sites"]["participated"] == sorted(s.site_id for s in sites
                                                      if s.site_id != bad)
    assert all("error" not in e for e in results["analyses"].values())

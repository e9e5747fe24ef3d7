"""SecAgg+ (issue 9): the neighbour graph, Shamir shares and dropout recovery.

Networks use real certificates and signed announcements; the dropout case runs the real node
engines and study round loop in process (heron.simulation), as the other secure tests do.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.transport import StudyTask
from heron.simulation import SimulatedNetwork, SimulatedSite, make_study
from node.governance.policy import Policy
from protocol.codec import Release
from protocol.errors import SecureAggregationError
from protocol.key_exchange import KeyAnnouncement, announce, verify_announcement
from protocol.masking import PairwiseMasker
from protocol.neighbours import (
    NeighbourGraph,
    degree,
    graph_seed,
    threshold,
    tolerated_colluders,
)
from protocol.pki import init_ca, issue_site
from protocol.recovery import open_shares, reconstruct_revealed, reveal, seal_shares
from protocol.rounds import parse_requests
from protocol.secure_agg import mask_release, unmask_sum
from protocol.shamir import reconstruct, split
from tests.synthetic_sites import certified_sites

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)

STUDY = "study-rec"
SITES = [f"site-{i:02d}" for i in range(24)]


@pytest.fixture(scope="module")
def network_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """Three synthetic sites with stores and site certificates of one network CA."""
    tmp = tmp_path_factory.mktemp("secure")
    return tmp, certified_sites(tmp)


def _close(a: object, b: object, path: str = "") -> None:
    """Integers exactly, reals to 1e-9 (fields that name the sites skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in b:
            if key not in ("sites", "time_resolution_days"):
                _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    for site in SITES:
        issue_site(root / "ca", site, root / site)
    return root


def _exchange(pki: Path, n: int) -> tuple[dict[str, PairwiseMasker], dict[str, KeyAnnouncement]]:
    ca = (pki / "ca" / "ca.pem").read_bytes()
    keys, anns = {}, {}
    for site in SITES[:n]:
        identity = serialization.load_pem_private_key((pki / site / "key.pem").read_bytes(),
                                                      password=None)
        keys[site], anns[site] = announce(site, STUDY, 1, identity,
                                          (pki / site / "cert.pem").read_bytes())
        verify_announcement(anns[site], ca, STUDY, 1)
    return {s: PairwiseMasker(s, keys[s], anns, STUDY, 1) for s in anns}, anns


def test_degree_is_logarithmic_and_threshold_above_half() -> None:
    assert degree(10) == 9 and degree(50) == 18 and degree(500) == 28
    for n in range(2, 2000):
        k = degree(n)
        assert k <= n - 1
        t = threshold(k)
        assert 2 * t > k + 1 and t <= k + 1  # two disjoint sets of t holders cannot exist
        c = tolerated_colluders(k)  # nor two sets of t sharing only c colluders
        assert 2 * t > k + 1 + c and 3 * t >= 2 * (k + 1)
        assert c >= (k + 1) // 3 - 1


def test_every_site_derives_the_same_regular_graph(pki: Path) -> None:
    maskers, _ = _exchange(pki, 24)
    k = degree(24)
    assert k < 23  # not complete: masks with a bounded set of neighbours
    for s, m in maskers.items():
        assert len(m.neighbours) == k
        for peer in m.neighbours:  # symmetric
            assert s in maskers[peer].neighbours
    graphs = {frozenset(m.graph.edges()) for m in maskers.values()}
    assert len(graphs) == 1


def test_the_graph_cannot_be_steered_by_the_relay(pki: Path) -> None:
    maskers, anns = _exchange(pki, 24)
    seed = graph_seed(STUDY, 1, anns)
    # the relay's order does not matter
    shuffled = dict(reversed(list(anns.items())))
    assert graph_seed(STUDY, 1, shuffled) == seed
    # another graph needs another announcement, whose signature then fails
    victim = SITES[0]
    forged = dataclasses.replace(anns[victim], channel_key=bytes(range(32)))
    assert graph_seed(STUDY, 1, {**anns, victim: forged}) != seed
    with pytest.raises(SecureAggregationError, match="signature"):
        verify_announcement(forged, (pki / "ca" / "ca.pem").read_bytes(), STUDY, 1)
    # and the graph is a function of the seed alone
    assert NeighbourGraph(SITES[:24], seed).edges() == maskers[victim].graph.edges()


def test_shamir_needs_the_threshold() -> None:
    secret = bytes(range(32))
    shares = split(secret, list(range(1, 8)), 4)
    for subset in itertools.combinations(shares, 4):
        assert reconstruct({x: shares[x] for x in subset}, 4) == secret
    with pytest.raises(SecureAggregationError, match="fewer than the threshold"):
        reconstruct({x: shares[x] for x in (1, 2, 3)}, 4)
    # three shares are consistent with any secret: add a fourth point for another secret
    other = split(b"\x01" * 32, [1, 2, 3, 9], 4)
    assert other[1] != shares[1]  # fresh randomness each split


def _release(rng: np.random.Generator) -> Release:
    return Release("cox", "d", {"n": rng.integers(0, 50, size=40),
                                "x": rng.uniform(-1e6, 1e6, size=(4, 5))})


def _recover(maskers: dict[str, PairwiseMasker], anns: dict[str, KeyAnnouncement],
             dropped: set[str], reveals_of: dict[str, set[str]] | None = None
             ) -> dict[str, dict]:
    """Every site seals its shares; each survivor opens those addressed to it and reveals."""
    sealed = {s: seal_shares(m) for s, m in maskers.items()}
    reveals = {}
    for s, m in maskers.items():
        if s in dropped:
            continue
        pairs = {s: m.own_shares}
        for peer in m.neighbours:
            pairs[peer] = open_shares(sealed[peer][s], m, peer)
        told = (reveals_of or {}).get(s, dropped)
        reveals[s] = reveal(m, pairs, told)
    return reveals


def test_a_dropout_is_recovered_exactly_from_the_survivors_shares(pki: Path) -> None:
    maskers, anns = _exchange(pki, 24)
    rng = np.random.default_rng(3)
    plain = {s: _release(rng) for s in maskers}
    masked = {s: mask_release(plain[s], m, 5, self_mask=True) for s, m in maskers.items()}
    dropped = {SITES[3], SITES[11]}
    survivors = [s for s in sorted(maskers) if s not in dropped]
    reveals = _recover(maskers, anns, dropped)
    revealed = reconstruct_revealed(STUDY, 1, 5, anns, reveals, dropped, survivors)
    assert set(revealed.keys) == dropped and set(revealed.seeds) == set(survivors)
    total = unmask_sum([masked[s] for s in survivors], survivors, revealed)
    np.testing.assert_array_equal(total.vectors["n"], sum(plain[s].vectors["n"]
                                                          for s in survivors))
    exact = sum(plain[s].vectors["x"] for s in survivors)
    assert np.max(np.abs(total.vectors["x"] - exact)) < 1e-6
    # the survivors' masked vectors alone do not sum to anything near it
    with pytest.raises(SecureAggregationError, match="not revealed"):
        unmask_sum([masked[s] for s in survivors])


def test_masked_vectors_with_self_masks_look_uniform(pki: Path) -> None:
    maskers, _ = _exchange(pki, 6)
    zeros = Release("km", "c", {"n": np.zeros(4000, dtype=np.int64)})
    out = mask_release(zeros, maskers[SITES[0]], 2, self_mask=True).vectors["i:n"]
    bits = np.unpackbits(out.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01


def test_a_lying_aggregator_cannot_unmask_a_site_it_reports_dropped(pki: Path) -> None:
    maskers, anns = _exchange(pki, 24)
    rng = np.random.default_rng(4)
    plain = {s: _release(rng) for s in maskers}
    masked = {s: mask_release(plain[s], m, 5, self_mask=True) for s, m in maskers.items()}
    victim = SITES[7]
    holders = maskers[victim].graph.holders(victim)
    # every honest holder reveals once: told "dropped", the mask-key share; otherwise the
    # self-mask seed share. Split the holders as evenly as an aggregator could.
    half = set(holders[: len(holders) // 2])
    told = {s: ({victim} if s in half else set()) for s in maskers}
    reveals = _recover(maskers, anns, set(), told)
    # an even split reaches the threshold (two thirds of the holders) on neither side; no
    # split gives the aggregator both, even with tolerated_colluders(k) holders on its side
    with pytest.raises(SecureAggregationError, match="threshold"):
        reconstruct_revealed(STUDY, 1, 5, anns, reveals, {victim}, [])
    with pytest.raises(SecureAggregationError, match="threshold"):
        reconstruct_revealed(STUDY, 1, 5, anns, reveals, (), [victim])
    t = maskers[victim].graph.threshold
    c = tolerated_colluders(maskers[victim].graph.degree)
    assert c >= 1
    assert not any(j + c >= t and len(holders) - c - j + c >= t
                   for j in range(len(holders) - c + 1))
    # with its mask key alone (all holders told "dropped"), the self mask still hides it
    reveals = _recover(maskers, anns, set(), {s: {victim} for s in maskers})
    revealed = reconstruct_revealed(STUDY, 1, 5, anns, reveals, {victim}, [])
    revealed.seeds = {}
    stripped = unmask_sum([masked[victim]], [], revealed)  # pairwise masks removed
    assert not np.array_equal(stripped.vectors["n"], plain[victim].vectors["n"])
    assert np.max(np.abs(stripped.vectors["n"])) > 2**40  # still a uniform-looking mask


def _count_announces(log: list[int]):
    def wrap(handler):
        def answer(task: StudyTask):
            requests = parse_requests(task.inputs)
            if requests.announce is not None:
                log.append(requests.announce)
            return handler(task)
        return answer
    return wrap


def _silent_from(round_: int):
    def wrap(handler):
        def answer(task: StudyTask):
            return None if task.round >= round_ else handler(task)
        return answer
    return wrap


def test_a_site_dropping_after_the_key_exchange_is_recovered_without_a_new_one(
        tmp_path, network_parts):
    tmp, sites = network_parts
    names = sorted(sites)
    gone = names[1]
    log: list[int] = []
    wrappers = {s: _count_announces(log) for s in names}
    inner = wrappers[gone]
    wrappers[gone] = lambda h: _silent_from(3)(inner(h))  # answers keys and screening only
    km = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival",
          "group_by": "route"}
    study = make_study("rec-drop", [km], cohort={}, min_sites=2)
    masked = dataclasses.replace(study, privacy=dataclasses.replace(
        study.privacy, secure_aggregation=True))

    def net(members, wrap=None):
        return SimulatedNetwork(
            tmp_path / f"n-{len(members)}-{bool(wrap)}",
            [SimulatedSite(s, sites[s] / "store", DAY, sites[s] / "credentials")
             for s in members], KEY, today=lambda: TODAY, site_timeout_s=5,
            ca_dir=tmp / "ca", node_wrappers=wrap or {})

    with net(names, wrappers) as n1:
        got = n1.run(masked, timeout_s=120)
    assert log == [1] * len(names)  # one key exchange, no second attempt
    assert got["status"] == "completed", got
    assert gone in got["sites"]["dropped_during_study"]
    assert sorted(got["sites"]["participated"]) == [s for s in names if s != gone]
    with net([s for s in names if s != gone]) as n2:
        expected = n2.run(dataclasses.replace(study, id="rec-plain"), timeout_s=120)
    assert "error" not in got["analyses"]["km"], got["analyses"]["km"]
    _close(got["analyses"]["km"], expected["analyses"]["km"])


def test_a_cox_model_survives_a_dropout_in_its_first_round(tmp_path, network_parts):
    """The Cox description round is the self-masked one: the sites check every later Newton
    step from the survivors' relayed releases, unmasked with the secrets the relay carries."""
    tmp, sites = network_parts
    names = sorted(sites)
    gone = names[0]
    cox = [{"name": "cox", "kind": "cox", "endpoint": "overall_survival",
            "covariates": ["age_at_infusion", "ecog"]},
           {"name": "cox_site", "kind": "cox", "endpoint": "overall_survival",
            "covariates": ["age_at_infusion", "ecog"], "strata": "site"}]
    study = make_study("rec-cox", cox, cohort={}, min_sites=2)
    masked = dataclasses.replace(study, privacy=dataclasses.replace(
        study.privacy, secure_aggregation=True))

    def net(members, tag, wrap=None):
        return SimulatedNetwork(
            tmp_path / tag, [SimulatedSite(s, sites[s] / "store", DAY, sites[s] / "credentials")
                             for s in members], KEY, today=lambda: TODAY, site_timeout_s=5,
            ca_dir=tmp / "ca", node_wrappers=wrap or {})

    with net(names, "drop", {gone: _silent_from(3)}) as n1:
        got = n1.run(masked, timeout_s=120)
    with net([s for s in names if s != gone], "ref") as n2:
        ref = n2.run(dataclasses.replace(masked, id="rec-cox-ref"), timeout_s=120)
    assert got["status"] == "completed" and gone in got["sites"]["dropped_during_study"]
    for name in ("cox", "cox_site"):
        a, b = got["analyses"][name], ref["analyses"][name]
        assert "error" not in a, (a, got["sites"])
        for term, coef in b["coefficients"].items():
            assert a["coefficients"][term]["coef"] == pytest.approx(coef["coef"], abs=1e-9)


def test_survivors_reveal_nothing_when_a_decision_changes_without_the_dropped_site(
        tmp_path, network_parts):
    """Dropping a site on purpose must not expose a pooled cohort below min_cohort: the
    survivors screen again and refuse to reveal shares, and no new key exchange follows."""

    tmp, sites = network_parts
    names = sorted(sites)
    gone = names[-1]
    km = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"}
    plain = make_study("rec-size", [km], cohort={}, min_sites=2)

    def net(members, tag, policy, wrap=None):
        return SimulatedNetwork(
            tmp_path / tag, [SimulatedSite(s, sites[s] / "store", policy,
                                           sites[s] / "credentials") for s in members],
            KEY, today=lambda: TODAY, site_timeout_s=5, ca_dir=tmp / "ca",
            node_wrappers=wrap or {})

    sizes = []
    for members, tag in ((names, "all"), ([s for s in names if s != gone], "others")):
        with net(members, tag, DAY) as n:
            res = n.run(dataclasses.replace(plain, id=f"rec-size-{tag}"), timeout_s=120)
        sizes.append(sum(g["n"] for g in res["analyses"]["km"]["groups"].values()))
    total, without = sizes
    assert without < total
    policy = Policy(min_cohort=without + 1, min_cell=1, min_bin_events=1)
    log: list[int] = []
    wrappers = {s: _count_announces(log) for s in names}
    inner = wrappers[gone]
    wrappers[gone] = lambda h: _silent_from(3)(inner(h))
    masked = dataclasses.replace(plain, id="rec-size-masked", privacy=dataclasses.replace(
        plain.privacy, secure_aggregation=True))
    with net(names, "drop", policy, wrappers) as n:
        got = n.run(masked, timeout_s=120)
    assert log == [1] * len(names)
    assert got["status"] == "completed"
    assert "error" in got["analyses"]["km"], got["analyses"]["km"]
    assert "thresholds" in got["analyses"]["km"]["error"]
    assert "groups" not in got["analyses"]["km"]


def test_after_shares_are_revealed_no_new_key_exchange_can_difference_sums(
        tmp_path, network_parts):
    """A site lost in a later round (a Newton step) cannot be recovered (its seed is known)
    and every node refuses a second key exchange: the aggregator never gets a second sum of
    the first round over other sites."""
    tmp, sites = network_parts
    names = sorted(sites)
    gone = names[-1]
    cox = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
           "covariates": ["age_at_infusion", "ecog"]}
    masked = make_study("rec-late", [cox], cohort={}, min_sites=2, secure_aggregation=True)
    log: list[int] = []
    wrappers = {s: _count_announces(log) for s in names}
    inner = wrappers[gone]
    wrappers[gone] = lambda h: _silent_from(5)(inner(h))  # after the unmask round
    with SimulatedNetwork(
            tmp_path / "late", [SimulatedSite(s, sites[s] / "store", DAY,
                                              sites[s] / "credentials") for s in names],
            KEY, today=lambda: TODAY, site_timeout_s=5, ca_dir=tmp / "ca",
            node_wrappers=wrappers) as n:
        got = n.run(masked, timeout_s=120)
    assert log.count(1) == len(names)
    assert log.count(2) == len(names) - 1  # asked again, every one of them refused
    assert "error" in got["analyses"]["cox"]
    refused = got["sites"].get("refused", {})
    assert sorted(refused) == [s for s in names if s != gone]
    assert all("no new key exchange" in r for r in refused.values()), refused


def test_the_dropped_set_is_fixed_once_shares_are_revealed(tmp_path, network_parts):
    """After an unmask with nobody dropped, a relay naming a dropped site (to make a site mask
    with fewer neighbours) is refused."""
    from protocol.rounds import KEYS

    tmp, sites = network_parts
    names = sorted(sites)
    liar_target, victim = names[0], names[-1]
    refusals: list[str] = []

    def tamper(handler):
        def answer(task: StudyTask):
            if task.round >= 5:
                inputs = tuple(
                    Release(r.analysis, r.kind, r.vectors, {**r.metadata, "dropped": [victim]})
                    if r.analysis == KEYS else r for r in task.inputs)
                task = dataclasses.replace(task, inputs=inputs)
            reply = handler(task)
            if reply is not None and reply.refusal:
                refusals.append(reply.refusal)
            return reply
        return answer

    cox = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
           "covariates": ["age_at_infusion", "ecog"]}
    study = make_study("rec-fixed", [cox], cohort={}, min_sites=2, secure_aggregation=True)
    with SimulatedNetwork(
            tmp_path / "fixed", [SimulatedSite(s, sites[s] / "store", DAY,
                                               sites[s] / "credentials") for s in names],
            KEY, today=lambda: TODAY, site_timeout_s=5, ca_dir=tmp / "ca",
            node_wrappers={liar_target: tamper}) as n:
        got = n.run(study, timeout_s=120)
    assert "secure aggregation: attempt 1 already has other dropped sites" in refusals
    assert "error" in got["analyses"]["cox"]

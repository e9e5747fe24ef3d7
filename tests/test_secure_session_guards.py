"""A malicious aggregator cannot steer a site's secure-aggregation session.

Each attack is what an aggregator that deviates from the protocol would send straight to the
node engines (real keys, certificates and masking): masked rounds over subsets of the
participants ({A,B}, {A,C}, {B,C} give A's own vector as (AB + AC - BC) / 2), a round asked
twice with other requests (two answers under the same masks differ by the plain values), and
key exchanges replayed to get fresh keys. Each must fail at the node.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heron.simulation import SimulatedNetwork, SimulatedSite, ingest_sites, make_study
from heron.synth import synthesize
from node.governance.policy import Policy
from protocol.codec import Release
from protocol.rounds import announce_request, key_relay, screen_request, summary_request
from protocol.signing import sign_study

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
KM = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival", "group_by": "sex"}
NA = {"name": "na", "kind": "nelson_aalen", "endpoint": "overall_survival"}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    tmp = tmp_path_factory.mktemp("guards")
    folders = {f.site_id: f.path for f in synthesize(tmp / "data", sites=3, patients=60,
                                                     seed=3)}
    return ingest_sites(tmp / "stores", folders, policy=Policy())


@pytest.fixture
def net(tmp_path: Path, sites: list[SimulatedSite]) -> Iterator[SimulatedNetwork]:
    with SimulatedNetwork(tmp_path / "net", sites, KEY, today=lambda: TODAY) as network:
        yield network


def _study(study_id: str, min_sites: int) -> Any:
    return make_study(study_id, [KM, NA], cohort={}, min_sites=min_sites,
                      secure_aggregation=True, expires=TODAY + dt.timedelta(days=30))


def _announce(net: SimulatedNetwork, study: Any, attempt: int = 1) -> dict[str, Any]:
    signed = sign_study(study, KEY)
    out = {}
    for site, node in sorted(net.nodes.items()):
        answer = node.answer(study.id, signed, 1, (announce_request(attempt),))
        assert answer.releases is not None, answer.refusal
        out[site] = answer.releases[0].metadata["announcement"]
    return out


def _ask(net: SimulatedNetwork, study: Any, site: str, keys: dict[str, Any],
         pair: tuple[str, ...], rnd: int, analysis: dict[str, str] | None = None) -> Any:
    """A masked round over ``pair``: the screening round, or a summary of ``analysis``."""
    relay = key_relay(1, [keys[s] for s in pair])
    request = screen_request() if analysis is None else summary_request(analysis["name"],
                                                                         analysis["kind"])
    return net.nodes[site].answer(study.id, sign_study(study, KEY), rnd, (relay, request))


def test_a_relay_with_fewer_than_min_sites_participants_is_refused(net: SimulatedNetwork
                                                                   ) -> None:
    study = _study("guard-min-sites", min_sites=3)
    keys = _announce(net, study)
    a, b, _ = sorted(keys)
    for site in (a, b):
        answer = _ask(net, study, site, keys, (a, b), 2)
        assert answer.refusal == ("secure aggregation: 2 participants, fewer than "
                                  "min_sites 3")


def test_subsets_of_one_attempt_cannot_isolate_a_site(net: SimulatedNetwork) -> None:
    study = _study("guard-subsets", min_sites=2)
    keys = _announce(net, study)
    a, b, c = sorted(keys)
    ab = [_ask(net, study, s, keys, (a, b), 2) for s in (a, b)]
    assert all(x.releases for x in ab)  # a pair is a legal participant set here
    # each sealed its counts for the other (the aggregator cannot open them)
    assert [set(x.releases[0].metadata["sealed"]) for x in ab] == [{b}, {a}]
    # the attack's second and third sums: the participants of attempt 1 are fixed
    assert _ask(net, study, a, keys, (a, c), 3).refusal == (
        "secure aggregation: attempt 1 already has other participants")
    assert _ask(net, study, c, keys, (b, c), 4).releases is not None  # c never agreed before
    assert _ask(net, study, b, keys, (b, c), 4).refusal == (
        "secure aggregation: attempt 1 already has other participants")


def test_a_round_is_answered_for_one_set_of_requests(net: SimulatedNetwork) -> None:
    study = _study("guard-rounds", min_sites=3)
    keys = _announce(net, study)
    everyone = tuple(sorted(keys))
    site = everyone[0]
    first = _ask(net, study, site, keys, everyone, 2)
    again = _ask(net, study, site, keys, everyone, 2)  # a resend after a restart
    assert first.releases is not None and again.releases is not None
    assert all(np.array_equal(first.releases[0].vectors[k], again.releases[0].vectors[k])
               for k in first.releases[0].vectors)
    other = _ask(net, study, site, keys, everyone, 2, analysis=NA)
    assert other.refusal == ("secure aggregation: round 2 was already answered for other "
                             "requests")
    assert _ask(net, study, site, keys, everyone, 3).releases is not None
    # and no analysis is released without every participant's screening counts
    assert _ask(net, study, site, keys, everyone, 4, analysis=NA).refusal == (
        "secure aggregation: analyses are released only with the screening counts of every "
        "participant")


def test_a_key_exchange_cannot_be_replayed_for_fresh_keys(net: SimulatedNetwork) -> None:
    study = _study("guard-replay", min_sites=3)
    signed = sign_study(study, KEY)
    node = next(iter(net.nodes.values()))

    def announce(attempt: int) -> Any:
        return node.answer(study.id, signed, 1, (announce_request(attempt),))

    first = announce(1).releases[0]
    assert isinstance(first, Release)
    assert announce(1).releases[0] == first  # the same key, not a fresh one
    second = announce(2).releases[0]
    assert second.metadata["announcement"] != first.metadata["announcement"]
    assert announce(1).refusal == "secure aggregation: key exchange 1 comes after 2"


def test_the_rules_survive_a_restart_and_the_keys_do_not(net: SimulatedNetwork,
                                                         tmp_path: Path) -> None:
    import base64
    import json
    import stat

    from node.runtime.secure_session import SecureSessions

    study = _study("guard-restart", min_sites=3)
    keys = _announce(net, study)
    site = sorted(keys)[0]
    everyone = tuple(sorted(keys))
    assert _ask(net, study, site, keys, everyone, 2).releases is not None
    node = net.nodes[site]
    assert node.secure is not None
    state_file = node.secure._state_file
    assert state_file is not None and stat.S_IMODE(state_file.stat().st_mode) == 0o600
    saved = json.loads(state_file.read_text())["studies"][study.id]
    assert saved["participants"] == {"1": list(everyone)} and saved["announced"] == [1]
    private = node.secure._studies[study.id].keys[1].mask.private_bytes_raw()
    text = state_file.read_text()
    assert private.hex() not in text and base64.b64encode(private).decode() not in text
    node.secure = SecureSessions(site, net._credentials[site], state_file)  # a restart
    signed = sign_study(study, KEY)
    # attempt 1 cannot be announced afresh (its key died with the process) ...
    again = node.answer(study.id, signed, 5, (announce_request(1),))
    assert again.refusal == ("secure aggregation: key exchange 1 was announced before this "
                             "node restarted; its key is gone")
    # ... its rounds are refused as those of a restarted node (the aggregator re-keys) ...
    assert _ask(net, study, site, keys, everyone, 6).refusal == (
        "no ephemeral key for attempt 1 (node restarted?)")
    # ... and the next attempt is announced as usual
    assert node.answer(study.id, signed, 7, (announce_request(2),)).releases is not None


def test_an_attempt_has_one_masker_whose_guard_spans_its_rounds(net: SimulatedNetwork) -> None:
    from node.errors import StudyRefused
    from protocol.errors import SecureAggregationError
    from protocol.rounds import KeyRelay

    study = _study("guard-one-masker", min_sites=3)
    keys = _announce(net, study)
    site = sorted(keys)[0]
    secure = net.nodes[site].secure
    assert secure is not None
    relay = KeyRelay(1, tuple(keys[s] for s in sorted(keys)))
    first, participants = secure.masker(study.id, relay, 3)
    again, _ = secure.masker(study.id, relay, 3)
    assert again is first and participants == sorted(keys)  # verified and derived once
    first.mask(7, "k", np.array([1, 2, 3]))
    with pytest.raises(SecureAggregationError, match="never reused"):
        again.mask(7, "k", np.array([1, 2, 4]))  # the guard is the attempt's, not a call's
    secure.end(study.id)
    with pytest.raises(StudyRefused, match="has ended"):
        secure.masker(study.id, relay, 3)

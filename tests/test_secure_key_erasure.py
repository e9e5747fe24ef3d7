"""A node erases a secure attempt's ephemeral private key once the attempt has ended.

An attempt ends when a newer one is announced, when the study expires, or when the node is
told the study's last round is answered (:meth:`SecureSessions.end`). After that a request
for the old attempt cannot be answered: with the key gone there is nothing to mask with.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heron.simulation import SimulatedNetwork, SimulatedSite, ingest_sites, make_study
from heron.synth import synthesize
from node.governance.policy import Policy
from protocol.rounds import announce_request, key_relay, summary_request
from protocol.signing import sign_study

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
KM = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    tmp = tmp_path_factory.mktemp("erasure")
    folders = {f.site_id: f.path for f in synthesize(tmp / "data", sites=3, patients=60,
                                                     seed=4)}
    return ingest_sites(tmp / "stores", folders, policy=Policy())


@pytest.fixture
def clock() -> list[dt.date]:
    return [TODAY]


@pytest.fixture
def net(tmp_path: Path, sites: list[SimulatedSite], clock: list[dt.date]
        ) -> Iterator[SimulatedNetwork]:
    with SimulatedNetwork(tmp_path / "net", sites, KEY, today=lambda: clock[0]) as network:
        yield network


def _study(study_id: str, days: int = 30) -> Any:
    return make_study(study_id, [KM], cohort={}, min_sites=3, secure_aggregation=True,
                      expires=TODAY + dt.timedelta(days=days))


def _keys(net: SimulatedNetwork, study: Any, attempt: int) -> dict[str, Any]:
    out = {}
    for site, node in sorted(net.nodes.items()):
        got = node.answer(study.id, sign_study(study, KEY), 1, (announce_request(attempt),))
        assert got.releases is not None, got.refusal
        out[site] = got.releases[0].metadata["announcement"]
    return out


def _round(net: SimulatedNetwork, study: Any, site: str, keys: dict[str, Any], attempt: int,
           rnd: int) -> Any:
    relay = key_relay(attempt, list(keys.values()))
    return net.nodes[site].answer(study.id, sign_study(study, KEY), rnd,
                                  (relay, summary_request("km", "kaplan_meier")))


def _private_keys(net: SimulatedNetwork, site: str, study: Any) -> dict[int, Any]:
    secure = net.nodes[site].secure
    assert secure is not None
    return dict(secure._studies[study.id].keys)


def test_a_newer_attempt_erases_the_older_key(net: SimulatedNetwork) -> None:
    study = _study("erase-attempt")
    first = _keys(net, study, 1)
    site = sorted(first)[0]
    assert list(_private_keys(net, site, study)) == [1]
    assert "erased" not in (_round(net, study, site, first, 1, 2).refusal or "")
    second = _keys(net, study, 2)
    assert list(_private_keys(net, site, study)) == [2]
    old = _round(net, study, site, first, 1, 3)  # an aggregator asking attempt 1 again
    assert old.refusal == ("secure aggregation: attempt 1 has ended; its ephemeral key was "
                           "erased")
    assert "erased" not in (_round(net, study, site, second, 2, 3).refusal or "")


def test_an_expired_study_keeps_no_key(net: SimulatedNetwork, clock: list[dt.date]) -> None:
    short = _study("erase-expiry", days=2)
    keys = _keys(net, short, 1)
    site = sorted(keys)[0]
    assert list(_private_keys(net, site, short)) == [1]
    clock[0] = TODAY + dt.timedelta(days=3)
    other = _study("erase-other", days=30)  # any later task of the node sweeps
    _keys(net, other, 1)
    assert _private_keys(net, site, short) == {}
    assert list(_private_keys(net, site, other)) == [1]
    clock[0] = TODAY  # even if the clock went back, the key is gone
    assert _round(net, short, site, keys, 1, 3).refusal == (
        "secure aggregation: attempt 1 has ended; its ephemeral key was erased")


def test_ending_a_study_erases_its_keys(net: SimulatedNetwork) -> None:
    study = _study("erase-end")
    keys = _keys(net, study, 1)
    site = sorted(keys)[0]
    assert "erased" not in (_round(net, study, site, keys, 1, 2).refusal or "")
    secure = net.nodes[site].secure
    assert secure is not None
    secure.end(study.id)
    assert _private_keys(net, site, study) == {}
    assert _round(net, study, site, keys, 1, 3).refusal == (
        "secure aggregation: attempt 1 has ended; its ephemeral key was erased")
    # asking for the attempt's key again gives the same (unusable) announcement, not a new key
    again = net.nodes[site].answer(study.id, sign_study(study, KEY), 1, (announce_request(1),))
    assert again.releases is not None
    assert again.releases[0].metadata["announcement"] == keys[site]

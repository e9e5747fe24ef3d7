"""Helpers for end-to-end tests: a real loopback network of subprocess daemons.

In-process and threaded gRPC networks are :mod:`heron.simulation`'s; ``make_study`` and the
pooled reference data come from there too.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from heron.coordinator import CoordinatorClient
from heron.network import LocalNetwork
from heron.simulation import make_study, pooled_survival_data
from heron.synth import synthesize
from node.governance.policy import Policy
from protocol.keys import load_private_key
from protocol.signing import SignedStudy, sign_study
from protocol.study import Study

# no thresholds at all: these tests compare exact results across studies on one cohort
DAY_RESOLUTION = Policy(min_cohort=1, min_cell=1, min_bin_events=1, min_cohort_difference=1)


def start_network(tmp: Path, site_sizes: int, n_sites: int, policy: Policy,
                  site_timeout_s: float = 60.0, verify_at_aggregator: bool = False,
                  seed: int = 7) -> tuple[LocalNetwork, dict[str, Path]]:
    """Synthesise sites, start an aggregator and one node per site; wait until connected."""
    folders = synthesize(tmp / "sites", sites=n_sites, patients=site_sizes, seed=seed)
    folders = [f for f in folders if f.patients >= 10]
    net = LocalNetwork(tmp / "network", site_timeout_s=site_timeout_s,
                       verify_at_aggregator=verify_at_aggregator)
    net.setup_pki()
    net.start_aggregator()
    stores = {}
    for f in folders:
        config = net.add_site(f.site_id, f.path, policy)
        net.start_node(config)
        stores[f.site_id] = config.path("store_dir")
    with client(net) as c:
        c.wait_for_sites(set(stores), timeout_s=60)
    return net, stores


def client(net: LocalNetwork) -> CoordinatorClient:
    """A coordinator client of the network."""
    return CoordinatorClient(net.target, net.coordinator_dir / "credentials")


def signed(net: LocalNetwork, study: Study) -> SignedStudy:
    """The study signed with the network's coordinator key."""
    return sign_study(study, load_private_key(net.coordinator_dir / "signing.key"))


def run_study(net: LocalNetwork, study_or_signed: Study | SignedStudy,
              timeout_s: float = 120) -> dict[str, Any]:
    """Submit and wait for results.json."""
    s = study_or_signed if isinstance(study_or_signed, SignedStudy) else signed(
        net, study_or_signed)
    with client(net) as c:
        study_id = c.submit(s)
        c.wait_for_completion(study_id, timeout_s)
        return c.results(study_id)


def pooled_individual_data(stores: dict[str, Path], study: Study, endpoint: str,
                           group_by: str | None) -> pd.DataFrame:
    """The reference: every site's individual (duration, event, group, site) rows pooled."""
    return pooled_survival_data(stores, study, endpoint, group_by)


def wait_until(predicate: Any, timeout_s: float = 30.0) -> None:
    """Poll a condition (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


__all__ = ["DAY_RESOLUTION", "client", "make_study", "pooled_individual_data", "replace",
           "run_study", "signed", "start_network", "wait_until"]

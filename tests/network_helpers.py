"""Helpers for end-to-end tests: a real loopback network of subprocess daemons."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from heron.coordinator import CoordinatorClient
from heron.network import LocalNetwork
from heron.synth import synthesize
from node.cohort import select_cohort
from node.endpoints import group_labels, survival_endpoint
from node.policy import Policy
from node.store import open_store
from protocol.keys import load_private_key
from protocol.signing import SignedStudy, sign_study
from protocol.study import Study, study_from_dict

DAY_RESOLUTION = Policy(min_cohort=1, min_cell=1, min_bin_events=1)


def make_study(study_id: str, analyses: list[dict[str, Any]], *, horizon: int = 1826,
               min_sites: int = 2, expires: dt.date | None = None,
               cohort: dict[str, Any] | None = None) -> Study:
    """A study over the synthetic LBCL cohort."""
    return study_from_dict({
        "heron": 1, "id": study_id, "title": f"test {study_id}",
        "expires": (expires or dt.date.today() + dt.timedelta(days=30)).isoformat(),
        "horizon_days": horizon,
        "cohort": {"indication_group": ["LBCL"]} if cohort is None else cohort,
        "analyses": analyses,
        "privacy": {"secure_aggregation": False, "min_sites": min_sites},
    })


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
    frames = []
    for site, store_dir in stores.items():
        store = open_store(store_dir)
        cohort = select_cohort(store, study.cohort)
        out = survival_endpoint(store, cohort, endpoint, study.horizon_days, study.censor_at)
        frames.append(pd.DataFrame({
            "duration": out["duration"].to_numpy(), "event": out["event"].to_numpy(dtype=bool),
            "group": group_labels(cohort, group_by, site).to_numpy(), "site": site}))
    return pd.concat(frames, ignore_index=True)


def wait_until(predicate: Any, timeout_s: float = 30.0) -> None:
    """Poll a condition (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


__all__ = ["DAY_RESOLUTION", "client", "make_study", "pooled_individual_data", "replace",
           "run_study", "signed", "start_network", "wait_until"]

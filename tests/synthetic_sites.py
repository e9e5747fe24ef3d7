"""The synthetic network of the disclosure attacks: ``heron synth`` sites, ingested.

``heron synth --sites 3 --patients 60 --seed 7`` gives sites of 99, 73 and 8 patients (the last
below the default ``min_cohort``): the network issue 8's attacks were played on.
"""

from __future__ import annotations

from pathlib import Path

from heron.simulation import SimulatedSite, ingest_sites
from heron.synth import synthesize
from node.governance.policy import Policy

__all__ = ["site_stores", "synthetic_network"]


def synthetic_network(tmp: Path, sites: int = 3, patients: int = 60, seed: int = 7,
                      policy: Policy | None = None) -> list[SimulatedSite]:
    """Synthesise and ingest ``sites`` sites under ``tmp`` (default site policy)."""
    folders = {f.site_id: f.path for f in synthesize(tmp / "data", sites=sites,
                                                     patients=patients, seed=seed)}
    return ingest_sites(tmp / "stores", folders, policy=policy or Policy())


def site_stores(sites: list[SimulatedSite]) -> dict[str, Path]:
    """Site id -> store folder."""
    return {s.site_id: s.store_dir for s in sites if s.store_dir is not None}


def certified_sites(tmp: Path) -> dict[str, Path]:
    """A network CA under ``tmp / "ca"`` and the synthetic sites of the secure-aggregation tests
    (4 synthesised, those with at least 10 patients kept), each a folder with ``store`` and
    ``credentials``; returns site id -> folder."""
    from node.ingestion.ingest import ingest
    from protocol.pki import init_ca, issue_site

    init_ca(tmp / "ca")
    sites = {}
    for f in synthesize(tmp / "sites", sites=4, patients=120, seed=8):
        if f.patients < 10:
            continue
        ingest(f.path, tmp / f.site_id / "store", b"z" * 32)
        issue_site(tmp / "ca", f.site_id, tmp / f.site_id / "credentials")
        sites[f.site_id] = tmp / f.site_id
    return sites

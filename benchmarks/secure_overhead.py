"""Benchmark: the cost of secure aggregation against unmasked release, for KM and Cox.

For 3, 10 and 50 sites (each a real node engine with its own certificate, the real study
engine and its round loop, in one process over the in-process transport, wired by
heron.simulation), prints the wall time of a Kaplan-Meier study and of a Cox study, unmasked
(day resolution) and with secure aggregation, and the bytes each site sends (serialised task
results, all rounds).

Run: ``.venv/bin/python benchmarks/secure_overhead.py [--sites 3 10 50] [--patients 300]``
(quick: ``--sites 3 --patients 100``)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.store import encode_task_result
from aggregator.transport import NodeHandler, StudyTask, TaskReply
from heron.simulation import SimulatedNetwork, SimulatedSite, make_study
from heron.synth import synthesize_site
from node.governance.policy import Policy
from node.ingestion.ingest import ingest
from protocol.pki import init_ca, issue_site

KEY = Ed25519PrivateKey.generate()
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
KM = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival",
      "group_by": "route"}
COX = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
       "covariates": ["age_at_infusion", "ecog", "prior_lines", "lab:LDH", "lab:CRP"]}


def make_sites(work: Path, n: int, patients: int) -> list[SimulatedSite]:
    init_ca(work / "ca")
    sites = []
    for i in range(n):
        site = f"site-{i + 1:02d}"
        folder = synthesize_site(work / "data" / site, site, patients, seed=40 + i,
                                 site_index=i)
        ingest(folder.path, work / site / "store", b"b" * 32)
        issue_site(work / "ca", site, work / site / "credentials")
        sites.append(SimulatedSite(site, work / site / "store", DAY, work / site / "credentials"))
    return sites


def run(work: Path, sites: list[SimulatedSite], study) -> tuple[float, float]:
    """Wall seconds of one study and mean bytes sent per site."""
    sent: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def counting(site: str):
        def wrap(handler: NodeHandler) -> NodeHandler:
            def answer(task: StudyTask) -> TaskReply | None:
                reply = handler(task)
                if reply is not None:
                    with lock:
                        sent[site] += len(encode_task_result(task.task_id, task.study_id,
                                                             reply.releases or ()))
                return reply
            return answer
        return wrap

    with SimulatedNetwork(work / study.id, sites, KEY, today=lambda: dt.date(2026, 11, 1),
                          site_timeout_s=600, ca_dir=work / "ca",
                          node_wrappers={s.site_id: counting(s.site_id) for s in sites}) as net:
        t0 = time.perf_counter()
        results = net.run(study, timeout_s=3600)
        wall = time.perf_counter() - t0
    assert all("error" not in a for a in results["analyses"].values()), results["analyses"]
    return wall, sum(sent.values()) / len(sites)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 50])
    parser.add_argument("--patients", type=int, default=300)
    args = parser.parse_args()
    print(f"secure aggregation overhead ({args.patients} patients per site; in-process "
          "transport, real node engines, certificates and masking)")
    print(f"{'sites':>5} {'analysis':>8} {'unmasked s':>11} {'masked s':>9} {'ratio':>6} "
          f"{'unmasked B/site':>16} {'masked B/site':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sites:
            work = Path(tmp) / f"n{n}"
            sites = make_sites(work, n, args.patients)
            for label, analysis in (("KM", KM), ("Cox", COX)):
                plain = make_study(f"plain-{label.lower()}-{n}", [analysis], cohort={},
                                   min_sites=3)
                masked = dataclasses.replace(
                    plain, id=f"masked-{label.lower()}-{n}",
                    privacy=dataclasses.replace(plain.privacy, secure_aggregation=True))
                t_plain, b_plain = run(work, sites, plain)
                t_mask, b_mask = run(work, sites, masked)
                print(f"{n:>5} {label:>8} {t_plain:>11.2f} {t_mask:>9.2f} "
                      f"{t_mask / t_plain:>6.2f} {b_plain:>16,.0f} {b_mask:>14,.0f}",
                      flush=True)


if __name__ == "__main__":
    main()

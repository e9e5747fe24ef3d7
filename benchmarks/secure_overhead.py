"""Benchmark: the cost of secure aggregation against unmasked release, for KM and Cox.

For 3, 10 and 50 sites (each a real node engine with its own certificate, the real study
engine, rounds and drivers, in one process over the in-process transport), prints the wall time
of a Kaplan-Meier study and of a Cox study, unmasked (day resolution) and with secure
aggregation, and the bytes each site sends (serialised task results, all rounds).

Run: ``.venv/bin/python benchmarks/secure_overhead.py [--sites 3 10 50] [--patients 300]``
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from aggregator.engine import StudyEngine  # noqa: E402
from aggregator.pooling import pool_study  # noqa: E402
from aggregator.secure_driver import NetworkDriver  # noqa: E402
from aggregator.store import Store, encode_task_result  # noqa: E402
from aggregator.transport import HelloInfo, LocalTransport, TaskReply  # noqa: E402
from heron.synth import synthesize_site  # noqa: E402
from node.audit import AuditTrail  # noqa: E402
from node.engine import NodeEngine  # noqa: E402
from node.ingest import ingest  # noqa: E402
from node.policy import Policy  # noqa: E402
from node.store import open_store  # noqa: E402
from protocol.pki import init_ca, issue_site, load_credentials  # noqa: E402
from protocol.signing import sign_study  # noqa: E402
from tests.network_helpers import make_study  # noqa: E402

KEY = Ed25519PrivateKey.generate()
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
KM = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival",
      "group_by": "route"}
COX = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
       "covariates": ["age_at_infusion", "ecog", "prior_lines", "lab:LDH", "lab:CRP"]}


def make_sites(work: Path, n: int, patients: int) -> dict[str, Path]:
    init_ca(work / "ca")
    sites = {}
    for i in range(n):
        site = f"site-{i + 1:02d}"
        folder = synthesize_site(work / "data" / site, site, patients, seed=40 + i,
                                 site_index=i)
        ingest(folder.path, work / site / "store", b"b" * 32)
        issue_site(work / "ca", site, work / site / "credentials")
        sites[site] = work / site
    return sites


def run(work: Path, sites: dict[str, Path], study) -> tuple[float, float]:
    """Wall seconds of one study and mean bytes sent per site."""
    transport = LocalTransport(max_workers=8)
    ca = (work / "ca" / "ca.pem").read_bytes()
    engine = StudyEngine(Store(work / f"{study.id}.db"), transport, pool_study,
                         [KEY.public_key()], driver=NetworkDriver(ca), site_timeout_s=600)
    sent: dict[str, int] = defaultdict(int)
    lock = threading.Lock()
    for site, folder in sites.items():
        node = NodeEngine(site, DAY, [KEY.public_key()],
                          lambda f=folder: open_store(f / "store"),
                          AuditTrail(folder / f"{study.id}.audit"),
                          today=lambda: dt.date(2026, 11, 1),
                          credentials=load_credentials(folder / "credentials"))

        def handler(task, node=node, site=site):
            out = node.answer(task.study_id, task.signed, task.round, task.inputs)
            with lock:
                sent[site] += len(encode_task_result(task.task_id, task.study_id,
                                                     out.releases or ()))
            return TaskReply(task.task_id, task.study_id, out.releases, out.refusal)

        transport.connect(site, handler, HelloInfo(site))
    t0 = time.perf_counter()
    engine.submit(sign_study(study, KEY))
    while engine.results(study.id) is None:
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    transport.close()
    results = engine.results(study.id)
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

"""Benchmark: secure aggregation (SecAgg+) at 10 to 500 sites, masked against unmasked.

For each number of sites (each a real node engine with its own certificate, the real study
engine and round loop, in one process over the in-process transport, wired by
heron.simulation) prints, side by side in one run: the wall time of a Kaplan-Meier study and
of a Cox study unmasked and with secure aggregation (repeats alternate plain and masked; the
ratio is taken per repeat, its range printed), the bytes each site sends over all rounds
(serialised task results) and in the largest single round, and a masked KM study in which one
site goes silent after the key exchange (recovered from the others' shares; the script checks
that no second key exchange happened and that the KM equals the unmasked KM of the others).

Run: ``.venv/bin/python benchmarks/secure_scale.py [--sites 10 50 200 500] [--repeats 3]
[--patients 300] [--cox-max 50]`` (Cox is run up to ``--cox-max`` sites; repeats above 200
sites are capped at one, see ``--big-repeats``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.store import encode_task_result
from aggregator.transport import NodeHandler, StudyTask, TaskReply
from benchmarks.secure_overhead import COX, KM, make_sites
from heron.simulation import SimulatedNetwork, SimulatedSite, make_study
from protocol.rounds import parse_requests
from protocol.study import Study

KEY = Ed25519PrivateKey.generate()


def run(work: Path, sites: list[SimulatedSite], study: Study, silent: str | None = None,
        timeout_s: float = 3600) -> tuple[float, float, float, list[int], dict[str, Any]]:
    """Wall seconds, mean bytes per site (all rounds), mean bytes per site in the largest
    round, the key-exchange attempts seen, and results.json."""
    sent: dict[tuple[str, int], int] = defaultdict(int)
    announces: list[int] = []
    lock = threading.Lock()

    def wrapper(site: str):
        def wrap(handler: NodeHandler) -> NodeHandler:
            def answer(task: StudyTask) -> TaskReply | None:
                req = parse_requests(task.inputs)
                if req.announce is not None:
                    with lock:
                        announces.append(req.announce)
                if site == silent and task.round >= 3:
                    return None  # announced its keys and screened, then went silent
                reply = handler(task)
                if reply is not None:
                    size = len(encode_task_result(task.task_id, task.study_id,
                                                  reply.releases or ()))
                    with lock:
                        sent[(site, task.round)] += size
                return reply
            return answer
        return wrap

    with SimulatedNetwork(work / study.id, sites, KEY, today=lambda: dt.date(2026, 11, 1),
                          site_timeout_s=timeout_s, ca_dir=work / "ca",
                          node_wrappers={s.site_id: wrapper(s.site_id) for s in sites}
                          ) as net:
        t0 = time.perf_counter()
        results = net.run(study, timeout_s=7200)
        wall = time.perf_counter() - t0
    per_round: dict[int, int] = defaultdict(int)
    for (_, rnd), size in sent.items():
        per_round[rnd] += size
    n = len(sites)
    return (wall, sum(sent.values()) / n, max(per_round.values()) / n, announces, results)


def _studies(label: str, analysis: dict[str, Any], n: int, rep: int) -> tuple[Study, Study]:
    plain = make_study(f"p-{label}-{n}-{rep}", [analysis], cohort={}, min_sites=3)
    masked = dataclasses.replace(plain, id=f"m-{label}-{n}-{rep}", privacy=dataclasses.replace(
        plain.privacy, secure_aggregation=True))
    return plain, masked


def _range(values: list[float]) -> str:
    return (f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"
            if len(values) > 1 else f"{values[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50, 200, 500])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-repeats", type=int, default=1,
                        help="repeats above 200 sites")
    parser.add_argument("--cox-max", type=int, default=50)
    parser.add_argument("--no-dropout", action="store_true")
    parser.add_argument("--only-dropout", action="store_true")
    parser.add_argument("--dropout-timeout", type=float, default=None,
                        help="site timeout of the dropout case (default 20 + n/2 s: every "
                             "honest site must answer each round within it)")
    args = parser.parse_args()
    print(f"SecAgg+ at scale ({args.patients} patients per site; in-process transport, real "
          "node engines, certificates, masking and shares); median [min-max] over repeats")
    print(f"{'sites':>5} {'analysis':>8} {'reps':>4} {'unmasked s':>20} {'masked s':>20} "
          f"{'ratio':>20} {'plain B/site':>13} {'masked B/site':>14} {'max round B/site':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sites:
            work = Path(tmp) / f"n{n}"
            t0 = time.perf_counter()
            sites = make_sites(work, n, args.patients)
            print(f"# {n} sites set up in {time.perf_counter() - t0:.0f} s", flush=True)
            reps = 0 if args.only_dropout else args.repeats if n <= 200 else args.big_repeats
            for label, analysis in (("KM", KM), ("Cox", COX)):
                if (label == "Cox" and n > args.cox_max) or not reps:
                    continue
                walls: dict[str, list[float]] = {"plain": [], "masked": []}
                ratios, size = [], {}
                for rep in range(reps):
                    plain, masked = _studies(label.lower(), analysis, n, rep)
                    for kind, study in (("plain", plain), ("masked", masked)):
                        wall, per_site, top, _, results = run(work, sites, study)
                        bad = {k: v["error"] for k, v in results["analyses"].items()
                               if "error" in v}
                        assert not bad and results["status"] == "completed", bad
                        walls[kind].append(wall)
                        size[kind] = (per_site, top)
                    ratios.append(walls["masked"][-1] / walls["plain"][-1])
                print(f"{n:>5} {label:>8} {reps:>4} {_range(walls['plain']):>20} "
                      f"{_range(walls['masked']):>20} {_range(ratios):>20} "
                      f"{size['plain'][0]:>13,.0f} {size['masked'][0]:>14,.0f} "
                      f"{size['masked'][1]:>17,.0f}", flush=True)
            if args.no_dropout:
                continue
            silent = sites[1].site_id
            _, masked = _studies("drop", KM, n, 0)
            timeout = args.dropout_timeout or 20 + n / 2
            wall, _, _, announces, got = run(work, sites, masked, silent=silent,
                                             timeout_s=timeout)
            others = [s for s in sites if s.site_id != silent]
            plain, _ = _studies("dropref", KM, n, 0)
            _, _, _, _, ref = run(work, others, plain)
            same = json.dumps(got["analyses"]["km"].get("groups"), sort_keys=True) == \
                json.dumps(ref["analyses"]["km"].get("groups"), sort_keys=True)
            print(f"{n:>5} KM, one site silent after the key exchange: {got['status']} in "
                  f"{wall:.2f} s (the silent site's timeout is {timeout:.0f} s); key exchanges "
                  f"{sorted(set(announces))}; participated {len(got['sites']['participated'])}"
                  f" of {n}; KM groups equal to the unmasked KM of the other sites: {same}",
                  flush=True)


if __name__ == "__main__":
    main()

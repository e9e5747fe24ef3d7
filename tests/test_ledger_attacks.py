"""Differencing attacks on the disclosure ledger, through the real node engine and store.

Attack 5: two studies with the same filters, ``first_infusion_only`` true and false, analyse
the same patients but one more infusion (a second infusion and its death on day 228); their
difference is that infusion's follow-up. The ledger compares infusions, and the complete cases
of a Cox model, not only patients.

Attack 9: the ledger was checked once per prepared cohort and recorded only after a data
round, so two studies interleaved (both past the check before either was recorded) were both
released. The check and the record are now one step under the ledger's lock, at the first
round that releases or announces a key, whatever its number.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heron.simulation import SimulatedNetwork, ingest_sites, make_study
from heron.synth import synthesize
from node.cohorts.cohort import select_cohort
from node.governance.audit import AuditTrail
from node.governance.ledger import DisclosureLedger
from node.governance.policy import Policy
from node.ingestion.ingest import ingest
from node.ingestion.store import open_store
from node.runtime.engine import NodeEngine, TaskOutcome
from protocol.rounds import announce_request, key_relay, summary_requests
from protocol.signing import sign_study
from protocol.study import Study

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
DATA_CUT = dt.date(2026, 6, 30)
LOOSE = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
KM = {"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"}
COX_AGE = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
           "covariates": ["age_at_infusion"]}
COX_ECOG = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
            "covariates": ["ecog"]}
SALT = b"L" * 32
_DATED = {"followup": ["contact_date"], "clinical_events": ["event_date"],
          "adverse_events": ["onset_date", "resolution_date"], "responses": ["assessment_date"]}


def _second_infusion(folder: Path) -> str:
    """Give one living patient a second infusion, dead on its day 228; return its id."""
    frames = {n: pd.read_csv(folder / f"{n}.csv", dtype=str, keep_default_na=False)
              for n in ("infusions", "followup", *_DATED)}
    inf = frames["infusions"]
    last = pd.to_datetime(inf.set_index("infusion_id")["infusion_date"])
    for name, columns in _DATED.items():
        for col in columns:
            dates = pd.to_datetime(frames[name][col].replace("", None))
            last = pd.concat([last, pd.Series(dates.to_numpy(),
                                              index=frames[name]["infusion_id"])])
    last = last.groupby(level=0).max()
    dead = set(frames["followup"].loc[frames["followup"]["vital_status"] == "dead",
                                      "infusion_id"])
    candidates = last[~last.index.isin(dead)].sort_values()
    first_id = str(candidates.index[0])
    second_date = candidates.iloc[0] + pd.Timedelta(days=30)
    death = second_date + pd.Timedelta(days=228)
    assert death.date() < DATA_CUT
    row = inf.loc[inf["infusion_id"] == first_id].iloc[0].copy()
    row["infusion_id"] = "I900001"
    row["infusion_date"] = second_date.date().isoformat()
    row["batch_id"] = "SE-UPP-99-999999"
    pd.concat([inf, row.to_frame().T]).to_csv(folder / "infusions.csv", index=False)
    fu = frames["followup"]
    extra = pd.DataFrame([{"infusion_id": "I900001", "contact_date": death.date().isoformat(),
                           "vital_status": "dead", "death_date": death.date().isoformat(),
                           "cause_of_death": "primary_disease"}])
    pd.concat([fu, extra]).to_csv(folder / "followup.csv", index=False)
    return str(row["patient_id"])


def _blank_ecog(folder: Path, infusion_ids: list[str]) -> None:
    inf = pd.read_csv(folder / "infusions.csv", dtype=str, keep_default_na=False)
    inf.loc[inf["infusion_id"].isin(infusion_ids), "ecog"] = ""
    inf.to_csv(folder / "infusions.csv", index=False)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ledger-attacks")
    folder = synthesize(tmp / "sites", sites=1, patients=180, seed=5, today=DATA_CUT)[0].path
    _second_infusion(folder)
    _blank_ecog(folder, ["I000007", "I000011"])
    report = ingest(folder, tmp / "store", b"s" * 32, today=DATA_CUT)
    assert sum(t.quarantined for t in report.tables.values()) == 0
    return tmp / "store"


def _engine(store_dir: Path, node_dir: Path) -> NodeEngine:
    """A node as a restart makes it: a fresh engine over the on-disk store and ledger."""
    return NodeEngine("se-uppsala", LOOSE, [KEY.public_key()], lambda: open_store(store_dir),
                      AuditTrail(node_dir / "audit.jsonl"), today=lambda: TODAY,
                      ledger=DisclosureLedger(node_dir / "ledger", SALT))


def _study(study_id: str, analyses: list[dict[str, Any]] | None = None,
           **cohort: Any) -> Study:
    return make_study(study_id, analyses or [KM], cohort=cohort,
                      expires=TODAY + dt.timedelta(days=30))


def _answer(engine: NodeEngine, study: Study, round: int = 1) -> TaskOutcome:
    return engine.answer(study.id, sign_study(study, KEY), round, summary_requests(study))


def _cohort(store_dir: Path, study: Study) -> pd.DataFrame:
    return select_cohort(open_store(store_dir), study.cohort, today=TODAY)


# -- attack 5: infusions, not patients --------------------------------------------------------

def test_first_infusion_only_true_and_false_are_not_both_released(store_dir: Path,
                                                                  tmp_path: Path) -> None:
    first = _study("att5-first", first_infusion_only=True)
    every = _study("att5-every", first_infusion_only=False)
    a, b = _cohort(store_dir, first), _cohort(store_dir, every)
    assert (len(a), len(b)) == (180, 181)  # the attack as reported: n 180 vs 181
    assert set(a["patient_id"]) == set(b["patient_id"])  # the same patients
    node = _engine(store_dir, tmp_path)
    assert _answer(node, first).releases is not None
    refused = _answer(node, every)
    assert refused.releases is None
    assert refused.refusal == ("the infusions analysed differ from those released for study "
                               "att5-first by fewer than 5 infusions (differencing risk)")
    # after a restart of the node the ledger still holds the first release
    again = _engine(store_dir, tmp_path)
    assert _answer(again, every).refusal == refused.refusal
    # and the released study itself is still answered, in any round
    assert _answer(again, first).releases is not None
    assert _answer(again, first, round=3).releases is not None


def test_cox_complete_cases_are_compared_with_other_releases(store_dir: Path,
                                                             tmp_path: Path) -> None:
    """The same cohort, but a Cox model on ecog drops the two infusions whose ecog is
    missing: its sums at beta = 0 differ from a model on age by those two infusions."""
    by_age = _study("att5-cox-age", [COX_AGE])
    by_ecog = _study("att5-cox-ecog", [COX_ECOG])
    node = _engine(store_dir, tmp_path)
    assert _answer(node, by_age).releases is not None
    refused = _answer(node, by_ecog)
    assert refused.releases is None
    assert refused.refusal is not None and "att5-cox-age" in refused.refusal
    assert "infusions (differencing risk)" in refused.refusal


def test_infusions_differing_by_k_or_more_are_released(store_dir: Path, tmp_path: Path) -> None:
    """The infusion check is not a blanket refusal: 5 infusions apart is allowed at k = 5."""
    base = _study("att5-base", first_infusion_only=True)
    dates = _cohort(store_dir, base)["infusion_date"].sort_values()
    cut = dates.iloc[-6]
    assert cut < dates.iloc[-5]  # exactly 5 infusions after the cut
    node = _engine(store_dir, tmp_path)
    assert _answer(node, base).releases is not None
    fewer = _study("att5-fewer", first_infusion_only=True,
                   infusion_date={"to": cut.date().isoformat()})
    assert len(_cohort(store_dir, fewer)) == 175
    assert _answer(node, fewer).releases is not None


# -- attack 9: check and record in one step, at any round -------------------------------------

def _two_apart(store_dir: Path) -> tuple[Study, Study]:
    """Two KM studies whose cohorts differ by the two latest first infusions."""
    a = _study("att9-a", first_infusion_only=True)
    dates = _cohort(store_dir, a)["infusion_date"].sort_values()
    assert dates.iloc[-3] < dates.iloc[-2]
    b = _study("att9-b", first_infusion_only=True,
               infusion_date={"to": dates.iloc[-3].date().isoformat()})
    assert len(_cohort(store_dir, a)) - len(_cohort(store_dir, b)) == 2
    return a, b


def test_a_study_first_seen_at_a_later_round_is_checked(store_dir: Path, tmp_path: Path) -> None:
    a, b = _two_apart(store_dir)
    node = _engine(store_dir, tmp_path)
    assert _answer(node, a).releases is not None
    late = _answer(node, b, round=4)  # no round 1 at this site
    assert late.releases is None and late.refusal is not None
    assert "att9-a" in late.refusal and "differencing risk" in late.refusal


def test_concurrent_studies_two_patients_apart_release_once(store_dir: Path,
                                                            tmp_path: Path) -> None:
    a, b = _two_apart(store_dir)
    node = _engine(store_dir, tmp_path)
    start = threading.Barrier(2)
    out: dict[str, TaskOutcome] = {}

    def run(study: Study) -> None:
        start.wait()
        out[study.id] = _answer(node, study)

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    released = sorted(s for s, o in out.items() if o.releases is not None)
    assert len(released) == 1, {s: o.refusal for s, o in out.items()}
    # a second node process on the same ledger sees the record as well
    other = _engine(store_dir, tmp_path)
    loser = b if released == ["att9-a"] else a
    assert _answer(other, loser).releases is None


@pytest.fixture(scope="module")
def net_sites(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("ledger-attacks-net")
    folders = {f.site_id: f.path for f in synthesize(tmp / "data", sites=3, patients=60,
                                                     seed=9)}
    return ingest_sites(tmp / "stores", folders, policy=LOOSE)


def test_interleaved_secure_studies_the_key_announcement_reserves_the_cohort(
        net_sites: Any, tmp_path: Path) -> None:
    """Study A and study B (two patients fewer) announce keys back to back, then both ask for
    their masked round: the first announcement reserves A's cohort, so B is refused at its
    key exchange, before any of its rounds."""
    with SimulatedNetwork(tmp_path / "net", net_sites, KEY, today=lambda: TODAY,
                          ledger=True) as net:
        site, node = sorted(net.nodes.items())[0]
        store = open_store(next(s for s in net_sites if s.site_id == site).store_dir)
        a = make_study("att9-sec-a", [KM], cohort={}, min_sites=3, secure_aggregation=True,
                       expires=TODAY + dt.timedelta(days=30))
        dates = select_cohort(store, a.cohort, today=TODAY)["infusion_date"].sort_values()
        assert dates.iloc[-3] < dates.iloc[-2]
        b = make_study("att9-sec-b", [KM], min_sites=3, secure_aggregation=True,
                       cohort={"infusion_date": {"to": dates.iloc[-3].date().isoformat()}},
                       expires=TODAY + dt.timedelta(days=30))
        keys: dict[str, dict[str, Any]] = {}
        for study in (a, b):
            signed = sign_study(study, KEY)
            keys[study.id] = {}
            for s, n in sorted(net.nodes.items()):
                got = n.answer(study.id, signed, 1, (announce_request(1),))
                if got.releases is not None:
                    keys[study.id][s] = got.releases[0].metadata["announcement"]
                elif s == site:
                    assert got.refusal is not None and "att9-sec-a" in got.refusal
        assert site not in keys["att9-sec-b"]  # refused at its key exchange
        relay = key_relay(1, list(keys["att9-sec-a"].values()))
        done = node.answer(a.id, sign_study(a, KEY), 2, (relay, *summary_requests(a)))
        assert "differencing" not in (done.refusal or "")  # A itself is not held back
        # B cannot get a masked round either, even with keys relayed by an aggregator
        others = {s: k for s, k in keys["att9-sec-b"].items()}
        late = node.answer(b.id, sign_study(b, KEY), 2,
                           (key_relay(1, list(others.values())), *summary_requests(b)))
        assert late.releases is None
        assert late.refusal is not None and "att9-sec-a" in late.refusal

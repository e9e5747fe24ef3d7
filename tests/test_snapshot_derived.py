"""The snapshot's derived files (issue 9): written with the snapshot, never half of it; the
ledger digests kept in it equal the ledger's own; the engine's releases equal the raw path's;
the snapshot cache is bounded by bytes."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from node.cohorts.cohort import select_cohort
from node.cohorts.facts import FACTS_FILE
from node.governance.digests import INFUSION_ROW, PATIENT_ROW
from node.governance.ledger import DisclosureLedger, salt_fingerprint
from node.ingestion.ingest import ingest
from node.ingestion.store import open_store
from node.runtime.snapshot_cache import SnapshotCache
from protocol.study import Cohort
from tests.site_data import BASE, TODAY, write_site

SECRET = bytes(range(32))
SALT = bytes(range(100, 132))
ROOT = Path(__file__).resolve().parents[1]


def _ingest(tmp_path: Path, salt: bytes | None = SALT) -> Path:
    store_dir = tmp_path / "store"
    ingest(write_site(tmp_path / "site"), store_dir, SECRET, today=TODAY, ledger_salt=salt)
    return store_dir


def test_ingestion_writes_facts_and_private_ledger_digests(tmp_path: Path) -> None:
    store = open_store(_ingest(tmp_path))
    assert (store.path / FACTS_FILE).exists()
    digests_file = store.path / f"ledger-{salt_fingerprint(SALT)}.npz"
    assert stat.S_IMODE(digests_file.stat().st_mode) == 0o600
    # the digests of a cohort from the snapshot equal the ledger's digests of its pseudonyms
    ledger = DisclosureLedger(tmp_path / "ledger", SALT)
    cohort = select_cohort(store, Cohort(), today=TODAY)
    kept = store.ledger_digests(ledger, store.facts())
    everyone = np.ones(len(store.facts()), dtype=bool)
    assert np.array_equal(kept.subset(PATIENT_ROW, everyone),
                          ledger.digests(cohort["patient_id"].astype(str)))
    assert np.array_equal(kept.subset(INFUSION_ROW, everyone),
                          ledger.infusion_digests(cohort["infusion_id"].astype(str)))
    raw = digests_file.read_bytes()  # keyed digests only: no pseudonym, no id
    for value in list(cohort["patient_id"]) + [r["patient_id"] for r in BASE["patients"]]:
        assert value.encode() not in raw


def test_digests_under_another_salt_are_computed_once_and_kept(tmp_path: Path) -> None:
    store = open_store(_ingest(tmp_path, salt=None))
    other = DisclosureLedger(tmp_path / "ledger", bytes(32))
    path = store.path / f"ledger-{other.fingerprint}.npz"
    assert not path.exists()
    first = store.ledger_digests(other, store.facts())
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = open_store(store.store_dir).ledger_digests(other, store.facts())
    assert np.array_equal(first.sorted, again.sorted) and np.array_equal(first.rows, again.rows)


def test_a_failing_facts_build_keeps_the_previous_snapshot(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store_dir = _ingest(tmp_path)
    before = open_store(store_dir)
    from node.cohorts import facts as facts_mod

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(facts_mod, "write_facts", broken)
    other = write_site(tmp_path / "site2", replace={"followup": BASE["followup"][:1]})
    with pytest.raises(OSError, match="disk full"):
        ingest(other, store_dir, SECRET, today=TODAY, ledger_salt=SALT)
    after = open_store(store_dir)
    assert after.snapshot_id == before.snapshot_id
    assert [p.name for p in (store_dir / "snapshots").iterdir()] == [before.snapshot_id]
    assert (after.path / FACTS_FILE).exists()


@pytest.mark.parametrize("dies_in", ["write_facts", "save"])
def test_a_process_killed_while_deriving_leaves_the_previous_snapshot(tmp_path: Path,
                                                                      dies_in: str) -> None:
    store_dir = _ingest(tmp_path)
    before = open_store(store_dir)
    cohort = select_cohort(before, Cohort(), today=TODAY)
    other = write_site(tmp_path / "site2", replace={"followup": BASE["followup"][:1]})
    target = ("node.cohorts.facts", "write_facts") if dies_in == "write_facts" else \
        ("node.governance.digests", "SnapshotDigests.save")
    script = textwrap.dedent(f"""
        import os
        from datetime import date
        import node.cohorts.facts as facts_mod
        import node.governance.digests as digests_mod
        from node.ingestion.ingest import ingest
        if {dies_in!r} == "write_facts":
            real = facts_mod.write_facts
            def dying(table, path):
                real(table, path)
                os._exit(9)  # dies right after writing the facts
            facts_mod.write_facts = dying
        else:
            def dying(self, path):
                path.write_bytes(b"half")
                os._exit(9)  # dies while writing the digests
            digests_mod.SnapshotDigests.save = dying
        ingest({str(other)!r}, {str(store_dir)!r}, bytes(range(32)), today=date(2024, 6, 1),
               ledger_salt=bytes(range(100, 132)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 9, (target, done.stderr.decode())
    after = open_store(store_dir)
    assert after.snapshot_id == before.snapshot_id
    pd.testing.assert_frame_equal(select_cohort(after, Cohort(), today=TODAY), cohort)
    assert any(p.name.startswith(".tmp-") for p in (store_dir / "snapshots").iterdir())
    report = ingest(other, store_dir, SECRET, today=TODAY, ledger_salt=SALT)  # cleans up
    assert [p.name for p in (store_dir / "snapshots").iterdir()] == [report.snapshot]
    assert (open_store(store_dir).path / FACTS_FILE).exists()


def test_engine_releases_from_the_facts_equal_the_raw_path(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from heron.simulation import make_study, synthetic_sites
    from node.governance.audit import AuditTrail
    from node.governance.policy import Policy
    from node.runtime.engine import NodeEngine
    from protocol.rounds import summary_requests
    from protocol.signing import sign_study

    site = synthetic_sites(tmp_path, [300], policy=Policy(min_cohort=1, min_cell=1,
                                                          min_bin_events=1))[0]

    class RawOnly:  # the same snapshot without its facts: the raw path
        reads_columns = True

        def __init__(self) -> None:
            self.store = open_store(site.store_dir)
            self.snapshot_id = self.store.snapshot_id + "-raw"

        def table(self, name: str, columns: object = None) -> pd.DataFrame:
            return self.store.table(name, columns=columns)  # type: ignore[arg-type]

    key = Ed25519PrivateKey.generate()
    analyses = [{"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival",
                 "group_by": "sex"},
                {"name": "pfs", "kind": "logrank", "endpoint": "progression_free_survival",
                 "group_by": "atmp_class"},
                {"name": "rel", "kind": "cumulative_incidence", "endpoint": "relapse"}]
    outs = []
    for name, source in (("facts", lambda: open_store(site.store_dir)), ("raw", RawOnly)):
        engine = NodeEngine(site.site_id, site.policy, [key.public_key()], source,
                            AuditTrail(tmp_path / f"{name}.jsonl"),
                            ledger=DisclosureLedger(tmp_path / f"{name}-ledger", SALT))
        study = make_study("study-a", analyses, min_sites=1)
        out = engine.answer(study.id, sign_study(study, key), 1, summary_requests(study))
        assert out.refusal is None and out.releases
        assert not any(r.error for r in out.releases)
        outs.append({r.analysis: r for r in out.releases})
        recorded = sorted((tmp_path / f"{name}-ledger").glob("*.npy"))
        outs[-1]["ledger"] = [np.load(p).tolist() for p in recorded]  # type: ignore[assignment]
    facts, raw = outs
    assert facts["ledger"] == raw["ledger"]  # the same sets recorded
    for name in ("os", "pfs", "rel"):
        assert facts[name].metadata == raw[name].metadata
        assert facts[name].vectors.keys() == raw[name].vectors.keys()
        for vec in facts[name].vectors:
            assert np.array_equal(facts[name].vectors[vec], raw[name].vectors[vec])


def test_the_snapshot_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    cache = SnapshotCache(open_store(_ingest(tmp_path)), limit_bytes=3500)
    a = cache.derived("a", lambda: np.zeros(200))  # 1600 bytes
    cache.derived("b", lambda: np.zeros(200))
    assert cache.derived("a", lambda: None) is a  # 3200 bytes: nothing dropped
    cache.derived("c", lambda: np.zeros(200))  # over the limit: the least recent ("b") goes
    assert cache.derived("a", lambda: None) is a
    assert cache.derived("b", lambda: "again") == "again"

"""The node's data path (issue 9): column reads, Arrow/numpy lookups, the per-snapshot cache.

Each speed-up must leave every result as it was: the new helpers are compared with the pandas
code they replace, and a second study on the same snapshot reuses the cohort, the endpoint and
the ledger digests of the first (without reading or deriving them again).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from node.cohorts import endpoints
from node.cohorts.cohort import INFUSION_COLUMNS, get_table
from node.ingestion import store as store_module
from node.ingestion.store import write_snapshot
from node.runtime.snapshot_cache import SnapshotCache


def _pandas_positions(cohort_ids: pd.Index, ids: pd.Series) -> np.ndarray:
    return cohort_ids.get_indexer(pd.Index(ids.astype(cohort_ids.dtype)))


@pytest.mark.parametrize("storage", ["pyarrow", "python"])
def test_positions_equal_pandas_get_indexer(storage: str) -> None:
    rng = np.random.default_rng(3)
    cohort = pd.Index(pd.array([f"I{i:05d}" for i in rng.permutation(500)],
                               dtype=pd.StringDtype(storage)))
    raw = [f"I{i:05d}" for i in rng.integers(0, 800, 3000)]
    raw[5] = None  # type: ignore[call-overload]
    ids = pd.Series(pd.array(raw, dtype=pd.StringDtype(storage)))
    got = endpoints._positions(cohort, ids)
    assert got.dtype == np.intp
    assert np.array_equal(got, _pandas_positions(cohort, ids))
    assert got[5] == -1


def test_group_min_max_equal_pandas_groupby() -> None:
    rng = np.random.default_rng(4)
    n = 200
    pos = rng.integers(0, n, 5000)
    values = rng.integers(-30, 3000, 5000).astype(float)
    values[rng.random(5000) < 0.2] = np.nan
    for fn, how in ((endpoints._group_min, "min"), (endpoints._group_max, "max")):
        expected = np.full(n, np.nan)
        ok = ~np.isnan(values)
        agg = pd.Series(values[ok]).groupby(pos[ok], sort=False).agg(how)
        expected[agg.index.to_numpy()] = agg.to_numpy()
        assert np.array_equal(fn(n, pos, values), expected, equal_nan=True)
    assert np.isnan(endpoints._group_min(3, np.array([], int), np.array([]))).all()


def _store(tmp_path):
    infusions = pd.DataFrame({
        "infusion_id": ["I1", "I2"], "patient_id": ["P1", "P2"],
        "infusion_date": pd.to_datetime(["2020-01-01", "2021-01-01"]),
        "batch_id": ["B1", "B2"], "product": ["x", "y"]})
    write_snapshot(tmp_path, {"infusions": infusions}, pd.DataFrame(), {})
    return store_module.open_store(tmp_path)


def test_store_reads_only_the_columns_asked_for(tmp_path) -> None:
    store = _store(tmp_path)
    full = store.table("infusions")
    part = store.table("infusions", columns=INFUSION_COLUMNS)
    assert "batch_id" in full and "batch_id" not in part
    assert list(part.columns) == [c for c in full.columns if c in INFUSION_COLUMNS]
    pd.testing.assert_frame_equal(part, full[list(part.columns)])
    # a source without column reads gives the whole table
    assert "batch_id" in get_table({"infusions": full}, "infusions", ("infusion_id",))


def test_table_cache_reads_once_and_derives_once(tmp_path) -> None:
    store = _store(tmp_path)
    reads: list[tuple[str, object]] = []

    class Counting:
        reads_columns = True
        snapshot_id = store.snapshot_id

        def table(self, name, columns=None):
            reads.append((name, columns))
            return store.table(name, columns=columns)

    cache = SnapshotCache(Counting())
    assert cache.snapshot_id == store.snapshot_id
    a = cache.table("infusions", ("infusion_id",))
    assert cache.table("infusions", ("infusion_id",)) is a
    assert len(reads) == 1
    calls = []
    assert cache.derived("k", lambda: calls.append(1) or 7) == 7
    assert cache.derived("k", lambda: calls.append(1) or 8) == 7
    assert calls == [1]


def test_a_second_study_on_the_snapshot_reuses_cohort_endpoint_and_digests(tmp_path,
                                                                         monkeypatch) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from heron.simulation import make_study, synthetic_sites
    from node.governance.audit import AuditTrail
    from node.governance.ledger import DisclosureLedger, load_or_create_salt
    from node.governance.policy import Policy
    from node.runtime import engine as engine_module
    from protocol.rounds import summary_requests
    from protocol.signing import sign_study

    site = synthetic_sites(tmp_path, [400], policy=Policy(min_cohort=1, min_cell=1,
                                                          min_bin_events=1))[0]
    key = Ed25519PrivateKey.generate()
    ledger = DisclosureLedger(tmp_path / "ledger", load_or_create_salt(tmp_path / "salt"))
    engine = engine_module.NodeEngine(site.site_id, site.policy, [key.public_key()],
                                      site.open_tables, AuditTrail(tmp_path / "audit.jsonl"),
                                      ledger=ledger)
    counted = {"cohort": 0, "endpoint": 0, "digests": 0}
    select = engine_module.select_cohort

    def counting_select(*args, **kwargs):
        counted["cohort"] += 1
        return select(*args, **kwargs)

    survival = endpoints.survival_endpoint

    def counting_survival(*args, **kwargs):
        counted["endpoint"] += 1
        return survival(*args, **kwargs)

    digests = ledger.snapshot_digests

    def counting_digests(*args, **kwargs):
        counted["digests"] += 1
        return digests(*args, **kwargs)

    from node.releases import survival as survival_release
    monkeypatch.setattr(engine_module, "select_cohort", counting_select)
    object.__setattr__(survival_release.SURVIVAL, "endpoint", counting_survival)
    # the site was ingested without the ledger salt: the first study computes the snapshot's
    # digests (and keeps them in the snapshot), the second reuses them
    monkeypatch.setattr(ledger, "snapshot_digests", counting_digests)
    try:
        km = [{"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"},
              {"name": "na", "kind": "nelson_aalen", "endpoint": "overall_survival"}]
        outs = []
        for sid in ("study-a", "study-b"):
            study = make_study(sid, km, min_sites=1)
            out = engine.answer(sid, sign_study(study, key), 1, summary_requests(study))
            assert out.refusal is None and all(not r.error for r in out.releases)
            outs.append(out)
    finally:
        object.__setattr__(survival_release.SURVIVAL, "endpoint", survival)
    assert counted == {"cohort": 1, "endpoint": 1, "digests": 1}
    first, second = ({r.analysis: r.vectors for r in o.releases} for o in outs)
    assert first.keys() == second.keys()
    for name in first:
        for vec in first[name]:
            assert np.array_equal(first[name][vec], second[name][vec])


def test_the_store_chooses_jemalloc_unless_told(monkeypatch) -> None:
    chosen = []
    monkeypatch.setattr(store_module, "_POOL_CHOSEN", False)
    monkeypatch.setattr(pa, "set_memory_pool", lambda pool: chosen.append(pool.backend_name))
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
    store_module._choose_memory_pool()
    assert chosen == []
    monkeypatch.setattr(store_module, "_POOL_CHOSEN", False)
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
    store_module._choose_memory_pool()
    store_module._choose_memory_pool()
    assert chosen == (["jemalloc"] if "jemalloc" in pa.supported_memory_backends() else [])

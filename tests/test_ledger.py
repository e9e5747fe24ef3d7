"""The disclosure ledger refuses cohorts that differ from a released one by 1..k-1 patients."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat

import numpy as np
import pytest

from node.governance.ledger import (
    INDEX_FILE,
    DisclosureLedger,
    LedgerError,
    difference_size,
    digests,
    load_or_create_salt,
)

SALT = bytes(range(32))
K = 5


def _pseudonyms(n: int, start: int = 0) -> list[str]:
    return [hashlib.sha256(f"patient-{i}".encode()).hexdigest()[:32]
            for i in range(start, start + n)]


A = _pseudonyms(100)


@pytest.fixture
def ledger(tmp_path):
    led = DisclosureLedger(tmp_path / "ledger", SALT)
    led.record("study-a", A)
    return led


def test_digest_is_hmac_prefix_sorted_unique():
    p = A[:3]
    expected = sorted(int.from_bytes(hmac.new(SALT, x.encode(), hashlib.sha256).digest()[:8],
                                     "big") for x in p)
    got = digests([*p, p[0]], SALT)
    assert got.dtype == np.uint64
    assert got.tolist() == expected


def test_difference_size_hand_computed():
    a = np.array([1, 2, 3, 4], dtype=np.uint64)
    b = np.array([3, 4, 5], dtype=np.uint64)
    assert difference_size(a, b) == 3  # {1, 2} and {5}
    assert difference_size(a, a) == 0


@pytest.mark.parametrize("removed", [1, 4])
def test_few_patients_removed_is_refused(ledger, removed):
    reason = ledger.check("study-b", A[removed:], K)
    assert reason == ("cohort differs from the cohort released for study study-a by fewer "
                      "than 5 patients (differencing risk)")


def test_five_patients_removed_is_allowed(ledger):
    assert ledger.check("study-b", A[5:], K) is None


def test_two_added_is_refused(ledger):
    assert ledger.check("study-b", A + _pseudonyms(2, start=1000), K) is not None


def test_swap_counts_both_sides(ledger):
    # 2 removed + 2 added = difference 4 < 5: refused; 3 + 2 = 5: allowed
    assert ledger.check("study-b", A[2:] + _pseudonyms(2, start=1000), K) is not None
    assert ledger.check("study-b", A[3:] + _pseudonyms(2, start=1000), K) is None


def test_identical_cohort_is_allowed(ledger):
    assert ledger.check("study-b", list(reversed(A)), K) is None


def test_same_study_recheck_is_allowed(ledger):
    assert ledger.check("study-a", A, K) is None
    ledger.record("study-a", A)  # a later round: nothing new
    assert ledger.entries() == ["study-a"]
    assert len(list((ledger.directory).glob("*.npy"))) == 1


def test_same_study_changed_slightly_is_refused(ledger):
    assert ledger.check("study-a", A[1:], K) is not None


def test_k_one_allows_everything(ledger):
    assert ledger.check("study-b", A[1:], 1) is None


def test_reason_does_not_name_patients(ledger):
    reason = ledger.check("study-b", A[1:], K)
    assert reason is not None and A[0] not in reason


def test_refusal_against_any_earlier_study(ledger):
    ledger.record("study-c", A[50:])  # differs from A by 50
    assert ledger.check("study-d", A[52:], K).startswith(
        "cohort differs from the cohort released for study study-c ")


def test_files_are_0600_and_hold_no_pseudonym_bytes(ledger):
    files = [p for p in ledger.directory.iterdir() if p.name != ".lock"]
    assert {p.name for p in files} == {"study-a.npy", INDEX_FILE}
    for p in ledger.directory.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    blob = b"".join(p.read_bytes() for p in files)
    for x in A:
        assert x.encode() not in blob
        assert bytes.fromhex(x) not in blob
        assert bytes.fromhex(x)[:8] not in blob
    arr = np.load(ledger.directory / "study-a.npy")
    assert arr.tolist() == digests(A, SALT).tolist()
    index = json.loads((ledger.directory / INDEX_FILE).read_text())
    assert index["studies"]["study-a"][0]["patients"] == 100


def test_persists_across_objects(ledger):
    again = DisclosureLedger(ledger.directory, SALT)
    assert again.entries() == ["study-a"]
    assert again.check("study-b", A[1:], K) is not None
    assert again.check("study-b", A[5:], K) is None


def test_other_salt_gives_other_digests(ledger):
    other = DisclosureLedger(ledger.directory, bytes(32))
    assert not np.array_equal(other.digests(A), ledger.digests(A))


def test_changed_cohort_of_same_study_keeps_both(ledger):
    ledger.record("study-a", A[10:])
    assert ledger.entries() == ["study-a"]
    assert {p.name for p in ledger.directory.glob("*.npy")} == {"study-a.npy",
                                                                "study-a~2.npy"}
    assert ledger.check("study-b", A[11:], K) is not None  # 1 from the second release
    assert ledger.check("study-b", A[1:], K) is not None  # 1 from the first


def test_precomputed_digests_accepted(ledger):
    d = ledger.digests(A[1:])
    assert ledger.check("study-b", d, K) is not None
    ledger.record("study-b", ledger.digests(A[20:]))
    assert ledger.entries() == ["study-a", "study-b"]


def test_tampered_file_is_detected(ledger):
    path = ledger.directory / "study-a.npy"
    arr = np.load(path)
    np.save(path, arr[1:])
    with pytest.raises(LedgerError, match="does not match"):
        ledger.check("study-b", A[5:], K)


def test_bad_inputs(tmp_path, ledger):
    with pytest.raises(LedgerError):
        DisclosureLedger(tmp_path / "x", b"short")
    with pytest.raises(LedgerError):
        ledger.record("../evil", A)
    with pytest.raises(ValueError):
        ledger.check("study-b", A, 0)


def test_salt_file(tmp_path):
    path = tmp_path / "keys" / "ledger.salt"
    salt = load_or_create_salt(path)
    assert len(salt) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_salt(path) == salt


def test_empty_ledger(tmp_path):
    led = DisclosureLedger(tmp_path / "empty", SALT)
    assert led.entries() == []
    assert led.check("study-a", A, K) is None


def test_unsorted_digest_array_is_sorted_and_deduplicated(tmp_path):
    led = DisclosureLedger(tmp_path / "l", SALT)
    led.record("study-x", np.array([9, 2, 9, 4, 2, 7, 1], dtype=np.uint64))
    assert np.load(led.directory / "study-x.npy").tolist() == [1, 2, 4, 7, 9]
    # {1, 2, 4, 7, 9} vs {1, 2, 4, 7}: difference 1 -> refused at k=2, allowed at k=1
    four = np.array([7, 4, 2, 1], dtype=np.uint64)
    assert led.check("study-y", four, 2) is not None
    assert led.check("study-y", four, 1) is None

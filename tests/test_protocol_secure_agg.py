"""Tests of secure aggregation: pairwise masks, fixed point and masked releases.

Every network is made with real certificates (protocol.pki) and real signed announcements.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.codec import Release, decode_release, encode_release
from protocol.errors import SecureAggregationError
from protocol.fixed_point import decode_reals, encode_reals, error_bound, max_abs_real
from protocol.key_exchange import EphemeralKeys
from protocol.pki import init_ca, issue_site
from protocol.secure_agg import (
    SECURE,
    KeyAnnouncement,
    PairwiseMasker,
    announce,
    mask_release,
    sum_masked,
    unmask_sum,
    verify_announcement,
)

STUDY = "study-1"
SITES = [f"site-{i}" for i in range(7)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    for site in SITES:
        issue_site(root / "ca", site, root / site)
    return root


def _maskers(pki: Path, n: int, attempt: int = 0) -> dict[str, PairwiseMasker]:
    """Run the key exchange for the first ``n`` sites, verifying every announcement."""
    ca_pem = (pki / "ca" / "ca.pem").read_bytes()
    private: dict[str, X25519PrivateKey] = {}
    announced: dict[str, KeyAnnouncement] = {}
    for site in SITES[:n]:
        identity = serialization.load_pem_private_key((pki / site / "key.pem").read_bytes(),
                                                      password=None)
        private[site], announced[site] = announce(site, STUDY, attempt, identity,
                                                  (pki / site / "cert.pem").read_bytes())
    for a in announced.values():
        verify_announcement(KeyAnnouncement.from_dict(a.to_dict()), ca_pem, STUDY, attempt)
    return {s: PairwiseMasker(s, private[s], announced, STUDY, attempt) for s in announced}


def _release(rng: np.random.Generator) -> Release:
    return Release(analysis="cox", kind="derivatives", metadata={"step": 3}, vectors={
        "counts": rng.integers(0, 1000, size=17),
        "wide": rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=9,
                             dtype=np.int64),
        "score": rng.uniform(-1e12, 1e12, size=6),
        "info": rng.uniform(-1, 1, size=(3, 3)) * 10.0 ** rng.integers(-8, 12, size=(3, 3)),
        "tiny": rng.uniform(-1e-8, 1e-8, size=5),
        "empty": np.zeros(0),
    })


def _exact_sum(arrays: Sequence[np.ndarray]) -> list[Fraction]:
    return [sum((Fraction(float(a.ravel()[i])) for a in arrays), Fraction(0))
            for i in range(arrays[0].size)]


def _mask_all(maskers: dict[str, PairwiseMasker], releases: dict[str, Release],
              round: int = 0) -> list[Release]:
    """Mask each site's release and send it through the wire codec."""
    return [decode_release(encode_release(mask_release(releases[s], m, round)))
            for s, m in maskers.items()]


@pytest.mark.parametrize("n", [2, 3, 7])
def test_unmasked_sum_equals_plain_sum(pki: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    maskers = _maskers(pki, n)
    releases = {s: _release(rng) for s in maskers}
    total = unmask_sum(_mask_all(maskers, releases, round=4))
    plain = list(releases.values())
    assert (total.analysis, total.kind, total.metadata) == ("cox", "derivatives", {"step": 3})
    assert set(total.vectors) == set(plain[0].vectors)
    np.testing.assert_array_equal(total.vectors["counts"], sum(r.vectors["counts"]
                                                               for r in plain))
    wide = np.zeros(9, dtype=np.uint64)
    for r in plain:
        wide += r.vectors["wide"].view(np.uint64)  # the exact sum modulo 2^64
    np.testing.assert_array_equal(total.vectors["wide"], wide.view(np.int64))
    assert total.vectors["counts"].dtype == np.int64
    for key in ("score", "info", "tiny", "empty"):
        got = total.vectors[key]
        assert got.dtype == np.float64 and got.shape == plain[0].vectors[key].shape
        exact = _exact_sum([r.vectors[key] for r in plain])
        bound = error_bound(n, got.ravel())
        for g, e, b in zip(got.ravel().tolist(), exact, np.atleast_1d(bound).tolist(),
                           strict=True):
            assert abs(Fraction(g) - e) <= Fraction(b), (key, g, float(e))


def test_masked_vectors_hide_the_values(pki: Path) -> None:
    maskers = _maskers(pki, 3)
    counts = np.arange(50, dtype=np.int64)
    for masker in maskers.values():
        masked = masker.mask(0, "counts", counts)
        assert masked.dtype == np.int64 and masked.shape == counts.shape
        assert not np.any(masked == counts)


def test_masks_are_fresh_per_run_round_and_key(pki: Path) -> None:
    counts = np.arange(20, dtype=np.int64)
    first = _maskers(pki, 3)["site-0"]
    second = _maskers(pki, 3)["site-0"]
    base = first.mask(1, "a", counts)
    assert not np.any(base == second.mask(1, "a", counts))  # fresh ephemeral keys
    assert not np.any(base == first.mask(2, "a", counts))   # other round
    assert not np.any(base == first.mask(1, "b", counts))   # other key
    np.testing.assert_array_equal(base, first.mask(1, "a", counts))  # a resend is identical


def test_masks_are_fresh_per_attempt(pki: Path) -> None:
    counts = np.zeros(8, dtype=np.int64)
    a0 = _maskers(pki, 2, attempt=0)["site-0"].mask(0, "k", counts)
    a1 = _maskers(pki, 2, attempt=1)["site-0"].mask(0, "k", counts)
    assert not np.any(a0 == a1)


def test_masked_small_counts_look_uniform(pki: Path) -> None:
    masked = _maskers(pki, 3)["site-1"].mask(0, "counts",
                                              np.random.default_rng(0).integers(0, 5, 8192))
    raw = masked.view(np.uint8)
    observed = np.bincount(raw, minlength=256)
    expected = raw.size / 256
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 400.0  # 255 degrees of freedom: mean 255, sd 22.6; 400 is ~6 sd
    bits = (masked.view(np.uint64)[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    ones = bits.mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 0.04)  # 8192 draws: sd 0.0055 per bit position


def test_masks_cancel_only_with_every_participant(pki: Path) -> None:
    rng = np.random.default_rng(11)
    maskers = _maskers(pki, 3)
    releases = {s: Release("km", "counts", {"n": rng.integers(0, 100, 32)}) for s in maskers}
    masked = _mask_all(maskers, releases)
    partial = unmask_sum(masked[:2]).vectors["n"]
    plain_two = releases["site-0"].vectors["n"] + releases["site-1"].vectors["n"]
    assert not np.any(partial == plain_two)
    assert np.all((partial < 0) | (partial > 300))  # noise, not counts
    np.testing.assert_array_equal(unmask_sum(masked).vectors["n"],
                                  sum(r.vectors["n"] for r in releases.values()))


def test_pair_masks_are_shared_and_opposite(pki: Path) -> None:
    maskers = _maskers(pki, 3)
    for i, j in itertools.permutations(maskers, 2):
        layout = (("k", "i", 5),)
        np.testing.assert_array_equal(maskers[i].pair_mask(j, 0, layout),
                                      maskers[j].pair_mask(i, 0, layout))
    zero = np.zeros(5, dtype=np.int64)
    np.testing.assert_array_equal(sum_masked(m.mask(0, "k", zero) for m in maskers.values()),
                                  zero)


def test_mask_is_never_reused_on_other_values(pki: Path) -> None:
    masker = _maskers(pki, 2)["site-0"]
    masker.mask(0, "k", np.array([1, 2, 3]))
    with pytest.raises(SecureAggregationError, match="never reused"):
        masker.mask(0, "k", np.array([1, 2, 4]))
    with pytest.raises(SecureAggregationError, match="integer"):
        masker.mask(1, "k", np.array([1.5]))


def test_masker_rejects_inconsistent_setups(pki: Path) -> None:
    maskers = _maskers(pki, 2)
    def keys() -> EphemeralKeys:
        return EphemeralKeys(X25519PrivateKey.generate(), X25519PrivateKey.generate(),
                             bytes(32))

    def ann(site: str, k: EphemeralKeys) -> KeyAnnouncement:
        return KeyAnnouncement(site, STUDY, 0, k.mask.public_key().public_bytes_raw(), b"",
                               b"", k.channel.public_key().public_bytes_raw(), bytes(32))

    mine = keys()
    own = {"site-0": ann("site-0", mine)}
    with pytest.raises(SecureAggregationError, match="at least two"):
        PairwiseMasker("site-0", mine, own, STUDY, 0)
    pair = {"site-0": ann("site-0", mine), "site-1": ann("site-0", mine)}
    pair["site-1"] = dataclasses.replace(pair["site-1"], site_id="site-1")
    with pytest.raises(SecureAggregationError, match="repeats"):
        PairwiseMasker("site-0", mine, pair, STUDY, 0)
    pair["site-1"] = dataclasses.replace(ann("site-1", keys()), public_key=bytes(32))
    with pytest.raises(SecureAggregationError, match="public keys"):
        PairwiseMasker("site-0", keys(), pair, STUDY, 0)
    with pytest.raises(SecureAggregationError, match="key exchange"):  # low-order point
        PairwiseMasker("site-0", mine, pair, STUDY, 0)
    assert maskers["site-0"].participants == ("site-0", "site-1")


def test_mask_release_rejects_errors_and_bad_reals(pki: Path) -> None:
    masker = _maskers(pki, 2)["site-0"]
    with pytest.raises(SecureAggregationError, match="error release"):
        mask_release(Release.failure("km", "counts", "too few patients"), masker, 0)
    for bad in (np.nan, np.inf, max_abs_real(2)):
        with pytest.raises(SecureAggregationError, match=r"fixed-point|NaN"):
            mask_release(Release("cox", "d", {"x": np.array([1.0, bad])}), masker, 0)
    with pytest.raises(SecureAggregationError, match="neither integer nor float"):
        mask_release(Release("cox", "d", {"x": np.array(["a"])}), masker, 0)


def test_masked_release_layout(pki: Path) -> None:
    masker = _maskers(pki, 2)["site-0"]
    out = mask_release(Release("cox", "d", {"n": np.array([1]), "u": np.ones((2, 2))},
                               {"m": 1}), masker, 0)
    assert set(out.vectors) == {"i:n", "r:u"}
    assert all(v.dtype == np.int64 for v in out.vectors.values())
    # four reals of 12 bytes packed into six 8-byte words; the shape travels in the marker
    assert out.vectors["r:u"].shape == (6,) and out.metadata["m"] == 1
    assert out.metadata[SECURE]["shapes"] == {"i:n": [1], "r:u": [2, 2]}
    assert out.metadata[SECURE]["self"] is False


def test_unmask_sum_rejects_mismatched_releases(pki: Path) -> None:
    maskers = _maskers(pki, 2)
    a = mask_release(Release("km", "c", {"n": np.arange(3)}), maskers["site-0"], 0)
    b = mask_release(Release("km", "c", {"n": np.arange(3)}), maskers["site-1"], 0)
    with pytest.raises(SecureAggregationError, match="no masked"):
        unmask_sum([])
    cases = [
        Release("other", "c", dict(b.vectors)),
        Release("km", "c", {"i:m": b.vectors["i:n"]}),
        Release("km", "c", {"i:n": b.vectors["i:n"][:2]}),
        Release("km", "c", {"i:n": b.vectors["i:n"].astype(np.float64)}),
        Release.failure("km", "c", "gone"),
    ]
    for other in cases:
        with pytest.raises(SecureAggregationError):
            unmask_sum([a, other])
    marker = a.metadata[SECURE]
    for vectors in ({"x:n": np.zeros(1, np.int64)}, {"h:n": np.zeros(1, np.int64)},
                    {"r:n": np.zeros(1, np.int64)}):
        with pytest.raises(SecureAggregationError):
            unmask_sum([Release("km", "c", vectors, {SECURE: marker})])
    with pytest.raises(SecureAggregationError, match="not a masked release"):
        unmask_sum([Release("km", "c", dict(a.vectors))])
    later = dict(b.metadata[SECURE], round=1)
    with pytest.raises(SecureAggregationError, match="different rounds"):
        unmask_sum([a, Release("km", "c", dict(b.vectors), {SECURE: later})])


def test_fixed_point_limbs_are_exact() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-1e15, 1e15, 200), rng.normal(size=200) * 1e-9,
                        [0.0, -0.0, 2.0 ** -41, -(2.0 ** -41), 5e-324, max_abs_real(1) * 0.999]])
    hi, lo = encode_reals(x, 1)
    assert np.all((lo >= 0) & (lo < 2**32))
    for value, h, low in zip(x.tolist(), hi.tolist(), lo.tolist(), strict=True):
        v = round(Fraction(value) * 2**40)  # round half to even, like numpy rint
        assert (h, low) == (v >> 32, v & (2**32 - 1))
    back = decode_reals(hi, lo)
    assert np.all(np.abs(back - x) <= error_bound(1, back))


def test_fixed_point_range_scales_with_sites() -> None:
    limit = max_abs_real(7)
    encode_reals(np.array([np.nextafter(limit, 0)]), 7)
    with pytest.raises(SecureAggregationError, match="range"):
        encode_reals(np.array([limit]), 7)
    with pytest.raises(SecureAggregationError):
        max_abs_real(0)
    with pytest.raises(SecureAggregationError, match="shapes"):
        decode_reals(np.zeros(2, np.int64), np.zeros(3, np.int64))

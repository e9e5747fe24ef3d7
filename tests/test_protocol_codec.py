"""Tests of protocol.codec: exact round trips of releases over the real wire encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocol.codec import Release, decode_release, encode_release
from protocol.errors import ReleaseFormatError
from protocol.v1 import common_pb2


def _wire(release: Release) -> Release:
    data = encode_release(release).SerializeToString()
    return decode_release(common_pb2.AnalysisRelease.FromString(data))


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def test_round_trip_exact() -> None:
    vectors = {
        "g0.events": np.array([0, 3, -2, 2**62, -(2**63)], dtype=np.int64),
        "g0.survival": np.array([1.0, 0.1 + 0.2, 1e-300, np.nan, np.inf, -0.0]),
        "matrix": np.arange(12, dtype=np.int64).reshape(3, 4),
        "cube": np.linspace(0, 1, 24).reshape(2, 3, 4),
        "scalar": np.array(7.25),
        "empty_ints": np.zeros(0, dtype=np.int64),
        "empty_reals": np.zeros(0),
        "empty_matrix": np.zeros((0, 3)),
    }
    meta = {"groups": ["hospital_exemption", "ünïcode"], "bin_days": 7, "note": None,
            "nested": {"a": [1, 2.5, True]}}
    release = Release("os", "kaplan_meier", vectors, meta)
    back = _wire(release)
    assert back.analysis == "os" and back.kind == "kaplan_meier" and back.error == ""
    assert dict(back.metadata) == meta
    assert set(back.vectors) == set(vectors)
    for key, arr in vectors.items():
        _same(back.vectors[key], arr)
    assert np.signbit(back.vectors["g0.survival"][5])  # -0.0 keeps its sign
    assert back == release


def test_wire_layout() -> None:
    pb = encode_release(Release("a", "cox", {"v": np.array([1, -2, 3]),
                                             "m": np.array([[1.5, 2.5], [3.5, 4.5]]),
                                             "e": np.zeros(0, dtype=np.int64)}, {"x": 1}))
    by_key = {v.key: v for v in pb.vectors}
    assert by_key["v"].int64_le == np.array([1, -2, 3], "<i8").tobytes()
    assert by_key["m"].float64_le == np.array([1.5, 2.5, 3.5, 4.5], "<f8").tobytes()
    assert not any(f for v in (by_key["v"], by_key["e"]) for f in (v.ints, v.reals,
                                                                    v.float64_le))
    assert not by_key["e"].int64_le and not by_key["m"].int64_le
    assert json.loads(pb.metadata_json) == {
        "x": 1,
        "_vectors": {"m": {"dtype": "float64", "shape": [2, 2]},
                     "e": {"dtype": "int64", "shape": [0]}},
    }


def test_narrow_dtypes_are_widened() -> None:
    back = _wire(Release("a", "k", {"b": np.array([True, False]),
                                    "i32": np.array([5, -6], dtype=np.int32),
                                    "u8": np.array([255], dtype=np.uint8),
                                    "f32": np.array([0.5], dtype=np.float32)}, {}))
    _same(back.vectors["b"], np.array([1, 0], dtype=np.int64))
    _same(back.vectors["i32"], np.array([5, -6], dtype=np.int64))
    _same(back.vectors["u8"], np.array([255], dtype=np.int64))
    _same(back.vectors["f32"], np.array([0.5], dtype=np.float64))


def test_error_release_round_trip() -> None:
    release = Release.failure("crs", "adverse_events", "cohort below 10 patients")
    back = _wire(release)
    assert back.error == "cohort below 10 patients"
    assert dict(back.vectors) == {} and dict(back.metadata) == {}
    assert back == release
    with pytest.raises(ValueError):
        Release.failure("crs", "adverse_events", "")


def test_numpy_values_in_metadata() -> None:
    back = _wire(Release("a", "k", {}, {"n": np.int64(3), "p": np.float64(0.5),
                                        "v": np.array([1, 2])}))
    assert dict(back.metadata) == {"n": 3, "p": 0.5, "v": [1, 2]}


@pytest.mark.parametrize("release", [
    Release("a", "k", {}, {"x": float("nan")}),
    Release("a", "k", {}, {"x": float("inf")}),
    Release("a", "k", {}, {"x": object()}),
    Release("a", "k", {}, {"_vectors": {}}),
    Release("a", "k", {"": np.array([1])}, {}),
    Release("a", "k", {"s": np.array(["a", "b"])}, {}),
    Release("a", "k", {"o": np.array([1, None], dtype=object)}, {}),
    Release("a", "k", {"c": np.array([1j])}, {}),
    Release("a", "k", {"u": np.array([2**64 - 1], dtype=np.uint64)}, {}),
])
def test_encode_rejects(release: Release) -> None:
    with pytest.raises(ReleaseFormatError):
        encode_release(release)


def _pb(metadata_json: str = "", **vectors: tuple[list[int], list[float]]
        ) -> common_pb2.AnalysisRelease:
    pb = common_pb2.AnalysisRelease(analysis="a", kind="k", metadata_json=metadata_json)
    for key, (ints, reals) in vectors.items():
        pb.vectors.add(key=key, ints=ints, reals=reals)
    return pb


@pytest.mark.parametrize("pb", [
    _pb(v=([1], [1.0])),                                   # both ints and reals
    _pb(v=([], [])),                                       # empty without layout
    _pb("[1, 2]"),                                         # metadata not an object
    _pb('{"x": NaN}'),                                     # NaN in metadata
    _pb('{"x": Infinity}'),
    _pb("{not json"),
    _pb('{"_vectors": {"v": {"dtype": "int64", "shape": [2, 2]}}}', v=([1, 2, 3], [])),
    _pb('{"_vectors": {"v": {"dtype": "float64", "shape": [3]}}}', v=([1, 2, 3], [])),
    _pb('{"_vectors": {"v": {"dtype": "int8", "shape": [3]}}}', v=([1, 2, 3], [])),
    _pb('{"_vectors": {"w": {"dtype": "int64", "shape": [0]}}}', v=([1], [])),
    _pb('{"_vectors": []}'),
])
def test_decode_rejects(pb: common_pb2.AnalysisRelease) -> None:
    with pytest.raises(ReleaseFormatError):
        decode_release(pb)


def test_decode_rejects_duplicate_and_empty_keys() -> None:
    pb = _pb()
    pb.vectors.add(key="v", ints=[1])
    pb.vectors.add(key="v", ints=[2])
    with pytest.raises(ReleaseFormatError, match="twice"):
        decode_release(pb)
    with pytest.raises(ReleaseFormatError, match="empty key"):
        decode_release(_pb(**{"": ([1], [])}))


def test_equality_semantics() -> None:
    a = Release("a", "k", {"v": np.array([1.0, np.nan])}, {"m": 1})
    assert a == Release("a", "k", {"v": np.array([1.0, np.nan])}, {"m": 1})
    assert a != Release("a", "k", {"v": np.array([1.0, 2.0])}, {"m": 1})
    assert a != Release("a", "k", {"v": np.array([1, 2])}, {"m": 1})
    assert a != Release("a", "k", {"v": np.array([1.0, np.nan])}, {"m": 2})

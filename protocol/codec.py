"""Encode and decode analysis releases: named numeric arrays plus a small JSON metadata object.

Wire form (``heron.v1.AnalysisRelease``): each array is a ``NamedVector`` holding its values
flattened in C order as fixed-width little-endian bytes: integers in ``int64_le``, floating
values in ``float64_le`` (8 bytes a value). The receiver reads them with ``np.frombuffer``, never
through a Python object per value, so decoding costs about the size of the message. The packed
fields ``ints`` (sint64) and ``reals`` (double) of earlier nodes are still read.

* Integer and boolean arrays travel as ``int64_le`` and decode as ``int64``; floating arrays
  travel as ``float64_le`` and decode as ``float64``. ``int64`` and ``float64`` therefore
  round-trip exactly (NaN and infinities included); narrower types come back widened.
* A receiver bounds what it decodes: :func:`release_value_count` counts the values of a release
  without decoding them, and :func:`decode_release` takes a ``max_values`` cap checked before
  any array is made. (A packed ``ints`` value may take one byte on the wire and eight decoded,
  so without the cap a message could grow eightfold.)
* Arrays that are not one-dimensional, and empty arrays (whose value fields are all empty on
  the wire), are described in the reserved metadata entry ``"_vectors"``:
  ``{key: {"dtype": "int64" | "float64", "shape": [d0, d1, ...]}}``. Decoding removes the entry
  and restores shape and dtype, so callers never see it; it may not be used as a metadata key.
* Metadata is a JSON object without NaN or infinities; numpy scalars and arrays in it are
  converted to plain numbers and lists.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias, TypedDict

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocol.errors import ReleaseFormatError
from protocol.v1 import common_pb2, node_link_pb2

__all__ = ["LAYOUT_KEY", "Release", "Vector", "answer_message", "decode_release",
           "encode_release", "json_default", "release_value_count"]

logger = logging.getLogger(__name__)

LAYOUT_KEY = "_vectors"
_INT64 = np.dtype(np.int64)
_FLOAT64 = np.dtype(np.float64)
_INT64_LE = np.dtype("<i8")
_FLOAT64_LE = np.dtype("<f8")
_VALUE_BYTES = 8

Vector: TypeAlias = NDArray[np.integer] | NDArray[np.floating] | NDArray[np.bool_]
"""A release vector: an integer, boolean or floating array (decoded as int64 or float64)."""


class _Layout(TypedDict):
    """Entry of the reserved ``"_vectors"`` metadata object for one vector."""

    dtype: str
    shape: list[int]


@dataclass(frozen=True, eq=False)
class Release:
    """What one site releases for one analysis: named arrays and metadata, or an error.

    Equality compares arrays by dtype, shape and values (NaN equal to NaN).
    """

    analysis: str
    kind: str
    vectors: Mapping[str, Vector] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def failure(cls, analysis: str, kind: str, error: str) -> Release:
        """A release saying the site could not or would not answer (``error`` non-empty)."""
        if not error:
            raise ValueError("a failure release needs a reason")
        return cls(analysis=analysis, kind=kind, error=error)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Release):
            return NotImplemented
        if (self.analysis, self.kind, self.error) != (other.analysis, other.kind, other.error):
            return False
        if dict(self.metadata) != dict(other.metadata) or set(self.vectors) != set(other.vectors):
            return False
        for key, vector in self.vectors.items():
            a, b = np.asarray(vector), np.asarray(other.vectors[key])
            if a.dtype != b.dtype or a.shape != b.shape:
                return False
            if not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def json_default(value: object) -> object:
    """``json.dumps`` hook for numpy scalars and arrays (anything else is an error)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _as_wire_array(key: str, value: ArrayLike) -> NDArray[np.int64] | NDArray[np.float64]:
    arr = np.asarray(value)
    if arr.dtype.kind in "biu":
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise ReleaseFormatError(f"vector {key!r}: values exceed the int64 range")
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    raise ReleaseFormatError(f"vector {key!r}: dtype {arr.dtype} is neither integer nor float")


def encode_release(release: Release) -> common_pb2.AnalysisRelease:
    """Encode a :class:`Release` as ``heron.v1.AnalysisRelease``.

    Raises
    ------
    ReleaseFormatError
        For an empty or duplicate key, a non-numeric array, metadata that is not a JSON object
        of finite values, or metadata using the reserved key ``"_vectors"``.
    """
    if not isinstance(release.metadata, Mapping):
        raise ReleaseFormatError("release metadata must be a mapping")
    if LAYOUT_KEY in release.metadata:
        raise ReleaseFormatError(f"metadata key {LAYOUT_KEY!r} is reserved by the codec")
    pb = common_pb2.AnalysisRelease(analysis=release.analysis, kind=release.kind,
                                    error=release.error)
    layout: dict[str, _Layout] = {}
    for key, value in release.vectors.items():
        if not isinstance(key, str) or not key:
            raise ReleaseFormatError(f"vector key {key!r} must be a non-empty string")
        arr = _as_wire_array(key, value)
        flat = arr.ravel(order="C")
        vec = pb.vectors.add(key=key)
        if arr.dtype == _INT64:
            vec.int64_le = flat.astype(_INT64_LE, copy=False).tobytes()
        else:
            vec.float64_le = flat.astype(_FLOAT64_LE, copy=False).tobytes()
        if arr.ndim != 1 or arr.size == 0:
            layout[key] = {"dtype": str(arr.dtype), "shape": list(arr.shape)}
    metadata = dict(release.metadata)
    if layout:
        metadata[LAYOUT_KEY] = layout
    try:
        pb.metadata_json = json.dumps(metadata, sort_keys=True, separators=(",", ":"),
                                      allow_nan=False, default=json_default)
    except (TypeError, ValueError) as exc:
        raise ReleaseFormatError(f"release metadata is not a finite JSON object: {exc}") from exc
    return pb


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in release metadata")


def _decode_metadata(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ReleaseFormatError(f"release metadata is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ReleaseFormatError("release metadata is not a JSON object")
    return obj


def _layout_entry(
    key: str, entry: object
) -> tuple[np.dtype[np.int64] | np.dtype[np.float64], tuple[int, ...]]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape"}:
        raise ReleaseFormatError(f"layout of vector {key!r} must have dtype and shape")
    if entry["dtype"] not in ("int64", "float64"):
        raise ReleaseFormatError(f"layout of vector {key!r}: unknown dtype {entry['dtype']!r}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ReleaseFormatError(f"layout of vector {key!r}: shape must be a list of sizes")
    return np.dtype(entry["dtype"]), tuple(shape)


def _filled(vec: common_pb2.NamedVector) -> dict[str, int]:
    """The value fields a wire vector fills and how many values each holds (no decoding)."""
    counts = {"ints": len(vec.ints), "reals": len(vec.reals)}
    for name in ("int64_le", "float64_le"):
        size = len(getattr(vec, name))
        if size % _VALUE_BYTES:
            raise ReleaseFormatError(f"vector {vec.key!r}: {name} holds {size} bytes, not a "
                                     f"multiple of {_VALUE_BYTES}")
        counts[name] = size // _VALUE_BYTES
    return {name: n for name, n in counts.items() if n}


def release_value_count(pb: common_pb2.AnalysisRelease) -> int:
    """How many values the vectors of a wire release hold, counted without decoding them.

    Raises
    ------
    ReleaseFormatError
        When a bytes field is not a whole number of 8-byte values.
    """
    return sum(sum(_filled(vec).values()) for vec in pb.vectors)


def _values(vec: common_pb2.NamedVector, field: str | None,
            dtype: np.dtype[np.int64] | np.dtype[np.float64]) -> Vector:
    integer = dtype == _INT64
    if field is None:
        return np.zeros(0, dtype=np.int64) if integer else np.zeros(0, dtype=np.float64)
    if integer != (field in ("ints", "int64_le")):
        declared = "int64" if integer else "float64"
        raise ReleaseFormatError(f"vector {vec.key!r} is declared {declared} but holds "
                                 f"{field}")
    if field == "int64_le":
        return np.frombuffer(vec.int64_le, dtype=_INT64_LE).astype(np.int64)
    if field == "float64_le":
        return np.frombuffer(vec.float64_le, dtype=_FLOAT64_LE).astype(np.float64)
    if field == "ints":  # the packed fields of earlier nodes
        return np.fromiter(vec.ints, dtype=np.int64, count=len(vec.ints))
    return np.fromiter(vec.reals, dtype=np.float64, count=len(vec.reals))


def decode_release(pb: common_pb2.AnalysisRelease, max_values: int | None = None) -> Release:
    """Decode and validate a received ``heron.v1.AnalysisRelease``.

    Parameters
    ----------
    pb
        The wire release.
    max_values
        When given, a release whose vectors hold more values in all is rejected before any of
        them is decoded.

    Raises
    ------
    ReleaseFormatError
        When the release holds more than ``max_values`` values, a vector key is empty or
        repeated, a vector fills more than one value field (or a bytes field is not a whole
        number of values), the metadata is not a JSON object (or holds NaN/infinity), or the
        layout entry does not match the vectors.
    """
    if max_values is not None:
        total = release_value_count(pb)
        if total > max_values:
            raise ReleaseFormatError(f"release {pb.analysis!r} holds {total} values; at most "
                                     f"{max_values} are accepted per message")
    metadata = _decode_metadata(pb.metadata_json)
    layout = metadata.pop(LAYOUT_KEY, {})
    if not isinstance(layout, dict):
        raise ReleaseFormatError(f"metadata {LAYOUT_KEY!r} must be an object")
    vectors: dict[str, Vector] = {}
    for vec in pb.vectors:
        key = vec.key
        if not key:
            raise ReleaseFormatError("a vector has an empty key")
        if key in vectors:
            raise ReleaseFormatError(f"vector {key!r} appears twice")
        filled = _filled(vec)
        if len(filled) > 1:
            raise ReleaseFormatError(f"vector {key!r} fills both {' and '.join(filled)}")
        field = next(iter(filled), None)
        shape: tuple[int, ...] | None
        if key in layout:
            dtype, shape = _layout_entry(key, layout[key])
        else:
            if field is None:
                raise ReleaseFormatError(f"empty vector {key!r} has no layout entry")
            dtype, shape = (_INT64 if field in ("ints", "int64_le") else _FLOAT64), None
        arr = _values(vec, field, dtype)
        if shape is not None:
            if math.prod(shape) != arr.size:
                raise ReleaseFormatError(f"vector {key!r}: {arr.size} values do not fill "
                                         f"shape {shape}")
            arr = arr.reshape(shape)
        vectors[key] = arr
    unknown = sorted(set(layout) - set(vectors))
    if unknown:
        raise ReleaseFormatError(f"layout names unknown vector {unknown[0]!r}")
    return Release(analysis=pb.analysis, kind=pb.kind, vectors=vectors, metadata=metadata,
                   error=pb.error)


def answer_message(task_id: str, study_id: str, releases: Sequence[Release] | None,
                   refusal: str | None) -> node_link_pb2.NodeMessage:
    """A node's answer to a task as it travels up the node link: its releases, or (when
    ``refusal`` is not ``None``) the refusal with its reason."""
    if refusal is not None:
        return node_link_pb2.NodeMessage(refusal=node_link_pb2.TaskRefusal(
            task_id=task_id, study_id=study_id, reason=refusal))
    return node_link_pb2.NodeMessage(result=node_link_pb2.TaskResult(
        task_id=task_id, study_id=study_id,
        releases=[encode_release(r) for r in releases or ()]))

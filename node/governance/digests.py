"""The ledger's keyed digests, and a snapshot's digests computed once for every study on it.

A digest is the first 8 bytes (big-endian uint64) of HMAC-SHA256(salt, value): the value is a
patient pseudonym, or ``"infusion\0" + infusion_id`` for an infusion (so the two never meet).
Without the salt nobody can tell whether a given pseudonym or infusion id is in a set.

:func:`snapshot_digests` hashes every stored infusion and its patient once (at ingestion, or
at the first study on a snapshot ingested without the salt) and keeps them sorted with the row
each came from (:class:`SnapshotDigests`): a cohort's set is then a boolean gather of the
sorted digests, no hashing and no sort (:meth:`SnapshotDigests.subset`). The file holds the
same keyed digests as the ledger's own files, so it tells no more than the ledger does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SnapshotDigests", "digests", "infusion_digests", "keyed_digests", "salt_fingerprint",
           "snapshot_digests", "sorted_unique"]

logger = logging.getLogger(__name__)

INFUSION_DOMAIN = "infusion\0"
PATIENT_ROW, INFUSION_ROW = 0, 1


def keyed_digests(values: Iterable[str], salt: bytes) -> np.ndarray:
    """uint64 digest of each value, in order: first 8 bytes of HMAC-SHA256(salt, value).

    HMAC (RFC 2104) with pre-keyed inner and outer SHA-256 states: about 1.5 s for a million
    values.
    """
    block = hashlib.sha256().block_size
    key = hashlib.sha256(salt).digest() if len(salt) > block else salt
    key = key.ljust(block, b"\0")
    inner_copy = hashlib.sha256(bytes(b ^ 0x36 for b in key)).copy
    outer_copy = hashlib.sha256(bytes(b ^ 0x5C for b in key)).copy
    out: list[bytes] = []
    append = out.append
    for p in values:
        inner = inner_copy()
        inner.update(str(p).encode("utf-8"))
        outer = outer_copy()
        outer.update(inner.digest())
        append(outer.digest()[:8])
    return np.frombuffer(b"".join(out), dtype=">u8").astype(np.uint64)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique uint64 values (sort and mask: faster than ``np.unique``'s hashing)."""
    arr = np.asarray(values, dtype=np.uint64)
    if arr.size > 1 and not bool(np.all(arr[1:] > arr[:-1])):
        arr = np.sort(arr)
        arr = arr[np.concatenate(([True], arr[1:] != arr[:-1]))]
    return arr


def digests(pseudonyms: Iterable[str], salt: bytes) -> np.ndarray:
    """Sorted unique uint64 digests: first 8 bytes of HMAC-SHA256(salt, pseudonym)."""
    return sorted_unique(keyed_digests(pseudonyms, salt))


def infusion_digests(infusion_ids: Iterable[str], salt: bytes) -> np.ndarray:
    """Sorted unique uint64 digests of infusion ids, in a domain apart from patients'."""
    return digests((INFUSION_DOMAIN + str(i) for i in infusion_ids), salt)


def salt_fingerprint(salt: bytes) -> str:
    """A name for digests made under ``salt`` (HMAC of a constant: says nothing of the salt)."""
    return hmac.new(salt, b"heron ledger snapshot digests", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class SnapshotDigests:
    """Every stored infusion's patient digest (row 0) and infusion digest (row 1), each row
    sorted, with the facts row each digest belongs to."""

    sorted: np.ndarray
    """(2, n) uint64, each row sorted."""
    rows: np.ndarray
    """(2, n) int32 (int64 past 2**31 rows): the facts row of each sorted digest."""

    def subset(self, which: int, keep: np.ndarray) -> np.ndarray:
        """Sorted unique digests (``which``: 0 patients, 1 infusions) of the facts rows where
        ``keep`` is true; equal to :func:`digests` or :func:`infusion_digests` of them."""
        out = self.sorted[which][keep[self.rows[which]]]
        if out.size > 1:
            out = out[np.concatenate(([True], out[1:] != out[:-1]))]
        return out

    def save(self, path: Path) -> None:
        """Write as ``.npz`` (mode 0600) through a temporary file, fsync and ``os.replace``."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, sorted=self.sorted, rows=self.rows)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, n: int) -> SnapshotDigests | None:
        """Read :meth:`save`'s file; None when absent or not of ``n`` infusions."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                out = cls(npz["sorted"], npz["rows"])
        except (OSError, KeyError, ValueError):
            return None
        ok = out.sorted.shape == (2, n) and out.rows.shape == (2, n)
        return cls(out.sorted, _rows_dtype(out.rows)) if ok else None


def _rows_dtype(rows: np.ndarray) -> np.ndarray:
    """Row numbers as int32 when they fit (half the memory of a 10M-infusion snapshot's)."""
    small = rows.size == 0 or int(rows.max()) < 2**31
    return rows.astype(np.int32 if small else np.int64, copy=False)


def snapshot_digests(patient_ids: Sequence[str], infusion_ids: Sequence[str],
                     salt: bytes) -> SnapshotDigests:
    """The digests of every stored infusion (``infusion_ids``) and of its patient
    (``patient_ids``, aligned), each distinct patient hashed once."""
    distinct = list(dict.fromkeys(patient_ids))
    by_patient = dict(zip(distinct, keyed_digests(distinct, salt).tolist(), strict=True))
    raw = np.empty((2, len(infusion_ids)), dtype=np.uint64)
    raw[PATIENT_ROW] = np.fromiter((by_patient[p] for p in patient_ids), dtype=np.uint64,
                                   count=len(infusion_ids))
    raw[INFUSION_ROW] = keyed_digests((INFUSION_DOMAIN + str(i) for i in infusion_ids), salt)
    order = np.argsort(raw, axis=1, kind="stable")
    return SnapshotDigests(np.take_along_axis(raw, order, axis=1), _rows_dtype(order))

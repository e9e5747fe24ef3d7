"""The disclosure ledger: a site's defence against differencing attacks.

Two releases over cohorts that differ by a few patients let their receiver subtract one from the
other and read off those patients' values. For every cohort it has released, a node therefore
keeps salted digests of the cohort's patient pseudonyms, and refuses a new study whose cohort
differs from an earlier released one by 1 to ``k - 1`` patients (size of the symmetric
difference). Identical cohorts (difference 0, e.g. the next round of an iterative analysis or a
re-run of the same study) and differences of ``k`` or more patients are allowed. Disjoint sets are
not compared (neither can be subtracted from the other). Besides the cohort's patients and
infusions the node records, as named infusion sets, each Cox model's complete cases, each group
a grouped analysis shows and the union of those it withholds, and (unmasked) each adverse-event
term's patients within the window.

A digest is the first 8 bytes (big-endian uint64) of HMAC-SHA256(salt, pseudonym), with a
32-byte site salt kept in a 0600 file. Without the salt nobody can tell from the ledger whether
a given pseudonym is in a cohort; pseudonyms and patient ids are never stored. Two of a million
patients share a 64-bit digest with probability about 3e-8; a collision merges them and can only
make a difference look one patient smaller.

Analyses run on infusions (cohort rows), not patients: two cohorts of the same patients that
differ by one second infusion (``first_infusion_only`` true and false) would give that
infusion's follow-up by subtraction. So a release records *sets*: ``patients`` (the cohort's
patient pseudonyms), ``infusions`` (the cohort's infusion ids) and, for an analysis that uses
only part of the cohort, that part (``cox:<analysis>``, the complete cases of a Cox model).
Infusion digests are HMAC-SHA256(salt, ``"infusion\0" + infusion_id``), so they never equal
a patient digest. A new patient set is compared with every recorded patient set; a new
infusion-level set with every recorded infusion-level set, except the other sets of the same
study (one study's analyses are one release). Either kind differing by 1 to ``k - 1`` refuses.

The digests of every stored infusion and its patient are computed once per snapshot, at
ingestion when the node passes its salt, else at the first study, and kept in the snapshot
(``ledger-<salt fingerprint>.npy``, mode 0600; :func:`snapshot_digests`): a cohort's sets are
then its columns, sorted. They are the same keyed digests as the ledger's files, so the snapshot
tells no more than the ledger does.

:meth:`DisclosureLedger.check_and_record` checks and records in one step under the ledger's
lock, so two studies answered concurrently (threads or processes) cannot both pass the check
before either is recorded. The node calls it at the first round that releases anything or
announces a key (the announcement reserves the cohort), whatever its round number.

On disk, in ``directory`` (mode 0700):

- ``<study_id>.npy``: the sorted unique uint64 digests of one recorded set (mode 0600);
  ``<study_id>~<n>.npy`` for the study's further sets, and for a later release of the same
  study over a different cohort (re-ingested data), so every set that ever left the site stays
  in the ledger; a set equal to one on file (another study over the same cohort) names that
  file in the index instead of writing it again;
- ``index.json``: ``{"version": 2, "studies": {study_id: [{"file", "set", "patients" or
  "infusions", "sha256"}]}}`` (mode 0600); ``set`` is the set's name, the count key its kind;
  ``sha256`` is the digest of the file's bytes, checked on every load. A version 1 index (no
  ``set``: patient sets only) is read as is and rewritten as version 2 on the next record.

Every file is written to a temporary file and moved into place with ``os.replace``; the
``.npy`` files are written before the index that names them. Writers take an exclusive
``fcntl`` lock on ``.lock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from node.errors import NodeError
from node.governance.digests import (
    SnapshotDigests,
    digests,
    infusion_digests,
    keyed_digests,
    salt_fingerprint,
    snapshot_digests,
    sorted_unique,
)
from node.ingestion.pseudonym import SECRET_BYTES, load_or_create_secret

__all__ = ["INDEX_FILE", "INFUSIONS", "PATIENTS", "DisclosureLedger", "LedgerError",
           "SnapshotDigests", "digests", "infusion_digests", "keyed_digests",
           "load_or_create_salt", "salt_fingerprint", "snapshot_digests", "sorted_unique"]

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
_LOCK_FILE = ".lock"
_VERSION = 2
_READABLE_VERSIONS = (1, 2)
PATIENTS = "patients"
"""Name (and kind) of a release's set of patient pseudonyms."""
INFUSIONS = "infusions"
"""Name of a release's set of cohort infusions; the kind of every set but ``patients``."""
_LOADED_BYTES = 256 << 20
_SET_NAME = re.compile(r"[a-z][a-z0-9_:.-]{0,80}", re.IGNORECASE)
_STUDY_ID = re.compile(r"[a-z0-9][a-z0-9-]{2,63}")


class LedgerError(NodeError):
    """The ledger is unreadable, tampered with, or asked to record a bad study id."""


def load_or_create_salt(path: Path | str) -> bytes:
    """Return the 32-byte ledger salt stored at ``path``, creating it (mode 0600) if absent.

    Raises
    ------
    SecretError
        If the file is group/world accessible, not a regular file, or not 32 bytes.
    """
    return load_or_create_secret(path)


def _kind(set_name: str) -> str:
    return PATIENTS if set_name == PATIENTS else INFUSIONS


def _entry_set(entry: Mapping[str, Any]) -> str:
    """The set an index entry records (a version 1 entry: the patients)."""
    return str(entry.get("set", PATIENTS))


def difference_size(a: np.ndarray, b: np.ndarray) -> int:
    """Size of the symmetric difference of two sorted unique digest arrays."""
    common = np.intersect1d(a, b, assume_unique=True).size
    return int(a.size + b.size - 2 * common)


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _npy_bytes(arr: np.ndarray) -> memoryview:
    """The ``.npy`` bytes of a set (a view of the buffer: a 7.5M set is not copied twice)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype="<u8"), allow_pickle=False)
    return buf.getbuffer()


class DisclosureLedger:
    """Salted digests of every cohort a site has released, and the differencing check.

    Parameters
    ----------
    directory
        Folder of the ledger files; created (mode 0700) if absent.
    salt
        The site's 32-byte ledger salt (:func:`load_or_create_salt`).
    """

    def __init__(self, directory: Path | str, salt: bytes) -> None:
        if len(salt) != SECRET_BYTES:
            raise LedgerError(f"ledger salt must be {SECRET_BYTES} bytes, not {len(salt)}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._salt = salt
        self._thread_lock = threading.Lock()
        self._loaded: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    # -- storage ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _index(self) -> dict[str, list[dict[str, Any]]]:
        path = self.directory / INDEX_FILE
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LedgerError(f"{path}: unreadable ledger index: {exc}") from exc
        if (not isinstance(obj, dict) or obj.get("version") not in _READABLE_VERSIONS
                or not isinstance(obj.get("studies"), dict)):
            raise LedgerError(f"{path}: malformed ledger index")
        return obj["studies"]

    def _load(self, entry: dict[str, Any]) -> np.ndarray:
        """A recorded set, checked against the index's sha256 (kept in memory by file and
        digest, up to ``_LOADED_BYTES``: what is kept is what was checked)."""
        key = (str(entry.get("file", "")), str(entry.get("sha256")))
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        path = self.directory / key[0]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LedgerError(f"{path}: ledger file missing or unreadable: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise LedgerError(f"{path}: ledger file does not match its index (tampered?)")
        arr = np.load(io.BytesIO(data), allow_pickle=False).astype(np.uint64, copy=False)
        arr.flags.writeable = False
        self._loaded[key] = arr
        while sum(a.nbytes for a in self._loaded.values()) > _LOADED_BYTES:
            self._loaded.popitem(last=False)
        return arr

    def _released(self, studies: dict[str, list[dict[str, Any]]] | None = None
                  ) -> Iterator[tuple[str, str, np.ndarray]]:
        """(study id, set name, digests) of every recorded set."""
        for study_id, versions in sorted((self._index() if studies is None else studies).items()):
            for entry in versions:
                yield study_id, _entry_set(entry), self._load(entry)

    def _conflict(self, study_id: str, sets: Mapping[str, np.ndarray], k: int,
                  studies: dict[str, list[dict[str, Any]]]) -> str | None:
        """Why ``sets`` may not be released next to the recorded ones, or None."""
        for earlier, name, released in self._released(studies):
            for new_name, cohort in sets.items():
                kind = _kind(new_name)
                if _kind(name) != kind or (earlier == study_id and name != new_name):
                    continue  # one study's own sets are one release
                if abs(int(released.size) - int(cohort.size)) >= k:
                    continue  # the difference is at least the difference in sizes
                if released.size == cohort.size and np.array_equal(released, cohort):
                    continue  # the same set (difference 0)
                common = np.intersect1d(cohort, released, assume_unique=True).size
                if common == 0:
                    continue  # disjoint releases: one cannot be subtracted from the other
                d = int(cohort.size + released.size - 2 * common)
                if 0 < d < k:
                    logger.info("ledger: study %s refused (differencing risk against study "
                                "%s, %s)", study_id, earlier, kind)
                    if kind == PATIENTS:
                        return (f"cohort differs from the cohort released for study {earlier} "
                                f"by fewer than {k} patients (differencing risk)")
                    return (f"the infusions analysed differ from those released for study "
                            f"{earlier} by fewer than {k} infusions (differencing risk)")
        return None

    def _write(self, study_id: str, sets: Mapping[str, np.ndarray],
               studies: dict[str, list[dict[str, Any]]]) -> list[str]:
        """Record the sets not recorded as they are; the names recorded (lock held)."""
        versions = studies.setdefault(study_id, [])
        added = []
        for name, cohort in sets.items():
            if any(_entry_set(e) == name and np.array_equal(self._load(e), cohort)
                   for e in versions):
                continue
            same = self._same_file(studies, name, cohort)
            if same is not None:  # the same set is on file already: name that file
                file, sha = same
            else:
                file = f"{study_id}.npy" if not versions \
                    else f"{study_id}~{len(versions) + 1}.npy"
                data = _npy_bytes(cohort)
                _write_atomic(self.directory / file, data)
                sha = hashlib.sha256(data).hexdigest()
            versions.append({"file": file, "set": name, _kind(name): int(cohort.size),
                             "sha256": sha})
            added.append(name)
        if added:
            doc = {"version": _VERSION, "studies": studies}
            _write_atomic(self.directory / INDEX_FILE,
                          (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("ascii"))
        elif not versions:
            del studies[study_id]
        return added

    def _same_file(self, studies: dict[str, list[dict[str, Any]]], name: str,
                   cohort: np.ndarray) -> tuple[str, str] | None:
        """(file, sha256) of a recorded set of the same kind equal to ``cohort``, if any."""
        for versions in studies.values():
            for entry in versions:
                if _kind(_entry_set(entry)) == _kind(name) \
                        and entry.get(_kind(name)) == int(cohort.size) \
                        and np.array_equal(self._load(entry), cohort):
                    return str(entry["file"]), str(entry["sha256"])
        return None

    # -- public API ------------------------------------------------------------------------

    def digests(self, pseudonyms: Iterable[str]) -> np.ndarray:
        """Sorted unique uint64 digests of ``pseudonyms`` under this ledger's salt."""
        return digests(pseudonyms, self._salt)

    def infusion_digests(self, infusion_ids: Iterable[str]) -> np.ndarray:
        """Sorted unique uint64 digests of infusion ids under this ledger's salt."""
        return infusion_digests(infusion_ids, self._salt)

    @property
    def fingerprint(self) -> str:
        """Names the digests made under this ledger's salt (:func:`salt_fingerprint`)."""
        return salt_fingerprint(self._salt)

    def snapshot_digests(self, patient_ids: Sequence[str],
                         infusion_ids: Sequence[str]) -> SnapshotDigests:
        """:func:`snapshot_digests` under this ledger's salt."""
        return snapshot_digests(patient_ids, infusion_ids, self._salt)

    def entries(self) -> list[str]:
        """Ids of the studies whose cohorts were recorded, sorted."""
        return sorted(self._index())

    def check_and_record(self, study_id: str, sets: Mapping[str, np.ndarray], k: int
                         ) -> str | None:
        """Check a release's sets against every recorded one and, if allowed, record them, in
        one step under the ledger's lock. Returns the refusal reason, or None (recorded).

        ``sets`` maps a set name (:data:`PATIENTS`, :data:`INFUSIONS`, ``cox:<analysis>``) to
        its digests (:meth:`digests` for patients, :meth:`infusion_digests` for the rest).
        Sets already recorded as they are for this study are checked and left alone, so a
        later round of the same study costs one comparison per recorded set (difference 0).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        if not _STUDY_ID.fullmatch(study_id):
            raise LedgerError(f"bad study id {study_id!r} for the ledger")
        bad = [n for n in sets if not _SET_NAME.fullmatch(n)]
        if bad:
            raise LedgerError(f"bad ledger set name {bad[0]!r}")
        clean = {name: sorted_unique(arr) for name, arr in sets.items()}
        with self._locked():
            studies = self._index()
            reason = self._conflict(study_id, clean, k, studies)
            if reason is not None:
                return reason
            added = self._write(study_id, clean, studies)
        if added:
            logger.info("ledger: recorded %s of study %s", ", ".join(
                f"{n} ({clean[n].size})" for n in added), study_id)
        return None

    def check(self, study_id: str, pseudonyms: Iterable[str] | np.ndarray, k: int) -> str | None:
        """The reason to refuse releasing this cohort, or None when it is allowed (patients
        only, nothing recorded; the node uses :meth:`check_and_record`).

        Refused when the cohort differs from any recorded cohort (of any study, this one
        included) by 1 to ``k - 1`` patients. ``pseudonyms`` may also be the output of
        :meth:`digests` (a uint64 array), to hash a large cohort once for check and record.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        return self._conflict(study_id, {PATIENTS: self._as_digests(pseudonyms)}, k,
                              self._index())

    def record(self, study_id: str, pseudonyms: Iterable[str] | np.ndarray) -> None:
        """Record the cohort (patients) released for ``study_id``, unchecked (no-op if already
        recorded as is)."""
        if not _STUDY_ID.fullmatch(study_id):
            raise LedgerError(f"bad study id {study_id!r} for the ledger")
        cohort = self._as_digests(pseudonyms)
        with self._locked():
            self._write(study_id, {PATIENTS: cohort}, self._index())
        logger.info("ledger: recorded the cohort released for study %s (%d patients)",
                    study_id, cohort.size)

    def _as_digests(self, pseudonyms: Iterable[str] | np.ndarray) -> np.ndarray:
        if isinstance(pseudonyms, np.ndarray) and pseudonyms.dtype == np.uint64:
            return sorted_unique(pseudonyms)
        return self.digests(pseudonyms)

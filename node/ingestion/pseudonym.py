"""Keyed pseudonyms for patient identifiers.

A site secret (32 random bytes, kept in a file only its owner can read) keys an HMAC-SHA256 of
each local ``patient_id``.  The same id always maps to the same pseudonym at one site, and
nobody without the secret can link a pseudonym back to the id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from node.errors import SecretError

logger = logging.getLogger(__name__)

SECRET_BYTES = 32
PSEUDONYM_HEX = 32


def _check_mode(path: Path) -> None:
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise SecretError(f"secret file {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"secret file {path} is accessible by group or others "
                          f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}")


def load_or_create_secret(path: Path | str) -> bytes:
    """Return the site secret stored at ``path``, creating it (mode 0600) if absent.

    Raises
    ------
    SecretError
        If the file is group/world accessible, not a regular file, or not 32 bytes.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(SECRET_BYTES)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # umask may have removed bits, never added: be explicit
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never overwrites a secret created meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        logger.info("created site secret %s", path)
    _check_mode(path)
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise SecretError(f"secret file {path} holds {len(secret)} bytes, expected "
                          f"{SECRET_BYTES}")
    return secret


def pseudonymise(patient_id: str, secret: bytes) -> str:
    """HMAC-SHA256 of ``patient_id`` under ``secret``: the first 32 hex characters."""
    mac = hmac.new(secret, patient_id.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:PSEUDONYM_HEX]


def pseudonym_list(patient_ids: Sequence[str], secret: bytes) -> list[str]:
    """Pseudonyms of many ids, in order; each equals :func:`pseudonymise` of its id.

    HMAC (RFC 2104) spelled out with pre-keyed inner and outer SHA-256 states, which hashes a
    million ids in about a second.
    """
    block = hashlib.sha256().block_size
    key = hashlib.sha256(secret).digest() if len(secret) > block else secret
    key = key.ljust(block, b"\0")
    inner_copy = hashlib.sha256(bytes(b ^ 0x36 for b in key)).copy
    outer_copy = hashlib.sha256(bytes(b ^ 0x5C for b in key)).copy
    out = []
    for pid in patient_ids:
        inner = inner_copy()
        inner.update(pid.encode("utf-8"))
        outer = outer_copy()
        outer.update(inner.digest())
        out.append(outer.hexdigest()[:PSEUDONYM_HEX])
    return out


def pseudonym_map(patient_ids: Iterable[str], secret: bytes) -> dict[str, str]:
    """Mapping id -> pseudonym for the distinct ids given."""
    distinct = list(dict.fromkeys(patient_ids))
    return dict(zip(distinct, pseudonym_list(distinct, secret), strict=True))


def pseudonymise_series(ids: pd.Series, secret: bytes) -> pd.Series:
    """Pseudonymise a column of ids (each distinct id hashed once); missing stays missing."""
    text = pa.array(ids.astype(pd.StringDtype("pyarrow")).array)
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    distinct = pc.unique(text).drop_null()
    hashed = pa.array(pseudonym_list(distinct.to_pylist(), secret), pa.large_string())
    out = pc.take(hashed, pc.index_in(text, value_set=distinct))
    return out.to_pandas(types_mapper=lambda _: pd.StringDtype("pyarrow")).set_axis(ids.index)

"""Site secret file handling and keyed pseudonyms of patient ids."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from node.errors import SecretError
from node.ingestion.pseudonym import (
    load_or_create_secret,
    pseudonym_map,
    pseudonymise,
    pseudonymise_series,
)


def test_secret_is_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "site.secret"
    old_umask = os.umask(0)  # a permissive umask must not widen the file's mode
    try:
        secret = load_or_create_secret(path)
    finally:
        os.umask(old_umask)
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    assert load_or_create_secret(tmp_path / "other.secret") != secret
    assert [p.name for p in path.parent.iterdir()] == ["site.secret"]  # no temp file left


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_secret_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "site.secret"
    load_or_create_secret(path)
    path.chmod(mode)
    with pytest.raises(SecretError, match="chmod 600"):
        load_or_create_secret(path)


def test_secret_of_wrong_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.secret"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(SecretError, match="5 bytes"):
        load_or_create_secret(path)


def test_pseudonym_is_hmac_sha256_truncated_to_32_hex() -> None:
    secret = bytes(range(32))
    expected = hmac.new(secret, b"MRN-0001", hashlib.sha256).hexdigest()[:32]
    assert pseudonymise("MRN-0001", secret) == expected
    assert len(expected) == 32 and int(expected, 16) >= 0
    assert pseudonymise("MRN-0001", bytes(32)) != expected
    assert pseudonymise("MRN-0002", secret) != expected


@pytest.mark.parametrize("secret", [bytes(range(32)), b"", b"k" * 100])
def test_bulk_pseudonyms_equal_the_reference(secret: bytes) -> None:
    ids = ["MRN-0001", "ünïcode-7", "", "MRN-0001", "x" * 200]
    mapping = pseudonym_map(ids, secret)
    assert mapping == {i: pseudonymise(i, secret) for i in ids}
    series = pseudonymise_series(pd.Series([*ids, None], dtype="string"), secret)
    assert series.tolist()[:-1] == [pseudonymise(i, secret) for i in ids]
    assert series.isna().tolist() == [False] * len(ids) + [True]
    shifted = pd.Series(ids, index=range(10, 10 + len(ids)))
    out = pseudonymise_series(shifted, secret)
    assert list(out.index) == list(shifted.index)
    assert out.tolist() == [pseudonymise(i, secret) for i in ids]

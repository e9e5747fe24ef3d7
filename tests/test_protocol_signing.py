"""Tests of protocol.signing: canonical JSON, signing, and the reasons a study is refused."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import codegen
from protocol.errors import SignatureError, StudyFormatError
from protocol.keys import raw_public_key
from protocol.signing import SignedStudy, canonical_json, is_expired, sign_study, verify_study
from protocol.study import parse_study
from protocol.v1 import common_pb2

STUDY_YAML = """
heron: 1
id: abc-study
title: T
expires: 2030-01-01
horizon_days: 100
analyses:
  - name: os
    kind: kaplan_meier
    endpoint: overall_survival
"""
# written by hand from docs/study-format.md and the canonical form's definition
STUDY_CANONICAL = (
    b'{"analyses":[{"endpoint":"overall_survival","kind":"kaplan_meier","name":"os"}],'
    b'"cohort":{"first_infusion_only":true},"expires":"2030-01-01","heron":1,'
    b'"horizon_days":100,"id":"abc-study","privacy":{"min_sites":3,"secure_aggregation":true},'
    b'"title":"T"}'
)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return raw_public_key(key.public_key())


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def signed(key: Ed25519PrivateKey) -> SignedStudy:
    return sign_study(parse_study(STUDY_YAML), key)


def test_generated_code_is_up_to_date() -> None:
    assert codegen.stale_files() == []


def test_canonical_json_known_answer() -> None:
    obj = {"b": [1, "é", None, True, False], "a": {"z": 1.5, "y": "x\n\"q\""}, "ä": -0}
    expected = '{"a":{"y":"x\\n\\"q\\"","z":1.5},"b":[1,"é",null,true,false],"ä":0}'
    assert canonical_json(obj) == expected.encode("utf-8")
    assert canonical_json({"k": (1, 2)}) == b'{"k":[1,2]}'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), {"x": [float("nan")]}])
def test_canonical_json_rejects_non_finite(bad: object) -> None:
    with pytest.raises(ValueError):
        canonical_json(bad)


@pytest.mark.parametrize("bad", [{1: "a"}, {"a": {1, 2}}, {"a": b"x"}, {"a": dt.date(2020, 1, 1)}])
def test_canonical_json_rejects_non_json(bad: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(bad)


def test_sign_verify_round_trip(key: Ed25519PrivateKey, signed: SignedStudy) -> None:
    assert signed.canonical_study == STUDY_CANONICAL
    key.public_key().verify(signed.signature, STUDY_CANONICAL)  # a plain Ed25519 signature
    study = verify_study(signed, [Ed25519PrivateKey.generate().public_key(), key.public_key()])
    assert study == parse_study(STUDY_YAML)


def test_unsigned(key: Ed25519PrivateKey, signed: SignedStudy) -> None:
    unsigned = SignedStudy(signed.canonical_study, b"", signed.public_key)
    with pytest.raises(SignatureError, match=r"^study is not signed$"):
        verify_study(unsigned, [key.public_key()])


def test_tampered_byte(key: Ed25519PrivateKey, signed: SignedStudy) -> None:
    body = bytearray(signed.canonical_study)
    body[body.index(b"T\"}")] = ord("U")  # title "T" -> "U"
    bad = SignedStudy(bytes(body), signed.signature, signed.public_key)
    with pytest.raises(SignatureError,
                       match=r"^study signature does not verify \(tampered or corrupted\)$"):
        verify_study(bad, [key.public_key()])


def test_tampered_field_reencoded(key: Ed25519PrivateKey, signed: SignedStudy) -> None:
    doc = json.loads(signed.canonical_study)
    doc["privacy"]["min_sites"] = 1
    bad = SignedStudy(canonical_json(doc), signed.signature, signed.public_key)
    with pytest.raises(SignatureError, match="tampered or corrupted"):
        verify_study(bad, [key.public_key()])


def test_corrupted_signature_or_key(key: Ed25519PrivateKey, signed: SignedStudy) -> None:
    sig = bytearray(signed.signature)
    sig[0] ^= 1
    for bad in (SignedStudy(signed.canonical_study, bytes(sig), signed.public_key),
                SignedStudy(signed.canonical_study, signed.signature, signed.public_key[:31]),
                SignedStudy(signed.canonical_study, signed.signature, b"")):
        with pytest.raises(SignatureError, match="tampered or corrupted"):
            verify_study(bad, [key.public_key()])


def test_key_swapped_for_trusted_one(key: Ed25519PrivateKey) -> None:
    rogue = sign_study(parse_study(STUDY_YAML), Ed25519PrivateKey.generate())
    swapped = SignedStudy(rogue.canonical_study, rogue.signature,
                          raw_public_key(key.public_key()))
    with pytest.raises(SignatureError, match="tampered or corrupted"):
        verify_study(swapped, [key.public_key()])


def test_untrusted_key(key: Ed25519PrivateKey, signed: SignedStudy) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(SignatureError, match=rf"^study signed by an untrusted key "
                                             rf"{signed.signer_key_id}$"):
        verify_study(signed, [other])
    with pytest.raises(SignatureError, match="untrusted key"):
        verify_study(signed, [])


def test_signed_but_not_canonical(key: Ed25519PrivateKey) -> None:
    pretty = json.dumps(json.loads(STUDY_CANONICAL), indent=2).encode()
    raw = SignedStudy(pretty, key.sign(pretty), _raw(key))
    with pytest.raises(StudyFormatError, match="canonical"):
        verify_study(raw, [key.public_key()])


def test_signed_but_invalid_study(key: Ed25519PrivateKey) -> None:
    doc = json.loads(STUDY_CANONICAL)
    doc["cohort"]["sexx"] = ["F"]
    body = canonical_json(doc)
    with pytest.raises(StudyFormatError, match=r"cohort\.sexx"):
        verify_study(SignedStudy(body, key.sign(body), _raw(key)), [key.public_key()])
    for body in (b"[1,2]", b"\xff\xfe", b'{"a":NaN}'):
        with pytest.raises(StudyFormatError):
            verify_study(SignedStudy(body, key.sign(body), _raw(key)),
                         [key.public_key()])


def test_proto_round_trip(key: Ed25519PrivateKey, signed: SignedStudy) -> None:
    wire = signed.to_proto().SerializeToString()
    pb = common_pb2.SignedStudy.FromString(wire)
    assert pb.canonical_study == STUDY_CANONICAL
    again = SignedStudy.from_proto(pb)
    assert again == signed
    assert verify_study(again, [key.public_key()]).id == "abc-study"


def test_file_envelope(tmp_path: Path, key: Ed25519PrivateKey, signed: SignedStudy) -> None:
    path = tmp_path / "study.signed.json"
    signed.to_file(path)
    env = json.loads(path.read_text())
    assert set(env) == {"study", "signature", "public_key"}
    assert env["study"]["id"] == "abc-study"
    assert SignedStudy.from_file(path) == signed
    env["study"]["title"] = "Edited after signing"
    path.write_text(json.dumps(env))
    with pytest.raises(SignatureError, match="tampered"):
        verify_study(SignedStudy.from_file(path), [key.public_key()])


def test_bad_envelope_files(tmp_path: Path, signed: SignedStudy) -> None:
    path = tmp_path / "x.json"
    for text in ("not json", "[]", '{"study": {}}',
                 '{"study": {}, "signature": "%%%", "public_key": ""}'):
        path.write_text(text)
        with pytest.raises(StudyFormatError):
            SignedStudy.from_file(path)
    with pytest.raises(StudyFormatError):
        SignedStudy.from_file(tmp_path / "missing.json")


def test_is_expired() -> None:
    study = parse_study(STUDY_YAML)
    assert not is_expired(study, dt.date(2029, 12, 31))
    assert not is_expired(study, dt.date(2030, 1, 1))
    assert is_expired(study, dt.date(2030, 1, 2))

"""Sealed screening: sites learn pooled counts that the aggregator never sees.

Before a secure study releases analysis vectors, every site needs the pooled sizes that decide
what may be released (cohort, groups, adverse-event cells; :mod:`node.releases.screening`). The
aggregator must not learn them: a pooled group of 2 is already a disclosure. So in the
screening round each site masks its counts as in any masked round (pairwise masks that cancel
only in the sum of all participants) and then *seals* the masked vector once for every other
participant with AES-GCM under a key only the two sites can derive
(:meth:`protocol.masking.PairwiseMasker.channel_key`). The aggregator relays the sealed blobs
(it cannot open them); each site opens the ones addressed to it, adds its own masked vector and
obtains the exact pooled counts. A blob is authenticated: the associated data binds study,
attempt, round, sender and recipient, so the aggregator can neither forge, swap nor replay one,
and a site cannot be given counts masked in another round.

What a single site learns is the pooled counts (it cannot unmask another site's vector: that
needs the masks of two other sites). A site colluding with the aggregator learns the pooled
screening counts too (docs/threat-model.md).
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError

from protocol.codec import Release, decode_release, encode_release
from protocol.errors import ProtocolError, SecureAggregationError
from protocol.key_exchange import canonical_bytes
from protocol.masking import PairwiseMasker
from protocol.v1 import common_pb2

__all__ = ["SCREEN", "SCREEN_KIND", "SEALED", "open_sealed", "seal"]

SCREEN = "__screen__"
"""Analysis name of the screening requests and of a site's sealed screening release."""
SCREEN_KIND = "screen"
SEALED = "sealed"
"""Metadata key of the sealed blobs (recipient or sender -> blob) of a screening release or
relay."""
_LABEL = "screen"
_NONCE = 12


def _aad(masker: PairwiseMasker, round: int, sender: str, recipient: str) -> bytes:
    return canonical_bytes("heron-sa-v2 sealed screen", masker.study_id, masker.attempt, round,
                           sender, recipient)


def seal(masked: Release, masker: PairwiseMasker, round: int) -> dict[str, str]:
    """Seal this site's masked screening release for every other participant not reported
    dropped (:attr:`PairwiseMasker.active`).

    Returns
    -------
    dict
        Recipient site id -> base64 of nonce and ciphertext.
    """
    data = encode_release(masked).SerializeToString()
    out: dict[str, str] = {}
    for peer in masker.active:
        if peer == masker.site_id:
            continue
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(masker.channel_key(peer, _LABEL)).encrypt(
            nonce, data, _aad(masker, round, masker.site_id, peer))
        out[peer] = base64.b64encode(nonce + sealed).decode("ascii")
    return out


def open_sealed(blob: str, masker: PairwiseMasker, round: int, sender: str) -> Release:
    """Open the screening release ``sender`` sealed for this site in ``round``.

    Raises
    ------
    ProtocolError
        When the blob is not valid base64, was not sealed by ``sender`` for this site, study,
        attempt and round, or does not hold a release.
    """
    try:
        raw = base64.b64decode(blob, validate=True)
        data = AESGCM(masker.channel_key(sender, _LABEL)).decrypt(
            raw[:_NONCE], raw[_NONCE:], _aad(masker, round, sender, masker.site_id))
    except (binascii.Error, ValueError, TypeError, InvalidTag, SecureAggregationError):
        raise ProtocolError(f"the screening counts of {sender} do not open: not sealed by "
                            "that site for this site and round") from None
    try:
        return decode_release(common_pb2.AnalysisRelease.FromString(data))
    except (DecodeError, ProtocolError) as exc:
        raise ProtocolError(f"the screening counts of {sender} are malformed: {exc}") from None

"""Errors of the protocol package."""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised by :mod:`protocol`."""


class StudyFormatError(ProtocolError):
    """A study document breaks the study format; the message names the field."""


class SignatureError(ProtocolError):
    """A signed study is unsigned, tampered with, or signed by an untrusted key."""


class PKIError(ProtocolError):
    """A certificate or key could not be made, read or verified."""


class KeyFormatError(ProtocolError):
    """A coordinator signing key or public key file is missing or malformed."""


class ReleaseFormatError(ProtocolError):
    """An analysis release cannot be encoded or a received one is malformed."""


class SecureAggregationError(ProtocolError):
    """A secure-aggregation key announcement, mask or masked release is invalid.

    The message names the reason: an untrusted or mismatched certificate, a forged signature, a
    replayed announcement, a value outside the fixed-point range, or masked releases that do not
    match.
    """

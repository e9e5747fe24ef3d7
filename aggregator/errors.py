"""Errors of the aggregator package."""

from __future__ import annotations


class AggregatorError(Exception):
    """Root of every error raised by :mod:`aggregator`."""


class UnknownStudy(AggregatorError):
    """No study with this id is known."""


class DuplicateStudy(AggregatorError):
    """A study with this id was already submitted."""


class Rejected(AggregatorError):
    """A request is invalid (bad signature, malformed study)."""


class PermissionDenied(AggregatorError):
    """The caller's certificate does not grant this operation."""


class ProtocolViolation(AggregatorError):
    """A node broke the link protocol (for example its first message was not ``Hello``)."""


class ConfigError(AggregatorError):
    """The aggregator configuration is invalid; the message names the key."""


class StoreError(AggregatorError):
    """The aggregator database is unusable (closed, or written by a newer version)."""

"""Errors of the node package."""

from __future__ import annotations


class NodeError(Exception):
    """Root of every error raised by :mod:`node`."""


class IngestError(NodeError):
    """Input data cannot be read at all (missing required table, unreadable file)."""


class PolicyError(NodeError):
    """The site policy file is invalid; the message names the key."""


class StudyRefused(NodeError):
    """The node refuses a study or an analysis; the message is the reason sent upstream."""


class AuditError(NodeError):
    """The audit trail is unreadable or fails verification."""


class StoreError(NodeError):
    """The node's local store is missing or damaged."""


class SecretError(NodeError):
    """The site secret file cannot be created or is unsafe to read (wrong permissions)."""

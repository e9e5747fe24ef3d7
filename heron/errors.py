"""Errors of the heron command-line and orchestration package."""

from __future__ import annotations


class HeronError(Exception):
    """Root of errors raised by :mod:`heron`; the CLI prints the message on one line."""

"""Errors of the analytics package."""

from __future__ import annotations


class AnalyticsError(Exception):
    """Root of every error raised by :mod:`analytics`."""


class DisclosureError(AnalyticsError):
    """A release would break a disclosure rule and cannot be made safe by coarsening."""


class EstimationError(AnalyticsError):
    """An estimator cannot be computed from the given statistics (e.g. no events)."""


class NumericalOverflowError(EstimationError):
    """Weights ``exp(x'beta)`` or their sums overflow float64 at the given coefficients."""

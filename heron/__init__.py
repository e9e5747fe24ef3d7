"""heron: Hospital-Exemption Outcomes Research Network."""

__version__ = "0.1.0"

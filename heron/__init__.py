"""heron: Hospital-Exemption Outcomes Research Network."""

from protocol.version import __version__

__all__ = ["__version__"]

"""heron's version, in one place that every package can import without a cycle."""

__version__ = "0.1.0"

"""heron package."""

"""``python -m heron``: the ``heron`` command line."""

from heron.cli import run

run()

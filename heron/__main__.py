"""``python -m heron``: the ``heron`` command line."""

import sys

from heron.cli import main

sys.exit(main())

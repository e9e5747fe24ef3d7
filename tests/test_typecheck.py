"""Repository check CI makes: mypy passes with the configuration in pyproject.toml.

``[tool.mypy]`` decides what is checked and how strictly (analytics and protocol are strict).
The cache lives in the default ``.mypy_cache`` at the repository root, so repeated runs take
seconds.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install -e '.[test]' installs it)")
@pytest.mark.timeout(240)
def test_mypy_is_clean():
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                             str(ROOT / "pyproject.toml")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, "mypy failed:\n" + result.stdout + result.stderr

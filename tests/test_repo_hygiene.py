"""Repository checks CI makes: ruff is clean, .ci/run runs the README's test command, test
modules import no other test module and benchmarks import nothing from tests/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert "heron demo" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_test_modules_do_not_import_each_other_and_benchmarks_not_tests():
    imports_test_module = re.compile(r"^\s*(from|import)\s+tests\.test_", re.M)
    offenders = [p.name for p in (ROOT / "tests").glob("*.py")
                 if imports_test_module.search(p.read_text(encoding="utf-8"))]
    assert offenders == [], offenders
    for path in (ROOT / "benchmarks").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import)\s+tests\b", text, re.M), path.name
        assert "sys.path" not in text, path.name

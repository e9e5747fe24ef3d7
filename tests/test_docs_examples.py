"""Every fenced example in docs/*.md works, and nothing in the repository points outside it.

- ```yaml blocks are studies and must load with protocol.study's parser; a block whose first
  line is ``# fragment`` is only parsed as YAML.
- ```toml blocks are site policies and must load with node.governance.policy.load_policy.
- ```json blocks must be valid JSON.
- ```bash lines starting with ``heron `` must name a real (sub)command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from heron.cli import build_parser
from heron.study_tools import check_study_document
from node.governance.policy import load_policy
from protocol.study import study_from_dict
from protocol.study_yaml import load_study_yaml
from protocol.version import __version__

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
# spelt in two parts so this file does not match itself
OUTSIDE = (".." + "/shared", "shared" + "/spec")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for i, m in enumerate(FENCE.finditer(text)):
            if m.group(1) == lang:
                out.append((f"{path.name}#{i}", m.group(2)))
    return out


def _ids(blocks: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in blocks]


YAML = _blocks("yaml")
TOML = _blocks("toml")
JSON = _blocks("json")
BASH = _blocks("bash")


def test_the_docs_exist_and_have_examples():
    names = {p.name for p in DOCS}
    assert {"README.md", "data-model.md", "study-format.md", "results-format.md", "cli.md",
            "threat-model.md"} <= names
    assert YAML and TOML and JSON and BASH


def test_docs_index_links_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for path in DOCS:
        if path.name != "README.md":
            assert f"({path.name})" in index, path.name


@pytest.mark.parametrize("name, block", YAML, ids=_ids(YAML))
def test_yaml_examples_are_valid_studies(name, block):
    doc = load_study_yaml(block)  # read as the nodes read a signed study
    if block.startswith("# fragment"):
        assert isinstance(doc, dict), name
        return
    study = study_from_dict(doc)
    # also what nodes would refuse (never failing only because an example date has passed)
    check = check_study_document(doc, name, today=min(study.expires, dt.date.today()))
    assert check.ok, check.problems


@pytest.mark.parametrize("name, block", TOML, ids=_ids(TOML))
def test_toml_examples_are_valid_policies(name, block, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(block, encoding="utf-8")
    load_policy(path)


@pytest.mark.parametrize("name, block", JSON, ids=_ids(JSON))
def test_json_examples_are_valid(name, block):
    json.loads(block)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _heron_commands() -> list[tuple[str, str]]:
    out = []
    for name, block in BASH:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("heron "):
                out.extend((name, cmd.strip()) for cmd in line.split(";")
                           if cmd.strip().startswith("heron "))
    return out


COMMANDS = _heron_commands()


@pytest.mark.parametrize("name, line", COMMANDS, ids=[f"{n}: {c[:50]}" for n, c in COMMANDS])
def test_bash_examples_name_real_commands_with_real_options(name, line):
    words = shlex.split(line.split("#")[0])[1:]
    parser = build_parser()
    node = parser
    for word in words:
        subs = _subcommands(node)
        if not subs:
            break
        assert word in subs, f"{name}: {line!r}: unknown command {word!r}"
        node = subs[word]
    # the whole line must parse (real options, right arity); nothing runs
    parser.parse_args(words)


def _tracked_files() -> list[str]:
    """``git ls-files``; outside a git checkout, every file not under a hidden folder or venv."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode()
        return out.split("\0")
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                           for part in p.relative_to(ROOT).parts)]


def test_no_tracked_file_points_outside_the_repository():
    files = _tracked_files()
    offenders = []
    for rel in filter(None, files):
        path = ROOT / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for needle in OUTSIDE:
            if needle in text:
                offenders.append(f"{rel}: {needle}")
    assert not offenders, offenders


def test_no_tracked_file_cites_the_old_spec_file_names():
    pattern = re.compile(r"(?<![\w/-])(study\.md|data-model\.md|results-and-cli\.md|context\.md)")
    files = _tracked_files()
    offenders = []
    for rel in filter(None, files):
        path = ROOT / rel
        if path.parent.name == "docs" or path == Path(__file__) or not path.is_file():
            continue  # the docs (and this test) name the docs pages by file name
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for m in pattern.finditer(text):
            before = text[max(0, m.start() - 5):m.start()]
            if not before.endswith("docs/"):
                offenders.append(f"{rel}: {m.group(1)}")
    assert not offenders, offenders


def test_pyproject_version_is_the_package_version():
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as fh:
        assert tomllib.load(fh)["project"]["version"] == __version__
    import heron

    assert heron.__version__ == __version__

"""The command line: help everywhere, one-line errors with non-zero exit, audit verification."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from heron.cli import build_parser, main

COMMANDS = [
    [], ["demo"], ["simulate"], ["synth"], ["pki"], ["pki", "init"], ["pki", "issue-site"],
    ["pki", "issue-coordinator"], ["pki", "issue-aggregator"], ["node"], ["node", "init"],
    ["node", "ingest"], ["node", "validate"], ["node", "status"], ["node", "audit"],
    ["node", "approve"], ["node", "pending"], ["node", "reject"], ["aggregator", "inspect"],
    ["node", "run"], ["aggregator"], ["aggregator", "run"], ["study"],
    ["study", "sign"], ["study", "submit"], ["study", "status"], ["study", "list"],
    ["study", "results"], ["study", "report"], ["study", "new"], ["study", "check"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "heron")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: heron" in capsys.readouterr().out


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("heron: error: ")
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_gives_one_line_error_and_non_zero_exit(tmp_path, capsys):
    err = _one_line_error(capsys, ["study", "sign", str(tmp_path / "missing.yaml"), "--key",
                                   str(tmp_path / "k"), "--out", str(tmp_path / "o")])
    assert "missing.yaml" in err
    bad = tmp_path / "study.yaml"
    bad.write_text("heron: 1\nid: x\n")
    err = _one_line_error(capsys, ["simulate", "--site", "a=" + str(tmp_path), "--study",
                                   str(bad), "--out", str(tmp_path / "out")])
    assert "study.yaml" in err or "id" in err
    err = _one_line_error(capsys, ["simulate", "--site", "nonsense", "--study", str(bad),
                                   "--out", str(tmp_path / "out")])
    main(["pki", "init", "--dir", str(tmp_path / "ca")])
    err = _one_line_error(capsys, ["pki", "init", "--dir", str(tmp_path / "ca")])


def test_study_yaml_with_unknown_key_names_the_field(tmp_path, capsys):
    main(["pki", "init", "--dir", str(tmp_path / "ca")])
    main(["pki", "issue-coordinator", "--ca", str(tmp_path / "ca"), "--out",
          str(tmp_path / "coord")])
    study = tmp_path / "study.yaml"
    study.write_text("heron: 1\nid: abc-study\ntitle: t\nexpires: 2099-01-01\n"
                     "horizon_days: 365\ncohort: {indication_grup: [LBCL]}\n"
                     "analyses: [{name: os, kind: kaplan_meier, endpoint: overall_survival}]\n")
    capsys.readouterr()
    err = _one_line_error(capsys, ["study", "sign", str(study), "--key",
                                   str(tmp_path / "coord" / "signing.key"), "--out",
                                   str(tmp_path / "s.json")])
    assert "cohort.indication_grup" in err


def test_node_lifecycle_and_audit_verify_detects_an_edit(tmp_path, capsys):
    assert main(["synth", "--sites", "1", "--patients", "40", "--seed", "3", "--out",
                 str(tmp_path / "sites"), "--json"]) == 0
    folder = json.loads(capsys.readouterr().out)[0]["path"]
    node_dir = tmp_path / "node"
    assert main(["node", "init", "--dir", str(node_dir), "--site", "se-test"]) == 0
    assert main(["node", "validate", folder]) == 0
    assert main(["node", "ingest", "--dir", str(node_dir), folder, "--json"]) == 0
    capsys.readouterr()
    assert main(["node", "status", "--dir", str(node_dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["stored_infusions"] == 40 and status["audit_ok"] is True
    assert main(["node", "audit", "--dir", str(node_dir), "--verify"]) == 0
    audit = node_dir / "audit.jsonl"
    lines = audit.read_text().splitlines()
    lines[0] = lines[0].replace("se-test", "se-tesT")
    audit.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["node", "audit", "--dir", str(node_dir), "--verify"]) == 1
    assert "BROKEN" in capsys.readouterr().out


def test_console_script_runs_as_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "heron.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("heron ")

"""The command line starts without the analysis stack: a design guard, not a timing.

``import heron.cli`` and commands that only parse (``--version``, ``--help``) load none of the
heavy libraries; ``heron study status`` loads gRPC and the protocol code it calls but nothing of
the data path. Each check runs in a fresh interpreter, where ``sys.modules`` tells what was
imported. ``benchmarks/cli_startup.py`` gives the timings.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import heron.cli
from aggregator.errors import AggregatorError
from analytics.errors import AnalyticsError
from heron import __version__
from heron.cli import main
from heron.errors import HeronError
from node.errors import NodeError
from protocol.errors import ProtocolError
from protocol.pki import init_ca, issue_coordinator
from tests.aggregator_helpers import make_network

ROOT = Path(__file__).resolve().parent.parent

#: imported by no command that only parses its flags
HEAVY = ("pandas", "pyarrow", "lifelines", "grpc", "numpy", "scipy", "matplotlib",
         "cryptography", "google.protobuf", "yaml", "aggregator", "analytics", "node")
#: imported by no coordinator command that talks to the aggregator
DATA_PATH = ("pandas", "pyarrow", "lifelines", "numpy", "scipy", "matplotlib", "aggregator",
             "analytics", "node")

_PROBE = """
import contextlib, io, json, sys
argv = json.loads(sys.argv[1])
out, err = io.StringIO(), io.StringIO()
code = None
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    import heron.cli
    if argv is not None:
        try:
            code = heron.cli.main(argv)
        except SystemExit as exc:
            code = exc.code
print(json.dumps({"modules": sorted(sys.modules), "code": code, "out": out.getvalue(),
                  "err": err.getvalue()}))
"""


def _probe(argv: list[str] | None) -> dict:
    """Import heron.cli (and run ``main(argv)``) in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv)], capture_output=True,
                          text=True, check=True, cwd=ROOT, timeout=120)
    return json.loads(done.stdout)


def _loaded(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    return sorted({r for r in roots for m in modules if m == r or m.startswith(r + ".")})


def test_importing_the_cli_loads_no_heavy_library():
    assert _loaded(_probe(None)["modules"], HEAVY) == []


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["study", "status", "--help"],
                                  ["node", "ingest", "--help"], ["aggregator", "run", "--help"]])
def test_parsing_commands_load_no_heavy_library(argv):
    probe = _probe(argv)
    assert probe["code"] == 0
    assert _loaded(probe["modules"], HEAVY) == []
    if argv == ["--version"]:
        assert probe["out"] == f"heron {__version__}\n"
    else:
        assert probe["out"].startswith("usage: heron")


def test_study_status_loads_grpc_but_not_the_data_path(tmp_path):
    init_ca(tmp_path / "ca")
    issue_coordinator(tmp_path / "ca", "coordinator", tmp_path / "coordinator")
    with socket.socket() as s:  # a loopback port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    probe = _probe(["study", "status", "some-study", "--credentials",
                    str(tmp_path / "coordinator"), "--aggregator", address])
    assert probe["code"] == 2
    assert probe["err"].startswith("heron: error: aggregator: UNAVAILABLE"), probe["err"]
    assert "grpc" in probe["modules"]
    assert _loaded(probe["modules"], DATA_PATH) == []


def test_study_status_against_a_running_aggregator_loads_no_x509_code(tmp_path):
    """The channel reads the PEM files; only a failed call checks them with X.509 code."""
    from aggregator.config import AggregatorConfig
    from aggregator.server import create_server

    net = make_network(tmp_path)
    config = AggregatorConfig(listen="127.0.0.1:0", credentials_dir=net.root / "aggregator",
                              db_path=tmp_path / "agg.sqlite")
    server = create_server(config)
    server.start()
    try:
        probe = _probe(["study", "status", "no-such-study", "--credentials",
                        str(net.root / "coordinator"), "--aggregator",
                        f"127.0.0.1:{server.port}"])
    finally:
        server.stop(0)
    assert probe["code"] == 2
    assert probe["err"].startswith("heron: error: aggregator: NOT_FOUND"), probe["err"]
    assert _loaded(probe["modules"], ("cryptography",)) == []


def test_client_commands_exit_at_once_with_their_whole_output(tmp_path):
    """``heron study status`` and ``list`` skip the interpreter's teardown (os._exit): their
    output, through a pipe, is complete and their exit status is the command's."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from aggregator.config import AggregatorConfig
    from aggregator.server import create_server
    from heron.coordinator import CoordinatorClient
    from protocol.keys import public_key_b64
    from protocol.signing import sign_study
    from tests.aggregator_helpers import make_study

    net = make_network(tmp_path)
    key = Ed25519PrivateKey.generate()
    config = AggregatorConfig(listen="127.0.0.1:0", credentials_dir=net.root / "aggregator",
                              db_path=tmp_path / "agg.sqlite",
                              trusted_coordinators=(public_key_b64(key.public_key()),))
    server = create_server(config)
    server.start()
    target = f"127.0.0.1:{server.port}"
    ids = [f"study-{i:03d}" for i in range(40)]
    cli = ["--credentials", str(net.root / "coordinator"), "--aggregator", target]
    try:
        with CoordinatorClient(target, net.root / "coordinator") as client:
            for study_id in ids:
                client.submit(sign_study(make_study(study_id), key))
        heron = [sys.executable, "-m", "heron", "study"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered
        listed = subprocess.run([*heron, "list", "--json", *cli], capture_output=True,
                                text=True, cwd=ROOT, timeout=120, env=env)
        status = subprocess.run([*heron, "status", ids[-1], "--json", *cli],
                                capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
        missing = subprocess.run([*heron, "status", "no-such-study", *cli],
                                 capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    finally:
        server.stop(0)
    assert listed.returncode == 0, listed.stderr
    assert sorted(s["study_id"] for s in json.loads(listed.stdout)) == ids
    assert status.returncode == 0 and json.loads(status.stdout)["study_id"] == ids[-1]
    assert missing.returncode == 2
    assert missing.stderr.startswith("heron: error: aggregator: NOT_FOUND")


def test_study_status_with_a_key_of_another_certificate_names_the_key(tmp_path):
    init_ca(tmp_path / "ca")
    issue_coordinator(tmp_path / "ca", "coordinator", tmp_path / "coordinator")
    issue_coordinator(tmp_path / "ca", "other", tmp_path / "other")
    (tmp_path / "coordinator" / "key.pem").write_bytes(
        (tmp_path / "other" / "key.pem").read_bytes())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    probe = _probe(["study", "status", "some-study", "--credentials",
                    str(tmp_path / "coordinator"), "--aggregator", address])
    assert probe["code"] == 2
    assert probe["err"].startswith("heron: error: coordinator credentials: "), probe["err"]
    assert "does not belong to" in probe["err"]


@pytest.mark.parametrize("command", [[sys.executable, "-m", "heron"],
                                     [sys.executable, "-m", "heron.cli"]])
def test_version_as_a_subprocess(command):
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=120)
    assert out.stdout == f"heron {__version__}\n"


@pytest.mark.parametrize("error", [HeronError, NodeError, ProtocolError, AggregatorError,
                                   AnalyticsError])
def test_every_heron_error_root_is_printed_on_one_line(monkeypatch, capsys, error):
    def failing(_args):
        raise error("the reason")

    monkeypatch.setattr(heron.cli, "_demo", failing)
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == "heron: error: the reason\n"


def test_other_errors_propagate(monkeypatch):
    def failing(_args):
        raise ValueError("a bug")

    monkeypatch.setattr(heron.cli, "_demo", failing)
    with pytest.raises(ValueError, match="a bug"):
        main(["demo"])


def test_keyboard_interrupt_exits_130(monkeypatch):
    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(heron.cli, "_demo", interrupted)
    assert main(["demo"]) == 130

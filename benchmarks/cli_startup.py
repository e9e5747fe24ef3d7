"""Benchmark: how fast the ``heron`` command line starts, against a bare ``python -c pass``.

Every command runs as a fresh subprocess, R times (default 15) after one warm-up run, the
commands taken in turn (A B C ... A B C ...) so a drift of the machine's speed touches all of
them alike. For each command it prints the wall time (min, median, max, in ms), the peak
resident memory of the process (GNU ``/usr/bin/time``'s ``%M``, max over the runs, in MB) and the
ratio of its median wall time to that of ``python -c pass`` measured in the same run.

Commands:

``python -c pass``
    the interpreter alone: the floor, and the reference of the ratios.
``heron --version``, ``heron --help``, ``heron study status --help``
    the console script (``heron`` next to this interpreter; ``python -m heron`` without it).
``heron study status`` (running)
    the real call a coordinator makes: an aggregator (:func:`aggregator.server.create_server`,
    mutual TLS, SQLite) runs in this benchmark's process with one submitted study waiting for
    its sites, and the command asks for that study's status with coordinator credentials made
    for the run (exit 0). The time is the start cost (imports, the credential files, the
    channel), the TLS handshake and one call.
``heron study status`` (refused)
    the same call to a loopback port where nothing listens: the connection is refused at once,
    so the time is the start cost plus one failed connection attempt and the check of the
    credentials that follows it (exit 2, ``heron: error: aggregator: UNAVAILABLE: ...``).
``import grpc``, ``import heron.coordinator``
    what the status path imports: gRPC alone, and the coordinator client (gRPC, the generated
    protobuf code, cryptography and the protocol modules).

Run: ``.venv/bin/python benchmarks/cli_startup.py [--repeats 15]``
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIME = "/usr/bin/time"  # GNU time: reports the peak RSS of the command it runs


def _heron() -> list[str]:
    script = Path(sys.executable).parent / "heron"
    return [str(script)] if script.exists() else [sys.executable, "-m", "heron"]


def _refused_address() -> str:
    """A loopback port nobody listens on (bound once to find it, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def _coordinator_credentials(folder: Path, ca: Path | None = None) -> Path:
    """Made by ``heron pki`` in subprocesses (a new CA unless ``ca`` is given)."""
    heron = _heron()
    if ca is None:
        ca = folder / "ca"
        subprocess.run([*heron, "pki", "init", "--dir", str(ca)], check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run([*heron, "pki", "issue-coordinator", "--ca", str(ca), "--out",
                    str(folder / "coordinator")], check=True, stdout=subprocess.DEVNULL)
    return folder / "coordinator"


def _running_aggregator(folder: Path) -> tuple[Any, str, str]:
    """Start an aggregator in this process with one submitted study.

    Returns the server (call ``stop(0)``), its address and the study id.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from aggregator.config import AggregatorConfig
    from aggregator.server import create_server
    from heron.coordinator import CoordinatorClient
    from protocol.keys import public_key_b64
    from protocol.pki import init_ca, issue_aggregator
    from protocol.signing import sign_study
    from protocol.study import parse_study

    init_ca(folder / "agg-ca")
    issue_aggregator(folder / "agg-ca", folder / "aggregator")
    key = Ed25519PrivateKey.generate()
    config = AggregatorConfig(listen="127.0.0.1:0", credentials_dir=folder / "aggregator",
                              db_path=folder / "agg.sqlite",
                              trusted_coordinators=(public_key_b64(key.public_key()),))
    server = create_server(config)
    server.start()
    template = subprocess.run([*_heron(), "study", "new"], check=True, capture_output=True)
    study = parse_study(template.stdout)
    address = f"127.0.0.1:{server.port}"
    creds = _coordinator_credentials(folder / "agg-coordinator", ca=folder / "agg-ca")
    with CoordinatorClient(address, creds) as client:
        study_id = client.submit(sign_study(study, key))
    return server, address, study_id


def _run(cmd: list[str], rss_file: Path) -> tuple[float, int, int]:
    """One run: (wall seconds, peak RSS in KiB, exit status).

    The command runs under ``/usr/bin/time -f %M``: Linux carries a process's peak RSS across
    ``exec``, so a command started straight from this (larger) process would report at least
    this process's size; the small ``time`` program in between reports the command's own.
    """
    start = time.perf_counter()
    code = subprocess.run([TIME, "-f", "%M", "-o", str(rss_file), *cmd], check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    return wall, int(rss_file.read_text().split()[-1]), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="counted runs of each command")
    parser.add_argument("--no-status", action="store_true",
                        help="leave out the real `heron study status` call")
    args = parser.parse_args()

    heron = _heron()
    commands: dict[str, list[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "heron --version": [*heron, "--version"],
        "heron --help": [*heron, "--help"],
        "heron study status --help": [*heron, "study", "status", "--help"],
    }
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_status:
            server, address, study_id = _running_aggregator(Path(tmp))
            commands["heron study status (running)"] = [
                *heron, "study", "status", study_id, "--credentials",
                str(Path(tmp) / "agg-coordinator" / "coordinator"), "--aggregator", address]
            creds = _coordinator_credentials(Path(tmp))
            commands["heron study status (refused)"] = [
                *heron, "study", "status", "some-study", "--credentials", str(creds),
                "--aggregator", _refused_address()]
        commands["import grpc"] = [sys.executable, "-c", "import grpc"]
        commands["import heron.coordinator"] = [sys.executable, "-c", "import heron.coordinator"]

        rss_file = Path(tmp) / "rss"
        for cmd in commands.values():  # warm-up: page cache, .pyc files
            _run(cmd, rss_file)
        walls: dict[str, list[float]] = {name: [] for name in commands}
        rss: dict[str, int] = dict.fromkeys(commands, 0)
        codes: dict[str, set[int]] = {name: set() for name in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                wall, peak, code = _run(cmd, rss_file)
                walls[name].append(wall)
                rss[name] = max(rss[name], peak)
                codes[name].add(code)
        if server is not None:
            server.stop(0)

    ref = statistics.median(walls["python -c pass"])
    print(f"{os.cpu_count()} CPUs, {args.repeats} runs of each command after one warm-up; "
          f"python {sys.version.split()[0]}; heron = {' '.join(heron)}")
    print(f"{'command':<31} {'min ms':>7} {'median':>7} {'max ms':>7} {'peak MB':>8} "
          f"{'x pass':>7}  exit")
    for name, values in walls.items():
        med = statistics.median(values)
        print(f"{name:<31} {min(values) * 1e3:7.0f} {med * 1e3:7.0f} {max(values) * 1e3:7.0f} "
              f"{rss[name] / 1024:8.1f} {med / ref:7.2f}  "
              f"{','.join(str(c) for c in sorted(codes[name]))}")


if __name__ == "__main__":
    main()

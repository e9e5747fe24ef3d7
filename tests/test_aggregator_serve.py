"""``serve`` as a real process: configured from the environment, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocol.tls import channel_credentials
from tests.aggregator_helpers import make_network, wait_until

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import logging, sys
from pathlib import Path
from aggregator.config import resolve_config
from aggregator.server import serve
from tests.aggregator_helpers import fake_strategies  # FAKE statistics

logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
port_file = Path(sys.argv[1])
sys.exit(serve(resolve_config(None), grace_s=2.0, strategies=fake_strategies(),
               on_started=lambda server: port_file.write_text(str(server.port))))
"""


def test_serve_runs_until_sigterm_and_stops_cleanly(tmp_path: Path) -> None:
    network = make_network(tmp_path / "pki")
    port_file = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_AGGREGATOR_")}
    env.update({"HERON_AGGREGATOR_LISTEN": "127.0.0.1:0",
                "HERON_AGGREGATOR_CREDENTIALS_DIR": str(network.root / "aggregator"),
                "HERON_AGGREGATOR_DB_PATH": str(tmp_path / "agg.sqlite")})
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(port_file)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or (port_file.exists()
                                                       and port_file.read_text()), timeout=30)
        assert proc.poll() is None, proc.communicate()[0]
        port = int(port_file.read_text())
        channel = grpc.secure_channel(f"127.0.0.1:{port}",
                                      channel_credentials(network.coordinator))
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert f"aggregator listening on 127.0.0.1:{port}" in output
    assert "no trusted coordinator keys" in output
    assert "aggregator stopped" in output
    assert (tmp_path / "agg.sqlite").exists()

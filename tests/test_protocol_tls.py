"""Tests of protocol.tls against a real gRPC server on a loopback port with mutual TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protocol.errors import PKIError
from protocol.pki import (
    Credentials,
    init_ca,
    issue_aggregator,
    issue_coordinator,
    issue_site,
    load_credentials,
)
from protocol.tls import (
    PeerIdentity,
    aio_secure_channel,
    channel_credentials,
    channel_options,
    peer_identity,
    secure_channel,
    server_credentials,
    server_options,
)

WHOAMI = "/heron.test.Whoami/Who"
RPC_TIMEOUT = 20  # only a guard against hanging; no assertion depends on time


def _whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    try:
        ident = peer_identity(context)
    except PKIError as exc:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    return f"{ident.common_name}|{ident.role}".encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    issue_aggregator(root / "ca", root / "aggregator")
    issue_site(root / "ca", "se-uppsala", root / "site")
    issue_coordinator(root / "ca", "eu-coordinating-centre", root / "coordinator")
    init_ca(root / "rogue-ca", name="rogue CA")
    issue_site(root / "rogue-ca", "se-uppsala", root / "rogue-site")
    return root


@pytest.fixture(scope="module")
def server_port(pki: Path) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=server_options())
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "heron.test.Whoami", {"Who": grpc.unary_unary_rpc_method_handler(_whoami)})])
    port = server.add_secure_port("127.0.0.1:0",
                                  server_credentials(load_credentials(pki / "aggregator")))
    assert port > 0
    server.start()
    yield port
    server.stop(grace=None)


def _who(channel: grpc.Channel) -> str:
    return channel.unary_unary(WHOAMI)(b"", timeout=RPC_TIMEOUT).decode()


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT).status


def _health_error(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        _health(channel)
    return info.value.code()


def test_site_client_is_identified(pki: Path, server_port: int) -> None:
    with secure_channel(f"localhost:{server_port}", load_credentials(pki / "site")) as ch:
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        assert _who(ch) == "se-uppsala|site"


def test_coordinator_client_over_ip_san(pki: Path, server_port: int) -> None:
    creds = load_credentials(pki / "coordinator")
    with grpc.secure_channel(f"127.0.0.1:{server_port}", channel_credentials(creds),
                             options=channel_options()) as ch:
        assert _who(ch) == "eu-coordinating-centre|coordinator"


def test_client_from_another_ca_is_rejected(pki: Path, server_port: int) -> None:
    rogue = Credentials(pki / "rogue-site" / "cert.pem", pki / "rogue-site" / "key.pem",
                        pki / "ca" / "ca.pem")  # trusts the real CA, presents a rogue cert
    with secure_channel(f"localhost:{server_port}", rogue) as ch:
        assert _health_error(ch) == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_rejected(pki: Path, server_port: int) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca" / "ca.pem").read_bytes())
    with grpc.secure_channel(f"localhost:{server_port}", creds) as ch:
        assert _health_error(ch) == grpc.StatusCode.UNAVAILABLE


def test_client_rejects_server_of_another_ca(pki: Path, server_port: int) -> None:
    # a site that trusts only the rogue CA must not talk to this aggregator
    creds = Credentials(pki / "site" / "cert.pem", pki / "site" / "key.pem",
                        pki / "rogue-ca" / "ca.pem")
    with secure_channel(f"localhost:{server_port}", creds) as ch:
        assert _health_error(ch) == grpc.StatusCode.UNAVAILABLE


def test_host_must_match_server_san(pki: Path, server_port: int) -> None:
    creds = load_credentials(pki / "site")
    wrong = channel_options(target_name_override="not-the-aggregator.example")
    with secure_channel(f"127.0.0.1:{server_port}", creds, options=wrong) as ch:
        assert _health_error(ch) == grpc.StatusCode.UNAVAILABLE


class _FakeContext:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def test_peer_identity_without_certificate_raises() -> None:
    with pytest.raises(PKIError, match="no client certificate"):
        peer_identity(_FakeContext({"transport_security_type": [b"ssl"]}))


def test_peer_identity_from_pem(pki: Path) -> None:
    pem = (pki / "site" / "cert.pem").read_bytes()
    ident = peer_identity(_FakeContext({"x509_pem_cert": [pem],
                                        "x509_common_name": [b"se-uppsala"]}))
    assert ident == PeerIdentity("se-uppsala", "site")


def test_asyncio_server_and_channel(pki: Path) -> None:
    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        ident = peer_identity(context)
        return f"{ident.common_name}|{ident.role}".encode()

    async def run() -> str:
        server = grpc.aio.server(options=server_options())
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "heron.test.Whoami", {"Who": grpc.unary_unary_rpc_method_handler(who)})])
        port = server.add_secure_port("127.0.0.1:0",
                                      server_credentials(load_credentials(pki / "aggregator")))
        await server.start()
        try:
            async with aio_secure_channel(f"localhost:{port}",
                                          load_credentials(pki / "site")) as ch:
                reply = await ch.unary_unary(WHOAMI)(b"", timeout=RPC_TIMEOUT)
        finally:
            await server.stop(None)
        return reply.decode()

    assert asyncio.run(run()) == "se-uppsala|site"

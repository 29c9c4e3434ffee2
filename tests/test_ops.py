"""The operations surface: `/healthz`, `/readyz`, and `/metrics` (off by default, protected by a
token or served on a listener of its own), with the values a real flow moves.

Real server, real HTTP, real SQLite or Redis (the tests about the store run on both); the metrics
are read back with prometheus_client's own parser, as Prometheus would scrape them.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auth import accounts
from server.app import METRICS_SOCKET, build_app
from server.config import ConfigError, Settings, load
from server.health import READY_TIMEOUT
from server.metrics import MetricsListenError
from server.storage.sqlite.db import READERS
from tests.conftest import OAuthUser, RunningServer, free_socket, on_both_backends, start_server
from tests.test_access_log import WRONG_PASSWORD, wrong_password
from tests.test_end_to_end import structured
from tests.test_store_concurrency import ACCEPT, redis_paused, writes_held_elsewhere

TOKEN = "metrics-token-0123456789abcdef"
REQUESTS = "memory_mcp_http_request_duration_seconds_count"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when it was never created (a counter nobody incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def metrics_of(http: httpx2.AsyncClient, url: str, token: str = TOKEN) -> Samples:
    response = await http.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return scrape(response.text)


@pytest.fixture
async def metered(data_dir: Path, store_settings: dict[str, Any]) -> AsyncIterator[RunningServer]:
    running = await start_server(data_dir, metrics_token=TOKEN, store_busy_timeout=0.5, **store_settings)
    await accounts.add_user(running.storage, "alice", "alice-password-1")
    yield running
    await running.stop()


# -- /healthz and /readyz ------------------------------------------------------------------------


@on_both_backends()
async def test_ready_and_alive(http: httpx2.AsyncClient, server: RunningServer) -> None:
    alive = await http.get(server.url + "/healthz")
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    ready = await http.get(server.url + "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert ready.headers["Cache-Control"] == "no-store"


@asynccontextmanager
async def store_not_answering(server: RunningServer) -> AsyncIterator[None]:
    """SQLite: every reader thread busy (a disk that stopped answering, reads that take forever).
    Redis: paused for every client."""
    if server.settings.redis_url is not None:
        async with redis_paused(server.settings.redis_url):
            yield
        return
    release = threading.Event()
    started = threading.Semaphore(0)

    def stuck(_conn: Any) -> None:
        started.release()
        release.wait(30)

    readers = [asyncio.ensure_future(server.sqlite.db.read(stuck)) for _ in range(READERS)]
    try:
        for _ in range(READERS):
            await asyncio.to_thread(started.acquire, True, 10)
        yield
    finally:
        release.set()
        await asyncio.gather(*readers)


@on_both_backends()
async def test_not_ready_while_the_store_does_not_answer(http: httpx2.AsyncClient, server: RunningServer) -> None:
    """The readiness query cannot run: /readyz says so within its deadline, /healthz is unaffected."""
    async with store_not_answering(server):
        probes = await asyncio.gather(*(http.get(server.url + "/readyz") for _ in range(3)))
        for probe in probes:
            assert probe.status_code == 503
            assert probe.json() == {"status": "unavailable", "reason": f"store: no answer within {READY_TIMEOUT:g} s"}
        assert (await http.get(server.url + "/healthz")).status_code == 200
    assert (await http.get(server.url + "/readyz")).status_code == 200


@on_both_backends()
async def test_not_ready_when_the_store_refuses(http: httpx2.AsyncClient, server: RunningServer) -> None:
    await server.storage.close()  # every call now raises StorageUnavailable
    probe = await http.get(server.url + "/readyz")
    assert probe.status_code == 503
    assert probe.json() == {"status": "unavailable", "reason": "store: the server is stopping"}


async def test_not_ready_while_draining(http: httpx2.AsyncClient, server: RunningServer) -> None:
    # What the runner does first on SIGTERM, with the listening socket still open here.
    await server.app.shutdown()
    probe = await http.get(server.url + "/readyz")
    assert (probe.status_code, probe.json()) == (503, {"status": "unavailable", "reason": "draining"})
    assert (await http.get(server.url + "/healthz")).status_code == 200


# -- protection ----------------------------------------------------------------------------------


async def test_no_metrics_unless_asked_for(http: httpx2.AsyncClient, server: RunningServer) -> None:
    response = await http.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404


async def test_the_token_is_required(http: httpx2.AsyncClient, metered: RunningServer) -> None:
    url = metered.url + "/metrics"
    wrong = TOKEN[:-1] + ("0" if TOKEN[-1] != "0" else "1")  # same length, last character differs
    for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"Authorization": f"Bearer {TOKEN}x"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}, {"Authorization": TOKEN}):
        refused = await http.get(url, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert "memory_mcp" not in refused.text
    samples = await metrics_of(http, metered.url)
    assert value(samples, REQUESTS, endpoint="/metrics", method="GET", status="401") == 6
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


async def test_the_token_from_a_file(http: httpx2.AsyncClient, data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "metrics.token"
    path.write_text(TOKEN + "\n")
    running = await start_server(data_dir, metrics_token_file=path)
    try:
        await metrics_of(http, running.url)
        assert (await http.get(running.url + "/metrics")).status_code == 401
    finally:
        await running.stop()


@pytest.mark.parametrize("environ,needle", [
    ({"MEMORY_MCP_METRICS_TOKEN": "short-secret"}, "metrics_token (from environment variable "
     "MEMORY_MCP_METRICS_TOKEN): must be at least 16 characters"),
    ({"MEMORY_MCP_METRICS_TOKEN": "has spaces in the secret"}, "may contain only"),
    ({"MEMORY_MCP_METRICS_TOKEN_FILE": "/nonexistent/metrics.token"}, "metrics_token_file /nonexistent/metrics.token "
     "cannot be read: no such file or directory"),
    ({"MEMORY_MCP_METRICS_TOKEN": TOKEN, "MEMORY_MCP_METRICS_TOKEN_FILE": "/etc/hostname"}, "not both"),
    ({"MEMORY_MCP_METRICS_ADDRESS": "9464"}, "host:port"),
    ({"MEMORY_MCP_METRICS_ADDRESS": "::1:9464"}, "brackets"),
    ({"MEMORY_MCP_METRICS_ADDRESS": "127.0.0.1:99999"}, "out of range"),
])
def test_bad_metrics_settings_are_explained(environ: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load({}, environ)
    assert needle in str(refused.value)
    for secret in ("short-secret", "has spaces", TOKEN):
        assert secret not in str(refused.value)


def test_a_token_file_with_a_weak_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metrics.token"
    path.write_text("weak\n")
    with pytest.raises(ConfigError, match=f"the token in metrics_token_file {path} must be at least 16"):
        load({}, {"MEMORY_MCP_METRICS_TOKEN_FILE": str(path)})


async def test_a_separate_listener_serves_only_metrics(http: httpx2.AsyncClient, data_dir: Path) -> None:
    running = await start_server(data_dir, metrics_address="127.0.0.1:0")
    try:
        host, port = running.app[METRICS_SOCKET].getsockname()[:2]
        listener = f"http://{host}:{port}"
        served = await http.get(listener + "/metrics")
        assert served.status_code == 200
        assert "# TYPE memory_mcp_http_request_duration_seconds histogram" in served.text
        assert (await http.get(listener + "/healthz")).status_code == 404
        assert (await http.get(listener + "/mcp")).status_code == 404
        assert (await http.get(running.url + "/metrics")).status_code == 404
        assert (await http.get(running.url + "/healthz")).status_code == 200
    finally:
        await running.stop()
    with pytest.raises(httpx2.ConnectError):
        await http.get(listener + "/metrics")


async def test_a_separate_listener_with_a_token(http: httpx2.AsyncClient, data_dir: Path) -> None:
    running = await start_server(data_dir, metrics_address="127.0.0.1:0", metrics_token=TOKEN)
    try:
        host, port = running.app[METRICS_SOCKET].getsockname()[:2]
        assert (await http.get(f"http://{host}:{port}/metrics")).status_code == 401
        await metrics_of(http, f"http://{host}:{port}")
        assert (await http.get(running.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                ).status_code == 404
    finally:
        await running.stop()


async def test_a_busy_metrics_port_stops_the_start(data_dir: Path, tmp_path: Path) -> None:
    busy = free_socket()
    busy.listen(1)
    address = f"127.0.0.1:{busy.getsockname()[1]}"
    options: dict[str, Any] = {"port": 0, "data_dir": data_dir, "metrics_address": address}
    try:
        with pytest.raises(MetricsListenError, match=f"cannot listen on metrics_address {address}: address already "
                           "in use; choose another port"):
            await build_app(Settings(**options))
        port = free_socket().getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "server", "serve", "--port", str(port), "--data-dir",
                                 str(tmp_path / "cli"), "--metrics-address", address],
                                capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert result.returncode == 1
    assert f"memory-mcp: cannot listen on metrics_address {address}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr and "serving" not in result.stderr


# -- what the metrics say ------------------------------------------------------------------------


@on_both_backends("store_settings")
async def test_a_flow_moves_the_metrics(http: httpx2.AsyncClient, metered: RunningServer) -> None:
    server = metered
    before = await metrics_of(http, server.url)
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    async with alice.client() as (client, _):
        structured(await client.call_tool("create_entities", {"entities": [
            {"name": "Ada", "entityType": "person", "observations": []}]}))
        structured(await client.call_tool("read_graph", {}))
        during = await metrics_of(http, server.url)
    assert alice.storage.tokens is not None and alice.storage.client_info is not None
    client_id = alice.storage.client_info.client_id
    access = alice.storage.tokens.access_token

    # A failed login, a token request with a bad code, a refresh, a revocation, a revoked token.
    from tests.browser import Browser
    browser = Browser("alice", WRONG_PASSWORD)
    try:
        await wrong_password(browser, server.url)
    finally:
        await browser.close()
    bad_code = await http.post(server.url + "/token", data={
        "grant_type": "authorization_code", "code": "no-such-code", "code_verifier": "v" * 43, "client_id": client_id})
    assert bad_code.status_code == 400
    refreshed = await http.post(server.url + "/token", data={
        "grant_type": "refresh_token", "refresh_token": alice.storage.tokens.refresh_token, "client_id": client_id})
    assert refreshed.status_code == 200
    pair = refreshed.json()
    assert (await http.post(server.url + "/revoke", data={"token": pair["refresh_token"], "client_id": client_id})
            ).status_code == 200
    headers = {**ACCEPT, "Authorization": f"Bearer {pair['access_token']}"}
    tools_list = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert (await http.post(server.url + "/mcp", headers=headers, json=tools_list)).status_code == 401
    assert (await http.get(server.url + "/consents/" + client_id)).status_code == 404
    # A write while the store takes none: refused as unavailable.
    async with OAuthUser(server.url, "alice", "alice-password-1").client() as (second, _):
        async with writes_held_elsewhere(server):
            refused = await second.call_tool("create_entities", {"entities": [
                {"name": "Bob", "entityType": "person", "observations": []}]})
            assert refused.is_error
    after = await metrics_of(http, server.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Sessions: one live during the first client, gone after it said DELETE.
    assert value(during, "memory_mcp_sessions", transport="streamable-http", state="parked",
                 protocol_version="2025-11-25") + value(during, "memory_mcp_sessions", transport="streamable-http",
                                                        state="active", protocol_version="2025-11-25") == 1
    assert moved("memory_mcp_mcp_requests_total", protocol_version="2025-11-25") >= 3
    # HTTP, by route and status.
    assert moved(REQUESTS, endpoint="/token", method="POST", status="200") == 3
    assert moved(REQUESTS, endpoint="/token", method="POST", status="400") == 1
    assert moved(REQUESTS, endpoint="/mcp", method="POST", status="401") >= 2
    assert moved(REQUESTS, endpoint="unmatched", method="GET", status="404") == 1
    assert moved(REQUESTS, endpoint="/mcp", method="POST", status="200") >= 4
    # Authentication.
    assert moved("memory_mcp_auth_failures_total", kind="login", reason="failed") == 1
    assert moved("memory_mcp_auth_failures_total", kind="token", reason="invalid_grant") == 1
    assert moved("memory_mcp_auth_failures_total", kind="bearer", reason="missing") >= 1
    assert moved("memory_mcp_auth_failures_total", kind="bearer", reason="invalid_or_expired") == 1
    assert moved("memory_mcp_tokens_total", event="issued") == 2
    assert moved("memory_mcp_tokens_total", event="refreshed") == 1
    assert moved("memory_mcp_tokens_total", event="revoked") == 1
    # The store.
    assert moved("memory_mcp_store_call_duration_seconds_count", operation="create_entities") == 2
    assert moved("memory_mcp_store_call_duration_seconds_count", operation="get_token") >= 3
    assert moved("memory_mcp_store_call_duration_seconds_count", operation="limiter.admit") + moved(
        "memory_mcp_store_call_duration_seconds_count", operation="limiter.hit") >= 1
    assert moved("memory_mcp_store_unavailable_total", reason="the store is busy") == 1

    # No label value names a user, client, session, token or path as sent.
    sessions = [s.session_id for s in server.registry.sessions()]
    users = await accounts.list_users(server.storage)
    forbidden = [client_id, access, pair["access_token"], *sessions, *(u.id for u in users), "alice"]
    values = {v for _, labels in after for _, v in labels}
    assert not [v for v in values for f in forbidden if f and f in v]
    assert not [v for v in values if v.startswith("/consents/")]


async def test_the_metrics_listener_closes_with_the_server(data_dir: Path) -> None:
    running = await start_server(data_dir, metrics_address="127.0.0.1:0")
    sock = running.app[METRICS_SOCKET]
    port = sock.getsockname()[1]
    await running.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass

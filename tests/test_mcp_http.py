"""The /mcp endpoint over raw HTTP: authentication first, session rules, and bad input.

Every refusal is checked for its status, its body, and that nothing was stored or opened."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from tests.conftest import BACKENDS, RunningServer, access_token, tokens_by_hand

# Every test here that takes `server` runs on SQLite and on Redis (tests/conftest.py).
SERVER_BACKENDS = BACKENDS

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CHALLENGE_SCOPE = 'scope="memory:read memory:write"'


@pytest.fixture
async def token(server: RunningServer) -> str:
    return await access_token(server, "alice", "alice-password-1")


async def open_session(http: httpx2.AsyncClient, server: RunningServer, token: str) -> dict[str, str]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    resp = await http.post(server.url + "/mcp", json=INIT, headers=headers)
    assert resp.status_code == 200, resp.text
    session = {**headers, "Mcp-Session-Id": resp.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
    note = await http.post(server.url + "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers=session)
    assert note.status_code == 202
    return session


def sse_or_json(resp: httpx2.Response) -> Any:
    import json

    if resp.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:") and line[5:].strip()]
        return json.loads(data[-1])
    return resp.json()


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path,metadata", [("/mcp", "/mcp"), ("/mcp/", "/mcp")])
async def test_unauthenticated_requests_get_the_challenge(
        http: httpx2.AsyncClient, server: RunningServer, method: str, path: str, metadata: str) -> None:
    for headers, invalid in (({}, False), ({"Authorization": "Bearer not-a-token"}, True),
                             ({"Authorization": "Basic YWxpY2U6eA=="}, False)):
        resp = await http.request(method, server.url + path, headers={**ACCEPT, **headers},
                                  content=b'{"jsonrpc":"2.0","id":1,"method":"server/discover"}')
        assert resp.status_code == 401
        challenge = resp.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{server.url}/.well-known/oauth-protected-resource{metadata}"' in challenge
        assert CHALLENGE_SCOPE in challenge
        assert ('error="invalid_token"' in challenge) is invalid
    assert len(server.registry) == 0


async def test_codex_status_probe_gets_401(http: httpx2.AsyncClient, server: RunningServer) -> None:
    resp = await http.get(server.url + "/mcp", headers={"Accept": "*/*", "MCP-Protocol-Version": "2024-11-05"})
    assert resp.status_code == 401 and "resource_metadata=" in resp.headers["www-authenticate"]


async def test_modern_discover_is_served_without_a_session(
        http: httpx2.AsyncClient, server: RunningServer, token: str) -> None:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": "server/discover"}
    resp = await http.post(server.url + "/mcp", headers=headers,
                           json={"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
                               "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                               "io.modelcontextprotocol/clientCapabilities": {}}}})
    assert resp.status_code == 200, resp.text
    result = sse_or_json(resp)["result"]
    assert "2026-07-28" in result["supportedVersions"]
    assert "mcp-session-id" not in resp.headers
    assert len(server.registry) == 0
    for method in ("GET", "DELETE"):
        assert (await http.request(method, server.url + "/mcp", headers=headers)).status_code == 405


async def test_unsupported_protocol_version(http: httpx2.AsyncClient, server: RunningServer, token: str) -> None:
    session = await open_session(http, server, token)
    resp = await http.post(server.url + "/mcp", headers={**session, "MCP-Protocol-Version": "1999-01-01"},
                           json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert "1999-01-01" in error["message"] and "2025-11-25" in error["message"]
    assert error["code"] not in (-32020, -32021, -32022)


async def test_session_rules(http: httpx2.AsyncClient, server: RunningServer, token: str) -> None:
    auth = {**ACCEPT, "Authorization": f"Bearer {token}"}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    missing = await http.post(server.url + "/mcp", json=call, headers=auth)
    assert missing.status_code == 400 and "Mcp-Session-Id" in missing.json()["error"]["message"]
    unknown = await http.post(server.url + "/mcp", json=call, headers={**auth, "Mcp-Session-Id": "nope"})
    assert unknown.status_code == 404

    session = await open_session(http, server, token)
    assert len(session["Mcp-Session-Id"]) >= 32
    listed = await http.post(server.url + "/mcp", json=call, headers=session)
    assert listed.status_code == 200 and len(sse_or_json(listed)["result"]["tools"]) == 9
    assert len(server.registry) == 1
    gone = await http.delete(server.url + "/mcp", headers=session)
    assert gone.status_code == 200
    assert len(server.registry) == 0
    after = await http.post(server.url + "/mcp", json=call, headers=session)
    assert after.status_code == 404


async def test_bad_input_is_refused_cleanly(http: httpx2.AsyncClient, server: RunningServer, token: str) -> None:
    session = await open_session(http, server, token)
    url = server.url + "/mcp"

    malformed = await http.post(url, content=b'{"jsonrpc": "2.0", "id": 1, "method": ', headers=session)
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == -32700

    wrong_type = await http.post(url, content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
                                 headers={**session, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415

    wrong_accept = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                   headers={**session, "Accept": "text/html"})
    assert wrong_accept.status_code == 406

    huge = await http.post(url, content=b'{"x":"' + b"a" * (5 * 1024 * 1024) + b'"}', headers=session)
    assert huge.status_code == 413

    unknown_tool = sse_or_json(await http.post(url, headers=session, json={
        "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "drop_tables", "arguments": {}}}))
    assert unknown_tool["error"]["code"] == -32602 and "drop_tables" in unknown_tool["error"]["message"]

    bad_args = sse_or_json(await http.post(url, headers=session, json={
        "jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "create_entities", "arguments": {"entities": [{"name": 5}]}}}))
    assert bad_args["result"]["isError"] is True
    assert "entities" in bad_args["result"]["content"][0]["text"]

    unknown_method = sse_or_json(await http.post(url, headers=session, json={
        "jsonrpc": "2.0", "id": 5, "method": "no/such/method"}))
    assert unknown_method["error"]["code"] == -32601

    read = sse_or_json(await http.post(url, headers=session, json={
        "jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "read_graph", "arguments": {}}}))
    assert read["result"]["structuredContent"] == {"entities": [], "relations": []}
    assert len(server.registry) == 1


async def test_foreign_origin_is_refused(http: httpx2.AsyncClient, server: RunningServer, token: str) -> None:
    resp = await http.post(server.url + "/mcp", json=INIT, headers={
        **ACCEPT, "Authorization": f"Bearer {token}", "Origin": "https://evil.example"})
    assert resp.status_code == 403
    same = await http.post(server.url + "/mcp", json=INIT, headers={
        **ACCEPT, "Authorization": f"Bearer {token}", "Origin": server.url})
    assert same.status_code == 200


async def test_read_only_token_cannot_write(http: httpx2.AsyncClient, server: RunningServer) -> None:
    tokens = await tokens_by_hand(server, "alice", "alice-password-1", "memory:read")
    assert tokens["scope"] == "memory:read"
    session = await open_session(http, server, tokens["access_token"])
    read = await http.post(server.url + "/mcp", headers=session, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_graph", "arguments": {}}})
    assert read.status_code == 200 and "result" in sse_or_json(read)
    write = await http.post(server.url + "/mcp", headers=session, json={
        "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "create_entities", "arguments": {
            "entities": [{"name": "x", "entityType": "t", "observations": []}]}}})
    assert write.status_code == 403
    challenge = write.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="insufficient_scope"' in challenge
    assert 'scope="memory:read memory:write"' in challenge
    assert f'resource_metadata="{server.url}/.well-known/oauth-protected-resource/mcp"' in challenge
    alice = await server.storage.get_user_by_name("alice")
    assert alice is not None
    graph = (await server.storage.read_graph(alice.id)).model()
    assert graph.entities == []


async def test_revoking_the_refresh_token_ends_live_sessions(http: httpx2.AsyncClient, server: RunningServer) -> None:
    tokens = await tokens_by_hand(server, "alice", "alice-password-1", "memory:read memory:write")
    session = await open_session(http, server, tokens["access_token"])
    assert len(server.registry) == 1
    revoked = await http.post(server.url + "/revoke", data={
        "token": tokens["refresh_token"], "client_id": tokens["client_id"]})
    assert revoked.status_code == 200
    assert len(server.registry) == 0
    after = await http.post(server.url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 1,
                                                                         "method": "tools/list"})
    assert after.status_code == 401 and 'error="invalid_token"' in after.headers["www-authenticate"]


async def test_browser_clients_get_cors_for_allowed_origins_only(http: httpx2.AsyncClient, server: RunningServer,
                                                                 token: str) -> None:
    preflight = await http.options(server.url + "/mcp", headers={
        "Origin": server.url, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == server.url
    assert "mcp-session-id" in preflight.headers["access-control-allow-headers"].lower()
    foreign = await http.options(server.url + "/mcp", headers={"Origin": "https://evil.example",
                                                               "Access-Control-Request-Method": "POST"})
    assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers

    resp = await http.post(server.url + "/mcp", json=INIT, headers={
        **ACCEPT, "Authorization": f"Bearer {token}", "Origin": server.url})
    assert resp.headers["access-control-allow-origin"] == server.url
    assert "mcp-session-id" in resp.headers["access-control-expose-headers"].lower()
    unauthenticated = await http.post(server.url + "/mcp", json=INIT, headers={**ACCEPT, "Origin": server.url})
    assert unauthenticated.status_code == 401
    assert "www-authenticate" in unauthenticated.headers["access-control-expose-headers"].lower()

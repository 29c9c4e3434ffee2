"""The 2024-11-05 HTTP+SSE transport, with the SDK's sse_client and OAuthClientProvider."""

from __future__ import annotations

import asyncio

import httpx2
from mcp import Client
from mcp.client.sse import sse_client

from tests.conftest import BACKENDS, OAuthUser, RunningServer
from tests.test_end_to_end import TOOL_NAMES, structured

# Every test here that takes `server` runs on SQLite and on Redis (tests/conftest.py).
SERVER_BACKENDS = BACKENDS


async def test_sse_client_logs_in_and_calls_tools(server: RunningServer) -> None:
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    provider = alice.provider("/sse")
    sessions: list[str] = []
    transport = sse_client(server.url + "/sse", auth=provider, on_session_created=sessions.append)
    async with Client(transport, mode="legacy") as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOL_NAMES
        await client.call_tool("create_entities", {"entities": [{"name": "via sse", "entityType": "t",
                                                                 "observations": []}]})
        graph = structured(await client.call_tool("read_graph", {}))
        assert [e["name"] for e in graph["entities"]] == ["via sse"]
        assert [s.kind for s in server.registry.sessions()] == ["sse"]

        # Bob's valid token on Alice's SSE session: 404, as for an unknown session.
        bob = OAuthUser(server.url, "bob", "bob-password-22")
        async with bob.client() as (b, _):
            await b.list_tools()
        assert bob.storage.tokens is not None and sessions
        async with httpx2.AsyncClient() as http:
            resp = await http.post(server.url + "/messages", params={"session_id": sessions[0].rsplit("=", 1)[-1]},
                                   json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                                   headers={"Authorization": f"Bearer {bob.storage.tokens.access_token}"})
            assert resp.status_code == 404
    for _ in range(50):
        if not any(s.kind == "sse" for s in server.registry.sessions()):
            break
        await asyncio.sleep(0.1)
    assert not any(s.kind == "sse" for s in server.registry.sessions())


async def test_sse_requires_a_token(server: RunningServer) -> None:
    async with httpx2.AsyncClient() as http:
        for method, path in (("GET", "/sse"), ("POST", "/sse"), ("POST", "/messages?session_id=abc")):
            resp = await http.request(method, server.url + path)
            assert resp.status_code == 401
            assert (f'resource_metadata="{server.url}/.well-known/oauth-protected-resource/sse"'
                    in resp.headers["www-authenticate"])

"""The whole path a user takes, with the mcp SDK's own client and OAuthClientProvider: discovery,
registration, login, consent, tokens, every memory tool, refresh, isolation, restart."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from mcp import Client

from tests.conftest import BACKENDS, OAuthUser, RunningServer, start_server

# Every test here that takes `server` runs on SQLite and on Redis (tests/conftest.py).
SERVER_BACKENDS = BACKENDS

TOOL_NAMES = {"create_entities", "create_relations", "add_observations", "delete_entities",
              "delete_observations", "delete_relations", "read_graph", "search_nodes", "open_nodes"}


def structured(result: Any) -> Any:
    assert not result.is_error, result.content
    text = json.loads(result.content[0].text)
    assert result.structured_content == text
    return text


async def every_tool(client: Client) -> None:
    """The nine tools, each checked, leaving Ada (no observations) in the graph."""
    assert {t.name for t in (await client.list_tools()).tools} == TOOL_NAMES
    made = structured(await client.call_tool("create_entities", {"entities": [
        {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]},
        {"name": "Analytical Engine", "entityType": "machine", "observations": []},
    ]}))
    assert [e["name"] for e in made["entities"]] == ["Ada", "Analytical Engine"]
    rel = {"from": "Ada", "to": "Analytical Engine", "relationType": "programmed"}
    assert structured(await client.call_tool("create_relations", {"relations": [rel]}))["relations"] == [rel]
    added = structured(await client.call_tool("add_observations", {"observations": [
        {"entityName": "Analytical Engine", "contents": ["designed by Babbage"]}]}))
    assert added["results"] == [{"entityName": "Analytical Engine", "addedObservations": ["designed by Babbage"]}]
    found = structured(await client.call_tool("search_nodes", {"query": "BABBAGE"}))
    assert [e["name"] for e in found["entities"]] == ["Analytical Engine"]
    assert found["relations"] == [rel]
    opened = structured(await client.call_tool("open_nodes", {"names": ["Ada", "nobody"]}))
    assert [e["name"] for e in opened["entities"]] == ["Ada"]
    structured(await client.call_tool("delete_observations", {"deletions": [
        {"entityName": "Ada", "observations": ["wrote the first program"]}]}))
    structured(await client.call_tool("delete_relations", {"relations": [rel]}))
    structured(await client.call_tool("delete_entities", {"entityNames": ["Analytical Engine"]}))
    graph = structured(await client.call_tool("read_graph", {}))
    assert graph == {"entities": [{"name": "Ada", "entityType": "person", "observations": []}], "relations": []}


async def test_login_and_every_tool(server: RunningServer) -> None:
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    async with alice.client() as (client, _oauth):
        assert all(t.annotations is not None for t in (await client.list_tools()).tools)
        await every_tool(client)

    # One login: discovery, registration, authorization and token exchange happened exactly once,
    # and the authorization request carried PKCE S256 and the resource of /mcp.
    assert len(alice.redirects) == 1
    assert "code_challenge_method=S256" in alice.redirects[0]
    assert "resource=" in alice.redirects[0]
    assert alice.storage.tokens is not None and alice.storage.tokens.refresh_token


async def test_refresh_keeps_the_session(server: RunningServer) -> None:
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    async with alice.client() as (client, oauth):
        await client.call_tool("create_entities", {"entities": [{"name": "x", "entityType": "t", "observations": []}]})
        [session] = server.registry.sessions()
        before = alice.storage.tokens
        assert before is not None
        oauth.context.token_expiry_time = 1.0  # the client now believes its token expired
        graph = structured(await client.call_tool("read_graph", {}))
        assert [e["name"] for e in graph["entities"]] == ["x"]
        after = alice.storage.tokens
        assert after is not None
        assert after.access_token != before.access_token and after.refresh_token != before.refresh_token
        assert [s.session_id for s in server.registry.sessions()] == [session.session_id]
    assert len(alice.redirects) == 1
    # The rotated refresh token only repeats the answer it already gave (a client that lost the
    # response retries within the grace window): the same new pair, nothing more.
    async with httpx2.AsyncClient() as http:
        info = alice.storage.client_info
        assert info is not None
        resp = await http.post(server.url + "/token", data={
            "grant_type": "refresh_token", "refresh_token": before.refresh_token, "client_id": info.client_id})
        assert resp.status_code == 200
        assert (resp.json()["access_token"], resp.json()["refresh_token"]) == (after.access_token,
                                                                               after.refresh_token)


async def test_users_are_isolated(server: RunningServer) -> None:
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    bob = OAuthUser(server.url, "bob", "bob-password-22")
    async with alice.client() as (a, _), bob.client() as (b, _):
        await a.call_tool("create_entities", {"entities": [{"name": "secret", "entityType": "note",
                                                              "observations": ["alice only"]}]})
        await b.call_tool("create_entities", {"entities": [{"name": "bobs", "entityType": "note",
                                                              "observations": []}]})
        assert structured(await b.call_tool("search_nodes", {"query": "alice"}))["entities"] == []
        assert structured(await b.call_tool("open_nodes", {"names": ["secret"]}))["entities"] == []
        await b.call_tool("delete_entities", {"entityNames": ["secret"]})
        assert [e["name"] for e in structured(await a.call_tool("read_graph", {}))["entities"]] == ["secret"]
        assert [e["name"] for e in structured(await b.call_tool("read_graph", {}))["entities"]] == ["bobs"]

        # Bob's valid token on Alice's session id: the same 404 as an unknown session.
        bob_user = await server.storage.get_user_by_name("bob")
        assert bob_user is not None
        alice_session = next(s for s in server.registry.sessions() if s.user != bob_user.id)
        assert bob.storage.tokens is not None
        headers = {"Authorization": f"Bearer {bob.storage.tokens.access_token}",
                   "Mcp-Session-Id": alice_session.session_id, "MCP-Protocol-Version": "2025-11-25",
                   "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx2.AsyncClient() as http:
            ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "read_graph", "arguments": {}}}
            stolen = await http.post(server.url + "/mcp", json=ping, headers=headers)
            unknown = await http.post(server.url + "/mcp", json=ping,
                                      headers={**headers, "Mcp-Session-Id": "no-such-session"})
            assert stolen.status_code == unknown.status_code == 404
            assert stolen.json() == unknown.json()
            deleted = await http.delete(server.url + "/mcp", headers=headers)
            assert deleted.status_code == 404
        # Alice's session survived the attempts.
        assert [e["name"] for e in structured(await a.call_tool("read_graph", {}))["entities"]] == ["secret"]


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # restarts on the same SQLite file
async def test_restart_keeps_tokens_sessions_and_memory(server: RunningServer) -> None:
    """A server restart is invisible to a connected client: same tokens, same MCP session, same graph."""
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    data_dir = server.sqlite.db.path.parent
    port = int(server.url.rsplit(":", 1)[1])
    async with alice.client() as (client, _):
        await client.call_tool("create_entities", {"entities": [
            {"name": "durable", "entityType": "fact", "observations": ["survives restarts"]}]})
        [before] = server.registry.sessions()
        await server.stop()

        restarted = await start_server(data_dir, port=port)
        try:
            graph = structured(await client.call_tool("read_graph", {}))
            assert graph["entities"] == [{"name": "durable", "entityType": "fact",
                                          "observations": ["survives restarts"]}]
            assert [s.session_id for s in restarted.registry.sessions()] == [before.session_id]
        finally:
            await restarted.stop()
    assert len(alice.redirects) == 1  # no second login: the old tokens still work


@pytest.mark.parametrize("mode,era", [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
async def test_each_protocol_era(server: RunningServer, mode: str, era: str) -> None:
    """Legacy mode opens a session (initialize); the SDK's default auto mode probes server/discover
    and ends on the stateless 2026-07-28 era, where no session exists and every request is
    authenticated on its own."""
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    async with alice.client(mode=mode) as (client, _):
        assert client.protocol_version == era
        assert {t.name for t in (await client.list_tools()).tools} == TOOL_NAMES
        await client.call_tool("create_entities", {"entities": [{"name": era, "entityType": "era",
                                                                 "observations": []}]})
        graph = structured(await client.call_tool("read_graph", {}))
        assert [e["name"] for e in graph["entities"]] == [era]
        assert len(server.registry) == (1 if mode == "legacy" else 0)

"""Resumable SSE streams (Streamable HTTP `Last-Event-ID`), one event store per session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from tests.conftest import RunningServer, access_token, start_server

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-11-25"  # priming events (and so resumption of POST streams) start with this version


def events(text: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in text.splitlines():
        if not line:
            if current:
                found.append(current)
            current = {}
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = current.get(key, "") + value.removeprefix(" ")
    if current:
        found.append(current)
    return found


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10) as client:
        yield client


async def session(http: httpx2.AsyncClient, server: RunningServer, token: str) -> dict[str, str]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    init = await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert init.status_code == 200
    headers.update({"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": VERSION})
    assert (await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202
    return headers


async def test_a_lost_response_is_replayed_to_its_session_only(http: httpx2.AsyncClient,
                                                               server: RunningServer) -> None:
    alice = await session(http, server, await access_token(server, "alice", "alice-password-1"))
    # tools/call and tools/list are answered as plain JSON (transports/direct.py); other requests
    # take the SDK transport's resumable SSE stream.
    posted = await http.post(server.url + "/mcp", headers=alice, json={"jsonrpc": "2.0", "id": 7, "method": "ping"})
    assert posted.headers["content-type"].startswith("text/event-stream")
    stream = events(posted.text)
    priming = stream[0]
    assert priming["id"] and not priming.get("data")  # the priming event: an id, no message

    # The client "lost" the response after the priming event: it resumes with GET + Last-Event-ID.
    async with http.stream("GET", server.url + "/mcp", headers={**alice, "Last-Event-ID": priming["id"]}) as resumed:
        assert resumed.status_code == 200
        text = ""
        async for chunk in resumed.aiter_text():
            text += chunk
            if '"id":7' in text.replace(" ", ""):
                break
    replayed = [e for e in events(text) if e.get("data")]
    assert replayed and '"id":7' in replayed[0]["data"].replace(" ", "")

    # Bob, in his own session, presents Alice's event id: nothing of hers comes back.
    bob = await session(http, server, await access_token(server, "bob", "bob-password-22"))
    async with http.stream("GET", server.url + "/mcp", headers={**bob, "Last-Event-ID": priming["id"]}) as other:
        text = ""
        async for chunk in other.aiter_text():
            text += chunk
            break
    assert '"id":7' not in text.replace(" ", "")
    assert all('"id":7' not in e.get("data", "").replace(" ", "") for e in events(text))


async def test_events_are_deleted_with_their_session(http: httpx2.AsyncClient, server: RunningServer) -> None:
    alice = await session(http, server, await access_token(server, "alice", "alice-password-1"))
    await http.post(server.url + "/mcp", headers=alice, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    sid = alice["Mcp-Session-Id"]
    count = server.storage.db.conn.execute("SELECT count(*) FROM mcp_events WHERE session_id = ?", (sid,))
    assert count.fetchone()[0] > 0
    assert (await http.delete(server.url + "/mcp", headers=alice)).status_code == 200
    # The SDK transport has sent its 200 when the server goes on to forget the session, and the
    # store's statements run on its threads: wait (bounded) for the handler to finish.
    for _ in range(500):
        count = server.storage.db.conn.execute("SELECT count(*) FROM mcp_events WHERE session_id = ?", (sid,))
        if count.fetchone()[0] == 0:
            break
        await asyncio.sleep(0.01)
    count = server.storage.db.conn.execute("SELECT count(*) FROM mcp_events WHERE session_id = ?", (sid,))
    assert count.fetchone()[0] == 0


async def test_a_session_survives_a_server_restart(http: httpx2.AsyncClient, server: RunningServer) -> None:
    """The session record and its event log are in storage: after a restart the same session id
    keeps working for its owner (no new handshake), replays what was sent before the restart,
    and stays invisible to everyone else."""
    alice = await session(http, server, await access_token(server, "alice", "alice-password-1"))
    bob_token = await access_token(server, "bob", "bob-password-22")
    posted = await http.post(server.url + "/mcp", headers=alice, json={"jsonrpc": "2.0", "id": 3, "method": "ping"})
    priming = events(posted.text)[0]["id"]
    data_dir, port = server.storage.db.path.parent, int(server.url.rsplit(":", 1)[1])
    await server.stop()

    restarted = await start_server(data_dir, port=port)
    try:
        assert len(restarted.registry) == 0
        stolen = await http.post(restarted.url + "/mcp", json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"},
                                 headers={**alice, "Authorization": f"Bearer {bob_token}"})
        assert stolen.status_code == 404 and len(restarted.registry) == 0

        listed = await http.post(restarted.url + "/mcp", headers=alice,
                                 json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
        assert listed.status_code == 200, listed.text
        assert [s.session_id for s in restarted.registry.sessions()] == [alice["Mcp-Session-Id"]]
        assert len(listed.json()["result"]["tools"]) == 9

        async with http.stream("GET", restarted.url + "/mcp", headers={**alice, "Last-Event-ID": priming}) as again:
            text = ""
            async for chunk in again.aiter_text():
                text += chunk
                if '"id":3' in text.replace(" ", ""):
                    break
        assert '"id":3' in text.replace(" ", "")
        assert (await http.delete(restarted.url + "/mcp", headers=alice)).status_code == 200
        # As in test_events_are_deleted_with_their_session: the 200 is sent before the record goes.
        for _ in range(500):
            if await restarted.storage.get_session(alice["Mcp-Session-Id"]) is None:
                break
            await asyncio.sleep(0.01)
        assert await restarted.storage.get_session(alice["Mcp-Session-Id"]) is None
    finally:
        await restarted.stop()

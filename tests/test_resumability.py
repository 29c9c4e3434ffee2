"""Resumable SSE streams (Streamable HTTP `Last-Event-ID`), one event store per session."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx2

from auth import accounts
from server.app import MCP_ENDPOINT
from tests.conftest import BACKENDS, RunningServer, access_token, start_server, tokens_by_hand
from transports.events import DELIVERED_KEPT_SECONDS

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
SERVER_BACKENDS = BACKENDS
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
    user = (await server.storage.get_user_by_name("alice")).id  # type: ignore[union-attr]
    assert await server.storage.event_bytes(sid) > 0
    assert (await http.delete(server.url + "/mcp", headers=alice)).status_code == 200
    # The SDK transport has sent its 200 when the server goes on to forget the session, and the
    # store's statements run on its threads: wait (bounded) for the handler to finish.
    for _ in range(500):
        if await server.storage.event_bytes(sid) == 0:
            break
        await asyncio.sleep(0.01)
    assert await server.storage.event_bytes(sid) == 0
    assert await server.storage.event_bytes(user=user) == 0


async def test_a_session_survives_a_server_restart(http: httpx2.AsyncClient, server: RunningServer) -> None:
    """The session record and its event log are in storage: after a restart the same session id
    keeps working for its owner (no new handshake), replays what was sent before the restart,
    and stays invisible to everyone else."""
    alice = await session(http, server, await access_token(server, "alice", "alice-password-1"))
    bob_token = await access_token(server, "bob", "bob-password-22")
    posted = await http.post(server.url + "/mcp", headers=alice, json={"jsonrpc": "2.0", "id": 3, "method": "ping"})
    priming = events(posted.text)[0]["id"]
    settings, port = server.settings, int(server.url.rsplit(":", 1)[1])
    await server.stop()

    restarted = await start_server(settings.data_dir, port=port, redis_url=settings.redis_url)
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


async def test_event_logs_are_bounded_per_session_and_per_user(http: httpx2.AsyncClient, tmp_path: Path,
                                                               store_settings: dict[str, Any]) -> None:
    """Defect 5: a read-only token reading a large graph again and again on the SDK path (SSE
    responses) cannot grow the event log past its bounds, whether it reads each response whole or
    drops each stream; what is left stays resumable, an evicted point replays nothing, and
    delivered streams go after their grace period."""
    per_session, per_user = 600_000, 900_000
    # No size cap of one result: each read_graph is the whole 100 kB graph.
    server = await start_server(tmp_path / "data", event_log_bytes_per_session=per_session,
                                event_log_bytes_per_user=per_user, memory_max_result_bytes=0, **store_settings)
    try:
        await accounts.add_user(server.storage, "alice", "alice-password-1")
        writer = (await tokens_by_hand(server, "alice", "alice-password-1", "memory:write"))["access_token"]
        reader = (await tokens_by_hand(server, "alice", "alice-password-1", "memory:read"))["access_token"]
        # The SDK transport answers every call (the direct path would answer in JSON, unstored).
        server.app[MCP_ENDPOINT].direct.methods = frozenset()
        writing = await session(http, server, writer)
        entities = [{"name": f"e{i}", "entityType": "t", "observations": ["x" * 2000]} for i in range(50)]
        created = await http.post(server.url + "/mcp", headers=writing, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "create_entities", "arguments": {"entities": entities}}})
        assert created.status_code == 200
        assert (await http.delete(server.url + "/mcp", headers=writing)).status_code == 200

        user = (await server.storage.get_user_by_name("alice")).id  # type: ignore[union-attr]
        sessions = [await session(http, server, reader) for _ in range(2)]

        async def stored() -> dict[str, int]:
            """What each session's events cost, as the bounds count it."""
            return {headers["Mcp-Session-Id"]: await server.storage.event_bytes(headers["Mcp-Session-Id"])
                    for headers in [writing, *sessions]}

        read = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "read_graph", "arguments": {}}}
        dropped: list[tuple[dict[str, str], str, int]] = []
        read_whole: list[tuple[str, str]] = []
        request_id = 10
        for _ in range(6):
            for headers in sessions:
                request_id += 1
                whole = await http.post(server.url + "/mcp", headers=headers, json={**read, "id": request_id})
                assert whole.status_code == 200 and len(whole.content) > 100_000
                read_whole.append((headers["Mcp-Session-Id"], events(whole.text)[0]["id"]))
                request_id += 1
                # A stream dropped after its priming event: the response is stored for resumption.
                async with http.stream("POST", server.url + "/mcp", headers=headers,
                                       json={**read, "id": request_id}) as stream:
                    text = ""
                    async for chunk in stream.aiter_text():
                        text += chunk
                        if text.endswith("\n"):
                            break
                dropped.append((headers, events(text)[0]["id"], request_id))
                sizes = await stored()
                assert all(size <= per_session for size in sizes.values()), sizes
                assert sum(sizes.values()) <= per_user, sizes
                assert await server.storage.event_bytes(user=user) <= per_user

        # The newest dropped stream is still there in full...
        headers, priming, last_id = dropped[-1]
        for _ in range(200):  # its response is stored as the tool call ends, after the client left
            found = await server.storage.events_after(headers["Mcp-Session-Id"], priming)
            if found is not None and any(message for _, message in found[1]):
                break
            await asyncio.sleep(0.05)
        async with http.stream("GET", server.url + "/mcp", headers={**headers, "Last-Event-ID": priming}) as again:
            text = ""
            async for chunk in again.aiter_text():
                text += chunk
                if f'"id":{last_id}' in text.replace(" ", "") and text.endswith("\n"):
                    break
        assert f'"id":{last_id}' in text.replace(" ", "") and '"entities"' in text
        # ...the first was evicted: resuming from it replays nothing, as for any unknown id.
        headers, priming, _ = dropped[0]
        async with http.stream("GET", server.url + "/mcp", headers={**headers, "Last-Event-ID": priming}) as gone:
            assert gone.status_code == 200
            assert not [e for e in events((await gone.aread()).decode()) if e.get("data")]

        # Streams read whole are deleted after their grace period; dropped ones stay (bounded).
        before = sum((await stored()).values())
        await server.registry.sweep(time.time() + DELIVERED_KEPT_SECONDS + 1)
        assert sum((await stored()).values()) < before
        for sid, priming in read_whole:  # no response of a stream read whole is left
            found = await server.storage.events_after(sid, priming)
            assert found is None or not [message for _, message in found[1] if message and '"entities"' in message]
    finally:
        await server.stop()

"""Session lifecycle over real HTTP: each transport ends only its own sessions, notifications for
a parked session get what the SDK would give them, and parking never loses work in progress."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from aiohttp import web
from mcp.server import Server, ServerRequestContext
from mcp.shared.message import ServerMessageMetadata

from auth import accounts
from server.app import build_app
from server.config import Settings
from tests.conftest import BACKENDS, RunningServer, access_token, free_socket, tokens_by_hand
from tests.test_resumability import events
from transports.registry import PARK_AFTER_SECONDS, SessionState

# Every test here that takes `server` runs on SQLite and on Redis (tests/conftest.py).
SERVER_BACKENDS = BACKENDS

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-11-25"


async def open_session(http: httpx2.AsyncClient, url: str, token: str, capabilities: dict[str, Any] | None = None
                       ) -> dict[str, str]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    init = await http.post(url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": VERSION, "capabilities": capabilities or {},
            "clientInfo": {"name": "t", "version": "1"}}})
    assert init.status_code == 200, init.text
    headers.update({"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": VERSION})
    return headers


async def test_a_streamable_http_delete_cannot_end_a_legacy_sse_session(http: httpx2.AsyncClient,
                                                                        server: RunningServer) -> None:
    """DELETE /mcp (and any other /mcp request) with the id of the same user's 2024-11-05 SSE
    session is answered as for an unknown id, and the SSE stream stays open."""
    token = await access_token(server, "alice", "alice-password-1")
    auth = {"Authorization": f"Bearer {token}"}
    async with http.stream("GET", server.url + "/sse", headers=auth) as stream:
        chunks = stream.aiter_text()
        text = ""
        while not ("session_id=" in text and text.endswith("\n")):
            text += await anext(chunks)
        session_id = text.split("session_id=", 1)[1].split()[0]
        for _ in range(100):  # the session is recorded just after the endpoint event went out
            if server.registry.sessions():
                break
            await asyncio.sleep(0.02)
        [sse] = server.registry.sessions()
        assert sse.session_id == session_id and sse.state is SessionState.SSE

        on_mcp = {**ACCEPT, **auth, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-06-18"}
        deleted = await http.delete(server.url + "/mcp", headers=on_mcp)
        assert deleted.status_code == 404 and "Session not found" in deleted.json()["error"]["message"]
        noted = await http.post(server.url + "/mcp", headers=on_mcp,
                                json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        called = await http.post(server.url + "/mcp", headers=on_mcp,
                                 json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert noted.status_code == 404 and called.status_code == 404
        assert server.registry.sessions() == [sse] and sse.state is SessionState.SSE

        # The stream still serves its session.
        posted = await http.post(server.url + "/messages", params={"session_id": session_id}, headers=auth,
                                 json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert posted.status_code == 202
        while '"id":2' not in text.replace(" ", ""):
            text += await anext(chunks)


class Custom:
    """An MCP server with what the memory tools lack: a notification handler, and a tool that asks
    the client something (a server-to-client ping on the request's own stream) before answering."""

    def __init__(self) -> None:
        self.notified: asyncio.Queue[str] = asyncio.Queue()

    def server(self) -> Server[Any]:
        async def list_tools(_ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
                             ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=[types.Tool(name="ask", input_schema={"type": "object"})])

        async def call_tool(ctx: ServerRequestContext[Any], _params: types.CallToolRequestParams
                            ) -> types.CallToolResult:
            await ctx.session.send_request(types.PingRequest(), types.EmptyResult,
                                           metadata=ServerMessageMetadata(related_request_id=ctx.request_id))
            return types.CallToolResult(content=[types.TextContent(type="text", text="the client answered")])

        async def roots_changed(_ctx: ServerRequestContext[Any], _params: types.NotificationParams) -> None:
            self.notified.put_nowait("notifications/roots/list_changed")

        server: Server[Any] = Server("custom", on_list_tools=list_tools, on_call_tool=call_tool)
        server.add_notification_handler("notifications/roots/list_changed", types.NotificationParams, roots_changed)
        return server


@pytest.fixture
async def custom(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Custom]]:
    sock = free_socket()
    options: dict[str, Any] = {"host": "127.0.0.1", "port": sock.getsockname()[1], "data_dir": tmp_path / "data"}
    settings = Settings(**options)
    handlers = Custom()
    app = await build_app(settings, mcp_server=handlers.server())
    runner = web.AppRunner(app, shutdown_timeout=2.0, handler_cancellation=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    running = RunningServer(settings.issuer, app, runner)
    await accounts.add_user(running.storage, "alice", "alice-password-1")
    yield running, handlers
    await running.stop()


async def test_notifications_for_a_parked_session_reach_the_servers_handlers(
        http: httpx2.AsyncClient, custom: tuple[RunningServer, Custom]) -> None:
    server, handlers = custom
    token = (await tokens_by_hand(server, "alice", "alice-password-1", "memory:read memory:write"))["access_token"]
    session = await open_session(http, server.url, token, {"roots": {"listChanged": True}})
    [parked] = server.registry.sessions()
    assert parked.state is SessionState.PARKED

    # No handler for it (the SDK only marks the connection initialized): acknowledged, and the
    # session stays parked.
    noted = await http.post(server.url + "/mcp", headers=session,
                            json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert noted.status_code == 202 and parked.state is SessionState.PARKED
    # Not a valid JSON-RPC message: the SDK's answer, not a 202.
    invalid = await http.post(server.url + "/mcp", headers=session, json={"method": "notifications/initialized"})
    assert invalid.status_code == 400
    await server.registry.park(parked)

    # A handler is registered: the notification reaches it, as it would without parking.
    changed = await http.post(server.url + "/mcp", headers=session,
                              json={"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
    assert changed.status_code == 202
    assert await asyncio.wait_for(handlers.notified.get(), 10) == "notifications/roots/list_changed"


async def test_parking_keeps_work_in_progress(http: httpx2.AsyncClient, custom: tuple[RunningServer, Custom]) -> None:
    """A tool call waiting for the client's answer to a server-to-client request, whose stream the
    client dropped, survives the sweeper: the client answers, resumes the stream and gets the result."""
    server, _ = custom
    token = (await tokens_by_hand(server, "alice", "alice-password-1", "memory:read memory:write"))["access_token"]
    session = await open_session(http, server.url, token)
    [state] = server.registry.sessions()
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask", "arguments": {}}}
    text = ""
    async with http.stream("POST", server.url + "/mcp", headers=session, json=call) as stream:
        async for chunk in stream.aiter_text():
            text += chunk
            if '"method":"ping"' in text.replace(" ", "") and text.endswith("\n"):
                break
    # The client went away with the server's ping unanswered; nothing is in flight over HTTP.
    priming = events(text)[0]["id"]
    ping = json.loads(next(e["data"] for e in events(text) if e.get("data")))
    for _ in range(100):
        if not state.in_flight:
            break
        await asyncio.sleep(0.02)
    assert state.in_flight == 0 and state.state is SessionState.ACTIVE
    await server.registry.park(state)
    await server.registry.sweep(time.time() + PARK_AFTER_SECONDS + 1)
    assert state.state is SessionState.ACTIVE and state.transport is not None

    answered = await http.post(server.url + "/mcp", headers=session,
                               json={"jsonrpc": "2.0", "id": ping["id"], "result": {}})
    assert answered.status_code == 202
    # The result goes to a stream nobody listens on, so it is only stored (on the store's writer
    # thread); resuming before that write lands would replay without it. A client that comes
    # back later, as this one does, finds it.
    def result_stored() -> bool:
        return bool(server.sqlite.db.conn.execute(
            "SELECT count(*) FROM mcp_events WHERE session_id = ? AND stream_id = '5' AND message LIKE '%\"result\"%'",
            (state.session_id,)).fetchone()[0] > 0)
    for _ in range(250):
        if result_stored():
            break
        await asyncio.sleep(0.02)
    async with http.stream("GET", server.url + "/mcp", headers={**session, "Last-Event-ID": priming}) as resumed:
        assert resumed.status_code == 200
        text = ""
        async for chunk in resumed.aiter_text():
            text += chunk
            if '"id":5' in text.replace(" ", ""):
                break
    assert "the client answered" in text

"""The direct path (transports/direct.py): what it does beyond answering as the SDK does (that is
tests/test_direct_differential.py), and the defects found in it: hostile ids and names, sessions
left by failed handshakes, a path chosen by the case of Accept, results shaped by the request's
version header, middleware that never saw a direct call."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest

from auth import accounts
from server.app import MCP_ENDPOINT
from tests.conftest import RunningServer, access_token, on_both_backends, start_server

# The tests about sessions and what is stored run on both backends; those about the wire (ids,
# names, Accept, middleware) on SQLite only: the store does not see what they test.

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CALLS: list[dict[str, Any]] = [
    {"method": "tools/list"},
    {"method": "tools/call", "params": {"name": "create_entities", "arguments": {"entities": [
        {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]},
        {"name": "Zoë \"Z\"", "entityType": "t\u00e9", "observations": ["a\\b\n\t\u2028 ✓ \U0001f600 </script>"]}]}}},
    {"method": "tools/call", "params": {"name": "create_relations", "arguments": {"relations": [
        {"from": "Ada", "to": "Zoë \"Z\"", "relationType": "knows"}]}}},
    {"method": "tools/call", "params": {"name": "search_nodes", "arguments": {"query": "program"}}},
    {"method": "tools/call", "params": {"name": "read_graph", "arguments": {}}},
    {"method": "tools/call", "params": {"name": "open_nodes", "arguments": {"names": ["Zoë \"Z\"", "nobody"]}}},
    {"method": "tools/call", "params": {"name": "add_observations", "arguments": {"observations": [
        {"entityName": "nobody", "contents": ["x"]}]}}},
    {"method": "tools/call", "params": {"name": "create_entities", "arguments": {"entities": [{"name": 5}]}}},
    {"method": "tools/call", "params": {"name": "no_such_tool", "arguments": {}}},
    {"method": "tools/call", "params": {"arguments": {}}},
    {"method": "tools/call", "params": {"name": "delete_entities", "arguments": {"entityNames": ["Ada", "Zoë \"Z\""]}}},
]


def last_message(resp: httpx2.Response) -> Any:
    if resp.headers["content-type"].startswith("text/event-stream"):
        # SSE lines end at CR, LF or CRLF only (str.splitlines would also split at U+2028).
        lines = re.split(r"\r\n|\r|\n", resp.text)
        data = [line[5:].strip() for line in lines if line.startswith("data:") and line[5:].strip()]
        return json.loads(data[-1])
    return resp.json()


async def initialize(http: httpx2.AsyncClient, server: RunningServer, token: str, version: str) -> dict[str, str]:
    """Open a session (initialize only); returns the headers for requests in it."""
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    init = await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    headers.update({"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": version})
    return headers


def transport_of(session: Any) -> Any:
    return session.transport  # read through a function: mypy would otherwise keep its first narrowing


@on_both_backends()
async def test_sessions_are_parked_until_a_request_needs_the_sdk_transport(http: httpx2.AsyncClient,
                                                                          server: RunningServer) -> None:
    """An idle session holds no SDK transport: tools/call is answered without one, anything else
    starts it again with the handshake already done, and parking it again loses nothing."""
    token = await access_token(server, "alice", "alice-password-1")
    headers = await initialize(http, server, token, "2025-11-25")
    [session] = server.registry.sessions()
    for _ in range(50):  # the handler parks the session just after the response has gone out
        if session.transport is None:
            break
        await asyncio.sleep(0.02)
    assert session.transport is None
    assert (await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202
    called = await http.post(server.url + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, **CALLS[1]})
    assert called.status_code == 200 and session.transport is None

    pinged = await http.post(server.url + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
    assert last_message(pinged) == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert transport_of(session) is not None
    for _ in range(50):  # the ping's handler finishes just after its response has gone out
        if not session.in_flight:
            break
        await asyncio.sleep(0.02)
    await server.registry.park(session)
    assert transport_of(session) is None and len(server.registry) == 1
    listed = await http.post(server.url + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 3, **CALLS[0]})
    assert len(last_message(listed)["result"]["tools"]) == 9
    again = await http.post(server.url + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 4, "method": "ping"})
    assert last_message(again)["id"] == 4
    assert (await http.delete(server.url + "/mcp", headers=headers)).status_code == 200
    assert len(server.registry) == 0


@on_both_backends("store_settings")
async def test_a_large_graph_is_answered_in_pieces_and_arrives_whole(http: httpx2.AsyncClient, data_dir: Path,
                                                                     store_settings: dict[str, Any]) -> None:
    """Above 256 KiB the direct path writes the graph's JSON as separate pieces (transports.direct
    ._PartsResponse); the client must still get one exact body of the announced length. (Without
    the size cap of one result, memory_max_result_bytes, which would page it.)"""
    server = await start_server(data_dir, memory_max_result_bytes=0, **store_settings)
    try:
        await accounts.add_user(server.storage, "alice", "alice-password-1")
        await _read_a_large_graph(http, server)
    finally:
        await server.stop()


async def _read_a_large_graph(http: httpx2.AsyncClient, server: RunningServer) -> None:
    token = await access_token(server, "alice", "alice-password-1")
    headers = await initialize(http, server, token, "2025-11-25")
    entities = [{"name": f"big {i:04d} \"q\"", "entityType": "t", "observations": [f"{i} ü \\ " + "x" * 1000]}
                for i in range(600)]
    for start in range(0, 600, 200):
        made = await http.post(server.url + "/mcp", headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "create_entities", "arguments": {"entities": entities[start:start + 200]}}})
        assert made.status_code == 200 and "error" not in made.json()
    resp = await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": "read", "method": "tools/call", "params": {"name": "read_graph", "arguments": {}}})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    assert int(resp.headers["content-length"]) == len(resp.content) > 2 * 256 * 1024
    body = json.loads(resp.content)
    assert body["id"] == "read"
    result = body["result"]
    assert result["structuredContent"]["entities"] == entities
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]


MODERN = "2026-07-28"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN,
               "io.modelcontextprotocol/clientInfo": {"name": "claude-code", "version": "2.1.332"},
               "io.modelcontextprotocol/clientCapabilities": {}}
HUGE_IDS = [2**63, -(2**63) - 1, 2**64, 2**70, -(10**30)]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.exc_info]


@pytest.mark.parametrize("request_id", HUGE_IDS)
async def test_an_id_beyond_64_bits_is_answered_in_every_era(http: httpx2.AsyncClient, server: RunningServer,
                                                             caplog: pytest.LogCaptureFixture,
                                                             request_id: int) -> None:
    """Defect 8: orjson stops at 64-bit integers, and the direct path answered such an id with a
    500 and two tracebacks, in a session and in the 2026-07-28 era; JSON has no such limit and the
    SDK answers it."""
    token = await access_token(server, "alice", "alice-password-1")
    headers = await initialize(http, server, token, "2025-11-25")
    for call in ({"method": "tools/list"},
                 {"method": "tools/call", "params": {"name": "read_graph", "arguments": {}}}):
        resp = await http.post(server.url + "/mcp", headers=headers,
                               content=json.dumps({"jsonrpc": "2.0", "id": request_id, **call}))
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/json", resp.text
        assert json.loads(resp.content)["id"] == request_id and "result" in resp.json()
    modern = {"Authorization": f"Bearer {token}", **ACCEPT, "MCP-Protocol-Version": MODERN,
              "Mcp-Method": "tools/call", "Mcp-Name": "open_nodes"}
    resp = await http.post(server.url + "/mcp", headers=modern, content=json.dumps({
        "jsonrpc": "2.0", "id": request_id, "method": "tools/call",
        "params": {"name": "open_nodes", "arguments": {"names": ["x"]}, "_meta": MODERN_META}}))
    assert resp.status_code == 200 and json.loads(resp.content)["id"] == request_id, resp.text
    opened = await http.post(server.url + "/mcp", headers={**ACCEPT, "Authorization": f"Bearer {token}"},
                             content=json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": {
                                 "protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "1"}}}))
    assert opened.status_code == 200 and json.loads(opened.content)["id"] == request_id
    assert tracebacks(caplog) == []


@pytest.mark.parametrize("where", ["id", "tool name", "argument", "initialize"])
@pytest.mark.parametrize("era", ["2025-11-25", MODERN])
async def test_a_lone_surrogate_is_refused_as_not_json(http: httpx2.AsyncClient, server: RunningServer,
                                                       caplog: pytest.LogCaptureFixture, where: str, era: str) -> None:
    """Defect 8: a lone surrogate (valid JSON escape, not valid Unicode: no storage, serialiser or
    header can carry it) gave a 500 with two tracebacks; it is now a parse error in every era, as
    the SDK's session transport already answered it, before any handler or session exists."""
    token = await access_token(server, "alice", "alice-password-1")
    if era == MODERN:
        headers = {"Authorization": f"Bearer {token}", **ACCEPT, "MCP-Protocol-Version": MODERN,
                   "Mcp-Method": "tools/call", "Mcp-Name": "open_nodes"}
        meta: dict[str, Any] = {"_meta": dict(MODERN_META)}
    else:
        headers = await initialize(http, server, token, era)
        meta = {}
    params = {"name": "open_nodes", "arguments": {"names": ["x"]}, **meta}
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    if where == "id":
        message["id"] = "\ud800"
    elif where == "tool name":
        params["name"] = "\udc00x"
    elif where == "argument":
        params["arguments"] = {"names": ["\ud83d"]}
    else:
        headers.pop("Mcp-Session-Id", None)
        message = {"jsonrpc": "2.0", "id": "\ud800", "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "\udfff", "version": "1"}}}
    before = len(server.registry)
    resp = await http.post(server.url + "/mcp", headers=headers, content=json.dumps(message))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == -32700
    assert len(server.registry) == before
    assert tracebacks(caplog) == []


@on_both_backends()
@pytest.mark.parametrize("direct", [True, False])
async def test_a_failed_initialize_leaves_no_session(http: httpx2.AsyncClient, server: RunningServer,
                                                    direct: bool) -> None:
    """Defect 8: a session was recorded (and counted against the user's cap) before its handshake
    was known to succeed: by the direct path before a failing answer, by the SDK path whenever the
    transport's status was 200, which it sends before its runner has answered."""
    token = await access_token(server, "alice", "alice-password-1")
    endpoint = server.app[MCP_ENDPOINT]
    if not direct:
        endpoint.direct.methods = frozenset()
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    for params in ({"protocolVersion": "2025-11-25", "capabilities": {}},  # no clientInfo
                   {"protocolVersion": 20251125, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
                   {"protocolVersion": "2025-11-25", "capabilities": [], "clientInfo": {"name": "t", "version": "1"}}):
        resp = await http.post(server.url + "/mcp", headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        assert resp.status_code == 200 and last_message(resp)["error"]["code"] == -32602, resp.text
        for _ in range(100):  # the SDK path forgets the session just after the answer has gone out
            if len(server.registry) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(server.registry) == 0, params
        assert await server.storage.list_sessions() == []
    opened = await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert "result" in last_message(opened) and len(server.registry) == 1


@on_both_backends("store_settings")
async def test_a_session_cap_is_counted_after_the_handshake(http: httpx2.AsyncClient, data_dir: Any,
                                                            store_settings: dict[str, Any]) -> None:
    """Failed handshakes do not use up a user's sessions: with a cap of 2, ten failed ones leave no
    session behind, and two good ones then open without ending any (a third one would end the
    least recently used idle one: the fair cap, tests/test_teardown.py)."""
    from auth import accounts
    from tests.conftest import start_server

    server = await start_server(data_dir, max_sessions_per_user=2, **store_settings)
    try:
        await accounts.add_user(server.storage, "alice", "alice-password-1")
        token = await access_token(server, "alice", "alice-password-1")
        await server.registry.close_where(lambda _s: True)
        headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
        good = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        for _ in range(10):
            failed = await http.post(server.url + "/mcp", headers=headers, json={
                "jsonrpc": "2.0", "id": 2**64, "method": "initialize", "params": {**good, "clientInfo": {}}})
            assert failed.status_code == 200 and "error" in failed.json()
        assert len(server.registry) == 0
        opened = [await http.post(server.url + "/mcp", headers=headers, json={
            "jsonrpc": "2.0", "id": 2**64, "method": "initialize", "params": good}) for _ in range(2)]
        assert [resp.status_code for resp in opened] == [200, 200]
        assert {s.session_id for s in server.registry.sessions()} == {r.headers["mcp-session-id"] for r in opened}
    finally:
        await server.stop()


@on_both_backends()
@pytest.mark.parametrize("accept", ["Application/JSON, Text/Event-Stream", "text/event-stream;q=0.5, APPLICATION/JSON",
                                    "*/*", "application/*, text/*"])
async def test_the_case_of_accept_does_not_choose_the_path(http: httpx2.AsyncClient, server: RunningServer,
                                                           accept: str) -> None:
    """Defect 5, its Accept part: `Application/JSON` sent read_graph down the SDK path, whose event
    log keeps every SSE response. One Accept rule, the SDK's (case-insensitive, wildcards), now
    chooses both whether a request is acceptable and which path answers it."""
    token = await access_token(server, "alice", "alice-password-1")
    headers = {**await initialize(http, server, token, "2025-11-25"), "Accept": accept}
    before = await server.storage.event_bytes(headers["Mcp-Session-Id"])
    for _ in range(3):
        resp = await http.post(server.url + "/mcp", headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_graph", "arguments": {}}})
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/json", resp.text
    assert await server.storage.event_bytes(headers["Mcp-Session-Id"]) == before


async def test_an_accept_the_sdk_refuses_is_refused_for_every_method(http: httpx2.AsyncClient,
                                                                     server: RunningServer) -> None:
    """The old direct path needed only JSON in Accept: tools/call was answered where ping got 406."""
    token = await access_token(server, "alice", "alice-password-1")
    headers = {**await initialize(http, server, token, "2025-11-25"), "Accept": "application/json"}
    for call in ({"method": "ping"}, {"method": "tools/list"},
                 {"method": "tools/call", "params": {"name": "read_graph", "arguments": {}}}):
        resp = await http.post(server.url + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, **call})
        assert resp.status_code == 406, (call, resp.text)


async def test_server_middleware_sees_every_direct_call(http: httpx2.AsyncClient, server: RunningServer) -> None:
    """`Server.middleware` (OpenTelemetry by default) wraps every request the SDK serves; the direct
    path used to call the handlers around it. And a request is served at the version its session
    negotiated, as the SDK's connection serves it, whatever its MCP-Protocol-Version header says
    (the direct path used the header; mcp 2.3 shapes the three handshake versions alike, so only
    the version handlers and middleware see showed it)."""
    seen: list[tuple[str, str, Any]] = []

    async def record(ctx: Any, call_next: Any) -> Any:
        seen.append((ctx.method, ctx.protocol_version, ctx.request_id))
        return await call_next(ctx)

    server.registry.server.middleware.append(record)
    token = await access_token(server, "alice", "alice-password-1")
    seen.clear()
    headers = {**await initialize(http, server, token, "2025-06-18"), "MCP-Protocol-Version": "2025-11-25"}
    calls: list[dict[str, Any]] = [{"method": "tools/list"},
                                   {"method": "tools/call", "params": {"name": "read_graph", "arguments": {}}}]
    for request_id, call in enumerate(calls, start=1):
        resp = await http.post(server.url + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": request_id, **call})
        assert resp.headers["content-type"] == "application/json"
    modern = {"Authorization": f"Bearer {token}", **ACCEPT, "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"}
    resp = await http.post(server.url + "/mcp", headers=modern, json={
        "jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": MODERN_META}})
    assert resp.status_code == 200
    assert seen == [("initialize", "2025-11-25", 0), ("tools/list", "2025-06-18", 1),
                    ("tools/call", "2025-06-18", 2), ("tools/list", MODERN, 3)]


async def test_a_failing_handler_is_answered_as_the_sdk_answers_it(http: httpx2.AsyncClient, data_dir: Any) -> None:
    """A result that fails its version's shape is the server's fault, -32603, where the direct path
    said -32602; a handler's exception is the session-era dispatcher's code 0. Both paths agree."""
    import mcp_types as types
    from aiohttp import web
    from mcp.server import Server

    from auth import accounts
    from server.app import build_app
    from server.config import Settings
    from tests.conftest import free_socket
    from transports.direct import DIRECT_METHODS

    async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="bad", input_schema={"type": "object"}),
                                            types.Tool(name="boom", input_schema={"type": "object"})])

    async def call_tool(_ctx: Any, params: types.CallToolRequestParams) -> Any:
        if params.name == "boom":
            raise RuntimeError("boom")
        return {"content": "not a list"}

    sock = free_socket()
    options: dict[str, Any] = {"host": "127.0.0.1", "port": sock.getsockname()[1], "data_dir": data_dir}
    settings = Settings(**options)
    app = await build_app(settings, mcp_server=Server("t", on_list_tools=list_tools, on_call_tool=call_tool))
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    server = RunningServer(settings.issuer, app, runner)
    try:
        await accounts.add_user(server.storage, "alice", "alice-password-1")
        token = await access_token(server, "alice", "alice-password-1")
        endpoint = server.app[MCP_ENDPOINT]
        answers: dict[str, list[Any]] = {}
        for path, methods in (("direct", DIRECT_METHODS), ("sdk", frozenset())):
            endpoint.direct.methods = methods
            headers = await initialize(http, server, token, "2025-11-25")
            answers[path] = []
            for name in ("bad", "boom"):
                resp = await http.post(server.url + "/mcp", headers=headers, json={
                    "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}})
                answers[path].append((resp.status_code, resp.headers["content-type"].split(";")[0],
                                      last_message(resp)))
        assert [a[1] for a in answers["direct"]] == ["application/json"] * 2  # the direct path did answer
        assert [(a[0], a[2]) for a in answers["direct"]] == [(a[0], a[2]) for a in answers["sdk"]]
        assert [a[2]["error"] for a in answers["direct"]] == [
            {"code": -32603, "message": "Handler returned an invalid result"}, {"code": 0, "message": "boom"}]
    finally:
        await server.stop()

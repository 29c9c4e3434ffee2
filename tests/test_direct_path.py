"""The direct path (transports/direct.py) answers tools/list and tools/call exactly as the SDK
transport would, for every handshake-era protocol version."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from server.app import MCP_ENDPOINT
from tests.conftest import RunningServer, access_token

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


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10) as client:
        yield client


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


async def run_calls(http: httpx2.AsyncClient, server: RunningServer, token: str, version: str) -> list[Any]:
    headers = await initialize(http, server, token, version)
    await http.post(server.url + "/mcp", headers=headers,
                    json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    answers = []
    for i, call in enumerate(CALLS, start=1):
        resp = await http.post(server.url + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": i, **call})
        assert resp.status_code == 200
        answers.append(last_message(resp))
    await http.delete(server.url + "/mcp", headers=headers)
    return answers


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18", "2025-11-25"])
async def test_direct_answers_equal_the_sdk_transports(http: httpx2.AsyncClient, server: RunningServer,
                                                       version: str) -> None:
    token = await access_token(server, "alice", "alice-password-1")
    endpoint = server.app[MCP_ENDPOINT]
    direct = await run_calls(http, server, token, version)
    saved, endpoint.direct = endpoint.direct, {}
    try:
        through_sdk = await run_calls(http, server, token, version)
    finally:
        endpoint.direct = saved
    assert direct == through_sdk
    assert direct[1]["result"]["structuredContent"]["entities"][0]["name"] == "Ada"
    assert [a.get("error", {}).get("code") for a in direct] == [
        None, None, None, None, None, None, None, None, -32602, -32602, None]
    graph = json.loads(direct[4]["result"]["content"][0]["text"])  # read_graph
    assert [e["name"] for e in graph["entities"]] == ["Ada", 'Zoë "Z"']
    assert graph["entities"][1]["observations"] == ["a\\b\n\t\u2028 ✓ \U0001f600 </script>"]
    assert direct[4]["result"]["structuredContent"] == graph


MODERN = "2026-07-28"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN,
               "io.modelcontextprotocol/clientInfo": {"name": "claude-code", "version": "2.1.332"},
               "io.modelcontextprotocol/clientCapabilities": {"roots": {}}}


async def run_modern_calls(http: httpx2.AsyncClient, server: RunningServer, token: str) -> list[Any]:
    """CALLS as a 2026-07-28 client sends them (Claude Code does), then requests the SDK refuses:
    (status, message, raw body) each."""
    requests: list[tuple[dict[str, Any], dict[str, str]]] = []
    for i, call in enumerate(CALLS, start=1):
        params = {**call.get("params", {}), "_meta": MODERN_META}
        headers = {"Mcp-Method": call["method"]}
        if call["method"] == "tools/call" and isinstance(params.get("name"), str):
            headers["Mcp-Name"] = params["name"]
        requests.append(({"jsonrpc": "2.0", "id": i, "method": call["method"], "params": params}, headers))
    read_graph = {"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                  "params": {"name": "read_graph", "arguments": {}, "_meta": MODERN_META}}
    requests += [
        (read_graph, {"Mcp-Method": "tools/call", "Mcp-Name": "open_nodes"}),  # header mismatch
        (read_graph, {"Mcp-Method": "tools/call", "Mcp-Name": "read_graph", "Mcp-Param-X": "1"}),
        ({**read_graph, "params": {"name": "read_graph", "arguments": {}}}, {"Mcp-Method": "tools/call",
                                                                              "Mcp-Name": "read_graph"}),
        ({**read_graph, "params": {"name": "read_graph", "arguments": {}, "_meta": {
            **MODERN_META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}}},
         {"Mcp-Method": "tools/call", "Mcp-Name": "read_graph"}),
        ({**read_graph, "params": {"name": "read_graph", "arguments": "x", "_meta": MODERN_META}},
         {"Mcp-Method": "tools/call", "Mcp-Name": "read_graph"}),
    ]
    answers = []
    for message, extra in requests:
        resp = await http.post(server.url + "/mcp", json=message, headers={
            **ACCEPT, "Authorization": f"Bearer {token}", "MCP-Protocol-Version": MODERN, **extra})
        answers.append((resp.status_code, last_message(resp), resp.content))
    return answers


async def test_direct_answers_equal_the_sdk_in_the_stateless_era(http: httpx2.AsyncClient,
                                                                  server: RunningServer) -> None:
    """2026-07-28 requests (no session) answered on the direct path give the SDK's modern answers:
    same status, same message, for results, tool errors and every refusal of the SDK's ladder."""
    token = await access_token(server, "alice", "alice-password-1")
    endpoint = server.app[MCP_ENDPOINT]
    direct = await run_modern_calls(http, server, token)
    saved, endpoint.direct = endpoint.direct, {}
    try:
        through_sdk = await run_modern_calls(http, server, token)
    finally:
        endpoint.direct = saved
    assert [(status, message) for status, message, _ in direct] == [
        (status, message) for status, message, _ in through_sdk]
    assert direct[1][1]["result"]["structuredContent"]["entities"][0]["name"] == "Ada"
    assert direct[1][1]["result"]["resultType"] == "complete"
    assert direct[1][1]["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "memory-mcp"
    # Mismatched Mcp-Name, an undeclared Mcp-Param header (accepted), no envelope, an envelope
    # version the header contradicts, arguments that are not an object.
    assert [status for status, _, _ in direct[-5:]] == [400, 200, 400, 400, 400]
    codes = [m.get("error", {}).get("code") for _, m, _ in direct[-5:]]
    assert codes == [-32020, None, -32602, -32020, -32602], codes
    # The direct path did answer: the SDK writes JSON with ASCII escapes, this path raw UTF-8.
    assert "Zoë".encode() in direct[4][2] and "Zoë".encode() not in through_sdk[4][2]
    # Mcp-Param-* headers are the SDK's to check, against tool schemas; ours declare none.
    tools = direct[0][1]["result"]["tools"]
    assert len(tools) == 9 and "x-mcp-header" not in json.dumps(tools)


INITIALIZE_PARAMS: list[dict[str, Any]] = [
    *({"protocolVersion": v, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
      for v in ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "1999-01-01", "2026-07-28")),
    {"protocolVersion": "2025-11-25", "_meta": {"progressToken": 7},
     "capabilities": {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {"form": {}},
                      "x-custom": {"a": 1}},
     "clientInfo": {"name": "codex-mcp-client", "title": "Codex", "version": "0.171.0", "websiteUrl": "https://x.test"}},
    # Refused ones: the SDK answers them in both runs (the direct path declines).
    {"protocolVersion": "2025-11-25", "capabilities": {}},
    {"protocolVersion": 20251125, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
]


async def test_direct_initialize_equals_the_sdk(http: httpx2.AsyncClient, server: RunningServer) -> None:
    """`initialize` answered without the SDK transport gives the SDK's own answer, for every
    version (known, unknown, modern) and for rich and invalid params; headers the SDK refuses
    still reach the SDK."""
    token = await access_token(server, "alice", "alice-password-1")
    endpoint = server.app[MCP_ENDPOINT]
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}

    async def opening(params: dict[str, Any], extra: dict[str, str] | None = None) -> tuple[int, Any, bool]:
        resp = await http.post(server.url + "/mcp", headers={**headers, **(extra or {})}, json={
            "jsonrpc": "2.0", "id": "init-1", "method": "initialize", "params": params})
        session_id = resp.headers.get("mcp-session-id")
        if session_id:
            await http.delete(server.url + "/mcp", headers={**headers, "Mcp-Session-Id": session_id})
        answer = last_message(resp) if resp.status_code == 200 else resp.text
        return resp.status_code, answer, session_id is not None

    cases = [(params, None) for params in INITIALIZE_PARAMS] + [
        (INITIALIZE_PARAMS[3], {"Accept": "application/json"}),
        (INITIALIZE_PARAMS[3], {"Accept": "*/*"}),
        (INITIALIZE_PARAMS[3], {"Content-Type": "text/plain"}),
    ]
    saved = endpoint.direct_initialize
    for params, extra in cases:
        direct = await opening(params, extra)
        endpoint.direct_initialize = None
        try:
            through_sdk = await opening(params, extra)
        finally:
            endpoint.direct_initialize = saved
        assert direct == through_sdk, (params, extra)
    assert len(server.registry) == 0
    # The direct answers are the real thing: the negotiated versions, the server's identity.
    status, answer, opened = await opening(INITIALIZE_PARAMS[0])
    assert status == 200 and opened and answer["result"]["protocolVersion"] == "2024-11-05"
    assert answer["result"]["serverInfo"]["name"] == "memory-mcp" and answer["result"]["instructions"]
    assert (await opening(INITIALIZE_PARAMS[4]))[1]["result"]["protocolVersion"] == "2025-11-25"
    assert (await opening({**INITIALIZE_PARAMS[0], "capabilities": {}}, {"Accept": "text/plain"}))[0] == 406
    # And it was this path that answered: JSON and no SDK transport, where the SDK answers in SSE.
    opened_direct = await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE_PARAMS[3]})
    assert opened_direct.headers["content-type"] == "application/json"
    [session] = server.registry.sessions()
    assert session.transport is None and session.protocol_version == "2025-11-25"
    assert session.client_params is not None and session.client_params.client_info.name == "t"


def transport_of(session: Any) -> Any:
    return session.transport  # read through a function: mypy would otherwise keep its first narrowing


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


async def test_a_large_graph_is_answered_in_pieces_and_arrives_whole(http: httpx2.AsyncClient,
                                                                     server: RunningServer) -> None:
    """Above 256 KiB the direct path writes the graph's JSON as separate pieces (transports.direct
    ._PartsResponse); the client must still get one exact body of the announced length."""
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

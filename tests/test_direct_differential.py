"""The direct path answers as the SDK does: a property-based differential test.

Hypothesis generates requests (every method the direct path takes and some it does not, each of
the nine tools with valid and invalid arguments, notifications; ids of every JSON type, integers
beyond 64 bits and lone surrogates included; Accept in any case, order, q-value and wildcard,
Content-Type, MCP-Protocol-Version present, absent, unknown or mismatched; the 2026-07-28 headers
and envelope, sometimes wrong) in each era (the three session eras, with the session fresh, parked
or active; and 2026-07-28, stateless). Each goes to one server twice: once with the direct path
on (alice), once with it off (bob), so that the SDK transport answers. Both users' graphs receive
the same requests in the same order, so they stay equal.

Compared: the status, the headers that say something (content type family, Allow, Retry-After,
whether the answer names the session), and the JSON-RPC message. Normalised, because the SDK lets
them differ: an answer in one JSON body against the same message in an SSE stream (the SDK writes
JSON in JSON-response mode), and for `initialize` the session header, since the SDK transport
sends it before it knows whether the handshake succeeds; what is compared there is whether a
session exists afterwards, which must be exactly when the handshake succeeded.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth import accounts
from server.app import MCP_ENDPOINT
from server.memory import paging
from tests.conftest import RunningServer, access_token, start_server
from transports.direct import DIRECT_METHODS

SESSION_ERAS = ("2025-03-26", "2025-06-18", "2025-11-25")
MODERN = "2026-07-28"
EXAMPLES = int(os.environ.get("DIFFERENTIAL_EXAMPLES", "300"))

NAMES = st.sampled_from(["Ada", "Bob", 'Zoë "Z"', "a\u2028b", "x y", "Ünï", "", "n\u0000ul", "😀"])
TEXTS = st.one_of(NAMES, st.text(max_size=12))
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6))
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3)),
    max_leaves=6)


def items(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, min_size=0, max_size=3)


ENTITY = st.fixed_dictionaries({"name": NAMES, "entityType": NAMES, "observations": items(TEXTS)})
RELATION = st.fixed_dictionaries({"from": NAMES, "to": NAMES, "relationType": NAMES})
VALID_ARGUMENTS: dict[str, st.SearchStrategy[Any]] = {
    "create_entities": st.fixed_dictionaries({"entities": items(ENTITY)}),
    "create_relations": st.fixed_dictionaries({"relations": items(RELATION)}),
    "add_observations": st.fixed_dictionaries({"observations": items(st.fixed_dictionaries(
        {"entityName": NAMES, "contents": items(TEXTS)}))}),
    "delete_entities": st.fixed_dictionaries({"entityNames": items(NAMES)}),
    "delete_observations": st.fixed_dictionaries({"deletions": items(st.fixed_dictionaries(
        {"entityName": NAMES, "observations": items(TEXTS)}))}),
    "delete_relations": st.fixed_dictionaries({"relations": items(RELATION)}),
    "read_graph": st.just({}),
    "search_nodes": st.fixed_dictionaries({"query": TEXTS}),
    "open_nodes": st.fixed_dictionaries({"names": items(NAMES)}),
}
QUERY_TOOLS = ("read_graph", "search_nodes", "open_nodes")


@st.composite
def paged(draw: st.DrawFn, tool: str) -> Any:
    """A query's arguments, often with a limit (valid or not) and a cursor: one of this call's own
    (at any entity id), another call's or tool's, or text."""
    arguments = dict(draw(UNPAGED[tool]))
    if draw(st.integers(0, 2)):
        arguments["limit"] = draw(st.one_of(st.integers(1, 2), st.integers(1, 2), st.sampled_from(
            [0, 1001, None, "2", 1.5, True])))
    if draw(st.integers(0, 2)):
        own = {"read_graph": paging.digest(), "search_nodes": paging.digest(arguments.get("query", "")),
               "open_nodes": paging.names_digest(arguments.get("names", []))}[tool]
        arguments["cursor"] = draw(st.one_of(
            st.builds(lambda k: paging.encode(tool, (k,), own), st.integers(0, 400)),
            st.builds(lambda k: paging.encode(tool, (k,), own), st.integers(0, 400)),
            st.builds(lambda other, k: paging.encode(other, (k,), ""), st.sampled_from(QUERY_TOOLS), st.integers(0, 9)),
            st.text(max_size=6), st.none()))
    return arguments


UNPAGED = {tool: VALID_ARGUMENTS[tool] for tool in QUERY_TOOLS}
VALID_ARGUMENTS |= {tool: st.one_of(UNPAGED[tool], paged(tool), paged(tool)) for tool in QUERY_TOOLS}


@st.composite
def tool_call_params(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(sorted(VALID_ARGUMENTS)))
    arguments = draw(st.one_of(
        VALID_ARGUMENTS[name], VALID_ARGUMENTS[name], VALID_ARGUMENTS[name],
        st.dictionaries(st.sampled_from(["entities", "names", "query", "x"]), JSON_VALUES, max_size=2),
        JSON_VALUES))
    params: dict[str, Any] = {"name": draw(st.one_of(st.just(name), st.just(name), st.just(name),
                                                     st.sampled_from(["no_such_tool", "\ud800", 5, ""])))}
    if draw(st.integers(0, 9)):
        params["arguments"] = arguments
    if not draw(st.integers(0, 9)):
        params["_meta"] = draw(st.sampled_from([{"progressToken": 7}, {"progressToken": True}, "x"]))
    return draw(st.one_of(st.just(params), st.just(params), st.just(params), st.just(params), JSON_VALUES))


INITIALIZE_PARAMS = st.one_of(
    st.fixed_dictionaries({
        "protocolVersion": st.sampled_from([*SESSION_ERAS, "2024-11-05", MODERN, "1999-01-01", "x"]),
        "capabilities": st.sampled_from([{}, {"roots": {"listChanged": True}}, {"sampling": {}}, {"x-custom": 1}]),
        "clientInfo": st.sampled_from([{"name": "t", "version": "1"}, {"name": "c", "title": "C", "version": "0"},
                                       {"name": 5}, {}]),
    }, optional={"_meta": st.sampled_from([{"progressToken": 1}, {}])}),
    JSON_VALUES,
)

REQUEST_METHODS: dict[str, st.SearchStrategy[Any]] = {
    "tools/call": tool_call_params(),
    "tools/list": st.one_of(st.none(), st.just({}), st.fixed_dictionaries({"cursor": st.one_of(st.text(max_size=3),
                                                                                                JSON_SCALARS)})),
    "ping": st.one_of(st.none(), st.just({})),
    "resources/list": st.none(),
    "no/such/method": st.one_of(st.none(), JSON_VALUES),
}
NOTIFICATIONS = st.sampled_from([
    ("notifications/initialized", None), ("notifications/cancelled", {"requestId": 1}),
    ("notifications/roots/list_changed", {}), ("notifications/unknown", {"x": 1}),
])
IDS = st.one_of(st.integers(0, 1000), st.integers(-(2**70), 2**70), st.text(max_size=8), st.booleans(), st.none(),
                st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["\ud800", "a\udc00", "\ud83d"]))
MEDIA_TYPES = ["application/json", "text/event-stream", "application/*", "text/*", "*/*", "text/plain",
               "application/xml"]


@st.composite
def accept_headers(draw: st.DrawFn) -> str | None:
    if not draw(st.integers(0, 15)):
        return None
    chosen = draw(st.lists(st.sampled_from(MEDIA_TYPES), min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 2)):  # mostly what clients send, in some order
        chosen = draw(st.permutations(["application/json", "text/event-stream", *chosen[1:]]))
    parts = []
    for media in chosen:
        cased = "".join(c.upper() if draw(st.booleans()) else c for c in media) if not draw(st.integers(0, 2)) \
            else media
        q = draw(st.sampled_from(["", "", ";q=0.9", "; q=0", ";level=1"]))
        parts.append(cased + q)
    return draw(st.sampled_from([", ", ","])).join(parts)


@dataclass(frozen=True)
class Case:
    era: str
    state: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    method: Any
    is_initialize: bool


@st.composite
def cases(draw: st.DrawFn) -> Case:
    era = draw(st.sampled_from([*SESSION_ERAS, MODERN]))
    state = draw(st.sampled_from(["fresh", "parked", "active"]))
    kind = draw(st.sampled_from(["request"] * 6 + ["initialize", "notification"]))
    message: dict[str, Any] = {"jsonrpc": draw(st.sampled_from(["2.0"] * 12 + ["1.0"]))}
    method: str
    params: Any
    if kind == "notification":
        method, params = draw(NOTIFICATIONS)
    elif kind == "initialize":
        method, params = "initialize", draw(INITIALIZE_PARAMS)
        message["id"] = draw(IDS)
    else:
        method = draw(st.sampled_from([*["tools/call"] * 5, *REQUEST_METHODS]))
        params = draw(REQUEST_METHODS[method])
        message["id"] = draw(IDS)
    message["method"] = method
    headers: list[tuple[str, str]] = []
    if era == MODERN and kind != "initialize":
        envelope: dict[str, Any] = {
            "io.modelcontextprotocol/protocolVersion": draw(st.sampled_from([MODERN] * 8 + ["2025-11-25"])),
                    "io.modelcontextprotocol/clientCapabilities": {}}
        if draw(st.booleans()):
            envelope["io.modelcontextprotocol/clientInfo"] = {"name": "claude-code", "version": "2.1.332"}
        if isinstance(params, dict) and draw(st.integers(0, 9)):
            params = {**params, "_meta": envelope}
        elif params is None and draw(st.integers(0, 9)):
            params = {"_meta": envelope}
        headers.append(("Mcp-Method", draw(st.sampled_from([method] * 8 + ["tools/list"]))))
        if draw(st.integers(0, 15)) == 0:
            headers.append(("mcp-method", method))  # duplicated routing header
        name = params.get("name") if isinstance(params, dict) else None
        if isinstance(name, str) and name.isascii() and draw(st.integers(0, 9)):
            headers.append(("Mcp-Name", name))
        if draw(st.integers(0, 9)) == 0:
            headers.append(("Mcp-Param-Query", "x"))
        version = draw(st.sampled_from([MODERN] * 12 + [None]))
    else:
        version = draw(st.sampled_from([era, era, None, "2099-01-01",
                                        *[v for v in SESSION_ERAS if v != era]]))
    if params is not None or draw(st.booleans()):
        message["params"] = params
    if not draw(st.integers(0, 19)):
        message["extra"] = 1
    if version is not None:
        headers.append(("MCP-Protocol-Version", version))
    accept = draw(accept_headers())
    if accept is not None:
        headers.append(("Accept", accept))
    headers.append(("Content-Type", draw(st.sampled_from(
        ["application/json"] * 12 + ["application/json; charset=utf-8", "Application/JSON",
                                     "application/json, text/plain", "text/plain"]))))
    # json.dumps escapes lone surrogates as \\udXXX: the body is what a hostile client can send.
    body = json.dumps(message).encode()
    return Case(era, state, body, tuple(headers), method, kind == "initialize")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    message: Any
    sessions_opened: int


def last_message(content_type: str, content: bytes) -> Any:
    if content_type.startswith("text/event-stream"):
        lines = re.split(r"\r\n|\r|\n", content.decode())
        data = [line[5:].strip() for line in lines if line.startswith("data:") and line[5:].strip()]
        return json.loads(data[-1]) if data else None
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode(errors="replace")


def reads_only(case: Case) -> bool:
    try:
        message = json.loads(case.body)
    except ValueError:
        return False
    params = message.get("params") if isinstance(message, dict) else None
    return case.method == "tools/call" and isinstance(params, dict) and params.get("name") in QUERY_TOOLS


class Harness:
    def __init__(self, server: RunningServer, http: httpx2.AsyncClient, tokens: dict[str, str]) -> None:
        self.server = server
        self.http = http
        self.tokens = tokens
        self.endpoint = server.app[MCP_ENDPOINT]
        self.subjects: dict[str, str] = {}
        self.direct_answers = 0
        """Answers in one JSON body to a request in a session: the SDK transport writes SSE there."""

    @classmethod
    async def start(cls, data_dir: Path) -> Harness:
        server = await start_server(data_dir)
        await accounts.add_user(server.storage, "alice", "alice-password-1")
        await accounts.add_user(server.storage, "bob", "bob-password-22")
        tokens = {"alice": await access_token(server, "alice", "alice-password-1"),
                  "bob": await access_token(server, "bob", "bob-password-22")}
        harness = cls(server, httpx2.AsyncClient(timeout=20), tokens)
        for user in tokens:  # sessions name their user by its subject
            session_id = await harness.open(user, "2025-11-25", "fresh")
            [session] = [s for s in server.registry.sessions() if s.session_id == session_id]
            harness.subjects[user] = session.user
            await server.registry.forget(session)
        return harness

    async def stop(self) -> None:
        await self.http.aclose()
        await self.server.stop()

    def sessions_of(self, user: str) -> list[Any]:
        return [s for s in self.server.registry.sessions() if s.user == self.subjects[user]]

    async def post(self, user: str, headers: Sequence[tuple[str, str]], body: bytes) -> httpx2.Response:
        return await self.http.post(self.server.url + "/mcp", content=body,
                                    headers=[("Authorization", f"Bearer {self.tokens[user]}"), *headers])

    async def open(self, user: str, era: str, state: str) -> str:
        base = [("Accept", "application/json, text/event-stream"), ("Content-Type", "application/json")]
        init = await self.post(user, base, json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": era, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).encode())
        assert init.status_code == 200, init.text
        session_id = init.headers["mcp-session-id"]
        headers = [*base, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", era)]
        if state == "fresh":
            return session_id
        note = await self.post(user, headers, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        assert note.status_code == 202
        pinged = await self.post(user, headers, b'{"jsonrpc":"2.0","id":"state","method":"ping"}')
        assert pinged.status_code == 200
        [session] = [s for s in self.server.registry.sessions() if s.session_id == session_id]
        if state == "parked":
            for _ in range(100):  # the ping's handler finishes just after its response has gone out
                if not session.in_flight:
                    break
                await asyncio.sleep(0.01)
            await self.server.registry.park(session)
            assert session.transport is None
        else:
            assert session.transport is not None
        return session_id

    async def ask(self, user: str, case: Case) -> Answer:
        for session in self.sessions_of(user):
            await self.server.registry.forget(session)
        headers = list(case.headers)
        session_id = None
        if case.era != MODERN and not case.is_initialize:
            session_id = await self.open(user, case.era, case.state)
            headers.append(("Mcp-Session-Id", session_id))
        resp = await self.post(user, headers, case.body)
        content_type = resp.headers.get("content-type", "")
        family = "json-rpc" if resp.status_code == 200 and content_type.startswith(
            ("application/json", "text/event-stream")) else content_type.split(";")[0]
        kept = {"content-type": family}
        for name in ("allow", "retry-after", "www-authenticate"):
            if name in resp.headers:
                kept[name] = resp.headers[name]
        if not case.is_initialize:
            named = resp.headers.get("mcp-session-id")
            kept["session"] = "none" if named is None else "same" if named == session_id else named
        if user == "alice" and session_id is not None and resp.status_code == 200 \
                and content_type.startswith("application/json"):
            self.direct_answers += 1
        message = last_message(content_type, resp.content)
        if case.is_initialize:
            # The SDK path forgets a session whose handshake failed just after the answer has gone out.
            succeeded = int(isinstance(message, dict) and "result" in message)
            for _ in range(100):
                if len(self.sessions_of(user)) == succeeded:
                    break
                await asyncio.sleep(0.01)
        return Answer(resp.status_code, kept, message, len(self.sessions_of(user)))

    async def compare(self, case: Case) -> None:
        self.endpoint.direct.methods = DIRECT_METHODS
        direct = await self.ask("alice", case)
        self.endpoint.direct.methods = frozenset()
        try:
            # A query changes nothing: alice asks it on both paths, since cursors name entity ids,
            # which are not the same in two users' graphs (SQLite numbers every owner's rows alike).
            through_sdk = await self.ask("alice" if reads_only(case) else "bob", case)
        finally:
            self.endpoint.direct.methods = DIRECT_METHODS
        assert direct == through_sdk, (case, direct, through_sdk)
        if case.is_initialize:
            succeeded = isinstance(direct.message, dict) and "result" in direct.message
            assert direct.sessions_opened == int(succeeded), (case, direct)


def test_the_direct_path_answers_every_request_as_the_sdk(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    harness = loop.run_until_complete(Harness.start(tmp_path / "data"))
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases())
    def check(case: Case) -> None:
        loop.run_until_complete(harness.compare(case))
        seen[case.era] = seen.get(case.era, 0) + 1

    try:
        check()
    finally:
        loop.run_until_complete(harness.stop())
        pending = asyncio.all_tasks(loop)  # sse-starlette's shutdown watcher outlives its streams
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
    # Every era was exercised, and the direct path did answer (not merely declined everything).
    assert set(seen) == {*SESSION_ERAS, MODERN} and sum(seen.values()) >= EXAMPLES, seen
    assert harness.direct_answers >= EXAMPLES // 25, harness.direct_answers

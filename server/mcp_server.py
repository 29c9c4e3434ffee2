"""The MCP server object: the memory tools, and the memory as a resource, served to whoever the
transports say is calling.

The resource, as the official server-memory offers it: one resource, `memory://knowledge-graph`,
whose content is the caller's graph as JSON (the read_graph tool's JSON). In the session eras
(2024-11-05 to 2025-11-25) it is subscribable: `resources/subscribe` records the subscription in
the session's record (any process may hold the session's stream), and server/resources.py sends
`notifications/resources/updated` on every change of the graph. The 2026-07-28 era has no
`resources/subscribe` (its subscriptions are `subscriptions/listen` streams, not served here), so
the SDK advertises `subscribe: false` to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import mcp_types as types
from aiohttp import web
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST

from auth.models import AccessGrant, Principal
from auth.rfc6750 import BearerVerifier
from auth.settings import READ_SCOPE, WRITE_SCOPE
from server.memory.graph import DEFAULT_QUOTA, GraphStore, Origin, Quota
from server.memory.paging import DEFAULT_MAX_RESULT_BYTES
from server.memory.tools import TOOL_SCOPES, TOOLS, GraphResult, call_tool
from transports.caller import Caller, GuardMessage, current_caller, current_session
from transports.direct import prepared

INSTRUCTIONS = (
    "A persistent knowledge-graph memory that belongs to the signed-in user. Store people, projects and facts "
    "as entities with observations, link them with relations in active voice, and search before creating "
    "duplicates."
)


GRAPH_URI = "memory://knowledge-graph"
GRAPH_RESOURCE = types.Resource(
    uri=GRAPH_URI, name="knowledge-graph", title="Knowledge graph", mime_type="application/json",
    description="The whole knowledge graph of this memory (entities with their observations, and relations), as "
    "JSON: what the read_graph tool returns. Subscribe to hear when it changes.")
RESOURCE_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
"""The resource requests that read the graph, and so need the read scope (listing does not)."""


class Subscriptions(Protocol):
    """Where a session's resource subscriptions are kept (the session registry)."""

    async def subscribe(self, session_id: str, uri: str, subscribed: bool) -> bool: ...


def _version() -> str:
    try:
        return version("memory-mcp")
    except PackageNotFoundError:
        return "0"


class MemoryTools:
    """The memory tools as the MCP server's request handlers (`server()`). The transports' direct
    path runs the same server, through the SDK's own runner."""

    def __init__(self, graph: GraphStore, quota: Quota = DEFAULT_QUOTA,
                 max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> None:
        self.graph = graph
        self.quota = quota
        self.max_result_bytes = max_result_bytes
        self.subscriptions: Subscriptions | None = None
        """Set by whoever serves sessions; without it `resources/subscribe` is refused."""
        self.nudge = asyncio.Event()
        """Set after every successful write tool call and every subscription: the change feed
        looks at once (server/memory/changes.py), rather than at its next poll."""

    async def list_tools(self) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call(self, params: types.CallToolRequestParams) -> types.CallToolResult | GraphResult:
        caller = current_caller.get()
        needed = TOOL_SCOPES.get(params.name)
        # The HTTP layer already answered 403 for this (`scope_guard`); this check keeps a tool from
        # ever running on a grant that lacks its scope, whatever path the message took.
        if needed is not None and needed not in caller.scopes:
            return types.CallToolResult(is_error=True, content=[types.TextContent(
                type="text", text=f"{params.name} needs the {needed} scope, which this token was not granted; "
                "sign in again and approve it")])
        result = await call_tool(self.graph, graph_owner(caller), params.name, params.arguments, self.quota,
                                 origin_of(caller), self.max_result_bytes)
        if needed == WRITE_SCOPE and not (isinstance(result, types.CallToolResult) and result.is_error):
            self.nudge.set()
        return result

    # -- the resource --------------------------------------------------------------------------

    async def list_resources(self) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[GRAPH_RESOURCE])

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        caller = _reader(uri)
        graph = await self.graph.read_graph(graph_owner(caller))
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=GRAPH_URI, mime_type="application/json", text=graph.json.decode())])

    async def subscribe(self, uri: str, subscribed: bool) -> types.EmptyResult:
        _reader(uri)
        session_id = current_session.get()
        if session_id is None or self.subscriptions is None:
            raise MCPError(INVALID_REQUEST, "resources/subscribe needs a session: this connection has none")
        if not await self.subscriptions.subscribe(session_id, GRAPH_URI, subscribed):
            raise MCPError(INVALID_REQUEST, "the session ended; send initialize to start a new one")
        self.nudge.set()
        return types.EmptyResult()

    def server(self, *, subscribable: bool = False) -> Server[Any]:
        """The SDK server. `subscribable`: serve `resources/subscribe` (and so advertise
        `subscribe: true`), for a caller that keeps subscriptions (`self.subscriptions`) and
        delivers the notifications (server/resources.py)."""
        async def list_tools(_ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
                             ) -> types.ListToolsResult:
            return await self.list_tools()

        async def tools_call(_ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
                             ) -> types.CallToolResult:
            result = await self.call(params)
            if not isinstance(result, GraphResult):
                return result
            # On the direct path the graph goes into the answer as the JSON it already is.
            return prepared(result.stand_in(), {("content", 0, "text"): result.graph.text_parts,
                                                ("structuredContent",): result.graph.json_parts}) or result.result()

        async def list_resources(_ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
                                 ) -> types.ListResourcesResult:
            return await self.list_resources()

        async def read_resource(_ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
                                ) -> types.ReadResourceResult:
            return await self.read_resource(str(params.uri))

        async def subscribe(_ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
            return await self.subscribe(str(params.uri), True)

        async def unsubscribe(_ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
                              ) -> types.EmptyResult:
            return await self.subscribe(str(params.uri), False)

        schemas = {tool.name: tool.input_schema for tool in TOOLS}
        # The schemas the SDK checks a 2026-07-28 call's Mcp-Param-* headers against, without
        # running tools/list for every call.
        return Server("memory-mcp", version=_version(), instructions=INSTRUCTIONS,
                      on_list_tools=list_tools, on_call_tool=tools_call, get_tool_input_schema=schemas.get,
                      on_list_resources=list_resources, on_read_resource=read_resource,
                      on_subscribe_resource=subscribe if subscribable else None,
                      on_unsubscribe_resource=unsubscribe if subscribable else None)


def graph_owner(caller: Caller) -> str:
    """The graph (`GraphStore` owner key) the caller's tools work on: the memory its grant is
    bound to (`auth.memories`; the default memory's id is the user id)."""
    owner = caller.owner
    if isinstance(owner, Principal):
        return owner.memory
    return caller.user


def origin_of(caller: Caller) -> Origin:
    """The provenance a caller's writes record: now, and the client it calls through (the OAuth
    client id of its principal; "pat:<id>" for a personal access token)."""
    principal = caller.owner
    return Origin(time.time(), principal.client_id if isinstance(principal, Principal) else str(principal))


def _reader(uri: str) -> Caller:
    """The caller, if `uri` is the graph's and the caller may read it; else the error the SDK's
    own resource handling answers (an unknown resource: invalid params, with the URI)."""
    if uri != GRAPH_URI:
        raise MCPError(INVALID_PARAMS, f"Unknown resource: {uri} (this server has one: {GRAPH_URI})",
                       data={"uri": uri})
    caller = current_caller.get()
    # The HTTP layer already answered 403 for this (`scope_guard`), as for a tool.
    if READ_SCOPE not in caller.scopes:
        raise MCPError(INVALID_REQUEST, f"{GRAPH_URI} needs the {READ_SCOPE} scope, which this token was not "
                       "granted; sign in again and approve it")
    return caller


def caller_from_grant(grant: AccessGrant) -> Caller:
    return Caller(owner=grant.principal, user=grant.principal.subject, scopes=grant.scopes, detail=grant)


def scope_guard(verifier: BearerVerifier) -> GuardMessage:
    """A `transports.caller.GuardMessage` that answers a tools/call, or a request reading the
    graph resource, needing a scope the token lacks with 403 insufficient_scope, so the client
    can step up (MCP authorization, 2025-11-25)."""

    def guard(caller: Caller, resource_path: str, message: Mapping[str, Any]) -> web.StreamResponse | None:
        method = message.get("method")
        if method in RESOURCE_METHODS:
            needed: str | None = READ_SCOPE
        elif method == "tools/call":
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            needed = TOOL_SCOPES.get(name) if isinstance(name, str) else None
        else:
            return None
        if needed is None or needed in caller.scopes:
            return None
        wanted = " ".join(sorted(caller.scopes | {needed}))
        return verifier.insufficient_scope(resource_path, wanted).response()

    return guard

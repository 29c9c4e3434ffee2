"""The MCP server object: the memory tools, served to whoever the transports say is calling."""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mcp_types as types
from aiohttp import web
from mcp.server import Server, ServerRequestContext

from auth.models import AccessGrant, Principal
from auth.rfc6750 import BearerVerifier
from server.memory.graph import DEFAULT_QUOTA, GraphStore, Origin, Quota
from server.memory.tools import TOOL_SCOPES, TOOLS, GraphResult, call_tool
from transports.caller import Caller, GuardMessage, current_caller
from transports.direct import prepared

INSTRUCTIONS = (
    "A persistent knowledge-graph memory that belongs to the signed-in user. Store people, projects and facts "
    "as entities with observations, link them with relations in active voice, and search before creating "
    "duplicates."
)


def _version() -> str:
    try:
        return version("memory-mcp")
    except PackageNotFoundError:
        return "0"


class MemoryTools:
    """The memory tools as the MCP server's request handlers (`server()`). The transports' direct
    path runs the same server, through the SDK's own runner."""

    def __init__(self, graph: GraphStore, quota: Quota = DEFAULT_QUOTA) -> None:
        self.graph = graph
        self.quota = quota

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
        return await call_tool(self.graph, graph_owner(caller), params.name, params.arguments, self.quota,
                               origin_of(caller))

    def server(self) -> Server[Any]:
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

        schemas = {tool.name: tool.input_schema for tool in TOOLS}
        # The schemas the SDK checks a 2026-07-28 call's Mcp-Param-* headers against, without
        # running tools/list for every call.
        return Server("memory-mcp", version=_version(), instructions=INSTRUCTIONS,
                      on_list_tools=list_tools, on_call_tool=tools_call, get_tool_input_schema=schemas.get)


def graph_owner(caller: Caller) -> str:
    """The graph (`GraphStore` owner key) the caller's tools work on."""
    return caller.user


def origin_of(caller: Caller) -> Origin:
    """The provenance a caller's writes record: now, and the client it calls through (the OAuth
    client id of its principal; "pat:<id>" for a personal access token)."""
    principal = caller.owner
    return Origin(time.time(), principal.client_id if isinstance(principal, Principal) else str(principal))


def caller_from_grant(grant: AccessGrant) -> Caller:
    return Caller(owner=grant.principal, user=grant.principal.subject, scopes=grant.scopes, detail=grant)


def scope_guard(verifier: BearerVerifier) -> GuardMessage:
    """A `transports.caller.GuardMessage` that answers a tools/call needing a scope the token lacks
    with 403 insufficient_scope, so the client can step up (MCP authorization, 2025-11-25)."""

    def guard(caller: Caller, resource_path: str, message: Mapping[str, Any]) -> web.StreamResponse | None:
        if message.get("method") != "tools/call":
            return None
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        needed = TOOL_SCOPES.get(name) if isinstance(name, str) else None
        if needed is None or needed in caller.scopes:
            return None
        wanted = " ".join(sorted(caller.scopes | {needed}))
        return verifier.insufficient_scope(resource_path, wanted).response()

    return guard

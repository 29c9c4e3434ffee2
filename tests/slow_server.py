"""memory-mcp with an MCP server whose one tool takes its time, run as `memory-mcp serve` runs
(`server.limits.run_app`): for the shutdown tests (tests/test_teardown.py).

Every request but `initialize` of a server other than the memory tools goes through the SDK's
transport (`server.app.build_app(..., mcp_server=...)`), so SIGTERM meets a tool call in flight on
that path, on Streamable HTTP and on the legacy SSE transport alike. The rest is the real app:
OAuth, the session registry, the store.

    python -m tests.slow_server --data-dir DIR [--shutdown-timeout S]

listens on a free loopback port and prints `serving at http://127.0.0.1:PORT` on standard error;
the tool prints `slow tool started` there when a call begins.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import mcp_types as types
from mcp.server import Server, ServerRequestContext

SLOW = types.Tool(name="slow", description="answers after `seconds`", input_schema={
    "type": "object", "properties": {"seconds": {"type": "number"}, "reply": {"type": "string"}},
    "required": ["seconds", "reply"]})


async def _list_tools(_ctx: ServerRequestContext[Any],
                      _params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[SLOW])


async def _call_tool(_ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    print("slow tool started", file=sys.stderr, flush=True)
    await asyncio.sleep(float(args["seconds"]))
    return types.CallToolResult(content=[types.TextContent(type="text", text=str(args["reply"]))])


def main() -> None:
    from server import limits, logs
    from server.app import build_app
    from server.cli import _event_loop, _listen, _open_backend
    from server.config import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    ns = parser.parse_args()
    logs.configure("info")
    sockets = _listen("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    settings = Settings.model_validate({"host": "127.0.0.1", "port": port, "data_dir": ns.data_dir,
                                        "shutdown_timeout": ns.shutdown_timeout})
    server: Server[Any] = Server("slow", version="1", on_list_tools=_list_tools, on_call_tool=_call_tool)
    loop = _event_loop()
    app = loop.run_until_complete(build_app(settings, loop.run_until_complete(_open_backend(settings)),
                                            mcp_server=server))
    print(f"serving at {settings.issuer}", file=sys.stderr, flush=True)
    limits.run_app(app, sockets=sockets, shutdown_timeout=settings.shutdown_timeout, loop=loop,
                   access_log_class=logs.AccessLogger)


if __name__ == "__main__":
    main()

"""Requests answered without the SDK transport: the hot path of an established session.

A `tools/call` or `tools/list` in a session whose client accepts JSON needs none of the SDK
transport's machinery (SSE response, event log, per-request task and stream); measured, that
machinery is most of the cost of a call (docs/performance.md). The server supplies the handlers
(the same functions its MCP server uses), and the answer is shaped exactly as the SDK shapes it:
the result model dumped by alias, then sieved to the session's protocol version by
`mcp_types.methods.serialize_server_result`. Anything else (other methods, streams, clients that
only accept SSE) goes to the SDK transport as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from mcp.shared.exceptions import MCPError
from mcp_types import methods
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

DirectHandler = Callable[[Mapping[str, Any] | None], Awaitable[BaseModel]]
"""Validates the request's params and returns the result model; raises `MCPError` for a
JSON-RPC error, `ValidationError` for invalid params."""

INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


def accepts_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return any(part.split(";", 1)[0].strip() in ("application/json", "application/*", "*/*")
               for part in accept.split(","))


def is_request(message: Mapping[str, Any]) -> bool:
    """A JSON-RPC 2.0 request this path can answer: the SDK's own validation covers the rest."""
    request_id = message.get("id")
    return (message.get("jsonrpc") == "2.0" and isinstance(message.get("method"), str)
            and (isinstance(request_id, str) or (isinstance(request_id, int) and not isinstance(request_id, bool)))
            and (message.get("params") is None or isinstance(message.get("params"), dict)))


async def answer(handler: DirectHandler, message: Mapping[str, Any], version: str,
                 headers: Mapping[str, str]) -> web.Response:
    method, request_id = message["method"], message["id"]
    try:
        result = await handler(message.get("params"))
        dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id,
                                "result": methods.serialize_server_result(method, version, dumped)}
    except MCPError as exc:
        body = {"jsonrpc": "2.0", "id": request_id, "error": exc.error.model_dump(by_alias=True, exclude_none=True)}
    except ValidationError:
        body = {"jsonrpc": "2.0", "id": request_id,
                "error": {"code": INVALID_PARAMS, "message": "Invalid request parameters", "data": ""}}
    except Exception:
        log.exception("%s failed", method)
        body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": INTERNAL_ERROR, "message": "Internal error"}}
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

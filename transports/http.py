"""HTTP-level checks shared by the Streamable HTTP and the legacy SSE endpoints."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web


def jsonrpc_error(status: int, code: int, message: str, *, headers: Mapping[str, str] | None = None,
                  request_id: object = None) -> web.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def check_origin(request: web.Request, allowed: frozenset[str]) -> None:
    """DNS-rebinding defence (MCP transports spec): a browser page on another origin must not reach
    the endpoint. Non-browser clients send no Origin header and pass."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/").lower() not in allowed:
        raise web.HTTPForbidden(
            text=json.dumps({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600,
                "message": f"Origin {origin!r} is not allowed; add it to allowed_origins to let a browser "
                           "client on that origin connect"}}),
            content_type="application/json")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The JSON request body, refused with 415 when it is declared as something else, and with
    413 as soon as it is known to exceed `limit` (before it is read when Content-Length says so)."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            content_type="application/json",
            text=json.dumps({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600,
                "message": f"Content-Type must be application/json, not {request.content_type!r}"}}))

    def too_large(size: int) -> web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=size, content_type="application/json",
            text=json.dumps({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600, "message": f"Request body too large: the limit is {limit} bytes"}}))

    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(declared)
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise too_large(len(body))
    return bytes(body)


def parse_json(body: bytes) -> Any:
    """The decoded body, or None when it is not JSON (the SDK transport then answers the parse
    error itself, in the form its clients expect)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None

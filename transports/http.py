"""HTTP-level checks shared by the Streamable HTTP and the legacy SSE endpoints."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from transports import sdk
from transports.store import StoreUnavailable

STORE_UNAVAILABLE = -32000
"""JSON-RPC code of a request refused because the store cannot answer now (the implementation-
defined server-error range): retryable, with the HTTP status 503 and Retry-After."""


def jsonrpc_error(status: int, code: int, message: str, *, headers: Mapping[str, str] | None = None,
                  request_id: object = None) -> web.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


_BODY = web.RequestKey("body", bytes)
"""Where `read_body` leaves the body it read, for an error response that needs the request's id."""


def store_unavailable_middleware(paths: frozenset[str], max_body_bytes: int) -> Middleware:
    """The one place a store that cannot answer now becomes a response on the MCP endpoints:
    503, Retry-After and a JSON-RPC error carrying the request's id (a client matches answers by
    id), never a 500. (A tool call that meets it mid-way is answered by the tool, as an error
    result that says to retry.)"""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            if request.path not in paths:
                raise
            return jsonrpc_error(503, STORE_UNAVAILABLE, f"the server's store is temporarily unavailable "
                                 f"({exc.reason}); retry in {exc.retry_after} seconds",
                                 headers={"Retry-After": str(exc.retry_after)},
                                 request_id=await _request_id(request, max_body_bytes))

    return middleware


async def _request_id(request: web.Request, limit: int) -> object:
    """The id of the JSON-RPC request in the body, or None (not a request, or not readable): the
    body was read by the handler, or, when the store failed before that (the token's lookup), is
    read now, within the same limit."""
    body = request.get(_BODY)
    if body is None and request.method == "POST" and not request.content.at_eof():
        try:
            body = await read_body(request, limit)
        except web.HTTPException:
            return None
    message = parse_json(body) if body else None
    found = message.get("id") if isinstance(message, dict) else None
    return found if isinstance(found, str | int) and not isinstance(found, bool) else None


CORS_ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, MCP-Protocol-Version, Mcp-Session-Id, Mcp-Method, Last-Event-ID"
)
CORS_EXPOSE_HEADERS = "Mcp-Session-Id, WWW-Authenticate, MCP-Protocol-Version"


def cors_preflight(request: web.Request, allowed: frozenset[str], methods: str) -> web.Response:
    """Answer a browser's preflight without authentication (the preflight carries no token, and
    browser clients such as the MCP Inspector stop at a 401 here). Only allowed origins get the
    permission headers; the request itself is still authenticated."""
    check_origin(request, allowed)
    headers = {"Access-Control-Allow-Methods": methods, "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
               "Access-Control-Max-Age": "600", "Vary": "Origin"}
    origin = request.headers.get("Origin")
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = origin
    return web.Response(status=204, headers=headers)


def add_cors_headers(request: web.Request, response: web.StreamResponse, allowed: frozenset[str]) -> None:
    """On every answer to an allowed browser origin (streams included: this runs as the response is
    prepared), let the page read the session id and the auth challenge."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/").lower() in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        response.headers.add("Vary", "Origin")


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
    read = request[_BODY] = bytes(body)
    return read


def parse_json(body: bytes) -> Any:
    """The decoded body, or None when it is not JSON. Parsed as the SDK's session transport parses
    (`transports.sdk.parse_json`) in every era: a lone surrogate, which no storage, serialiser or
    header can carry, is refused here as not JSON, before any handler sees it."""
    if not body:
        return None
    try:
        return sdk.parse_json(body)
    except ValueError:
        return None

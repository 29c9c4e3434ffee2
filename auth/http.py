"""HTTP plumbing shared by the OAuth endpoints: bounded body reading, strict form parsing, JSON
errors and CORS. Refusals are raised as `auth.errors.BadRequest`.

Bodies are read from the stream with our own limit rather than `request.post()`: that one accepts
multipart, silently merges repeated parameters and is bounded only by the app-wide
`client_max_size`, which the MCP transports may need to raise.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.typedefs import Middleware

from auth.errors import BadRequest, OAuth2Error

FORM_LIMIT = 64 * 1024
JSON_LIMIT = 64 * 1024

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
    "Access-Control-Max-Age": "86400",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def oauth_error(error: str, description: str, status: int = 400,
                headers: dict[str, str] | None = None) -> web.Response:
    """RFC 6749 section 5.2 error: JSON, never cached (the same shape serves RFC 7591 and 7009).
    For the few answers made outside a handler (405, 503); handlers raise `OAuth2Error`."""
    return OAuth2Error(error, description, status, headers).response()


async def read_body(request: web.Request, limit: int, error: str = "invalid_request") -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest("request body too large", 413, error)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(8192):
        size += len(chunk)
        if size > limit:
            raise BadRequest("request body too large", 413, error)
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: web.Request) -> str:
    # `request.content_type` defaults to application/octet-stream when the header is absent.
    if "Content-Type" not in request.headers:
        return ""
    return request.content_type.lower()


async def read_form(request: web.Request, limit: int = FORM_LIMIT) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body as a dict; repeated parameters are refused
    (RFC 6749 section 3.1: "MUST NOT be included more than once")."""
    if _media_type(request) not in ("", "application/x-www-form-urlencoded"):
        raise BadRequest("the body must be application/x-www-form-urlencoded", 415)
    body = await read_body(request, limit)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100,
                          encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the body is not valid UTF-8 form data") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise BadRequest(f"parameter {name!r} is repeated")
        form[name] = value
    return form


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity
        raise ValueError(f"{text} is out of range")
    return value


def parse_json(data: bytes | str) -> object:
    """Strict JSON: no NaN or Infinity, which Python accepts by default and would echo back in a
    response that strict parsers reject (RFC 8259)."""
    return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)


async def read_json_object(request: web.Request, limit: int = JSON_LIMIT,
                           error: str = "invalid_request") -> dict[str, object]:
    """A JSON object body; refused as `error` (`BadRequest`) otherwise."""
    if _media_type(request) != "application/json":
        raise BadRequest("the body must be application/json", 415, error)
    body = await read_body(request, limit, error)
    try:
        data = parse_json(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest("the body is not valid JSON", error=error) from exc
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", error=error)
    return data


def single_query(request: web.Request) -> dict[str, str]:
    """Query parameters, refusing repeats (same rule as for forms)."""
    params: dict[str, str] = {}
    for name, value in request.query.items():
        if name in params:
            raise BadRequest(f"parameter {name!r} is repeated")
        params[name] = value
    return params


def with_cors(handler: Handler) -> Handler:
    """Browser-based clients (MCP Inspector) call discovery, /register, /token and /revoke
    cross-origin. None of these use cookies, so a wildcard origin grants nothing extra."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except (web.HTTPException, OAuth2Error) as exc:
            exc.headers.update(CORS_HEADERS)
            raise
        response.headers.update(CORS_HEADERS)
        return response

    return wrapped


async def json_method_not_allowed(request: web.Request) -> web.Response:
    """Clients parse whatever /token says as JSON; aiohttp's own 405 is plain text."""
    return oauth_error("invalid_request", f"{request.method} is not allowed here; use POST", 405,
                       {"Allow": "POST, OPTIONS", **CORS_HEADERS})


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS_HEADERS)


CLIENT_ADDRESS = web.RequestKey("memory_mcp_client_address", str)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(request: web.BaseRequest) -> str:
    """The address a request came from, for rate limits and logs: the socket peer, or behind a
    trusted reverse proxy the address it forwarded (`forwarded_middleware`)."""
    found = request.get(CLIENT_ADDRESS)
    return found if isinstance(found, str) else (request.remote or "unknown")


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str]:
    """The `for=` of each element of RFC 7239 `Forwarded` values, in order ("" when absent), as
    bare addresses: quotes, brackets and ports removed. Obfuscated names ("_hidden", "unknown")
    stay as they are, and are not addresses."""
    hops = []
    for element in value.split(","):
        node = ""
        for pair in element.split(";"):
            name, _, text = pair.strip().partition("=")
            if name.strip().lower() == "for":
                node = text.strip().strip('"')
        if node.startswith("["):
            node = node[1:].partition("]")[0]
        elif node.count(":") == 1:
            node = node.partition(":")[0]
        hops.append(node)
    return hops


def forwarded_client(peer: str | None, values: Sequence[str], trusted: Sequence[IPNetwork],
                     header: str) -> str | None:
    """The client's address by the rightmost-untrusted-hop rule: walk the chain from the socket
    peer towards the client while each hop is a trusted proxy; the first hop that is not one is
    the client. Every hop left of it could have been written by the client, so none of them is
    believed. None when the peer itself is not trusted (the header is then ignored) or the chain
    holds something that is not an address where the client should be."""
    address = _ip(peer or "")
    if address is None or not any(address in net for net in trusted):
        return None
    joined = ",".join(values)
    hops = _forwarded_for(joined) if header.lower() == "forwarded" else [h.strip() for h in joined.split(",")]
    for hop in reversed(hops if joined.strip() else []):
        address = _ip(hop)
        if address is None:
            return None
        if not any(address in net for net in trusted):
            return str(address)
    # Every hop is a proxy of ours: the leftmost is the closest we can get to the client.
    return str(address)


def forwarded_middleware(trusted: Sequence[IPNetwork], header: str) -> Middleware:
    """Resolve the client's address once per request (`client_address` reads it). Installed only
    when there are trusted proxies: otherwise the peer is the client, and no header is read."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        found = forwarded_client(request.remote, request.headers.getall(header, []), trusted, header)
        if found is not None:
            request[CLIENT_ADDRESS] = found
        return await handler(request)

    return middleware

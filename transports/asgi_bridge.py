"""Run an ASGI callable (the mcp SDK's transports) inside an aiohttp handler.

Why hand-written and not `aiohttp-asgi`: that package's `receive()` never reports
`http.disconnect` and returns immediately at EOF, so sse-starlette's disconnect listener spins and
wedges the event loop on the first SSE response (docs/sdk-pitfalls.md#P1).

`post_detached` serves a request that has no connection here (a legacy SSE message posted to another
process, transports/sse.py).

What this bridge guarantees, each learned the hard way (docs/sdk-pitfalls.md#P3, #P4):
* P3: aiohttp may cancel a handler when its client goes away (always under the test server). The
  SDK must not be cancelled mid-request, or a session being opened is discarded half-made: the ASGI
  call runs in its own task and is shielded; the handler's cancellation only tells it the peer left.
* P4: writes after the peer closed raise `ConnectionResetError` into the SDK; they are swallowed,
  as ASGI 2.3 says a server must once the client is gone.
* P5: without handler cancellation (production), aiohttp never tells a streaming handler that the
  client left; `receive()` watches `transport.is_closing()` so open SSE streams notice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How often an idle receive() looks at the socket; bounds how long a dead SSE stream lingers.
DISCONNECT_POLL_SECONDS = 0.5


def build_scope(request: web.Request, state: dict[str, Any] | None = None) -> Scope:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    sock = transport.get_extra_info("sockname") if transport is not None else None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path.split("?", 1)[0].encode(),
        "query_string": request.query_string.encode(),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": tuple(peer[:2]) if peer else None,
        "server": tuple(sock[:2]) if sock else None,
        "state": dict(state or {}),
    }


async def call_asgi(
    app: ASGIApp, request: web.Request, body: bytes, state: dict[str, Any] | None = None,
    *, tap: Callable[[bytes], object] | None = None,
) -> web.StreamResponse:
    """Serve `request` (whose body the caller has already read) with `app`; return the response sent.
    `tap` sees each chunk of the body as it is sent."""
    scope = build_scope(request, state)
    finished = asyncio.Event()
    body_sent = False
    response: web.StreamResponse | None = None
    peer_gone = False

    def disconnected() -> bool:
        transport = request.transport
        return peer_gone or transport is None or transport.is_closing()

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        while not finished.is_set() and not disconnected():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), DISCONNECT_POLL_SECONDS)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal response, peer_gone
        kind = message["type"]
        if kind == "http.response.start":
            response = web.StreamResponse(status=message["status"])
            for name, value in message.get("headers", ()):
                response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            if not disconnected():
                try:
                    await response.prepare(request)
                except ConnectionResetError:
                    peer_gone = True
        elif kind == "http.response.body":
            if response is None or peer_gone or not response.prepared:
                return
            try:
                chunk = message.get("body", b"")
                if tap is not None:
                    tap(chunk)
                if chunk:
                    await response.write(chunk)
                if not message.get("more_body", False):
                    await response.write_eof()
                    finished.set()
            except ConnectionResetError:
                peer_gone = True

    task = asyncio.ensure_future(app(scope, receive, send))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # The handler was cancelled because the client left: let the SDK see a disconnect and
        # finish its own bookkeeping, then propagate.
        peer_gone = True
        finished.set()
        await asyncio.wait({task})
        raise
    finally:
        finished.set()
    if response is None:
        return web.Response(status=500, text="the MCP transport sent no response")
    return response


async def post_detached(app: ASGIApp, path: str, query: str, body: bytes, state: dict[str, Any] | None = None) -> int:
    """POST `body` to `app` as a request that arrived in another process (which answered the
    client itself): no connection behind it, the response's status returned and its body dropped."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": None,
        "server": None,
        "state": dict(state or {}),
    }
    status = 0
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status

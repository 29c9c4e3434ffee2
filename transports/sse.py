"""The 2024-11-05 HTTP+SSE transport: `GET /sse` opens a session, `POST /messages` feeds it.

Each session gets its own `SseServerTransport`, so the session id the SDK announces in the
`endpoint` event is the only one that transport knows; the registry binds that id to the caller
who opened the stream, and a message posted with another principal's token gets the same 404 as
an unknown id. The stream lives as long as the GET request; ending the session (revocation,
shutdown) cancels it, which closes the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from aiohttp import web
from mcp.server.lowlevel.server import Server
from mcp.server.sse import SseServerTransport

from transports.asgi_bridge import Message, Receive, Scope, Send, call_asgi
from transports.caller import Authenticate, GuardMessage, Refusal, current_caller
from transports.http import check_origin, cors_preflight, parse_json, read_body
from transports.registry import Session, SessionLimitError, SessionRegistry
from transports.sdk import Dispatcher, serve_connection, session_loop, sse_endpoint_session_id

log = logging.getLogger(__name__)

MESSAGES_PATH = "/messages"


class SSEEndpoint:
    def __init__(
        self,
        registry: SessionRegistry,
        server: Server[Any],
        authenticate: Authenticate,
        guard: GuardMessage,
        *,
        allowed_origins: frozenset[str],
        max_body_bytes: int,
    ) -> None:
        self._registry = registry
        self._server = server
        self._authenticate = authenticate
        self._guard = guard
        self._allowed_origins = allowed_origins
        self._max_body = max_body_bytes
        self._transports: dict[str, SseServerTransport] = {}

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """GET /sse."""
        if request.method == "OPTIONS":
            return cors_preflight(request, self._allowed_origins, "GET")
        check_origin(request, self._allowed_origins)
        try:
            caller = await self._authenticate(request, "/sse")
        except Refusal as refusal:
            return refusal.response
        if request.method != "GET":
            # Streamable-HTTP-first clients (mcp-remote) POST here first; 405 makes them fall back
            # to GET (docs/protocol.md#I3).
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        current_caller.set(caller)
        transport = SseServerTransport(MESSAGES_PATH)
        cancel_scope = anyio.CancelScope()
        holder: dict[str, Session] = {}
        dispatcher: Dispatcher | None = None
        lifespan_state = self._registry.lifespan_state

        async def admit(session_id: str) -> bool:
            try:
                with anyio.CancelScope(shield=True):  # registered and held, or not registered
                    holder["session"] = await self._registry.open_sse(caller, session_id, _canceller(cancel_scope),
                                                                      dispatcher)
            except SessionLimitError as exc:
                log.warning("closing SSE stream: %s", exc)
                cancel_scope.cancel()
                return False
            self._transports[session_id] = transport
            return True

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            async def watch(message: Message) -> None:
                if "session" not in holder and message["type"] == "http.response.body":
                    found = sse_endpoint_session_id(message.get("body", b""))
                    # Registered before the endpoint event goes out: a client that posts to
                    # /messages the moment it reads the event must find its session.
                    if found and not await admit(found):
                        return
                await send(message)

            nonlocal dispatcher
            with cancel_scope:
                async with transport.connect_sse(scope, receive, watch) as (read_stream, write_stream):
                    # What the SDK's `serve_loop` does, with the dispatcher kept for the registry (a
                    # shutdown waits for the requests it serves). Built before the endpoint event
                    # goes out (`connect_sse` only schedules its writer), so `admit` has it.
                    dispatcher, connection = session_loop(read_stream, write_stream, session_id=None,
                                                          client_params=None, protocol_version=None)
                    await serve_connection(self._server, dispatcher, connection=connection,
                                           lifespan_state=lifespan_state)

        try:
            return await call_asgi(app, request, b"", {"caller": caller})
        finally:
            session = holder.get("session")
            if session is not None:
                self._transports.pop(session.session_id, None)
                await self._registry.forget(session)

    async def message(self, request: web.Request) -> web.StreamResponse:
        """POST /messages?session_id=..."""
        if request.method == "OPTIONS":
            return cors_preflight(request, self._allowed_origins, "POST")
        check_origin(request, self._allowed_origins)
        try:
            caller = await self._authenticate(request, "/sse")
        except Refusal as refusal:
            return refusal.response
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        session_id = request.query.get("session_id")
        if not session_id:
            raise web.HTTPBadRequest(text="session_id query parameter is required (from the endpoint event)")
        session = self._registry.lookup(session_id, caller.owner, "sse")
        transport = self._transports.get(session_id)
        if session is None or transport is None:
            raise web.HTTPNotFound(text="Could not find session: it ended or never existed; open /sse again")
        body = await read_body(request, self._max_body)
        message = parse_json(body)
        if message is None:
            raise web.HTTPBadRequest(text="Could not parse message: the body is not valid JSON")
        if isinstance(message, dict):
            blocked = self._guard(caller, "/sse", message)
            if blocked is not None:
                return blocked
        current_caller.set(caller)
        async with self._registry.using(session):
            return await call_asgi(transport.handle_post_message, request, body, {"caller": caller})


def _canceller(scope: anyio.CancelScope) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        scope.cancel()

    return cancel

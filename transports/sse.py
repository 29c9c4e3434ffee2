"""The 2024-11-05 HTTP+SSE transport: `GET /sse` opens a session, `POST /messages` feeds it.

Each session gets its own `SseServerTransport`, so the session id the SDK announces in the
`endpoint` event is the only one that transport knows; the registry binds that id to the caller
who opened the stream, and a message posted with another principal's token gets the same 404 as
an unknown id. The stream lives as long as the GET request; ending the session (revocation,
shutdown) cancels it, which closes the stream.

With several processes on one store (workers, instances behind a load balancer) the client's
POSTs may reach a process that does not hold its stream. That process checks the session's record
(the same owner, a stream still alive) and queues the message in the store's inbox for the
session (`TransportStore.send_to_session`), answering 202 once it is stored; the holder reads its
sessions' inboxes (`session_messages`) and hands each message to its transport, as if it had been
posted there, so the response goes out on the stream. A POST that reaches the holder is handed
over directly, as before. docs/decisions.md#10 says why this shape.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import anyio
from aiohttp import web
from mcp.server.lowlevel.server import Server
from mcp.server.sse import SseServerTransport
from mcp_types import jsonrpc_message_adapter
from pydantic import ValidationError

from transports.asgi_bridge import Message, Receive, Scope, Send, call_asgi, post_detached
from transports.caller import Authenticate, Caller, GuardMessage, Refusal, current_caller, current_session
from transports.http import check_origin, cors_preflight, parse_json, read_body
from transports.registry import Session, SessionLimitError, SessionRegistry
from transports.sdk import Connection, Dispatcher, serve_connection, session_loop, sse_endpoint_session_id

log = logging.getLogger(__name__)

MESSAGES_PATH = "/messages"
INBOX_LIMIT = 64
"""Messages that may wait in a session's inbox for the process holding its stream (which takes
them within moments): beyond, a POST is refused with 429, so that a client cannot fill the store."""


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
        admitted = anyio.Event()
        dispatcher: Dispatcher | None = None
        connection: Connection | None = None
        lifespan_state = self._registry.lifespan_state

        async def admit(session_id: str) -> bool:
            try:
                with anyio.CancelScope(shield=True):  # registered and held, or not registered
                    holder["session"] = await self._registry.open_sse(caller, session_id, _canceller(cancel_scope),
                                                                      dispatcher, connection)
            except SessionLimitError as exc:
                log.warning("closing SSE stream: %s", exc)
                cancel_scope.cancel()
                return False
            self._transports[session_id] = transport
            admitted.set()
            return True

        async def relay() -> None:
            """Hand the messages posted to other processes for this session to its transport."""
            await admitted.wait()
            session_id = holder["session"].session_id
            async with contextlib.aclosing(self._registry.store.session_messages(session_id)) as inbox:
                async for queued in inbox:
                    await self._deliver(transport, session_id, caller, queued)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            async def watch(message: Message) -> None:
                if "session" not in holder and message["type"] == "http.response.body":
                    found = sse_endpoint_session_id(message.get("body", b""))
                    # Registered before the endpoint event goes out: a client that posts to
                    # /messages the moment it reads the event must find its session.
                    if found and not await admit(found):
                        return
                await send(message)

            nonlocal dispatcher, connection
            with cancel_scope:
                async with (transport.connect_sse(scope, receive, watch) as (read_stream, write_stream),
                            anyio.create_task_group() as relaying):
                    # What the SDK's `serve_loop` does, with the dispatcher kept for the registry (a
                    # shutdown waits for the requests it serves). Built before the endpoint event
                    # goes out (`connect_sse` only schedules its writer), so `admit` has it.
                    dispatcher, connection = session_loop(read_stream, write_stream, session_id=None,
                                                          client_params=None, protocol_version=None)
                    relaying.start_soon(relay)
                    await serve_connection(self._server, dispatcher, connection=connection,
                                           lifespan_state=lifespan_state)
                    relaying.cancel_scope.cancel()

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
            if not await self._registry.held_elsewhere(session_id, caller):
                raise web.HTTPNotFound(text="Could not find session: it ended or never existed; open /sse again")
            session = transport = None
        body = await read_body(request, self._max_body)
        message = parse_json(body)
        if message is None:
            raise web.HTTPBadRequest(text="Could not parse message: the body is not valid JSON")
        try:
            # Checked here rather than by the SDK transport, which logs a traceback for each
            # message it cannot parse: anyone could fill the log with them.
            jsonrpc_message_adapter.validate_json(body, by_name=False)
        except ValidationError:
            raise web.HTTPBadRequest(text="Could not parse message: not a JSON-RPC message") from None
        if isinstance(message, dict):
            blocked = self._guard(caller, "/sse", message)
            if blocked is not None:
                return blocked
        if session is None or transport is None:
            return await self._queue(session_id, caller, body)
        current_caller.set(caller)
        current_session.set(session_id)
        async with self._registry.using(session, caller=caller):
            return await call_asgi(transport.handle_post_message, request, body, {"caller": caller})

    async def _queue(self, session_id: str, caller: Caller, body: bytes) -> web.StreamResponse:
        """A message for a stream another process holds, stored for that process with what the
        message's tools need to know of who posted it (its token's scopes; the principal is the
        stream's, checked equal)."""
        queued = json.dumps({"scopes": sorted(caller.scopes), "message": body.decode()})
        if not await self._registry.store.send_to_session(session_id, queued, INBOX_LIMIT):
            return web.Response(status=429, headers={"Retry-After": "1"},
                                text=f"Too many messages waiting for this session ({INBOX_LIMIT}): retry in a moment")
        return web.Response(status=202, text="Accepted")

    async def _deliver(self, transport: SseServerTransport, session_id: str, opener: Caller, queued: str) -> None:
        """A message posted to another process for this stream, handed to the transport as a POST
        that arrived here, its tools seeing the poster's scopes."""
        try:
            envelope = json.loads(queued)
            scopes, body = frozenset(envelope["scopes"]), envelope["message"].encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("dropped a malformed message queued for SSE session %s…", session_id[:8])
            return
        caller = replace(opener, scopes=scopes)
        current_caller.set(caller)
        current_session.set(session_id)
        status = await post_detached(transport.handle_post_message, MESSAGES_PATH, f"session_id={session_id}", body,
                                     {"caller": caller})
        if status != 202:
            log.warning("a message queued for SSE session %s… was refused by its transport (%d)", session_id[:8],
                        status)


def _canceller(scope: anyio.CancelScope) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        scope.cancel()

    return cancel

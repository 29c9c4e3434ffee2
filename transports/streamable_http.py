"""The Streamable HTTP endpoint (`/mcp`): authentication, session routing, then the SDK transport.

Order of checks (docs/protocol.md#B1): Origin (403), bearer token (401), method (405),
body limits (413/415), era (400 for versions we do not serve), session (400 missing / 404
unknown), and only then the SDK's `StreamableHTTPServerTransport` of that session. Authentication
comes before everything a client could learn something from: Codex probes an unauthenticated
`GET /mcp` and Claude Code an unauthenticated `server/discover`, and both must see 401.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from transports import sdk
from transports.asgi_bridge import call_asgi
from transports.caller import Authenticate, Caller, GuardMessage, Refusal, current_caller, current_session
from transports.direct import DirectPath, Handshake
from transports.events import DeliveryWatch
from transports.http import check_origin, cors_preflight, jsonrpc_error, parse_json, read_body
from transports.registry import Session, SessionGoneError, SessionLimitError, SessionRegistry

log = logging.getLogger(__name__)

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"


class StreamableHTTPEndpoint:
    def __init__(
        self,
        registry: SessionRegistry,
        authenticate: Authenticate,
        guard: GuardMessage,
        *,
        allowed_origins: frozenset[str],
        max_body_bytes: int,
        resource_path: str = "/mcp",
        direct_methods: frozenset[str] = frozenset(),
    ) -> None:
        self._registry = registry
        # The methods answered without the SDK transport (transports/direct.py), by the SDK's own
        # runner; `initialize` among them means opening a session starts no SDK transport at all.
        self.direct = DirectPath(registry.server, lambda: registry.lifespan_state, json_response=registry.json_response,
                                 methods=direct_methods)
        self._authenticate = authenticate
        self._guard = guard
        self._allowed_origins = allowed_origins
        self._max_body = max_body_bytes
        self._resource_path = resource_path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return cors_preflight(request, self._allowed_origins, "GET, POST, DELETE")
        check_origin(request, self._allowed_origins)
        try:
            caller = await self._authenticate(request, self._resource_path)
        except Refusal as refusal:
            return refusal.response
        if request.method not in ("GET", "POST", "DELETE"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST", "DELETE"])
        body = await read_body(request, self._max_body) if request.method == "POST" else b""

        message = parse_json(body)
        if body and message is None:
            return jsonrpc_error(400, -32700, "Parse error: the body is not valid JSON")
        current_caller.set(caller)
        if isinstance(message, dict):
            blocked = self._guard(caller, self._resource_path, message)
            if blocked is not None:
                return blocked

        version = request.headers.get(VERSION_HEADER)
        if version in MODERN_PROTOCOL_VERSIONS:
            # 2026-07-28: no session, no handshake; the request is authenticated (above) and served
            # on its own: on the direct path when it is one of its methods and the SDK would
            # dispatch it unchanged, else by the SDK's stateless path.
            route = await self.direct.modern_request(request, message) if request.method == "POST" else None
            if route is not None:
                return await self.direct.answer_modern(route, request)
            return await call_asgi(self._registry.stateless.handle_request, request, body, {"caller": caller})
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            # A plain invalid-request code, not a 2026-07-28 one: a client reads it as "use another
            # version", never as "this server is modern-only" (docs/protocol.md#J).
            return jsonrpc_error(400, -32600, f"Unsupported MCP-Protocol-Version {version!r}; this server speaks "
                                 f"{', '.join((*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS))}")

        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            if request.method == "POST" and isinstance(message, dict) and message.get("method") == "initialize":
                return await self._open(request, caller, body, message)
            if request.method == "POST" and message is None:
                return jsonrpc_error(400, -32600, "Bad Request: the body is empty")
            return jsonrpc_error(400, -32600, f"Bad Request: missing {SESSION_HEADER} header (send initialize "
                                 "first, then the session id it returns on every request)")

        session = self._registry.lookup(session_id, caller.owner, "streamable-http")
        if session is None:
            try:
                session = await self._registry.restore(session_id, caller)
            except SessionLimitError as exc:
                return _too_many(exc)
        if session is None:
            return _session_not_found()
        current_session.set(session.session_id)
        async with self._registry.using(session, stream=request.method == "GET", caller=caller):
            try:
                return await self._serve(request, caller, session, body, message, version)
            except SessionGoneError:
                return _session_not_found()

    async def _serve(self, request: web.Request, caller: Caller, session: Session, body: bytes, message: Any,
                     version: str | None) -> web.StreamResponse:
        headers = {SESSION_HEADER: session.session_id}
        if isinstance(message, dict) and request.method == "POST":
            # Shaped by the session's negotiated version, as the SDK's connection is; the request's
            # MCP-Protocol-Version header only chose the era (above).
            direct = await self.direct.session_request(request, message)
            if direct is not None and session.protocol_version is not None and session.client_params is not None:
                return await self.direct.answer_session(direct, session, session.session_id,
                                                        session.protocol_version, session.client_params, headers)
            if self._registry.ignorable_when_parked(session, message):
                return web.Response(status=202, headers=headers)
        if request.method == "DELETE":
            # What the SDK transport does with it (terminate, 200), but answered only once the
            # session, its record and its events are gone, and without starting a parked one.
            await self._registry.forget(session)
            return web.Response(status=200, content_type="application/json", headers=headers)
        transport = await self._registry.activate(session)
        response = await self._through_sdk(session, transport, request, body, caller, message)
        if transport.is_terminated and session.transport is transport:
            await self._registry.forget(session)
        return response

    async def _through_sdk(self, session: Session, transport: StreamableHTTPServerTransport, request: web.Request,
                           body: bytes, caller: Caller, message: Any, *,
                           tap: Callable[[bytes], object] | None = None) -> web.StreamResponse:
        """The SDK transport's answer; a POST's stream whose response went out whole, on a
        connection still up, is then no longer kept for resumption (transports/events.py)."""
        watch = DeliveryWatch()
        response = await call_asgi(watch.wrap(transport.handle_request), request, body, {"caller": caller}, tap=tap)
        if (watch.ended and watch.last_event_id is not None and request.method == "POST"
                and isinstance(message, dict) and "method" in message and isinstance(message.get("id"), str | int)
                and request.transport is not None and not request.transport.is_closing()):
            # The SDK names a POST's stream after the request id.
            await self._registry.delivered(session, str(message["id"]), watch.last_event_id)
        return response

    async def _open(self, request: web.Request, caller: Caller, body: bytes,
                    message: Mapping[str, Any]) -> web.StreamResponse:
        """Open a session. It exists only once `initialize` has succeeded: a refused or failed
        handshake leaves nothing behind and counts against no cap."""
        direct = await self.direct.initialize_request(request, message)
        if direct is not None:
            opened = await self.direct.initialize(direct)
            if not isinstance(opened, Handshake):
                return opened
            try:
                session = await self._registry.open_parked(caller, opened.protocol_version,
                                                           json.dumps(opened.raw_params))
            except SessionLimitError as exc:
                return _too_many(exc)
            return opened.response({SESSION_HEADER: session.session_id})
        try:
            session = await self._registry.open_streamable(caller)
        except SessionLimitError as exc:
            return _too_many(exc)
        transport = session.transport
        if transport is None:  # ended by a revocation while it was being opened
            return _session_not_found()
        answer = bytearray()
        async with self._registry.using(session):
            response = await self._through_sdk(session, transport, request, body, caller, message, tap=answer.extend)
        # The SDK transport sends 200 before its runner has answered, so only the answer itself
        # says whether the handshake succeeded.
        if response.status >= 400 or not sdk.initialize_succeeded(response.content_type, bytes(answer)):
            await self._registry.forget(session)
        else:
            params = message.get("params")
            await self._registry.established(session, sdk.negotiated_version(params), json.dumps(params))
            # Most of a session's life needs no SDK transport (transports/direct.py); it is started
            # again on the first request that does.
            await self._registry.park(session)
        return response


def _session_not_found() -> web.Response:
    return jsonrpc_error(404, -32600, "Session not found: it ended or never existed; send initialize to start a "
                         "new session")


def _too_many(exc: SessionLimitError) -> web.Response:
    return jsonrpc_error(429 if exc.per_user else 503, -32600, f"Too many sessions: {exc}",
                         headers={"Retry-After": "60"})

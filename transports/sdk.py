"""The one door to the mcp SDK's internals: everything transports/ relies on that is not the SDK's
public API goes through this module.

What that is: the runner that turns one request into its wire result (`serve_one`: per-version
validation, `Server.middleware`, the handler, result shaping), the exception-to-wire ladders of
the two eras, the Streamable HTTP transport's Accept, Content-Type, parsing and message rules, the
2026-07-28 inbound ladder, the `Connection` a request is served on (built by hand for a session
whose handshake is already done), and the format of the legacy SSE transport's `endpoint` event.

Most rules are the SDK's own functions, called. A few live inside SDK methods that cannot be
called without a running transport, and are copied here; `COPIED_RULES` names each such SDK
source with a fingerprint of it, and `mcp` is pinned to the minor version they were read from
(`TESTED_VERSIONS`). tests/test_sdk_adapter.py fails, naming the rule, when an installed SDK
differs: read the SDK's new source, update the copy, then the fingerprint.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from typing import Any, cast

import anyio
import pydantic_core
from mcp.server import _streamable_http_modern as modern_http
from mcp.server import runner as runner_module
from mcp.server.connection import _NO_CHANNEL, Connection
from mcp.server.lowlevel.server import Server
from mcp.server.runner import modern_error_data, serve_connection, serve_loop
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import StreamableHTTPServerTransport, check_accept_headers
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher, handler_exception_to_error_data
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    ErrorData,
    InitializeRequestParams,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCRequest,
    RequestId,
    jsonrpc_message_adapter,
)
from mcp_types.version import LATEST_HANDSHAKE_VERSION
from multidict import MultiDict
from pydantic import ValidationError

__all__ = [
    "COPIED_RULES",
    "TESTED_VERSIONS",
    "Connection",
    "Dispatcher",
    "ErrorData",
    "JSONRPCRequest",
    "ModernRoute",
    "Server",
    "SessionMessage",
    "SseServerTransport",
    "dispatcher_busy",
    "dispatcher_serving",
    "handshake_connection",
    "initialize_succeeded",
    "modern_error",
    "modern_route",
    "parse_json",
    "serve_connection",
    "serve_loop",
    "serve_request",
    "session_connection",
    "session_error",
    "session_loop",
    "session_request",
    "sse_endpoint_session_id",
]

log = logging.getLogger(__name__)

TESTED_VERSIONS = {"mcp": "2.3", "mcp-types": "2.3"}
"""The minor versions of the SDK's distributions this module was written against (pyproject.toml
pins the same)."""


# -- what the SDK's Streamable HTTP transport accepts ------------------------------------------

@dataclass(frozen=True, slots=True)
class _HeadersOnly:
    """What the SDK's request checks read of a request: its headers."""

    headers: Any


_PROBE = StreamableHTTPServerTransport(mcp_session_id=None)
"""A transport never connected: its Content-Type check is a method that reads only the request."""


def parse_json(body: bytes) -> Any:
    """The body decoded by the SDK's session-era transport's parser (`pydantic_core.from_json`);
    raises ValueError. Stricter than `json.loads`: a lone surrogate (not valid Unicode), a byte
    order mark and deep nesting are parse errors. The 2026-07-28 entry parses with `json.loads`;
    the endpoint uses this one for both eras, so that what no handler can store or answer
    (a lone surrogate in an id, a name, an argument) is refused before anything runs."""
    return pydantic_core.from_json(body)


def accepts(headers: Mapping[str, str]) -> tuple[bool, bool]:
    """(JSON, SSE) accepted, by the SDK's rule (case-insensitive, q-values ignored, wildcards)."""
    return check_accept_headers(cast(Any, _HeadersOnly(headers)))


async def _secure(headers: Mapping[str, str]) -> bool:
    """The transports' first check of a POST (`TransportSecurityMiddleware`, no DNS-rebinding
    settings: the endpoint checks Origin itself): a Content-Type that starts with JSON's."""
    return await _PROBE._security.validate_request(cast(Any, _HeadersOnly(headers)), is_post=True) is None


_HEADER_VERDICTS: dict[tuple[str | None, str | None, bool], bool] = {}
_HEADER_VERDICTS_KEPT = 256


async def _headers_acceptable(headers: Mapping[str, str], json_response: bool) -> bool:
    """The session-era transport's header checks before it reads the body: the security
    middleware's Content-Type, Accept (both media types unless it answers in JSON only), its own
    Content-Type rule. They read the first Accept and Content-Type values only, so each verdict is
    remembered by those two values: a client sends the same ones on every request, and the SDK's
    rules then cost a dictionary lookup. Bounded: hostile variety only refills it."""
    key = (headers.get("Accept"), headers.get("Content-Type"), json_response)
    verdict = _HEADER_VERDICTS.get(key)
    if verdict is None:
        only = {name: value for name, value in (("accept", key[0]), ("content-type", key[1])) if value is not None}
        has_json, has_sse = accepts(only)
        verdict = (await _secure(only) and has_json and (has_sse or json_response)
                   and _PROBE._check_content_type(cast(Any, _HeadersOnly(only))))
        if len(_HEADER_VERDICTS) >= _HEADER_VERDICTS_KEPT:
            _HEADER_VERDICTS.clear()
        _HEADER_VERDICTS[key] = verdict
    return verdict


async def session_request(headers: Mapping[str, str], message: Any, json_response: bool) -> JSONRPCRequest | None:
    """The request as the SDK's session-era transport would dispatch it unchanged to its runner,
    or None when that transport would answer something else itself (400, 406, 415, a 202 for what
    its message union reads as a notification). Its checks, in its order
    (`StreamableHTTPServerTransport._handle_request` and `_handle_post_request`): the security
    middleware's Content-Type, Accept (both media types unless it answers in JSON only), its own
    Content-Type rule, the JSON-RPC message union."""
    if not await _headers_acceptable(headers, json_response):
        return None
    try:
        parsed: JSONRPCMessage = jsonrpc_message_adapter.validate_python(message, by_name=False)
    except ValidationError:
        return None
    return parsed if isinstance(parsed, JSONRPCRequest) else None


@dataclass(frozen=True, slots=True)
class ModernRoute:
    request: JSONRPCRequest
    route: InboundModernRoute


async def modern_route(server: Server[Any], lifespan_state: Any, raw_headers: Iterable[tuple[str, str]],
                       message: Any, json_response: bool) -> ModernRoute | None:
    """The request and its envelope when the SDK's 2026-07-28 entry would dispatch it to its runner
    (`_streamable_http_modern.handle_modern_request`), else None: that entry then answers it, every
    refusal included. Its checks, in its order: the security middleware's Content-Type, Accept, a
    notification's shape, the request model, `subscriptions/listen`, duplicated routing headers,
    the inbound ladder, `Mcp-Param-*` headers against the tool's schema (the server's
    `get_tool_input_schema`, or its tools/list)."""
    headers = MultiDict((name.lower(), value) for name, value in raw_headers)
    if not await _secure(headers):
        return None
    has_json, has_sse = accepts(headers)
    if not has_json or not (json_response or has_sse):
        return None
    if not isinstance(message, dict) or "id" not in message:
        return None
    try:
        request = JSONRPCRequest.model_validate(message)
    except ValidationError:
        return None
    if request.method == "subscriptions/listen" or find_duplicated_routing_header(headers.items()) is not None:
        return None
    verdict = classify_inbound_request(message, headers=dict(headers))
    if isinstance(verdict, InboundLadderRejection):
        return None
    rejection = await modern_http._mcp_param_rejection(server, cast(Any, _HeadersOnly(headers)), request, verdict,
                                                        lifespan_state)
    if rejection is not None:
        return None
    return ModernRoute(request, verdict)


# -- the connection a request is served on -----------------------------------------------------

def handshake_connection() -> Connection:
    """A connection before its handshake, as the SDK's loop starts one (`Connection.for_loop`),
    without a back-channel: an answer in one JSON body has no room for server-initiated messages."""
    return Connection(_NO_CHANNEL, protocol_version=LATEST_HANDSHAKE_VERSION)


def session_connection(session_id: str, protocol_version: str, client_params: InitializeRequestParams) -> Connection:
    """A connection whose handshake is done (the session's recorded one), without a back-channel."""
    connection = Connection(_NO_CHANNEL, protocol_version=protocol_version, session_id=session_id,
                            client_params=client_params)
    connection.initialized.set()
    return connection


def modern_connection(route: ModernRoute) -> Connection:
    return Connection.from_envelope(route.route.protocol_version, route.route.client_info,
                                    route.route.client_capabilities)


Dispatcher = JSONRPCDispatcher[TransportContext]


def session_loop(read_stream: Any, write_stream: Any, *, session_id: str | None,
                 client_params: InitializeRequestParams | None,
                 protocol_version: str | None) -> tuple[Dispatcher, Connection]:
    """The dispatcher and connection the SDK's `serve_loop` builds over a transport's streams; with
    `client_params`, a connection whose handshake is already done (a parked or restored session).
    Built here rather than by `serve_loop` so that the registry can keep the dispatcher and ask it
    whether work is pending (`dispatcher_busy`)."""
    dispatcher: Dispatcher = JSONRPCDispatcher(read_stream, write_stream, inline_methods=frozenset({"initialize"}))
    if client_params is None:
        return dispatcher, Connection.for_loop(dispatcher, session_id=session_id)
    connection = Connection(dispatcher, session_id=session_id, client_params=client_params,
                            protocol_version=protocol_version or client_params.protocol_version)
    connection.initialized.set()
    return dispatcher, connection


def dispatcher_serving(dispatcher: Dispatcher | None) -> bool:
    """Whether the SDK's dispatcher still handles a client request (`_in_flight`, as in
    `dispatcher_busy`)."""
    return dispatcher is not None and bool(dispatcher._in_flight)


def dispatcher_busy(dispatcher: Dispatcher | None) -> bool:
    """Whether the SDK's dispatcher still handles a client request (its stream may have dropped,
    the client can resume it) or waits for the answer to a server-to-client request (sampling,
    elicitation, roots). Both live in private tables of `JSONRPCDispatcher` (mcp 2.3): they are
    the only record of that work, and parking or ending the session would lose it."""
    if dispatcher is None:
        return False
    return bool(dispatcher._in_flight or dispatcher._pending)


# -- one request through the SDK's runner --------------------------------------------------------

class _OneAnswer:
    """The dispatch context of a request answered in one JSON body: what the SDK's transports give
    a request in JSON-response mode. No server-initiated request can be answered, and a
    notification for the request (progress, logging) has nowhere to go, so it is dropped."""

    __slots__ = ("_cancel_requested", "request_id", "transport")
    message_metadata = ServerMessageMetadata(can_send_request=False)

    def __init__(self, transport: TransportContext, request_id: RequestId) -> None:
        self.transport = transport
        self.request_id = request_id
        self._cancel_requested: anyio.Event | None = None

    @property
    def cancel_requested(self) -> anyio.Event:
        # Made on first use: nothing sets it (a client cancels by closing the connection).
        if self._cancel_requested is None:
            self._cancel_requested = anyio.Event()
        return self._cancel_requested

    @property
    def can_send_request(self) -> bool:
        return False

    async def send_raw_request(self, method: str, params: Mapping[str, Any] | None,
                               opts: CallOptions | None = None) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None) -> None:
        log.debug("dropped %s: the answer is one JSON body", method)

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        return None


_SESSION_TRANSPORT = TransportContext(kind="jsonrpc", can_send_request=False)
"""What the SDK's session-era dispatcher tells a handler of a JSON-response transport."""


async def serve_request(server: Server[Any], lifespan_state: Any, connection: Connection, request: JSONRPCRequest,
                        *, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The request's result as the SDK's runner produces it (the version's params validation,
    `Server.middleware`, the handler, the version's result shaping); raises what the handler chain
    raises. `serve_one`, copied: its shielded, bounded unwinding of the connection's exit stack
    costs a cancel scope (a third of a small call's overhead), so it runs only when a handler or
    middleware pushed something onto the stack. `headers` (the 2026-07-28 entry passes them)
    marks a modern request."""
    transport = _SESSION_TRANSPORT if headers is None else TransportContext(
        kind="streamable-http", can_send_request=False, headers=headers)
    runner = runner_module.ServerRunner(server, connection, lifespan_state)
    try:
        return await runner.on_request(_OneAnswer(transport, request.id), request.method, request.params)
    finally:
        if cast(Any, connection.exit_stack)._exit_callbacks:
            await runner_module.aclose_shielded(connection)


def session_error(exc: Exception, method: str) -> ErrorData:
    """A handler chain's exception as the session-era dispatcher answers it
    (`JSONRPCDispatcher._handle_request`, copied): the shared ladder, else code 0 with the
    exception's text (the SDK's compatibility choice), logged."""
    error = handler_exception_to_error_data(exc)
    if error is None:
        log.exception("handler for %r raised", method)
        error = ErrorData(code=0, message=str(exc))
    return error


def session_error_body(request_id: RequestId, error: ErrorData) -> bytes:
    """The session-era transport's serialisation of an error (`model_dump_json`, exclude_unset)."""
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=error).model_dump_json(
        by_alias=True, exclude_unset=True).encode()


def modern_error(exc: Exception, request_id: RequestId) -> tuple[int, bytes]:
    """A 2026-07-28 handler chain's exception as that entry answers it: the error
    (`modern_error_data`), the HTTP status its table gives the code, the body as it writes it
    (`_write`)."""
    error = modern_error_data(exc)
    body = JSONRPCError(jsonrpc="2.0", id=request_id, error=error).model_dump(mode="json", by_alias=True,
                                                                              exclude_none=True)
    return ERROR_CODE_HTTP_STATUS.get(error.code, 200), json.dumps(body, separators=(",", ":")).encode()


def negotiated_version(params: Any) -> str:
    """The version the SDK's runner settles on for these `initialize` params (already accepted)."""
    return runner_module.ServerRunner._negotiate_initialize(params)[1]


def committed_handshake(connection: Connection) -> tuple[str, InitializeRequestParams] | None:
    """The version and client params the runner committed to `connection` when it answered
    `initialize` successfully (it commits only then), else None."""
    params = connection.client_params
    return None if params is None else (connection.protocol_version, params)


# -- what the SDK transports write -------------------------------------------------------------

_ENDPOINT_EVENT = re.compile(rb"event: endpoint\r?\ndata: [^\r\n]*session_id=([0-9a-f]{32})")


def sse_endpoint_session_id(chunk: bytes) -> str | None:
    """The session id `SseServerTransport.connect_sse` announces in its `endpoint` event (the
    query string of the messages URL), if `chunk` is that event."""
    found = _ENDPOINT_EVENT.search(chunk)
    return found.group(1).decode() if found else None


def initialize_succeeded(content_type: str, body: bytes) -> bool:
    """Whether the SDK transport's answer to `initialize` (a JSON body, or an SSE stream whose last
    message is the answer) is a result rather than an error. The SDK transport commits to 200
    before it knows, so only the message says whether a session was established."""
    if content_type.startswith("text/event-stream"):
        data = [line[5:].strip() for line in re.split(rb"\r\n|\r|\n", body) if line.startswith(b"data:")]
        data = [value for value in data if value]
        if not data:
            return False
        body = data[-1]
    try:
        message = json.loads(body)
    except ValueError:
        return False
    return isinstance(message, dict) and isinstance(message.get("result"), dict)


# -- rules copied from the SDK, fingerprinted --------------------------------------------------

def _source_of(qualified: str) -> str:
    module_name, _, attribute = qualified.partition(":")
    target: Any = {"runner": runner_module, "modern_http": modern_http,
                   "jsonrpc_dispatcher": inspect.getmodule(JSONRPCDispatcher),
                   "streamable_http": inspect.getmodule(StreamableHTTPServerTransport),
                   "sse": inspect.getmodule(SseServerTransport),
                   "connection": inspect.getmodule(Connection),
                   "transport_security": inspect.getmodule(type(_PROBE._security))}[module_name]
    for part in attribute.split("."):
        target = getattr(target, part)
    return inspect.getsource(target)


def fingerprint(qualified: str) -> str:
    return hashlib.sha256(_source_of(qualified).encode()).hexdigest()[:16]


COPIED_RULES: dict[str, tuple[str, str]] = {
    # SDK source: (its fingerprint, what here copies or relies on it)
    "jsonrpc_dispatcher:JSONRPCDispatcher._handle_request": (
        "393d7c8204a71c84", "session_error: the exception-to-wire ladder and its code-0 fallback"),
    "streamable_http:StreamableHTTPServerTransport._handle_post_request": (
        "cc4f2cd0c9e317a2", "session_request: the order of the checks before dispatch, JSON-response mode"),
    "streamable_http:StreamableHTTPServerTransport._handle_request": (
        "c7ca02ba9f5cfb06", "session_request: the security middleware's check comes first"),
    "transport_security:TransportSecurityMiddleware.validate_request": (
        "8b6eed18be27a6b6", "_secure: called on a headers-only stand-in for the starlette request"),
    "streamable_http:StreamableHTTPServerTransport._check_content_type": (
        "cbfd4348673d85d4", "session_request: called on a transport never connected (reads only the request)"),
    "modern_http:handle_modern_request": (
        "cde3cb6094dd5193", "modern_route: the order of the checks before dispatch"),
    "modern_http:_write": ("fe810e776acc5ffe", "modern_error: the body and status of an error"),
    "modern_http:_mcp_param_rejection": (
        "933612dde6d7622f", "modern_route: called with a headers-only stand-in for the starlette request"),
    "runner:serve_one": ("87bacb6b578bb41b", "serve_request: serve_one, closing the exit stack only when used"),
    "runner:serve_loop": ("5f6a87940f1365e7", "session_loop: the dispatcher and connection serve_loop builds"),
    "jsonrpc_dispatcher:JSONRPCDispatcher.__init__": (
        "63f8f92be6a1444a", "dispatcher_busy, dispatcher_serving: the private `_in_flight` and `_pending` tables"),
    "runner:ServerRunner._negotiate_initialize": ("1890b616f10a37c9", "negotiated_version: called"),
    "runner:ServerRunner._on_request": (
        "cb7dea37a3cb2fc9", "committed_handshake: initialize commits client params only on success"),
    "connection:Connection.from_envelope": (
        "0deb33de552bf8af", "handshake_connection, session_connection: the no-channel outbound `_NO_CHANNEL`"),
    "sse:SseServerTransport.connect_sse": ("6ecc018627177191", "sse_endpoint_session_id: the endpoint event"),
}


def installed_versions() -> dict[str, str]:
    return {name: installed_version(name) for name in TESTED_VERSIONS}

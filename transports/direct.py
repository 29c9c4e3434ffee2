"""Requests answered without the SDK transport: the hot path.

A `tools/call` needs none of the SDK transport's machinery (SSE response, event log, a task and
memory streams per request, a running transport per session); measured, that machinery is most of
the cost of a call (docs/performance.md). This path keeps everything else of the SDK: a request is
taken here only when the SDK's transport would dispatch it unchanged (its own checks, called
through transports.sdk), and it is then served by the SDK's own runner (`serve_one`: the
protocol version's params validation, `Server.middleware`, the server's registered handler, the
version's result shaping), on a connection carrying the session's negotiated version and client
params. Errors are mapped as that era's SDK entry maps them. What differs is only what the SDK
itself lets differ: the answer is one JSON body, as its transports write in JSON-response mode,
and so a server-initiated request or a notification tied to the request has no way to the client
(the memory tools send none). A session's connection here is not its SDK transport's: each
keeps its own `Connection.state`, and what a handler pushes on the exit stack is unwound when its
request ends.

Three entries, one per kind of request:
* `session_request` / `answer_session`: a request in a session (2025-03-26 to 2025-11-25).
* `initialize_request` / `initialize`: `initialize`. The session is recorded only once the runner
  has accepted the handshake, born parked (no SDK transport until a request needs one).
* `modern_request` / `answer_modern`: a 2026-07-28 request (no session), after the SDK's modern
  entry's whole inbound ladder.
Anything the SDK would answer otherwise (refusals, other methods, a re-`initialize` in a session)
goes to the SDK as before; tests/test_direct_differential.py compares the two paths.

A handler may hand over the largest values of its result already serialised (`prepared`): it
returns a stand-in model, and the fragments take the stand-ins' places in the body, unvalidated
and uncopied (a whole knowledge graph costs more to validate and dump through pydantic than
everything else in the call).
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web
from mcp_types import InitializeRequestParams, JSONRPCRequest
from pydantic import BaseModel

from transports import sdk

log = logging.getLogger(__name__)

Fragments = Mapping[tuple[str | int, ...], Sequence[bytes | memoryview]]
"""JSON values already serialised, by their path in a result: each as the byte strings it is the
concatenation of."""

DIRECT_METHODS = frozenset({"initialize", "tools/list", "tools/call", "resources/list", "resources/read",
                            "resources/subscribe", "resources/unsubscribe"})
"""What the memory server lets this path answer: methods whose handlers need no back-channel."""

_SEPARATE_WRITES_FROM = 256 * 1024
"""Fragments smaller than this in all are copied into one body: one write, one TCP segment."""
_COALESCE_BELOW = 16 * 1024
"""In a body written in parts, runs of parts smaller than this are copied into one write."""
_JSON = "application/json"


class _Sink:
    __slots__ = ("fragments",)

    def __init__(self) -> None:
        self.fragments: Fragments = {}


_sink: ContextVar[_Sink | None] = ContextVar("memory_mcp_direct_fragments", default=None)


Result = TypeVar("Result", bound=BaseModel)


def prepared(stand_in: Result, fragments: Fragments) -> Result | None:
    """For a handler whose result has large values already serialised: on this path, returns
    `stand_in` (the result with any valid value at each path in `fragments`) and has each fragment
    put in its stand-in's place once the result is shaped for the session's version (a fragment
    whose field that version drops is dropped with it). On the SDK's path, returns None: the
    handler returns its whole result, as any handler does."""
    sink = _sink.get()
    if sink is None:
        return None
    sink.fragments = fragments
    return stand_in


@dataclass(frozen=True, slots=True)
class Handshake:
    """An `initialize` the SDK's runner accepted: what the session is recorded with, and the answer."""

    protocol_version: str
    client_params: InitializeRequestParams
    raw_params: Mapping[str, Any] | None
    request_id: Any
    result: dict[str, Any]

    def response(self, headers: Mapping[str, str]) -> web.StreamResponse:
        return _respond(self.request_id, self.result, {}, headers)


class DirectPath:
    def __init__(self, server: sdk.Server[Any], lifespan_state: Callable[[], Any], *, json_response: bool,
                 methods: frozenset[str]) -> None:
        self._server = server
        self._lifespan_state = lifespan_state
        self._json_response = json_response
        self.methods = methods
        """The methods this path may answer; empty sends everything to the SDK."""
        self._connections: weakref.WeakKeyDictionary[object, sdk.Connection] = weakref.WeakKeyDictionary()

    # -- in a session ------------------------------------------------------------------------

    async def session_request(self, request: web.Request, message: Any) -> JSONRPCRequest | None:
        if not isinstance(message, dict) or message.get("method") == "initialize" \
                or message.get("method") not in self.methods:
            return None
        return await sdk.session_request(request.headers, message, self._json_response)

    async def answer_session(self, request: JSONRPCRequest, session: object, session_id: str, protocol_version: str,
                             client_params: InitializeRequestParams, headers: Mapping[str, str]) -> web.StreamResponse:
        """Answer `request` in `session` (the registry's object, held weakly: its connection lives
        as long as it does, as the SDK's lives as long as its transport)."""
        connection = self._connections.get(session)
        if connection is None or connection.protocol_version != protocol_version \
                or connection.client_params is not client_params:
            connection = self._connections[session] = sdk.session_connection(session_id, protocol_version,
                                                                             client_params)
        sink = _Sink()
        token = _sink.set(sink)
        try:
            result = await sdk.serve_request(self._server, self._lifespan_state(), connection, request)
        except Exception as exc:
            body = sdk.session_error_body(request.id, sdk.session_error(exc, request.method))
            return web.Response(body=body, content_type=_JSON, headers=headers)
        finally:
            _sink.reset(token)
        return _respond(request.id, result, sink.fragments, headers)

    # -- opening a session -------------------------------------------------------------------

    async def initialize_request(self, request: web.Request, message: Any) -> JSONRPCRequest | None:
        if "initialize" not in self.methods or not isinstance(message, dict) or message.get("method") != "initialize":
            return None
        return await sdk.session_request(request.headers, message, self._json_response)

    async def initialize(self, request: JSONRPCRequest) -> Handshake | web.StreamResponse:
        """The handshake on a connection of its own, as the SDK's loop starts one; a `Handshake`
        when the runner accepted it, else the error answer (no session exists for it)."""
        connection = sdk.handshake_connection()
        try:
            result = await sdk.serve_request(self._server, self._lifespan_state(), connection, request)
        except Exception as exc:
            body = sdk.session_error_body(request.id, sdk.session_error(exc, request.method))
            return web.Response(body=body, content_type=_JSON)
        committed = sdk.committed_handshake(connection)
        if committed is None:  # the runner commits whenever it answers; kept total all the same
            error = sdk.ErrorData(code=-32603, message="initialize was answered but not committed")
            return web.Response(body=sdk.session_error_body(request.id, error), content_type=_JSON)
        return Handshake(committed[0], committed[1], request.params, request.id, result)

    # -- 2026-07-28: no session --------------------------------------------------------------

    async def modern_request(self, request: web.Request, message: Any) -> sdk.ModernRoute | None:
        if not isinstance(message, dict) or message.get("method") == "initialize" \
                or message.get("method") not in self.methods:
            return None
        return await sdk.modern_route(self._server, self._lifespan_state(), request.headers.items(), message,
                                      self._json_response)

    async def answer_modern(self, route: sdk.ModernRoute, request: web.Request) -> web.StreamResponse:
        connection = sdk.modern_connection(route)
        sink = _Sink()
        token = _sink.set(sink)
        try:
            result = await sdk.serve_request(self._server, self._lifespan_state(), connection, route.request,
                                             headers=request.headers)
        except Exception as exc:
            status, body = sdk.modern_error(exc, route.request.id)
            return web.Response(body=body, status=status, content_type=_JSON)
        finally:
            _sink.reset(token)
        return _respond(route.request.id, result, sink.fragments, {})


# -- writing the answer --------------------------------------------------------------------------

def _dump(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        # orjson stops at 64-bit integers; JSON has no such limit, and the SDK answers an id of any
        # size. Escaped to ASCII, so that no string can fail to encode either.
        return json.dumps(value, separators=(",", ":")).encode()


def _respond(request_id: Any, result: dict[str, Any], fragments: Fragments,
             headers: Mapping[str, str]) -> web.StreamResponse:
    head = b'{"jsonrpc":"2.0","id":' + _dump(request_id) + b',"result":'
    if not fragments:
        return web.Response(body=head + _dump(result) + b"}", content_type=_JSON, headers=headers)
    parts = [head, *spliced(result, fragments), b"}"]
    if sum(map(len, parts)) < _SEPARATE_WRITES_FROM:
        return web.Response(body=b"".join(parts), content_type=_JSON, headers=headers)
    return _PartsResponse(parts, headers)


def spliced(result: dict[str, Any], fragments: Fragments) -> list[bytes | memoryview]:
    """`result` as JSON, with each fragment in its stand-in's place: the byte strings that make the
    body, in order.

    Each placed fragment goes in as a marker, byte 0x01, its index in decimal, byte 0x02: orjson
    escapes control characters in strings and writes no whitespace, so a raw 0x01 in its output
    can only begin a marker, and the markers hold any number of fragments."""
    placed: list[Sequence[bytes | memoryview]] = []
    paths = []
    for path, fragment in fragments.items():
        if _replace(result, path, orjson.Fragment(b"\x01%d\x02" % len(placed))):
            placed.append(fragment)
            paths.append(path)
    try:
        serialized = orjson.dumps(result)
    except TypeError:
        # An integer beyond 64 bits in the result: `_dump` then writes it, with the fragments parsed.
        for path, fragment in zip(paths, placed, strict=True):
            _replace(result, path, orjson.loads(b"".join(fragment)))
        return [_dump(result)]
    if not placed:
        return [serialized]
    pieces = serialized.split(b"\x01")
    parts: list[bytes | memoryview] = [pieces[0]]
    for piece in pieces[1:]:
        end = piece.index(b"\x02")
        parts += placed[int(piece[:end])]
        parts.append(piece[end + 1:])
    return parts


def _replace(shaped: Any, path: tuple[str | int, ...], value: Any) -> bool:
    """Put `value` at `path` in `shaped`, unless the shaping dropped something along the path."""
    *parents, last = path
    try:
        for step in parents:
            shaped = shaped[step]
        shaped[last]
    except (KeyError, IndexError, TypeError):
        return False
    shaped[last] = value
    return True


class _PartsResponse(web.StreamResponse):
    """A JSON response whose body is written as a sequence of byte strings; only runs of small ones
    are copied, into one write each, so that a body of many pieces is not as many system calls."""

    def __init__(self, parts: list[bytes | memoryview], headers: Mapping[str, str]) -> None:
        super().__init__(headers=headers)
        self.content_type = _JSON
        self.content_length = sum(map(len, parts))
        self._parts = parts

    async def write_eof(self, data: bytes = b"") -> None:
        parts, self._parts = self._parts, []
        run: list[bytes | memoryview] = []
        run_size = 0
        for part in parts:
            if len(part) >= _COALESCE_BELOW:
                if run:
                    await self.write(b"".join(run))
                    run, run_size = [], 0
                await self.write(part)
                continue
            run.append(part)
            run_size += len(part)
            if run_size >= _COALESCE_BELOW:
                await self.write(b"".join(run))
                run, run_size = [], 0
        await super().write_eof(b"".join(run) + data)

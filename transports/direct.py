"""Requests answered without the SDK transport: the hot path of an established session.

A `tools/call` or `tools/list` in a session whose client accepts JSON needs none of the SDK
transport's machinery (SSE response, event log, per-request task and stream); measured, that
machinery is most of the cost of a call (docs/performance.md). The server supplies the handlers
(the same functions its MCP server uses), and the answer is shaped exactly as the SDK shapes it:
the result model dumped by alias, then sieved to the session's protocol version by
`mcp_types.methods.serialize_server_result`. A handler may also return a `Prepared` result, whose
largest values arrive already serialised. `initialize` is answered here too (`initialize_handler`),
so that opening a session starts no SDK transport at all: the session is born parked, as a
restored one is, and its transport starts only if a later request needs it. The same handlers
answer 2026-07-28 (stateless) requests too (`answer_modern`), which Claude Code sends: the SDK's
stateless entry took 200 ms for a 10,000-entity read_graph, this path 5 ms. Anything else (other
methods, streams, clients that only accept SSE, requests the SDK would refuse) goes to the SDK
transport as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web
from mcp.server.caching import apply_cache_hint
from mcp.server.lowlevel.server import Server
from mcp.server.runner import modern_error_data
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types import (
    CORE_RESULT_TYPES,
    SERVER_INFO_META_KEY,
    CacheableResult,
    Implementation,
    InitializeRequestParams,
    InitializeResult,
    methods,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)



Fragments = Mapping[tuple[str | int, ...], Sequence[bytes | memoryview]]
"""JSON values already serialised, by their path in a result: each as the byte strings it is the
concatenation of."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A result some of whose values are already JSON.

    `model` holds a stand-in (any valid value) at each path in `fragments`. The model is shaped for
    the session's protocol version like any result, then each fragment (a JSON value, as the byte
    strings it is the concatenation of) takes its stand-in's place, if that version has the field.
    Why: a multi-megabyte value (a whole knowledge graph) costs more to validate and dump through
    pydantic than everything else in the call, and the handler may have its JSON at hand anyway,
    in pieces. The pieces are not even copied into one body when they are large: the response is
    written as the bytes between the fragments and the fragments' own pieces.
    """

    model: BaseModel
    fragments: Fragments


DirectHandler = Callable[[Mapping[str, Any] | None], Awaitable[BaseModel | Prepared]]
"""Validates the request's params and returns the result; raises `MCPError` for a JSON-RPC
error, `ValidationError` for invalid params."""

INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
_SEPARATE_WRITES_FROM = 256 * 1024
"""Fragments smaller than this in all are copied into one body: one write, one TCP segment."""
_COALESCE_BELOW = 16 * 1024
"""In a body written in parts, runs of parts smaller than this are copied into one write."""


def initialize_handler(server: Server[Any]) -> DirectHandler:
    """`initialize`, answered as the SDK's runner answers it (`ServerRunner._handle_initialize`):
    the requested version if it is one of the handshake era's, else the latest, and the server's
    initialization options. Only for a request the SDK would accept (`initialize_acceptable`);
    the endpoint records the session itself, parked from the start."""

    async def initialize(params: Mapping[str, Any] | None) -> BaseModel:
        init = initialize_params(params)
        opts = server.create_initialization_options()
        return InitializeResult(
            protocol_version=negotiated_version(init),
            capabilities=opts.capabilities,
            server_info=Implementation(name=opts.server_name, title=opts.title, description=opts.description,
                                       version=opts.server_version, website_url=opts.website_url, icons=opts.icons),
            instructions=opts.instructions,
        )

    return initialize


def initialize_params(params: Mapping[str, Any] | None) -> InitializeRequestParams:
    """The params, validated as the SDK validates them before a session has a version (the runner
    starts every connection at the latest handshake version); raises `ValidationError`."""
    methods.validate_client_request("initialize", LATEST_HANDSHAKE_VERSION, params)
    return InitializeRequestParams.model_validate(params or {}, by_name=False)


def negotiated_version(init: InitializeRequestParams) -> str:
    requested = init.protocol_version
    return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


def initialize_acceptable(request: web.Request, json_response: bool) -> bool:
    """Whether the SDK transport would take this POST at all: its Accept rule (both JSON and SSE
    unless it answers in JSON only, wildcards per RFC 7231) and Content-Type rule. A request that
    fails them goes to the SDK transport, which owns those refusals (406, 415)."""
    # The SDK's own Accept rule; it reads only `request.headers`, which aiohttp's request has too.
    has_json, has_sse = check_accept_headers(cast(Any, request))
    content_types = [t.strip() for t in request.headers.get("Content-Type", "").split(";")[0].split(",")]
    return has_json and (has_sse or json_response) and "application/json" in content_types


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
                 headers: Mapping[str, str]) -> web.StreamResponse:
    method, request_id = message["method"], message["id"]
    try:
        model, fragments = _unpack(await handler(message.get("params")))
        dumped = model.model_dump(by_alias=True, mode="json", exclude_none=True)
        return _respond(request_id, methods.serialize_server_result(method, version, dumped), fragments, headers)
    except MCPError as exc:
        body = {"jsonrpc": "2.0", "id": request_id, "error": exc.error.model_dump(by_alias=True, exclude_none=True)}
    except ValidationError:
        body = {"jsonrpc": "2.0", "id": request_id,
                "error": {"code": INVALID_PARAMS, "message": "Invalid request parameters", "data": ""}}
    except Exception:
        log.exception("%s failed", method)
        body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": INTERNAL_ERROR, "message": "Internal error"}}
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def modern_acceptable(request: web.Request, message: Mapping[str, Any], json_response: bool) -> str | None:
    """For a 2026-07-28 (stateless) request: the envelope's protocol version when the SDK's modern
    entry would dispatch it to its handler unchanged, else None (the SDK then answers it, every
    refusal included). The checks are the SDK's own (`mcp.server._streamable_http_modern`):
    Accept, duplicated routing headers, the envelope and header ladder, the version's params
    surface. `Mcp-Param-*` headers are left to the SDK; without them there is nothing to check,
    as no tool of ours declares header parameters (tests/test_direct_path.py)."""
    has_json, has_sse = check_accept_headers(cast(Any, request))
    if not has_json or not (json_response or has_sse):
        return None
    if find_duplicated_routing_header(request.headers.items()) is not None:
        return None
    if any(name.lower().startswith("mcp-param-") for name in request.headers):
        return None
    verdict = classify_inbound_request(message, headers={k.lower(): v for k, v in request.headers.items()})
    if isinstance(verdict, InboundLadderRejection):
        return None
    try:
        methods.validate_client_request(message["method"], verdict.protocol_version, message.get("params"))
    except (ValidationError, KeyError):
        return None
    return verdict.protocol_version


async def answer_modern(handler: DirectHandler, message: Mapping[str, Any], version: str,
                        server: Server[Any]) -> web.StreamResponse:
    """`answer` for the 2026-07-28 era, shaped as the SDK's runner shapes a modern result
    (`ServerRunner._serialize`: cache hints, the version's sieve, `resultType`, the serverInfo
    stamp) and failing as its modern entry fails (`modern_error_data`, the spec's HTTP status
    per error code). No session: nothing but the request is read."""
    method, request_id = message["method"], message["id"]
    try:
        model, fragments = _unpack(await handler(message.get("params")))
        return _respond(request_id, _shape_modern(server, method, version, model), fragments, {})
    except Exception as exc:
        error = modern_error_data(exc)
        wire_error = error.model_dump(mode="json", by_alias=True, exclude_none=True)
        return web.Response(body=orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": wire_error}),
                            status=ERROR_CODE_HTTP_STATUS.get(error.code, 200), content_type="application/json")


def _shape_modern(server: Server[Any], method: str, version: str, model: BaseModel) -> dict[str, Any]:
    hint = server.cache_hints.get(method)
    if hint is not None and isinstance(model, CacheableResult):
        model = apply_cache_hint(model, hint)
    dumped = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    result_type = dumped.get("resultType")
    if not isinstance(result_type, str) or result_type in CORE_RESULT_TYPES:
        dumped = methods.serialize_server_result(method, version, dumped)
    dumped.setdefault("resultType", "complete")
    meta = dumped.get("_meta")
    if meta is None:
        dumped["_meta"] = {SERVER_INFO_META_KEY: server.server_info_stamp}
    elif isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
        dumped["_meta"] = {**meta, SERVER_INFO_META_KEY: server.server_info_stamp}
    return dumped


def _unpack(result: BaseModel | Prepared) -> tuple[BaseModel, Fragments]:
    return (result.model, result.fragments) if isinstance(result, Prepared) else (result, {})


def _respond(request_id: Any, shaped: dict[str, Any],
             fragments: Fragments,
             headers: Mapping[str, str]) -> web.StreamResponse:
    body = {"jsonrpc": "2.0", "id": request_id, "result": shaped}
    if fragments:
        return _with_fragments(body, fragments, headers)
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def _with_fragments(body: dict[str, Any], fragments: Fragments,
                    headers: Mapping[str, str]) -> web.StreamResponse:
    # Each fragment goes in as a one-byte marker, a control character: orjson escapes those in
    # strings and writes no whitespace, so a raw one in its output can only be a marker. The body
    # is then the output cut at the markers, with the fragments in between.
    placed: dict[bytes, Sequence[bytes | memoryview]] = {}
    for path, fragment in fragments.items():
        mark = bytes([1 + len(placed)])
        if _replace(body["result"], path, orjson.Fragment(mark)):
            placed[mark] = fragment
    serialized = orjson.dumps(body)
    parts: list[bytes | memoryview] = []
    start = 0
    for at, mark in sorted((serialized.index(mark), mark) for mark in placed):
        parts.append(serialized[start:at])
        parts += placed[mark]
        start = at + 1
    parts.append(serialized[start:])
    if sum(len(part) for fragment in placed.values() for part in fragment) < _SEPARATE_WRITES_FROM:
        return web.Response(body=b"".join(parts), content_type="application/json", headers=headers)
    return _PartsResponse(parts, headers)


class _PartsResponse(web.StreamResponse):
    """A JSON response whose body is written as a sequence of byte strings; only runs of small ones
    are copied, into one write each, so that a body of many pieces is not as many system calls."""

    def __init__(self, parts: list[bytes | memoryview], headers: Mapping[str, str]) -> None:
        super().__init__(headers=headers)
        self.content_type = "application/json"
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


def _replace(shaped: Any, path: tuple[str | int, ...], value: orjson.Fragment) -> bool:
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

"""What the server writes to its log, and what it must never write there.

Every request gets an id (`request_ids`): random, or the one a trusted proxy sent in
`X-Request-Id` when it is a plain token (`REQUEST_ID_PATTERN`). It is returned in `X-Request-Id`,
ends the request's access-log line, and is attached to every other line logged while the request
is handled (`request_id` in JSON, `[id]` in text), so that one request's lines can be found
together and matched with what a client or proxy saw.

Two things aiohttp does by default that a server holding credentials cannot keep:

* Its access log format `%r` is the request line, query string included. No credential of ours
  travels in a URL, but clients and attackers choose their URLs: a misbehaving client's
  `?access_token=...`, a sign-in provider's `?code=...` on a callback, the /authorize request
  itself. `AccessLogger` logs the path and whether there was a query, never the query, and no
  header but the MCP session id's first 8 characters (never a token, cookie or body).
* A request its parser refuses (a header or request line over 8190 bytes, a malformed line) is
  logged at ERROR with a traceback and the first 100 bytes of the offending line, which may be an
  `Authorization` header. Anyone can send those, so they would also let anyone fill the error log.
  `MalformedRequestFilter` turns each into one INFO line naming the address and the kind of
  error, without the bytes. The client still gets aiohttp's 400.

And one thing third-party libraries do: at DEBUG, the mcp SDK, sse-starlette, httpx and others
log whole messages, that is users' memory and tokens. `--log-level debug` therefore applies to
this project's loggers only; every other logger stays at INFO or above.

`log_format` `json` writes every line (access log included) as one JSON object: `time` (UTC,
ISO 8601), `level`, `logger`, `message`, `request_id` when there is one, `exception` for a
traceback, and on access-log lines the fields of the line (`client`, `method`, `path`, `status`,
`bytes`, `seconds`, `session`).
"""

from __future__ import annotations

import atexit
import copy
import ipaddress
import logging
import logging.handlers
import os
import queue
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar, Token
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.typedefs import Middleware

from auth.http import client_address

ACCESS_LOGGER = "aiohttp.access"
SERVER_LOGGER = "aiohttp.server"
# This project's loggers (module names under its packages, and the CLI's): the only ones that may
# go below INFO. An allow-list, so that a library added later cannot log bodies at DEBUG either.
OWN_LOGGERS = ("auth", "server", "transports", "memory_mcp")

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("memory_mcp_request_id", str)
# What a trusted proxy's id may look like to be reused (UUIDs, hex, base64): nothing that could
# break a log line or smuggle text into it.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
# The id of the request being handled, for the other lines it logs.
current_request_id: ContextVar[str | None] = ContextVar("memory_mcp_request_id", default=None)

SESSION_HEADER = "Mcp-Session-Id"
SESSION_PREFIX = 8
_SESSION_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
PATH_MAX = 256

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


_PLAIN = (str, int, float, bool, type(None))


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread: a message whose arguments are not plain values is
    merged with them (they may change meanwhile); everything else, the request id included, is
    left for the output's formatter."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        args = record.args
        # Arguments of plain values are kept (the JSON access line reads them as fields); any
        # other object is rendered now, as it may change before the writer thread formats it.
        if not (isinstance(args, tuple) and all(isinstance(a, _PLAIN) for a in args)):
            record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def configure(level: str, log_format: str = "text", *, several_processes: bool = False) -> None:
    """`several_processes` (`serve --workers N`): every line names the process that wrote it."""
    wanted = logging.getLevelNamesMapping()[level.upper()]
    output = logging.StreamHandler()
    output.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter(several_processes))
    # Writing to stderr can block (a full pipe, a slow journald): a log call on the event loop
    # must not. Records go through an unbounded queue to one thread that writes them. The request
    # id is read where the record is made (the filter runs on the queue's side, in the caller).
    handler = _Enqueue(queue.SimpleQueue())
    handler.addFilter(RequestIdFilter())
    listener = logging.handlers.QueueListener(handler.queue, output)
    listener.start()
    atexit.register(listener.stop)
    logging.basicConfig(level=max(wanted, logging.INFO), handlers=[handler])
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(wanted)
    server_logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in server_logger.filters):
        server_logger.addFilter(MalformedRequestFilter())


# -- request ids -------------------------------------------------------------------------------


def new_request_id() -> str:
    return os.urandom(8).hex()


Observe = Callable[[web.Request, int, float], None]
"""Told each answered request's status and seconds (`server.metrics`)."""


def request_ids(trusted_proxies: Sequence[IPNetwork], observe: Observe | None = None) -> Middleware:
    """Give each request its id (module docstring), and with `observe`, time it. Outermost, so
    that every later middleware's and handler's lines carry the id and the time is the whole
    request's; one middleware for both, since each layer costs every request."""

    def proxied(request: web.Request) -> str | None:
        sent = request.headers.get(REQUEST_ID_HEADER)
        if sent is None or REQUEST_ID_PATTERN.fullmatch(sent) is None:
            return None
        try:
            peer = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return None
        return sent if any(peer in network for network in trusted_proxies) else None

    def begin(request: web.Request) -> Token[str | None]:
        request_id = (proxied(request) if trusted_proxies else None) or new_request_id()
        request[REQUEST_ID] = request_id
        return current_request_id.set(request_id)

    @web.middleware
    async def with_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = begin(request)
        try:
            return await handler(request)
        finally:
            # aiohttp serves a keep-alive connection's requests in one task: the next one must not
            # inherit this id.
            current_request_id.reset(token)

    if observe is None:
        return with_ids
    clock = time.perf_counter

    @web.middleware
    async def with_ids_timed(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = begin(request)
        start = clock()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            observe(request, exc.status, clock() - start)
            raise
        except Exception:
            observe(request, 500, clock() - start)  # what aiohttp answers for it
            raise
        finally:
            current_request_id.reset(token)
        observe(request, response.status, clock() - start)
        return response

    return with_ids_timed


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """An `on_response_prepare` signal: every response, streamed ones included, carries the id."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


# -- access log --------------------------------------------------------------------------------


def _session_prefix(request: web.BaseRequest, response: web.StreamResponse) -> str | None:
    session_id = request.headers.get(SESSION_HEADER) or response.headers.get(SESSION_HEADER)
    if session_id is None and request.path.startswith("/messages"):
        # The 2024-11-05 transport names its session in the query, which is never logged whole.
        session_id = request.rel_url.query.get("session_id")
    if not session_id:
        return None
    prefix = session_id[:SESSION_PREFIX]
    return prefix if _SESSION_PREFIX_PATTERN.fullmatch(prefix) else None


ACCESS_FORMAT = '%s "%s %s HTTP/%d.%d" %d %d %.6fs id=%s'
ACCESS_FORMAT_SESSION = ACCESS_FORMAT + " session=%s…"
# The fields of an access line, in the order of its args (the JSON format names them).
ACCESS_FIELDS = ("client", "method", "path", "http_major", "http_minor", "status", "bytes", "seconds", "request_id",
                 "session")


class AccessLogger(AbstractAccessLogger):
    """`address "METHOD /path[?…] HTTP/x.y" status bytes seconds id=<request id>[ session=<prefix>…]`:
    the path as sent (still percent-encoded, so it cannot break a log line; cut at `PATH_MAX`),
    the query only as `?…`. The fields are the record's args, which `JSONFormatter` names; no
    `extra`, which would cost every request more than the rest of the line."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        url = request.rel_url
        path = url.raw_path if len(url.raw_path) <= PATH_MAX else url.raw_path[:PATH_MAX] + "…"
        if url.raw_query_string:
            path += "?…"
        session = _session_prefix(request, response)
        args = (client_address(request), request.method[:32], path, request.version.major, request.version.minor,
                response.status, response.body_length, time, request.get(REQUEST_ID) or "-")
        if session is None:
            self.logger.info(ACCESS_FORMAT, *args)
        else:
            self.logger.info(ACCESS_FORMAT_SESSION, *args, session)


# -- formats -----------------------------------------------------------------------------------


def _is_access(record: logging.LogRecord) -> bool:
    return record.msg is ACCESS_FORMAT or record.msg is ACCESS_FORMAT_SESSION


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being handled (`record.request_id`), at the
    moment it is logged: a handler's filter, so that it runs in the request's context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        return True


# A session id in another library's message (the SDK's "Terminating session: <id>", redis-py's
# debug lines about pub/sub messages) is cut to the prefix our own lines show: it is not a
# credential, but with a stolen token it names a live session. Ids are `secrets.token_urlsafe(32)`.
_SESSION_ID = re.compile(rf"(?<![A-Za-z0-9_-])([A-Za-z0-9_-]{{{SESSION_PREFIX}}})[A-Za-z0-9_-]{{{43 - SESSION_PREFIX}}}"
                         r"(?![A-Za-z0-9_-])")


def message(record: logging.LogRecord) -> str:
    """The record's message, as written: other libraries' with session ids cut."""
    text = record.getMessage()
    if record.name.partition(".")[0] in OWN_LOGGERS:
        return text
    return _SESSION_ID.sub("\\1…", text)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id]: message` (no `[...]` outside a request, nor on access-log
    lines, which end with the id)."""

    def __init__(self, several_processes: bool = False) -> None:
        process = "[%(process)d]" if several_processes else ""
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{process}%(request_tag)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = message(record)
        return super().formatMessage(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per line (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message(record),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if _is_access(record) and isinstance(record.args, tuple):
            fields: dict[str, Any] = dict(zip(ACCESS_FIELDS, record.args, strict=False))
            fields["seconds"] = round(fields["seconds"], 6)
            del fields["http_major"], fields["http_minor"]
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class MalformedRequestFilter(logging.Filter):
    """See the module docstring. Other errors (a handler's own exception: a bug) keep their
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        what = ("a request line or header over the size limit" if isinstance(exc, LineTooLong)
                else f"malformed HTTP ({type(exc).__name__})")
        record.msg, record.args = "refused a request from %s: %s; answered %d", (remote, what, exc.code)
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.exc_info, record.exc_text = None, None
        return True

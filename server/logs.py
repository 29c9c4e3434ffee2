"""What the server writes to its log, and what it must never write there.

Two things aiohttp does by default that a server holding credentials cannot keep:

* Its access log format `%r` is the request line, query string included. No credential of ours
  travels in a URL, but clients and attackers choose their URLs: a misbehaving client's
  `?access_token=...`, a sign-in provider's `?code=...` on a callback. `AccessLogger` logs the
  path and whether there was a query, never the query.
* A request its parser refuses (a header or request line over 8190 bytes, a malformed line) is
  logged at ERROR with a traceback and the first 100 bytes of the offending line, which may be an
  `Authorization` header. Anyone can send those, so they would also let anyone fill the error log.
  `MalformedRequestFilter` turns each into one INFO line naming the address and the kind of
  error, without the bytes. The client still gets aiohttp's 400.

And one thing third-party libraries do: at DEBUG, the mcp SDK, sse-starlette, httpx and others
log whole messages, that is users' memory and tokens. `--log-level debug` therefore applies to
this project's loggers only; every other logger stays at INFO or above.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from auth.http import client_address

ACCESS_LOGGER = "aiohttp.access"
SERVER_LOGGER = "aiohttp.server"
# This project's loggers (module names under its packages, and the CLI's): the only ones that may
# go below INFO. An allow-list, so that a library added later cannot log bodies at DEBUG either.
OWN_LOGGERS = ("auth", "server", "transports", "memory_mcp")


def configure(level: str, *, several_processes: bool = False) -> None:
    """`several_processes` (`serve --workers N`): every line names the process that wrote it."""
    wanted = logging.getLevelNamesMapping()[level.upper()]
    process = "[%(process)d]" if several_processes else ""
    logging.basicConfig(level=max(wanted, logging.INFO),
                        format=f"%(asctime)s %(levelname)s %(name)s{process}: %(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(wanted)
    server_logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in server_logger.filters):
        server_logger.addFilter(MalformedRequestFilter())


class AccessLogger(AbstractAccessLogger):
    """`address "METHOD /path[?…] HTTP/x.y" status bytes seconds`: the path as sent (still
    percent-encoded, so it cannot break a log line), the query only as `?…`."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        url = request.rel_url
        query = "?…" if url.raw_query_string else ""
        self.logger.info('%s "%s %s%s HTTP/%d.%d" %d %d %.6fs', client_address(request), request.method,
                         url.raw_path, query, request.version.major, request.version.minor, response.status,
                         response.body_length, time)


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

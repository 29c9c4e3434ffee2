"""How long a client may take to send a request, and how many connections it may hold.

Without these, anyone can hold the server's connections for ever: send headers and then a body
slowly (or never), or open connections and send nothing; about a thousand of them exhaust the
process's file descriptors and every other request fails. Three bounds, for every endpoint alike:

* Request headers, and an idle keep-alive connection: `header_read_timeout` seconds (aiohttp's
  keep-alive timer, which also runs from the moment a connection opens and closes a connection
  whose request is still incomplete when it fires).
* A request body: `body_read_timeout` seconds from the headers to its last byte, whatever reads
  it (`body_deadline`, one middleware for every handler). A late body fails the read with
  `BodyTimeout`; the client gets 408 and the connection closes.
* Connections: at most `max_connections` (`LimitedRunner`). At the limit, a new connection first
  takes the place of the oldest one that is between requests (idle keep-alive, or still sending
  headers); when every connection is busy with a request, the new one gets a bare 503 and is
  closed at once, so that established requests keep their resources.

Each connection dropped for these reasons is at most one short log line, never a traceback or
the bytes received; refusals at the connection limit are summed up at most once every
`REFUSAL_LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from auth.http import client_address
from server.logs import AccessLogger

log = logging.getLogger(__name__)

# File descriptors kept for everything but client connections: listening sockets, SQLite files
# and their WAL, argon2 and rate-limit threads, outbound metadata-document fetches, logs.
RESERVED_FDS = 128
REFUSAL_LOG_INTERVAL = 10.0
# The least aiohttp waits for handlers still running after the shutdown window, and then again
# for them to end once cancelled.
LAST_WAIT = 1.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
            b"Retry-After: 1\r\n\r\n")


class BodyTimeout(TimeoutError):
    """The request body was not received within `body_read_timeout`. A TimeoutError: aiohttp
    treats it as the end of a body it no longer waits for, not as a handler's bug."""


def open_files_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (the soft default, often 1024, is a
    leftover of select(); the event loop uses epoll). Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections(open_files: int) -> int:
    return max(16, min(10_000, open_files - RESERVED_FDS))


@dataclass(eq=False)
class Connections:
    """The connection limit's bookkeeping, shared by `LimitedRunner`'s protocol factory and the
    `body_deadline` middleware (which says when a connection is busy with a request)."""

    max_connections: int
    header_read_timeout: float
    body_read_timeout: float
    # Open connections in the order they last became idle (dicts keep insertion order): the
    # first idle one is the one to give up at the limit.
    _idle: dict[RequestHandler, None] = field(default_factory=dict)
    _busy: set[RequestHandler] = field(default_factory=set)
    _refused: int = 0
    _refusal_logged: float = 0.0
    drain_deadline: float | None = None
    """At shutdown (`LimitedRunner.shutdown`): the event-loop time by which requests in flight
    must have finished."""

    def __len__(self) -> int:
        return len(self._idle) + len(self._busy)

    @property
    def busy_count(self) -> int:
        """Connections with a request in progress."""
        return len(self._busy)

    def opened(self, handler: RequestHandler, transport: asyncio.Transport) -> bool:
        """Whether the new connection may stay (and make room for it if one can be given up)."""
        if len(self) >= self.max_connections:
            if not self._idle:
                self._refuse(transport)
                return False
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            oldest.force_close()
        self._idle[handler] = None
        return True

    def closed(self, handler: RequestHandler) -> None:
        self._idle.pop(handler, None)
        self._busy.discard(handler)

    def busy(self, handler: RequestHandler) -> None:
        if handler in self._idle:
            del self._idle[handler]
            self._busy.add(handler)

    def idle(self, handler: RequestHandler) -> None:
        if handler in self._busy:
            self._busy.discard(handler)
            self._idle[handler] = None

    def _refuse(self, transport: asyncio.Transport) -> None:
        transport.write(_REFUSED)
        transport.close()
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            log.warning("refused %d connection(s): max_connections (%d) are all busy with requests",
                        self._refused, self.max_connections)
            self._refused, self._refusal_logged = 0, now


CONNECTIONS = web.AppKey("memory_mcp_connections", Connections)


class _LimitedServer(Server):
    def __init__(self, connections: Connections, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = connections

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if not self._limits.opened(handler, transport):
            handler.force_close()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._limits.closed(handler)
        super().connection_lost(handler, exc)


class LimitedRunner(web.AppRunner):
    """An `AppRunner` that applies the app's `Connections` (installed by `install`): the
    connection limit, the header deadline as aiohttp's keep-alive timeout, and one shutdown window.
    Its access log is the server's (`server.logs.AccessLogger`) unless told otherwise.

    aiohttp's own shutdown gives handlers `shutdown_timeout`, cancels them, and gives them as long
    again, after `on_shutdown` however long that took. Here `shutdown_timeout` is one window that
    starts when shutdown does: `on_shutdown` handlers read its end (`Connections.drain_deadline`),
    and aiohttp's two waits get what is left of it (at least `LAST_WAIT`). Shutdown then takes at
    most about twice `shutdown_timeout`, whatever the handlers do."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        limits = app[CONNECTIONS]
        kwargs["keepalive_timeout"] = limits.header_read_timeout
        self._window: float = kwargs.get("shutdown_timeout", 60.0)
        kwargs.setdefault("access_log_class", AccessLogger)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> Server:
        made = await super()._make_server()
        # The same server, as a subclass: what aiohttp built it from (handler, request factory,
        # handler options) is passed on as is.
        options = {k: v for k, v in self._kwargs.items() if k != "handler_cancellation"}
        return _LimitedServer(self.app[CONNECTIONS], made.request_handler, request_factory=made.request_factory,
                              handler_cancellation=made.handler_cancellation, **options)

    async def shutdown(self) -> None:
        """Called by `cleanup` once the sites stopped accepting and idle connections closed."""
        loop = asyncio.get_running_loop()
        connections = self.app[CONNECTIONS]
        deadline = connections.drain_deadline = loop.time() + self._window
        await super().shutdown()
        # Read by aiohttp's wait for the handlers still running; 0 would mean no limit at all.
        self._shutdown_timeout = max(deadline - loop.time(), LAST_WAIT)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _expire(request: web.Request) -> None:
    if not request.content.is_eof():
        request.content.set_exception(BodyTimeout())


def body_deadline(connections: Connections) -> Middleware:
    timeout = connections.body_read_timeout

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        connections.busy(request.protocol)
        timer = (asyncio.get_running_loop().call_later(timeout, _expire, request)
                 if request.body_exists else None)
        try:
            return await handler(request)
        except BodyTimeout:
            log.info("dropped a request from %s to %s: its body was not received within body_read_timeout (%g s)",
                     client_address(request), request.path, timeout)
            response = web.Response(status=408, text="the request body was not received in time\n")
            response.force_close()
            return response
        except (ConnectionResetError, HttpProcessingError) as exc:
            if request.content.exception() is not exc:
                raise  # not the body's (a response written to a client that left): aiohttp's to handle
            # The client went away or broke off in the middle of its body (aiohttp's payload
            # errors): nothing of ours failed, and there is most likely nobody left to answer.
            log.info("dropped a request from %s to %s: the client broke off its body (%s)", client_address(request),
                     request.path, type(exc).__name__)
            response = web.Response(status=400, text="the request body was incomplete\n")
            response.force_close()
            return response
        finally:
            if timer is not None:
                timer.cancel()
            connections.idle(request.protocol)

    return middleware


def install(app: web.Application, *, max_connections: int | None, header_read_timeout: float,
            body_read_timeout: float) -> Connections:
    """`max_connections` None: as many as the open-files limit allows (`default_max_connections`)."""
    connections = Connections(
        max_connections if max_connections is not None else default_max_connections(open_files_limit()),
        header_read_timeout, body_read_timeout)
    app[CONNECTIONS] = connections
    app.middlewares.insert(0, body_deadline(connections))
    return connections


async def _serve(app: web.Application, sockets: Sequence[socket.socket], runner_options: dict[str, Any],
                 on_ready: Callable[[], None], on_stopping: Callable[[], None], worker: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = LimitedRunner(app, **runner_options)
    await runner.setup()
    try:
        # Our own handlers rather than aiohttp's (`handle_signals`), which raise GracefulExit out of
        # the event loop: the drain below then runs in this task, not in one already cancelled.
        if worker:
            _worker_signals(loop, stop)
        else:
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, stop.set)
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        # Everything built so far (modules, the app, the SDK's and pydantic's tables: ~100,000
        # objects) lives as long as the process: out of the collector's sight, a full collection
        # takes ~2 ms instead of ~100 ms, which was the p99 of tools/call under load. A larger
        # first generation lets a request's short-lived cycles die before they are promoted.
        # Measured in docs/performance.md ("Garbage collection").
        gc.freeze()
        gc.set_threshold(7000, 10, 10)
        on_ready()
        await stop.wait()
        if not worker:
            # A second signal now has its default effect (the process ends at once), as someone
            # who presses Ctrl-C twice expects.
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
        log.info("stopping: no new connections; requests in flight get up to %g s to finish",
                 runner_options.get("shutdown_timeout", 60.0))
        on_stopping()
    finally:
        await runner.cleanup()


def _worker_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """How a worker of `serve --workers N` stops (server/supervisor.py): on SIGTERM, later ones
    changing nothing (the supervisor forwards its own, and a service manager may signal the whole
    group: a second one must not cut the drain short), or when its standard input closes (the
    supervisor is gone, whatever killed it). SIGINT is the supervisor's to handle: a terminal's
    Ctrl-C reaches the whole group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def supervisor_gone() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop.set()

    loop.add_reader(0, supervisor_gone)


def _nothing() -> None:
    pass


def run_app(app: web.Application, *, sockets: Sequence[socket.socket], loop: asyncio.AbstractEventLoop,
            on_ready: Callable[[], None] = _nothing, on_stopping: Callable[[], None] = _nothing,
            worker: bool = False, **runner_options: Any) -> None:
    """`aiohttp.web.run_app` on sockets already listening, with `LimitedRunner` (which `run_app` cannot be
    given). `on_ready` is called on the event loop once every socket accepts connections and the
    app has started (its store open); on SIGINT or SIGTERM (a `worker`: as `_worker_signals`
    says), `on_stopping`, then the runner shuts down (stop accepting, drain, clean up), then the
    loop's leftovers."""
    main = loop.create_task(_serve(app, sockets, runner_options, on_ready, on_stopping, worker))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

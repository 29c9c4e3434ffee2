"""Wiring: storage, the authorization server, the MCP transports and the memory tools in one app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from html import escape
from typing import Any

from aiohttp import web
from mcp.server import Server

from auth import pages
from auth.login import PasswordSignIn
from auth.models import Principal, Revocation
from auth.rfc6750 import BearerError, BearerVerifier
from auth.routes import install
from auth.signin import SignInMethod
from auth.store import RevocationLog, StoreUnavailable
from auth.upstream.flow import UpstreamSignIn
from server import health, limits, logs, metrics
from server.account import AccountPages
from server.config import Settings
from server.mcp_server import MemoryTools, caller_from_grant, scope_guard
from server.principals import owner_label
from server.resources import ResourceFeed
from server.storage import Limiter, Storage
from server.storage.backends import open_backend
from transports.caller import Caller, GuardMessage, Refusal
from transports.direct import DIRECT_METHODS
from transports.http import add_cors_headers, store_unavailable_middleware
from transports.registry import Session, SessionRegistry
from transports.sse import SSEEndpoint
from transports.store import EventLimits
from transports.streamable_http import StreamableHTTPEndpoint

log = logging.getLogger(__name__)

REVOCATION_POLL_SECONDS = 1.0

STORAGE: web.AppKey[Storage] = web.AppKey("storage", Storage)
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter", Limiter)
REGISTRY: web.AppKey[SessionRegistry] = web.AppKey("registry", SessionRegistry)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
MCP_ENDPOINT: web.AppKey[StreamableHTTPEndpoint] = web.AppKey("mcp_endpoint", StreamableHTTPEndpoint)
READINESS: web.AppKey[health.Readiness] = web.AppKey("readiness", health.Readiness)
METRICS: web.AppKey[metrics.Metrics] = web.AppKey("metrics", metrics.Metrics)
"""Present only when metrics are on."""
METRICS_SOCKET: web.AppKey[socket.socket] = web.AppKey("metrics_socket", socket.socket)
"""The separate metrics listener's socket, when `metrics_address` is set."""


async def build_app(settings: Settings, backend: tuple[Storage, Limiter] | None = None,
                    mcp_server: Server[Any] | None = None, *, workers: metrics.Workers | None = None,
                    metrics_socket: socket.socket | None = None) -> web.Application:
    """The whole server. `backend`: the storage and rate limiter to use (default: those the
    settings choose, `open_backend`). `mcp_server` replaces the memory tools with another MCP
    server on the same transports and authentication (the conformance suite's fixture server does).
    `workers`: this process is one worker of several (server/supervisor.py), whose metrics it
    gathers; `metrics_socket`: the `metrics_address` listener, when the supervisor bound it.
    A coroutine because the cookie key comes from the store (shared by every instance on Redis)."""
    storage, limiter = backend or open_backend(settings)
    key = await storage.cookie_key()
    app = web.Application()
    measured = metrics.Metrics() if settings.metrics_enabled else None
    if measured is not None:
        # Before anything holds the storage: every store call from here on is timed.
        measured.instrument(storage, Storage)
        measured.instrument(limiter, Limiter, "limiter.")
        app[METRICS] = measured
    app[SETTINGS] = settings
    app[STORAGE] = storage
    app[LIMITER] = limiter
    # Before the authorization server's middleware: its forwarded-address one must run first.
    limits.install(app, max_connections=settings.max_connections, header_read_timeout=settings.header_read_timeout,
                   body_read_timeout=settings.body_read_timeout)
    tools = MemoryTools(storage, settings.memory_quota, settings.memory_max_result_bytes)
    # Another server's tools may talk back to the client mid-call, which an answer in one JSON body
    # cannot carry: only its handshake takes the direct path.
    direct = DIRECT_METHODS if mcp_server is None else frozenset({"initialize"})
    serves_memory = mcp_server is None
    mcp_server = mcp_server or tools.server(subscribable=True)
    registry = SessionRegistry(
        mcp_server, storage, owner_label=owner_label,
        idle_timeout=settings.session_idle_timeout, max_sessions=settings.max_sessions,
        max_sessions_per_user=settings.max_sessions_per_user,
        event_limits=EventLimits(per_session=settings.event_log_bytes_per_session,
                                 per_user=settings.event_log_bytes_per_user))
    app[REGISTRY] = registry
    tools.subscriptions = registry
    feed = ResourceFeed(storage, registry, tools.nudge) if serves_memory else None
    if measured is not None:
        measured.watch_sessions(registry.sessions)
    auth_conf = settings.auth_settings()
    authorization_server = install(app, settings=auth_conf, store=storage, cookie_key=key,
                                   sign_in=sign_in_methods(settings),
                                   app_pages=AccountPages(storage, registry).routes)
    # Login throttles and rate limits in the store, where `memory-mcp throttle` and every other
    # instance reach them.
    authorization_server.limiter = limiter
    verifier = BearerVerifier(auth_conf, storage)
    if measured is not None:
        authorization_server.observers.append(measured.observe_auth)

    async def authenticate(request: web.Request, resource_path: str) -> Caller:
        try:
            grant = await verifier.verify(request.headers.get("Authorization"), resource_path)
        except BearerError as exc:
            if measured is not None:
                measured.bearer_refused(exc.reason)
            raise Refusal(exc.response()) from None
        return caller_from_grant(grant)

    guard = scope_guard(verifier)
    if measured is not None:
        guard = _counting_refusals(guard, measured)

    async def end_sessions(revocation: Revocation) -> None:
        verifier.forget()
        def doomed(session: Session) -> bool:
            owner = session.owner
            return isinstance(owner, Principal) and (
                revocation.subject is None or owner.subject == revocation.subject) and (
                revocation.client_id is None or owner.client_id == revocation.client_id) and (
                revocation.memory is None or owner.memory == revocation.memory)
        closed = await registry.close_where(doomed)
        if closed:
            log.info("ended %d MCP session(s) after a revocation", closed)

    authorization_server.revocation_listeners.append(end_sessions)

    allowed_origins = frozenset({settings.issuer, *settings.allowed_origins})
    mcp = StreamableHTTPEndpoint(registry, authenticate, guard, allowed_origins=allowed_origins,
                                 max_body_bytes=settings.max_body_bytes, direct_methods=direct)
    app[MCP_ENDPOINT] = mcp
    sse = SSEEndpoint(registry, mcp_server, authenticate, guard,
                      allowed_origins=allowed_origins, max_body_bytes=settings.max_body_bytes)
    # The MCP paths, declared once: routed here, and the only ones that get MCP's CORS headers.
    mcp_routes = {"/mcp": mcp.handle, "/mcp/": mcp.handle, "/sse": sse.stream,
                  "/messages": sse.message, "/messages/": sse.message}
    for path, handler in mcp_routes.items():
        app.router.add_route("*", path, handler)
    readiness = health.Readiness(storage)
    app[READINESS] = readiness
    app.router.add_get("/healthz", health.handle_health)
    app.router.add_get("/readyz", readiness.handle_ready)
    if measured is not None:
        token = settings.metrics_bearer
        if settings.metrics_address is None:
            app.router.add_get(metrics.PATH, measured.handler(token, workers))
        else:
            if metrics_socket is None:
                metrics_socket = metrics.listen(settings.metrics_address, protected=token is not None)
            app[METRICS_SOCKET] = metrics_socket
    app.middlewares.append(store_unavailable_middleware(frozenset(mcp_routes), settings.max_body_bytes))
    app.router.add_get("/", _home)

    async def cors(request: web.Request, response: web.StreamResponse) -> None:
        if request.path in mcp_routes:
            add_cors_headers(request, response, allowed_origins)

    app.on_response_prepare.append(cors)
    app.on_response_prepare.append(logs.send_request_id)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await registry.start()
        follower = asyncio.create_task(follow_revocations(storage, end_sessions), name="revocation-follower")
        notifier = asyncio.create_task(feed.run(), name="resource-feed") if feed is not None else None
        stops = []
        if measured is not None and metrics_socket is not None:
            stops.append(await metrics.serve(metrics.listener_app(measured, settings.metrics_bearer, workers),
                                             metrics_socket))
        if measured is not None and workers is not None:
            stops.append(await metrics.serve_worker(metrics.worker_app(measured), workers.socket_path(workers.slot)))
        yield
        for stop in stops:
            await stop()
        for task in (follower, notifier):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await registry.stop()
        await limiter.close()
        await storage.close()

    async def on_shutdown(app: web.Application) -> None:
        # aiohttp has stopped accepting connections and closed the idle ones. Each session ends
        # once its requests are answered (open streams, which never end by themselves, then end
        # too), within the shutdown window; then aiohttp waits for the other requests, and the
        # cleanup above closes the store (docs/sdk-pitfalls.md#P6).
        deadline = app[limits.CONNECTIONS].drain_deadline
        if deadline is None:  # a runner other than LimitedRunner
            deadline = asyncio.get_running_loop().time() + settings.shutdown_timeout
        await registry.drain(deadline)

    app.cleanup_ctx.append(lifecycle)
    # Not ready from the first moment of the shutdown, before the sessions are closed.
    app.on_shutdown.append(readiness.on_shutdown)
    app.on_shutdown.append(on_shutdown)
    # Outermost: every request gets its id before anything logs, and is timed whole.
    app.middlewares.insert(0, logs.request_ids(
        settings.trusted_proxies, measured.request_observer() if measured is not None else None))
    return app


def sign_in_methods(settings: Settings) -> list[SignInMethod]:
    """How people sign in (`auth.signin`): the upstream provider first when there is one, then
    local passwords unless `local_login` is off."""
    methods: list[SignInMethod] = []
    upstream = settings.upstream_settings()
    if upstream is not None:
        methods.append(UpstreamSignIn(upstream))
    if settings.local_login:
        methods.append(PasswordSignIn())
    return methods


def _counting_refusals(guard: GuardMessage, measured: metrics.Metrics) -> GuardMessage:
    """`guard`, counting the requests it refuses (a tools/call whose token lacks the scope)."""

    def counting(caller: Caller, resource_path: str, message: Mapping[str, Any]) -> web.StreamResponse | None:
        refused = guard(caller, resource_path, message)
        if refused is not None:
            measured.bearer_refused("insufficient_scope")
        return refused

    return counting


async def follow_revocations(revocations: RevocationLog, apply: Callable[[Revocation], Awaitable[None]]) -> None:
    """End the sessions of revocations made elsewhere (`memory-mcp users remove` run beside the
    server, another instance): SQLite's log is polled once a second, Redis's wakes this at once
    (`RevocationLog.wait_revocations`). This process's own revocations come through the listener
    at once and again here, where ending no session is harmless."""
    cursor, _ = await revocations.revocations_after(None)
    task = asyncio.current_task()
    outage = False
    # A cancellation a library swallowed (redis-py's `asyncio.wait_for` around writes can, on
    # Python 3.11) still ends the loop at the next turn.
    while task is None or not task.cancelling():
        try:
            cursor, found = await revocations.wait_revocations(cursor, REVOCATION_POLL_SECONDS)
            if outage:
                log.info("revocations made elsewhere are followed again")
                outage = False
            for revocation in found:
                await apply(revocation)
        except StoreUnavailable as exc:
            # A condition, not a bug: said once per outage, not once a second with a traceback.
            if not outage:
                log.warning("revocations made elsewhere not followed until the store answers again: %s", exc)
                outage = True
            await asyncio.sleep(REVOCATION_POLL_SECONDS)
        except Exception:
            log.exception("reading the revocation log failed; retrying")
            # A store that fails at once (unreachable) must not turn this into a busy loop.
            await asyncio.sleep(REVOCATION_POLL_SECONDS)
    raise asyncio.CancelledError


async def _home(request: web.Request) -> web.Response:
    """What someone who opens the server's address in a browser finds: what this is, where MCP
    clients connect, and the pages a person uses (with the other pages' headers)."""
    mcp_url = request.app[SETTINGS].issuer + "/mcp"
    return pages.render("memory-mcp", (
        "<p>This is a <strong>memory-mcp</strong> server: a remote Model Context Protocol server that gives "
        "each user a persistent knowledge-graph memory. It is used by AI applications (MCP clients), "
        "not by browsing.</p>"
        f"<p>Point your MCP client at <code>{escape(mcp_url)}</code>; it will send you here to sign in "
        "and approve it.</p>"
        '<ul><li><a href="/login">Sign in</a></li>'
        '<li><a href="/account">Your account</a>: the applications you approved, their live sessions, '
        "your memory</li>"
        '<li><a href="/logout">Sign out everywhere</a></li></ul>'))

"""The session registry: which live MCP session belongs to whom, and the tasks that serve them.

Why our own registry and not the SDK's `StreamableHTTPSessionManager` (DECISIONS.md #1): the
manager shares one event store across sessions (replaying other sessions' events) and keeps
private what we need: teardown of one user's sessions when their access ends, per-user caps,
session records in storage.

Every session task runs in one anyio task group that a single holder task owns (anyio task groups
are bound to the task that entered them; entering one from aiohttp's cleanup_ctx fails at
teardown, sdk-notes P2). Handlers hand work to the group with `TaskGroup.start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import InitializeRequestParams

from transports.caller import Caller
from transports.events import SessionEventStore
from transports.sdk import serve_loop, serve_restored
from transports.store import SessionRecord, TransportStore

log = logging.getLogger(__name__)

# A session's record is rewritten at most this often; a write per request would cost more than
# the request itself.
TOUCH_INTERVAL_SECONDS = 60.0
SSE_RETRY_MILLISECONDS = 1000
# A session's SDK transport is stopped after this long without a request that needed it.
PARK_AFTER_SECONDS = 30.0


class SessionGoneError(Exception):
    """The session ended while a request was waiting for it."""


class SessionLimitError(Exception):
    def __init__(self, message: str, *, per_user: bool) -> None:
        super().__init__(message)
        self.per_user = per_user


@dataclass(eq=False)
class Session:
    session_id: str
    owner: Hashable
    user: str
    kind: str
    transport: StreamableHTTPServerTransport | None
    created_at: float
    last_seen_at: float
    protocol_version: str | None = None
    client_params: InitializeRequestParams | None = None
    in_flight: int = 0
    stored_seen_at: float = 0.0
    """Requests being served (an open stream counts): a session is never idle while one is."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    activating: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancel: Callable[[], Awaitable[None]] | None = None
    """How to end a session whose transport is not a StreamableHTTPServerTransport (SSE)."""


class SessionRegistry:
    def __init__(
        self,
        server: Server[Any],
        store: TransportStore,
        *,
        owner_label: Callable[[Hashable], str],
        idle_timeout: float,
        max_sessions: int,
        max_sessions_per_user: int,
        json_response: bool = False,
    ) -> None:
        self._server = server
        self._store = store
        self._owner_label = owner_label
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.max_sessions_per_user = max_sessions_per_user
        self.json_response = json_response
        self._sessions: dict[str, Session] = {}
        self._per_user: dict[str, int] = {}
        # The 2026-07-28 era has no sessions: each request is served on its own by the SDK's
        # stateless path, which its session manager exposes publicly.
        self._stateless = StreamableHTTPSessionManager(server, json_response=json_response, stateless=True,
                                                       session_idle_timeout=None, max_sessions=None)
        self._tg: TaskGroup | None = None
        self._lifespan_state: Any = None
        self._holder: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def hold() -> None:
            try:
                async with (self._server.lifespan(self._server) as state, self._stateless.run(),
                            anyio.create_task_group() as tg):
                    self._lifespan_state, self._tg = state, tg
                    started.set_result(None)
                    sweeper = asyncio.create_task(self._expire_idle(), name="mcp-session-sweeper")
                    await self._stop.wait()
                    sweeper.cancel()
                    tg.cancel_scope.cancel()
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                self._tg = None

        await self._store.purge_sessions(time.time() - self.idle_timeout)
        self._holder = asyncio.create_task(hold(), name="mcp-session-registry")
        await started

    async def _expire_idle(self) -> None:
        """End sessions nobody used for `idle_timeout`. Kept here rather than in the SDK transport
        because requests answered directly (`Session.in_flight`, `seen`) never reach it."""
        interval = min(max(self.idle_timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            for session in [s for s in self._sessions.values() if s.in_flight == 0]:
                if session.last_seen_at < now - self.idle_timeout:
                    log.info("MCP session %s… expired after %ss idle", session.session_id[:8], self.idle_timeout)
                    await self.forget(session)
                elif session.transport is not None and session.last_seen_at < now - PARK_AFTER_SECONDS:
                    await self.park(session)

    async def stop(self) -> None:
        """Close every stream at once, then the task group. Session records stay in the store:
        the next process restores the sessions their clients use again (`restore`)."""
        await self.close_where(lambda _s: True, keep_records=True)
        self._stop.set()
        if self._holder is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._holder

    # -- lookup ------------------------------------------------------------------------------

    @property
    def server(self) -> Server[Any]:
        return self._server

    @property
    def stateless(self) -> StreamableHTTPSessionManager:
        return self._stateless

    @property
    def lifespan_state(self) -> Any:
        return self._lifespan_state

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, session_id: str, owner: Hashable) -> Session | None:
        """The session, if it exists and belongs to `owner`. Unknown and foreign ids are
        indistinguishable to the caller: both are None (no oracle for guessing ids)."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != owner:
            return None
        return session

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    async def seen(self, session: Session) -> None:
        now = time.time()
        if now - session.stored_seen_at >= TOUCH_INTERVAL_SECONDS:
            session.stored_seen_at = now
            await self._store.touch_session(session.session_id, now)
        session.last_seen_at = now

    # -- opening -----------------------------------------------------------------------------

    def _admit(self, caller: Caller, kind: str, transport: StreamableHTTPServerTransport | None,
               session_id: str) -> Session:
        if len(self._sessions) >= self.max_sessions:
            raise SessionLimitError(
                f"the server holds its maximum of {self.max_sessions} MCP sessions; retry later "
                "(operators: raise max_sessions)", per_user=False)
        if self._per_user.get(caller.user, 0) >= self.max_sessions_per_user:
            raise SessionLimitError(
                f"this user already has {self.max_sessions_per_user} open MCP sessions; close one "
                "(clients send DELETE on exit) or wait for idle ones to expire", per_user=True)
        now = time.time()
        session = Session(session_id, caller.owner, caller.user, kind, transport, now, now)
        self._sessions[session_id] = session
        self._per_user[caller.user] = self._per_user.get(caller.user, 0) + 1
        return session

    async def open_streamable(self, caller: Caller) -> Session:
        """Create a session and start the task that serves it; the caller then passes the
        initialize request to `session.transport`."""
        session = self._admit(caller, "streamable-http", None, secrets.token_urlsafe(32))
        try:
            await self._launch(session, None)
        except BaseException:
            await self.forget(session)
            raise
        return session

    async def open_parked(self, caller: Caller, protocol_version: str, client_params: str) -> Session:
        """Create a session whose `initialize` was answered without the SDK transport
        (transports.direct): recorded, and parked from the start, like a restored one."""
        session = self._admit(caller, "streamable-http", None, secrets.token_urlsafe(32))
        try:
            await self.established(session, protocol_version, client_params)
        except BaseException:
            await self.forget(session)
            raise
        return session

    async def restore(self, session_id: str, caller: Caller) -> Session | None:
        """Take back a session that this process does not hold but the store remembers (the
        server restarted, or another instance opened it), when it belongs to `caller` and has not
        expired. It comes back parked: the record's initialize params let `activate` serve it
        without a new handshake, and its event log is still there."""
        record = await self._store.get_session(session_id)
        if (record is None or record.transport != "streamable-http" or record.client_params is None
                or record.owner != self._owner_label(caller.owner)
                or record.last_seen_at < time.time() - self.idle_timeout):
            return None
        try:
            params = InitializeRequestParams.model_validate_json(record.client_params)
        except ValueError:
            return None
        if session_id in self._sessions:  # restored by a concurrent request meanwhile
            return self.lookup(session_id, caller.owner)
        session = self._admit(caller, "streamable-http", None, session_id)
        session.client_params = params
        session.protocol_version = record.protocol_version or params.protocol_version
        session.created_at, session.stored_seen_at = record.created_at, record.last_seen_at
        log.info("MCP session %s… restored from storage", session_id[:8])
        return session

    async def activate(self, session: Session) -> StreamableHTTPServerTransport:
        """The session's SDK transport, started again (handshake already done) if it was parked."""
        async with session.activating:
            if session.transport is None:
                if session.closed.is_set() or session.client_params is None:
                    raise SessionGoneError(session.session_id)
                version = session.protocol_version or session.client_params.protocol_version
                await self._launch(session, (session.client_params, version))
            assert session.transport is not None
            return session.transport

    async def park(self, session: Session) -> None:
        """Stop the session's SDK transport while nothing uses it; the session itself stays.

        An idle session is then a small record instead of a transport with its streams and
        tasks (about 45 KiB): the direct path answers tools/call without it, and `activate`
        brings it back for anything else."""
        async with session.activating:
            transport = session.transport
            if transport is None or session.in_flight or session.client_params is None:
                return
            session.transport = None
            with anyio.CancelScope(shield=True):
                await transport.terminate()

    async def _launch(self, session: Session, restored: tuple[InitializeRequestParams, str] | None) -> None:
        if self._tg is None:
            raise RuntimeError("the session registry is not running")
        transport = StreamableHTTPServerTransport(
            mcp_session_id=session.session_id,
            is_json_response_enabled=self.json_response,
            event_store=SessionEventStore(self._store, session.session_id),
            # Sent as the SSE `retry` field: how soon a client whose stream dropped comes back
            # with Last-Event-ID.
            retry_interval=SSE_RETRY_MILLISECONDS,
        )
        session.transport = transport
        await self._tg.start(self._serve_streamable, session, transport, restored)

    async def _serve_streamable(self, session: Session, transport: StreamableHTTPServerTransport,
                                restored: tuple[InitializeRequestParams, str] | None, *,
                                task_status: TaskStatus[None]) -> None:
        try:
            async with transport.connect() as (read_stream, write_stream):
                task_status.started()
                if restored is None:
                    await serve_loop(self._server, read_stream, write_stream,
                                     lifespan_state=self._lifespan_state, session_id=session.session_id)
                else:
                    await self._serve_initialized(session.session_id, read_stream, write_stream, *restored)
        except Exception:
            log.exception("MCP session %s… crashed", session.session_id[:8])
        finally:
            if session.transport is transport:  # ended on its own (crash, DELETE), not parked
                with anyio.CancelScope(shield=True):
                    await self.forget(session)

    async def _serve_initialized(self, session_id: str, read_stream: Any, write_stream: Any,
                                 params: InitializeRequestParams, protocol_version: str) -> None:
        """What `serve_loop` does, with the handshake already done (a restored session)."""
        await serve_restored(self._server, read_stream, write_stream, session_id=session_id, client_params=params,
                             protocol_version=protocol_version, lifespan_state=self._lifespan_state)

    async def established(self, session: Session, protocol_version: str | None,
                          client_params: str | None = None) -> None:
        """The opening request succeeded: record the session."""
        session.protocol_version = protocol_version
        session.stored_seen_at = session.last_seen_at
        if client_params is not None:
            try:
                session.client_params = InitializeRequestParams.model_validate_json(client_params)
            except ValueError:
                session.client_params = None
        await self._store.save_session(SessionRecord(
            session_id=session.session_id, owner=self._owner_label(session.owner), user=session.user,
            transport=session.kind, protocol_version=protocol_version,
            created_at=session.created_at, last_seen_at=session.last_seen_at, client_params=client_params))

    def admit(self, caller: Caller, kind: str, session_id: str) -> Session:
        return self._admit(caller, kind, None, session_id)

    # -- closing -----------------------------------------------------------------------------

    async def forget(self, session: Session, *, keep_record: bool = False) -> None:
        """Stop tracking the session and end its transport. The id answers 404 from the first line
        on; the rest is shielded so that it completes even while the caller is being cancelled.
        `keep_record` (shutdown) leaves the stored record and events for a later restore."""
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
            remaining = self._per_user.get(session.user, 1) - 1
            if remaining:
                self._per_user[session.user] = remaining
            else:
                self._per_user.pop(session.user, None)
        if session.closed.is_set():
            return
        session.closed.set()
        with anyio.CancelScope(shield=True):
            if session.transport is not None and not session.transport.is_terminated:
                await session.transport.terminate()
            if session.cancel is not None:
                await session.cancel()
            if not keep_record:
                await self._store.delete_session(session.session_id)
                await self._store.delete_events(session.session_id)

    async def close_where(self, predicate: Callable[[Session], bool], *, keep_records: bool = False) -> int:
        doomed = [s for s in self._sessions.values() if predicate(s)]
        for session in doomed:
            await self.forget(session, keep_record=keep_records)
        return len(doomed)

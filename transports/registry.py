"""The session registry: which live MCP session belongs to whom, its state, and the tasks that
serve them.

Why our own registry and not the SDK's `StreamableHTTPSessionManager` (docs/decisions.md#1): the
manager shares one event store across sessions (replaying other sessions' events) and keeps
private what we need: teardown of one user's sessions when their access ends, per-user caps,
session records in storage.

A session's state is one `SessionState`, changed only here (`_move`, checked against
`TRANSITIONS`). The registry also owns the bookkeeping of use: endpoints wrap each request in
`async with registry.using(session)`, which counts it in flight (an open stream is a request in
flight) and marks the session seen.

Sessions per user are capped (`max_sessions_per_user`), and the cap is shared by all the user's
clients. So that one client cannot hold all of them, a new session of a user at the cap ends one
of the user's idle sessions (no request in flight, no open stream, no server-to-client request
waiting for its answer): the least recently used idle one of the same client if it has one, else
the least recently used idle one of the user's other clients. Only when none is idle is the new
session refused (429). A client whose idle session was ended gets 404 on its next request and
starts a new session, as the spec tells clients to; work in progress is never cut.

Several processes (workers, instances) on one store serve the same sessions: any of them serves
any request of a session, restoring it from its record (`restore`), so a session may be held by
several at once. What each must then take from the store rather than from its own memory
(docs/decisions.md#10):
* When the session was last used: every process touches the record while it serves the session
  (at most every `touch_interval`, and each sweep while a request or stream is open), and a
  session idle here is ended only if its record is idle too; otherwise this process just lets go
  of it (`_expire`).
* That it ended: deleting the record announces the end (`TransportStore.session_endings`), and
  every process that holds the session ends its transport and streams (`_follow_endings`), within
  a second on SQLite.
* Its resource subscriptions: kept in the record (`subscribe`, `subscriptions`), as the
  `resources/subscribe` may reach one process and the stream that carries the notifications be
  held by another (`listening`, `notify`).
* The per-user cap: counted over the user's live records, not only those held here. Sessions held
  elsewhere are ended to make room only when their record shows no use for two touch intervals
  (every holder refreshes it while a request or stream is open); see `_victim`.

Every session task runs in one anyio task group that a single holder task owns (anyio task groups
are bound to the task that entered them; entering one from aiohttp's cleanup_ctx fails at
teardown, docs/sdk-pitfalls.md#P2). Handlers hand work to the group with `TaskGroup.start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import InitializeRequestParams, JSONRPCNotification, jsonrpc_message_adapter

from transports import sdk
from transports.caller import Caller
from transports.events import DELIVERED_KEPT_SECONDS, SessionEventStore
from transports.store import EventLimits, SessionRecord, StoreUnavailable, TransportStore

log = logging.getLogger(__name__)

# A session's record is rewritten at most this often (or a quarter of the idle timeout, if less);
# a write per request would cost more than the request itself.
TOUCH_INTERVAL_SECONDS = 60.0
# A legacy SSE session lives exactly as long as its stream, in the one process holding it; that
# process refreshes the record this often, so that another process can tell a live stream from
# one whose process died (no refresh for SSE_STALE_SECONDS) and answer a POST for it with 404.
SSE_HEARTBEAT_SECONDS = 10.0
SSE_STALE_SECONDS = 3 * SSE_HEARTBEAT_SECONDS
SSE_RETRY_MILLISECONDS = 1000
# A session's SDK transport is stopped after this long without a request that needed it.
PARK_AFTER_SECONDS = 30.0
# How often `drain` looks for sessions that no longer serve a request.
DRAIN_POLL_SECONDS = 0.05


class SessionState(enum.Enum):
    ACTIVE = "active"
    """Streamable HTTP, served by its running SDK transport (`Session.transport`)."""
    PARKED = "parked"
    """Streamable HTTP without an SDK transport: the record and the client's initialize params.
    The direct path answers it as is; `activate` starts a transport again, handshake done."""
    SSE = "sse"
    """The 2024-11-05 HTTP+SSE transport: the session is its open GET /sse stream."""
    CLOSED = "closed"
    """Ended, and no longer in the registry: its id answers 404."""


TRANSITIONS: Mapping[SessionState, frozenset[SessionState]] = {
    SessionState.ACTIVE: frozenset({SessionState.PARKED, SessionState.CLOSED}),
    SessionState.PARKED: frozenset({SessionState.ACTIVE, SessionState.CLOSED}),
    SessionState.SSE: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}
"""Every state change a session can make; a session starts in any state but CLOSED."""


class SessionStateError(Exception):
    """A state change that TRANSITIONS does not allow: a bug in the caller, never a client's fault."""


class SessionGoneError(Exception):
    """The session ended while a request was waiting for it."""


class SessionLimitError(Exception):
    def __init__(self, message: str, *, per_user: bool) -> None:
        super().__init__(message)
        self.per_user = per_user


@dataclass(eq=False)
class Session:
    """One MCP session. Its state and bookkeeping are the registry's to change; the endpoints read
    them."""

    session_id: str
    owner: Hashable
    user: str
    kind: str
    """"streamable-http" or "sse", as in its record."""
    created_at: float
    _state: SessionState
    _last_seen_at: float
    protocol_version: str | None = None
    client_params: InitializeRequestParams | None = None
    _transport: StreamableHTTPServerTransport | None = None
    _dispatcher: sdk.Dispatcher | None = None
    _events: SessionEventStore | None = None
    _in_flight: int = 0
    _streams: int = 0
    """Of `_in_flight`, the open GET streams: they end only when the session does."""
    _stored_seen_at: float = 0.0
    _activating: asyncio.Lock = field(default_factory=asyncio.Lock)
    _cancel: Callable[[], Awaitable[None]] | None = None
    """How to end an SSE session: cancel its stream."""
    _ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once an ended session's transport, stream, record and events are gone."""
    _delivered: deque[tuple[float, str, str]] = field(default_factory=deque)
    """Streams delivered whole: (when their events go, stream id, its last event id)."""
    caller: Caller | None = None
    """Who made the session's latest request here (the same owner as every request's): what
    server/ needs to know whose data a notification for the session is about."""
    _connection: sdk.Connection | None = None
    """The SDK connection of the running transport or SSE stream: server-initiated messages
    (`SessionRegistry.notify`) go through it."""

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def transport(self) -> StreamableHTTPServerTransport | None:
        """The SDK transport, while ACTIVE."""
        return self._transport

    @property
    def in_flight(self) -> int:
        """Requests being served (an open stream counts): a session is never idle while one is."""
        return self._in_flight

    @property
    def serving(self) -> bool:
        """A request of it is being answered: one in flight other than an open GET stream, or a
        client request its SDK dispatcher still handles (an SSE session's are answered on its
        stream, after the POST that carried them got its 202)."""
        return self._in_flight > self._streams or sdk.dispatcher_serving(self._dispatcher)

    @property
    def listening(self) -> bool:
        """This process holds the session's stream for server-initiated messages: an SSE
        session's stream, or a Streamable HTTP session's open GET stream."""
        return self._connection is not None and (
            self._state is SessionState.SSE or (self._state is SessionState.ACTIVE and self._streams > 0))

    @property
    def last_seen_at(self) -> float:
        return self._last_seen_at

    @property
    def idle(self) -> bool:
        """Nothing would be lost by ending or parking it: no request in flight, no open stream,
        and its SDK transport (if running) neither serves a request nor waits for the client's
        answer to one of its own."""
        return (self._state in (SessionState.ACTIVE, SessionState.PARKED) and self._in_flight == 0
                and not sdk.dispatcher_busy(self._dispatcher))


def _new_session_id() -> str:
    """256 random bits, URL-safe; never starting with "-", which a command line (`memory-mcp
    sessions revoke ID`) would read as an option."""
    while (session_id := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return session_id


def _move(session: Session, to: SessionState) -> None:
    if to not in TRANSITIONS[session.state]:
        raise SessionStateError(f"MCP session {session.session_id[:8]}… cannot go from {session.state.name} "
                                f"to {to.name}")
    session._state = to


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
        event_limits: EventLimits,
        json_response: bool = False,
    ) -> None:
        self._server = server
        self._store = store
        self._owner_label = owner_label
        self.idle_timeout = idle_timeout
        self.touch_interval = min(TOUCH_INTERVAL_SECONDS, idle_timeout / 4)
        self.max_sessions = max_sessions
        self.max_sessions_per_user = max_sessions_per_user
        self.event_limits = event_limits
        self.json_response = json_response
        self._sessions: dict[str, Session] = {}
        self._per_user: dict[str, list[Session]] = {}
        # A `restore` must not bring back a session that is ending, or whose ending completed
        # while it read the store (it may have read the record just before its deletion).
        self._ending: set[str] = set()
        self._restoring = 0
        self._ends = 0
        self._ended_while_restoring: dict[str, int] = {}
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
                    follower = asyncio.create_task(self._follow_endings(), name="mcp-session-endings")
                    await self._stop.wait()
                    sweeper.cancel()
                    follower.cancel()
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
        interval = min(max(self.idle_timeout / 4, 0.05), SSE_HEARTBEAT_SECONDS)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except StoreUnavailable:
                pass  # the store logs why; the next sweep tries again

    async def _follow_endings(self) -> None:
        endings = self._store.session_endings()
        try:
            async for session_id in endings:
                try:
                    await self.ended(session_id)
                except Exception:
                    log.exception("ending MCP session %s… after its end was announced failed", session_id[:8])
        finally:
            await endings.aclose()

    async def ended(self, session_id: str) -> None:
        """The session's record was deleted, here or by another process: stop holding it (its
        transport and streams end; the record is not written again)."""
        session = self._sessions.get(session_id)
        if session is not None:
            await self.forget(session, keep_record=True)
            return
        self._ends += 1
        if self._restoring:
            self._ended_while_restoring[session_id] = self._ends

    async def sweep(self, now: float | None = None) -> None:
        """End sessions nobody used for `idle_timeout`, park the transports of idle ones, delete
        the events of streams delivered long enough ago. Kept here rather than in the SDK
        transport because requests answered directly never reach it. Expiry looks only at
        requests in flight: an SDK transport waiting for a client that never comes back must not
        keep its session forever."""
        now = time.time() if now is None else now
        for session in list(self._sessions.values()):
            while session._delivered and session._delivered[0][0] <= now:
                _, stream_id, through = session._delivered.popleft()
                await self._store.delete_events(session.session_id, (stream_id, through))
            if session.state is SessionState.SSE:  # an SSE session is its open stream
                if now - session._stored_seen_at >= SSE_HEARTBEAT_SECONDS:
                    await self._touch(session, now)
                continue
            if session.in_flight:
                # In use here: the record must say so to the other processes judging it idle.
                if now - session._stored_seen_at >= self.touch_interval:
                    await self._touch(session, now)
                continue
            if session.state not in (SessionState.ACTIVE, SessionState.PARKED):
                continue
            if session.last_seen_at < now - self.idle_timeout:
                await self._expire(session, now)
            elif session.state is SessionState.ACTIVE and session.last_seen_at < now - PARK_AFTER_SECONDS:
                await self.park(session)

    async def _expire(self, session: Session, now: float) -> None:
        """End a session idle here, unless another process has used it meanwhile: then only let
        go of it here (it comes back by `restore` if a request for it arrives)."""
        record = await self._store.get_session(session.session_id)
        if session.state is SessionState.CLOSED or session.in_flight or session.last_seen_at >= now - self.idle_timeout:
            return  # used or ended while the record was read
        if record is not None and record.last_seen_at >= now - self.idle_timeout:
            log.debug("MCP session %s… idle here but used elsewhere: let go", session.session_id[:8])
            await self.forget(session, keep_record=True)
            return
        log.info("MCP session %s… expired after %ss idle", session.session_id[:8], self.idle_timeout)
        await self.forget(session)

    async def _touch(self, session: Session, now: float) -> None:
        session._stored_seen_at = now
        await self._store.touch_session(session.session_id, now)

    async def drain(self, deadline: float) -> None:
        """Shutdown, once no new request can come: end each session as soon as it serves no request
        (which ends its open streams cleanly), and at `deadline` (event-loop time) every session
        left. A request in flight is answered before its session ends, whichever path serves it.
        Records stay, so that the next process serves the sessions again (`restore`).

        A session is ended only when two looks `DRAIN_POLL_SECONDS` apart both find it free: a
        message posted to an SSE session is acknowledged (202) a moment before the SDK's
        dispatcher takes it up."""
        loop = asyncio.get_running_loop()
        free_before: set[Session] = set()
        while self._sessions:
            free = {s for s in self._sessions.values() if not s.serving}
            for session in free & free_before:
                await self.forget(session, keep_record=True)
            free_before = free
            if loop.time() >= deadline:
                break
            await asyncio.sleep(min(DRAIN_POLL_SECONDS, max(0.0, deadline - loop.time())))
        busy = await self.close_where(lambda _s: True, keep_records=True)
        if busy:
            log.warning("ended %d MCP session(s) with requests still in flight at the end of the shutdown window",
                        busy)

    async def stop(self) -> None:
        """Close every stream at once, then the task group. Session records stay in the store
        (but those of SSE sessions, which are their streams): the next process, or another one
        serving the same store, restores the sessions their clients use again (`restore`)."""
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

    @property
    def store(self) -> TransportStore:
        return self._store

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, session_id: str, owner: Hashable, kind: str) -> Session | None:
        """The session, if it exists, belongs to `owner` and is of the transport `kind` asking.
        Unknown, foreign and other-transport ids are indistinguishable to the caller: all are None
        (no oracle for guessing ids; a Streamable HTTP DELETE cannot end an SSE stream)."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != owner or session.kind != kind:
            return None
        return session

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    @contextlib.asynccontextmanager
    async def using(self, session: Session, *, stream: bool = False,
                    caller: Caller | None = None) -> AsyncIterator[Session]:
        """Serve one request of the session: it is in flight (never idle, never parked) until the
        block ends, streams included, and the session counts as seen at both ends. `stream`: a GET
        that opens a stream, which a shutdown does not wait for (`drain`). `caller`: who sent it."""
        if caller is not None:
            session.caller = caller
        session._in_flight += 1
        session._streams += stream
        try:
            now = time.time()
            session._last_seen_at = now
            if now - session._stored_seen_at >= self.touch_interval:
                await self._touch(session, now)
            yield session
        finally:
            session._in_flight -= 1
            session._streams -= stream
            session._last_seen_at = time.time()

    def listening(self) -> list[Session]:
        """The sessions whose stream for server-initiated messages this process holds
        (`Session.listening`): the only ones it can notify."""
        return [session for session in self._sessions.values() if session.listening]

    async def notify(self, session: Session, method: str, params: Mapping[str, Any] | None) -> None:
        """Send a notification on the session's stream (best effort, as the SDK's
        `Connection.notify`: dropped if the stream is gone)."""
        connection = session._connection
        if connection is not None and session.listening:
            await connection.notify(method, params)

    async def subscriptions(self, session_id: str) -> tuple[str, ...]:
        """The resources the session subscribed to, from its record: a subscription may have
        been made through another process than the one holding its stream."""
        record = await self._store.get_session(session_id)
        return () if record is None else record.subscriptions

    async def subscribe(self, session_id: str, uri: str, subscribed: bool) -> bool:
        """Add `uri` to the session's subscriptions, or take it out (`subscribed` False), in its
        record (the only copy: any process may hold the session's stream). False when the
        session has no record (ended meanwhile). Read, then written: two changes to one
        session's subscriptions at the same instant, on two processes, may lose one; a client
        waits for the answer to one before it sends the next."""
        record = await self._store.get_session(session_id)
        if record is None:
            return False
        uris = tuple(u for u in record.subscriptions if u != uri) + ((uri,) if subscribed else ())
        if uris == record.subscriptions:
            return True
        return await self._store.set_subscriptions(session_id, uris)

    async def delivered(self, session: Session, stream_id: str, last_event_id: str) -> None:
        """A response of the session's SDK transport was written whole (transports/events.py): if
        it carried the end of the stream, the stream's events go after DELIVERED_KEPT_SECONDS."""
        if session._events is not None and session._events.completes(stream_id, last_event_id):
            session._delivered.append((time.time() + DELIVERED_KEPT_SECONDS, stream_id, last_event_id))

    def ignorable_when_parked(self, session: Session, message: Any) -> bool:
        """Whether a message for a PARKED session can be acknowledged (202) without starting its
        SDK transport, because the SDK would do nothing with it either.

        Only a valid notification that the server registered no handler for. What the SDK does
        with each client notification it has no handler for, and why a parked session loses
        nothing by not seeing it:
        * notifications/initialized: marks the connection initialized; a parked session's
          connection is born initialized when its transport starts (`_serve_streamable`).
        * notifications/cancelled: interrupts the named request if the dispatcher is serving it;
          a parked session's dispatcher serves none (`park` waits until it is idle). A request
          being answered on the direct path meanwhile runs to its end, as the spec allows for a
          request that cannot be cancelled (clients must ignore a late response anyway).
        * notifications/progress: feeds the progress callback of a server-to-client request
          waiting for its answer; a parked session has none waiting.
        * notifications/roots/list_changed and any other: nothing without a handler.
        Invalid messages go to the SDK transport, which answers them as it does (400)."""
        if session.state is not SessionState.PARKED or not isinstance(message, dict) or "id" in message:
            return False
        try:
            notification = jsonrpc_message_adapter.validate_python(message, by_name=False)
        except ValueError:
            return False
        return (isinstance(notification, JSONRPCNotification)
                and self._server.get_notification_handler(notification.method) is None)

    # -- opening -----------------------------------------------------------------------------

    async def _admit(self, caller: Caller, kind: str, session_id: str, state: SessionState, *,
                     new: bool = True) -> Session:
        """Count a session in: a new one against both caps, ending an idle session of the user's
        to make room at the user's cap (the rule is in the module docstring); a restored one,
        already counted in the store, against this process's `max_sessions` only."""
        if state is SessionState.CLOSED:
            raise SessionStateError("a session cannot start CLOSED")
        while True:
            now = time.time()
            # Read first: from the checks to the insertion below nothing is awaited, so that
            # concurrent openings in this process cannot both take the last place.
            records = await self._live_records(caller.user, now) if new else {}
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimitError(
                    f"the server holds its maximum of {self.max_sessions} MCP sessions; retry later "
                    "(operators: raise max_sessions)", per_user=False)
            mine = self._per_user.get(caller.user, [])
            if not new or len(records.keys() | {s.session_id for s in mine}) < self.max_sessions_per_user:
                break
            victim = self._victim(caller, mine, records, now)
            if victim is None:
                raise SessionLimitError(
                    f"this user already has {self.max_sessions_per_user} open MCP sessions, none of them idle; "
                    "close one (clients send DELETE on exit) or retry when one is idle", per_user=True)
            log.info("MCP session %s… ended to make room for a new session of its user (the cap is %d)",
                     victim.session_id[:8], self.max_sessions_per_user)
            # Ended before the new one is counted in, and the caps checked again after: a
            # concurrent opening may have taken the room meanwhile, and a cancellation here
            # leaves no half-admitted session.
            if isinstance(victim, Session):
                await self.forget(victim)
            else:  # held elsewhere, or by nobody: its holders end it on the announcement
                await self._store.delete_session(victim.session_id)
                await self._store.delete_events(victim.session_id)
        session = Session(session_id, caller.owner, caller.user, kind, now, state, now, _stored_seen_at=now,
                          caller=caller)
        self._sessions[session_id] = session
        self._per_user.setdefault(caller.user, []).append(session)
        return session

    async def _live_records(self, user: str, now: float) -> dict[str, SessionRecord]:
        """The user's sessions that count against the cap, in every process: records neither
        expired nor left by a process that died while holding an SSE stream. Read whole only when
        a count says the user may be near the cap (opening a session must not cost a read of all
        the user's records)."""
        mine = len(self._per_user.get(user, []))
        if await self._store.count_sessions(user, self.max_sessions_per_user) + mine < self.max_sessions_per_user:
            return {}
        return {r.session_id: r for r in await self._store.list_sessions(user)
                if r.last_seen_at >= now - (SSE_STALE_SECONDS if r.transport == "sse" else self.idle_timeout)}

    def _victim(self, caller: Caller, mine: list[Session], records: Mapping[str, SessionRecord],
                now: float) -> Session | SessionRecord | None:
        """The session to end for a new one of `caller`'s at the user's cap: the least recently
        used idle one, the same client's first. Held here: idle here, and its record not touched
        by another process since this one last did (a process that restores a session touches
        it). Not held here: a Streamable HTTP session whose record nobody touched for two touch
        intervals (holders refresh it while a request or stream is open). An SSE session is its
        open stream: never."""
        label = self._owner_label(caller.owner)
        candidates: list[tuple[tuple[bool, float], Session | SessionRecord]] = []
        for session in mine:
            record = records.get(session.session_id)
            if session.idle and (record is None or record.last_seen_at <= session._stored_seen_at):
                candidates.append(((session.owner != caller.owner, session.last_seen_at), session))
        quiet = now - 2 * self.touch_interval
        for record in records.values():
            if (record.session_id not in self._sessions and record.session_id not in self._ending
                    and record.transport == "streamable-http" and record.last_seen_at < quiet):
                candidates.append(((record.owner != label, record.last_seen_at), record))
        return min(candidates, key=lambda c: c[0])[1] if candidates else None

    async def open_streamable(self, caller: Caller) -> Session:
        """Create a session and start the task that serves it; the caller then passes the
        initialize request to `session.transport`."""
        session = await self._admit(caller, "streamable-http", _new_session_id(), SessionState.ACTIVE)
        try:
            await self._launch(session)
        except BaseException:
            await self.forget(session)
            raise
        return session

    async def open_parked(self, caller: Caller, protocol_version: str, client_params: str) -> Session:
        """Create a session whose `initialize` was answered without the SDK transport
        (transports.direct): recorded, and parked from the start, like a restored one."""
        session = await self._admit(caller, "streamable-http", _new_session_id(), SessionState.PARKED)
        try:
            await self.established(session, protocol_version, client_params)
        except BaseException:
            await self.forget(session)
            raise
        return session

    async def open_sse(self, caller: Caller, session_id: str, cancel: Callable[[], Awaitable[None]],
                       dispatcher: sdk.Dispatcher | None, connection: sdk.Connection | None = None) -> Session:
        """Record a 2024-11-05 session whose stream is open; `cancel` ends that stream, and
        `dispatcher` is the SDK's, which serves its requests on `connection`."""
        session = await self._admit(caller, "sse", session_id, SessionState.SSE)
        session._cancel, session._dispatcher, session._connection = cancel, dispatcher, connection
        try:
            await self.established(session, "2024-11-05")
        except BaseException:
            await self.forget(session)
            raise
        return session

    async def restore(self, session_id: str, caller: Caller) -> Session | None:
        """Take back a session that this process does not hold but the store remembers (the
        server restarted, or another instance opened it), when it belongs to `caller` and has not
        expired. It comes back parked: the record's initialize params let `activate` serve it
        without a new handshake, and its event log is still there."""
        started = self._ends
        self._restoring += 1
        try:
            record = await self._store.get_session(session_id)
        finally:
            self._restoring -= 1
            ended_meanwhile = (session_id in self._ending
                               or self._ended_while_restoring.get(session_id, started) > started)
            if not self._restoring:
                self._ended_while_restoring.clear()
        if (ended_meanwhile or record is None or record.transport != "streamable-http" or record.client_params is None
                or record.owner != self._owner_label(caller.owner)
                or record.last_seen_at < time.time() - self.idle_timeout):
            return None
        try:
            params = InitializeRequestParams.model_validate_json(record.client_params)
        except ValueError:
            return None
        if session_id in self._sessions:  # restored by a concurrent request meanwhile
            return self.lookup(session_id, caller.owner, "streamable-http")
        session = await self._admit(caller, "streamable-http", session_id, SessionState.PARKED, new=False)
        session.client_params = params
        session.protocol_version = record.protocol_version or params.protocol_version
        session.created_at = record.created_at
        # Touched at once: the other processes holding it learn that it is used here too.
        await self._touch(session, session.last_seen_at)
        log.info("MCP session %s… restored from storage", session_id[:8])
        return session

    async def held_elsewhere(self, session_id: str, caller: Caller) -> bool:
        """Whether a legacy SSE session whose stream this process does not hold is live in
        another process on the store and belongs to `caller`: what is posted for it then goes
        through the store's inbox to that process (`TransportStore.send_to_session`)."""
        if session_id in self._ending:
            return False
        record = await self._store.get_session(session_id)
        return (record is not None and record.transport == "sse" and record.owner == self._owner_label(caller.owner)
                and record.last_seen_at >= time.time() - SSE_STALE_SECONDS)

    async def activate(self, session: Session) -> StreamableHTTPServerTransport:
        """The session's SDK transport, started again (handshake already done) if it was parked."""
        async with session._activating:
            if session.state is SessionState.PARKED and session.client_params is not None:
                _move(session, SessionState.ACTIVE)
                try:
                    await self._launch(session)
                except BaseException:
                    await self.forget(session)
                    raise
            if session.transport is None:  # closed meanwhile, or an SSE session
                raise SessionGoneError(session.session_id)
            return session.transport

    async def park(self, session: Session) -> None:
        """Stop the session's SDK transport while nothing uses it; the session itself stays.

        An idle session is then a small record instead of a transport with its streams and
        tasks (about 45 KiB): the direct path answers tools/call without it, and `activate`
        brings it back for anything else. Never while it is not `idle`: a request being served,
        an open stream or a server-to-client request waiting for its answer would be lost."""
        async with session._activating:
            transport = session.transport
            if (session.state is not SessionState.ACTIVE or transport is None or not session.idle
                    or session.client_params is None):
                return
            _move(session, SessionState.PARKED)
            session._transport = session._dispatcher = session._events = session._connection = None
            with anyio.CancelScope(shield=True):
                await transport.terminate()

    async def _launch(self, session: Session) -> None:
        if self._tg is None:
            raise RuntimeError("the session registry is not running")
        events = SessionEventStore(self._store, session.session_id, session.user, self.event_limits)
        transport = StreamableHTTPServerTransport(
            mcp_session_id=session.session_id,
            is_json_response_enabled=self.json_response,
            event_store=events,
            # Sent as the SSE `retry` field: how soon a client whose stream dropped comes back
            # with Last-Event-ID.
            retry_interval=SSE_RETRY_MILLISECONDS,
        )
        session._transport, session._events = transport, events
        await self._tg.start(self._serve_streamable, session, transport)

    async def _serve_streamable(self, session: Session, transport: StreamableHTTPServerTransport, *,
                                task_status: TaskStatus[None]) -> None:
        """What the SDK's `serve_loop` does, with the dispatcher kept (`Session.idle` asks it) and,
        for a session whose handshake is done (parked, restored), a connection born initialized."""
        try:
            async with transport.connect() as (read_stream, write_stream):
                dispatcher, connection = sdk.session_loop(
                    read_stream, write_stream, session_id=session.session_id, client_params=session.client_params,
                    protocol_version=session.protocol_version)
                session._dispatcher, session._connection = dispatcher, connection
                task_status.started()
                await sdk.serve_connection(self._server, dispatcher, connection=connection,
                                           lifespan_state=self._lifespan_state)
        except Exception:
            log.exception("MCP session %s… crashed", session.session_id[:8])
        finally:
            if session.transport is transport:  # ended on its own (crash, DELETE), not parked
                with anyio.CancelScope(shield=True):
                    await self.forget(session)

    async def established(self, session: Session, protocol_version: str | None,
                          client_params: str | None = None) -> None:
        """The opening request succeeded: record the session."""
        session.protocol_version = protocol_version
        session._stored_seen_at = session.last_seen_at
        if client_params is not None:
            try:
                session.client_params = InitializeRequestParams.model_validate_json(client_params)
            except ValueError:
                session.client_params = None
        await self._store.save_session(SessionRecord(
            session_id=session.session_id, owner=self._owner_label(session.owner), user=session.user,
            transport=session.kind, protocol_version=protocol_version,
            created_at=session.created_at, last_seen_at=session.last_seen_at, client_params=client_params))

    # -- closing -----------------------------------------------------------------------------

    def _detach(self, session: Session) -> bool:
        """Stop tracking the session: its id answers 404 from now on. False if it already ended."""
        if session.state is SessionState.CLOSED:
            return False
        _move(session, SessionState.CLOSED)
        self._ending.add(session.session_id)
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
        mine = self._per_user.get(session.user, [])
        if session in mine:
            mine.remove(session)
        if not mine:
            self._per_user.pop(session.user, None)
        return True

    async def _end(self, session: Session, *, keep_record: bool) -> None:
        """End a detached session's transport or stream, shielded so that it completes even while
        the caller is being cancelled, and delete its record and events unless `keep_record`
        (always for an SSE session: it cannot outlive its stream)."""
        try:
            with anyio.CancelScope(shield=True):
                transport, session._transport, session._dispatcher, session._events, session._connection = (
                    session._transport, None, None, None, None)
                if transport is not None and not transport.is_terminated:
                    await transport.terminate()
                if session._cancel is not None:
                    await session._cancel()
                if not keep_record or session.kind == "sse":
                    try:
                        await self._store.delete_session(session.session_id)
                        await self._store.delete_events(session.session_id)
                    except StoreUnavailable:
                        if session.kind != "sse":
                            raise  # a DELETE hears that it did not happen, and may be retried
                        # The stream has ended whatever the store says, here as in a shutdown: a
                        # record left behind is stale once its stream stops touching it (nothing
                        # is relayed to it then), and the next start-up's purge removes it.
                        log.warning("SSE session %s… ended; its record stays until the store answers again",
                                    session.session_id[:8])
        finally:
            self._ending.discard(session.session_id)
            self._ends += 1
            if self._restoring:
                self._ended_while_restoring[session.session_id] = self._ends
            session._ended.set()

    async def forget(self, session: Session, *, keep_record: bool = False) -> None:
        """End the session. `keep_record` only lets go of it here (shutdown, ended or used
        elsewhere): the stored record and events stay for whoever serves it next."""
        if self._detach(session):
            await self._end(session, keep_record=keep_record)
        else:
            # Ended by someone else (the transport's own task after a DELETE, a revocation):
            # the caller may answer only once it is really gone.
            await session._ended.wait()

    async def close_where(self, predicate: Callable[[Session], bool], *, keep_records: bool = False) -> int:
        doomed = [s for s in self._sessions.values() if predicate(s)]
        for session in doomed:
            await self.forget(session, keep_record=keep_records)
        return len(doomed)

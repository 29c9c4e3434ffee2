"""What the transports store: a record per live MCP session.

The record is what outlives the process: it lets operators list and revoke sessions
(`memory-mcp sessions`), and it lets any process that serves the same store serve any request of
the session (workers, instances, a restart). The transport object itself (queues, streams) lives
only in the processes that serve the session at the moment.

Two small signals cross processes through the store (docs/decisions.md#10): a session's end
(`SessionStore.session_endings`), so that every process holding the session lets go of it within
a second, and the messages a legacy SSE client posts to a process that does not hold its stream
(`SessionInbox`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


class StoreUnavailable(Exception):
    """The store cannot answer now (its lock is held elsewhere, its disk is full or failing):
    the request may succeed if retried after `retry_after` seconds. `reason` is a short phrase
    safe to show to clients; the message is for the operator's log."""

    reason: str = "the store is unavailable"
    retry_after: int = 1


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    owner: str
    """The session owner in printable form (server/ decides the encoding)."""
    user: str
    transport: str
    """"streamable-http" or "sse"."""
    protocol_version: str | None
    created_at: float
    last_seen_at: float
    client_params: str | None = None
    """The client's `initialize` params (JSON): what a restarted server needs to serve the
    session again without a new handshake."""
    subscriptions: tuple[str, ...] = ()
    """The resource URIs the session subscribed to (`resources/subscribe`), in the order
    subscribed: kept with the record so that whichever process holds the session's stream knows
    them, and gone with it."""


class SessionStore(Protocol):
    async def save_session(self, record: SessionRecord) -> None: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def touch_session(self, session_id: str, now: float) -> None:
        """Set the record's `last_seen_at` (only ever forward). May return before it is written:
        it is bookkeeping no request should wait for. Every process touches the sessions it serves,
        open streams included, so that the record tells all of them when the session was last used."""
        ...

    async def set_subscriptions(self, session_id: str, uris: tuple[str, ...]) -> bool:
        """Replace the record's `subscriptions`, leaving the rest of it (and its expiry) as it is;
        False, and nothing stored, when there is no record (the session ended meanwhile)."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Forget the record and the session's inbox; when there was a record, announce the end on
        `session_endings` (in the same transaction on SQLite: a process that sees the announcement
        can no longer read the record)."""
        ...

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]: ...

    async def count_sessions(self, user: str, limit: int) -> int:
        """How many records the user's sessions have (expired ones included), counted up to
        `limit`: a cheap first look at the per-user cap, before `list_sessions`."""
        ...

    async def purge_sessions(self, idle_before: float) -> int:
        """Forget the sessions last seen before `idle_before` (expired while nobody served
        them, or left by a process that died) with their events and inbox, announcing each end;
        called at start-up."""
        ...

    def session_endings(self) -> AsyncGenerator[str, None]:
        """The ids of the sessions whose record is deleted from now on, by any process on this
        store (this one included), as the ends are announced, for as long as the caller iterates.
        A store that cannot answer for a while is retried inside: the iterator does not end.
        SQLite: a log polled once a second; Redis: a pub/sub channel."""
        ...


class SessionInbox(Protocol):
    """Messages for a legacy SSE session (2024-11-05 transport) that a client posted to a process
    that does not hold the session's stream: the process that holds it reads them and answers on
    the stream. A queue per session, consumed by that one process."""

    async def send_to_session(self, session_id: str, message: str, limit: int) -> bool:
        """Queue `message` (opaque text) for the session, unless `limit` messages already wait
        for it (False: nothing stored; the holder takes them within moments, so only a client
        flooding the session gets there). Durable once it returns True: the process iterating
        `session_messages(session_id)` gets it, now or when it starts iterating. What no process
        reads goes with the session's record (`delete_session`, `purge_sessions`)."""
        ...

    def session_messages(self, session_id: str) -> AsyncGenerator[str, None]:
        """The messages queued for the session, oldest first, each one once, as they come, for as
        long as the caller iterates (close it with `aclose`). One caller per session: the holder of
        its stream. SQLite: the table polled every 50 ms while this process holds any stream;
        Redis: a list per session with a blocking pop, or pub/sub as a wake-up."""
        ...


@dataclass(frozen=True, slots=True)
class EventLimits:
    """How many bytes of events the log keeps (transports/events.py says why these bounds)."""

    per_session: int
    per_user: int


EVENT_OVERHEAD_BYTES = 128
"""What an event costs beyond its message: the row, its ids and index entries. Counted so that
empty events (priming) are not free, and the number of rows is bounded too."""


class EventLog(Protocol):
    """Resumability (Streamable HTTP `Last-Event-ID`): the messages sent on each SSE stream of a
    session, so that a client that lost its connection can ask for what it missed.

    Every call names the session: an event id only means something inside the session that
    produced it. A client can never replay another session's events by presenting their ids
    (the bug class of docs/sdk-pitfalls.md#P8 and the TS SDK's cross-session replay IDOR).

    Bounded: an event costs the UTF-8 length of its message plus EVENT_OVERHEAD_BYTES, and the log
    keeps at most `limits.per_session` bytes of one session and `limits.per_user` of all the
    sessions of one user, evicting the oldest events first. Oldest first keeps every stream's
    stored events a suffix of what was sent on it, so a replay from an id still stored has no gap.
    """

    async def append_event(self, session_id: str, user: str, stream_id: str, message: str | None,
                           limits: EventLimits) -> str | None:
        """Store one message (JSON text; None for a priming event), evict older events beyond the
        limits, and return the new event's id. An event that alone exceeds a limit is not stored
        (None) and the earlier events of its stream are deleted: a replay from one of them would
        skip it."""
        ...

    async def events_after(self, session_id: str, event_id: str) -> tuple[str, list[tuple[str, str | None]]] | None:
        """The stream `event_id` belongs to and the events after it on that stream, oldest first;
        None when this session has no such event (never stored, evicted, or deleted)."""
        ...

    async def delete_events(self, session_id: str, stream: tuple[str, str] | None = None) -> None:
        """Delete the session's events, or, for `stream` = (stream id, event id), those of that
        stream up to and including that event (a later request may reuse the stream id)."""
        ...

    async def event_bytes(self, session_id: str | None = None, user: str | None = None) -> int:
        """What the stored events of a session, or of a user, cost (see above)."""
        ...


class TransportStore(SessionStore, SessionInbox, EventLog, Protocol):
    """Everything `transports/` stores."""

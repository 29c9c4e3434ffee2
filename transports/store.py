"""What the transports store: a record per live MCP session.

The record is what outlives the process: it lets operators list and revoke sessions
(`memory-mcp sessions`), and a later backend can move a session between instances. The transport
object itself (queues, streams) only lives in the process that serves the session.
"""

from __future__ import annotations

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


class SessionStore(Protocol):
    async def save_session(self, record: SessionRecord) -> None: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def touch_session(self, session_id: str, now: float) -> None: ...

    async def delete_session(self, session_id: str) -> None: ...

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]: ...

    async def purge_sessions(self, idle_before: float) -> int:
        """Forget the sessions last seen before `idle_before` (expired while nobody served
        them) with their events; called at start-up."""
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


class TransportStore(SessionStore, EventLog, Protocol):
    """Everything `transports/` stores."""

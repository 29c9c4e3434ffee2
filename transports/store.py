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


class EventLog(Protocol):
    """Resumability (Streamable HTTP `Last-Event-ID`): the messages sent on each SSE stream of a
    session, so that a client that lost its connection can ask for what it missed.

    Every call names the session: an event id only means something inside the session that
    produced it. A client can never replay another session's events by presenting their ids
    (the bug class of sdk-notes P8 and the TS SDK's cross-session replay IDOR).
    """

    async def append_event(self, session_id: str, stream_id: str, message: str | None) -> str:
        """Store one message (JSON text; None for a priming event) and return its event id."""
        ...

    async def events_after(self, session_id: str, event_id: str) -> tuple[str, list[tuple[str, str | None]]] | None:
        """The stream `event_id` belongs to and the events after it on that stream, oldest first;
        None when this session has no such event."""
        ...

    async def delete_events(self, session_id: str) -> None: ...


class TransportStore(SessionStore, EventLog, Protocol):
    """Everything `transports/` stores."""

"""MCP session records on SQLite (`transports.store.SessionStore`).

    mcp_sessions(session_id PK, owner, user, transport, protocol_version, created_at, last_seen_at,
                 client_params: the initialize params, JSON)
    index on user: `memory-mcp sessions list --user` and teardown of one user's sessions.

The session id is not a credential (every request is authenticated by its bearer token and the
session must belong to the same principal), so it is stored as is: operators need to name it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from server.storage.sqlite.db import Database
from transports.store import SessionRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS mcp_sessions (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    user TEXT NOT NULL,
    transport TEXT NOT NULL,
    protocol_version TEXT,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    client_params TEXT
);
CREATE INDEX IF NOT EXISTS mcp_sessions_user ON mcp_sessions(user)
"""


DELETE_BATCH: Final = 1000
"""Events deleted per transaction by a purge."""


class SessionTables:
    SCHEMA = SCHEMA
    db: Database

    async def save_session(self, record: SessionRecord) -> None:
        await self.db.write(
            _execute, "INSERT OR REPLACE INTO mcp_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.session_id, record.owner, record.user, record.transport, record.protocol_version,
             record.created_at, record.last_seen_at, record.client_params))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self.db.read(_rows, "SELECT * FROM mcp_sessions WHERE session_id = ?", (session_id,))
        return SessionRecord(**dict(rows[0])) if rows else None

    async def touch_session(self, session_id: str, now: float) -> None:
        # Not awaited: a request must not wait for the lock (or fail) for the sake of this hint,
        # which only matters to a later restore or purge.
        self.db.write_soon(_execute, "UPDATE mcp_sessions SET last_seen_at = ? WHERE session_id = ?",
                           (now, session_id))

    async def delete_session(self, session_id: str) -> None:
        await self.db.write(_execute, "DELETE FROM mcp_sessions WHERE session_id = ?", (session_id,))

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        if user is None:
            rows = await self.db.read(_rows, "SELECT * FROM mcp_sessions ORDER BY created_at", ())
        else:
            rows = await self.db.read(_rows, "SELECT * FROM mcp_sessions WHERE user = ? ORDER BY created_at", (user,))
        return [SessionRecord(**dict(row)) for row in rows]

    async def purge_sessions(self, idle_before: float) -> int:
        # An SSE session is its open stream: it cannot outlive the process that held it.
        gone = await self.db.write(_execute, "DELETE FROM mcp_sessions WHERE last_seen_at < ? OR transport = 'sse'",
                                   (idle_before,))
        # Their events in batches of short transactions: there may be many.
        while await self.db.write(
                _execute, "DELETE FROM mcp_events WHERE event_id IN (SELECT event_id FROM mcp_events"
                " WHERE session_id NOT IN (SELECT session_id FROM mcp_sessions) LIMIT ?)", (DELETE_BATCH,)):
            pass
        return gone


EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS mcp_events (
    event_id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS mcp_events_stream ON mcp_events(session_id, stream_id, event_id)
"""

# Events a session keeps: enough for a client to catch up after a dropped connection, bounded so
# that a long-lived session does not grow without end.
EVENTS_KEPT_PER_SESSION = 1000


class EventTables:
    """`transports.store.EventLog` on SQLite.

        mcp_events(event_id INTEGER PK, session_id, stream_id, message JSON or NULL for priming)
        index (session_id, stream_id, event_id): the replay query is one range scan.

    Event ids are the rowid: unique across sessions, but every lookup also names the session, so
    another session's id finds nothing. Events are deleted with their session, and trimmed to the
    newest EVENTS_KEPT_PER_SESSION of a session every hundredth event.
    """

    SCHEMA = EVENTS_SCHEMA
    db: Database

    async def append_event(self, session_id: str, stream_id: str, message: str | None) -> str:
        def write(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO mcp_events (session_id, stream_id, message) VALUES (?, ?, ?)",
                (session_id, stream_id, message))
            # An INSERT into a rowid table always sets it.
            event_id = int(cursor.lastrowid or 0)
            if event_id % 100 == 0:
                conn.execute(
                    "DELETE FROM mcp_events WHERE session_id = ? AND event_id <= ?",
                    (session_id, event_id - EVENTS_KEPT_PER_SESSION))
            return event_id
        return str(await self.db.write(write))

    async def events_after(self, session_id: str, event_id: str) -> tuple[str, list[tuple[str, str | None]]] | None:
        if not event_id.isdigit():
            return None

        def read(conn: sqlite3.Connection) -> tuple[str, list[tuple[str, str | None]]] | None:
            row = conn.execute(
                "SELECT stream_id FROM mcp_events WHERE event_id = ? AND session_id = ?",
                (int(event_id), session_id)).fetchone()
            if row is None:
                return None
            stream_id = str(row["stream_id"])
            rows = conn.execute(
                "SELECT event_id, message FROM mcp_events WHERE session_id = ? AND stream_id = ? AND event_id > ?"
                " ORDER BY event_id", (session_id, stream_id, int(event_id))).fetchall()
            return stream_id, [(str(r["event_id"]), r["message"]) for r in rows]
        return await self.db.read(read)

    async def delete_events(self, session_id: str) -> None:
        await self.db.write(_execute, "DELETE FROM mcp_events WHERE session_id = ?", (session_id,))


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> int:
    """One statement as a `Database.write` job: the rows it changed."""
    return int(conn.execute(sql, params).rowcount)


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()

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
from transports.store import EVENT_OVERHEAD_BYTES, EventLimits, SessionRecord

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
        await self.db.write(_execute, "DELETE FROM mcp_event_bytes WHERE session_id NOT IN "
                            "(SELECT session_id FROM mcp_sessions)", ())
        return gone


EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS mcp_events (
    event_id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    user TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    message TEXT,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mcp_events_stream ON mcp_events(session_id, stream_id, event_id);
CREATE INDEX IF NOT EXISTS mcp_events_session ON mcp_events(session_id, event_id);
CREATE INDEX IF NOT EXISTS mcp_events_user ON mcp_events(user, event_id);
CREATE TABLE IF NOT EXISTS mcp_event_bytes (
    session_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mcp_event_bytes_user ON mcp_event_bytes(user);
CREATE TRIGGER IF NOT EXISTS mcp_events_added AFTER INSERT ON mcp_events BEGIN
    INSERT INTO mcp_event_bytes VALUES (NEW.session_id, NEW.user, NEW.size)
        ON CONFLICT(session_id) DO UPDATE SET bytes = bytes + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS mcp_events_removed AFTER DELETE ON mcp_events BEGIN
    UPDATE mcp_event_bytes SET bytes = bytes - OLD.size WHERE session_id = OLD.session_id;
END;
"""


class EventTables:
    """`transports.store.EventLog` on SQLite.

        mcp_events(event_id INTEGER PK, session_id, user, stream_id, message JSON or NULL for
                   priming, size: what the event costs, transports.store.EVENT_OVERHEAD_BYTES
                   included)
        index (session_id, stream_id, event_id): the replay query is one range scan.
        indexes (session_id, event_id) and (user, event_id): the oldest events of a session or a
        user, for eviction, without a sort.
        mcp_event_bytes(session_id PK, user, bytes): the cost of each session's events, kept by
        triggers, so that checking the limits is two small reads whatever path deleted events.

    Event ids are the rowid: unique across sessions, but every lookup also names the session, so
    another session's id finds nothing. Events are deleted with their session, a while after
    their stream was delivered, and the oldest first beyond the limits.
    """

    db: Database

    @staticmethod
    def migrate(db: Database) -> None:
        columns = {row["name"] for row in db.conn.execute("PRAGMA table_info(mcp_events)")}
        with db.transaction() as conn:
            if columns and "size" not in columns:
                # The event log is a cache of messages in flight: an upgrade that drops it only
                # means that a stream interrupted across the upgrade cannot be resumed.
                conn.execute("DROP TABLE mcp_events")
        # executescript: the triggers hold semicolons that Database.apply_schema would split on.
        db.conn.executescript(EVENTS_SCHEMA)

    async def append_event(self, session_id: str, user: str, stream_id: str, message: str | None,
                           limits: EventLimits) -> str | None:
        size = EVENT_OVERHEAD_BYTES + (0 if message is None else len(message.encode()))

        def write(conn: sqlite3.Connection) -> int | None:
            if size > limits.per_session or size > limits.per_user:
                conn.execute("DELETE FROM mcp_events WHERE session_id = ? AND stream_id = ?", (session_id, stream_id))
                return None
            # An INSERT into a rowid table always sets it.
            event_id = int(conn.execute(
                "INSERT INTO mcp_events (session_id, user, stream_id, message, size) VALUES (?, ?, ?, ?, ?)",
                (session_id, user, stream_id, message, size)).lastrowid or 0)
            _evict(conn, "session", session_id, limits.per_session)
            _evict(conn, "user", user, limits.per_user)
            return event_id

        event_id = await self.db.write(write)
        return None if event_id is None else str(event_id)

    async def events_after(self, session_id: str, event_id: str) -> tuple[str, list[tuple[str, str | None]]] | None:
        if not (event_id.isascii() and event_id.isdigit()):  # "²" is a digit to str, not to int()
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

    async def delete_events(self, session_id: str, stream: tuple[str, str] | None = None) -> None:
        if stream is not None:
            stream_id, through = stream
            await self.db.write(_execute, "DELETE FROM mcp_events WHERE session_id = ? AND stream_id = ?"
                                " AND event_id <= ?", (session_id, stream_id, int(through)))
            return

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM mcp_events WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM mcp_event_bytes WHERE session_id = ?", (session_id,))
        await self.db.write(write)

    async def event_bytes(self, session_id: str | None = None, user: str | None = None) -> int:
        scope, value = ("session", session_id) if session_id is not None else ("user", user)
        return int((await self.db.read(_rows, _COST[scope], (value,)))[0][0])


# What the events of one session, or of one user, cost; their oldest; deleting up to one of them.
_COST = {"session": "SELECT COALESCE(SUM(bytes), 0) FROM mcp_event_bytes WHERE session_id = ?",
         "user": "SELECT COALESCE(SUM(bytes), 0) FROM mcp_event_bytes WHERE user = ?"}
_OLDEST = {"session": "SELECT event_id, size FROM mcp_events WHERE session_id = ? ORDER BY event_id LIMIT 256",
           "user": "SELECT event_id, size FROM mcp_events WHERE user = ? ORDER BY event_id LIMIT 256"}
_DELETE_THROUGH = {"session": "DELETE FROM mcp_events WHERE session_id = ? AND event_id <= ?",
                   "user": "DELETE FROM mcp_events WHERE user = ? AND event_id <= ?"}


def _evict(conn: sqlite3.Connection, scope: str, value: str, limit: int) -> None:
    """Delete the oldest events of a session or a user (`scope`) until they cost at most `limit`."""
    excess = conn.execute(_COST[scope], (value,)).fetchone()[0] - limit
    while excess > 0:
        rows = conn.execute(_OLDEST[scope], (value,)).fetchall()
        if not rows:
            return
        cut = rows[-1][0]
        for event_id, size in rows:
            excess -= size
            if excess <= 0:
                cut = event_id
                break
        conn.execute(_DELETE_THROUGH[scope], (value, cut))


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> int:
    """One statement as a `Database.write` job: the rows it changed."""
    return int(conn.execute(sql, params).rowcount)


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()

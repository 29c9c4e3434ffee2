"""MCP session records on SQLite (`transports.store.SessionStore`, `SessionInbox`).

    mcp_sessions(session_id PK, owner, user, transport, protocol_version, created_at, last_seen_at,
                 client_params: the initialize params, JSON,
                 subscriptions: the subscribed resource URIs, a JSON list; NULL for none. Added
                 by `SessionTables.migrate` to a file from before it)
    index on user: `memory-mcp sessions list --user`, teardown of one user's sessions, and the
    per-user cap counted across processes.
    mcp_session_endings(id AUTOINCREMENT, session_id, created_at): the ends announced by
    `delete_session` and `purge_sessions`, read by every process once a second
    (`session_endings`) with a cursor; kept an hour, far longer than any reader's interval.
    AUTOINCREMENT so that an id is never reused once old rows are deleted: a reader's cursor
    would skip it.
    mcp_session_inbox(id AUTOINCREMENT, session_id, message): what a legacy SSE client posted to
    a process that does not hold its stream; the holder polls it every 50 ms while it holds any
    stream, and deletes what it took. Never reused ids: the holder skips ids it already took
    (when deleting them failed), which a reused id would be mistaken for.

The session id is not a credential (every request is authenticated by its bearer token and the
session must belong to the same principal), so it is stored as is: operators need to name it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Final

from server.storage import StorageUnavailable
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
    client_params TEXT,
    subscriptions TEXT
);
CREATE INDEX IF NOT EXISTS mcp_sessions_user ON mcp_sessions(user);
CREATE TABLE IF NOT EXISTS mcp_session_endings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mcp_session_endings_age ON mcp_session_endings(created_at);
CREATE TABLE IF NOT EXISTS mcp_session_inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mcp_session_inbox_session ON mcp_session_inbox(session_id, id)
"""


DELETE_BATCH: Final = 1000
"""Events deleted per transaction by a purge."""


ENDINGS_POLL_SECONDS: Final = 1.0
"""How often `session_endings` reads the log: a session ended by another process ends here within
about this long."""
ENDINGS_KEPT_SECONDS: Final = 3600.0
INBOX_POLL_SECONDS: Final = 0.05
"""How often the holder of legacy SSE streams reads their inbox: the extra latency of a message
posted to another process."""


class SessionTables:
    SCHEMA = SCHEMA
    db: Database
    _inbox: _Inbox | None = None

    @staticmethod
    def migrate(db: Database) -> None:
        """Add the columns a file from an earlier version lacks (run after `SCHEMA`)."""
        with db.transaction() as conn:
            if "subscriptions" not in [row[1] for row in conn.execute("PRAGMA table_info(mcp_sessions)")]:
                conn.execute("ALTER TABLE mcp_sessions ADD COLUMN subscriptions TEXT")

    async def save_session(self, record: SessionRecord) -> None:
        await self.db.write(
            _execute, "INSERT OR REPLACE INTO mcp_sessions (session_id, owner, user, transport, protocol_version,"
            " created_at, last_seen_at, client_params, subscriptions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.session_id, record.owner, record.user, record.transport, record.protocol_version,
             record.created_at, record.last_seen_at, record.client_params, _uris(record.subscriptions)))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self.db.read(_rows, "SELECT * FROM mcp_sessions WHERE session_id = ?", (session_id,))
        return _record(rows[0]) if rows else None

    async def set_subscriptions(self, session_id: str, uris: tuple[str, ...]) -> bool:
        return bool(await self.db.write(
            _execute, "UPDATE mcp_sessions SET subscriptions = ? WHERE session_id = ?", (_uris(uris), session_id)))

    async def touch_session(self, session_id: str, now: float) -> None:
        # Not awaited: a request must not wait for the lock (or fail) for the sake of this hint.
        # Never backwards: several processes touch the same record with their own clocks' times.
        self.db.write_soon(_execute, "UPDATE mcp_sessions SET last_seen_at = ? WHERE session_id = ? "
                           "AND last_seen_at < ?", (now, session_id, now))

    async def delete_session(self, session_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            gone = conn.execute("DELETE FROM mcp_sessions WHERE session_id = ?", (session_id,)).rowcount
            conn.execute("DELETE FROM mcp_session_inbox WHERE session_id = ?", (session_id,))
            if gone:
                _announce(conn, [session_id])
        await self.db.write(write)

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        if user is None:
            rows = await self.db.read(_rows, "SELECT * FROM mcp_sessions ORDER BY created_at", ())
        else:
            rows = await self.db.read(_rows, "SELECT * FROM mcp_sessions WHERE user = ? ORDER BY created_at", (user,))
        return [_record(row) for row in rows]

    async def count_sessions(self, user: str, limit: int) -> int:
        rows = await self.db.read(_rows, "SELECT count(*) FROM (SELECT 1 FROM mcp_sessions WHERE user = ? LIMIT ?)",
                                  (user, limit))
        return int(rows[0][0])

    async def purge_sessions(self, idle_before: float) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            ids = [row[0] for row in conn.execute("SELECT session_id FROM mcp_sessions WHERE last_seen_at < ?",
                                                  (idle_before,))]
            conn.executemany("DELETE FROM mcp_sessions WHERE session_id = ?", [(i,) for i in ids])
            _announce(conn, ids)
            conn.execute("DELETE FROM mcp_session_inbox WHERE session_id NOT IN (SELECT session_id FROM mcp_sessions)")
            return len(ids)
        gone = await self.db.write(purge)
        # Their events in batches of short transactions: there may be many.
        while await self.db.write(
                _execute, "DELETE FROM mcp_events WHERE event_id IN (SELECT event_id FROM mcp_events"
                " WHERE session_id NOT IN (SELECT session_id FROM mcp_sessions) LIMIT ?)", (DELETE_BATCH,)):
            pass
        await self.db.write(_execute, "DELETE FROM mcp_event_bytes WHERE session_id NOT IN "
                            "(SELECT session_id FROM mcp_sessions)", ())
        return gone

    async def session_endings(self) -> AsyncGenerator[str, None]:
        cursor: int | None = None
        while True:
            try:
                if cursor is None:
                    rows = await self.db.read(_rows, "SELECT coalesce(max(id), 0) FROM mcp_session_endings", ())
                    cursor = int(rows[0][0])
                    found = []
                else:
                    found = await self.db.read(_rows, "SELECT id, session_id FROM mcp_session_endings WHERE id > ? "
                                               "ORDER BY id", (cursor,))
            except StorageUnavailable:
                found = []  # the database says why, once a minute; the next round tries again
            for row in found:
                cursor = int(row["id"])
                yield str(row["session_id"])
            await asyncio.sleep(ENDINGS_POLL_SECONDS)

    # SessionInbox

    async def send_to_session(self, session_id: str, message: str, limit: int) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            waiting = conn.execute("SELECT count(*) FROM (SELECT 1 FROM mcp_session_inbox WHERE session_id = ? "
                                   "LIMIT ?)", (session_id, limit)).fetchone()[0]
            if waiting >= limit:
                return False
            conn.execute("INSERT INTO mcp_session_inbox (session_id, message) VALUES (?, ?)", (session_id, message))
            return True
        return await self.db.write(write)

    def session_messages(self, session_id: str) -> AsyncGenerator[str, None]:
        if self._inbox is None:
            self._inbox = _Inbox(self.db)
        return self._inbox.messages(session_id)


def _announce(conn: sqlite3.Connection, session_ids: Sequence[str]) -> None:
    if not session_ids:
        return
    now = time.time()
    conn.execute("DELETE FROM mcp_session_endings WHERE created_at < ?", (now - ENDINGS_KEPT_SECONDS,))
    conn.executemany("INSERT INTO mcp_session_endings (session_id, created_at) VALUES (?, ?)",
                     [(session_id, now) for session_id in session_ids])


class _Inbox:
    """This process's readers of the inbox: one polling task for all the sessions whose stream it
    holds, running only while it holds one, every statement on the database's threads."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queues: dict[str, asyncio.Queue[str]] = {}
        self._taken: dict[str, int] = {}
        """The last id handed out per session: a row whose deletion failed is not handed out twice."""
        self._poller: asyncio.Task[None] | None = None

    async def messages(self, session_id: str) -> AsyncGenerator[str, None]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queues[session_id] = queue
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="mcp-session-inbox")
        try:
            while True:
                yield await queue.get()
        finally:
            if self._queues.get(session_id) is queue:
                del self._queues[session_id]
                self._taken.pop(session_id, None)

    async def _poll(self) -> None:
        while self._queues:
            await asyncio.sleep(INBOX_POLL_SECONDS)
            try:
                rows = await self._db.read(
                    _rows, "SELECT id, session_id, message FROM mcp_session_inbox WHERE session_id IN "
                    "(SELECT value FROM json_each(?)) ORDER BY id", (json.dumps(list(self._queues)),))
            except StorageUnavailable:
                continue
            taken = []
            for row in rows:
                message_id, session_id = int(row["id"]), str(row["session_id"])
                queue = self._queues.get(session_id)
                if queue is not None and message_id > self._taken.get(session_id, 0):
                    self._taken[session_id] = message_id
                    queue.put_nowait(str(row["message"]))
                taken.append(message_id)
            if taken:
                try:
                    await self._db.write(_delete_ids, taken)
                except StorageUnavailable:
                    pass  # read again next round, and skipped by `_taken`


def _delete_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    conn.executemany("DELETE FROM mcp_session_inbox WHERE id = ?", [(i,) for i in ids])


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


def _uris(uris: tuple[str, ...]) -> str | None:
    return json.dumps(list(uris)) if uris else None


def _record(row: sqlite3.Row) -> SessionRecord:
    fields = dict(row)
    subscriptions = fields.pop("subscriptions", None)
    return SessionRecord(**fields, subscriptions=tuple(json.loads(subscriptions)) if subscriptions else ())

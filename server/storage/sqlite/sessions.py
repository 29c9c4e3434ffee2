"""MCP session records on SQLite (`transports.store.SessionStore`).

    mcp_sessions(session_id PK, owner, user, transport, protocol_version, created_at, last_seen_at)
    index on user: `memory-mcp sessions list --user` and teardown of one user's sessions.

The session id is not a credential (every request is authenticated by its bearer token and the
session must belong to the same principal), so it is stored as is: operators need to name it.
"""

from __future__ import annotations

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
    last_seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mcp_sessions_user ON mcp_sessions(user)
"""


class SessionTables:
    SCHEMA = SCHEMA
    db: Database

    async def save_session(self, record: SessionRecord) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO mcp_sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.session_id, record.owner, record.user, record.transport, record.protocol_version,
                 record.created_at, record.last_seen_at))

    async def touch_session(self, session_id: str, now: float) -> None:
        self.db.conn.execute("UPDATE mcp_sessions SET last_seen_at = ? WHERE session_id = ?", (now, session_id))

    async def delete_session(self, session_id: str) -> None:
        self.db.conn.execute("DELETE FROM mcp_sessions WHERE session_id = ?", (session_id,))

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        if user is None:
            rows = self.db.conn.execute("SELECT * FROM mcp_sessions ORDER BY created_at").fetchall()
        else:
            rows = self.db.conn.execute(
                "SELECT * FROM mcp_sessions WHERE user = ? ORDER BY created_at", (user,)).fetchall()
        return [SessionRecord(**dict(row)) for row in rows]

    async def purge_sessions(self) -> int:
        return self.db.conn.execute("DELETE FROM mcp_sessions").rowcount

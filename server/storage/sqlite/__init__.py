"""The embedded storage backend: one SQLite file under the data directory.

Each table group lives in its own module with its schema documented beside the code that uses
it: `auth.py` (clients, users, codes, tokens, browser sessions), `memories.py` (named memories),
`graph.py` (the memory graphs),
`sessions.py` (MCP session records and their resumable event streams), `keys.py` (ID-token
signing keys), `portable.py` (export and import, `server.storage.portable`).

Every statement runs on the database's threads, never on the event loop (`db.py`: one writer
thread with a queue, a few reader threads; a store that cannot answer in time raises the retryable
`StorageUnavailable`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from server.storage.sqlite.auth import AuthTables, migrate
from server.storage.sqlite.db import DEFAULT_BUSY_TIMEOUT, Database
from server.storage.sqlite.graph import GraphTables
from server.storage.sqlite.keys import SigningKeyTables
from server.storage.sqlite.memories import MemoryTables
from server.storage.sqlite.portable import SQLitePortable
from server.storage.sqlite.sessions import EventTables, SessionTables


class SQLiteStorage(AuthTables, MemoryTables, SigningKeyTables, GraphTables, SessionTables, EventTables,
                    SQLitePortable):
    def __init__(self, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.db = Database(path, busy_timeout)
        for schema in (AuthTables.SCHEMA, MemoryTables.SCHEMA, SigningKeyTables.SCHEMA, GraphTables.SCHEMA,
                       SessionTables.SCHEMA):
            self.db.apply_schema(schema)
        migrate(self.db)
        EventTables.migrate(self.db)
        SessionTables.migrate(self.db)
        GraphTables.migrate(self.db)

    async def ping(self) -> None:
        """One read on a reader thread that touches the file (its schema), as every read does."""
        await self.db.read(_touch)

    async def close(self) -> None:
        """Finish the queued statements and stop the database's threads."""
        await self.db.aclose()


def _touch(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()

"""The user's named memories in the embedded SQLite backend (`auth.memories.MemoryDirectory`).

Schema and the reasons for it:

* `auth_memories`: one row per memory other than a user's default one (whose id is the user id
  and which is never stored, so that accounts made before memories existed need no row). `id` is
  random (`auth.memories.new_memory_id`) and never reused: it is what grants are bound to and the
  `GraphStore` owner key of the memory's graph. `(user_id, name)` is UNIQUE, which makes creating
  and renaming race-free against a concurrent CLI process or consent page.
* The records bound to a memory carry its id in a nullable `memory` column (`auth_codes`,
  `auth_tokens`, `auth_consents`, `auth_personal_tokens`, and `auth_revocations` for the sessions
  to end), NULL meaning the default memory: every row made before memories existed is bound to
  the default memory as it is (`auth.sqlite.ADDED_COLUMNS` adds the columns to older files).
  No index on them: a memory's records are found through the user's (`subject`) indexes, and only
  deleting a memory looks for them.

Atomicity: creating checks the user is ACTIVE, the name is free and the cap not reached, and
inserts, in one write transaction; deleting removes the row and every code, token, personal access
token and remembered approval bound to the memory in one transaction (`Database.write`).
"""

from __future__ import annotations

import sqlite3

from auth.memories import MemoriesError, Memory, MemoryExistsError, limit_reached
from auth.models import AccountState
from server.storage.sqlite.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_memories (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (user_id, name)
)
"""


def _memory(row: sqlite3.Row) -> Memory:
    return Memory(id=row["id"], user_id=row["user_id"], name=row["name"], created_at=row["created_at"])


class MemoryTables:
    """Mixin implementing `auth.memories.MemoryDirectory`; the storage class provides `self.db`."""

    SCHEMA: str = SCHEMA
    db: Database

    async def list_memories(self, user_id: str) -> list[Memory]:
        def read(conn: sqlite3.Connection) -> list[Memory]:
            rows = conn.execute("SELECT * FROM auth_memories WHERE user_id = ? ORDER BY created_at, id", (user_id,))
            return [_memory(r) for r in rows]
        return await self.db.read(read)

    async def get_memory(self, user_id: str, memory_id: str) -> Memory | None:
        def read(conn: sqlite3.Connection) -> Memory | None:
            row = conn.execute("SELECT * FROM auth_memories WHERE id = ? AND user_id = ?",
                               (memory_id, user_id)).fetchone()
            return _memory(row) if row else None
        return await self.db.read(read)

    async def create_memory(self, memory: Memory, limit: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM auth_users WHERE id = ? AND state = ?",
                            (memory.user_id, AccountState.ACTIVE)).fetchone() is None:
                raise MemoriesError("the account is being removed (or was): no memory can be added to it")
            count = conn.execute("SELECT count(*) FROM auth_memories WHERE user_id = ?",
                                 (memory.user_id,)).fetchone()[0]
            if count + 1 >= limit:
                raise limit_reached(count + 1, limit)
            try:
                conn.execute("INSERT INTO auth_memories (id, user_id, name, created_at) VALUES (?, ?, ?, ?)",
                             (memory.id, memory.user_id, memory.name, memory.created_at))
            except sqlite3.IntegrityError as exc:
                raise MemoryExistsError(f"there is a memory named {memory.name!r} already") from exc
        await self.db.write(write)

    async def rename_memory(self, user_id: str, memory_id: str, name: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            try:
                return int(conn.execute("UPDATE auth_memories SET name = ? WHERE id = ? AND user_id = ?",
                                        (name, memory_id, user_id)).rowcount) > 0
            except sqlite3.IntegrityError as exc:
                raise MemoryExistsError(f"there is a memory named {name!r} already") from exc
        return await self.db.write(write)

    async def delete_memory(self, user_id: str, memory_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute("DELETE FROM auth_memories WHERE id = ? AND user_id = ?",
                                   (memory_id, user_id)).rowcount
            bound = (user_id, memory_id)
            conn.execute("DELETE FROM auth_codes WHERE subject = ? AND memory = ?", bound)
            conn.execute("DELETE FROM auth_tokens WHERE subject = ? AND memory = ?", bound)
            conn.execute("DELETE FROM auth_personal_tokens WHERE subject = ? AND memory = ?", bound)
            conn.execute("DELETE FROM auth_consents WHERE user_id = ? AND memory = ?", bound)
            return int(deleted) > 0
        return await self.db.write(write)

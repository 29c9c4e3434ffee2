"""One SQLite connection, shared by every table group of the embedded backend.

Why synchronous calls on the event loop, not a thread pool: every statement here is an indexed
point lookup or a small write that takes microseconds in WAL mode, far less than a thread hop.
Because a method runs start to finish without awaiting, each one is atomic with respect to every
other coroutine in the process; `transaction()` (BEGIN IMMEDIATE) makes it atomic with respect to
other processes too, such as `memory-mcp users add` run while the server is up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only an OS crash can lose the
        # last transactions, never corrupt the file.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=5000")
        path.chmod(0o600)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: its statements all see the file as it was at the first of them,
        whatever other processes commit meanwhile (WAL mode)."""
        self.conn.execute("BEGIN DEFERRED")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def apply_schema(self, ddl: str) -> None:
        with self.transaction() as conn:
            for statement in ddl.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def close(self) -> None:
        self.conn.close()

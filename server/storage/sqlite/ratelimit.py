"""Rate-limit counts (`auth.ratelimit.RateLimiter`) in SQLite, beside the data.

Why not in the process: `memory-mcp throttle list|clear` must see and lift a running server's
limits (a user locked out by someone else's guesses should not wait out the window, nor need a
restart), and several server processes on one data directory must share one budget.

Why a file of its own (`throttle.sqlite3`): a login must never wait for the memory database's
write lock (a long `users remove`, a backup). It runs on the same `Database` machinery as the
memory database (its own writer thread, so nothing waits on the event loop; the same translation
of a locked, full or read-only file into a retryable `StorageUnavailable`). Every operation is one
write transaction, so `admit`'s check-and-count is atomic across processes too (BEGIN IMMEDIATE).

    rate_hits(key, at, expires_at)   one row per counted action; `at` is wall-clock time, so
                                     that counts survive a restart; rows older than their
                                     window are deleted as writes come
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from auth.ratelimit import Policy, whole_seconds
from server.storage import Counted
from server.storage.sqlite.db import Database

FILENAME = "throttle.sqlite3"
# Rows kept at most: a flood of distinct source addresses must not grow the file without bound.
# Checked every `_PRUNE_EVERY` writes; beyond it the oldest rows go first.
MAX_ROWS = 200_000
_PRUNE_EVERY = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_hits (
    key TEXT NOT NULL,
    at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_hits_key ON rate_hits (key, at);
CREATE INDEX IF NOT EXISTS rate_hits_expiry ON rate_hits (expires_at)
"""

T = TypeVar("T")


class SQLiteRateLimiter:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time, busy_timeout: float = 3.0) -> None:
        self.path = path
        self._clock = clock
        self._db = Database(path, busy_timeout, readers=1)
        self._db.apply_schema(SCHEMA)
        self._writes = 0

    async def _run(self, work: Callable[[sqlite3.Connection, float], T]) -> T:
        return await self._db.write(work, self._clock())

    @staticmethod
    def _ages(conn: sqlite3.Connection, key: str, window: float, now: float) -> list[float]:
        rows = conn.execute("SELECT at FROM rate_hits WHERE key = ? AND at > ? ORDER BY at DESC",
                            (key, now - window)).fetchall()
        return [max(0.0, now - at) for (at,) in rows]

    def _count(self, conn: sqlite3.Connection, keys: Sequence[tuple[str, float]], now: float) -> None:
        conn.execute("DELETE FROM rate_hits WHERE expires_at <= ?", (now,))
        conn.executemany("INSERT INTO rate_hits (key, at, expires_at) VALUES (?, ?, ?)",
                         [(key, now, now + window) for key, window in keys])
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            conn.execute("DELETE FROM rate_hits WHERE rowid IN (SELECT rowid FROM rate_hits ORDER BY at DESC "
                         "LIMIT -1 OFFSET ?)", (MAX_ROWS,))

    # RateLimiter

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        def work(conn: sqlite3.Connection, now: float) -> float | None:
            ages = self._ages(conn, key, window, now)
            if len(ages) >= limit:
                return float(max(0, math.ceil(window - ages[-1])))
            self._count(conn, [(key, window)], now)
            return None
        return await self._run(work)

    async def admit(self, keys: Sequence[tuple[str, float]], policy: Policy) -> int | None:
        def work(conn: sqlite3.Connection, now: float) -> int | None:
            wait = whole_seconds(policy([self._ages(conn, key, window, now) for key, window in keys]))
            if wait is None:
                self._count(conn, keys, now)
            return wait
        return await self._run(work)

    async def forget_latest(self, key: str) -> None:
        def work(conn: sqlite3.Connection, _now: float) -> None:
            conn.execute("DELETE FROM rate_hits WHERE rowid = (SELECT rowid FROM rate_hits WHERE key = ? "
                         "ORDER BY at DESC LIMIT 1)", (key,))
        await self._run(work)

    async def reset(self, key: str) -> None:
        await self.clear([key])

    # Administration (`memory-mcp throttle`)

    async def counted(self, prefix: str = "") -> list[Counted]:
        """Every key starting with `prefix` that has live actions, with their ages."""
        def work(conn: sqlite3.Connection, now: float) -> list[Counted]:
            rows = conn.execute("SELECT key, at FROM rate_hits WHERE expires_at > ? AND substr(key, 1, ?) = ? "
                                "ORDER BY key, at DESC", (now, len(prefix), prefix)).fetchall()
            found: dict[str, list[float]] = {}
            for key, at in rows:
                found.setdefault(key, []).append(max(0.0, now - at))
            return [Counted(key, ages) for key, ages in found.items()]
        return await self._run(work)

    async def clear(self, keys: Sequence[str] | None) -> int:
        """Forget the given keys (None: every key); the number of counted actions forgotten."""
        def work(conn: sqlite3.Connection, _now: float) -> int:
            if keys is None:
                return int(conn.execute("DELETE FROM rate_hits").rowcount)
            return sum(int(conn.execute("DELETE FROM rate_hits WHERE key = ?", (key,)).rowcount) for key in keys)
        return await self._run(work)

    async def close(self) -> None:
        await self._db.aclose()

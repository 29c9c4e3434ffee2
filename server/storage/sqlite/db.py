"""The SQLite file of the embedded backend, and the threads that run every statement off the loop.

Why threads
-----------

A statement usually takes microseconds, but it can wait: on the write lock while another process
holds it (`memory-mcp users remove`, a backup tool, a second server), on a full or failing disk,
on a WAL checkpoint. On the event loop, any such wait froze every stream and `/healthz` for the
whole busy timeout. So no statement runs on the loop while serving:

* **One writer thread** with its own connection and a FIFO queue. `await db.write(fn, *args)`
  queues `fn(conn, *args)`; the thread runs it inside one short `BEGIN IMMEDIATE` transaction and
  hands the result (or the exception) back to the loop. Writes are serialised by the queue, so the
  writer never contends with this process, only with other processes; each method's statements
  are one transaction, atomic against every other coroutine and process.
* **A small pool of reader threads** (`READERS`), each with its own connection, sharing one queue.
  `await db.read(fn, *args)` runs `fn` inside `BEGIN DEFERRED ... COMMIT`: all its statements see
  one snapshot of the file. In WAL mode a reader never waits for a writer (ours or another
  process's), so reads stay fast while the write lock is held elsewhere; several readers let a
  long `read_graph` run beside short lookups.
* A committed write is visible to every read queued after `write` returned: a reader's snapshot
  starts at its `BEGIN`, after the commit.

Why not one thread for everything, or `asyncio.to_thread`: one thread would queue every read
behind a write that waits for the lock, which is the freeze again, one step removed; the default
executor has no per-thread connection and no write ordering. Why not a process: the results are
Python objects, and pickling a 4 MB graph costs more than the query. The cost of a hop is a
queue put, a thread wake-up and a `call_soon_threadsafe` back: 45-75 microseconds of CPU per call
on the shared 2-core machine against ~5-8 on the loop, less when calls overlap, the same whatever
the size of the work (docs/performance.md, "Storage off the event loop"). Every store method is
one hop.

Two variants of `write`: `try_write` never waits (the read_graph view's rebuild: when the writer
is busy or the lock is held elsewhere, the caller answers from the rows instead), and `write_soon`
is not awaited (a session's last-seen time: bookkeeping no request should wait for or fail on).
A caller cancelled while its write is queued does not cancel the write: it still commits (or
fails) in order, and `try_write` counts it as queued until then.

Bounded waits and what a failure is
-----------------------------------

The writer's `busy_timeout` is the `store_busy_timeout` setting: after that long without the lock,
the write fails. That, a full disk (`SQLITE_FULL`), a read-only file (`SQLITE_READONLY`), a file
that cannot be opened (`SQLITE_CANTOPEN`) and I/O errors (`SQLITE_IOERR`) are raised as
`StorageUnavailable`, which inherits both `auth.store.StoreUnavailable` and
`transports.store.StoreUnavailable`, so that each layer catches it without importing `server/`.
Each surface maps it in one place to a retryable answer: 503 with `Retry-After` (auth endpoints:
OAuth `temporarily_unavailable` or a small page; MCP endpoints: a JSON-RPC error) and, for a tool
call, a tool error that says to retry. Its message names the file and what to do (for the log and
the admin CLI); `reason` is the short form shown to remote clients, without paths.

Failures are logged once a minute per kind (a full disk fails every write, and the log is likely
on the same disk).

Start-up and shutdown
---------------------

`conn` is a plain connection for opening the file, applying the schema and migrating before the
server serves (and for tests that inspect the file); its errors are translated the same way, so a
read-only or locked file is one clear line for `serve` and the admin commands. Serving code never
uses it. `close` (`aclose` from the loop) lets the threads finish what is queued, stops them and
closes every connection; a call after it is refused as "the server is stopping".
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar

from server.storage import StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

READERS: Final = 4
"""Reader threads: enough that a long read (a 10,000-entity `read_graph`, ~100 ms) does not hold
up short ones; SQLite releases the GIL while it steps, so they also use a second core."""

DEFAULT_BUSY_TIMEOUT: Final = 3.0
"""The `store_busy_timeout` setting's default, for stores opened without settings (tests, benchmarks)."""

# Retry-After for a lock held elsewhere (administrative deletions are batched into short
# transactions, so it is released within a moment), and for conditions an operator must fix.
_RETRY_BUSY: Final = 1
_RETRY_OPERATOR: Final = 30

# Primary result codes (the low byte of an extended code), from sqlite3.h.
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14

_LOG_EVERY_SECONDS: Final = 60.0


_Job = Callable[[sqlite3.Connection], None]
_Queue = queue.SimpleQueue[_Job | None]


class Database:
    def __init__(self, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, readers: int = READERS) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self.busy_timeout = busy_timeout
        self._logged: dict[str, float] = {}
        self._writes: _Queue = queue.SimpleQueue()
        self._reads: _Queue = queue.SimpleQueue()
        # Every connection is opened here, before serving, so that a file that cannot be opened
        # fails the start-up (with the same errors as later calls), not every later call.
        with self._translated():
            self.conn = self._connect()
            self.conn.execute("PRAGMA journal_mode=WAL")
            connections = [self._connect() for _ in range(1 + readers)]
        path.chmod(0o600)
        self._threads = [threading.Thread(target=self._serve, args=(self._writes, connections[0]),
                                          name="sqlite-writer", daemon=True)]
        self._threads += [threading.Thread(target=self._serve, args=(self._reads, conn), name=f"sqlite-reader-{i}",
                                           daemon=True) for i, conn in enumerate(connections[1:])]
        self._closed = False
        self._writing = 0
        for thread in self._threads:
            thread.start()

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: a thread's connection is opened at start-up on the main thread;
        # from then on each connection is used by one thread only.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        # NORMAL in WAL mode: a commit survives a process crash; only an OS crash can lose the
        # last transactions, never corrupt the file.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    # --- serving: every statement on a thread ---------------------------------------------------

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(conn, *args)` in one BEGIN IMMEDIATE transaction on the writer thread."""
        return await self._submit(self._writes, _transaction("BEGIN IMMEDIATE", fn, args), write=True)

    async def try_write(self, fn: Callable[..., T], *args: object) -> T:
        """`write`, only if it can start at once: StorageUnavailable when this process's writer has
        work queued or another process holds the lock. For writes that merely save work later
        (the read_graph view), whose caller has another way to answer."""
        if self._writing:
            raise StorageUnavailable(f"the writer of {self.path} is busy", "the store is busy", _RETRY_BUSY)
        return await self._submit(self._writes, _transaction("BEGIN IMMEDIATE", fn, args, wait=False),
                                  write=True, quiet=True)

    def write_soon(self, fn: Callable[..., object], *args: object) -> None:
        """`write`, queued and not awaited: for bookkeeping a request must not wait for (a session's
        last-seen time). Queued behind this process's earlier writes, as `write`; a failure is
        logged, not raised."""
        if self._closed:
            return
        run = _transaction("BEGIN IMMEDIATE", fn, args)

        def job(conn: sqlite3.Connection) -> None:
            try:
                run(conn)
            except sqlite3.Error as exc:
                if not isinstance(self._translate(exc), StorageUnavailable):
                    log.error("a queued write to %s failed: %s", self.path, exc)
            except Exception:
                log.exception("a queued write to %s failed", self.path)

        self._writes.put(job)

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(conn, *args)` in one read transaction (one snapshot) on a reader thread."""
        return await self._submit(self._reads, _transaction("BEGIN DEFERRED", fn, args))

    async def _submit(self, jobs: _Queue, run: Callable[[sqlite3.Connection], T], *,
                      write: bool = False, quiet: bool = False) -> T:
        if self._closed:
            raise self._stopping()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def job(conn: sqlite3.Connection) -> None:
            error: BaseException | None = None
            result: T | None = None
            try:
                result = run(conn)
            except sqlite3.Error as exc:
                error = self._translate(exc, quiet=quiet)
            except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
                error = exc
            _settle_threadsafe(loop, future, result, error)

        jobs.put(job)
        if not write:
            return await future
        self._writing += 1  # only ever changed on the loop
        try:
            return await asyncio.shield(future)
        finally:
            # Counted until the writer is done with it, even when the caller is cancelled.
            if future.done():
                self._writing -= 1
            else:
                future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[Any]) -> None:
        self._writing -= 1
        if not future.cancelled():
            future.exception()  # retrieved: its caller is gone, and the database logs what matters

    def _stopping(self) -> StorageUnavailable:
        return StorageUnavailable(f"the database {self.path} is closed (the server is stopping)",
                                  "the server is stopping", _RETRY_BUSY)

    def _serve(self, jobs: _Queue, conn: sqlite3.Connection) -> None:
        try:
            while (job := jobs.get()) is not None:
                job(conn)
        finally:
            conn.close()

    def _translate(self, exc: sqlite3.Error, *, quiet: bool = False) -> Exception:
        """A condition that retrying can outlast becomes StorageUnavailable; anything else (a
        constraint, a bug in a statement) stays what it is."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            seconds = f"{self.busy_timeout:g}"
            unavailable = StorageUnavailable(
                f"the database {self.path} stayed locked by another process for more than {seconds} s "
                "(an administrative command, a backup?); the request was refused and can be retried; "
                "raise store_busy_timeout if such waits are expected",
                "the store is busy", _RETRY_BUSY)
        elif code == _SQLITE_FULL:
            unavailable = StorageUnavailable(
                f"the disk holding the database {self.path} is full: free space on that file system "
                "(or move the data directory); writes fail until then, reads still work",
                "the server's disk is full", _RETRY_OPERATOR)
        elif code == _SQLITE_READONLY:
            unavailable = StorageUnavailable(
                f"the database {self.path} is read-only for this process: give the server's user write "
                "permission on it and its directory (and the -wal and -shm files beside it)",
                "the store is read-only", _RETRY_OPERATOR)
        elif code in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
            unavailable = StorageUnavailable(
                f"I/O error on the database {self.path} ({exc}): check the disk and the file system "
                "it is on (space, permissions, mount, kernel log)",
                "the store cannot reach its disk", _RETRY_OPERATOR)
        else:
            return exc
        if not quiet:
            self._log_once(unavailable)
        return unavailable

    def _log_once(self, exc: StorageUnavailable) -> None:
        # One line per condition a minute: a full disk fails every write, and the log is
        # probably on the same disk.
        now = time.monotonic()
        if now - self._logged.get(exc.reason, -math.inf) >= _LOG_EVERY_SECONDS:
            self._logged[exc.reason] = now
            log.warning("%s", exc)

    # --- start-up and tests: the plain connection -----------------------------------------------

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            # Not logged: raised to the start-up or the test, which says it once.
            raise self._translate(exc, quiet=True) from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._translated():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def apply_schema(self, ddl: str) -> None:
        with self.transaction() as conn:
            for statement in ddl.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def close(self) -> None:
        """Finish the queued work, stop the threads and close every connection (blocks)."""
        if self._closed:
            return
        self._closed = True
        self._writes.put(None)
        for _ in self._threads[1:]:
            self._reads.put(None)
        for thread in self._threads:
            thread.join()
        self.conn.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _transaction(begin: str, fn: Callable[..., T], args: tuple[object, ...], *,
                 wait: bool = True) -> Callable[[sqlite3.Connection], T]:
    def run(conn: sqlite3.Connection) -> T:
        if not wait:
            timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
            conn.execute("PRAGMA busy_timeout=0")
            try:
                conn.execute(begin)
            finally:
                conn.execute(f"PRAGMA busy_timeout={int(timeout)}")
        else:
            conn.execute(begin)
        try:
            result = fn(conn, *args)
        except BaseException:
            # SQLite may already have rolled back (SQLITE_FULL, IOERR, BUSY in a statement).
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return result
    return run


def _settle_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], result: T | None,
                       error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():  # the caller was cancelled; the work is done all the same
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(settle)

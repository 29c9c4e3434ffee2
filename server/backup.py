"""Backups of the SQLite backend, taken while the server runs, and restores.

A backup is a directory holding what the server cannot do without: `memory.sqlite3` (accounts,
clients, grants, approvals, signing keys, memory graphs, session records) copied with SQLite's
online backup API, which reads one consistent snapshot while the server goes on writing (WAL:
readers never block the writer), and the key file (`session.key`), without which every browser
login ends and the signing keys stored in the database cannot be decrypted. Rate-limit counts
(`throttle.sqlite3`) are left out: they only matter for minutes.

A restore puts such a directory back, and only while no server uses the data directory: every
`memory-mcp serve` process holds a shared lock on `serve.lock` in it for as long as it runs
(`hold_serve_lock`), and restore takes the exclusive one or refuses. The lock is the kernel's
(flock), so a server killed with SIGKILL leaves nothing stale behind.

With the Redis backend (`redis_url` set) a backup is the same directory: what Redis holds is
exported (`server.storage.portable`) into a new `memory.sqlite3`, its key file beside it, while
the servers run; a restore imports such a directory into a Redis that holds no memory-mcp data.
`migrate` imports a stopped SQLite data directory into such a Redis. Every import is checked by
exporting the target again and comparing the counts per kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from redis import exceptions as redis_errors

from server.config import Settings
from server.keyfile import KEY_FILE
from server.storage import StorageUnavailable
from server.storage.backends import open_portable
from server.storage.portable import (
    Counts,
    PortableError,
    PortableStore,
    Record,
    SessionRecordRecord,
    count_records,
    import_records,
)
from server.storage.redis import RedisStorage
from server.storage.redis.base import redacted, unavailable
from server.storage.sqlite.portable import export_database

LOCK_FILE = "serve.lock"


class BackupError(Exception):
    """A backup or restore cannot be done; the message says why and what to do."""


T = TypeVar("T")


def _lock(data_dir: Path, mode: int) -> int:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def hold_serve_lock(data_dir: Path) -> int:
    """Taken by every serving process and never released (the kernel drops it at exit): shared,
    so that several workers and instances on one data directory all hold it."""
    return _lock(data_dir, fcntl.LOCK_SH)


@contextlib.contextmanager
def _no_server(data_dir: Path) -> Iterator[None]:
    try:
        fd = _lock(data_dir, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BackupError(f"a memory-mcp server is running on {data_dir}: stop it first (systemctl stop "
                          "memory-mcp, or end every `memory-mcp serve` on this data directory)") from None
    try:
        yield
    finally:
        os.close(fd)


def _check(database: Path) -> tuple[int, int]:
    """SQLite's integrity check of a copy, and what it holds (accounts, entities)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise BackupError(f"{database} fails SQLite's integrity check ({verdict}): do not use it")
        users = conn.execute("SELECT count(*) FROM auth_users").fetchone()[0]
        entities = conn.execute("SELECT count(*) FROM memory_entities").fetchone()[0]
        return int(users), int(entities)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{database} is not a memory-mcp database ({exc})") from None
    finally:
        conn.close()


def backup(settings: Settings, destination: Path) -> str:
    if settings.redis_url is not None:
        return _backup_redis(settings, destination)
    source = settings.database_path
    if not source.is_file():
        raise BackupError(f"there is no database to back up in {settings.data_dir} (set --data-dir)")
    if destination.exists() and any(destination.iterdir()):
        raise BackupError(f"{destination} is not empty: back up into a new directory")
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = destination / source.name
    # Created private before SQLite writes a byte into it.
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    started = time.monotonic()
    src = sqlite3.connect(source, timeout=settings.store_busy_timeout)
    dst = sqlite3.connect(target)
    try:
        # All pages in one step: one read transaction, one snapshot, however busy the server is.
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    shutil.copyfile(settings.data_dir / KEY_FILE, destination / KEY_FILE)
    os.chmod(destination / KEY_FILE, 0o600)
    users, entities = _check(target)
    return (f"backed up {settings.data_dir} to {destination} in {time.monotonic() - started:.1f} s "
            f"({users} account(s), {entities} entities; keep the directory private: it holds the server's key)")


def _backup_files(settings: Settings, source: Path) -> tuple[str, str]:
    files = (settings.database_path.name, KEY_FILE)
    missing = [name for name in files if not (source / name).is_file()]
    if missing:
        raise BackupError(f"{source} is not a memory-mcp backup: {', '.join(missing)} missing")
    return files


def restore(settings: Settings, source: Path, *, replace: bool) -> str:
    files = _backup_files(settings, source)
    users, entities = _check(source / files[0])
    if settings.redis_url is not None:
        return _restore_redis(settings, source / files[0], replace=replace)
    data_dir = settings.data_dir
    with _no_server(data_dir):
        present = [p for p in data_dir.iterdir() if p.name != LOCK_FILE and not p.name.startswith("before-restore-")]
        moved = ""
        if present:
            if not replace:
                raise BackupError(f"{data_dir} already holds data: pass --replace to move it aside and restore "
                                  "(nothing is deleted)")
            aside = data_dir / time.strftime("before-restore-%Y%m%dT%H%M%SZ", time.gmtime())
            aside.mkdir(mode=0o700)
            for path in present:
                path.rename(aside / path.name)
            moved = f"; what was there is in {aside}"
        for name in files:
            fd = os.open(data_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out, open(source / name, "rb") as src:
                shutil.copyfileobj(src, out)
    return f"restored {users} account(s) and {entities} entities from {source} into {data_dir}{moved}"


# --- Redis: through the portable records (server.storage.portable) ---------------------------


def migrate(settings: Settings, target: Settings) -> str:
    """Copy the SQLite data directory of `settings` into the (empty) Redis of `target`."""
    if settings.redis_url is not None:
        raise BackupError("memory-mcp migrate copies a SQLite data directory into Redis, but redis_url is set "
                          "(--redis-url, MEMORY_MCP_REDIS_URL or the config file): unset it, and name the "
                          "target with --to")
    if target.redis_url is None:
        raise BackupError("--to must name a Redis (redis://, rediss:// or unix://)")
    database = settings.database_path
    if not database.is_file():
        raise BackupError(f"there is no database to migrate in {settings.data_dir} (set --data-dir)")
    with _no_server(settings.data_dir):
        counts = _run(target, lambda store: _import_into_redis(target, store, export_database(database, time.time())))
    return (f"copied {settings.data_dir} into Redis at {redacted(target.redis_url)}: {counts.line()}; set "
            "redis_url to it and start the servers (the data directory is left as it was)")


def _backup_redis(settings: Settings, destination: Path) -> str:
    if destination.exists() and any(destination.iterdir()):
        raise BackupError(f"{destination} is not empty: back up into a new directory")
    created = not destination.exists()
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    started = time.monotonic()
    local = settings.model_copy(update={"redis_url": None, "data_dir": destination})

    async def copy(source: PortableStore) -> Counts:
        target = open_portable(local)
        try:
            counts = await import_records(target, _live(source.export_records(time.time()), settings))
        finally:
            await target.close()
        found = await count_records(export_database(local.database_path, 0.0))
        _compare(counts, found, str(destination))
        return counts

    try:
        counts = _run(settings, copy)
    except BaseException:
        # Half a backup must not look like one.
        for path in destination.iterdir():
            path.unlink()
        if created:
            destination.rmdir()
        raise
    _one_file(local.database_path)
    _check(local.database_path)
    return (f"backed up Redis at {redacted(settings.redis_url or '')} to {destination} in "
            f"{time.monotonic() - started:.1f} s ({counts.line()}; keep the directory private: it holds the "
            "server's key)")


def _one_file(database: Path) -> None:
    """Fold the write-ahead log into the database and leave rollback-journal mode on: a backup is
    these two files and nothing else (a server opening it goes back to WAL)."""
    conn = sqlite3.connect(database)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


def _restore_redis(settings: Settings, database: Path, *, replace: bool) -> str:
    counts = _run(settings, lambda store: _import_into_redis(settings, store,
                                                                export_database(database, time.time()),
                                                                replace=replace))
    return f"restored {database.parent} into Redis at {redacted(settings.redis_url or '')}: {counts.line()}"


async def _import_into_redis(settings: Settings, store: PortableStore, records: AsyncIterator[Record], *,
                             replace: bool = False) -> Counts:
    where = redacted(settings.redis_url or "")
    if not isinstance(store, RedisStorage):
        raise BackupError("the target is not a Redis")
    if await store.holds_data():
        also = " (--replace only moves a SQLite data directory aside; Redis is not emptied for you)" if replace else ""
        raise BackupError(
            f"Redis at {where} already holds memory-mcp data (keys starting with {store.prefix!r}){also}: stop every "
            "server using it, then empty it (FLUSHDB if the database is memory-mcp's alone, or delete the keys "
            "with that prefix) and run this again; or use another database number, e.g. /1")
    counts = await import_records(store, _live(records, settings))
    found = await count_records(store.export_records(time.time()))
    _compare(counts, found, f"Redis at {where}")
    return counts


async def _live(records: AsyncIterator[Record], settings: Settings) -> AsyncIterator[Record]:
    """The records without the MCP sessions that have been idle too long to be resumed."""
    now = time.time()
    async for record in records:
        if (isinstance(record, SessionRecordRecord) and record.record.transport == "streamable-http"
                and record.record.last_seen_at + settings.session_idle_timeout <= now):
            continue
        yield record


def _compare(written: Counts, found: Counts, where: str) -> None:
    differ = [f"{kind}: {written[kind]} written, {found[kind]} found" for kind in sorted(set(written) | set(found))
              if written[kind] != found[kind]]
    if differ:
        raise BackupError(f"the copy in {where} does not hold what was written ({'; '.join(differ)}); was "
                          "something else writing to it? Empty it and run this again")


def _run(settings: Settings, work: Callable[[PortableStore], Awaitable[T]]) -> T:
    """`work` on the store of `settings`, with Redis's and the import's errors as `BackupError`s that
    name the Redis without its password."""

    async def run() -> T:
        store = open_portable(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    where = redacted(settings.redis_url or "")
    try:
        return asyncio.run(run())
    except PortableError as exc:
        raise BackupError(str(exc)) from None
    except StorageUnavailable as exc:
        raise BackupError(f"cannot use Redis at {where}: {exc}; start it, or correct the URL") from None
    except redis_errors.RedisError as exc:
        translated = unavailable(exc)
        if translated is None:
            raise BackupError(f"Redis at {where} refused a command: {exc}") from None
        raise BackupError(f"cannot use Redis at {where}: {translated}; start it, or correct the URL") from None

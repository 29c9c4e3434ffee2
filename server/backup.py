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

With the Redis backend the data lives in Redis: back it up there (docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from server.config import Settings
from server.keyfile import KEY_FILE

LOCK_FILE = "serve.lock"


class BackupError(Exception):
    """A backup or restore cannot be done; the message says why and what to do."""


def _refuse_redis(settings: Settings, what: str) -> None:
    if settings.redis_url is not None:
        raise BackupError(f"{what} covers the SQLite backend; with redis_url set the data is in Redis: back it up "
                          "there (docs/deploy.md, \"Backups\")")


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
    _refuse_redis(settings, "memory-mcp backup")
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


def restore(settings: Settings, source: Path, *, replace: bool) -> str:
    _refuse_redis(settings, "memory-mcp restore")
    files = (settings.database_path.name, KEY_FILE)
    missing = [name for name in files if not (source / name).is_file()]
    if missing:
        raise BackupError(f"{source} is not a memory-mcp backup: {', '.join(missing)} missing")
    users, entities = _check(source / files[0])
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

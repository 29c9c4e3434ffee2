"""Password hashing with argon2id (argon2-cffi defaults: RFC 9106 low-memory profile, 64 MiB).

Hashing takes tens of milliseconds of CPU and 64 MiB on purpose, so it runs on a few threads of
its own: on the event loop it would stall every MCP stream while someone logs in, and on the
default executor a password spray would queue ahead of (and starve) everything else run there.

The work admitted is bounded: at most `MAX_PENDING` hashes running or waiting in all, and at
most `MAX_PENDING_PER_SOURCE` for one source (the caller's client address). Beyond either,
`PasswordsBusy` is raised at once, before any work: the caller answers "busy, try again", and a
spray from one address cannot fill the queue that other people's logins wait in.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
_dummy_hash: str | None = None

# More threads than cores would only add 64 MiB each without finishing sooner.
WORKERS = max(1, min(4, os.cpu_count() or 1))
MAX_PENDING = WORKERS * 8
MAX_PENDING_PER_SOURCE = 2
# Seconds a caller refused with `PasswordsBusy` is told to wait: about a queue's worth of work.
BUSY_RETRY_AFTER = 2

_executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="argon2")
# Released by the worker thread when the hash is done, not by the awaiting coroutine: a caller
# that goes away does not stop its thread, and the bound is on the work, not on the waiters.
_slots = threading.BoundedSemaphore(MAX_PENDING)
# Per source, on the event loop only (no lock needed): fairness, not the hard bound.
_by_source: dict[str, int] = {}

T = TypeVar("T")


class PasswordsBusy(Exception):
    """Too much password hashing is pending; nothing was done. Retry after `BUSY_RETRY_AFTER`."""


@contextmanager
def _admitted(source: str) -> Iterator[None]:
    if _by_source.get(source, 0) >= MAX_PENDING_PER_SOURCE or not _slots.acquire(blocking=False):
        raise PasswordsBusy  # acquire(blocking=False) never waits: full means busy
    _by_source[source] = _by_source.get(source, 0) + 1
    try:
        yield
    finally:
        left = _by_source.pop(source) - 1
        if left:
            _by_source[source] = left


def _release_after(fn: Callable[[], T]) -> T:
    try:
        return fn()
    finally:
        _slots.release()


async def _run(fn: Callable[[], T], source: str | None) -> T:
    """`source` None: work the operator asked for (accounts created from the command line),
    which is not bounded."""
    loop = asyncio.get_running_loop()
    if source is None:
        return await loop.run_in_executor(_executor, fn)
    with _admitted(source):
        try:
            future = loop.run_in_executor(_executor, _release_after, fn)
        except BaseException:
            _slots.release()
            raise
        return await future


async def hash_password(password: str, source: str | None = None) -> str:
    return await _run(functools.partial(_hasher.hash, password), source)


def _verify(password_hash: str | None, password: str) -> bool:
    global _dummy_hash
    if password_hash is None:
        # Computed once, in this thread; two threads racing to compute it is harmless.
        if _dummy_hash is None:
            _dummy_hash = _hasher.hash("dummy password for unknown users")
        password_hash = _dummy_hash
        known = False
    else:
        known = True
    try:
        return bool(_hasher.verify(password_hash, password)) and known
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str, source: str | None = None) -> bool:
    """Constant work whether or not the account exists: an unknown user is checked against a
    dummy hash, so response time does not reveal which usernames exist. Raises `PasswordsBusy`
    (nothing verified) when the hashing queue, or `source`'s share of it, is full."""
    return await _run(functools.partial(_verify, password_hash, password), source)


def needs_rehash(password_hash: str) -> bool:
    try:
        return bool(_hasher.check_needs_rehash(password_hash))
    except InvalidHashError:
        return True

"""Password hashing with argon2id (argon2-cffi defaults: RFC 9106 low-memory profile, 64 MiB).

Hashing takes tens of milliseconds of CPU and 64 MiB on purpose, so it always runs in the default
thread executor: on the event loop it would stall every MCP stream while someone logs in.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
_dummy_hash: str | None = None

T = TypeVar("T")


async def _run(fn: functools.partial[T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def hash_password(password: str) -> str:
    return await _run(functools.partial(_hasher.hash, password))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists: an unknown user is checked against a
    dummy hash, so response time does not reveal which usernames exist."""
    global _dummy_hash
    if password_hash is None:
        if _dummy_hash is None:
            _dummy_hash = await hash_password("dummy password for unknown users")
        await _run(functools.partial(_verify, _dummy_hash, password))
        return False
    return await _run(functools.partial(_verify, password_hash, password))


def needs_rehash(password_hash: str) -> bool:
    try:
        return bool(_hasher.check_needs_rehash(password_hash))
    except InvalidHashError:
        return True

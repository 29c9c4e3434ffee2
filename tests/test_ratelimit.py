"""The rate limiter (`server.storage.Limiter`) on both backends: budgets, the atomic check-and-count
of `admit` under concurrency (also across two handles, as two processes have), and what
`memory-mcp throttle` lists and clears. Time moves with an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from auth.ratelimit import Ages
from server.storage import Limiter
from server.storage.redis import DEFAULT_PREFIX, RedisLimiter
from server.storage.sqlite.ratelimit import SQLiteRateLimiter
from tests.authflow import Backend


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


Open = Callable[[], Limiter]


@pytest.fixture
async def limiters(tmp_path: Path, store_backend: Backend) -> AsyncIterator[tuple[Clock, Open]]:
    """A clock, and handles on one shared limiter store (each call: another handle)."""
    clock = Clock()
    opened: list[Limiter] = []
    clients: list[aioredis.Redis] = []

    def open_limiter() -> Limiter:
        if store_backend.redis_url is not None:
            clients.append(aioredis.Redis.from_url(store_backend.redis_url))
            opened.append(RedisLimiter(clients[-1], DEFAULT_PREFIX, clock=clock))
        else:
            opened.append(SQLiteRateLimiter(tmp_path / "throttle.sqlite3", clock=clock))
        return opened[-1]

    yield clock, open_limiter
    for limiter in opened:
        await limiter.close()
    for client in clients:
        await client.aclose()


async def test_hit_counts_within_the_window(limiters: tuple[Clock, Open]) -> None:
    clock, open_limiter = limiters
    limiter = open_limiter()
    for _ in range(3):
        assert await limiter.hit("register:a", 3, 60) is None
        clock.now += 10
    # Full: the oldest action (30 s ago) frees a place in 30 s.
    assert await limiter.hit("register:a", 3, 60) == 30.0
    assert await limiter.hit("register:b", 3, 60) is None
    clock.now += 30
    assert await limiter.hit("register:a", 3, 60) is None
    assert await limiter.hit("register:a", 3, 60) == 10.0


def at_most(limit: int) -> Callable[[Sequence[Ages]], float]:
    def policy(ages: Sequence[Ages]) -> float:
        return 0.0 if len(ages[0]) < limit else 7.5
    return policy


async def test_admit_gives_the_policy_each_keys_ages_and_counts_only_when_admitted(
        limiters: tuple[Clock, Open]) -> None:
    clock, open_limiter = limiters
    limiter = open_limiter()
    seen: list[list[Ages]] = []

    def policy(ages: Sequence[Ages]) -> float:
        seen.append([list(a) for a in ages])
        return 0.0 if len(ages[1]) < 2 else 0.2

    keys = [("login-user:x", 1000.0), ("login-addr:1.2.3.4", 30.0)]
    assert await limiter.admit(keys, policy) is None
    clock.now += 10
    assert await limiter.admit(keys, policy) is None
    clock.now += 5
    # Refused (a fraction of a second rounds up to one): nothing counted.
    assert await limiter.admit(keys, policy) == 1
    assert seen[-1] == [[5.0, 15.0], [5.0, 15.0]]  # newest first
    clock.now += 16  # the address's first action left its 30 s window; the user's did not
    assert await limiter.admit(keys, policy) is None
    assert seen[-1] == [[21.0, 31.0], [21.0]]
    await limiter.forget_latest("login-addr:1.2.3.4")
    assert await limiter.admit(keys, at_most(10)) is None
    assert seen[-1] == [[21.0, 31.0], [21.0]]


async def test_concurrent_admits_never_exceed_the_budget(limiters: tuple[Clock, Open]) -> None:
    _, open_limiter = limiters
    handles = [open_limiter(), open_limiter()]
    keys = [("login-addr:9.9.9.9", 900.0)]
    results = await asyncio.gather(*(handles[i % 2].admit(keys, at_most(5)) for i in range(40)),
                                   return_exceptions=True)
    admitted = [r for r in results if r is None]
    assert len(admitted) == 5, results
    # Every other attempt waits (or, under contention, was refused as busy): none was counted.
    assert all(r == 8 or type(r).__name__ == "StorageUnavailable" for r in results if r is not None), results
    [counted] = await handles[0].counted("login-addr:")
    assert len(counted.ages) == 5


async def test_counted_forget_reset_and_clear(limiters: tuple[Clock, Open]) -> None:
    clock, open_limiter = limiters
    limiter = open_limiter()
    for key in ("login-user:a", "login-user:b", "login-addr:1.1.1.1", "register:1.1.1.1"):
        await limiter.hit(key, 10, 100)
    clock.now += 1
    await limiter.hit("login-user:a", 10, 100)
    counted = await limiter.counted()
    assert [(c.key, c.ages) for c in counted] == [
        ("login-addr:1.1.1.1", [1.0]), ("login-user:a", [0.0, 1.0]), ("login-user:b", [1.0]),
        ("register:1.1.1.1", [1.0])]
    assert [c.key for c in await limiter.counted("login-user:")] == ["login-user:a", "login-user:b"]
    # A prefix is not a pattern.
    assert await limiter.counted("login-user:*") == []
    await limiter.forget_latest("login-user:a")
    assert [c.ages for c in await limiter.counted("login-user:a")] == [[1.0]]
    await limiter.reset("login-user:a")
    assert [c.key for c in await limiter.counted("login-user:")] == ["login-user:b"]
    assert await limiter.clear(["login-user:b", "nothing"]) == 1
    assert await limiter.clear(None) == 2
    assert await limiter.counted() == []
    # What aged out of its window is not listed.
    await limiter.hit("register:2.2.2.2", 10, 100)
    clock.now += 100
    assert await limiter.counted() == []

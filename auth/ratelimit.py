"""Rate limits for the endpoints anyone can call: registration, login, token.

A limiter answers "may this key act now?" for a budget of `limit` actions per `window` seconds,
and says how long to wait when not. Keys name what is limited ("register:<address>",
"login-user:<hash>"), so one limiter serves every endpoint. `MemoryRateLimiter` keeps its counts
in the process (tests, embedding); the server keeps them in its store (SQLite or Redis,
`server/storage/`), where `memory-mcp throttle` can list and clear them while it runs, and where
every instance on that store shares one budget.

Policies that a plain count cannot express (login backoff, `auth.throttle`) use `admit`: it
reads the keys' recent actions, asks the policy how long to wait and, when not at all, counts the
attempt, in one atomic step. Checking first and counting later would let a burst of concurrent
attempts all pass the check before any of them is counted.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

# Keys tracked at most; beyond it the oldest are dropped, so that a flood of distinct source
# addresses cannot grow memory without bound.
MAX_KEYS = 100_000

# How many seconds ago each counted action of one key was, newest first (never negative: a clock
# that went back makes an action look recent, never from the future).
Ages = list[float]
# The policy of `admit`: given the ages of each key's actions within its window, the seconds to
# wait (0 or less: go ahead).
Policy = Callable[[Sequence[Ages]], float]


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window: float) -> float | None:
        """Count one action for `key`; None if it is within the budget, else the seconds to
        wait before the next one would be."""
        ...

    async def admit(self, keys: Sequence[tuple[str, float]], policy: Policy) -> int | None:
        """Atomically: the ages of each key's actions within its window (the key's second
        element, also how long a new action is kept) go to `policy`; if it says wait, return the
        whole seconds to wait (at least 1) and count nothing; otherwise count one action for
        every key and return None."""
        ...

    async def forget_latest(self, key: str) -> None:
        """Uncount the newest action of `key`: an attempt counted in advance by `admit` that,
        as it turned out, must not count (it succeeded, or was never carried out)."""
        ...

    async def reset(self, key: str) -> None:
        """Forget `key` (a successful login clears its failures)."""
        ...


def whole_seconds(wait: float) -> int | None:
    return max(1, math.ceil(wait)) if wait > 0 else None


class MemoryRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def _fresh(self, key: str, window: float, now: float) -> deque[float]:
        hits = self._hits.pop(key, None) or deque()
        while hits and hits[0] <= now - window:
            hits.popleft()
        self._hits[key] = hits  # re-inserted: the dict's order is least recently used first
        if len(self._hits) > MAX_KEYS:
            del self._hits[next(iter(self._hits))]
        return hits

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        now = self._clock()
        hits = self._fresh(key, window, now)
        if len(hits) >= limit:
            return max(0.0, math.ceil(hits[0] + window - now))
        hits.append(now)
        return None

    async def admit(self, keys: Sequence[tuple[str, float]], policy: Policy) -> int | None:
        # No await in here: atomic with respect to every other coroutine of the process.
        now = self._clock()
        found = [self._fresh(key, window, now) for key, window in keys]
        wait = whole_seconds(policy([[max(0.0, now - t) for t in reversed(hits)] for hits in found]))
        if wait is None:
            for hits in found:
                hits.append(now)
        return wait

    async def forget_latest(self, key: str) -> None:
        hits = self._hits.get(key)
        if hits:
            hits.pop()

    async def reset(self, key: str) -> None:
        self._hits.pop(key, None)

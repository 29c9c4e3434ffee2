"""Rate limits for the endpoints anyone can call: registration, login, token.

A limiter answers "may this key act now?" for a budget of `limit` actions per `window` seconds,
and says how long to wait when not. Keys name what is limited ("register:<address>",
"login-user:<name>"), so one limiter serves every endpoint. This one keeps its counts in the
process; a deployment of several instances gives each its own budget, which bounds an attacker
at (instances x limit) — a shared backend can implement the same protocol.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

# Keys tracked at most; beyond it the oldest are dropped, so that a flood of distinct source
# addresses cannot grow memory without bound.
MAX_KEYS = 100_000


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window: float) -> float | None:
        """Count one action for `key`; None if it is within the budget, else the seconds to
        wait before the next one would be."""
        ...

    async def reset(self, key: str) -> None:
        """Forget `key` (a successful login clears its failures)."""
        ...

    async def recent(self, key: str, window: float) -> list[float]:
        """How many seconds ago each action of `key` counted in the last `window` seconds was,
        newest first; counts nothing. Ages rather than times, so callers need not share this
        limiter's clock. For policies `hit` cannot express (login backoff, `auth.throttle`)."""
        ...


class MemoryRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        now = self._clock()
        hits = self._hits.pop(key, None) or deque()
        while hits and hits[0] <= now - window:
            hits.popleft()
        self._hits[key] = hits  # re-inserted: the dict's order is least recently used first
        if len(self._hits) > MAX_KEYS:
            del self._hits[next(iter(self._hits))]
        if len(hits) >= limit:
            return max(0.0, math.ceil(hits[0] + window - now))
        hits.append(now)
        return None

    async def reset(self, key: str) -> None:
        self._hits.pop(key, None)

    async def recent(self, key: str, window: float) -> list[float]:
        now = self._clock()
        return [now - t for t in reversed(self._hits.get(key, ())) if t > now - window]

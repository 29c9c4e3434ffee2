"""Rate-limit counts (`server.storage.Limiter`) in the Redis backend, shared by every instance.

One sorted set per limited key, `rate:<key>`: one member per counted action, `<at>:<random>`
(`at`: the limiter's wall-clock time of the action, as Python wrote it; the random part keeps two
actions at the same instant apart), scored by when it stops counting (`at` + the key's window).
Members past their score are dropped whenever the key is written, and the key's TTL is set to its
newest member's end at every write: a flood of distinct source addresses leaves keys that expire
by themselves within one window, never a growing set.

Atomicity:

* `hit`, `forget_latest`, `clear`: one Lua script each (count, decide, add in one step).
* `admit`: its policy is Python (`auth.throttle`), which a script cannot run. So it is
  optimistic: read the keys' members, run the policy here, then one script adds the actions only
  if every key still holds exactly the members read (members are unique, so equal lists mean no
  action was counted, forgotten or cleared in between), and the whole is retried when one was.
  A refusal writes nothing and needs no check: it was right for the state read. Of N concurrent
  admits each round lets at least one through, so retries are bounded by the concurrency; past
  `ADMIT_ATTEMPTS` the attempt is refused as busy (`StorageUnavailable`, a 503), counting
  nothing, as SQLite does when its lock is held too long. WATCH/MULTI would do the same but holds
  a pooled connection across the policy's run; a version counter would add a key per key.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from auth.ratelimit import Policy, whole_seconds
from server.storage import Counted, StorageUnavailable
from server.storage.redis.base import RETRY_AFTER_SECONDS, guard_all

ADMIT_ATTEMPTS = 50
# Keys deleted per command by `clear(None)`.
_CLEAR_BATCH = 500

# Shared by the scripts: the live members of a key (score above `now`), and setting the TTL.
_LIB = """
local function live(key, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZRANGE', key, 0, -1)
end

local function at(member) return tonumber(string.match(member, '^([^:]+):')) end

-- Count `member` until `expires`; the key lives until its last member's end (relative to `now`:
-- the limiter's clock, whatever Redis's says).
local function add(key, member, expires, now)
  redis.call('ZADD', key, expires, member)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', key, math.max(1, math.ceil((tonumber(last[2]) - tonumber(now)) * 1000)))
end
"""

# KEYS: the key. ARGV: now, limit, window, member, member's end.
_HIT = _LIB + """
local now, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local count, oldest = 0, nil
for _, m in ipairs(live(KEYS[1], ARGV[1])) do
  local t = at(m)
  if t > now - window then
    count = count + 1
    if oldest == nil or t < oldest then oldest = t end
  end
end
if count >= limit then
  return math.max(0, math.ceil(window - math.max(0, now - oldest)))
end
add(KEYS[1], ARGV[4], ARGV[5], ARGV[1])
return -1
"""

# KEYS: the keys. ARGV: now, then per key: the members read (joined by spaces), the new member,
# its end.
_ADMIT = _LIB + """
for i, key in ipairs(KEYS) do
  if table.concat(live(key, ARGV[1]), ' ') ~= ARGV[3 * i - 1] then return 0 end
end
for i, key in ipairs(KEYS) do add(key, ARGV[3 * i], ARGV[3 * i + 1], ARGV[1]) end
return 1
"""

_FORGET_LATEST = _LIB + """
local newest, newest_at = nil, nil
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local t = at(m)
  if newest_at == nil or t > newest_at then newest, newest_at = m, t end
end
if newest then redis.call('ZREM', KEYS[1], newest) end
"""

_CLEAR = """
local n = 0
for _, key in ipairs(KEYS) do
  n = n + redis.call('ZCARD', key)
  redis.call('DEL', key)
end
return n
"""


def _at(member: bytes) -> float:
    return float(member.split(b":", 1)[0])


@guard_all
class RedisLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str, clock: Callable[[], float] = time.time,
                 closed: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._closed = closed
        self._hit = client.register_script(_HIT)
        self._admit = client.register_script(_ADMIT)
        self._forget_latest = client.register_script(_FORGET_LATEST)
        self._clear = client.register_script(_CLEAR)

    @property
    def closed(self) -> bool:
        """Whether the client it runs on was closed (by the storage that owns it): a call is then
        refused (`guarded`), as redis-py would quietly open a connection nothing closes."""
        return self._closed()

    def _key(self, key: str) -> str:
        return f"{self.prefix}rate:{key}"

    @staticmethod
    def _member(now: float) -> str:
        return f"{now!r}:{secrets.token_hex(6)}"

    # RateLimiter

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        now = self._clock()
        wait = await self._hit(keys=[self._key(key)],
                               args=[repr(now), limit, repr(float(window)), self._member(now), repr(now + window)])
        return None if int(wait) < 0 else float(wait)

    async def admit(self, keys: Sequence[tuple[str, float]], policy: Policy) -> int | None:
        names = [self._key(key) for key, _ in keys]
        for _ in range(ADMIT_ATTEMPTS):
            now = self._clock()
            async with self.client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zrangebyscore(name, f"({now!r}", "+inf")
                found: list[list[bytes]] = await pipe.execute()
            ages = [sorted(max(0.0, now - _at(m)) for m in members if _at(m) > now - window)
                    for members, (_, window) in zip(found, keys, strict=True)]
            wait = whole_seconds(policy(ages))
            if wait is not None:
                return wait
            args: list[Any] = [repr(now)]
            for members, (_, window) in zip(found, keys, strict=True):
                args += [b" ".join(members), self._member(now), repr(now + window)]
            if await self._admit(keys=names, args=args):
                return None
        raise StorageUnavailable(f"rate limit keys {[key for key, _ in keys]} changed under {ADMIT_ATTEMPTS} "
                                 "attempts in a row", "the server is busy", RETRY_AFTER_SECONDS)

    async def forget_latest(self, key: str) -> None:
        await self._forget_latest(keys=[self._key(key)])

    async def reset(self, key: str) -> None:
        await self.clear([key])

    # Administration (`memory-mcp throttle`)

    async def counted(self, prefix: str = "") -> list[Counted]:
        """Every key starting with `prefix` that has live actions, with their ages."""
        now = self._clock()
        names = [name async for name in self.client.scan_iter(match=self._pattern(prefix), count=1000)]
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrangebyscore(name, f"({now!r}", "+inf")
            found: list[list[bytes]] = await pipe.execute()
        strip = len(self._key(""))
        counted = [Counted(name.decode()[strip:], sorted(max(0.0, now - _at(m)) for m in members))
                   for name, members in zip(names, found, strict=True) if members]
        return sorted(counted, key=lambda c: c.key)

    async def clear(self, keys: Sequence[str] | None) -> int:
        """Forget the given keys (None: every key); the number of counted actions forgotten."""
        if keys is not None:
            return int(await self._clear(keys=[self._key(key) for key in keys])) if keys else 0
        forgotten, batch = 0, []
        async for name in self.client.scan_iter(match=self._pattern(""), count=1000):
            batch.append(name)
            if len(batch) == _CLEAR_BATCH:
                forgotten += int(await self._clear(keys=batch))
                batch = []
        if batch:
            forgotten += int(await self._clear(keys=batch))
        return forgotten

    def _pattern(self, prefix: str) -> str:
        # SCAN's pattern is a glob: the prefix's own glob characters are matched literally.
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self._key(prefix))
        return escaped + "*"

    async def close(self) -> None:
        """Nothing of its own: it runs on the storage's client, which the storage closes."""

"""The server's keys in the Redis backend: the ID-token signing keys (`auth.store.SigningKeyStore`)
and the cookie key (`server.storage.Storage.cookie_key`).

Keys (formats and TTLs in docs/storage.md):

* `signing-key:<kid>`: hash of one key (`alg`, `public_jwk`, `private_jwk` as ciphertext only,
  `created_at`, and once retired `retired_at`, `published_until`); a retired key carries a TTL
  to its `published_until`, the current one none;
* `signing-key-current`: the current key's kid;
* `signing-keys`: sorted set of every kid by `created_at` (newest last);
* `cookie-key`: the 32 random bytes of the server's own secret (`server.keyfile` says what it
  protects). With SQLite it is a file in the data directory; here it is in the store, so every
  instance on every machine shares it: created once with SET NX (the first process to start
  wins, every other one reads the winner's), never changed by the server.

Atomicity: `add_signing_key` is one Lua script (check for a current key, retire it, drop keys
past their date, add the new one), so two processes starting at once keep exactly one first key.
"""

from __future__ import annotations

import secrets
from typing import Any

from auth.models import SigningKey
from server.storage.redis.base import RedisBase, guard_all

COOKIE_KEY_BYTES = 32

# ARGV: prefix, now, retire_until, replace ('1'/'0'), retired key's TTL in ms (0: already past),
# kid, alg, public_jwk, private_jwk, created_at.
_ADD_SIGNING_KEY = """
local P = ARGV[1]
local now = tonumber(ARGV[2])
local current_key, all = P .. 'signing-key-current', P .. 'signing-keys'
local current = redis.call('GET', current_key)
if current and ARGV[4] ~= '1' then return 0 end
if current then
  local key = P .. 'signing-key:' .. current
  redis.call('HSET', key, 'retired_at', ARGV[2], 'published_until', ARGV[3])
  if ARGV[5] ~= '0' then redis.call('PEXPIRE', key, ARGV[5]) end
end
for _, kid in ipairs(redis.call('ZRANGE', all, 0, -1)) do
  local key = P .. 'signing-key:' .. kid
  local until_ = redis.call('HGET', key, 'published_until')
  if redis.call('EXISTS', key) == 0 or (until_ and tonumber(until_) <= now) then
    redis.call('DEL', key)
    redis.call('ZREM', all, kid)
  end
end
local kid = ARGV[6]
redis.call('HSET', P .. 'signing-key:' .. kid, 'alg', ARGV[7], 'public_jwk', ARGV[8], 'private_jwk', ARGV[9],
           'created_at', ARGV[10])
redis.call('ZADD', all, ARGV[10], kid)
redis.call('SET', current_key, kid)
return 1
"""

# One consistent view of every key (a rotation by another process is seen whole or not at all).
_SIGNING_KEYS = """
local P = ARGV[1]
local found = {}
for _, kid in ipairs(redis.call('ZRANGE', P .. 'signing-keys', 0, -1)) do
  local flat = redis.call('HGETALL', P .. 'signing-key:' .. kid)
  if #flat > 0 then
    flat[#flat + 1] = 'kid'
    flat[#flat + 1] = kid
    found[#found + 1] = flat
  end
end
return found
"""


def _key(flat: list[bytes]) -> SigningKey:
    values = [v.decode() for v in flat]
    f = dict(zip(values[::2], values[1::2], strict=True))
    retired, until = f.get("retired_at"), f.get("published_until")
    return SigningKey(kid=f["kid"], alg=f["alg"], public_jwk=f["public_jwk"], private_jwk=f["private_jwk"],
                      created_at=float(f["created_at"]), retired_at=None if retired is None else float(retired),
                      published_until=None if until is None else float(until))


@guard_all
class RedisKeys(RedisBase):
    """Mixin implementing `auth.store.SigningKeyStore` and `cookie_key`."""

    async def _keys_script(self, source: str, *args: str) -> Any:
        scripts: dict[str, Any] = self.__dict__.setdefault("_keys_scripts", {})
        script = scripts.get(source)
        if script is None:
            script = scripts[source] = self.script(source)
        return await script(args=[self.prefix, *args])

    async def signing_keys(self, now: float) -> list[SigningKey]:
        keys = [_key(flat) for flat in await self._keys_script(_SIGNING_KEYS)]
        live = [k for k in keys if k.retired_at is None or (k.published_until or 0.0) > now]
        return sorted(live, key=lambda k: (k.retired_at is not None, -k.created_at))

    async def add_signing_key(self, key: SigningKey, now: float, retire_until: float, *, replace: bool) -> bool:
        retired_ttl = max(0, round((retire_until - now) * 1000))
        return bool(await self._keys_script(
            _ADD_SIGNING_KEY, repr(now), repr(retire_until), "1" if replace else "0", str(retired_ttl),
            key.kid, key.alg, key.public_jwk, key.private_jwk, repr(key.created_at)))

    async def cookie_key(self) -> bytes:
        """The shared secret, created by whichever process asks first (SET NX GET: one round trip,
        and the loser of a race gets the winner's key)."""
        name = self.key("cookie-key")
        mine = secrets.token_bytes(COOKIE_KEY_BYTES)
        existing: Any = await self.client.set(name, mine, nx=True, get=True)
        key = mine if existing is None else bytes(existing)
        if len(key) != COOKIE_KEY_BYTES:
            raise ValueError(f"the Redis key {name} must hold exactly {COOKIE_KEY_BYTES} bytes; delete it to "
                             "generate a new one (browser logins will end)")
        return key

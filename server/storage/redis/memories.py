"""The user's named memories in the Redis backend (`auth.memories.MemoryDirectory`).

Keys (docs/storage.md, "Redis: authorization"):

* `memory:<id>`: a hash `user_id`, `name`, `created_at` per memory other than a user's default one
  (whose id is the user id and which is never stored). The id is random and never reused: what
  grants are bound to, and the `GraphStore` owner key of the memory's graph.
* `user-memories:<user_id>`: a hash name -> id. HSETNX on it makes a name unique per user, HLEN
  counts the memories against `max_memories_per_user`.
* The records bound to a memory carry its id in a `memory` field (`code:`, `token:`, `pat:`,
  `consent:` hashes, and revocation stream entries); a record without one is bound to the default
  memory, as every record made before memories existed is. No index of their own: deleting a
  memory walks the user's indexes (`user-tokens:`, `user-codes:`, `user-pats:`,
  `user-consents:`) and deletes the records whose field names it.

Atomicity: creating (user ACTIVE, name free, cap not reached, then written), renaming (new name
taken with HSETNX, old one released) and deleting (the row and everything bound to it) are each
one Lua script, built on the authorization scripts' helpers (`auth._LIB`), so they act in one
step like a SQLite transaction. None of these keys expires.
"""

from __future__ import annotations

from typing import Any

from auth.memories import MemoriesError, Memory, MemoryExistsError, limit_reached
from auth.models import AccountState
from server.storage.redis.auth import _fields, _num, _script, _text
from server.storage.redis.base import RedisBase, guard_all

# ARGV: prefix, id, user_id, name, created_at, limit, the ACTIVE state.
# -2: the user is not ACTIVE; -1: at the cap; 0: the name is taken; 1: created.
_CREATE = _script("""
local id, user, name = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', k('user', user), 'state') ~= ARGV[7] then return -2 end
local index = k('user-memories', user)
if redis.call('HLEN', index) + 1 >= tonumber(ARGV[6]) then return -1 end
if redis.call('HSETNX', index, name, id) == 0 then return 0 end
redis.call('HSET', k('memory', id), 'user_id', user, 'name', name, 'created_at', ARGV[5])
return 1
""")

# ARGV: prefix, user_id, id, new name. -1: no such memory of the user; 0: the name is taken.
_RENAME = _script("""
local user, id, name = ARGV[2], ARGV[3], ARGV[4]
local key = k('memory', id)
if redis.call('HGET', key, 'user_id') ~= user then return -1 end
local old = redis.call('HGET', key, 'name')
if old == name then return 1 end
local index = k('user-memories', user)
if redis.call('HSETNX', index, name, id) == 0 then return 0 end
if redis.call('HGET', index, old) == id then redis.call('HDEL', index, old) end
redis.call('HSET', key, 'name', name)
return 1
""")

# ARGV: prefix, user_id, id. Everything bound to the memory goes, whether or not its row exists
# (a re-run after an interruption finds no row but must leave nothing behind).
_DELETE = _script("""
local user, id = ARGV[2], ARGV[3]
del_bound(k('user-tokens', user), 'token', id, del_token)
del_bound(k('user-codes', user), 'code', id, del_code)
del_bound(k('user-pats', user), 'pat', id, del_pat)
del_bound(k('user-consents', user), 'consent', id, del_consent)
local key = k('memory', id)
if redis.call('HGET', key, 'user_id') ~= user then return 0 end
local name = redis.call('HGET', key, 'name')
local index = k('user-memories', user)
if redis.call('HGET', index, name) == id then redis.call('HDEL', index, name) end
redis.call('DEL', key)
return 1
""")


def _memory(memory_id: str, f: dict[str, str]) -> Memory:
    return Memory(id=memory_id, user_id=f["user_id"], name=f["name"], created_at=float(f["created_at"]))


@guard_all
class RedisMemories(RedisBase):
    """Mixin implementing `auth.memories.MemoryDirectory`."""

    async def _memory_script(self, source: str, *args: str) -> Any:
        scripts: dict[str, Any] = self.__dict__.setdefault("_memory_scripts", {})
        script = scripts.get(source)
        if script is None:
            script = scripts[source] = self.script(source)
        return await script(args=[self.prefix, *args])

    async def list_memories(self, user_id: str) -> list[Memory]:
        ids: Any = await self.client.hvals(self.key("user-memories", user_id))
        found = []
        for raw in ids:
            memory = await self.get_memory(user_id, _text(raw))
            if memory is not None:
                found.append(memory)
        return sorted(found, key=lambda m: (m.created_at, m.id))

    async def get_memory(self, user_id: str, memory_id: str) -> Memory | None:
        found = _fields(await self.client.hgetall(self.key("memory", memory_id)))  # type: ignore[arg-type]
        if found is None or found.get("user_id") != user_id:
            return None
        return _memory(memory_id, found)

    async def create_memory(self, memory: Memory, limit: int) -> None:
        result = int(await self._memory_script(_CREATE, memory.id, memory.user_id, memory.name,
                                               _num(memory.created_at), str(limit), str(AccountState.ACTIVE)))
        if result == -2:
            raise MemoriesError("the account is being removed (or was): no memory can be added to it")
        if result == -1:
            count = int(await self.client.hlen(self.key("user-memories", memory.user_id))) + 1
            raise limit_reached(count, limit)
        if result == 0:
            raise MemoryExistsError(f"there is a memory named {memory.name!r} already")

    async def rename_memory(self, user_id: str, memory_id: str, name: str) -> bool:
        result = int(await self._memory_script(_RENAME, user_id, memory_id, name))
        if result == 0:
            raise MemoryExistsError(f"there is a memory named {name!r} already")
        return result == 1

    async def delete_memory(self, user_id: str, memory_id: str) -> bool:
        return bool(await self._memory_script(_DELETE, user_id, memory_id))

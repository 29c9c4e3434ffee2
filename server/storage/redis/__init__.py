"""The Redis backend: everything the server stores, in one Redis shared by every instance and
worker that uses it (`redis_url`).

Each table group lives in its own module, as in `server.storage.sqlite`: `auth.py` (clients,
users, codes, grants and tokens, browser logins, consents, the revocation log), `keys.py`
(ID-token signing keys and the cookie key), `graph.py` (the memory graphs and their read_graph
view), `sessions.py` (MCP session records and their resumable event streams), `ratelimit.py`
(rate-limit counts), `portable.py` (export and import, `server.storage.portable`). Key names,
value formats and TTLs: docs/storage.md. What they share
(client, key names, error translation, scripts): `base.py`.
"""

from __future__ import annotations

from server.storage.redis.auth import RedisAuth
from server.storage.redis.base import DEFAULT_PREFIX, RedisBase
from server.storage.redis.graph import RedisGraph
from server.storage.redis.keys import RedisKeys
from server.storage.redis.memories import RedisMemories
from server.storage.redis.portable import RedisPortable
from server.storage.redis.ratelimit import RedisLimiter
from server.storage.redis.sessions import RedisSessions

__all__ = ["DEFAULT_PREFIX", "RedisLimiter", "RedisStorage"]


class RedisStorage(RedisPortable, RedisAuth, RedisMemories, RedisKeys, RedisGraph, RedisSessions, RedisBase):
    """Every storage protocol (`server.storage.Storage`) on one Redis connection pool."""

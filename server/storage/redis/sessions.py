"""(to be written: see server/storage/redis/__init__.py)"""

from __future__ import annotations

from server.storage.redis.base import RedisBase, guard_all


@guard_all
class RedisSessions(RedisBase):
    pass

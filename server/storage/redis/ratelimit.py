"""(to be written: see server/storage/redis/__init__.py)"""

from __future__ import annotations

import redis.asyncio as aioredis


class RedisLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

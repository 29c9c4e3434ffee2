"""Which backend the settings choose (the one place that names them): a module of its own,
because each backend imports `server.storage` for the protocols it implements."""

from __future__ import annotations

from server.config import Settings
from server.storage import Limiter, Storage
from server.storage.redis import RedisLimiter, RedisStorage
from server.storage.sqlite import SQLiteStorage
from server.storage.sqlite.ratelimit import FILENAME, SQLiteRateLimiter


def open_backend(settings: Settings) -> tuple[Storage, Limiter]:
    """The backend the settings choose: Redis when `redis_url` is set, else SQLite in `data_dir`."""
    if settings.redis_url is not None:
        storage = RedisStorage(settings.redis_url, timeout=settings.store_busy_timeout)
        return storage, RedisLimiter(storage.client, storage.prefix)
    return (SQLiteStorage(settings.database_path, settings.store_busy_timeout),
            SQLiteRateLimiter(settings.data_dir / FILENAME, busy_timeout=settings.store_busy_timeout))

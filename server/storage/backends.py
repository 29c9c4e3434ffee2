"""Which backend the settings choose (the one place that names them): a module of its own,
because each backend imports `server.storage` for the protocols it implements."""

from __future__ import annotations

from server.config import Settings
from server.storage import Limiter, Storage
from server.storage.portable import PortableStore
from server.storage.redis import RedisLimiter, RedisStorage
from server.storage.sqlite import SQLiteStorage
from server.storage.sqlite.ratelimit import FILENAME, SQLiteRateLimiter


def open_backend(settings: Settings) -> tuple[Storage, Limiter]:
    """The backend the settings choose: Redis when `redis_url` is set, else SQLite in `data_dir`."""
    if settings.redis_url is not None:
        storage = RedisStorage(settings.redis_url, timeout=settings.store_busy_timeout,
                               session_ttl=settings.session_idle_timeout)
        return storage, RedisLimiter(storage.client, storage.prefix, closed=lambda: storage.closed)
    return (SQLiteStorage(settings.database_path, settings.store_busy_timeout),
            SQLiteRateLimiter(settings.data_dir / FILENAME, busy_timeout=settings.store_busy_timeout))


def open_portable(settings: Settings) -> PortableStore:
    """The store the settings choose, for an export or an import (`server.storage.portable`); no rate
    limiter, and nothing read or created yet (not even the cookie key)."""
    if settings.redis_url is not None:
        return RedisStorage(settings.redis_url, timeout=settings.store_busy_timeout,
                            session_ttl=settings.session_idle_timeout)
    return SQLiteStorage(settings.database_path, settings.store_busy_timeout)

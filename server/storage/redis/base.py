"""What every part of the Redis backend shares: the client, key names, error translation.

Keys: every key starts with the backend's prefix (`memory-mcp:` unless told otherwise), then the
table group and the record, for example `memory-mcp:user:<id>`. The full list, with value formats
and TTLs, is in docs/storage.md beside the SQLite schema.

Errors: a Redis that cannot answer now (unreachable, busy beyond the timeout, loading its data after a
restart, a replica that became read-only in a failover, out of memory under `noeviction`) is a
`StorageUnavailable` (503 with Retry-After on HTTP, a retryable tool error), never a 500. Every
public method of the backend runs under `guarded` (each mixin is decorated with `guard_all`), so
that no call forgets it. Anything else a
Redis command raises is a bug of ours and propagates.

Atomicity: an operation that reads and then writes is one Lua script (`self.script`) or one
MULTI/EXEC, never a read followed by a separate write; the scripts are registered once per
client and sent by SHA (EVALSHA, reloaded by redis-py after a Redis restart).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.commands.core import AsyncScript

from server.storage import StorageUnavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "memory-mcp:"
RETRY_AFTER_SECONDS = 1
MAX_CONNECTIONS = 64
"""Connections one process opens at most; more concurrent calls wait for one (up to the timeout)."""

P = ParamSpec("P")
T = TypeVar("T")


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def unavailable(exc: BaseException) -> StorageUnavailable | None:
    """The `StorageUnavailable` a Redis error means, or None when it is not about availability."""
    if isinstance(exc, redis_errors.BusyLoadingError):
        return StorageUnavailable(f"Redis is loading its data: {exc}", "the store is starting", RETRY_AFTER_SECONDS)
    if isinstance(exc, redis_errors.ReadOnlyError) or (
            isinstance(exc, redis_errors.ResponseError) and str(exc).startswith("UNBLOCKED")):
        # UNBLOCKED: a blocking read (XREAD, BLPOP) that Redis ended because it became a replica.
        return StorageUnavailable(f"Redis is read-only (a replica, or a failover in progress): {exc}",
                                  "the store is failing over", RETRY_AFTER_SECONDS)
    if isinstance(exc, redis_errors.TimeoutError) and "connecting" not in str(exc):
        # Reached, but no answer within store_busy_timeout (a long script, a paused or overloaded
        # server): what SQLite calls a lock held too long, not a network fault to chase.
        return StorageUnavailable(f"Redis did not answer in time: {exc}", "the store is busy", RETRY_AFTER_SECONDS)
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | OSError):
        return StorageUnavailable(f"Redis cannot be reached: {type(exc).__name__}: {exc}",
                                  "the store cannot be reached", RETRY_AFTER_SECONDS)
    if isinstance(exc, redis_errors.OutOfMemoryError) or (
            isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(("OOM", "MISCONF"))):
        # OOM: maxmemory reached under noeviction; MISCONF: Redis refuses writes after a failed
        # snapshot. Both pass when the operator acts; neither is the request's fault. (redis-py
        # parses an OOM reply into OutOfMemoryError, its message without the "OOM" code.)
        return StorageUnavailable(f"Redis refuses writes: {exc}", "the store is full", RETRY_AFTER_SECONDS)
    return None


def guarded(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run `method` with Redis's availability errors translated (see the module).

    A read-only answer also drops the pool's idle connections: after a failover the old primary,
    now a replica, keeps answering on the connections made to it, so without this the server would
    refuse every write for as long as they live, however long ago the address (DNS, a proxy, a
    socket path) moved to the new primary. Connecting again follows the address; a connection in
    use is dropped the next time it meets a read-only answer."""

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        if args and getattr(args[0], "closed", False):
            # redis-py would open a new connection, which nothing closes any more.
            raise StorageUnavailable("the Redis client is closed (the server is stopping)", "the server is stopping",
                                     RETRY_AFTER_SECONDS)
        try:
            return await method(*args, **kwargs)
        except redis_errors.RedisError as exc:
            translated = unavailable(exc)
            if translated is None:
                raise
            client = getattr(args[0], "client", None) if args else None
            if isinstance(exc, redis_errors.ReadOnlyError) and isinstance(client, aioredis.Redis):
                await client.connection_pool.disconnect(inuse_connections=False)
            raise translated from exc

    return run


class RedisBase:
    """The connection and helpers every part of the backend (the mixins of `RedisStorage`) uses."""

    def __init__(self, url: str, *, timeout: float = 3.0, prefix: str = DEFAULT_PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        # No call waits longer than `timeout` (the store_busy_timeout setting): beyond it the
        # request is refused as retryable, as with SQLite's lock. That includes waiting for a
        # connection: redis-py's default pool raises at once past its size, so a burst of
        # concurrent requests would fail where SQLite queues them.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, health_check_interval=30)
        self.client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self.closed = False

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def script(self, source: str) -> AsyncScript:
        return self.client.register_script(source)

    @guarded
    async def ping(self) -> None:
        """Reachable and answering; `StorageUnavailable` otherwise (start-up, /readyz)."""
        await self.client.ping()

    async def close(self) -> None:
        """Close the connections; a call after this is refused as "the server is stopping", as
        on SQLite."""
        self.closed = True
        await self.client.aclose()


def guard_all(cls: type[T]) -> type[T]:
    """Class decorator: every public coroutine method defined by `cls` runs under `guarded`."""
    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(value) and name != "close":
            setattr(cls, name, guarded(value))
    return cls

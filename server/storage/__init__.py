"""The storage backends, and what each must implement.

`auth/` and `transports/` declare what they store as small protocols (`auth.store`,
`auth.ratelimit`, `transports.store`), and `server.memory.graph` declares the graph's. A backend is
one class implementing all of them (`Storage`) and one rate limiter (`Limiter`):

* `server.storage.sqlite`: one SQLite file under the data directory (the default; nothing to
  install);
* `server.storage.redis`: a Redis server (`redis_url`), shared by several instances or workers.

`server.storage.backends.open_backend` picks one from the settings; nothing else in the server
names a backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from auth.ratelimit import RateLimiter
from auth.store import AuthStore
from auth.store import StoreUnavailable as AuthStoreUnavailable
from server.memory.changes import GraphChanges
from server.memory.graph import GraphStore
from transports.store import StoreUnavailable as TransportStoreUnavailable
from transports.store import TransportStore


class StorageUnavailable(AuthStoreUnavailable, TransportStoreUnavailable):
    """The store cannot answer now (a lock held elsewhere, a full disk, Redis unreachable);
    retrying later may succeed. It inherits both layers' `StoreUnavailable`, so that `auth/` and
    `transports/` each catch it without importing `server/`: one translation per surface (503 with
    Retry-After, a JSON-RPC error, a retryable tool error)."""

    def __init__(self, message: str, reason: str, retry_after: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Storage(AuthStore, GraphStore, GraphChanges, TransportStore, Protocol):
    """Everything the server stores."""

    async def cookie_key(self) -> bytes:
        """The server's own secret (`server.keyfile` says what it protects): created by the first
        process that asks, then the same for every process on this store (SQLite: a file in the
        data directory; Redis: a key, so that instances on several machines share it)."""

    def ping(self) -> Awaitable[None]:
        """Answer a trivial query the way a request's would be answered (readiness, `/readyz`);
        `StorageUnavailable` when the store cannot. (Declared as returning an awaitable rather
        than `async def` so that a decorated coroutine method, as the Redis backend's, fits.)"""
        ...

    async def close(self) -> None:
        """Finish what is queued and release connections and threads."""
        ...


@dataclass(frozen=True, slots=True)
class Counted:
    """One rate-limit key and its counted actions, as `memory-mcp throttle list` shows them."""

    key: str
    ages: list[float]  # seconds ago, newest first


class Limiter(RateLimiter, Protocol):
    """The rate limiter, plus what `memory-mcp throttle list|clear` needs of it."""

    async def counted(self, prefix: str = "") -> list[Counted]:
        """Every key (starting with `prefix`) that has actions within its window."""
        ...

    async def clear(self, keys: Sequence[str] | None) -> int:
        """Forget these keys (None: every key); the number of counted actions forgotten."""
        ...

    async def close(self) -> None: ...

"""`/healthz` (alive) and `/readyz` (ready to serve), for load balancers and service managers.

* `/healthz` answers 200 whenever the event loop does: it touches nothing else, so a store that
  cannot answer never gets a healthy process restarted.
* `/readyz` answers 200 only when the store answers a trivial query (`Storage.ping`) within
  `READY_TIMEOUT` seconds and the server is not shutting down; otherwise 503 with
  `{"status": "unavailable", "reason": ...}` naming which (`store: ...` or `draining`), so that a
  load balancer sends requests elsewhere meanwhile.

Readiness is about answering, not about every write succeeding: with SQLite, a write lock held by
another process (`memory-mcp users remove`, a backup) leaves reads working and writes retryable,
and the server stays ready. At most one ping is in flight: probes that arrive while one is pending
wait for that one, so a store that hangs cannot pile up work from probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Protocol

from aiohttp import web

from server.storage import StorageUnavailable

log = logging.getLogger(__name__)

READY_TIMEOUT = 0.5
"""Seconds the store has to answer `/readyz`'s query: under the 1 s a probe usually waits."""

NO_STORE = {"Cache-Control": "no-store"}


class Pingable(Protocol):
    def ping(self) -> Awaitable[None]: ...


class Readiness:
    def __init__(self, store: Pingable, timeout: float = READY_TIMEOUT) -> None:
        self._store = store
        self._timeout = timeout
        self._ping: asyncio.Future[None] | None = None
        self.draining = False

    async def problem(self) -> str | None:
        """Why the server is not ready, or None."""
        if self.draining:
            return "draining"
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(self._store.ping())
            self._ping.add_done_callback(_retrieve)
        try:
            await asyncio.wait_for(asyncio.shield(self._ping), self._timeout)
        except TimeoutError:
            return f"store: no answer within {self._timeout:g} s"
        except StorageUnavailable as exc:
            return f"store: {exc.reason}"
        except Exception as exc:  # a bug, not a condition: say so in the log, and stay unready
            log.error("the readiness query failed: %s: %s", type(exc).__name__, exc)
            return "store: unexpected error (see the server's log)"
        return None

    async def handle_ready(self, _request: web.Request) -> web.Response:
        problem = await self.problem()
        if problem is None:
            return web.json_response({"status": "ready"}, headers=NO_STORE)
        return web.json_response({"status": "unavailable", "reason": problem}, status=503, headers=NO_STORE)

    async def on_shutdown(self, _app: web.Application) -> None:
        self.draining = True


def _retrieve(task: asyncio.Future[None]) -> None:
    # A ping whose prober gave up still ends; its outcome was reported (or is moot).
    if not task.cancelled():
        task.exception()


async def handle_health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers=NO_STORE)

"""What the operations surface costs each request, measured in-process (docs/performance.md,
"Operations overhead").

    .venv/bin/python scripts/ops_overhead.py [--rounds 5]

Each figure is the best of `--rounds` rounds of many calls, in microseconds, on a request made
with aiohttp's test helper (no socket): the request-id middleware, the request-id and metrics
middlewares together, one access-log line in each format (to /dev/null), and one store call through
the metrics wrapper. The difference to the bare handler (or the bare store call) is the overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from server import logs
from server.metrics import Metrics

CALLS = 100_000


async def best(rounds: int, call: Callable[[], Awaitable[Any]], n: int = CALLS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            await call()
        times.append((time.perf_counter() - start) / n * 1e6)
    return min(times)


def best_sync(rounds: int, call: Callable[[], Any], n: int = CALLS // 2) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            call()
        times.append((time.perf_counter() - start) / n * 1e6)
    return min(times)


class Graph(Protocol):
    async def open_nodes(self, user: str, names: list[str]) -> None: ...


class Store:
    async def open_nodes(self, user: str, names: list[str]) -> None:
        return None


def discarding_logger() -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger("ops-overhead.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    sink = logging.StreamHandler(open(os.devnull, "w"))
    sink.addFilter(logs.RequestIdFilter())
    logger.addHandler(sink)
    return logger, sink


async def main(rounds: int) -> None:
    request = make_mocked_request("POST", "/mcp", headers={"Mcp-Session-Id": "abcdefgh0123456789",
                                                           "MCP-Protocol-Version": "2025-11-25"})

    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="{}")

    ids = logs.request_ids(())
    metrics = Metrics()
    measured = metrics.middleware()

    async def inner(r: web.Request) -> web.StreamResponse:
        return await measured(r, handler)

    bare = await best(rounds, lambda: handler(request))
    with_ids = await best(rounds, lambda: ids(request, handler))
    with_both = await best(rounds, lambda: ids(request, inner))
    print(f"handler alone                       {bare:6.2f} us")
    print(f"+ request id middleware             {with_ids - bare:6.2f} us")
    print(f"+ request id and metrics middleware {with_both - bare:6.2f} us")

    logger, sink = discarding_logger()
    response = web.Response(text="{}", headers={"Mcp-Session-Id": "abcdefgh0123456789"})
    request[logs.REQUEST_ID] = logs.new_request_id()
    access = logs.AccessLogger(logger, "")
    for name, formatter in (("text", logs.TextFormatter()), ("json", logs.JSONFormatter())):
        sink.setFormatter(formatter)
        line = best_sync(rounds, lambda: access.log(request, response, 0.0003))
        print(f"access-log line ({name})               {line:6.2f} us")

    plain, timed = Store(), Store()
    metrics.instrument(timed, Graph)
    untimed = await best(rounds, lambda: plain.open_nodes("u", ["x"]))
    wrapped = await best(rounds, lambda: timed.open_nodes("u", ["x"]))
    print(f"+ metrics around one store call     {wrapped - untimed:6.2f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))

"""What the operations surface costs each request, measured in-process (docs/performance.md,
"Operations overhead").

    .venv/bin/python scripts/ops_overhead.py [--rounds 5]

prints the best of `--rounds` rounds of many calls, in microseconds, for each piece, on a request
made with aiohttp's test helper (no socket): the bare handler, the request-id middleware, the same
middleware timing the request for the metrics, one access-log line in each format (to /dev/null),
and one store call bare and through the metrics wrapper. Wall-clock figures move with whatever
else runs on the machine; instruction counts do not:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python scripts/ops_overhead.py --only ids --calls 10000

runs one piece `--calls` times and nothing else; (instructions with N calls - with 0) / N is the
piece's cost per call.
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


class Graph(Protocol):
    async def open_nodes(self, user: str, names: list[str]) -> None: ...


class Store:
    async def open_nodes(self, user: str, names: list[str]) -> None:
        return None


def discarding_logger(formatter: logging.Formatter) -> logging.Logger:
    logger = logging.getLogger(f"ops-overhead.{type(formatter).__name__}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    sink = logging.StreamHandler(open(os.devnull, "w"))  # open as long as the script runs
    sink.addFilter(logs.RequestIdFilter())
    sink.setFormatter(formatter)
    logger.addHandler(sink)
    return logger


def pieces() -> dict[str, Callable[[], Awaitable[Any] | None]]:
    """Each piece, as one call."""
    request = make_mocked_request("POST", "/mcp", headers={"Mcp-Session-Id": "abcdefgh0123456789",
                                                           "MCP-Protocol-Version": "2025-11-25"})
    request[logs.REQUEST_ID] = logs.new_request_id()
    response = web.Response(text="{}", headers={"Mcp-Session-Id": "abcdefgh0123456789"})

    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="{}")

    metrics = Metrics()
    ids = logs.request_ids(())
    timed = logs.request_ids((), metrics.request_observer())
    text = logs.AccessLogger(discarding_logger(logs.TextFormatter()), "")
    json = logs.AccessLogger(discarding_logger(logs.JSONFormatter()), "")
    plain, measured = Store(), Store()
    metrics.instrument(measured, Graph)
    return {
        "handler": lambda: handler(request),
        "ids": lambda: ids(request, handler),
        "timed": lambda: timed(request, handler),
        "text": lambda: text.log(request, response, 0.0003),
        "json": lambda: json.log(request, response, 0.0003),
        "store": lambda: plain.open_nodes("u", ["x"]),
        "store-timed": lambda: measured.open_nodes("u", ["x"]),
    }


async def run(call: Callable[[], Awaitable[Any] | None], n: int) -> None:
    for _ in range(n):
        result = call()
        if result is not None:
            await result


async def best(rounds: int, call: Callable[[], Awaitable[Any] | None], n: int = 100_000) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await run(call, n)
        times.append((time.perf_counter() - start) / n * 1e6)
    return min(times)


async def main(args: argparse.Namespace) -> None:
    each = pieces()
    if args.only:
        await run(each[args.only], args.calls)
        return
    us = {name: await best(args.rounds, call) for name, call in each.items()}
    print(f"handler alone                        {us['handler']:6.2f} us")
    print(f"+ request id middleware              {us['ids'] - us['handler']:6.2f} us")
    print(f"+ request id middleware, timed       {us['timed'] - us['handler']:6.2f} us")
    print(f"access-log line (text)               {us['text']:6.2f} us")
    print(f"access-log line (json)               {us['json']:6.2f} us")
    print(f"+ metrics around one store call      {us['store-timed'] - us['store']:6.2f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["handler", "ids", "timed", "text", "json", "store", "store-timed"])
    parser.add_argument("--calls", type=int, default=10_000)
    asyncio.run(main(parser.parse_args()))

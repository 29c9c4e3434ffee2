"""Timing of the knowledge graph stores on a large per-user graph. Prints numbers; asserts nothing.

    .venv/bin/python scripts/bench_memory.py [--backend sqlite|redis] [--redis-url URL]
                                             [--entities 10000] [--observations 50000] [--owners 2]

Every owner gets the same volume, so the numbers include the cost of sharing the store with other
users (the indexes must keep each owner's scans to their own rows). `--backend redis` runs on a
private redis-server on a free loopback port (tests/redis_server.py) unless `--redis-url` names
one; the database it is given is emptied first.

Besides the time of each call, "stall" is the most CPU time the event loop's thread spent between
two turns of a ticker task that sleeps 1 ms at a time: the longest stretch of work on the loop
(a large reply's parsing, say) that the other requests of the process had to wait for. CPU time,
not wall time, so that it measures the code and not the other processes of a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.memory.graph import Entity, GraphStore, ObservationAddition, Relation
from server.memory.tools import call_tool
from server.storage.redis import RedisStorage
from server.storage.sqlite.db import Database
from server.storage.sqlite.graph import GraphTables
from tests.redis_server import RedisServer

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu project meeting prefers coffee "
    "works lives berlin paris tokyo python rust sqlite deadline friday budget review design launch"
).split()
TYPES = ("person", "project", "organization", "place", "event", "concept")


class Store(GraphTables):
    def __init__(self, db: Database) -> None:
        self.db = db


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."


def build_entities(rng: random.Random, n_entities: int, n_observations: int) -> list[Entity]:
    per_entity = [n_observations // n_entities] * n_entities
    for i in range(n_observations % n_entities):
        per_entity[i] += 1
    return [
        Entity(name=f"Entity {i:05d}", entityType=rng.choice(TYPES), observations=[sentence(rng) for _ in range(k)])
        for i, k in enumerate(per_entity)
    ]


class Stalls:
    """The longest stretch of CPU time on the loop while `timed` runs (see the module)."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def tick(self) -> None:
        while True:
            start = time.thread_time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.thread_time() - start)


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[list[float], float]:
    stalls = Stalls()
    ticker = asyncio.create_task(stalls.tick())
    await asyncio.sleep(0.002)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    ticker.cancel()
    return samples, stalls.worst * 1000


def report(label: str, measured: tuple[list[float], float]) -> None:
    samples, stall = measured
    samples.sort()
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
    print(f"{label:<52} p50 {statistics.median(samples):8.2f} ms   p95 {p95:8.2f} ms   "
          f"stall {stall:6.2f} ms   (n={len(samples)})")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=50_000)
    parser.add_argument("--relations", type=int, default=10_000)
    parser.add_argument("--owners", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--redis-url", help="an existing Redis to use (its database is emptied)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "sqlite":
            db = Database(Path(tmp) / "bench.sqlite3")
            db.apply_schema(GraphTables.SCHEMA)
            GraphTables.migrate(db)
            path = Path(tmp) / "bench.sqlite3"

            async def file_size() -> str:
                db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return f"database file {path.stat().st_size / 1e6:.1f} MB"

            await bench(args, Store(db), file_size)
            db.close()
            return
        server = None
        if args.redis_url is None:
            server = RedisServer(Path(tmp) / "redis")
            server.start()
        redis = RedisStorage(args.redis_url or (server.url if server else ""))
        try:
            await redis.client.flushdb()
            async def memory_used() -> str:
                info = await redis.client.info("memory")
                return f"Redis used_memory {int(info['used_memory']) / 1e6:.1f} MB"

            await bench(args, redis, memory_used)
        finally:
            await redis.close()
            if server is not None:
                server.stop()


async def bench(args: argparse.Namespace, store: GraphStore, size: Callable[[], Awaitable[str]]) -> None:
    rng = random.Random(42)
    owners = [f"user-{i}" for i in range(args.owners)]
    entities = build_entities(rng, args.entities, args.observations)
    names = [e.name for e in entities]
    kinds = ("knows", "works_on", "located_in")
    relations = [
        Relation(from_=rng.choice(names), to=rng.choice(names), relationType=rng.choice(kinds))
        for _ in range(args.relations)
    ]

    start = time.perf_counter()
    for owner in owners:
        for i in range(0, len(entities), 1000):
            await store.create_entities(owner, entities[i : i + 1000])
        for i in range(0, len(relations), 1000):
            await store.create_relations(owner, relations[i : i + 1000])
    load = time.perf_counter() - start
    print(
        f"{args.backend}: loaded {args.owners} owner(s) x {args.entities} entities / {args.observations} "
        f"observations / {args.relations} relations in {load:.2f} s; {await size()}"
    )

    # As the server does once started (server/limits.py): what lives for good leaves the
    # collector's sight, so that a full collection does not count as a stall of the call it hits.
    del entities
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 10, 10)

    owner = owners[0]
    # Ranked search (server/memory/search.py): "entity 04242" finds every entity through the word
    # "entity", the one named first; "04242" alone finds that one.
    for query in ("04242", "entity 04242", "ZULU PROJECT", "coffee", "no such text anywhere", "person", "qx"):
        result = await store.search_nodes(owner, query)
        samples = await timed(lambda q=query: store.search_nodes(owner, q), args.repeat)  # type: ignore[misc]
        report(f"search_nodes {query!r} -> {len(result.model().entities)} entities", samples)
    for query in ("entity 04242", "coffee"):
        samples = await timed(lambda q=query: store.search_nodes(owner, q, limit=20), args.repeat)  # type: ignore[misc]
        report(f"search_nodes {query!r}, first 20", samples)

    picks = rng.sample(names, 10)
    report("open_nodes (10 names)", await timed(lambda: store.open_nodes(owner, picks), args.repeat))
    report("read_graph, first (every chunk built)", await timed(lambda: store.read_graph(owners[-1]), 1))
    report("read_graph (whole graph)", await timed(lambda: store.read_graph(owner), 5))
    # Paging (docs/performance.md#paging): a page from the rows, in the middle of the graph; and
    # what the tool does for an unpaged read_graph over the size cap (the whole graph, then a page).
    middle = (await store.read_graph(owner, limit=len(names) // 2)).next_key
    report("read_graph page of 100, mid-graph", await timed(lambda: store.read_graph(owner, after=middle, limit=100),
                                                            args.repeat))
    report("search_nodes 'person' page of 100", await timed(lambda: store.search_nodes(owner, "person", limit=100),
                                                            args.repeat))
    report("read_graph tool, unpaged, cut at 48 KiB",
           await timed(lambda: call_tool(store, owner, "read_graph", {}), args.repeat))

    counter = iter(range(10**9))
    report(
        "create_entities (1 new entity, 5 observations)",
        await timed(
            lambda: store.create_entities(
                owner, [Entity(name=f"new {next(counter)}", entityType="t", observations=["a", "b", "c", "d", "e"])]
            ),
            args.repeat,
        ),
    )
    report(
        "add_observations (1 entity, 1 observation)",
        await timed(
            lambda: store.add_observations(
                owner, [ObservationAddition(entityName=rng.choice(names), contents=[f"fact {next(counter)}"])]
            ),
            args.repeat,
        ),
    )

    async def write_then_read() -> None:
        await store.add_observations(owner, [ObservationAddition(entityName=rng.choice(names),
                                                                 contents=[f"fact {next(counter)}"])])
        await store.read_graph(owner)

    report("add_observations then read_graph", await timed(write_then_read, 20))
    report("search_nodes '' (every entity)", await timed(lambda: store.search_nodes(owner, ""), 5))
    report("delete_graph (the whole graph)", await timed(lambda: store.delete_graph(owners[-1]), 1))


if __name__ == "__main__":
    asyncio.run(main())

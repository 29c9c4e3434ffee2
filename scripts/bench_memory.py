"""Timing of the SQLite knowledge graph on a large per-user graph. Prints numbers; asserts nothing.

    .venv/bin/python scripts/bench_memory.py [--entities 10000] [--observations 50000] [--owners 2]

Every owner gets the same volume, so the numbers include the cost of sharing the file with other
users (the indexes must keep each owner's scans to their own rows).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.memory.graph import Entity, ObservationAddition, Relation
from server.storage.sqlite.db import Database
from server.storage.sqlite.graph import GraphTables

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


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def report(label: str, samples: list[float]) -> None:
    samples.sort()
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
    print(f"{label:<52} p50 {statistics.median(samples):8.2f} ms   p95 {p95:8.2f} ms   (n={len(samples)})")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=50_000)
    parser.add_argument("--relations", type=int, default=10_000)
    parser.add_argument("--owners", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()

    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "bench.sqlite3")
        db.apply_schema(GraphTables.SCHEMA)
        GraphTables.migrate(db)
        store = Store(db)
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
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = (Path(tmp) / "bench.sqlite3").stat().st_size / 1e6
        print(
            f"loaded {args.owners} owner(s) x {args.entities} entities / {args.observations} observations / "
            f"{args.relations} relations in {load:.2f} s; database file {size:.1f} MB"
        )

        owner = owners[0]
        for query in ("entity 04242", "ZULU PROJECT", "coffee", "no such text anywhere", "person", "qx"):
            result = await store.search_nodes(owner, query)
            samples = await timed(lambda q=query: store.search_nodes(owner, q), args.repeat)  # type: ignore[misc]
            report(f"search_nodes {query!r} -> {len(result.model().entities)} entities", samples)

        picks = rng.sample(names, 10)
        report("open_nodes (10 names)", await timed(lambda: store.open_nodes(owner, picks), args.repeat))
        report("read_graph (whole graph)", await timed(lambda: store.read_graph(owner), 5))

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
        db.close()


if __name__ == "__main__":
    asyncio.run(main())

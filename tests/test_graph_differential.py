"""SQLite and Redis give the same answers (search_nodes: the same ranked results, whole and page by
page): random sequences of graph operations (names and texts
drawn from an alphabet of the characters that break things: NUL, U+FFFD, case pairs whose folding
is not one character to one, combining marks, astral characters, quotes and backslashes), random
quotas, two owners, applied to both stores; every result, refusal and read must be identical,
read_graph byte for byte."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.memory.graph import (
    DEFAULT_QUOTA,
    Entity,
    EntityNotFoundError,
    GraphClosedError,
    GraphJSON,
    ObservationAddition,
    ObservationDeletion,
    Origin,
    Quota,
    QuotaExceededError,
    Relation,
)
from server.storage.redis import RedisStorage
from tests.graph_backends import SQLiteStore, check_owner, model_of, open_sqlite

EXAMPLES = 150
ALPHABET = ["a", "A", "b", "\0", "\ufffd", "İ", "i", "\u0307", "ß", "Σ", "\u03c3", "ς", " ", "é", "É", "😀", '"', "\\",
            "%", "ǅ", "\x01", "\u212a", "k"]
"""İ lowers to two characters (i and a combining dot); capital sigma to small sigma, or at the end
of a word to final sigma (ς); the Kelvin sign (U+212A) lowers to k; ǅ is titlecase."""
QUERIES = ["", "a", "A", "\0", "İ", "i\u0307", "i", "\u03c3", "ς", "Σ", "ß", "ss", "\ufffd", "😀", "a\0", "k", "\u212a",
           '"', "\\", "é", "%", "ǅ", "ǆ", "a b", "b a", "e", "E\u0301", "ab", "a-", "i a"]

texts = st.text(alphabet=st.sampled_from(ALPHABET), max_size=4)
names = st.text(alphabet=st.sampled_from(["a", "A", "\0", "İ", "Σ", "😀"]), max_size=2)
small_quotas = st.builds(Quota, entities=st.integers(0, 6), observations=st.integers(0, 10), bytes=st.integers(0, 80))
quotas = st.one_of(st.just(DEFAULT_QUOTA), small_quotas, small_quotas)
entities = st.builds(lambda n, t, o: Entity(name=n, entityType=t, observations=o), names, texts,
                     st.lists(texts, max_size=4))
relations = st.builds(lambda a, b, t: Relation(from_=a, to=b, relationType=t), names, names,
                      st.sampled_from(["r", "R", "r\0", "\u03c1"]))


@dataclass(frozen=True)
class Op:
    method: str
    owner: int
    args: tuple[Any, ...]


def op(method: str, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[Op]:
    return st.builds(lambda owner, *values: Op(method, owner, values), st.integers(0, 1), *args)


# Provenance: unknown (None) or one of a few, so that the stores' parallel lists are compared too.
origins = st.one_of(st.none(), st.builds(Origin, st.sampled_from([0.0, 1.5, 1_780_000_000.123456]),
                                         st.sampled_from(["c", "pat:1", ""])))
operations = st.one_of(
    op("create_entities", st.lists(entities, max_size=5), quotas, origins),
    op("create_relations", st.lists(relations, max_size=5), quotas, origins),
    op("add_observations", st.lists(st.builds(lambda n, c: ObservationAddition(entityName=n, contents=c), names,
                                              st.lists(texts, max_size=4)), max_size=3), quotas, origins),
    op("delete_entities", st.lists(names, max_size=3)),
    op("delete_observations", st.lists(st.builds(lambda n, c: ObservationDeletion(entityName=n, observations=c),
                                                 names, st.lists(texts, max_size=3)), max_size=3)),
    op("delete_relations", st.lists(relations, max_size=3)),
    op("read_graph"),
    op("search_nodes", texts),
    op("search_pages", texts, st.integers(1, 3)),
    op("open_nodes", st.lists(names, max_size=4)),
    op("usage"),
)
# One operation in twenty closes the owner's graph for good: rare enough for sequences to grow.
sequences = st.lists(st.integers(0, 19).flatmap(lambda n: op("delete_graph") if n == 0 else operations), max_size=20)


async def search_pages(store: SQLiteStore | RedisStorage, owner: str, query: str, size: int) -> list[Any]:
    """search_nodes page by page (`after`, `limit`): each page's JSON, and whether a next one was
    announced. The keys themselves are not compared: they end with each store's own ids."""
    pages, after = [], None
    while True:
        result = await store.search_nodes(owner, query, after=after, limit=size)
        pages.append((result.json, result.next_key is None))
        if result.next_key is None:
            return pages
        after = result.next_key


async def apply(store: SQLiteStore | RedisStorage, owner: str, operation: Op) -> Any:
    try:
        if operation.method == "search_pages":
            return await search_pages(store, owner, *operation.args)
        return model_of(await getattr(store, operation.method)(owner, *operation.args))
    except (EntityNotFoundError, QuotaExceededError, GraphClosedError) as exc:
        return type(exc).__name__, str(exc)


async def final_reads(store: SQLiteStore | RedisStorage, owner: str, used: Sequence[str]) -> list[Any]:
    reads = [model_of(await store.read_graph(owner)), await store.usage(owner)]
    for query in [*QUERIES, *used]:
        reads.append((query, model_of(await store.search_nodes(owner, query))))
    for query in QUERIES[:8]:
        reads.append((query, await search_pages(store, owner, query, 2)))
    reads.append(model_of(await store.open_nodes(owner, list(used))))
    reads.append([item async for batch in store.export_batches(owner, 3) for item in batch])
    # Pages (server/memory/paging.py): the same pages, each store following its own keys (SQLite's
    # ids count every owner's rows, Redis's one owner's).
    for limit in (1, 2):
        reads.append(await pages(lambda after, limit: store.read_graph(owner, after=after, limit=limit), limit))
        reads.append(await pages(lambda after, limit: store.open_nodes(owner, list(used), after=after, limit=limit),
                                 limit))
        for query in ("", "a", "\0"):
            reads.append(await pages(functools.partial(searched, store, owner, query), limit))
    return reads


async def searched(store: SQLiteStore | RedisStorage, owner: str, query: str, after: tuple[int, ...] | None,
                   limit: int) -> GraphJSON:
    return await store.search_nodes(owner, query, after=after, limit=limit)


async def pages(query: Callable[[tuple[int, ...] | None, int], Awaitable[GraphJSON]], limit: int) -> list[Any]:
    got, after = [], None
    while True:
        page = await query(after, limit)
        got.append(model_of(page))
        if page.next_key is None:
            return got
        after = page.next_key


def test_sqlite_and_redis_answer_every_sequence_alike(tmp_path: Path, redis_url: str) -> None:
    runner = asyncio.Runner()
    sqlite, redis = open_sqlite(tmp_path / "d.sqlite3"), RedisStorage(redis_url)
    examples = itertools.count()
    compared = {"operations": 0, "refusals": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(sequence=sequences, seeded=st.booleans())
    def check(sequence: list[Op], seeded: bool) -> None:
        example = next(examples)
        owners = [f"example-{example}-owner-{i}" for i in range(2)]
        used: set[str] = set()
        if seeded:
            # Relations enough that a query with few hits finds theirs through the Redis endpoint
            # index, not by reading all relations (graph.py's relations_touching has both ways).
            filler = [Relation(from_=f"filler {i}", to=f"filler {i + 1}", relationType="r") for i in range(40)]
            for store in (sqlite, redis):
                runner.run(store.create_relations(owners[0], filler))
        for operation in sequence:
            owner = owners[operation.owner]
            got = [runner.run(apply(store, owner, operation)) for store in (sqlite, redis)]
            assert got[0] == got[1], (operation, got)
            compared["operations"] += 1
            compared["refusals"] += isinstance(got[0], tuple)
            used |= {text for value in operation.args for text in _texts(value)}
        for owner in owners:
            reads = [runner.run(final_reads(store, owner, sorted(used))) for store in (sqlite, redis)]
            assert reads[0] == reads[1], owner
            runner.run(check_owner(redis, owner))

    try:
        check()
    finally:
        runner.run(redis.close())
        sqlite.db.close()
        runner.close()
    # The comparison is only as good as what it exercised: many operations, refusals among them.
    assert compared["operations"] > EXAMPLES and compared["refusals"] > 10, compared


def _texts(value: Any) -> set[str]:
    """Every string inside an operation's argument (names, types, observations, queries)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple):
        return {text for item in value for text in _texts(item)}
    if isinstance(value, Entity | Relation | ObservationAddition | ObservationDeletion):
        return _texts(list(value.model_dump().values()))
    return set()

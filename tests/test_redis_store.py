"""What only the Redis backend has to prove: a Redis that is down is `StorageUnavailable` to every
call (never another exception) and service resumes when it is back; concurrent writers of one
owner, in one process and in two, keep the counters and the read_graph view exact; a removal
racing writes leaves nothing; session records expire after the idle timeout.

The behaviour both backends share is tested on both: tests/test_memory_graph.py,
tests/test_graph_differential.py, tests/test_transport_store.py."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from server.memory.graph import (
    GraphClosedError,
    KnowledgeGraph,
    ObservationAddition,
    ObservationDeletion,
    Usage,
)
from server.storage import StorageUnavailable
from server.storage.redis import RedisStorage
from tests.graph_backends import check_owner, ent, graph_from_rows, rel, rows_of
from tests.redis_server import RedisServer
from transports.store import EventLimits, SessionRecord

OWNER = "owner-subject"
LIMITS = EventLimits(per_session=100_000, per_user=200_000)


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[RedisStorage, RedisStorage]]:
    """Two connections to one Redis, as two server processes have."""
    first, second = RedisStorage(redis_url), RedisStorage(redis_url)
    yield first, second
    await first.close()
    await second.close()


def record(session_id: str, *, transport: str = "streamable-http", last_seen_at: float | None = None
           ) -> SessionRecord:
    now = time.time()
    return SessionRecord(session_id=session_id, owner="owner-label", user="user-1", transport=transport,
                         protocol_version="2025-11-25", created_at=now,
                         last_seen_at=now if last_seen_at is None else last_seen_at, client_params="{}")


def every_call(store: RedisStorage) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of every graph and session method (touch_session apart: it never raises)."""
    return {
        "create_entities": lambda: store.create_entities(OWNER, [ent("x", "t", "o")]),
        "create_relations": lambda: store.create_relations(OWNER, [rel("x", "y")]),
        "add_observations": lambda: store.add_observations(OWNER, [ObservationAddition(entityName="x",
                                                                                       contents=["n"])]),
        "delete_entities": lambda: store.delete_entities(OWNER, ["x"]),
        "delete_observations": lambda: store.delete_observations(
            OWNER, [ObservationDeletion(entityName="a", observations=["n"])]),
        "delete_relations": lambda: store.delete_relations(OWNER, [rel("a", "b")]),
        "read_graph": lambda: store.read_graph(OWNER),
        "search_nodes": lambda: store.search_nodes(OWNER, "a"),
        "open_nodes": lambda: store.open_nodes(OWNER, ["a"]),
        "usage": lambda: store.usage(OWNER),
        "delete_graph": lambda: store.delete_graph("someone-else"),
        "save_session": lambda: store.save_session(record("s2")),
        "get_session": lambda: store.get_session("s1"),
        "delete_session": lambda: store.delete_session("s1"),
        "list_sessions": lambda: store.list_sessions(),
        "count_sessions": lambda: store.count_sessions("user-1", 10),
        "send_to_session": lambda: store.send_to_session("s1", "m", 64),
        "purge_sessions": lambda: store.purge_sessions(0.0),
        "append_event": lambda: store.append_event("s1", "user-1", "0", '{"m": 1}', LIMITS),
        "events_after": lambda: store.events_after("s1", "1"),
        "delete_events": lambda: store.delete_events("s1"),
        "event_bytes": lambda: store.event_bytes("s1"),
    }


async def test_a_stopped_redis_is_storage_unavailable_and_service_resumes(redis_server: RedisServer,
                                                                          redis_url: str) -> None:
    store = RedisStorage(redis_url, timeout=1.0)
    try:
        await store.create_entities(OWNER, [ent("a", "t", "one")])
        await store.read_graph(OWNER)  # a warm copy of the view, and the scripts loaded
        await store.save_session(record("s1"))
        redis_server.stop()
        calls = every_call(store)
        for name, call in calls.items():
            with pytest.raises(StorageUnavailable) as refused:
                await call()
            assert refused.value.retry_after > 0 and refused.value.reason, name
        await store.touch_session("s1", time.time())  # a hint: logged, never raised

        redis_server.start()  # empty, without the scripts: both must be recovered from
        for call in calls.values():
            await call()
        await store.create_entities(OWNER, [ent("b", "t", "two")])
        assert (await store.read_graph(OWNER)).model().entities == [ent("b", "t", "two")]
        await check_owner(store, OWNER)
    finally:
        if redis_server.process is None:
            redis_server.start()
        await store.close()


async def test_a_full_redis_refuses_writes_as_the_store_is_full_and_reads_go_on(redis_url: str) -> None:
    """At `maxmemory` under `noeviction`, Redis answers a write with OOM: retryable, "the store is
    full", for a graph write and an event (redis-py parses the reply into its own error class, whose
    message has lost the "OOM"); reads are answered; writes work again once there is room."""
    store = RedisStorage(redis_url)
    admin: Any = RedisStorage(redis_url).client
    try:
        await store.create_entities(OWNER, [ent("a", "t", "one")])
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)
        writes: dict[str, Callable[[], Awaitable[Any]]] = {
            "create_entities": lambda: store.create_entities(OWNER, [ent("b", "t", "two")]),
            "append_event": lambda: store.append_event("s1", "user-1", "0", '{"m": 1}', LIMITS)}
        for name, write in writes.items():
            with pytest.raises(StorageUnavailable) as refused:
                await write()
            assert refused.value.reason == "the store is full" and refused.value.retry_after > 0, name
        assert (await store.read_graph(OWNER)).model().entities == [ent("a", "t", "one")]
        assert (await store.search_nodes(OWNER, "one")).model().entities == [ent("a", "t", "one")]
        await admin.config_set("maxmemory", 0)
        await store.create_entities(OWNER, [ent("b", "t", "two")])
        await check_owner(store, OWNER)
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.aclose()
        await store.close()


async def test_a_view_copy_is_not_fooled_by_redis_losing_its_data(redis_server: RedisServer, redis_url: str
                                                                    ) -> None:
    """A server holds a warm copy of an owner's view; Redis restarts empty (or from an older
    snapshot) and the same steps are taken again with other contents: the server must serve the
    new contents, not its copy (which a generation counter, counting again, would match)."""
    store = RedisStorage(redis_url)
    try:
        await store.create_entities(OWNER, [ent("before", "t", "one")])
        assert (await store.read_graph(OWNER)).model().entities == [ent("before", "t", "one")]
        redis_server.stop()
        redis_server.start()
        with pytest.raises(StorageUnavailable):  # the pooled connection died with the server
            await store.ping()
        await store.create_entities(OWNER, [ent("after", "t", "two")])
        assert (await store.read_graph(OWNER)).model().entities == [ent("after", "t", "two")]
    finally:
        if redis_server.process is None:
            redis_server.start()
        await store.close()


async def test_concurrent_writers_keep_counters_and_view_exact(stores: tuple[RedisStorage, RedisStorage]) -> None:
    """Hundreds of mutations and reads of one owner at once, through two connections; afterwards the
    usage counters equal the rows, every derived key agrees with them, and both views equal them."""
    rng = random.Random(11)
    pool = [f"e{i}" for i in range(400)]  # several view chunks

    def one() -> Awaitable[Any]:
        store = rng.choice(stores)
        kind = rng.randrange(8)
        if kind == 0:
            return store.create_entities(OWNER, [ent(n, "t", f"o{rng.randrange(5)}") for n in rng.sample(pool, 20)])
        if kind == 1:
            return store.create_relations(OWNER, [rel(rng.choice(pool), rng.choice(pool)) for _ in range(10)])
        if kind == 2:
            return store.add_observations(OWNER, [ObservationAddition(entityName="hub",
                                                                      contents=[f"fact {rng.randrange(50)}"])])
        if kind == 3:
            return store.delete_entities(OWNER, rng.sample(pool, 10))
        if kind == 4:
            return store.delete_observations(OWNER, [ObservationDeletion(entityName="hub",
                                                                         observations=[f"fact {rng.randrange(50)}"])])
        if kind == 5:
            return store.delete_relations(OWNER, [rel(rng.choice(pool), rng.choice(pool)) for _ in range(10)])
        if kind == 6:
            return store.search_nodes(OWNER, "o1")
        return store.read_graph(OWNER)

    await stores[0].create_entities(OWNER, [ent("hub", "t")])
    for _ in range(3):
        await asyncio.gather(*(one() for _ in range(150)))
        await check_owner(stores[0], OWNER)
        rows = await graph_from_rows(stores[0], OWNER)
        for store in stores:
            assert (await store.read_graph(OWNER)).model() == rows
        assert await stores[1].usage(OWNER) == Usage(
            entities=len(rows.entities), observations=sum(len(e.observations) for e in rows.entities),
            bytes=sum(len(t.encode()) for e in rows.entities for t in (e.name, e.entityType, *e.observations))
            + sum(len(t.encode()) for r in rows.relations for t in (r.from_, r.to, r.relationType)))
    assert len(rows.entities) > 128  # the view really had several chunks to keep in step


async def test_delete_graph_racing_writes_leaves_nothing(stores: tuple[RedisStorage, RedisStorage]) -> None:
    """The removal runs while writes and reads of the same owner are in flight on both connections:
    each write lands before it (and is removed) or is refused after it; nothing outlives it, not even
    a view chunk rebuilt by a read that started before the removal."""
    refused = 0
    for round_ in range(5):
        owner = f"{OWNER}-{round_}"
        await stores[0].create_entities(owner, [ent(f"e{i}", "t", "x") for i in range(300)])
        await stores[1].read_graph(owner)

        async def write(i: int, owner: str = owner) -> None:
            nonlocal refused
            store = stores[i % 2]
            try:
                if i % 3 == 0:
                    await store.create_entities(owner, [ent(f"late{i}", "t", "y")])
                elif i % 3 == 1:
                    await store.create_relations(owner, [rel(f"e{i}", f"late{i}")])
                else:
                    await store.add_observations(owner, [ObservationAddition(entityName=f"e{i}", contents=["z"])])
            except GraphClosedError:
                refused += 1

        tasks: list[Awaitable[Any]] = [write(i) for i in range(60)]
        tasks += [stores[i % 2].read_graph(owner) for i in range(10)]
        tasks.insert(30 + round_, stores[round_ % 2].delete_graph(owner))
        await asyncio.gather(*tasks)
        left = await rows_of(stores[0], owner)
        assert left == dict.fromkeys(left, 0), left
        for store in stores:
            assert (await store.read_graph(owner)).model() == KnowledgeGraph(entities=[], relations=[])
            assert await store.usage(owner) == Usage()
            with pytest.raises(GraphClosedError):
                await store.create_entities(owner, [ent("after", "t")])
        await check_owner(stores[0], owner)
    assert refused > 0  # the race did happen: writes arrived after the removal


async def test_session_records_expire_after_the_idle_timeout(redis_url: str) -> None:
    store = RedisStorage(redis_url, session_ttl=0.5)
    try:
        await store.save_session(record("http"))
        await store.save_session(record("sse", transport="sse"))
        await store.save_session(record("stale", last_seen_at=time.time() - 10))  # idle past the TTL already
        assert await store.get_session("stale") is None
        await asyncio.sleep(0.3)
        await store.touch_session("http", time.time())  # renews the TTL
        await asyncio.sleep(0.3)
        assert await store.get_session("http") is not None
        await asyncio.sleep(0.5)
        assert await store.get_session("http") is None
        assert [r.session_id for r in await store.list_sessions()] == ["sse"]  # an SSE record has no TTL
        assert await store.client.zrange(store.key("session", "all"), 0, -1) == [b"sse"]  # pruned
        await store.touch_session("http", time.time())  # touching an expired record creates nothing
        assert await store.get_session("http") is None
    finally:
        await store.close()


async def test_the_rate_limiter_is_refused_once_its_storage_is_closed(redis_url: str, tmp_path: Any) -> None:
    """The limiter runs on the storage's client: after the storage closed it, a call is refused as
    the server stopping, not a connection opened again that nothing would close."""
    from server.config import Settings
    from server.storage.backends import open_backend

    options: dict[str, Any] = {"data_dir": tmp_path, "redis_url": redis_url}
    storage, limiter = open_backend(Settings(**options))
    assert await limiter.hit("k", 5, 60) is None
    await storage.close()
    with pytest.raises(StorageUnavailable) as refused:
        await limiter.hit("k", 5, 60)
    assert refused.value.reason == "the server is stopping"


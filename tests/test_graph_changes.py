"""The graphs' change feed (`server.memory.changes.GraphChanges`), one contract on both backends:
what one connection to the store writes, another connection (another process) hears of, for the
graphs it watches, once per burst; writes that change nothing are not changes. And what each
backend adds: SQLite's counters in a file from before them, Redis's feed through an outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from server.memory.graph import ObservationAddition
from server.storage import StorageUnavailable
from server.storage.redis import RedisStorage
from server.storage.sqlite import SQLiteStorage
from tests.graph_backends import Backend, SQLiteBackend, Store, ent, rel
from tests.redis_server import RedisServer

ALICE = "alice-subject"
BOB = "bob-subject"
HEARD_WITHIN = 5.0
QUIET = 1.2
"""Long enough to be sure nothing comes: two SQLite polls, several Redis waits."""


class Heard:
    """A follower of the feed, in the background, and what it reported."""

    def __init__(self, store: Store, watched: set[str]) -> None:
        self.watched = watched
        self.nudge = asyncio.Event()
        self.reports: list[frozenset[str]] = []
        self._new = asyncio.Event()
        self._feed: AsyncGenerator[frozenset[str], None] = store.graph_changes(lambda: self.watched, self.nudge)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for changed in self._feed:
            self.reports.append(changed)
            self._new.set()

    async def settled(self) -> None:
        """The follower looked at the store since now (it holds a baseline of every watched graph)."""
        await asyncio.sleep(0.7)

    async def next(self, seen: int) -> frozenset[str]:
        while len(self.reports) <= seen:
            self._new.clear()
            await asyncio.wait_for(self._new.wait(), HEARD_WITHIN)
        return self.reports[seen]

    async def nothing_after(self, seen: int) -> None:
        await asyncio.sleep(QUIET)
        assert self.reports[seen:] == []

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._feed.aclose()


async def test_writes_by_another_connection_are_heard(backend: Backend) -> None:
    follower, writer = await backend.open(), await backend.open()
    heard = Heard(follower, {ALICE})
    try:
        await heard.settled()
        writes = [
            writer.create_entities(ALICE, [ent("Ada", "person", "likes tea")]),
            writer.create_relations(ALICE, [rel("Ada", "Ada")]),
            writer.add_observations(ALICE, [ObservationAddition(entityName="Ada", contents=["and cake"])]),
            writer.delete_relations(ALICE, [rel("Ada", "Ada")]),
            writer.delete_entities(ALICE, ["Ada"]),
        ]
        for write in writes:
            seen = len(heard.reports)
            await write
            assert await heard.next(seen) == {ALICE}

        # Writes that change nothing, and changes of a graph nobody watches, are not heard.
        seen = len(heard.reports)
        await writer.create_entities(ALICE, [ent("Bo")])
        await heard.next(seen)
        seen = len(heard.reports)
        await writer.create_entities(ALICE, [ent("Bo")])  # exists
        await writer.delete_entities(ALICE, ["nobody"])
        await writer.create_relations(BOB, [rel("x", "y")])
        await heard.nothing_after(seen)

        # Watched from now on: heard, with the other graph's in the same look if they coincide.
        heard.watched = {ALICE, BOB}
        await heard.settled()
        await writer.create_entities(BOB, [ent("Cy")])
        assert await heard.next(seen) == {BOB}
    finally:
        await heard.stop()


async def test_a_burst_is_heard_once_or_a_few_times(backend: Backend) -> None:
    follower, writer = await backend.open(), await backend.open()
    heard = Heard(follower, {ALICE})
    try:
        await heard.settled()
        await asyncio.gather(*(writer.create_entities(ALICE, [ent(f"e{i}")]) for i in range(30)))
        await heard.next(0)
        await asyncio.sleep(QUIET)
        assert 1 <= len(heard.reports) < 30
    finally:
        await heard.stop()


async def test_sqlite_is_heard_at_once_when_nudged(tmp_path: Path) -> None:
    """A write of this process nudges the follower, which then looks without waiting for its poll."""
    backend = SQLiteBackend(tmp_path / "m.sqlite3")
    store = await backend.open()
    heard = Heard(store, {ALICE})
    try:
        await heard.settled()
        loop = asyncio.get_running_loop()
        await store.create_entities(ALICE, [ent("Ada")])
        started = loop.time()
        heard.nudge.set()
        await heard.next(0)
        assert loop.time() - started < 0.3
    finally:
        await heard.stop()
        await backend.close()


def test_sqlite_files_from_before_the_feed_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    SQLiteStorage(path).db.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE memory_owners DROP COLUMN changes")
    conn.execute("ALTER TABLE mcp_sessions DROP COLUMN subscriptions")
    conn.commit()
    conn.close()

    storage = SQLiteStorage(path)
    try:
        owners = [row[1] for row in storage.db.conn.execute("PRAGMA table_info(memory_owners)")]
        sessions = [row[1] for row in storage.db.conn.execute("PRAGMA table_info(mcp_sessions)")]
    finally:
        storage.db.close()
    assert "changes" in owners and "subscriptions" in sessions


async def test_redis_feed_survives_an_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis stops and comes back: one warning each way, and changes made afterwards are heard."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    follower, writer = RedisStorage(redis.url), RedisStorage(redis.url)
    heard = Heard(follower, {ALICE})
    try:
        await heard.settled()
        await writer.create_entities(ALICE, [ent("before")])
        await heard.next(0)
        with caplog.at_level(logging.WARNING, logger="server.storage.redis.graph"):
            redis.stop()
            await asyncio.sleep(3.0)
            redis.start()
            for _ in range(100):
                if any("followed again" in r.message for r in caplog.records):
                    break
                await asyncio.sleep(0.1)
            seen = len(heard.reports)
            try:
                await writer.create_entities(ALICE, [ent("after")])
            except StorageUnavailable:  # the writer's pooled connection, from before the restart
                await writer.create_entities(ALICE, [ent("after")])
            assert await heard.next(seen) == {ALICE}
        warnings = [r.message for r in caplog.records if r.name == "server.storage.redis.graph"]
        assert len([w for w in warnings if "not followed" in w]) == 1, warnings
        assert len([w for w in warnings if "followed again" in w]) == 1, warnings
    finally:
        await heard.stop()
        await follower.close()
        await writer.close()
        redis.kill()


async def test_removing_a_graph_is_a_change(backend: Backend) -> None:
    follower, writer = await backend.open(), await backend.open()
    heard = Heard(follower, {ALICE})
    try:
        await writer.create_entities(ALICE, [ent("Ada")])
        await heard.settled()
        seen = len(heard.reports)
        await writer.delete_graph(ALICE)
        assert await heard.next(seen) == {ALICE}
    finally:
        await heard.stop()

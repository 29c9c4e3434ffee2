"""The transports' store (`transports.store.TransportStore`: MCP session records and the resumable
event log) on both backends, against its contract: every test runs on SQLite and on Redis.

The behaviour over HTTP (restore after a restart, replay, bounds under load) is in
tests/test_resumability.py and tests/test_sessions.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.storage.redis import RedisStorage
from server.storage.sqlite import SQLiteStorage
from transports.store import EVENT_OVERHEAD_BYTES, EventLimits, SessionRecord, TransportStore

WIDE = EventLimits(per_session=1_000_000, per_user=1_000_000)


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TransportStore]:
    chosen: SQLiteStorage | RedisStorage
    if request.param == "sqlite":
        chosen = SQLiteStorage(tmp_path / "m.sqlite3")
    else:
        chosen = RedisStorage(request.getfixturevalue("redis_url"))
    yield chosen
    await chosen.close()


def record(session_id: str, user: str = "u1", *, created_at: float = 1000.0, last_seen_at: float = 2000.0,
           transport: str = "streamable-http", protocol_version: str | None = "2025-11-25",
           client_params: str | None = '{"capabilities": {}}') -> SessionRecord:
    return SessionRecord(session_id=session_id, owner=f"{user}|client", user=user, transport=transport,
                         protocol_version=protocol_version, created_at=created_at, last_seen_at=last_seen_at,
                         client_params=client_params)


def cost(message: str | None) -> int:
    return EVENT_OVERHEAD_BYTES + (0 if message is None else len(message.encode()))


# --- session records ---------------------------------------------------------------------------


async def test_a_record_reads_back_exactly(store: TransportStore) -> None:
    saved = record("s1", created_at=1234.5678901234, last_seen_at=1e9 + 0.1, client_params='{"x": "Zoë\\u0000"}')
    await store.save_session(saved)
    assert await store.get_session("s1") == saved
    bare = record("s2", protocol_version=None, client_params=None, transport="sse")
    await store.save_session(bare)
    assert await store.get_session("s2") == bare
    assert await store.get_session("unknown") is None


async def test_saving_again_replaces_the_record(store: TransportStore) -> None:
    await store.save_session(record("s1", client_params='{"a": 1}'))
    await store.save_session(record("s1", user="u2", protocol_version=None, client_params=None))
    assert await store.get_session("s1") == record("s1", user="u2", protocol_version=None, client_params=None)
    assert [r.session_id for r in await store.list_sessions("u1")] == []
    assert [r.session_id for r in await store.list_sessions("u2")] == ["s1"]


async def test_touch_moves_last_seen_and_creates_nothing(store: TransportStore) -> None:
    await store.save_session(record("s1"))
    await store.touch_session("s1", 3000.5)
    await store.touch_session("ghost", 3000.5)
    for _ in range(200):  # SQLite queues the touch without waiting for it
        found = await store.get_session("s1")
        if found is not None and found.last_seen_at == 3000.5:
            break
        await asyncio.sleep(0.01)
    assert await store.get_session("s1") == record("s1", last_seen_at=3000.5)
    assert await store.get_session("ghost") is None


async def test_list_by_creation_and_by_user_and_delete(store: TransportStore) -> None:
    await store.save_session(record("b", "u1", created_at=20))
    await store.save_session(record("a", "u2", created_at=30))
    await store.save_session(record("c", "u1", created_at=10))
    assert [r.session_id for r in await store.list_sessions()] == ["c", "b", "a"]
    assert [r.session_id for r in await store.list_sessions("u1")] == ["c", "b"]
    assert await store.list_sessions("nobody") == []
    await store.delete_session("b")
    await store.delete_session("never")
    assert [r.session_id for r in await store.list_sessions()] == ["c", "a"]
    assert await store.get_session("b") is None


async def test_purge_forgets_idle_sessions_of_both_transports_with_their_events(store: TransportStore) -> None:
    """By age alone: a live SSE session's stream may be held by another process on the store (its
    holder keeps the record fresh), while one whose process died is idle like any other."""
    await store.save_session(record("idle", last_seen_at=100))
    await store.save_session(record("live", last_seen_at=5000))
    await store.save_session(record("sse", created_at=1001, last_seen_at=5000, transport="sse"))
    await store.save_session(record("dead-sse", last_seen_at=100, transport="sse"))
    for session_id in ("idle", "live", "sse", "dead-sse", "no-record"):
        await store.append_event(session_id, "u1", "0", f'"{session_id}"', WIDE)
    assert await store.purge_sessions(1000) == 2
    assert [r.session_id for r in await store.list_sessions()] == ["live", "sse"]
    for session_id in ("idle", "dead-sse", "no-record"):
        assert await store.event_bytes(session_id) == 0
    assert await store.event_bytes("live") == cost('"live"')
    assert await store.event_bytes(user="u1") == cost('"live"') + cost('"sse"')
    assert await store.purge_sessions(1000) == 0


# --- the event log -----------------------------------------------------------------------------


async def test_events_replay_their_own_stream_after_the_given_event(store: TransportStore) -> None:
    first = await store.append_event("s1", "u1", "0", None, WIDE)  # a priming event
    second = await store.append_event("s1", "u1", "0", '{"n": "Zoë \\u0000 😀"}', WIDE)
    other_stream = await store.append_event("s1", "u1", "1", '{"n": 2}', WIDE)
    third = await store.append_event("s1", "u1", "0", "", WIDE)
    ids = [first, second, other_stream, third]
    assert all(i is not None and i.isdigit() for i in ids) and len(set(ids)) == 4
    assert [int(i or 0) for i in ids] == sorted(int(i or 0) for i in ids)  # ids grow
    assert first is not None and other_stream is not None and third is not None
    assert await store.events_after("s1", first) == ("0", [(second, '{"n": "Zoë \\u0000 😀"}'), (third, "")])
    assert await store.events_after("s1", other_stream) == ("1", [])
    assert await store.events_after("s1", third) == ("0", [])
    # The priming event itself replays as an event without a message.
    later = await store.append_event("s1", "u1", "1", None, WIDE)
    assert await store.events_after("s1", other_stream) == ("1", [(later, None)])


async def test_an_event_id_means_nothing_outside_its_session(store: TransportStore) -> None:
    mine = await store.append_event("s1", "u1", "0", None, WIDE)
    await store.append_event("s1", "u1", "0", '"secret"', WIDE)
    assert mine is not None
    assert await store.events_after("s2", mine) is None
    await store.append_event("s2", "u2", "0", None, WIDE)
    assert await store.events_after("s2", mine) is None
    for unknown in ("999999", "", "abc", "-1", "1.0", " 1", mine + "x", "²", "\u0663"):
        assert await store.events_after("s1", unknown) is None, unknown


async def test_event_costs_are_counted_per_session_and_per_user(store: TransportStore) -> None:
    await store.append_event("s1", "u1", "0", None, WIDE)
    await store.append_event("s1", "u1", "0", "héllo", WIDE)
    await store.append_event("s2", "u1", "0", "x" * 10, WIDE)
    await store.append_event("s3", "u2", "0", "y", WIDE)
    assert await store.event_bytes("s1") == cost(None) + cost("héllo")
    assert await store.event_bytes(user="u1") == cost(None) + cost("héllo") + cost("x" * 10)
    assert await store.event_bytes(user="u2") == cost("y")
    assert await store.event_bytes("none") == await store.event_bytes(user="none") == 0
    assert await store.event_bytes() == 0


async def test_the_oldest_events_go_first_beyond_the_session_bound(store: TransportStore) -> None:
    limits = EventLimits(per_session=3 * cost("x" * 100), per_user=1_000_000)
    ids = [await store.append_event("s1", "u1", str(i % 2), "x" * 100, limits) for i in range(5)]
    assert await store.event_bytes("s1") == 3 * cost("x" * 100)
    assert ids[0] is not None and ids[1] is not None and ids[2] is not None
    assert await store.events_after("s1", ids[0]) is None  # evicted
    assert await store.events_after("s1", ids[1]) is None
    assert await store.events_after("s1", ids[2]) == ("0", [(ids[4], "x" * 100)])
    # An event worth more than the excess still goes whole: the bound is never exceeded.
    await store.append_event("s1", "u1", "0", "x" * 150, limits)
    assert await store.event_bytes("s1") <= limits.per_session


async def test_the_user_bound_evicts_across_the_users_sessions(store: TransportStore) -> None:
    limits = EventLimits(per_session=1_000_000, per_user=4 * cost("m"))
    a1 = await store.append_event("a", "u1", "0", "m", limits)
    b1 = await store.append_event("b", "u1", "0", "m", limits)
    await store.append_event("other", "u2", "0", "m", limits)
    a2 = await store.append_event("a", "u1", "0", "m", limits)
    b2 = await store.append_event("b", "u1", "0", "m", limits)
    assert await store.event_bytes(user="u1") == 4 * cost("m")
    await store.append_event("b", "u1", "0", "m", limits)  # one too many: a's first goes
    assert a1 is not None and b1 is not None
    assert await store.events_after("a", a1) is None
    assert await store.events_after("b", b1) is not None
    assert await store.event_bytes("a") == cost("m") and await store.event_bytes("b") == 3 * cost("m")
    assert await store.event_bytes(user="u1") == 4 * cost("m")
    assert await store.event_bytes(user="u2") == cost("m")  # other users are not touched
    assert a2 is not None and b2 is not None


async def test_an_event_over_a_bound_is_not_stored_and_takes_its_stream_along(store: TransportStore) -> None:
    limits = EventLimits(per_session=400, per_user=1_000_000)
    kept = await store.append_event("s1", "u1", "other", "k", limits)
    first = await store.append_event("s1", "u1", "0", None, limits)
    assert await store.append_event("s1", "u1", "0", "x" * (400 - EVENT_OVERHEAD_BYTES + 1), limits) is None
    assert first is not None and kept is not None
    assert await store.events_after("s1", first) is None  # the stream's earlier events went with it
    assert await store.events_after("s1", kept) == ("other", [])
    assert await store.event_bytes("s1") == cost("k")
    per_user = EventLimits(per_session=1_000_000, per_user=cost("x"))
    assert await store.append_event("s1", "u1", "other", "xx", per_user) is None
    assert await store.events_after("s1", kept) is None
    assert await store.event_bytes("s1") == await store.event_bytes(user="u1") == 0


async def test_delete_events_of_a_stream_through_an_event(store: TransportStore) -> None:
    ids = [await store.append_event("s1", "u1", stream, f'"{n}"', WIDE)
           for n, stream in enumerate(["0", "1", "0", "0", "1"])]
    await store.append_event("s2", "u1", "0", '"s2"', WIDE)
    assert all(ids) and ids[2] is not None and ids[3] is not None and ids[1] is not None
    await store.delete_events("s1", ("0", ids[2]))
    assert await store.events_after("s1", ids[0] or "") is None
    assert await store.events_after("s1", ids[2]) is None
    assert await store.events_after("s1", ids[3]) == ("0", [])
    assert await store.events_after("s1", ids[1]) == ("1", [(ids[4], '"4"')])  # the other stream stays
    assert await store.event_bytes("s1") == cost('"3"') + cost('"1"') + cost('"4"')
    # A later request may reuse stream id "0": deleting through an older id leaves its events.
    reused = await store.append_event("s1", "u1", "0", '"5"', WIDE)
    await store.delete_events("s1", ("0", ids[3]))
    assert reused is not None and await store.events_after("s1", reused) == ("0", [])
    assert await store.event_bytes(user="u1") == cost('"1"') + cost('"4"') + cost('"5"') + cost('"s2"')


async def test_delete_events_of_a_session(store: TransportStore) -> None:
    first = await store.append_event("s1", "u1", "0", '"a"', WIDE)
    await store.append_event("s1", "u1", "1", '"b"', WIDE)
    await store.append_event("s2", "u1", "0", '"c"', WIDE)
    await store.delete_events("s1")
    await store.delete_events("never-had-any")
    assert first is not None and await store.events_after("s1", first) is None
    assert await store.event_bytes("s1") == 0
    assert await store.event_bytes(user="u1") == cost('"c"')
    again = await store.append_event("s1", "u1", "0", '"d"', WIDE)  # the session may go on
    assert again is not None and await store.events_after("s1", again) == ("0", [])
    assert await store.event_bytes(user="u1") == cost('"c"') + cost('"d"')

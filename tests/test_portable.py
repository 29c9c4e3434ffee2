"""The portable records (server/storage/portable.py): every backend exports what it holds and
imports what another exported, and nothing changes on the way: export(import(export(x))) ==
export(x) in both directions, and every graph reads back identically (read_graph, entity order
included)."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth.memories import Memory
from auth.models import AccountState, Client, PersonalToken, RememberedConsent, SigningKey, Token, User
from server.memory.graph import Entity, ObservationAddition, ObservationDeletion, Origin, Relation
from server.storage.portable import (
    EntityRecord,
    PortableError,
    PortableStore,
    Record,
    RelationRecord,
    import_records,
)
from server.storage.redis import RedisStorage
from server.storage.sqlite import SQLiteStorage
from transports.store import SessionRecord

NOW = time.time()


def _sqlite(directory: Path) -> SQLiteStorage:
    directory.mkdir(parents=True, exist_ok=True)
    return SQLiteStorage(directory / "memory.sqlite3")


def _redis(url: str) -> RedisStorage:
    return RedisStorage(url, prefix=f"t{secrets.token_hex(4)}:", session_ttl=1800)


async def collect(records: AsyncIterator[Record]) -> dict[str, list[Any]]:
    """An export by kind: the graph's records in their order (it means something), the rest sorted."""
    kinds: dict[str, list[Any]] = {}
    async for record in records:
        kinds.setdefault(type(record).__name__, []).append(record)
    for kind, found in kinds.items():
        if kind not in (EntityRecord.__name__, RelationRecord.__name__):
            found.sort(key=repr)
    return kinds


async def fill(store: PortableStore) -> None:
    """A bit of everything a deployment holds, written through the storage protocols."""
    await store.cookie_key()
    for i in range(2):
        await store.add_signing_key(SigningKey(f"kid-{i}", "ES256", '{"kty":"EC"}', f"sealed-{i}", NOW - 100 + i),
                                    NOW - 50 + i, NOW + 3600, replace=True)
    alice = User("id-alice", "alice", "hash-a", NOW - 1000)
    await store.add_user(alice)
    await store.add_user(User("id-bob", "bob", "hash-b", NOW - 900))
    linked = await store.link_upstream_user("https://idp.example", "sub-1", User("id-carol", "carol", "!", NOW - 800),
                                            NOW - 800)
    await store.set_upstream_tokens(linked.id, "sealed-upstream")
    await store.add_user(User("id-dave", "dave", "hash-d", NOW - 700))
    await store.begin_removal("dave")
    await store.add_user(User("id-eve", "eve", "hash-e", NOW - 600, AccountState.ACTIVE))
    # A named memory, and records bound to it (auth.memories).
    await store.create_memory(Memory("mem_work", "id-alice", "work", NOW - 950), 20)
    used = Client(client_id="c-used", client_id_issued_at=int(NOW - 500), redirect_uris=("http://127.0.0.1/cb",),
                  client_name="used", metadata={"extra": [1, "two"]})
    await store.save_client(used)
    await store.save_client(Client(client_id="https://cimd.example/app", client_id_issued_at=int(NOW - 400),
                                   redirect_uris=("https://app.example/cb",)))
    await store.remember_consent(RememberedConsent("id-alice", "c-used", "http://127.0.0.1/cb", "https://r/mcp",
                                                   ("memory", "openid"), NOW - 10, NOW + 1000, "mem_work"))
    await store.remember_consent(RememberedConsent("id-bob", "c-used", "http://127.0.0.1/cb", "https://r/mcp",
                                                   ("memory",), NOW - 10, NOW - 1))  # expired
    assert await store.create_browser_session("login-a", "id-alice", "hash-a", NOW - 5, NOW + 1000)
    assert await store.create_browser_session("login-b", "id-bob", "hash-b", NOW - 5, NOW + 1000)

    def token(h: str, kind: str, issued: float, expires: float, subject: str = "id-alice") -> Token:
        return Token(h, kind, "grant-1", "c-used", subject, ("memory",), "https://r/mcp", issued, expires,  # type: ignore[arg-type]
                     auth_time=NOW - 100)

    await store.save_tokens([token("acc-1", "access", NOW - 60, NOW + 3600), token("ref-1", "refresh", NOW - 60,
                                                                                   NOW + 86400)])
    await store.save_tokens([token("acc-old", "access", NOW - 7200, NOW - 3600)])  # expired
    rotation = await store.rotate_refresh_token("ref-1", [token("acc-2", "access", NOW - 1, NOW + 3600),
                                                          token("ref-2", "refresh", NOW - 1, NOW + 86400)],
                                                "sealed-answer", NOW - 1, 60)
    assert rotation.status == "rotated"
    await store.save_tokens([Token("acc-work", "access", "grant-3", "c-used", "id-alice", ("memory",), "https://r/mcp",
                                   NOW - 30, NOW + 3600, memory="mem_work")])
    await store.save_tokens([Token("acc-bob", "access", "grant-2", "c-used", "id-bob", ("memory",), "https://r/mcp",
                                   NOW - 30, NOW + 3600)])
    # Personal access tokens: one used, one that never expires, one expired (not carried).
    assert await store.save_personal_token(PersonalToken("pat-1", "pat-hash-1", "id-alice", "ci", ("memory:read",),
                                                         "https://r/mcp", NOW - 300, NOW + 3600, memory="mem_work"))
    await store.touch_personal_token("pat-1", NOW - 20)
    assert await store.save_personal_token(PersonalToken("pat-2", "pat-hash-2", "id-bob", "", ("memory:read",
                                                         "memory:write"), "https://r/mcp", NOW - 200, None))
    assert await store.save_personal_token(PersonalToken("pat-3", "pat-hash-3", "id-alice", "old", ("memory:read",),
                                                         "https://r/mcp", NOW - 7200, NOW - 3600))
    # Graphs: gaps in the ids (deleted entities and relations), observations deleted and added, odd text.
    # Provenance: known (two clients), and unknown (written without an origin).
    await store.create_entities("owner-a", [Entity(name=n, entityType="t", observations=[f"{n} one", f"{n} two"])
                                            for n in ("zeta", "alpha", "mid", "gone", "nul\x00x", "ünï")],
                                origin=Origin(NOW - 500.25, "c-used"))
    await store.add_observations("owner-a", [ObservationAddition(entityName="zeta", contents=["zeta three"])],
                                 origin=Origin(NOW - 400.5, "pat:0123456789abcdef"))
    await store.create_relations("owner-a", [Relation(from_="zeta", to="alpha", relationType="knows"),
                                             Relation(from_="gone", to="mid", relationType="x"),
                                             Relation(from_="alpha", to="nobody", relationType="dangling")],
                                 origin=Origin(NOW - 300.0, "c-used"))
    await store.delete_entities("owner-a", ["gone"])
    await store.delete_observations("owner-a", [ObservationDeletion(entityName="zeta", observations=["zeta one"])])
    await store.create_entities("owner-a", [Entity(name="late", entityType="t", observations=[])])
    await store.create_entities("owner-b", [Entity(name="only", entityType="t", observations=["o"])])
    await store.create_entities("owner-closed", [Entity(name="x", entityType="t", observations=[])])
    await store.delete_graph("owner-closed")
    await store.save_session(SessionRecord("sess-1", "id-alice|c-used", "id-alice", "streamable-http", "2025-11-25",
                                           NOW - 100, NOW - 10, '{"clientInfo":{"name":"codex"}}',
                                           ("memory://knowledge-graph",)))
    await store.save_session(SessionRecord("sess-2", "id-bob|c-used", "id-bob", "sse", None, NOW - 50, NOW - 50))


@pytest.mark.parametrize("first", ["sqlite", "redis"])
async def test_every_kind_survives_the_trip_to_the_other_backend_and_back(
        first: str, tmp_path: Path, redis_url: str) -> None:
    def make(kind: str, name: str) -> PortableStore:
        return _sqlite(tmp_path / name) if kind == "sqlite" else _redis(redis_url)

    other = "redis" if first == "sqlite" else "sqlite"
    stores = [make(first, "a"), make(other, "b"), make(first, "c")]
    try:
        await fill(stores[0])
        exported = await collect(stores[0].export_records(NOW))
        assert {k: len(v) for k, v in exported.items()} == {
            "CookieKey": 1, "SigningKeyRecord": 2, "UserRecord": 5, "MemoryRecord": 1, "ClientRecord": 2,
            "ConsentRecord": 1, "LoginRecord": 2, "TokenRecord": 6, "PersonalTokenRecord": 2, "EntityRecord": 7,
            "RelationRecord": 2, "SessionRecordRecord": 2}
        for source, target in itertools.pairwise(stores):
            counts = await import_records(target, source.export_records(NOW))
            assert counts["tokens"] == 6 and counts["entities"] == 7 and counts["memories"] == 1
            assert await collect(target.export_records(NOW)) == exported
            for owner in ("owner-a", "owner-b"):
                assert (await target.read_graph(owner)).json == (await stores[0].read_graph(owner)).json
        target = stores[2]
        # What the server reads back, through the protocols: logins, tokens, the rotation's retry.
        assert (await target.get_browser_session("login-a", NOW)) is not None
        assert (await target.get_token("acc-2", NOW)) is not None
        work = await target.get_token("acc-work", NOW)
        assert work is not None and work.memory == "mem_work"
        assert [m.name for m in await target.list_memories("id-alice")] == ["work"]
        assert (await target.get_token("acc-old", NOW)) is None
        used = await target.get_personal_token("pat-hash-1", NOW)
        assert used is not None and used.last_used_at == NOW - 20
        assert (await target.get_personal_token("pat-hash-2", NOW + 10**8)) is not None  # never expires
        assert (await target.get_personal_token("pat-hash-3", NOW)) is None
        retry = await target.rotate_refresh_token("ref-1", [], "unused", NOW, 60)
        assert (retry.status, retry.successor) == ("retry", "sealed-answer")
        assert (await target.get_upstream_tokens("id-carol")) == "sealed-upstream"
        assert [k.kid for k in await target.signing_keys(NOW)] == ["kid-1", "kid-0"]
        assert await target.cookie_key() == await stores[0].cookie_key()
        assert (await target.get_user_by_name("dave")) is None  # still being removed
        assert await target.usage("owner-closed") == await stores[0].usage("owner-closed")
    finally:
        for store in stores:
            await store.close()


async def test_an_import_refuses_another_server_key(tmp_path: Path, redis_url: str) -> None:
    source, target = _sqlite(tmp_path / "a"), _redis(redis_url)
    try:
        await fill(source)
        await target.cookie_key()  # a different one
        with pytest.raises(PortableError, match="another server key"):
            await import_records(target, source.export_records(NOW))
    finally:
        await source.close()
        await target.close()


texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6)
operations = st.lists(st.one_of(
    st.tuples(st.just("entities"), st.lists(st.tuples(texts, texts, st.lists(texts, max_size=3)), max_size=4),
              st.one_of(st.none(), st.builds(Origin, st.floats(0, 4e9), texts))),
    st.tuples(st.just("relations"), st.lists(st.tuples(texts, texts, texts), max_size=4),
              st.one_of(st.none(), st.builds(Origin, st.floats(0, 4e9), texts))),
    st.tuples(st.just("delete"), st.lists(texts, max_size=2)),
), max_size=8)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
async def test_random_graphs_read_back_identically_on_the_other_backend(
        ops: list[tuple[Any, ...]], tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> None:
    source = _sqlite(tmp_path_factory.mktemp("g"))
    target = _redis(redis_url)
    again = _sqlite(tmp_path_factory.mktemp("g"))
    try:
        await source.cookie_key()
        for op, items, *origin in ops:
            if op == "entities":
                await source.create_entities("o", [Entity(name=n, entityType=t, observations=obs)
                                                   for n, t, obs in items], origin=origin[0])
            elif op == "relations":
                await source.create_relations("o", [Relation(from_=a, to=b, relationType=r) for a, b, r in items],
                                              origin=origin[0])
            else:
                await source.delete_entities("o", items)
        await import_records(target, source.export_records(NOW))
        await import_records(again, target.export_records(NOW))
        expected = (await source.read_graph("o")).json
        assert (await target.read_graph("o")).json == expected
        assert (await again.read_graph("o")).json == expected
        assert await collect(again.export_records(NOW)) == await collect(source.export_records(NOW))
    finally:
        for store in (source, target, again):
            await store.close()

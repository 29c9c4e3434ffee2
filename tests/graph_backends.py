"""The two graph stores, as the shared graph tests see them: open a store (another connection to the
same data, as another process would have), read an owner's graph straight from the rows (bypassing
the read_graph view), count what an owner has left, and check a store's internal invariants.

SQLite: `GraphTables` on one file. Redis: `RedisStorage` on the private test Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from server.memory.graph import Entity, KnowledgeGraph, Relation, Usage
from server.memory.search import word_text
from server.storage.redis import RedisStorage
from server.storage.redis.graph_view import SEP, OwnerKeys
from server.storage.sqlite.db import Database
from server.storage.sqlite.graph import GraphTables


class SQLiteStore(GraphTables):
    def __init__(self, db: Database) -> None:
        self.db = db


Store = SQLiteStore | RedisStorage


def open_sqlite(path: Path) -> SQLiteStore:
    db = Database(path)
    db.apply_schema(GraphTables.SCHEMA)
    GraphTables.migrate(db)
    return SQLiteStore(db)


class Backend:
    """Where a test's stores keep their data; `open` gives one more connection to it."""

    name: str

    def __init__(self) -> None:
        self.opened: list[Store] = []

    async def open(self) -> Store:
        store = self._open()
        self.opened.append(store)
        return store

    def _open(self) -> Store:
        raise NotImplementedError

    async def close_store(self, store: Store) -> None:
        """Close one connection, as a process that stops."""
        self.opened.remove(store)
        if isinstance(store, SQLiteStore):
            store.db.close()
        else:
            await store.close()

    async def close(self) -> None:
        for store in list(self.opened):
            await self.close_store(store)


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _open(self) -> Store:
        return open_sqlite(self.path)


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def _open(self) -> Store:
        return RedisStorage(self.url)


def ent(name: str, entity_type: str = "person", *observations: str) -> Entity:
    return Entity(name=name, entityType=entity_type, observations=list(observations))


def rel(source: str, target: str, relation_type: str = "knows") -> Relation:
    return Relation(from_=source, to=target, relationType=relation_type)


# --- reading the rows --------------------------------------------------------------------------


async def graph_from_rows(store: Store, owner: str) -> KnowledgeGraph:
    """The owner's graph read straight from the stored rows, bypassing the chunked view."""
    if isinstance(store, SQLiteStore):
        conn = store.db.conn
        observations = "SELECT content FROM memory_observations WHERE owner = ? AND entity_id = ? ORDER BY id"
        entities = [
            ent(row["name"], row["entity_type"], *(o[0] for o in conn.execute(observations, (owner, row["id"]))))
            for row in conn.execute("SELECT id, name, entity_type FROM memory_entities WHERE owner = ? ORDER BY id",
                                    (owner,))
        ]
        relations = [rel(row["from_name"], row["to_name"], row["relation_type"]) for row in conn.execute(
            "SELECT from_name, to_name, relation_type FROM memory_relations WHERE owner = ? ORDER BY id", (owner,))]
        return KnowledgeGraph(entities=entities, relations=relations)
    keys = OwnerKeys.of(store, owner)
    entity_rows = await _hash(store, keys.entities)
    relation_rows = await _hash(store, keys.relations)
    entities = [ent(*_texts(record)) for _, record in sorted(entity_rows.items(), key=lambda item: int(item[0]))]
    relations = [rel(*_texts(record)) for _, record in sorted(relation_rows.items(), key=lambda item: int(item[0]))]
    return KnowledgeGraph(entities=entities, relations=relations)


def _texts(record: bytes) -> list[str]:
    return [text.decode() for text in record.split(SEP)]


def _folds(blob: bytes) -> list[tuple[bytes, bytes]]:
    """A chunk of folded records (graph_view.py's PRELUDE): (entity id, folded record), in order."""
    found, position, ids = [], 0, []
    while position < len(blob):
        mark = blob.index(b"\xfe", position)
        stop = blob.index(b"\xfd", mark)
        entity_id = 0
        for digit in blob[mark + 1:stop]:
            entity_id = entity_id * 8 + digit - 0xF5
        ids.append(entity_id)
        found.append((str(entity_id).encode(), blob[position:mark]))
        position = stop + 1
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    return found


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def _hash(store: RedisStorage, key: str) -> dict[bytes, bytes]:
    return {_bytes(k): _bytes(v) for k, v in (await store.client.hgetall(key)).items()}


async def rows_of(store: Store, owner: str) -> dict[str, int]:
    """How many rows (SQLite) or keys' entries (Redis) the owner has left in what holds their memory
    and its view; after delete_graph every count is 0."""
    if isinstance(store, SQLiteStore):
        return {table: store.db.conn.execute(f"SELECT count(*) FROM {table} WHERE owner = ?",  # noqa: S608
                                             (owner,)).fetchone()[0]
                for table in ("memory_entities", "memory_observations", "memory_relations", "memory_graph_chunks")}
    keys = OwnerKeys.of(store, owner)
    counts: dict[str, int] = {}
    for name in ("names", "entities", "folds", "triples", "relations", "chunks", "view", "origins", "words"):
        counts[name] = await store.client.hlen(getattr(keys, name))
    counts["ends"] = await store.client.zcard(keys.ends)
    counts["index"] = await store.client.zcard(keys.index)  # the word index of the version before: gone
    return counts


async def chunk_count(store: Store, owner: str, kind: str = "e") -> int:
    """How many chunks of the read_graph view the owner has (kind "e": entities, "r": relations)."""
    if isinstance(store, SQLiteStore):
        return int(store.db.conn.execute("SELECT count(*) FROM memory_graph_chunks WHERE owner = ? AND kind = ?",
                                         (owner, 0 if kind == "e" else 1)).fetchone()[0])
    fields = await store.client.hkeys(OwnerKeys.of(store, owner).chunks)
    return sum(1 for field in fields if _bytes(field).startswith(kind.encode()))


# --- invariants --------------------------------------------------------------------------------


async def check_store(store: Store) -> None:
    """The store's derived data agrees with its rows. SQLite: the FTS indexes (integrity-check).
    Redis, for every owner: names, records and folds name the same entities; relations and their
    identity index are inverse; the endpoint index has exactly one member per endpoint; the usage
    counters equal what the rows hold; every row's chunk is listed and every fresh chunk has JSON;
    a closed owner has nothing left; the word index holds exactly each entity's words, each with
    the best field it occurs in; the origins hash has one list per entity (a pair per text after the
    name) and one pair per relation, and nothing else. SQLite: the word tables have exactly one row per entity and per
    observation, holding its words."""
    if isinstance(store, SQLiteStore):
        conn = store.db.conn
        entity_words = {row[0]: (row[1], row[2]) for row in conn.execute(
            "SELECT rowid, name_words, type_words FROM memory_entity_words")}
        assert entity_words == {row[0]: (word_text(row[1]), word_text(row[2])) for row in conn.execute(
            "SELECT id, name, entity_type FROM memory_entities")}
        observation_words = dict(conn.execute("SELECT rowid, words FROM memory_observation_words").fetchall())
        assert observation_words == {row[0]: word_text(row[1]) for row in conn.execute(
            "SELECT id, content FROM memory_observations")}
        for table in ("memory_entity_search", "memory_observation_search", "memory_entity_words",
                      "memory_observation_words"):
            store.db.conn.execute(f"INSERT INTO {table} ({table}) VALUES ('integrity-check')")  # noqa: S608
        return
    prefix = store.key("graph", "owner", "").encode()
    for owner_key in await store.client.keys(prefix + b"*"):
        await check_owner(store, _bytes(owner_key)[len(prefix):].decode())


async def check_owner(store: RedisStorage, owner: str) -> None:
    """`check_store` for one owner of a Redis store."""
    keys = OwnerKeys.of(store, owner)
    meta = {k.decode(): v.decode() for k, v in (await _hash(store, keys.owner)).items()}
    names, entities, fold_chunks = [await _hash(store, key) for key in (keys.names, keys.entities, keys.folds)]
    folds: dict[bytes, bytes] = {}
    for chunk, blob in fold_chunks.items():
        for entity_id, fold in _folds(blob):
            assert int(entity_id) // 128 == int(chunk), f"entity {entity_id!r} folded in chunk {chunk!r}"
            folds[entity_id] = fold
    relations, triples = await _hash(store, keys.relations), await _hash(store, keys.triples)
    ends = {_bytes(member) for member in await store.client.zrange(keys.ends, 0, -1)}
    chunks, view = await _hash(store, keys.chunks), await _hash(store, keys.view)
    origins = await _hash(store, keys.origins)
    words = await _hash(store, keys.words)
    index = {_bytes(member) for member in await store.client.zrange(keys.index, 0, -1)}
    where = f"owner {owner!r}"
    if meta.get("state") == "closed":
        assert not (names or entities or folds or relations or triples or ends or chunks or view or origins
                    or words or index), where
        assert (meta["entities"], meta["observations"], meta["bytes"]) == ("0", "0", "0"), where
        return
    assert sorted(names.values()) == sorted(entities) == sorted(folds), where
    usage = Usage()
    for name, entity_id in names.items():
        texts = _texts(entities[entity_id])
        assert texts[0] == name.decode(), where
        assert len(set(texts[2:])) == len(texts) - 2, f"{where}: an observation stored twice"
        assert folds[entity_id] == SEP.join(text.lower().encode() for text in texts), where
        usage = Usage(usage.entities + 1, usage.observations + len(texts) - 2,
                      usage.bytes + sum(len(text.encode()) for text in texts))
        assert f"e{int(entity_id) // 128}".encode() in chunks, f"{where}: entity {entity_id!r} has no chunk"
    # The word records: an indexed owner (or one without entities) has every entity's; an owner from
    # before them, those of the entities written or worded since (server/storage/redis/graph.py).
    # Either way each holds exactly its entity's words. The sorted set of the version before is gone.
    if meta.get("indexed") or not entities:
        assert sorted(words) == sorted(entities), where
    assert set(words) <= set(entities), where
    for entity_id in words:
        texts = _texts(entities[entity_id])
        assert words[entity_id] == SEP.join(word_text(text).encode() for text in texts), where
    assert not index, where
    # Provenance: one origin list per entity, a pair per text after the name; one pair per relation.
    assert set(origins) == {b"e" + i for i in entities} | {b"r" + i for i in relations}, where
    for entity_id, record in entities.items():
        assert len(origins[b"e" + entity_id].split(SEP)) == 2 * (len(record.split(SEP)) - 1), where
    assert all(len(origins[b"r" + i].split(SEP)) == 2 for i in relations), where
    assert {v: k for k, v in triples.items()} == relations, where
    expected_ends = set()
    for relation_id, record in relations.items():
        source, target, relation_type = _texts(record)
        expected_ends |= {source.encode() + SEP + relation_id, target.encode() + SEP + relation_id}
        usage = Usage(usage.entities, usage.observations,
                      usage.bytes + sum(len(text.encode()) for text in (source, target, relation_type)))
        assert f"r{int(relation_id) // 128}".encode() in chunks, f"{where}: relation {relation_id!r} has no chunk"
    assert ends == expected_ends, where
    assert Usage(*(int(meta.get(m, 0)) for m in ("entities", "observations", "bytes"))) == usage, where
    for chunk, marker in chunks.items():
        assert marker.startswith(b"-") or chunk in view, f"{where}: fresh chunk {chunk!r} without JSON"


def model_of(value: Any) -> Any:
    """A store's answer in a comparable form (models dumped, GraphJSON as its exact bytes)."""
    if hasattr(value, "json_parts"):
        return value.json
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [model_of(item) for item in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each graph test on both backends (import this fixture with `store` into a test module)."""
    chosen: Backend
    if request.param == "sqlite":
        chosen = SQLiteBackend(tmp_path / "m.sqlite3")
    else:
        chosen = RedisBackend(request.getfixturevalue("redis_url"))
    yield chosen
    await chosen.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()

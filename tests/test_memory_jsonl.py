"""Import and export in the official memory server's file format (server/memory/jsonl.py), and the
provenance they carry: on real files the official server wrote (tests/data/official, made by
make.py there), on both backends, through the store, the command line and a running server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.memory import jsonl
from server.memory.graph import (
    Entity,
    ExportBatch,
    ObservationAddition,
    ObservationDeletion,
    Origin,
    Quota,
    Relation,
    StoredEntity,
    StoredRelation,
)
from server.storage.redis import RedisStorage
from tests.conftest import BACKENDS, OAuthUser, RunningServer
from tests.graph_backends import Backend, Store, check_store, ent, open_sqlite, rel
from tests.test_end_to_end import structured

OFFICIAL = Path(__file__).parent / "data" / "official"
CLI = [sys.executable, "-m", "server"]
NOW = 1_780_000_000.25
OWNER = "owner-1"
SERVER_BACKENDS = BACKENDS  # the tests through a running server: both backends


def official_graph(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What the official server's loadGraph makes of a file it wrote: split on "\\n", blank lines
    dropped, each line parsed, the fields picked by type."""
    entities, relations = [], []
    for line in path.read_text().split("\n"):
        if line.strip():
            item = json.loads(line)
            if item["type"] == "entity":
                entities.append({"name": item["name"], "entityType": item["entityType"],
                                 "observations": item.get("observations", [])})
            else:
                relations.append({"from": item["from"], "to": item["to"], "relationType": item["relationType"]})
    return entities, relations


async def import_file(store: Store, path: Path, owner: str = OWNER, quota: Quota | None = None
                      ) -> tuple[jsonl.ParsedFile, Any]:
    parsed = jsonl.parse_file(path, NOW)
    return parsed, await jsonl.import_parsed(store, owner, parsed, quota)


async def export_bytes(store: Store, owner: str = OWNER, batch_size: int = 3) -> bytes:
    async def batches() -> AsyncIterator[ExportBatch]:
        async for batch in store.export_batches(owner, batch_size):
            assert 0 < len(batch) <= batch_size  # streamed: never more than a batch at a time
            yield batch

    return b"".join([chunk async for chunk in jsonl.export_lines(batches())])


async def read(store: Store, owner: str = OWNER) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads((await store.read_graph(owner)).json)
    return graph


# --- reading the files as they are -----------------------------------------------------------


@pytest.mark.parametrize("name", ["memory.jsonl", "memory.json", "quirks.jsonl"])
def test_the_official_files_and_their_quirks_read_as_the_official_server_reads_them(name: str) -> None:
    parsed = jsonl.parse_file(OFFICIAL / name, NOW)
    entities, relations = official_graph(OFFICIAL / "memory.jsonl")
    assert [{"name": e.name, "entityType": e.entity_type, "observations": list(e.observations)}
            for e in parsed.entities] == entities
    assert [{"from": r.from_, "to": r.to, "relationType": r.relation_type} for r in parsed.relations] == relations
    assert parsed.skipped == [] and parsed.notes == []
    fallback = Origin(NOW, "import")
    assert {e.origin for e in parsed.entities} | {r.origin for r in parsed.relations} == {fallback}
    assert all(list(e.observation_origins) == [fallback] * len(e.observations) for e in parsed.entities)


def test_quirks_file_really_has_its_quirks() -> None:
    raw = (OFFICIAL / "quirks.jsonl").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n\r\n" in raw and b"}{" in raw and not raw.endswith(b"\n")
    assert not (OFFICIAL / "memory.jsonl").read_bytes().endswith(b"\n")


def test_an_entity_without_observations_has_none() -> None:
    parsed = jsonl.parse_file(OFFICIAL / "no-observations.jsonl", NOW)
    assert [(e.name, list(e.observations)) for e in parsed.entities] == [
        ("Old", []), ("Older", ["kept"]), ("New", ["fresh"])]
    assert '"observations"' not in (OFFICIAL / "no-observations.jsonl").read_text().split("\n")[0]


def test_bad_records_are_skipped_with_their_line_and_reason() -> None:
    parsed = jsonl.parse_file(OFFICIAL / "bad-lines.jsonl", NOW)
    assert [e.name for e in parsed.entities] == ["Ada Lovelace", "Fine"]
    reasons = {problem.line: problem.reason for problem in parsed.skipped}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert "unknown type \"comment\"" in reasons[2]
    assert 'without "name"' in reasons[3]
    assert "entityType must be a string, not a number" in reasons[4]
    assert "observations must be an array, not a string" in reasons[5]
    assert "16385 characters long; the limit is 16384" in reasons[6]
    assert "unpaired UTF-16 surrogate" in reasons[7]
    assert "not a JSON object but an array" in reasons[8]
    assert "repeats the one on line 1" in reasons[9]
    assert "not valid JSON" in reasons[10] and "after the records before it" in reasons[10]
    assert "not valid JSON" in reasons[11]  # a line cut short


def test_provenance_in_a_file_is_kept_and_what_is_not_a_time_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "made.jsonl"
    path.write_text('{"type":"entity","name":"A","entityType":"t","observations":["1","2"],'
                    '"createdAt":"2026-01-02T03:04:05.000006Z","createdBy":"codex",'
                    '"observationsCreated":[{"at":1700000000.5,"by":"claude"},null]}\n'
                    '{"type":"relation","from":"A","to":"A","relationType":"r","createdAt":1e30,"createdBy":"x"}\n'
                    '{"type":"entity","name":"B","entityType":"t","createdAt":"yesterday","createdBy":"y"}')
    parsed = jsonl.parse_file(path, NOW)
    fallback = Origin(NOW, "import")
    a, b = parsed.entities
    assert a.origin == Origin(1767323045.000006, "codex")
    assert list(a.observation_origins) == [Origin(1700000000.5, "claude"), fallback]
    assert parsed.relations[0].origin == fallback and b.origin == fallback
    assert [n.line for n in parsed.notes] == [2, 3] and parsed.skipped == []


def test_a_repeated_entity_with_new_observations_is_merged(tmp_path: Path) -> None:
    path = tmp_path / "twice.jsonl"
    path.write_text('{"type":"entity","name":"A","entityType":"t","observations":["1","2"]}\n'
                    '{"type":"entity","name":"A","entityType":"other","observations":["2","3","3"]}\n'
                    '{"type":"relation","from":"A","to":"A","relationType":"r"}'
                    '{"type":"relation","from":"A","to":"A","relationType":"r"}')
    parsed = jsonl.parse_file(path, NOW)
    assert [(e.name, e.entity_type, list(e.observations)) for e in parsed.entities] == [("A", "t", ["1", "2", "3"])]
    assert [(n.line, "also on line 1" in n.reason) for n in parsed.notes] == [(2, True)]
    assert [(s.line, "repeats the one on line 3" in s.reason) for s in parsed.skipped] == [(3, True)]


@pytest.mark.parametrize("content,needle", [
    ("Ada;person;née\n".encode("latin-1"), "is not UTF-8 text: line 1 has the byte 0xe9"),
    (b'{\n  "type": "entity",\n  "name": "A"\n}\n', "is not a JSON Lines file"),
    (b"name,type\nA,person\n", "is not a JSON Lines file"),
])
async def test_a_file_that_cannot_be_read_changes_nothing(store: Store, tmp_path: Path, content: bytes,
                                                          needle: str) -> None:
    await store.create_entities(OWNER, [ent("kept", "t", "o")])
    before = await read(store)
    path = tmp_path / "memory.jsonl"
    path.write_bytes(content)
    with pytest.raises(jsonl.UnreadableFile, match=needle):
        await import_file(store, path)
    with pytest.raises(jsonl.UnreadableFile, match="cannot read"):
        await import_file(store, tmp_path / "missing.jsonl")
    assert await read(store) == before


# --- the stores ----------------------------------------------------------------------------------


async def test_importing_an_official_file_gives_its_graph_and_twice_adds_nothing(store: Store) -> None:
    _parsed, first = await import_file(store, OFFICIAL / "quirks.jsonl")
    entities, relations = official_graph(OFFICIAL / "memory.jsonl")
    assert await read(store) == {"entities": entities, "relations": relations}
    assert (first.entities, first.observations, first.relations) == (4, 10, 3)
    _, second = await import_file(store, OFFICIAL / "memory.json")
    assert (second.entities, second.observations, second.relations) == (0, 0, 0)
    assert await read(store) == {"entities": entities, "relations": relations}
    await check_store(store)


async def test_an_import_adds_only_missing_observations_to_existing_entities(store: Store) -> None:
    await store.create_entities(OWNER, [ent("Ada Lovelace", "countess", "Wrote the first program", "mine")],
                                origin=Origin(5.0, "client-a"))
    _, imported = await import_file(store, OFFICIAL / "memory.jsonl")
    assert (imported.entities, imported.observations) == (3, 9)
    ada = (await read(store))["entities"][0]
    assert ada == {"name": "Ada Lovelace", "entityType": "countess", "observations": [
        "Wrote the first program", "mine", 'Called it "poetical science"', "Née Byron — 1815"]}
    batches = [b async for b in store.export_batches(OWNER)]
    first = batches[0][0]
    assert isinstance(first, StoredEntity)
    assert first.origin == Origin(5.0, "client-a")
    assert list(first.observation_origins) == [Origin(5.0, "client-a")] * 2 + [Origin(NOW, "import")] * 2


async def test_an_export_of_a_graph_without_provenance_is_the_official_file_byte_for_byte(store: Store) -> None:
    entities, relations = official_graph(OFFICIAL / "memory.jsonl")
    additions = {"Charles Babbage": ["Proposed the Difference Engine"]}
    await store.create_entities(OWNER, [Entity(name=e["name"], entityType=e["entityType"],
                                               observations=[o for o in e["observations"]
                                                             if o not in additions.get(e["name"], [])])
                                        for e in entities])
    await store.create_relations(OWNER, [Relation.model_validate(r) for r in relations])
    await store.add_observations(OWNER, [ObservationAddition(entityName=n, contents=c) for n, c in additions.items()])
    assert await export_bytes(store) == (OFFICIAL / "memory.jsonl").read_bytes()


async def test_provenance_is_exported_and_kept_by_an_import(backend: Backend, store: Store) -> None:
    made, later = Origin(1_700_000_000.123456, "claude-code"), Origin(1_700_000_100.5, "pat:0123456789abcdef")
    await store.create_entities(OWNER, [ent("A", "t", "a1"), ent("B", "t")], origin=made)
    await store.add_observations(OWNER, [ObservationAddition(entityName="A", contents=["a2", "a3"])], origin=later)
    await store.delete_observations(OWNER, [ObservationDeletion(entityName="A", observations=["a2"])])
    await store.create_relations(OWNER, [rel("A", "B")], origin=later)
    lines = [json.loads(line) for line in (await export_bytes(store)).split(b"\n")]
    assert lines[0] == {"type": "entity", "name": "A", "entityType": "t", "observations": ["a1", "a3"],
                        "createdAt": "2023-11-14T22:13:20.123456Z", "createdBy": "claude-code",
                        "observationsCreated": [{"at": "2023-11-14T22:13:20.123456Z", "by": "claude-code"},
                                                {"at": "2023-11-14T22:15:00.500000Z", "by": "pat:0123456789abcdef"}]}
    assert lines[2] == {"type": "relation", "from": "A", "to": "B", "relationType": "knows",
                        "createdAt": "2023-11-14T22:15:00.500000Z", "createdBy": "pat:0123456789abcdef"}
    # Unknown provenance (data from before it) is left out, not invented.
    await store.create_entities(OWNER, [ent("C", "t", "c1")])
    assert list(json.loads((await export_bytes(store)).split(b"\n")[2])) == [
        "type", "name", "entityType", "observations"]


async def test_a_quota_refuses_an_import_before_it_writes(store: Store) -> None:
    await store.create_entities(OWNER, [ent("kept")])
    with pytest.raises(jsonl.ImportRefused, match=r"over the limit of 3 entities \(memory_max_entities\)"):
        await import_file(store, OFFICIAL / "memory.jsonl", quota=Quota(entities=3))
    assert [e["name"] for e in (await read(store))["entities"]] == ["kept"]
    _, imported = await import_file(store, OFFICIAL / "memory.jsonl", quota=Quota(entities=5))
    assert imported.entities == 4


class _MeanwhileWriter:
    """A store whose second import_graph call first writes an entity itself, as the server may
    while an import runs (the store under it is real; only the timing is arranged)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    async def usage(self, owner: str) -> Any:
        return await self.store.usage(owner)

    async def import_graph(self, owner: str, entities: Any, relations: Any, quota: Quota, ready: Any = None) -> Any:
        self.calls += 1
        if self.calls == 2:
            await self.store.create_entities(owner, [ent("written meanwhile")])
        return await self.store.import_graph(owner, entities, relations, quota, ready=ready)


async def test_an_import_refused_midway_keeps_the_batches_before_and_writes_none_after(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches overlap (the next is prepared while the one before is written), yet one refused
    stops the import: the relations batch already prepared after it writes nothing."""
    monkeypatch.setattr(jsonl, "ENTITY_BATCH", 2)
    monkeypatch.setattr(jsonl, "RELATION_BATCH", 1)
    path = tmp_path / "memory.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [
        *({"type": "entity", "name": f"E{i}", "entityType": "t", "observations": []} for i in range(4)),
        {"type": "relation", "from": "E0", "to": "E1", "relationType": "r"},
        {"type": "relation", "from": "E1", "to": "E2", "relationType": "r"}]))
    writer = _MeanwhileWriter(store)
    with pytest.raises(jsonl.ImportRefused, match=r"grew while importing\. Imported so far: 2 entities, 0 "
                                                   r"observations, 0 relations"):
        await jsonl.import_parsed(writer, OWNER, jsonl.parse_file(path, NOW), Quota(entities=4))  # type: ignore[arg-type]
    graph = await read(store)
    assert sorted(e["name"] for e in graph["entities"]) == ["E0", "E1", "written meanwhile"]
    assert graph["relations"] == [] and writer.calls == 3
    _, imported = await import_file(store, path, quota=Quota(entities=7))  # the rest, once there is room
    assert (imported.entities, imported.relations) == (2, 2)


# --- round trips (hypothesis) --------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=5)
# Known provenance only: what is unknown (data from before it) is recorded as the import's own by
# an import (test_an_import_adds_only_missing_observations_to_existing_entities).
origins = st.builds(Origin, st.integers(0, 4_000_000_000_000_000).map(lambda us: us / 1e6),
                    st.sampled_from(["client-a", "pat:1", "import", "stdio", "😀"]))
steps = st.lists(st.one_of(
    st.tuples(st.just("entities"), st.lists(st.tuples(texts, texts, st.lists(texts, max_size=3)), max_size=4),
              origins),
    st.tuples(st.just("observations"), st.lists(st.tuples(texts, st.lists(texts, max_size=3)), max_size=3), origins),
    st.tuples(st.just("relations"), st.lists(st.tuples(texts, texts, texts), max_size=4), origins),
    st.tuples(st.just("forget"), st.lists(st.tuples(texts, st.lists(texts, max_size=2)), max_size=2), origins),
    st.tuples(st.just("delete"), st.lists(texts, max_size=2), origins),
), max_size=8)


async def build(store: Store, owner: str, ops: Sequence[tuple[str, list[Any], Origin]]) -> None:
    for op, items, origin in ops:
        if op == "entities":
            await store.create_entities(owner, [Entity(name=n, entityType=t, observations=o) for n, t, o in items],
                                        origin=origin)
        elif op == "observations":
            present = {e["name"] for e in (await read(store, owner))["entities"]}
            await store.add_observations(owner, [ObservationAddition(entityName=n, contents=c)
                                                 for n, c in items if n in present], origin=origin)
        elif op == "relations":
            await store.create_relations(owner, [Relation(from_=a, to=b, relationType=r) for a, b, r in items],
                                         origin=origin)
        elif op == "forget":
            await store.delete_observations(owner, [ObservationDeletion(entityName=n, observations=o)
                                                    for n, o in items])
        else:
            await store.delete_entities(owner, items)


def flat(batches: Sequence[ExportBatch]) -> list[StoredEntity | StoredRelation]:
    return [item for batch in batches for item in batch]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=steps, batch=st.integers(1, 4))
async def test_export_import_export_is_identical_on_every_backend_and_across(
        ops: list[tuple[str, list[Any], Origin]], batch: int, tmp_path_factory: pytest.TempPathFactory,
        redis_url: str) -> None:
    sqlite = open_sqlite(tmp_path_factory.mktemp("j") / "m.sqlite3")
    redis_store = RedisStorage(redis_url)
    try:
        for source in (sqlite, redis_store):
            await redis_store.client.flushdb()
            await build(source, "source", ops)
            first = await export_bytes(source, "source", batch)
            directory = tmp_path_factory.mktemp("f")
            (directory / "memory.jsonl").write_bytes(first)
            for target in (sqlite, redis_store):  # the same backend, and the other one
                owner = f"copy-of-{id(source)}-{id(target)}"
                parsed, _ = await import_file(target, directory / "memory.jsonl", owner)
                assert parsed.skipped == [] and parsed.notes == []
                assert await export_bytes(target, owner, 5 - batch) == first
                assert await read(target, owner) == await read(source, "source")
                _, again = await import_file(target, directory / "memory.jsonl", owner)
                assert (again.entities, again.observations, again.relations) == (0, 0, 0)
            await check_store(source)
    finally:
        sqlite.db.close()
        await redis_store.close()


# --- the command line, beside a running server ----------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


async def test_import_and_export_from_the_command_line_while_the_server_runs(server: RunningServer,
                                                                             tmp_path: Path) -> None:
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    async with alice.client() as (client, _):
        structured(await client.call_tool("create_entities", {"entities": [
            {"name": "Ada Lovelace", "entityType": "person", "observations": ["Met Babbage in 1833"]}]}))
        imported = cli("memory", "import", "--user", "alice", str(OFFICIAL / "quirks.jsonl"), *server.store_args())
        assert imported.returncode == 0, imported.stderr
        assert "imported 3 entities, 10 observations, 3 relations" in imported.stdout
        assert "already there (unchanged): 1 entities, 0 observations, 0 relations" in imported.stdout
        graph = structured(await client.call_tool("read_graph", {}))  # the server sees the import at once
        assert [e["name"] for e in graph["entities"]] == ["Ada Lovelace", "Analytical Engine", "Charles Babbage",
                                                          "😀 emoji"]
        assert graph["entities"][0]["observations"][0] == "Met Babbage in 1833"
        assert len(graph["relations"]) == 3
        again = cli("memory", "import", "--user", "alice", str(OFFICIAL / "memory.json"), *server.store_args())
        assert "imported 0 entities, 0 observations, 0 relations" in again.stdout, again.stderr
        structured(await client.call_tool("create_relations", {"relations": [
            {"from": "Ada Lovelace", "to": "Charles Babbage", "relationType": "corresponded with"}]}))
    client_id = alice.storage.client_info.client_id if alice.storage.client_info else None
    exported = cli("memory", "export", "--user", "alice", *server.store_args())
    assert exported.returncode == 0, exported.stderr
    assert "exported alice's default memory to standard output: 4 entities, 11 observations, 4 relations" \
        in exported.stderr
    lines = [json.loads(line) for line in exported.stdout.split("\n")]
    assert lines[0]["createdBy"] == client_id and lines[0]["observationsCreated"][0]["by"] == client_id
    assert lines[1]["createdBy"] == "import" and lines[-1]["createdBy"] == client_id
    assert not exported.stdout.endswith("\n")
    # To a file: written whole, private, replacing what was there; bob's memory is his own.
    target = tmp_path / "out" / "memory.jsonl"
    target.parent.mkdir()
    target.write_text("old")
    assert cli("memory", "export", "--user", "alice", str(target), *server.store_args()).returncode == 0
    assert target.read_text() == exported.stdout and oct(target.stat().st_mode & 0o777) == "0o600"
    assert os.listdir(target.parent) == ["memory.jsonl"]
    bob = cli("memory", "export", "--user", "bob", *server.store_args())
    assert bob.returncode == 0 and bob.stdout == ""


async def test_the_command_line_explains_what_it_refuses(server: RunningServer, tmp_path: Path) -> None:
    bad = tmp_path / "memory.json"
    bad.write_bytes(b"\xff\xfe{\x00")
    refused = cli("memory", "import", "--user", "alice", str(bad), *server.store_args())
    assert refused.returncode == 1 and "is UTF-16 text" in refused.stderr and "Nothing was imported" in refused.stderr
    over = cli("memory", "import", "--user", "alice", str(OFFICIAL / "memory.jsonl"), "--memory-max-entities", "2",
               *server.store_args())
    assert over.returncode == 1 and "memory_max_entities" in over.stderr and "--ignore-quota" in over.stderr
    forced = cli("memory", "import", "--user", "alice", str(OFFICIAL / "memory.jsonl"), "--memory-max-entities", "2",
                 "--ignore-quota", *server.store_args())
    assert forced.returncode == 0 and "imported 4 entities" in forced.stdout, forced.stderr
    nobody = cli("memory", "export", "--user", "carol", *server.store_args())
    assert nobody.returncode == 1 and "no user 'carol'" in nobody.stderr
    other = cli("memory", "export", "--user", "alice", "--memory", "work", *server.store_args())
    assert other.returncode == 1 and "no memory named 'work'" in other.stderr
    same = cli("memory", "export", "--user", "alice", "--memory", "default", str(tmp_path), *server.store_args())
    assert same.returncode == 1 and "is a directory" in same.stderr


# --- SQLite: a database from before provenance -------------------------------------------------------


async def test_sqlite_rows_from_before_provenance_are_unknown(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = open_sqlite(path)
    await store.create_entities(OWNER, [ent("A", "t", "a")], origin=Origin(1.5, "x"))
    await store.create_relations(OWNER, [rel("A", "A")], origin=Origin(1.5, "x"))
    store.db.close()
    conn = sqlite3.connect(path)
    for table in ("memory_entities", "memory_observations", "memory_relations"):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN created_at")
        conn.execute(f"ALTER TABLE {table} DROP COLUMN created_by")
    conn.commit()
    conn.close()
    store = open_sqlite(path)  # migrates: the columns are back, NULL
    try:
        assert await export_bytes(store) == (b'{"type":"entity","name":"A","entityType":"t","observations":["a"]}\n'
                                             b'{"type":"relation","from":"A","to":"A","relationType":"knows"}')
    finally:
        store.db.close()

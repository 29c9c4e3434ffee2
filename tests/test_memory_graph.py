"""The knowledge graph stores against the behaviour of the official server-memory: every test that
is not about one backend's internals runs on SQLite and on Redis (the `store` and `backend`
fixtures), which is what proves they implement one contract."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.memory.graph import (
    AddedObservations,
    Entity,
    EntityNotFoundError,
    GraphClosedError,
    KnowledgeGraph,
    ObservationAddition,
    ObservationDeletion,
    Quota,
    QuotaExceededError,
    Relation,
    Usage,
)
from server.memory.search import Query, reference_key
from server.storage.sqlite.graph import GraphTables
from tests.graph_backends import (
    Backend,
    SQLiteStore,
    Store,
    check_store,
    chunk_count,
    ent,
    graph_from_rows,
    open_sqlite,
    rel,
    rows_of,
)

ALICE = "alice-subject"
BOB = "bob-subject"


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """For the tests of SQLite's own machinery (its FTS indexes, its migrations, its batches)."""
    s = open_sqlite(tmp_path / "m.sqlite3")
    yield s
    s.db.close()


def names(graph: KnowledgeGraph) -> list[str]:
    return [e.name for e in graph.entities]


# --- create_entities ---------------------------------------------------------------------------


async def test_create_entities_returns_only_new_ones(store: Store) -> None:
    first = await store.create_entities(ALICE, [ent("Ada", "person", "likes tea")])
    assert first == [ent("Ada", "person", "likes tea")]

    second = await store.create_entities(ALICE, [ent("Ada", "robot", "other"), ent("Grace", "person")])
    assert second == [ent("Grace", "person")]
    graph = (await store.read_graph(ALICE)).model()
    assert graph.entities == [ent("Ada", "person", "likes tea"), ent("Grace", "person")]


async def test_create_entities_keeps_first_of_duplicates_in_one_call(store: Store) -> None:
    created = await store.create_entities(ALICE, [ent("Ada", "person", "a"), ent("Ada", "cat", "b")])
    assert created == [ent("Ada", "person", "a")]
    assert (await store.read_graph(ALICE)).model().entities == [ent("Ada", "person", "a")]


async def test_create_entities_stores_repeated_observations_once(store: Store) -> None:
    created = await store.create_entities(ALICE, [ent("Ada", "person", "x", "y", "x")])
    assert created == [ent("Ada", "person", "x", "y")]
    assert (await store.read_graph(ALICE)).model().entities[0].observations == ["x", "y"]


async def test_entity_names_are_case_sensitive(store: Store) -> None:
    created = await store.create_entities(ALICE, [ent("ada"), ent("Ada"), ent("ADA")])
    assert names(KnowledgeGraph(entities=created, relations=[])) == ["ada", "Ada", "ADA"]
    assert names((await store.open_nodes(ALICE, ["Ada"])).model()) == ["Ada"]


# --- create_relations --------------------------------------------------------------------------


async def test_create_relations_skips_existing_and_repeated(store: Store) -> None:
    await store.create_entities(ALICE, [ent("A"), ent("B")])
    assert await store.create_relations(ALICE, [rel("A", "B")]) == [rel("A", "B")]
    created = await store.create_relations(ALICE, [rel("A", "B"), rel("A", "B", "likes"), rel("A", "B", "likes")])
    assert created == [rel("A", "B", "likes")]
    assert (await store.read_graph(ALICE)).model().relations == [rel("A", "B"), rel("A", "B", "likes")]


async def test_create_relations_does_not_require_endpoints(store: Store) -> None:
    created = await store.create_relations(ALICE, [rel("Ghost", "Nobody")])
    assert created == [rel("Ghost", "Nobody")]
    graph = (await store.read_graph(ALICE)).model()
    assert graph.entities == []
    assert graph.relations == [rel("Ghost", "Nobody")]


# --- add_observations --------------------------------------------------------------------------


async def test_add_observations_skips_present_ones(store: Store) -> None:
    await store.create_entities(ALICE, [ent("Ada", "person", "old")])
    results = await store.add_observations(
        ALICE,
        [
            ObservationAddition(entityName="Ada", contents=["old", "new", "new"]),
            ObservationAddition(entityName="Ada", contents=["new", "newer"]),
        ],
    )
    assert results == [
        AddedObservations(entityName="Ada", addedObservations=["new"]),
        AddedObservations(entityName="Ada", addedObservations=["newer"]),
    ]
    assert (await store.read_graph(ALICE)).model().entities[0].observations == ["old", "new", "newer"]


async def test_add_observations_is_all_or_nothing(store: Store) -> None:
    await store.create_entities(ALICE, [ent("Ada", "person", "old")])
    with pytest.raises(EntityNotFoundError) as raised:
        await store.add_observations(
            ALICE,
            [
                ObservationAddition(entityName="Ada", contents=["would be new"]),
                ObservationAddition(entityName="Missing", contents=["x"]),
            ],
        )
    assert str(raised.value) == "Entity with name Missing not found"
    assert raised.value.names == ["Missing"]
    assert (await store.read_graph(ALICE)).model().entities == [ent("Ada", "person", "old")]
    assert (await store.search_nodes(ALICE, "would be new")).model().entities == []


async def test_add_observations_names_every_missing_entity(store: Store) -> None:
    with pytest.raises(EntityNotFoundError, match="Entities with names X, Y not found"):
        await store.add_observations(
            ALICE,
            [ObservationAddition(entityName=n, contents=["o"]) for n in ("X", "Y", "X")],
        )


# --- deletes -----------------------------------------------------------------------------------


async def test_delete_entities_removes_their_relations_and_observations(store: Store) -> None:
    await store.create_entities(ALICE, [ent("A", "t", "a1"), ent("B", "t", "b1"), ent("C", "t", "c1")])
    await store.create_relations(ALICE, [rel("A", "B"), rel("B", "C"), rel("C", "A"), rel("C", "C")])
    await store.delete_entities(ALICE, ["A", "Unknown"])
    graph = (await store.read_graph(ALICE)).model()
    assert graph.entities == [ent("B", "t", "b1"), ent("C", "t", "c1")]
    assert graph.relations == [rel("B", "C"), rel("C", "C")]
    assert (await store.search_nodes(ALICE, "a1")).model().entities == []
    if isinstance(store, SQLiteStore):
        assert store.db.conn.execute("SELECT count(*) FROM memory_observations").fetchone()[0] == 2
    await check_store(store)


async def test_delete_entities_clears_relations_to_names_never_created(store: Store) -> None:
    await store.create_relations(ALICE, [rel("Ghost", "X"), rel("Y", "Z")])
    await store.delete_entities(ALICE, ["Ghost"])
    assert (await store.read_graph(ALICE)).model().relations == [rel("Y", "Z")]


async def test_recreated_entity_starts_empty(store: Store) -> None:
    await store.create_entities(ALICE, [ent("A", "t", "old fact")])
    await store.delete_entities(ALICE, ["A"])
    await store.create_entities(ALICE, [ent("A", "u")])
    assert (await store.read_graph(ALICE)).model().entities == [ent("A", "u")]
    assert (await store.search_nodes(ALICE, "old fact")).model().entities == []


async def test_delete_observations_is_exact_and_silent(store: Store) -> None:
    await store.create_entities(ALICE, [ent("A", "t", "one", "two", "three"), ent("B", "t", "one")])
    await store.delete_observations(
        ALICE,
        [
            ObservationDeletion(entityName="A", observations=["one", "TWO", "thre", "absent"]),
            ObservationDeletion(entityName="Nobody", observations=["one"]),
        ],
    )
    graph = (await store.read_graph(ALICE)).model()
    assert graph.entities == [ent("A", "t", "two", "three"), ent("B", "t", "one")]
    assert names((await store.search_nodes(ALICE, "one")).model()) == ["B"]
    await check_store(store)


async def test_delete_relations_matches_the_exact_triple(store: Store) -> None:
    await store.create_relations(ALICE, [rel("A", "B"), rel("A", "B", "likes"), rel("B", "A")])
    await store.delete_relations(ALICE, [rel("A", "B"), rel("A", "b"), rel("X", "Y")])
    assert (await store.read_graph(ALICE)).model().relations == [rel("A", "B", "likes"), rel("B", "A")]


# --- read_graph / order ------------------------------------------------------------------------


async def test_read_graph_keeps_creation_order(store: Store) -> None:
    await store.create_entities(ALICE, [ent("zeta", "t", "z2", "z1"), ent("alpha", "t", "a9")])
    await store.create_relations(ALICE, [rel("zeta", "alpha", "r2"), rel("alpha", "zeta", "r1")])
    await store.create_entities(ALICE, [ent("mid", "t")])
    await store.add_observations(ALICE, [ObservationAddition(entityName="zeta", contents=["z0"])])
    await store.add_observations(ALICE, [ObservationAddition(entityName="alpha", contents=["a1"])])
    await store.create_relations(ALICE, [rel("mid", "zeta", "r0")])

    graph = (await store.read_graph(ALICE)).model()
    assert graph.entities == [ent("zeta", "t", "z2", "z1", "z0"), ent("alpha", "t", "a9", "a1"), ent("mid", "t")]
    assert [r.relationType for r in graph.relations] == ["r2", "r1", "r0"]


async def test_read_graph_of_a_new_owner_is_empty(store: Store) -> None:
    assert (await store.read_graph(ALICE)).model() == KnowledgeGraph(entities=[], relations=[])


# --- search_nodes ------------------------------------------------------------------------------


@pytest.fixture
async def searchable(store: Store) -> Store:
    await store.create_entities(
        ALICE,
        [
            ent("Ada Lovelace", "Mathematician", "Wrote the first program", "Worked with Babbage"),
            ent("Charles Babbage", "inventor", "Designed the Analytical Engine"),
            ent("Zürich", "City", "Lies on the LIMMAT river", 'Says "Grüezi"'),
            ent("Loner", "thing", "nothing in common"),
        ],
    )
    await store.create_relations(
        ALICE,
        [rel("Ada Lovelace", "Charles Babbage", "worked_with"), rel("Loner", "Zürich", "visits"), rel("X", "Y")],
    )
    return store


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ada", ["Ada Lovelace"]),  # name, other case
        ("MATHEMATICIAN", ["Ada Lovelace"]),  # type
        ("analytical engine", ["Charles Babbage"]),  # observation
        ("babbage", ["Charles Babbage", "Ada Lovelace"]),  # the name match before the observation match
        ("ZÜRICH", ["Zürich"]),  # non-ASCII case folding
        ("zurich", ["Zürich"]),  # accents folded away
        ("GRUEZI", ["Zürich"]),
        ("grüezi", ["Zürich"]),
        ('"grü', ["Zürich"]),  # a quote is just a character (the substring floor)
        ("limmat river", ["Zürich"]),
        ("river limmat", ["Zürich"]),  # words in any order
        ("program Worked", ["Ada Lovelace"]),  # words across two observations
        ("Lovelace Mathematician", ["Ada Lovelace"]),  # and across name and type
        ("lov wor", ["Ada Lovelace"]),  # prefixes of words
        ("zz", []),  # short queries take the scan path
        ("ng", ["Loner", "Charles Babbage"]),  # "thiNG" (a type) before "eNGine" (an observation)
        ("in", ["Charles Babbage", "Loner"]),  # "INventor" starts a word of the type, "thINg" does not
        ("ü", ["Zürich"]),
        ("engine lovelace", ["Ada Lovelace", "Charles Babbage"]),  # one word each: the name match first
        ("no such thing", ["Loner"]),  # "NOthing", "THING": any word is enough
        ("xylophone quartz", []),
    ],
)
async def test_search_nodes_finds_substrings_and_word_prefixes_in_rank_order(
    searchable: Store, query: str, expected: list[str]
) -> None:
    assert names((await searchable.search_nodes(ALICE, query)).model()) == expected


async def test_search_nodes_with_empty_query_returns_everything(searchable: Store) -> None:
    result = (await searchable.search_nodes(ALICE, "")).model()
    full = (await searchable.read_graph(ALICE)).model()
    assert result.entities == full.entities
    assert result.relations == [r for r in full.relations if r.from_ != "X"]


async def test_search_nodes_returns_relations_touching_any_match(searchable: Store) -> None:
    result = (await searchable.search_nodes(ALICE, "loner")).model()
    assert names(result) == ["Loner"]
    assert result.entities[0].observations == ["nothing in common"]
    assert result.relations == [rel("Loner", "Zürich", "visits")]

    result = (await searchable.search_nodes(ALICE, "charles")).model()
    assert result.relations == [rel("Ada Lovelace", "Charles Babbage", "worked_with")]


async def test_search_nodes_agrees_with_a_plain_python_search(store: Store) -> None:
    """Random text and queries, both search paths (index and scan), against the reference semantics
    (server.memory.search.reference_key, computed from the texts)."""
    rng = random.Random(7)
    alphabet = "abcAB Çç\"'%_*"
    entities = [
        ent(
            f"{rng.choice(['N', 'n'])}{i}",
            "".join(rng.choices(alphabet, k=4)),
            *("".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(rng.randint(0, 4))),
        )
        for i in range(150)
    ]
    await store.create_entities(ALICE, entities)
    stored = (await store.read_graph(ALICE)).model().entities
    queries = ["".join(rng.choices(alphabet, k=rng.randint(1, 5))) for _ in range(150)]
    for query in queries:
        parsed = Query.parse(query)
        keyed = [(key, e.name) for i, e in enumerate(stored)
                 if (key := reference_key(parsed, e.name, e.entityType, e.observations, i)) is not None]
        expected = [name for _, name in sorted(keyed)]
        found = names((await store.search_nodes(ALICE, query)).model())
        assert found == expected, query
        q = query.lower()
        floor = {e.name for e in stored
                 if q in e.name.lower() or q in e.entityType.lower() or any(q in o.lower() for o in e.observations)}
        assert floor <= set(found), query


# --- open_nodes --------------------------------------------------------------------------------


async def test_open_nodes_fetches_exact_names_with_touching_relations(searchable: Store) -> None:
    asked = ["Zürich", "Charles Babbage", "missing", "ada lovelace", "Zürich"]
    result = (await searchable.open_nodes(ALICE, asked)).model()
    assert names(result) == ["Charles Babbage", "Zürich"]  # creation order, not request order
    assert result.entities[1].observations == ["Lies on the LIMMAT river", 'Says "Grüezi"']
    assert result.relations == [
        rel("Ada Lovelace", "Charles Babbage", "worked_with"),
        rel("Loner", "Zürich", "visits"),
    ]


async def test_open_nodes_of_unknown_names_is_empty(searchable: Store) -> None:
    assert (await searchable.open_nodes(ALICE, ["X", "Y"])).model() == KnowledgeGraph(entities=[], relations=[])
    assert (await searchable.open_nodes(ALICE, [])).model() == KnowledgeGraph(entities=[], relations=[])


# --- owners, persistence, concurrency ----------------------------------------------------------


async def test_owners_are_isolated(store: Store) -> None:
    await store.create_entities(ALICE, [ent("Shared", "alice-type", "alice secret")])
    await store.create_relations(ALICE, [rel("Shared", "Shared", "alice-rel")])
    # The same name is a different entity for Bob: he can create it and nothing of Alice's shows.
    assert await store.create_entities(BOB, [ent("Shared", "bob-type", "bob note")]) == [
        ent("Shared", "bob-type", "bob note")
    ]
    bobs = KnowledgeGraph(entities=[ent("Shared", "bob-type", "bob note")], relations=[])
    assert (await store.read_graph(BOB)).model() == bobs
    assert (await store.search_nodes(BOB, "alice")).model().entities == []
    assert (await store.open_nodes(BOB, ["Shared"])).model().relations == []
    with pytest.raises(EntityNotFoundError):
        await store.add_observations(BOB, [ObservationAddition(entityName="Only Alice", contents=["x"])])

    await store.add_observations(BOB, [ObservationAddition(entityName="Shared", contents=["alice secret"])])
    await store.delete_observations(BOB, [ObservationDeletion(entityName="Shared", observations=["alice secret"])])
    await store.delete_relations(BOB, [rel("Shared", "Shared", "alice-rel")])
    await store.delete_entities(BOB, ["Shared"])

    assert (await store.read_graph(ALICE)).model() == KnowledgeGraph(
        entities=[ent("Shared", "alice-type", "alice secret")], relations=[rel("Shared", "Shared", "alice-rel")]
    )
    assert (await store.read_graph(BOB)).model() == KnowledgeGraph(entities=[], relations=[])
    assert names((await store.search_nodes(ALICE, "secret")).model()) == ["Shared"]
    await check_store(store)


async def test_graph_survives_closing_and_reopening_the_store(backend: Backend) -> None:
    first = await backend.open()
    await first.create_entities(ALICE, [ent("A", "t", "fact one"), ent("B", "t")])
    await first.create_relations(ALICE, [rel("A", "B")])
    await first.add_observations(ALICE, [ObservationAddition(entityName="B", contents=["fact two"])])
    before = (await first.read_graph(ALICE)).model()
    await backend.close_store(first)

    second = await backend.open()  # SQLite: applying the schema again must keep the data
    assert (await second.read_graph(ALICE)).model() == before
    assert names((await second.search_nodes(ALICE, "FACT TWO")).model()) == ["B", "A"]
    assert await second.create_entities(ALICE, [ent("A")]) == []


async def test_concurrent_calls_lose_nothing(store: Store) -> None:
    await store.create_entities(ALICE, [ent("hub")])
    creates = [store.create_entities(ALICE, [ent(f"e{i}", "t", f"first {i}")]) for i in range(50)]
    adds = [
        store.add_observations(ALICE, [ObservationAddition(entityName="hub", contents=[f"fact {i}"])])
        for i in range(50)
    ]
    relations = [store.create_relations(ALICE, [rel("hub", f"e{i}")]) for i in range(50)]
    await asyncio.gather(*creates, *adds, *relations)

    graph = (await store.read_graph(ALICE)).model()
    assert sorted(names(graph)) == sorted(["hub", *(f"e{i}" for i in range(50))])
    assert sorted(graph.entities[0].observations) == sorted(f"fact {i}" for i in range(50))
    assert len(graph.relations) == 50
    assert len(names((await store.search_nodes(ALICE, "first")).model())) == 50


async def test_large_graph(store: Store) -> None:
    """10,000 entities with 50,000 observations for one owner, and a second owner beside them."""
    entities = [
        ent(
            f"Entity {i:05d}",
            ("person", "project")[i % 2],
            *(f"note {j} about item {i} color-{i % 7}" for j in range(5)),
        )
        for i in range(10_000)
    ]
    for start in range(0, len(entities), 1000):
        await store.create_entities(ALICE, entities[start : start + 1000])
    await store.create_entities(BOB, [ent("Entity 00042", "person", "note 1 about item 42 color-0")])
    await store.create_relations(ALICE, [rel(f"Entity {i:05d}", f"Entity {i + 1:05d}") for i in range(0, 9999, 10)])

    # Every entity has the word "item" (and "entity"): all match, the best first.
    first = await store.search_nodes(ALICE, "ITEM 4242 ", limit=1)
    result = first.model()
    assert names(result) == ["Entity 04242"] and first.next_key is not None
    assert len(result.entities[0].observations) == 5
    assert result.relations == []
    assert len((await store.search_nodes(ALICE, "ITEM 4242 ")).model().entities) == 10_000

    result = (await store.search_nodes(ALICE, "entity 0424", limit=10)).model()
    assert names(result) == [f"Entity {i:05d}" for i in range(4240, 4250)]
    assert result.relations == [rel("Entity 04240", "Entity 04241")]

    # "color-3" as typed is in 1,429 entities; "color" and "3" (note 3) are words of every one.
    colored = [f"Entity {i:05d}" for i in range(3, 10_000, 7)]
    page = await store.search_nodes(ALICE, "color-3", limit=len(colored))
    assert names(page.model()) == colored
    assert page.next_key is not None
    rest = await store.search_nodes(ALICE, "color-3", after=page.next_key, limit=10)
    assert not set(names(rest.model())) & set(colored)
    opened = (await store.open_nodes(ALICE, ["Entity 09999", "Entity 00000"])).model()
    assert names(opened) == ["Entity 00000", "Entity 09999"]
    graph = (await store.read_graph(ALICE)).model()
    assert len(graph.entities) == 10_000
    assert sum(len(e.observations) for e in graph.entities) == 50_000
    assert graph.entities[1234] == entities[1234]


async def test_delete_graph_forgets_one_owner_only(store: Store) -> None:
    for owner in ("alice", "bob"):
        await store.create_entities(owner, [Entity(name="a", entityType="t", observations=["one", "two"]),
                                            Entity(name="b", entityType="t", observations=[])])
        await store.create_relations(owner, [Relation.model_validate({"from": "a", "to": "ghost",
                                                                       "relationType": "r"})])
    assert await store.delete_graph("alice") == 2
    assert (await store.read_graph("alice")).model() == KnowledgeGraph(entities=[], relations=[])
    assert (await store.search_nodes("alice", "one")).model().entities == []
    bob = (await store.read_graph("bob")).model()
    assert [e.name for e in bob.entities] == ["a", "b"] and len(bob.relations) == 1
    assert (await store.search_nodes("bob", "two")).model().entities[0].name == "a"


# --- the read_graph view (memory_graph_chunks) -------------------------------------------------


async def test_read_graph_view_follows_every_kind_of_change(backend: Backend) -> None:
    """Random mutations over several chunks and two owners, through two connections to one store
    (as two processes would have them), one of them keeping little of the view in memory; after
    each step, a read through either connection equals the rows."""
    rng = random.Random(3)
    owners = (ALICE, BOB)
    connections = (await backend.open(), await backend.open())
    connections[1]._view.budget = 150_000  # about one owner's graph: the other is evicted or not kept
    await _follow_random_changes(rng, owners, connections)
    await check_store(connections[0])


async def _follow_random_changes(rng: random.Random, owners: tuple[str, ...], connections: tuple[Store, ...]) -> None:
    for step in range(300):
        owner = rng.choice(owners)
        store = rng.choice(connections)
        pool = [f"e{i}" for i in range(700)]  # several chunks of 128
        op = rng.randrange(6)
        if op == 0:
            await store.create_entities(owner, [ent(n, "t", f"o{step}") for n in rng.sample(pool, rng.randint(1, 80))])
        elif op == 1:
            await store.create_relations(owner, [rel(rng.choice(pool), rng.choice(pool)) for _ in range(20)])
        elif op == 2:
            existing = [e.name for e in (await graph_from_rows(store, owner)).entities]
            if existing:
                await store.add_observations(owner, [ObservationAddition(entityName=n, contents=[f"more {step}"])
                                                     for n in rng.sample(existing, min(5, len(existing)))])
        elif op == 3:
            await store.delete_entities(owner, rng.sample(pool, 15))
        elif op == 4:
            await store.delete_observations(owner, [ObservationDeletion(entityName=n, observations=[f"o{s}"])
                                                    for n in rng.sample(pool, 30) for s in range(step - 20, step)])
        else:
            current = (await graph_from_rows(store, owner)).relations
            await store.delete_relations(owner, rng.sample(current, min(4, len(current))))
        if step % 3 == 0 or step > 280:
            for who in owners:
                reader = rng.choice(connections)
                assert (await reader.read_graph(who)).model() == await graph_from_rows(store, who), f"step {step}"
                assert reader._view.held_bytes <= reader._view.budget
    # The test is only as good as its spread: rows in several chunks, and more than fits one copy.
    chunks = await chunk_count(store, ALICE)
    assert len((await graph_from_rows(store, ALICE)).entities) > 128 and chunks >= 4
    assert connections[1]._view.held_owners() != list(owners)


async def test_read_graph_view_sees_another_connections_writes(backend: Backend) -> None:
    """Two connections to one store, as two processes would have: a write through one is in the
    next read through the other, however warm its view was."""
    reader, writer = await backend.open(), await backend.open()
    await writer.create_entities(ALICE, [ent("A", "t", "one")])
    assert names((await reader.read_graph(ALICE)).model()) == ["A"]
    await writer.add_observations(ALICE, [ObservationAddition(entityName="A", contents=["two"])])
    await writer.create_relations(ALICE, [rel("A", "A")])
    assert (await reader.read_graph(ALICE)).model() == KnowledgeGraph(
        entities=[ent("A", "t", "one", "two")], relations=[rel("A", "A")])
    await writer.delete_entities(ALICE, ["A"])
    assert (await reader.read_graph(ALICE)).model() == KnowledgeGraph(entities=[], relations=[])


async def test_read_graph_view_copy_follows_chunks_rebuilt_elsewhere(backend: Backend) -> None:
    """The case the generations exist for: another process writes *and* rebuilds the chunks (by
    reading), so this process finds them fresh but different from its copy; and a chunk deleted
    and created again with other rows is not mistaken for
    the one this process holds (on SQLite the ids of the newest rows are reused)."""
    reader, writer = await backend.open(), await backend.open()
    await writer.create_entities(ALICE, [ent("A", "t", "one"), ent("B", "t", "two")])
    assert names((await reader.read_graph(ALICE)).model()) == ["A", "B"]
    await writer.add_observations(ALICE, [ObservationAddition(entityName="B", contents=["three"])])
    await writer.read_graph(ALICE)
    assert (await reader.read_graph(ALICE)).model().entities[1] == ent("B", "t", "two", "three")
    await writer.delete_entities(ALICE, ["A", "B"])
    await writer.read_graph(ALICE)  # the chunk is now deleted...
    await writer.create_entities(ALICE, [ent("C", "t", "four")])  # ...and created again
    await writer.read_graph(ALICE)
    assert (await reader.read_graph(ALICE)).model() == KnowledgeGraph(entities=[ent("C", "t", "four")],
                                                                   relations=[])


async def test_read_graph_view_copy_keeps_within_its_budget(store: Store) -> None:
    """Least recently read owners are dropped first; a graph larger than the budget is served
    without being kept."""
    for owner in ("o1", "o2", "o3"):
        await store.create_entities(owner, [ent(f"{owner}-{i}", "t", "x" * 100) for i in range(100)])
    store._view.budget = 70_000  # each graph is 32 KB (its JSON and its escaped text): two fit
    for owner in ("o1", "o2", "o1", "o3"):
        assert len((await store.read_graph(owner)).model().entities) == 100
    assert store._view.held_owners() == ["o1", "o3"]
    assert store._view.held_bytes <= store._view.budget
    await store.create_entities("big", [ent(f"big-{i}", "t", "y" * 1000) for i in range(100)])
    assert len((await store.read_graph("big")).model().entities) == 100
    assert store._view.held_owners() == ["o1", "o3"]
    await store.delete_graph("o1")
    assert store._view.held_owners() == ["o3"]


async def test_read_graph_view_of_an_older_layout_is_replaced(tmp_path: Path) -> None:
    """SQLite: the first released layout (WITHOUT ROWID, no generations) is dropped and rebuilt."""
    path = tmp_path / "m.sqlite3"
    store = open_sqlite(path)
    await store.create_entities(ALICE, [ent(f"n{i}", "t", f"fact {i}") for i in range(300)])
    expected = await graph_from_rows(store, ALICE)
    with store.db.transaction() as conn:
        conn.execute("DROP TABLE memory_graph_chunks")
        conn.execute("CREATE TABLE memory_graph_chunks (owner TEXT NOT NULL, kind INTEGER NOT NULL,"
                     " chunk INTEGER NOT NULL, json BLOB, text BLOB, PRIMARY KEY (owner, kind, chunk)) WITHOUT ROWID")
        conn.execute("INSERT INTO memory_graph_chunks VALUES (?, 0, 0, x'00', x'00')", (ALICE,))
    store.db.close()
    reopened = open_sqlite(path)
    GraphTables.migrate(reopened.db)
    try:
        columns = [row[1] for row in reopened.db.conn.execute("PRAGMA table_info(memory_graph_chunks)")]
        assert columns == ["id", "owner", "kind", "chunk", "generation", "json", "text"]
        assert (await reopened.read_graph(ALICE)).model() == expected
    finally:
        reopened.db.close()


async def test_read_graph_view_is_rebuilt_for_a_database_without_it(sqlite_store: SQLiteStore) -> None:
    """SQLite: a file written before the view existed has rows and no chunks: `migrate` indexes them."""
    store = sqlite_store
    await store.create_entities(ALICE, [ent(f"n{i}", "t", f"fact {i}") for i in range(600)])
    await store.create_relations(ALICE, [rel("n1", "n2"), rel("n599", "n0")])
    expected = await graph_from_rows(store, ALICE)
    store.db.conn.execute("DELETE FROM memory_graph_chunks")
    assert (await store.read_graph(ALICE)).model() == KnowledgeGraph(entities=[], relations=[])
    GraphTables.migrate(store.db)
    assert (await store.read_graph(ALICE)).model() == expected
    GraphTables.migrate(store.db)  # again: a no-op on a database that has its chunks
    assert (await store.read_graph(ALICE)).model() == expected


async def test_delete_graph_leaves_no_chunks(store: Store) -> None:
    await store.create_entities(ALICE, [ent("a", "t", "x")])
    await store.create_relations(ALICE, [rel("a", "ghost")])
    await store.read_graph(ALICE)
    await store.delete_graph(ALICE)
    assert await chunk_count(store, ALICE, "e") == await chunk_count(store, ALICE, "r") == 0


# --- exact strings, usage and removal (issue 10, defects 2 and 4; the storage quota) -------------


async def test_delete_graph_deletes_names_with_nul_and_other_odd_characters(store: Store) -> None:
    odd = ["Alice\0zzz", "\0", "a\0b\0", "\ufffd", "x\x01y", "\U0001f600\0"]
    await store.create_entities(ALICE, [ent(name, "t\0", f"fact\0{name}") for name in odd])
    await store.create_relations(ALICE, [rel(odd[0], odd[1], "r\0"), rel("ghost\0", odd[2])])
    await store.create_entities(BOB, [ent("Alice", "t", "kept")])
    assert await store.delete_graph(ALICE) == len(odd)
    left = await rows_of(store, ALICE)
    assert left == dict.fromkeys(left, 0)
    assert (await store.read_graph(BOB)).model().entities == [ent("Alice", "t", "kept")]
    await check_store(store)


async def test_a_write_from_another_connection_after_delete_graph_is_refused(backend: Backend) -> None:
    """The server's connection writes for an owner whose removal another process has run: refused
    in the write's own transaction, so nothing outlives the removal."""
    server, admin = await backend.open(), await backend.open()
    await server.create_entities(ALICE, [ent("a", "t", "x")])
    await server.read_graph(ALICE)  # a warm view must not outlive the removal either
    await admin.delete_graph(ALICE)
    for write in (server.create_entities(ALICE, [ent("late", "t", "y")]),
                  server.create_relations(ALICE, [rel("a", "late")]),
                  server.add_observations(ALICE, [ObservationAddition(entityName="a", contents=["z"])]),
                  server.delete_entities(ALICE, ["a"]),
                  server.delete_observations(ALICE, [ObservationDeletion(entityName="a", observations=["x"])]),
                  server.delete_relations(ALICE, [rel("a", "late")])):
        with pytest.raises(GraphClosedError):
            await write
    left = await rows_of(server, ALICE)
    assert left == dict.fromkeys(left, 0)
    assert (await server.read_graph(ALICE)).model() == KnowledgeGraph(entities=[], relations=[])
    await server.create_entities(BOB, [ent("a", "t", "x")])  # other owners write as before
    await check_store(server)


async def test_delete_graph_resumes_after_an_interruption(sqlite_store: SQLiteStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite deletes in batches of short transactions (on Redis the removal is one script)."""
    from server.storage.sqlite import graph as sqlite_graph

    store = sqlite_store
    monkeypatch.setattr(sqlite_graph, "DELETE_BATCH", 7)
    await store.create_entities(ALICE, [ent(f"e{i}\0", "t", f"o{i}") for i in range(30)])
    await store.create_relations(ALICE, [rel(f"e{i}\0", f"e{i + 1}\0") for i in range(29)])
    calls = 0
    original = store.db.write

    async def interrupted(fn: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:  # closed, one batch deleted: then the process dies
            raise KeyboardInterrupt
        return await original(fn, *args)

    monkeypatch.setattr(store.db, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        await store.delete_graph(ALICE)
    monkeypatch.setattr(store.db, "write", original)
    assert (await rows_of(store, ALICE))["memory_entities"] == 23
    with pytest.raises(GraphClosedError):
        await store.create_entities(ALICE, [ent("late", "t")])
    assert await store.delete_graph(ALICE) == 23
    assert await store.delete_graph(ALICE) == 0  # and again: nothing left, nothing fails
    left = await rows_of(store, ALICE)
    assert left == dict.fromkeys(left, 0)
    await check_store(store)


async def test_usage_follows_every_write(store: Store) -> None:
    await store.create_entities(ALICE, [ent("Zoë", "person", "likes tea", "\0"), ent("b", "t")])
    await store.create_relations(ALICE, [rel("Zoë", "b", "knows")])
    await store.add_observations(ALICE, [ObservationAddition(entityName="b", contents=["x", "y"])])
    assert await store.usage(ALICE) == Usage(entities=2, observations=4, bytes=4 + 6 + 9 + 1 + 1 + 1 + 4 + 1 + 5 + 2)
    await store.delete_observations(ALICE, [ObservationDeletion(entityName="b", observations=["x"])])
    await store.delete_relations(ALICE, [rel("Zoë", "b", "knows")])
    await store.delete_entities(ALICE, ["Zoë"])
    assert await store.usage(ALICE) == Usage(entities=1, observations=1, bytes=1 + 1 + 1)
    assert await store.usage(BOB) == Usage()


async def test_quota_is_checked_against_what_is_really_added(store: Store) -> None:
    quota = Quota(entities=2, observations=2, bytes=0)
    await store.create_entities(ALICE, [ent("a", "t", "1", "1"), ent("a", "t", "2")], quota)  # one entity, one obs
    # Duplicates add nothing, so they fit even at the limit.
    await store.create_entities(ALICE, [ent("a", "t", "9"), ent("b", "t", "2")], quota)
    with pytest.raises(QuotaExceededError) as refused:
        await store.add_observations(ALICE, [ObservationAddition(entityName="a", contents=["1", "3"])], quota)
    assert (refused.value.measure, refused.value.usage, refused.value.after) == ("observations", 2, 3)
    await store.add_observations(ALICE, [ObservationAddition(entityName="a", contents=["1"])], quota)
    assert await store.usage(ALICE) == Usage(entities=2, observations=2, bytes=6)
    # A limit lowered below the usage refuses growth only, never a write that does not grow it.
    lowered = Quota(entities=1, observations=1, bytes=1)
    await store.create_relations(ALICE, [], lowered)
    await store.delete_entities(ALICE, ["b"])
    assert await store.usage(ALICE) == Usage(entities=1, observations=1, bytes=3)


async def test_migrate_folds_nul_and_counts_usage_in_an_older_file(sqlite_store: SQLiteStore) -> None:
    """SQLite: a file from before `memory_owners`: its folds kept NUL, which FTS5 ends the text at."""
    store = sqlite_store
    store.db.conn.execute("DROP TABLE memory_owners")
    conn = store.db.conn
    for entity_id, (name, content) in enumerate([("Box\0lid", "abc\0needle"), ("Cup", "tea")], start=1):
        conn.execute("INSERT INTO memory_entities (id, owner, name, entity_type, name_fold, type_fold)"
                     " VALUES (?, ?, ?, 't', ?, 't')", (entity_id, ALICE, name, name.lower()))
        conn.execute("INSERT INTO memory_entity_search (rowid, name_fold, type_fold) VALUES (?, ?, 't')",
                     (entity_id, name.lower()))
        conn.execute("INSERT INTO memory_observations (id, owner, entity_id, content, content_fold)"
                     " VALUES (?, ?, ?, ?, ?)", (entity_id, ALICE, entity_id, content, content.lower()))
        conn.execute("INSERT INTO memory_observation_search (rowid, content_fold) VALUES (?, ?)",
                     (entity_id, content.lower()))
    conn.execute("INSERT INTO memory_relations (owner, from_name, to_name, relation_type) VALUES (?, 'a', 'b', 'c')",
                 (ALICE,))
    GraphTables.migrate(store.db)
    assert names((await store.search_nodes(ALICE, "needle")).model()) == ["Box\0lid"]
    assert names((await store.search_nodes(ALICE, "lid")).model()) == ["Box\0lid"]
    assert await store.usage(ALICE) == Usage(entities=2, observations=2, bytes=7 + 1 + 10 + 3 + 1 + 3 + 3)
    await check_store(store)

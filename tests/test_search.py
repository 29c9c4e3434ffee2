"""Ranked search (server/memory/search.py) on both stores: the folding and the words, the official
substring semantics as a floor and the reference ranking on random graphs (hypothesis), paging by
rank key (`after`, `limit`) with writes between pages, and the word index built for data from
before it; what an import (`import_graph`) writes is searchable by its words like any other write."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import sqlite3
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.memory import jsonl
from server.memory.graph import Entity, ObservationAddition, ObservationDeletion, Origin, StoredEntity, StoredRelation
from server.memory.search import NAME, NOWHERE, OBSERVATION, TYPE, Query, fold, rank_key, reference_key, words
from server.storage.redis import RedisStorage
from server.storage.redis import graph as redis_graph
from server.storage.redis.folds_copy import Copy, FoldsCopy
from server.storage.redis.graph_view import OwnerKeys
from server.storage.sqlite.graph import GraphTables, _trigram_query, _TrigramCounts
from tests.graph_backends import (
    SQLiteStore,
    Store,
    check_owner,
    check_store,
    ent,
    open_sqlite,
    rel,
)

ALICE = "alice-subject"


def names(graph_json: object) -> list[str]:
    return [e.name for e in graph_json.model().entities]  # type: ignore[attr-defined]


async def expected_ranking(store: Store, owner: str, query: str) -> list[str]:
    """The reference ranking of the owner's graph (ids: creation order, as the stores' ids are)."""
    parsed = Query.parse(query)
    stored = (await store.read_graph(owner)).model().entities
    keyed = [(key, e.name) for i, e in enumerate(stored)
             if (key := reference_key(parsed, e.name, e.entityType, e.observations, i)) is not None]
    return [name for _, name in sorted(keyed)]


# --- the semantics -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Zürich", ["zurich"]),
    ("ZU\u0308RICH", ["zurich"]),  # a combining diaeresis, decomposed already
    ("Straße", ["strasse"]),  # case folding, not lowering
    ("İstanbul", ["istanbul"]),  # İ lowers to i + a combining dot, which is dropped
    ("\u212aelvin", ["kelvin"]),  # the Kelvin sign
    ("ﬁle", ["file"]),  # a compatibility ligature
    ("e-mail, e_mail; E.MAIL", ["e", "mail"]),  # punctuation separates; each word once
    ("Ada\0Lovelace", ["ada", "lovelace"]),  # NUL separates too
    ("naïve café 😀 ok", ["naive", "cafe", "ok"]),
    ("x²", ["x2"]),
    ("", []),
])
def test_words_are_folded_alphanumeric_runs(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_fold_drops_marks_and_case() -> None:
    assert fold("Ångström") == fold("ANGSTROM") == "angstrom"


def _words_by_characters(text: str) -> list[str]:
    """`words` spelled out character by character (what it was before the regular expression):
    the definition the fast one is checked against."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    found: dict[str, None] = {}
    current: list[str] = []
    for c in decomposed:
        if unicodedata.combining(c):
            continue
        if c.isalnum():
            current.append(c)
        elif current:
            found.setdefault("".join(current))
            current = []
    if current:
        found.setdefault("".join(current))
    return list(found)


def test_the_word_pattern_is_isalnum_for_every_code_point() -> None:
    pattern = re.compile(r"[^\W_]")
    assert [c for c in map(chr, range(sys.maxunicode + 1)) if bool(pattern.fullmatch(c)) != c.isalnum()] == []


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.text() | st.text(alphabet="aB9 _-.,É\u0301ßİ\u212a²"))
def test_words_match_the_character_by_character_definition(text: str) -> None:
    assert words(text) == _words_by_characters(text)


def test_rank_key_orders_by_words_then_fields_then_phrase_then_creation() -> None:
    query = Query.parse("ada love")
    assert query == Query(phrase="ada love", words=("ada", "love"))
    both_in_name = rank_key(query, NOWHERE, [NAME, NAME], 9)
    phrase_in_name = rank_key(query, NAME, [NAME, NAME], 10)
    name_and_type = rank_key(query, NOWHERE, [NAME, TYPE], 1)
    one_word = rank_key(query, NOWHERE, [NAME, NOWHERE], 0)
    in_observation = rank_key(query, OBSERVATION, [NOWHERE, NOWHERE], 0)
    assert one_word and name_and_type and both_in_name and phrase_in_name and in_observation
    assert sorted([one_word, name_and_type, both_in_name, phrase_in_name, in_observation]) == [
        phrase_in_name, both_in_name, name_and_type, in_observation, one_word]
    assert in_observation == (-2, 10, OBSERVATION, 0)  # the phrase holds both words, at tier 5 each
    assert rank_key(query, NOWHERE, [NOWHERE, NOWHERE], 3) is None
    assert rank_key(Query.parse("!?"), TYPE, [], 3) == (0, 0, TYPE, 3)  # a query without words


# --- the floor and the reference ranking on random graphs, on both stores ---------------------

PARTS = ["a", "b", "c", "A", "é", "E\u0301", "ß", "ss", "İ", "i", " ", " ", "-", "\0", "1", "Σ", "ς", "😀", '"',
         "\ufffd"]
"""Pieces of text: letters whose folding is not one character to one (ß, İ, a decomposed É), word
separators (space, hyphen, NUL, an emoji), digits, and what FTS5 or Lua could take specially."""
texts = st.lists(st.sampled_from(PARTS), max_size=5).map("".join)
graphs = st.lists(st.builds(lambda n, t, o: Entity(name=n, entityType=t, observations=o), texts, texts,
                            st.lists(texts, max_size=3)), max_size=8)
edits = st.lists(st.tuples(st.integers(0, 7), texts, st.booleans()), max_size=4)


@pytest.mark.parametrize("kind", ["sqlite", "redis", "redis-scan"])
def test_search_keeps_the_substring_floor_and_the_reference_ranking(kind: str, tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    """Random graphs, then random observation additions and deletions (the index follows every
    write), then random queries: every entity containing the query (lowered) is found, and the
    result is exactly the reference ranking. On Redis both ways of finding the floor: in this
    process's copy of the folds, and (a copy with no room) the search script's own scan."""
    runner = asyncio.Runner()
    store: Store = (open_sqlite(tmp_path / "p.sqlite3") if kind == "sqlite"
                    else RedisStorage(request.getfixturevalue("redis_url")))
    if kind == "redis-scan" and isinstance(store, RedisStorage):
        store._folds = FoldsCopy(store, budget=0)
    examples = itertools.count()

    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(graph=graphs, changes=edits, queries=st.lists(texts, min_size=1, max_size=5))
    def check(graph: list[Entity], changes: list[tuple[int, str, bool]], queries: list[str]) -> None:
        owner = f"p-{next(examples)}"

        async def run() -> None:
            created = await store.create_entities(owner, graph)
            for index, text, add in changes:
                if not created:
                    break
                name = created[index % len(created)].name
                if add:
                    await store.add_observations(owner, [ObservationAddition(entityName=name, contents=[text])])
                else:
                    await store.delete_observations(owner, [ObservationDeletion(entityName=name, observations=[text])])
            stored = (await store.read_graph(owner)).model().entities
            for query in [*queries, *(e.name for e in stored[:2])]:
                found = names(await store.search_nodes(owner, query))
                q = query.lower()
                floor = {e.name for e in stored if q in e.name.lower() or q in e.entityType.lower()
                         or any(q in o.lower() for o in e.observations)}
                assert floor <= set(found), (query, floor, found)
                assert found == await expected_ranking(store, owner, query), query
            if isinstance(store, RedisStorage):
                await check_owner(store, owner)

        runner.run(run())

    try:
        check()
        if isinstance(store, SQLiteStore):
            runner.run(check_store(store))
    finally:
        if isinstance(store, RedisStorage):
            runner.run(store.close())
        else:
            store.db.close()
        runner.close()


# --- paging -------------------------------------------------------------------------------------


async def pages(store: Store, query: str, size: int) -> list[list[str]]:
    found, after = [], None
    while True:
        result = await store.search_nodes(ALICE, query, after=after, limit=size)
        found.append(names(result))
        if result.next_key is None:
            return found
        after = result.next_key


async def test_pages_join_into_the_whole_ranking(store: Store) -> None:
    await store.create_entities(ALICE, [ent(f"item {i}", "thing" if i % 3 else "item kind",
                                            *(["an item"] if i % 2 else [])) for i in range(23)])
    whole = names(await store.search_nodes(ALICE, "item"))
    assert whole == await expected_ranking(store, ALICE, "item") and len(whole) == 23
    for size in (1, 4, 22, 23, 50):
        split = await pages(store, "item", size)
        assert [name for page in split for name in page] == whole
        assert all(len(page) == size for page in split[:-1]) and 0 < len(split[-1]) <= size
    last = await store.search_nodes(ALICE, "item", limit=23)
    assert last.next_key is None  # nothing remains: no key
    nothing = await store.search_nodes(ALICE, "item", after=(0, 0, 0, 0), limit=5)
    assert names(nothing) == [] and nothing.next_key is None


async def test_a_relation_comes_on_the_page_of_its_later_endpoint(store: Store) -> None:
    """server/memory/paging.py's rule, with rank order: a relation between two hits comes once, on
    the page of the one ranked later; one to an entity the search does not find, with its hit."""
    await store.create_entities(ALICE, [ent("alpha one"), ent("alpha two"), ent("alpha three")])
    await store.create_relations(ALICE, [rel("alpha one", "alpha two"), rel("alpha three", "ghost")])
    first = await store.search_nodes(ALICE, "alpha", limit=1)
    assert names(first) == ["alpha one"] and first.model().relations == []
    second = await store.search_nodes(ALICE, "alpha", after=first.next_key, limit=1)
    assert names(second) == ["alpha two"] and second.model().relations == [rel("alpha one", "alpha two")]
    third = await store.search_nodes(ALICE, "alpha", after=second.next_key, limit=1)
    assert third.model().relations == [rel("alpha three", "ghost")] and third.next_key is None


async def test_paging_neither_repeats_nor_skips_when_entities_come_and_go(store: Store) -> None:
    """Writes between pages: every entity that existed throughout, unchanged, is on exactly one
    page; the rank key of an entity depends on nothing else."""
    await store.create_entities(ALICE, [ent(f"river {i}", "place" if i % 2 else "river", f"a note {i}")
                                        for i in range(30)])
    seen: list[str] = []
    after = None
    for turn in itertools.count():
        result = await store.search_nodes(ALICE, "river", after=after, limit=4)
        seen += names(result)
        # Between pages: better-ranked and worse-ranked newcomers, and a deletion of one not seen.
        await store.create_entities(ALICE, [ent(f"river new {turn}", "river"), ent(f"other {turn}", "t", "river")])
        if turn == 1:
            await store.delete_entities(ALICE, ["river 29"])
        if result.next_key is None:
            break
        after = result.next_key
    original = [f"river {i}" for i in range(29)]
    assert len(seen) == len(set(seen))
    assert set(original) <= set(seen)


# --- imported data ----------------------------------------------------------------------------

OFFICIAL = Path(__file__).parent / "data" / "official"


async def test_imported_data_is_found_by_ranked_words(store: Store) -> None:
    """import_graph, into an empty owner and into one with entities, keeps the word index like
    every other write: a multi-word query ranks imported entities and observations by their words."""
    made = Origin(1_700_000_000.5, "import")
    await store.import_graph(ALICE, [
        StoredEntity("Charles Babbage", "person", ["Proposed the Difference Engine", "Built models"], made,
                     [made, None]),
        StoredEntity("Analytical Engine", "machine", ["Designed by Babbage"]),
        StoredEntity("Ada Lovelace", "countess", ["Wrote notes on the engine"]),
        StoredEntity("Ada Lovelace", "countess", ["Née Byron"]),  # a name twice: merged
    ], [StoredRelation("Ada Lovelace", "Analytical Engine", "described", made)])
    await check_store(store)
    if isinstance(store, RedisStorage):  # an owner whose first write is an import has a complete index
        assert await store.client.hget(OwnerKeys.of(store, ALICE).owner, "indexed") is not None
    for query in ("engine babb", "babbage engine", "nee byr", "ada notes engine"):
        found = names(await store.search_nodes(ALICE, query))
        assert found == await expected_ranking(store, ALICE, query) and found, query
    assert names(await store.search_nodes(ALICE, "engine babb"))[:2] == ["Charles Babbage", "Analytical Engine"]
    assert names(await store.search_nodes(ALICE, "nee byr")) == ["Ada Lovelace"]
    # Into an owner with entities: new observations of an existing entity, a new entity.
    await store.create_entities(ALICE, [ent("Jacquard", "loom", "punched cards")])
    await store.import_graph(ALICE, [StoredEntity("Jacquard", "loom", ["inspired the engine cards"]),
                                     StoredEntity("Difference Engine", "machine", ["never finished"])], [])
    await check_store(store)
    assert names(await store.search_nodes(ALICE, "inspired card")) == ["Jacquard"]
    assert names(await store.search_nodes(ALICE, "never fin")) == ["Difference Engine"]
    assert (names(await store.search_nodes(ALICE, "engine difference"))
            == await expected_ranking(store, ALICE, "engine difference"))
    # What an import wrote is unindexed by the deletions like the rest.
    await store.delete_observations(ALICE, [ObservationDeletion(entityName="Jacquard",
                                                                observations=["inspired the engine cards"])])
    await store.delete_entities(ALICE, ["Difference Engine"])
    assert names(await store.search_nodes(ALICE, "inspired")) == []
    assert names(await store.search_nodes(ALICE, "never fin")) == []
    await check_store(store)


async def test_an_official_file_imported_is_found_by_its_words(store: Store) -> None:
    parsed = jsonl.parse_file(OFFICIAL / "memory.jsonl", 1_780_000_000.0)
    await jsonl.import_parsed(store, ALICE, parsed, None)
    # "Née Byron": folded words; "poetical science" is an Ada observation, "Difference Engine" Babbage's.
    assert names(await store.search_nodes(ALICE, "nee byron")) == ["Ada Lovelace"]
    found = names(await store.search_nodes(ALICE, "engine babbage"))
    assert found == await expected_ranking(store, ALICE, "engine babbage")
    assert found[:2] == ["Analytical Engine", "Charles Babbage"]  # a word in the name each: the file's order
    assert names(await store.search_nodes(ALICE, "poetic sci")) == ["Ada Lovelace"]
    await check_store(store)


async def test_redis_import_into_an_older_graph_leaves_its_words_to_the_build(redis_url: str) -> None:
    """An owner from before the word index: the import words the entities it creates, leaves an
    older entity to the build (as add_observations does), and the first search finds everything."""
    store = RedisStorage(redis_url)
    try:
        await store.create_entities(ALICE, [ent("Old Entity", "thing", "from before")])
        keys = OwnerKeys.of(store, ALICE)
        await store.client.hdel(keys.owner, "indexed")
        await store.client.unlink(keys.words, keys.index)
        await store.import_graph(ALICE, [StoredEntity("Old Entity", "thing", ["imported later"]),
                                         StoredEntity("New Entity", "thing", ["imported fresh"])], [])
        await check_owner(store, ALICE)
        assert await store.client.hget(keys.owner, "indexed") is None
        found = names(await store.search_nodes(ALICE, "imported entity"))
        assert found == ["Old Entity", "New Entity"] == await expected_ranking(store, ALICE, "imported entity")
        assert await store.client.hget(keys.owner, "indexed") is not None
        await check_owner(store, ALICE)
    finally:
        await store.close()


# --- data from before the word index -----------------------------------------------------------


async def test_sqlite_builds_the_word_index_of_an_older_file(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "old.sqlite3")
    await store.create_entities(ALICE, [ent("Zürich", "City", "Grüezi mitenand"), ent("Bern", "city", "Zurich is far")])
    conn = store.db.conn
    conn.execute("DROP TABLE memory_entity_words")
    conn.execute("DROP TABLE memory_observation_words")
    store.db.close()
    reopened = open_sqlite(tmp_path / "old.sqlite3")  # the schema, then the migration
    try:
        assert names(await reopened.search_nodes(ALICE, "zurich gruezi")) == ["Zürich", "Bern"]
        await check_store(reopened)
        # A second start finds the index there and leaves it alone.
        GraphTables.migrate(reopened.db)
        await check_store(reopened)
    finally:
        reopened.db.close()


async def test_sqlite_trigram_indexes_merge_sixteen_segments_also_in_an_older_file(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "old.sqlite3")
    await store.create_entities(ALICE, [ent("Zürich", "City", "Grüezi mitenand")])
    configs = ("memory_entity_search_config", "memory_observation_search_config")

    def automerge(conn: sqlite3.Connection) -> list[object]:
        rows = [conn.execute(f"SELECT v FROM {c} WHERE k = 'automerge'").fetchone() for c in configs]  # noqa: S608
        return [None if row is None else row[0] for row in rows]

    conn = store.db.conn
    assert automerge(conn) == [16, 16]
    for config in configs:  # as a file from before: FTS5's default (4), no row
        conn.execute(f"DELETE FROM {config} WHERE k = 'automerge'")  # noqa: S608
    conn.commit()
    assert automerge(conn) == [None, None]
    store.db.close()
    reopened = open_sqlite(tmp_path / "old.sqlite3")
    try:
        assert automerge(reopened.db.conn) == [16, 16]
        await reopened.add_observations(ALICE, [ObservationAddition(entityName="Zürich", contents=["am See"])])
        assert names(await reopened.search_nodes(ALICE, "am se")) == ["Zürich"]
        await check_store(reopened)
    finally:
        reopened.db.close()


def test_sqlite_asks_the_trigram_index_for_the_two_rarest_trigrams_of_the_longest_run() -> None:
    counts = {"kib": 40, "ibu": 2, "bum": 9, "ume": 300, "mel": 1, "ele": 80}
    assert _trigram_query("jo kibumele!", counts) == '"ibu" AND "mel"'  # in the run's order
    assert _trigram_query("jo kibumele!", {}) == '"kib" AND "ele"'  # nothing known: first and last
    assert _trigram_query("x kib", counts) == '"kib"'
    assert _trigram_query("kibu", {}) == '"kib" AND "ibu"'
    assert _trigram_query("a-b \"c", {}) == '"a-b ""c"'  # no run of three: the whole query, quoted


@pytest.mark.parametrize("resample", [False, True])
async def test_sqlite_rows_with_the_asked_trigrams_but_not_the_query_are_no_hits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resample: bool) -> None:
    """The index is asked for two trigrams of the query only (`_trigram_query`); the rows having
    both are checked for the whole query. The rarity sample is either the one taken on the empty
    graph (stale: the first and last trigram are asked) or taken again by every search."""
    if resample:
        monkeypatch.setattr(_TrigramCounts, "SAMPLE_SECONDS", -1.0)
    store = open_sqlite(tmp_path / "t.sqlite3")
    try:
        assert names(await store.search_nodes(ALICE, "lovelace")) == []  # takes the sample
        await store.create_entities(ALICE, [
            ent("Grace", "person", "love and grace, lovely space"),  # every trigram, never the query
            ent("Inside", "note", "adalovelacey wrote it"),  # the query inside a word: the floor
            ent("Lovelace", "person"),
            ent("Ace", "lovelace fan"),
            ent("Elsewhere", "place", "nothing here"),
        ])
        for query in ("lovelace", "ovelac", "LOVELACE!", "love", "ace", "a lovelace"):
            assert names(await store.search_nodes(ALICE, query)) == await expected_ranking(store, ALICE, query), query
        assert names(await store.search_nodes(ALICE, "lovelace")) == ["Lovelace", "Ace", "Inside"]
    finally:
        store.db.close()


async def test_redis_builds_the_word_index_of_an_older_graph(redis_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_graph, "_INDEX_BATCH", 2)  # several batches
    store = RedisStorage(redis_url)
    try:
        await store.create_entities(ALICE, [ent("Zürich", "City", "Grüezi mitenand"),
                                            ent("Bern", "city", "Zurich is far"),
                                            *(ent(f"filler {i}", "thing", "nothing here") for i in range(5))])
        keys = OwnerKeys.of(store, ALICE)
        await store.client.hdel(keys.owner, "indexed")
        await store.client.unlink(keys.words, keys.index)
        # An older graph's writes keep going: a new entity is indexed, an older one is not yet.
        await store.add_observations(ALICE, [ObservationAddition(entityName="Bern", contents=["capital"])])
        await store.create_entities(ALICE, [ent("Basel", "city", "on the Rhine")])
        assert names(await store.search_nodes(ALICE, "zurich gruezi")) == ["Zürich", "Bern"]
        assert names(await store.search_nodes(ALICE, "capit")) == ["Bern"]
        assert await store.client.hget(keys.owner, "indexed") is not None
        assert len(names(await store.search_nodes(ALICE, "fill"))) == 5
        await check_owner(store, ALICE)
    finally:
        await store.close()


async def test_delete_graph_takes_the_word_index_along(store: Store) -> None:
    await store.create_entities(ALICE, [ent("word one", "kind", "more words")])
    await store.delete_graph(ALICE)
    assert names(await store.search_nodes(ALICE, "word")) == []
    if isinstance(store, RedisStorage):
        keys = OwnerKeys.of(store, ALICE)
        assert await store.client.exists(keys.words, keys.index) == 0
    else:
        assert store.db.conn.execute("SELECT count(*) FROM memory_entity_words").fetchone()[0] == 0
        assert store.db.conn.execute("SELECT count(*) FROM memory_observation_words").fetchone()[0] == 0


# --- Redis: the floor found in this process's copy of the folds (server/storage/redis/folds_copy.py)


def _chosen(store: RedisStorage, owner: str, piece: str, *, prefix: bool) -> list[int]:
    """The blocks (16 entity ids) of the copy a search reads for a piece of a word (or a word's start)."""
    copy = store._folds.held(owner)
    assert copy is not None
    bits = copy.vocabulary.holding(piece.encode(), prefix=prefix)
    return [n for n in range(bits.bit_length()) if bits >> n & 1]


async def test_redis_copy_filters_chunks_and_misses_no_hit(redis_url: str) -> None:
    """Entities over five chunks, written every way a write can: every entity is found by a piece
    from inside one of its words, ASCII or not, and the search reads its chunk and no other."""
    store = RedisStorage(redis_url)
    try:
        def entity(i: int) -> Entity:
            return ent(f"Entity {i}", "kind", f"marker{i:04d}x and common words", f"Zürichsee{i:04d}")

        await store.create_entities(ALICE, [entity(0)])
        await store.create_entities(ALICE, [entity(i) for i in range(1, 150)])
        await store.import_graph(ALICE, [StoredEntity(f"Entity {i}", "kind", [*entity(i).observations])
                                         for i in range(150, 400)], [])
        await store.create_entities(ALICE, [entity(i) for i in range(400, 520)])
        for i in (3, 140, 260, 515):
            await store.add_observations(ALICE, [ObservationAddition(entityName=f"Entity {i}",
                                                                     contents=[f"later addition qwerty{i}"])])
        for i in (0, 1, 127, 128, 149, 150, 255, 256, 399, 400, 519):
            for piece in (f"arker{i:04d}", f"ÜRICHSEE{i:04d}", f"richsee{i:04d}"):
                assert names(await store.search_nodes(ALICE, piece)) == [f"Entity {i}"], piece
            assert _chosen(store, ALICE, f"arker{i:04d}", prefix=False) == [(i + 1) // 16]  # ids from 1
            assert _chosen(store, ALICE, f"zurichsee{i:04d}", prefix=True) == [(i + 1) // 16]
        for i in (3, 140, 260, 515):
            assert names(await store.search_nodes(ALICE, f"rty{i}")) == [f"Entity {i}"]
        # A query without words reads every chunk.
        assert len(names(await store.search_nodes(ALICE, " "))) == 520
        assert _chosen(store, ALICE, "and", prefix=True) == list(range(33))  # ids 1 to 520
        await check_owner(store, ALICE)
    finally:
        await store.close()


async def test_redis_copy_follows_writes_of_other_processes(redis_url: str) -> None:
    """Two stores stand for two processes on one Redis: each search answers the graph as it is,
    whoever wrote last; a copy fetches again only the chunks a write touched."""
    searcher, writer = RedisStorage(redis_url), RedisStorage(redis_url)
    try:
        await writer.create_entities(ALICE, [ent(f"Old {i}", "thing", f"sentence number{i} of the past")
                                             for i in range(600)])
        keys = OwnerKeys.of(writer, ALICE)
        await writer.client.hdel(keys.owner, "version")  # as a graph written before the version existed
        assert names(await searcher.search_nodes(ALICE, "umber77")) == ["Old 77"]
        before = searcher._folds.held(ALICE)
        assert before is not None and before.version == b"" and len(before.chunks) == 5
        await writer.add_observations(ALICE, [ObservationAddition(entityName="Old 598", contents=["brand new"])])
        assert names(await searcher.search_nodes(ALICE, "rand")) == ["Old 598"]
        after = searcher._folds.held(ALICE)
        assert after is not None and after.version != b""
        changed = [chunk for chunk in after.chunks if after.chunks[chunk] is not before.chunks[chunk]]
        assert changed == [b"e4"]  # Old 598 is id 599
        assert _chosen(searcher, ALICE, "brand", prefix=True) == [599 // 16]
        await writer.delete_entities(ALICE, ["Old 77"])
        assert names(await searcher.search_nodes(ALICE, "umber77")) == []
        await writer.delete_graph(ALICE)
        assert names(await searcher.search_nodes(ALICE, "sentence")) == []
    finally:
        await searcher.close()
        await writer.close()


async def test_redis_scans_in_redis_when_the_copy_does_not_fit(redis_url: str) -> None:
    store = RedisStorage(redis_url)
    try:
        store._folds = FoldsCopy(store, budget=1000)
        await store.create_entities(ALICE, [ent(f"Entity {i}", "kind", f"marker{i:04d}x") for i in range(40)])
        assert names(await store.search_nodes(ALICE, "ker0007")) == ["Entity 7"]
        assert store._folds.held(ALICE) is None and store._folds.oversized(ALICE)
        assert names(await store.search_nodes(ALICE, "ker0031")) == ["Entity 31"]
    finally:
        await store.close()


async def test_redis_scans_when_the_copy_keeps_falling_behind(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that changes between every sync and search (simulated: each sync brings a copy
    of a version that is already gone) is searched by the script's own scan after three tries."""
    store = RedisStorage(redis_url)
    try:
        await store.create_entities(ALICE, [ent("Zürich", "City", "Grüezi mitenand"), ent("Bern", "city", "Zurich")])
        syncs = 0
        real_sync = FoldsCopy.sync

        async def behind(self: FoldsCopy, owner: str, keys: Sequence[str]) -> Copy | None:
            nonlocal syncs
            syncs += 1
            copy = await real_sync(self, owner, keys)
            return None if copy is None else dataclasses.replace(copy, version=b"gone")

        monkeypatch.setattr(FoldsCopy, "sync", behind)
        assert names(await store.search_nodes(ALICE, "zurich gruezi")) == ["Zürich", "Bern"]
        assert syncs == 3
    finally:
        await store.close()


async def test_redis_drops_the_word_index_of_the_version_before(redis_url: str) -> None:
    store = RedisStorage(redis_url)
    try:
        await store.create_entities(ALICE, [ent("Ada", "person", "counts")])
        keys = OwnerKeys.of(store, ALICE)
        await store.client.zadd(keys.index, {b"ada\xff1\xff0": 0})  # as the version before left it
        assert names(await store.search_nodes(ALICE, "ada")) == ["Ada"]  # not read
        await store.add_observations(ALICE, [ObservationAddition(entityName="Ada", contents=["and writes"])])
        assert await store.client.exists(keys.index) == 0
        await check_owner(store, ALICE)
    finally:
        await store.close()


async def test_redis_copy_held_while_the_words_are_built_is_brought_up_to_date(redis_url: str) -> None:
    """A copy read while an older graph had no word records: the build marks what it words as
    changed, so the copy fetches it again and the words are found."""
    searcher, writer = RedisStorage(redis_url), RedisStorage(redis_url)
    try:
        await writer.create_entities(ALICE, [ent(f"Old {i}", "thing", f"stone{i} age") for i in range(200)])
        keys = OwnerKeys.of(writer, ALICE)
        await writer.client.hdel(keys.owner, "indexed")
        await writer.client.unlink(keys.words)
        await searcher._folds.sync(ALICE, (keys.owner, keys.chunks, keys.folds, keys.words))
        held = searcher._folds.held(ALICE)
        assert held is not None and all(not chunk.words for _, chunk in held.chunks.values())
        assert names(await searcher.search_nodes(ALICE, "stone150")) == ["Old 150"]
        held = searcher._folds.held(ALICE)
        assert held is not None and all(chunk.words for _, chunk in held.chunks.values())
        assert names(await searcher.search_nodes(ALICE, "ston")) == [f"Old {i}" for i in range(200)]
    finally:
        await searcher.close()
        await writer.close()


async def test_redis_copy_of_a_graph_without_version_sees_it_deleted(redis_url: str) -> None:
    """A graph written before versions existed, never written since, copied by one process and
    deleted by another: the deletion gives it a version, so the copy is not taken for it."""
    searcher, writer = RedisStorage(redis_url), RedisStorage(redis_url)
    try:
        await writer.create_entities(ALICE, [ent("Ada", "person", "counts")])
        keys = OwnerKeys.of(writer, ALICE)
        await writer.client.hdel(keys.owner, "version")
        assert names(await searcher.search_nodes(ALICE, "ada")) == ["Ada"]
        await writer.delete_graph(ALICE)
        assert names(await searcher.search_nodes(ALICE, "ada")) == []
    finally:
        await searcher.close()
        await writer.close()

"""The knowledge graph (`server.memory.graph.GraphStore`) on SQLite.

Schema
------

    memory_entities      (id INTEGER PRIMARY KEY, owner, name, entity_type, name_fold, type_fold,
                          created_at, created_by)
        UNIQUE INDEX memory_entities_name  (owner, name)
        UNIQUE INDEX memory_entities_order (owner, id)
    memory_observations  (id INTEGER PRIMARY KEY, owner, entity_id, content, content_fold,
                          created_at, created_by,
                          FOREIGN KEY (owner, entity_id) REFERENCES memory_entities (owner, id)
                          ON DELETE CASCADE)
        INDEX memory_observations_entity (owner, entity_id)
    memory_relations     (id INTEGER PRIMARY KEY, owner, from_name, to_name, relation_type,
                          created_at, created_by)
        UNIQUE INDEX memory_relations_identity (owner, from_name, to_name, relation_type)
        INDEX memory_relations_to (owner, to_name)
    memory_entity_search       FTS5 (name_fold, type_fold), trigram, external content memory_entities
    memory_observation_search  FTS5 (content_fold), trigram, external content memory_observations
    memory_entity_words        FTS5 (name_words, type_words), ascii tokenizer, prefix 2 3, rowid = entity id
    memory_observation_words   FTS5 (words), ascii tokenizer, prefix 2 3, rowid = observation id
    memory_graph_chunks, memory_graph_generation   the read_graph view: server/storage/sqlite/graph_view.py
    memory_owners        (owner PRIMARY KEY, state, entities, observations, bytes, changes) WITHOUT ROWID
                         created by `migrate`, which also fills it for a database from before it
                         (and adds `changes` to one from before the change feed)

Why it looks like this
----------------------

* Owner on every row, first in every key. Every statement filters on `owner = ?`, so a user can
  only ever reach their own rows, and every index is a per-owner range. Observations refer to
  their entity through the composite key (owner, entity_id), so the database itself refuses an
  observation whose owner differs from its entity's.
* Creation order is the `id` (rowid alias). SQLite assigns max(rowid)+1, so ids grow with
  insertion; an id freed by deleting the newest row may be reused, but it still sorts after every
  row that exists, which is all "creation order" needs. No AUTOINCREMENT: its bookkeeping table
  buys nothing here.
* `memory_entities_name` makes the entity name a per-owner primary key (case-sensitive: BINARY
  collation): it implements create's "skip existing names" (`ON CONFLICT DO NOTHING`) and every
  lookup by name (open_nodes, add_observations, deletes). `memory_entities_order` is the parent
  key of the observations' foreign key and lists an owner's entities in creation order without a
  sort (read_graph).
* `memory_observations_entity (owner, entity_id)`, with the implicit trailing rowid, returns an
  entity's observations in insertion order and backs the foreign key (no table scan per deleted
  entity). Observations are unique per entity by construction, checked in the same transaction;
  there is no unique index because it would store every observation (up to 16 KiB) once more.
* Relations reference entities by name, not id, exactly like the official server: they may name
  entities that do not exist, and deleting an entity deletes every relation naming it.
  `memory_relations_identity` is the identity of a relation (duplicates skipped) and, through its
  (owner, from_name) prefix, finds relations by source; `memory_relations_to` finds them by
  target, so "relations touching these entities" is two index seeks per entity.
* Search is a case-insensitive substring match. `*_fold` columns hold Python's `str.lower()` of
  the text, folded once on write: SQLite's `lower()` folds ASCII only, and the official server
  folds all of Unicode (JavaScript `toLowerCase`). A substring match is a full scan for a B-tree
  (about 20-50 ms over 50,000 observations), so the folded text is also indexed by FTS5 with the
  trigram tokenizer (`case_sensitive 1`, as the text is already folded). The index is asked for
  two trigrams of the query (`_trigram_query`: of its longest alphanumeric run, the two rarest by
  a small random sample of the texts, `_TrigramCounts`), and each row it returns is checked for the
  whole query with `instr`: exact whatever trigrams are asked (a text containing the query
  contains each of them), and FTS5 reads two trigram lists instead of every one of the run's.
  The index costs about as much space as the text it indexes. Queries shorter than three
  characters, which trigrams cannot answer, fall back to an `instr` scan of the owner's folded
  columns.
* search_nodes ranks (server/memory/search.py defines what it finds and in which order): beside
  the substring floor above, each query word is looked up as the prefix of a word. The words are
  Python's (`search.word_text`: folded with NFKD, case folding and combining marks dropped, cut
  into alphanumeric runs, joined by spaces), never SQLite's own tokenizers': unicode61 folds case
  and diacritics by its own tables, which differ from Python's on "ß", "İ" and others, and the two
  stores must find the same words. The word tables use the `ascii` tokenizer, which splits on
  ASCII non-alphanumerics (the spaces between words), keeps every non-ASCII character in its
  token and only lowers ASCII letters (already lower): each of its tokens is exactly one of
  Python's words. A query word `w` is the FTS5 query `"w"*` (a word is alphanumeric, so it
  needs no escaping), answered from the prefix indexes (`prefix '2 3'`) for short words and from
  the term list for longer ones. The entity table's own copy of the words tells which field
  matched (name before type); each query word and the floor is one index lookup per table, and
  the rank key (`search.rank_key`) is computed from what they return, in Python, so that both
  stores share one definition. The entities of the page are then fetched by id. The statements
  that return many rows read plain tuples (`_tuples`), not `sqlite3.Row`s.
* The word tables are ordinary FTS5 tables holding their own copy of the words (about the size
  of the words, ~40% of the text): a row is deleted by rowid, without being told the words it
  was indexed with. An external-content table would need the words at deletion, recomputed by
  Python, whose Unicode tables change between versions (a word computed differently at deletion
  than at insertion would corrupt the index); a contentless table that deletes by rowid needs
  SQLite 3.43. `detail = 'none'` keeps only which rows hold a word, all the lookups need (no
  phrases, no column filters: the row's own words tell which column matched).
* The word tables are written by this module in the same transaction as their rows, by every
  write that adds or removes one (`import_graph` included; observations always go through
  `_insert_observations`). No triggers: they cannot call Python's folding, and
  `Database.apply_schema` splits on ';'. A database
  from before them gets them filled by `migrate` at startup (`_add_words`), once: they are empty
  while entities exist only then, since every entity and observation has its row from its first
  write on.
* The trigram tables are external-content tables over the folded columns, kept in step by this module
  in the same transaction as the rows (no triggers: `Database.apply_schema` splits on ';'). A
  deleted row is unindexed with the folded text read back from its row, so the index is always
  told exactly the text it was given. `INSERT INTO memory_observation_search
  (memory_observation_search) VALUES ('integrity-check')` verifies an index against its table and
  `('rebuild')` regenerates it. FTS hits are not owner-scoped; they are joined back to the owner's
  rows.
* The planner has no statistics (nothing runs ANALYZE), and in a few places it would rather walk
  every row of the owner in an index that saves a sort than seek a handful of names. Those queries
  name their index (`INDEXED BY`) or fix the join order (`CROSS JOIN`); see the comments there.
* `read_graph` is answered from a materialized view, kept up to date by every mutation in its own
  transaction (`graph_view.stale`); `server/storage/sqlite/graph_view.py` has its schema and rules.
* A string is exactly its Python string, NUL included (`server.memory.graph`). SQLite keeps a
  NUL inside a bound text and compares texts byte for byte, but three of its pieces end a text at
  the first NUL: its JSON functions (`json_each('["Alice\\u0000x"]')` yields "Alice"), FTS5 (the
  tokenizer stops there, and a query with NUL is a syntax error) and `length()`. So lists of
  names and observations are bound one value per `?` (`_by_names`: in chunks, padded to a power
  of two so that a few statement texts serve every length), never sent as JSON; only lists of
  integer ids go as one JSON array (`json_each(?)`). The `*_fold` columns hold the folded text
  with NUL replaced by U+FFFD (`_fold`), and a query is folded the same way: a query without
  U+FFFD then matches exactly where it should; one with it (or with NUL) may also match at a
  NUL, so its hits are checked against the real text (`search_nodes`). Sizes use
  `length(CAST(x AS BLOB))`, the byte count.
* Provenance (`server.memory.graph.Origin`): `created_at` (REAL, unix seconds) and `created_by`
  (TEXT, the client id) on every entity, observation and relation row, both NULL when unknown:
  rows written before the columns existed (`migrate` adds them to an older database with
  ALTER TABLE ... ADD COLUMN, which fills NULL without rewriting the table), or written without
  an origin. The client id is stored per row rather than through a table of clients: it is
  short, and a join on every export and insert would cost more than the bytes it saves.
* `import_graph` (and an import's many rows) assigns row ids itself, `max(id) + 1` onwards,
  inside its BEGIN IMMEDIATE transaction (no other writer can take them meanwhile): the rows
  then go in with `executemany`, several times faster than one statement per row with
  `lastrowid`, and the ids are those SQLite would have chosen.
* `export_batches` reads on a connection of its own, in one read transaction from its first batch
  to its last (WAL: writers go on meanwhile), so an export is one state of the graph however long
  it takes; it holds one batch in memory at a time.
* `memory_owners` is one row per owner, created by their first write: the state of their graph
  (`OwnerState`) and their usage (`server.memory.graph.Usage`). Every mutation reads it first
  (`_writable`) and writes it last (`_account`) in its own transaction: a closed graph refuses
  the write, a quota crossed rolls it back whole, and the usage stays exact without counting
  rows (a few hundred thousand rows would be a scan per write). `delete_graph` closes the graph
  before deleting it in batches and leaves the row, closed, for good: owners are random ids that
  are never reused, and a row left behind is what refuses a write that was already on its way
  (a token checked a moment before the removal).

Every mutation runs in one `BEGIN IMMEDIATE` transaction on the writer thread that touches only
its own rows, and every query in one read transaction on a reader thread (see db.py): each is
atomic with respect to other coroutines and other processes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import random
import re
import sqlite3
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from enum import StrEnum
from functools import cached_property
from typing import Final

from server.memory.changes import CHANGES_POLL_SECONDS
from server.memory.graph import (
    DEFAULT_QUOTA,
    AddedObservations,
    Entity,
    EntityNotFoundError,
    ExportBatch,
    GraphClosedError,
    GraphJSON,
    Imported,
    ObservationAddition,
    ObservationDeletion,
    Origin,
    Quota,
    Relation,
    StoredEntity,
    StoredRelation,
    Usage,
    entity_json,
    piece,
    relation_json,
    text_bytes,
)
from server.memory.paging import Key, page_relations, window
from server.memory.search import (
    NAME,
    NOWHERE,
    OBSERVATION,
    TYPE,
    Query,
    RankKey,
    page,
    phrase_field,
    rank_key,
    word_text,
)
from server.storage import StorageUnavailable
from server.storage.sqlite import graph_view
from server.storage.sqlite.db import Database
from server.storage.sqlite.graph_view import ENTITIES, RELATIONS, GraphView

log = logging.getLogger(__name__)

DELETE_BATCH: Final = 200
"""Entities (with their observations) or relations deleted per transaction by `delete_graph`: a
few milliseconds of holding the write lock each."""
DELETE_PAUSE: Final = 0.01
"""Seconds `delete_graph` waits between its batches. Without it the deleting process takes the
lock again the moment it commits, while a writer in another process (the server, beside
`memory-mcp users remove`) is asleep in SQLite's busy handler, which polls with growing sleeps:
that writer would then wait out its whole busy timeout. 200 rows per 10 ms still deletes ~20,000
entities a second."""

# Trigrams need a query of at least three characters to use the index.
_MIN_INDEXED_QUERY = 3

# The floor (the whole query as a substring), by field. CROSS JOIN fixes the join order: drive
# from the FTS hits and look each one up by rowid. Left to itself the planner walks every row of
# the owner and probes the FTS index per row.
_PHRASE_IN_ENTITIES = """
    SELECT e.id, e.name_fold, e.type_fold FROM memory_entity_search AS s CROSS JOIN memory_entities AS e
    ON e.id = s.rowid WHERE memory_entity_search MATCH :part AND e.owner = :owner
"""
_PHRASE_IN_OBSERVATIONS = """
    SELECT DISTINCT o.entity_id FROM memory_observation_search AS s CROSS JOIN memory_observations AS o
    ON o.id = s.rowid WHERE memory_observation_search MATCH :part AND o.owner = :owner
    AND instr(o.content_fold, :phrase) > 0
"""
# Shorter than a trigram: a scan of the owner's folded columns (instr of '' is 1: all match).
_PHRASE_IN_ENTITIES_SCAN = """
    SELECT id, name_fold, type_fold FROM memory_entities
    WHERE owner = :owner AND (instr(name_fold, :phrase) > 0 OR instr(type_fold, :phrase) > 0)
"""
_PHRASE_IN_OBSERVATIONS_SCAN = """
    SELECT DISTINCT entity_id FROM memory_observations WHERE owner = :owner AND instr(content_fold, :phrase) > 0
"""
# A query word as the prefix of a word (see server.memory.search), by field: the words' own
# columns tell which field matched.
_WORD_IN_ENTITIES = """
    SELECT e.id, s.name_words, s.type_words FROM memory_entity_words AS s CROSS JOIN memory_entities AS e
    ON e.id = s.rowid WHERE memory_entity_words MATCH :word AND e.owner = :owner
"""
_WORD_IN_OBSERVATIONS = """
    SELECT DISTINCT o.entity_id FROM memory_observation_words AS s CROSS JOIN memory_observations AS o
    ON o.id = s.rowid WHERE memory_observation_words MATCH :word AND o.owner = :owner
"""

# Relations touching the given entities (by id): a UNION of two index seeks per entity, joined by
# name to the entity's row, so that the names never leave SQLite (see the module: exact names).
# Written as one WHERE with OR, or without INDEXED BY, the planner (which has no statistics)
# prefers scanning all of the owner's relations in the covering unique index; CROSS JOIN keeps it
# driving from the ids.
_RELATIONS_TOUCHING = """
    SELECT r.id, r.from_name, r.to_name, r.relation_type
    FROM json_each(:ids) AS j CROSS JOIN memory_entities AS e
    CROSS JOIN memory_relations AS r INDEXED BY memory_relations_identity
    WHERE e.id = j.value AND e.owner = :owner AND r.owner = :owner AND r.from_name = e.name
    UNION
    SELECT r.id, r.from_name, r.to_name, r.relation_type
    FROM json_each(:ids) AS j CROSS JOIN memory_entities AS e
    CROSS JOIN memory_relations AS r INDEXED BY memory_relations_to
    WHERE e.id = j.value AND e.owner = :owner AND r.owner = :owner AND r.to_name = e.name
    ORDER BY 1
"""

_NUL_STAND_IN: Final = "\ufffd"
"""What a NUL becomes in the folded (search) columns: FTS5 ends a text at NUL (see the module)."""

_IN_CHUNK: Final = 256
"""Most values bound into one `IN (...)` list; longer lists are queried in several statements."""

_OWNERS_SCHEMA = """
    CREATE TABLE memory_owners (
        owner        TEXT PRIMARY KEY,
        state        TEXT NOT NULL CHECK (state IN ('active', 'closed')),
        entities     INTEGER NOT NULL,
        observations INTEGER NOT NULL,
        bytes        INTEGER NOT NULL,
        changes      INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID
"""


class OwnerState(StrEnum):
    """`memory_owners.state`: ACTIVE takes writes; CLOSED (by `delete_graph`) never again."""

    ACTIVE = "active"
    CLOSED = "closed"


class GraphTables:
    SCHEMA = """
        CREATE TABLE IF NOT EXISTS memory_entities (
            id          INTEGER PRIMARY KEY,
            owner       TEXT NOT NULL,
            name        TEXT NOT NULL,
            entity_type TEXT NOT NULL,
            name_fold   TEXT NOT NULL,
            type_fold   TEXT NOT NULL,
            created_at  REAL,
            created_by  TEXT
        );
        CREATE UNIQUE INDEX IF NOT EXISTS memory_entities_name ON memory_entities (owner, name);
        CREATE UNIQUE INDEX IF NOT EXISTS memory_entities_order ON memory_entities (owner, id);
        CREATE TABLE IF NOT EXISTS memory_observations (
            id           INTEGER PRIMARY KEY,
            owner        TEXT NOT NULL,
            entity_id    INTEGER NOT NULL,
            content      TEXT NOT NULL,
            content_fold TEXT NOT NULL,
            created_at   REAL,
            created_by   TEXT,
            FOREIGN KEY (owner, entity_id) REFERENCES memory_entities (owner, id) ON DELETE CASCADE
        );
        CREATE INDEX IF NOT EXISTS memory_observations_entity ON memory_observations (owner, entity_id);
        CREATE TABLE IF NOT EXISTS memory_relations (
            id            INTEGER PRIMARY KEY,
            owner         TEXT NOT NULL,
            from_name     TEXT NOT NULL,
            to_name       TEXT NOT NULL,
            relation_type TEXT NOT NULL,
            created_at    REAL,
            created_by    TEXT
        );
        CREATE UNIQUE INDEX IF NOT EXISTS memory_relations_identity
            ON memory_relations (owner, from_name, to_name, relation_type);
        CREATE INDEX IF NOT EXISTS memory_relations_to ON memory_relations (owner, to_name);
        CREATE VIRTUAL TABLE IF NOT EXISTS memory_entity_search USING fts5 (
            name_fold, type_fold,
            content = 'memory_entities', content_rowid = 'id', tokenize = 'trigram case_sensitive 1'
        );
        CREATE VIRTUAL TABLE IF NOT EXISTS memory_observation_search USING fts5 (
            content_fold,
            content = 'memory_observations', content_rowid = 'id', tokenize = 'trigram case_sensitive 1'
        );
        CREATE VIRTUAL TABLE IF NOT EXISTS memory_entity_words USING fts5 (
            name_words, type_words, tokenize = 'ascii', detail = 'none', prefix = '2 3'
        );
        CREATE VIRTUAL TABLE IF NOT EXISTS memory_observation_words USING fts5 (
            words, tokenize = 'ascii', detail = 'none', prefix = '2 3'
        );
    """
    SCHEMA += graph_view.SCHEMA

    db: Database

    @staticmethod
    def migrate(db: Database) -> None:
        """Bring derived tables up to date with the rows (run after `SCHEMA`)."""
        graph_view.migrate(db)
        with db.transaction() as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'memory_owners'").fetchone() is None:
                _add_owners(conn)
            for table in ("memory_entities", "memory_observations", "memory_relations"):
                columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                # Provenance, for a database from before it: NULL (unknown) in every existing row.
                if "created_at" not in columns:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN created_at REAL")
                if "created_by" not in columns:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN created_by TEXT")
            _add_words(conn)
            if "changes" not in [row[1] for row in conn.execute("PRAGMA table_info(memory_owners)")]:
                # A database from before the change feed: every graph starts at 0.
                conn.execute("ALTER TABLE memory_owners ADD COLUMN changes INTEGER NOT NULL DEFAULT 0")
            for table in _TRIGRAM_TABLES:
                # Stored in the table's own config (every connection reads it), set once.
                row = conn.execute(f"SELECT v FROM {table}_config WHERE k = 'automerge'").fetchone()  # noqa: S608
                if row is None or row[0] != _TRIGRAM_AUTOMERGE:
                    conn.execute(f"INSERT INTO {table} ({table}, rank) VALUES ('automerge', ?)",  # noqa: S608
                                 (_TRIGRAM_AUTOMERGE,))

    @cached_property
    def _trigram_counts(self) -> _TrigramCounts:
        return _TrigramCounts()

    @cached_property
    def _view(self) -> GraphView:
        return GraphView(self.db)

    async def graph_changes(self, watched: Callable[[], Collection[str]],
                            nudge: asyncio.Event) -> AsyncGenerator[frozenset[str], None]:
        """`server.memory.changes.GraphChanges`: the watched graphs' counters, read every
        CHANGES_POLL_SECONDS (at once when nudged), compared with the last read."""
        known: dict[str, int] = {}
        outage = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudge.wait(), CHANGES_POLL_SECONDS)
            nudge.clear()
            owners = sorted(set(watched()))
            if not owners:
                known.clear()
                continue
            try:
                counters = await self.db.read(_change_counters, owners)
            except StorageUnavailable as exc:
                if not outage:
                    log.warning("graph changes not followed until the store answers again: %s", exc)
                    outage = True
                continue
            if outage:
                log.warning("graph changes followed again")
                outage = False
            changed = frozenset(owner for owner in owners if owner in known and counters.get(owner, 0) != known[owner])
            known = {owner: counters.get(owner, 0) for owner in owners}
            if changed:
                yield changed

    # --- mutations ---------------------------------------------------------------------------
    # Each opens with `_writable` (the owner's state and usage, in the write's own transaction)
    # and ends with `_account` (the quota, and the new usage): see the module.

    async def create_entities(self, owner: str, entities: Sequence[Entity], quota: Quota = DEFAULT_QUOTA,
                              origin: Origin | None = None) -> list[Entity]:
        created: list[Entity] = []
        def write(conn: sqlite3.Connection) -> None:
            before = _writable(conn, owner)
            ids: list[int] = []
            for entity in entities:
                entity_id = _insert_entity(conn, owner, entity.name, entity.entityType, origin)
                if entity_id is None:
                    continue
                observations = _unique(entity.observations)
                _insert_observations(conn, [(owner, entity_id, content, origin) for content in observations])
                created.append(Entity(name=entity.name, entityType=entity.entityType, observations=observations))
                ids.append(entity_id)
            stale(conn, owner, ENTITIES, ids)
            _account(conn, owner, quota, before, entities=len(created),
                     observations=sum(len(e.observations) for e in created),
                     size=sum(text_bytes(e.name, e.entityType, *e.observations) for e in created))
        await self.db.write(write)
        return created

    async def create_relations(self, owner: str, relations: Sequence[Relation], quota: Quota = DEFAULT_QUOTA,
                               origin: Origin | None = None) -> list[Relation]:
        created: list[Relation] = []
        at, by = _origin_columns(origin)
        def write(conn: sqlite3.Connection) -> None:
            before = _writable(conn, owner)
            ids: list[int] = []
            for relation in relations:
                cursor = conn.execute(_INSERT_RELATION,
                                      (owner, relation.from_, relation.to, relation.relationType, at, by))
                if cursor.rowcount and cursor.lastrowid is not None:
                    created.append(relation)
                    ids.append(cursor.lastrowid)
            stale(conn, owner, RELATIONS, ids)
            _account(conn, owner, quota, before, size=sum(text_bytes(r.from_, r.to, r.relationType) for r in created))
        await self.db.write(write)
        return created

    async def add_observations(self, owner: str, additions: Sequence[ObservationAddition],
                               quota: Quota = DEFAULT_QUOTA, origin: Origin | None = None
                               ) -> list[AddedObservations]:
        results: list[AddedObservations] = []
        def write(conn: sqlite3.Connection) -> None:
            before = _writable(conn, owner)
            ids = _entity_ids(conn, owner, [a.entityName for a in additions])
            missing = _unique(a.entityName for a in additions if a.entityName not in ids)
            if missing:
                # Checked before the first write: the whole call fails and nothing is stored.
                raise EntityNotFoundError(missing)
            present = _observation_sets(conn, owner, ids.values())
            for addition in additions:
                entity_id = ids[addition.entityName]
                new = [c for c in _unique(addition.contents) if c not in present[entity_id]]
                present[entity_id].update(new)
                _insert_observations(conn, [(owner, entity_id, content, origin) for content in new])
                results.append(AddedObservations(entityName=addition.entityName, addedObservations=new))
            stale(conn, owner, ENTITIES, [ids[r.entityName] for r in results if r.addedObservations])
            _account(conn, owner, quota, before, observations=sum(len(r.addedObservations) for r in results),
                     size=sum(text_bytes(*r.addedObservations) for r in results))
        await self.db.write(write)
        return results

    async def import_graph(self, owner: str, entities: Sequence[StoredEntity], relations: Sequence[StoredRelation],
                           quota: Quota = DEFAULT_QUOTA, ready: Awaitable[object] | None = None) -> Imported:
        def write(conn: sqlite3.Connection) -> Imported:
            before = _writable(conn, owner)
            ids = _entity_ids(conn, owner, [e.name for e in entities])
            present = _observation_sets(conn, owner, ids.values())
            next_entity = _next_id(conn, "memory_entities")
            entity_rows: list[tuple[object, ...]] = []
            entity_words: list[tuple[int, str, str]] = []
            observations: list[tuple[str, int, str, Origin | None]] = []
            touched: list[int] = []
            size = 0
            for entity in entities:
                entity_id = ids.get(entity.name)
                if entity_id is None:
                    entity_id = ids[entity.name] = next_entity
                    next_entity += 1
                    present[entity_id] = set()
                    entity_rows.append((entity_id, owner, entity.name, entity.entity_type, _fold(entity.name),
                                        _fold(entity.entity_type), *_origin_columns(entity.origin)))
                    entity_words.append((entity_id, word_text(entity.name), word_text(entity.entity_type)))
                    size += text_bytes(entity.name, entity.entity_type)
                    touched.append(entity_id)
                seen = present[entity_id]
                origins = itertools.chain(entity.observation_origins, itertools.repeat(None))
                for content, origin in zip(entity.observations, origins, strict=False):
                    if content not in seen:
                        seen.add(content)
                        observations.append((owner, entity_id, content, origin))
                        size += len(content.encode())
                        touched.append(entity_id)
            conn.executemany("INSERT INTO memory_entities (id, owner, name, entity_type, name_fold, type_fold,"
                             " created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", entity_rows)
            if entity_rows:
                conn.execute("INSERT INTO memory_entity_search (rowid, name_fold, type_fold)"
                             " SELECT id, name_fold, type_fold FROM memory_entities WHERE id BETWEEN ? AND ?",
                             (entity_rows[0][0], entity_rows[-1][0]))
                conn.executemany("INSERT INTO memory_entity_words (rowid, name_words, type_words) VALUES (?, ?, ?)",
                                 entity_words)
            _insert_observations(conn, observations)
            # Ids assigned here too; a relation that exists is not inserted (ON CONFLICT), and what
            # was is read back from the id range.
            first = _next_id(conn, "memory_relations")
            conn.executemany(
                "INSERT INTO memory_relations (id, owner, from_name, to_name, relation_type, created_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, from_name, to_name, relation_type) DO NOTHING",
                [(first + i, owner, r.from_, r.to, r.relation_type, *_origin_columns(r.origin))
                 for i, r in enumerate(relations)])
            relation_ids: list[int] = []
            if relations:
                for relation_id, relation_size in conn.execute(
                        "SELECT id, length(CAST(from_name AS BLOB)) + length(CAST(to_name AS BLOB))"
                        " + length(CAST(relation_type AS BLOB)) FROM memory_relations WHERE id BETWEEN ? AND ?",
                        (first, first + len(relations) - 1)):
                    relation_ids.append(relation_id)
                    size += relation_size
            stale(conn, owner, ENTITIES, touched)
            stale(conn, owner, RELATIONS, relation_ids)
            _account(conn, owner, quota, before, entities=len(entity_rows), observations=len(observations), size=size)
            return Imported(len(entity_rows), len(observations), len(relation_ids))
        # What a batch writes is prepared in the transaction, on the writer thread: nothing to do
        # before `ready` but wait for it.
        if ready is not None:
            await ready
        return await self.db.write(write)

    async def delete_entities(self, owner: str, names: Sequence[str]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            before = _writable(conn, owner)
            # By name, not by existing entity: like the official server, this also clears
            # relations that point at names which were never created. Two statements, so that each
            # is an index seek per name.
            relation_rows = _by_names(conn, _DELETE_RELATIONS_FROM, owner, names)
            relation_rows += _by_names(conn, _DELETE_RELATIONS_TO, owner, names)
            stale(conn, owner, RELATIONS, [row["id"] for row in relation_rows])
            entity_rows = _by_names(conn, _ENTITIES_NAMED, owner, _unique(names))
            observations = _delete_entity_rows(conn, owner, entity_rows)
            _account(conn, owner, None, before, entities=-len(entity_rows), observations=-len(observations),
                     size=-_size(relation_rows, entity_rows, observations))
        await self.db.write(write)

    async def delete_observations(self, owner: str, deletions: Sequence[ObservationDeletion]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            before = _writable(conn, owner)
            deleted: list[sqlite3.Row] = []
            for deletion in deletions:
                entity = conn.execute("SELECT id FROM memory_entities WHERE owner = ? AND name = ?",
                                      (owner, deletion.entityName)).fetchone()
                if entity is None:
                    continue
                for chunk in _chunks(_unique(deletion.observations)):
                    deleted += _delete_observations(
                        conn,
                        _OBSERVATIONS_OF_ENTITY.format(_marks(chunk)),
                        (owner, entity["id"], *_padded(chunk)),
                    )
            stale(conn, owner, ENTITIES, [row["entity_id"] for row in deleted])
            _account(conn, owner, None, before, observations=-len(deleted), size=-_size(deleted))
        await self.db.write(write)

    async def delete_relations(self, owner: str, relations: Sequence[Relation]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            before = _writable(conn, owner)
            # One statement per relation: executemany cannot return the deleted ids.
            rows = [row for r in relations for row in conn.execute(
                _DELETE_RELATION, (owner, r.from_, r.to, r.relationType),
            ).fetchall()]
            stale(conn, owner, RELATIONS, [row["id"] for row in rows])
            _account(conn, owner, None, before, size=-_size(rows))
        await self.db.write(write)

    async def delete_graph(self, owner: str) -> int:
        # Closed first, in its own transaction: from its commit on no write for the owner can
        # commit (each checks the state in its own transaction), so the batches below delete
        # everything that will ever exist. Then batches by id, each a short transaction, so that a
        # large graph never holds the write lock for long (other processes, and this one's other
        # writers, get their turn between batches); re-running resumes where it stopped.
        await self.db.write(_close, owner)
        deleted = await self._in_batches(_delete_some_entities, owner)
        await self._in_batches(_delete_some_relations, owner)
        await self.db.write(_forget_owner, owner)
        self._view.forget(owner)
        return deleted

    async def _in_batches(self, step: Callable[[sqlite3.Connection, str, int], int], owner: str) -> int:
        total = 0
        while count := await self.db.write(step, owner, DELETE_BATCH):
            total += count
            await asyncio.sleep(DELETE_PAUSE)
        return total

    # --- queries -----------------------------------------------------------------------------
    # Each in one read transaction on a reader thread: its statements see one state of the file.

    async def usage(self, owner: str) -> Usage:
        def read(conn: sqlite3.Connection) -> Usage:
            row = conn.execute("SELECT entities, observations, bytes FROM memory_owners WHERE owner = ?",
                               (owner,)).fetchone()
            return Usage() if row is None else Usage(*row)
        return await self.db.read(read)

    async def read_graph(self, owner: str, *, after: Key | None = None, limit: int | None = None) -> GraphJSON:
        if after is None and limit is None:
            return await self._view.read(owner)
        # A page is read from the rows: the view's chunks are 128 ids each, a page any length.
        return await self.db.read(_graph_page, owner, after, limit)

    async def export_batches(self, owner: str, batch_size: int = 512) -> AsyncIterator[ExportBatch]:
        # A connection of its own, one read transaction throughout (see the module); the rows are
        # read a batch at a time on a worker thread.
        with self.db._translated():
            conn = await asyncio.to_thread(self._export_connection)
        try:
            batches = _export_rows(conn, owner, batch_size)
            while True:
                with self.db._translated():
                    batch = await asyncio.to_thread(next, batches, None)
                if batch is None:
                    return
                yield batch
        finally:
            await asyncio.to_thread(conn.close)

    def _export_connection(self) -> sqlite3.Connection:
        # Worker threads take turns on it, never two at once.
        conn = sqlite3.connect(self.db.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self.db.busy_timeout * 1000)}")
        conn.execute("BEGIN")
        return conn

    async def search_nodes(self, owner: str, query: str, *, after: tuple[int, ...] | None = None,
                           limit: int | None = None) -> GraphJSON:
        parsed = Query.parse(query)

        def read(conn: sqlite3.Connection) -> GraphJSON:
            hits = _ranked_hits(conn, owner, parsed, self._trigram_counts.current(conn))
            ids, next_key = page([(key, entity_id) for entity_id, key in hits.items()], after, limit)
            # Driven from the ids, each a rowid lookup (the planner would rather go through
            # memory_entities_order and then the table: twice the time for ~100 hits).
            rows = {row["id"]: row for row in conn.execute(
                "SELECT e.id, e.name, e.entity_type FROM json_each(?) AS j CROSS JOIN memory_entities AS e"
                " ON e.id = j.value WHERE e.owner = ?", (json.dumps(ids), owner))}
            page_rows = [rows[entity_id] for entity_id in ids]
            if after is None and limit is None:
                return _subgraph(conn, owner, page_rows)
            # A page holds the relations whose endpoints among the hits all rank up to its last
            # entity (server/memory/paging.py): the other endpoints' rank keys decide.
            relation_rows = conn.execute(_RELATIONS_TOUCHING, {"owner": owner, "ids": json.dumps(ids)}).fetchall()
            ends = _entity_ids(conn, owner, [name for row in relation_rows
                                             for name in (row["from_name"], row["to_name"])])

            def key_of(name: str) -> Key | None:
                entity_id = ends.get(name)
                return None if entity_id is None else hits.get(entity_id)

            return _page_json(conn, owner, page_rows, relation_rows, key_of, next_key)
        return await self.db.read(read)

    async def open_nodes(self, owner: str, names: Sequence[str], *, after: Key | None = None,
                         limit: int | None = None) -> GraphJSON:
        def read(conn: sqlite3.Connection) -> GraphJSON:
            entity_rows = _by_names(
                # INDEXED BY: without statistics the planner would rather walk all of the owner's
                # entities in memory_entities_order, to save sorting the few it returns.
                conn, "SELECT id, name, entity_type FROM memory_entities INDEXED BY memory_entities_name"
                " WHERE owner = ? AND name IN ({})", owner, _unique(names))
            entity_rows.sort(key=lambda row: int(row["id"]))
            if after is not None or limit is not None:
                return _subgraph_page(conn, owner, entity_rows, after, limit)
            return _subgraph(conn, owner, entity_rows)
        return await self.db.read(read)


def _export_rows(conn: sqlite3.Connection, owner: str, batch_size: int) -> Iterator[ExportBatch]:
    """`export_batches`' batches: entities by id (each with its observations), then relations by id."""
    last = 0
    while entity_rows := conn.execute(
            "SELECT id, name, entity_type, created_at, created_by FROM memory_entities WHERE owner = ? AND id > ?"
            " ORDER BY id LIMIT ?", (owner, last, batch_size)).fetchall():
        observations: dict[int, tuple[list[str], list[Origin | None]]] = {row[0]: ([], []) for row in entity_rows}
        for entity_id, content, at, by in conn.execute(
                "SELECT entity_id, content, created_at, created_by FROM memory_observations"
                " WHERE owner = ? AND entity_id BETWEEN ? AND ? ORDER BY entity_id, id",
                (owner, entity_rows[0][0], entity_rows[-1][0])):
            contents, origins = observations[entity_id]
            contents.append(content)
            origins.append(_origin_of(at, by))
        yield [StoredEntity(name, entity_type, observations[entity_id][0], _origin_of(at, by),
                            observations[entity_id][1]) for entity_id, name, entity_type, at, by in entity_rows]
        last = entity_rows[-1][0]
    last = 0
    while relation_rows := conn.execute(
            "SELECT id, from_name, to_name, relation_type, created_at, created_by FROM memory_relations"
            " WHERE owner = ? AND id > ? ORDER BY id LIMIT ?", (owner, last, batch_size)).fetchall():
        yield [StoredRelation(source, target, relation_type, _origin_of(at, by))
               for _, source, target, relation_type, at, by in relation_rows]
        last = relation_rows[-1][0]


def stale(conn: sqlite3.Connection, owner: str, kind: int, ids: Sequence[int]) -> None:
    """Rows of the owner's graph changed (these ids, of `kind`): their chunks of the view are
    stale (`graph_view.stale`), and the graph's change counter moves, in the same transaction as
    the change, so that every process following the graph sees it (server/memory/changes.py)."""
    graph_view.stale(conn, owner, kind, ids)
    if ids:
        conn.execute("UPDATE memory_owners SET changes = changes + 1 WHERE owner = ?", (owner,))


def _close(conn: sqlite3.Connection, owner: str) -> None:
    conn.execute(
        "INSERT INTO memory_owners (owner, state, entities, observations, bytes) VALUES (?, ?, 0, 0, 0)"
        " ON CONFLICT (owner) DO UPDATE SET state = excluded.state", (owner, OwnerState.CLOSED))


def _delete_some_entities(conn: sqlite3.Connection, owner: str, limit: int) -> int:
    entity_rows = conn.execute(
        "SELECT id, name_fold, type_fold FROM memory_entities WHERE owner = ? ORDER BY id LIMIT ?",
        (owner, limit)).fetchall()
    _delete_entity_rows(conn, owner, entity_rows)
    return len(entity_rows)


def _delete_some_relations(conn: sqlite3.Connection, owner: str, limit: int) -> int:
    ids = [row[0] for row in conn.execute(
        "DELETE FROM memory_relations WHERE id IN (SELECT id FROM memory_relations WHERE owner = ? LIMIT ?)"
        " RETURNING id", (owner, limit)).fetchall()]
    stale(conn, owner, RELATIONS, ids)  # a read between two batches sees the rows as they are
    return len(ids)


def _forget_owner(conn: sqlite3.Connection, owner: str) -> None:
    """The last step of `delete_graph`: the owner's (now empty) view, and their usage, zero. The
    closed row itself stays (see the module)."""
    conn.execute("DELETE FROM memory_graph_chunks WHERE owner = ?", (owner,))
    conn.execute("UPDATE memory_owners SET entities = 0, observations = 0, bytes = 0 WHERE owner = ?", (owner,))


# Sizes as `Usage` counts them, computed by SQLite from the rows: `length(CAST(x AS BLOB))`, as
# the `length` of a text stops at its first NUL, of a blob it is the byte count. `{}` is where
# `_by_names` puts the list of names.
_DELETE_RELATIONS_FROM = """
    DELETE FROM memory_relations INDEXED BY memory_relations_identity WHERE owner = ? AND from_name IN ({})
    RETURNING id, length(CAST(from_name AS BLOB)) + length(CAST(to_name AS BLOB))
                  + length(CAST(relation_type AS BLOB)) AS size
"""
_DELETE_RELATIONS_TO = """
    DELETE FROM memory_relations INDEXED BY memory_relations_to WHERE owner = ? AND to_name IN ({})
    RETURNING id, length(CAST(from_name AS BLOB)) + length(CAST(to_name AS BLOB))
                  + length(CAST(relation_type AS BLOB)) AS size
"""
_DELETE_RELATION = """
    DELETE FROM memory_relations WHERE owner = ? AND from_name = ? AND to_name = ? AND relation_type = ?
    RETURNING id, length(CAST(from_name AS BLOB)) + length(CAST(to_name AS BLOB))
                  + length(CAST(relation_type AS BLOB)) AS size
"""
_ENTITIES_NAMED = """
    SELECT id, name_fold, type_fold, length(CAST(name AS BLOB)) + length(CAST(entity_type AS BLOB)) AS size
    FROM memory_entities WHERE owner = ? AND name IN ({})
"""
_OBSERVATIONS_OF_ENTITY = """
    SELECT id, entity_id, content_fold, length(CAST(content AS BLOB)) AS size
    FROM memory_observations WHERE owner = ? AND entity_id = ? AND content IN ({})
"""
_USAGE_BY_OWNER = """
    SELECT owner, 'active', sum(entities), sum(observations), sum(size) FROM (
        SELECT owner, count(*) AS entities, 0 AS observations,
               sum(length(CAST(name AS BLOB)) + length(CAST(entity_type AS BLOB))) AS size
        FROM memory_entities GROUP BY owner
        UNION ALL
        SELECT owner, 0, count(*), sum(length(CAST(content AS BLOB))) FROM memory_observations GROUP BY owner
        UNION ALL
        SELECT owner, 0, 0, sum(length(CAST(from_name AS BLOB)) + length(CAST(to_name AS BLOB))
                                + length(CAST(relation_type AS BLOB)))
        FROM memory_relations GROUP BY owner)
    GROUP BY owner
"""


def _change_counters(conn: sqlite3.Connection, owners: Sequence[str]) -> dict[str, int]:
    counters: dict[str, int] = {}
    for chunk in _chunks(owners):
        counters.update(conn.execute(_CHANGE_COUNTERS.format(_marks(chunk)), _padded(chunk)).fetchall())
    return counters


_CHANGE_COUNTERS = "SELECT owner, changes FROM memory_owners WHERE owner IN ({})"


def _size(*row_lists: Sequence[sqlite3.Row]) -> int:
    return sum(row["size"] for rows in row_lists for row in rows)


def _writable(conn: sqlite3.Connection, owner: str) -> Usage:
    """The owner's usage, inside the caller's write transaction; `GraphClosedError` if the graph
    is closed. An owner's first write creates their row."""
    row = conn.execute("SELECT state, entities, observations, bytes FROM memory_owners WHERE owner = ?",
                       (owner,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO memory_owners (owner, state, entities, observations, bytes) VALUES (?, ?, 0, 0, 0)",
                     (owner, OwnerState.ACTIVE))
        return Usage()
    if row["state"] != OwnerState.ACTIVE:
        raise GraphClosedError()
    return Usage(row["entities"], row["observations"], row["bytes"])


def _account(conn: sqlite3.Connection, owner: str, quota: Quota | None, before: Usage, *, entities: int = 0,
             observations: int = 0, size: int = 0) -> None:
    """Record what a write changed; raising (the quota) rolls the whole write back."""
    if not (entities or observations or size):
        return
    after = Usage(before.entities + entities, before.observations + observations, before.bytes + size)
    if quota is not None:
        quota.check(before, after)
    conn.execute("UPDATE memory_owners SET entities = ?, observations = ?, bytes = ? WHERE owner = ?",
                 (after.entities, after.observations, after.bytes, owner))


def _add_owners(conn: sqlite3.Connection) -> None:
    """Create `memory_owners` in a database from before it, with every owner's usage (one scan, once),
    and refold the search columns of rows with a NUL, which older versions folded with it."""
    conn.execute(_OWNERS_SCHEMA)
    conn.execute("INSERT INTO memory_owners (owner, state, entities, observations, bytes)" + _USAGE_BY_OWNER)
    for row in conn.execute(
        "SELECT id, name, entity_type, name_fold, type_fold FROM memory_entities"
        " WHERE instr(name_fold, ?) > 0 OR instr(type_fold, ?) > 0", ("\0", "\0")).fetchall():
        conn.execute("INSERT INTO memory_entity_search (memory_entity_search, rowid, name_fold, type_fold)"
                     " VALUES ('delete', ?, ?, ?)", (row["id"], row["name_fold"], row["type_fold"]))
        name_fold, type_fold = _fold(row["name"]), _fold(row["entity_type"])
        conn.execute("UPDATE memory_entities SET name_fold = ?, type_fold = ? WHERE id = ?",
                     (name_fold, type_fold, row["id"]))
        conn.execute("INSERT INTO memory_entity_search (rowid, name_fold, type_fold) VALUES (?, ?, ?)",
                     (row["id"], name_fold, type_fold))
    for row in conn.execute(
            "SELECT id, content, content_fold FROM memory_observations WHERE instr(content_fold, ?) > 0",
            ("\0",)).fetchall():
        conn.execute("INSERT INTO memory_observation_search (memory_observation_search, rowid, content_fold)"
                     " VALUES ('delete', ?, ?)", (row["id"], row["content_fold"]))
        content_fold = _fold(row["content"])
        conn.execute("UPDATE memory_observations SET content_fold = ? WHERE id = ?", (content_fold, row["id"]))
        conn.execute("INSERT INTO memory_observation_search (rowid, content_fold) VALUES (?, ?)",
                     (row["id"], content_fold))


def _add_words(conn: sqlite3.Connection) -> None:
    """Fill the word indexes of a database from before them (they are empty while rows exist: every
    entity and every observation has its row in them from its first write on). Runs once, at
    startup, in the migration's transaction: about 20 s per million observations."""
    if (conn.execute("SELECT 1 FROM memory_entity_words LIMIT 1").fetchone() is None
            and conn.execute("SELECT 1 FROM memory_entities LIMIT 1").fetchone() is not None):
        conn.executemany(
            "INSERT INTO memory_entity_words (rowid, name_words, type_words) VALUES (?, ?, ?)",
            ((row[0], word_text(row[1]), word_text(row[2]))
             for row in conn.execute("SELECT id, name, entity_type FROM memory_entities").fetchall()))
    if (conn.execute("SELECT 1 FROM memory_observation_words LIMIT 1").fetchone() is None
            and conn.execute("SELECT 1 FROM memory_observations LIMIT 1").fetchone() is not None):
        conn.executemany(
            "INSERT INTO memory_observation_words (rowid, words) VALUES (?, ?)",
            ((row[0], word_text(row[1]))
             for row in conn.execute("SELECT id, content FROM memory_observations").fetchall()))


def _ranked_hits(conn: sqlite3.Connection, owner: str, query: Query, counts: _Sample) -> dict[int, RankKey]:
    """Every hit of the query among the owner's entities, with its rank key (server.memory.search):
    the indexes say where the whole query occurs and where each word starts a word; `rank_key`
    turns that into the key. `counts` only decides which trigrams the index is asked for."""
    cursor = _tuples(conn)
    phrases: dict[int, int] = {}
    probe = _fold(query.phrase)
    indexed = len(probe) >= _MIN_INDEXED_QUERY
    # The index is asked for a few trigrams of the query, the rows it returns checked for the whole
    # (`instr`, and `in` below): see `_trigram_query`.
    params = {"owner": owner, "phrase": probe, "part": _trigram_query(probe, counts.observations)}
    for (entity_id,) in cursor.execute(_PHRASE_IN_OBSERVATIONS if indexed else _PHRASE_IN_OBSERVATIONS_SCAN, params):
        phrases[entity_id] = OBSERVATION
    params["part"] = _trigram_query(probe, counts.entities)
    for entity_id, name_fold, type_fold in cursor.execute(
            _PHRASE_IN_ENTITIES if indexed else _PHRASE_IN_ENTITIES_SCAN, params):
        if probe in name_fold:
            phrases[entity_id] = NAME
        elif probe in type_fold:
            phrases[entity_id] = TYPE
    if _NUL_STAND_IN in probe:
        # The probe also matched where the stored text has NUL or the stand-in (see the module):
        # where the query really occurs, if anywhere, is decided by the texts themselves.
        phrases = _phrases_in_texts(conn, owner, query.phrase, phrases)
    words: dict[int, list[int]] = {}
    count = len(query.words)
    for i, word in enumerate(query.words):
        # A word holds alphanumeric characters only: quoted, it is one token, and `*` its prefixes.
        params = {"owner": owner, "word": f'"{word}"*'}
        for (entity_id,) in cursor.execute(_WORD_IN_OBSERVATIONS, params):
            words.setdefault(entity_id, [NOWHERE] * count)[i] = OBSERVATION
        starts = f" {word}"
        for entity_id, name_words, type_words in cursor.execute(_WORD_IN_ENTITIES, params):
            fields = words.setdefault(entity_id, [NOWHERE] * count)
            if f" {name_words}".find(starts) >= 0:
                fields[i] = NAME
            elif f" {type_words}".find(starts) >= 0:
                fields[i] = TYPE
    keys: dict[int, RankKey] = {}
    no_words = [NOWHERE] * len(query.words)
    for entity_id in phrases.keys() | words.keys():
        key = rank_key(query, phrases.get(entity_id, NOWHERE), words.get(entity_id, no_words), entity_id)
        if key is not None:
            keys[entity_id] = key
    return keys


def _trigram_query(probe: str, counts: Mapping[str, int]) -> str:
    """The FTS5 query a trigram index is asked for a (folded) query of three or more characters:
    two trigrams of the query's longest run of alphanumeric characters (when that has three or
    more; else the whole query as one phrase), the two rarest by `counts` (`_TrigramCounts`),
    of equally rare ones the run's first and last. Every text that contains the query contains any
    part of it, so the rows found are a superset of the hits, and the `instr` check keeps exactly
    the hits: which trigrams are asked only changes how much FTS5 reads.

    FTS5 reads the whole list of every trigram it is asked for, positions included, and most
    trigrams are in thousands of rows (in text, as in the bench's vocabulary of syllables):
    trigrams with a space or a punctuation mark ("e f", "s, ") are in most texts ("jukifael
    fonurelu" as a phrase took 13-36 ms over 500,000 observations), and each further trigram of a
    word is one more list. Two rare trigrams leave few rows that hold both but not the query; one
    alone leaves thousands to check. Over the bench's typical queries (both tables, warm): the run
    as a phrase 1.44 ms, its first and last trigram 0.66 ms, the two rarest 0.45 ms
    (docs/performance.md, "SQLite search below 5 ms")."""
    runs = _ALNUM_RUN.findall(probe)
    if not runs:
        # A quoted FTS5 string is taken literally; only its quote character needs doubling.
        return '"' + probe.replace('"', '""') + '"'
    run = max(runs, key=len)
    trigrams = list(dict.fromkeys(run[i:i + 3] for i in range(len(run) - 2)))
    if len(trigrams) > 2:
        last = len(trigrams) - 1
        rarest = sorted(range(len(trigrams)), key=lambda i: (counts.get(trigrams[i], 0), 0 < i < last))[:2]
        trigrams = [trigrams[i] for i in sorted(rarest)]
    # A run is alphanumeric: no quote to escape, and a quoted trigram is one token.
    return " AND ".join(f'"{trigram}"' for trigram in trigrams)


_ALNUM_RUN: Final = re.compile(r"[^\W_]{3,}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Sample:
    """In how many of a sample of rows each trigram occurs, per trigram table."""

    observations: Mapping[str, int]
    entities: Mapping[str, int]
    taken: float


class _TrigramCounts:
    """Which trigrams are rare, estimated from a random sample of the folded texts (all owners':
    the index's lists are too), taken by the first search and again by the first after
    `SAMPLE_SECONDS`. FTS5 cannot say how long a trigram's list is without reading it (fts5vocab
    reads it: 0.3 ms a trigram, more than the search saves), and the queries the bench times hardly
    ever repeat a trigram. A sample of 1,000 rows per table (~25 ms at 500,000 observations, once
    per 5 minutes, in the search that takes it) finds two trigrams as cheap to ask as the two a
    count of the whole index would pick (docs/performance.md). It is an estimate only and may be
    stale or empty (a new file): that changes the time of a search, never its hits. Reader threads
    may race to replace it; either sample does."""

    SAMPLE_ROWS: Final = 1_000
    SAMPLE_SECONDS: Final = 300.0

    def __init__(self) -> None:
        self._sample: _Sample | None = None

    def current(self, conn: sqlite3.Connection) -> _Sample:
        sample = self._sample
        if sample is None or time.monotonic() - sample.taken > self.SAMPLE_SECONDS:
            sample = self._sample = _Sample(
                observations=_sampled_trigrams(conn, "memory_observations", "content_fold", self.SAMPLE_ROWS),
                entities=_sampled_trigrams(conn, "memory_entities", "name_fold, type_fold", self.SAMPLE_ROWS),
                taken=time.monotonic())
        return sample


def _sampled_trigrams(conn: sqlite3.Connection, table: str, columns: str, rows: int) -> dict[str, int]:
    """In how many of about `rows` random rows of the table each trigram of `columns` occurs."""
    cursor = _tuples(conn)
    # max(id) alone is one seek to the last row (min and max together would scan); ids are dense
    # enough that random ones below it mostly exist.
    # The table and columns are this module's constants, never input.
    (top,) = cursor.execute(f"SELECT max(id) FROM {table}").fetchone()  # noqa: S608
    counts: collections.Counter[str] = collections.Counter()
    if top is None:
        return counts
    # Not a secret: which rows are read changes only the estimate.
    ids = json.dumps([random.randint(1, top) for _ in range(rows)])  # noqa: S311
    for texts in cursor.execute(
            f"SELECT {columns} FROM {table} WHERE id IN (SELECT value FROM json_each(?))", (ids,)):  # noqa: S608
        counts.update({text[i:i + 3] for text in texts for i in range(len(text) - 2)})
    return counts


def _phrases_in_texts(conn: sqlite3.Connection, owner: str, phrase: str, candidates: dict[int, int]
                      ) -> dict[int, int]:
    """Of the candidates, those whose texts contain the phrase, with the field where it occurs first."""
    ids = json.dumps(list(candidates))
    observations: dict[int, list[str]] = {}
    for row in conn.execute("SELECT entity_id, content FROM memory_observations"
                            " WHERE owner = ? AND entity_id IN (SELECT value FROM json_each(?))", (owner, ids)):
        observations.setdefault(row[0], []).append(row[1])
    found: dict[int, int] = {}
    for row in conn.execute("SELECT id, name, entity_type FROM memory_entities"
                            " WHERE owner = ? AND id IN (SELECT value FROM json_each(?))", (owner, ids)):
        field = phrase_field(phrase, row["name"], row["entity_type"], observations.get(row["id"], []))
        if field != NOWHERE:
            found[row["id"]] = field
    return found


_TRIGRAM_TABLES: Final = ("memory_entity_search", "memory_observation_search")
_TRIGRAM_AUTOMERGE: Final = 16
"""FTS5's `automerge` for the trigram indexes: merge a level's segments once 16 of them are there
(FTS5's default is 4). A 60-character observation has ~58 trigrams, and with 4 each of them was
rewritten by a merge about twice as often: indexing 500,000 observations took 6.3-7.1 CPU s with
4 and 3.5-4.0 with 16, and phrase queries on the index built so were within run-to-run noise
(docs/performance.md, "Import and search after the performance pass"). Every write gains it."""


def _fold(text: str) -> str:
    """The folded form stored in the `*_fold` columns and searched for: see the module."""
    return text.lower().replace("\0", _NUL_STAND_IN)


def _unique(items: Iterable[str]) -> list[str]:
    """First occurrence of each item, in order."""
    return list(dict.fromkeys(items))


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start:start + _IN_CHUNK]


def _marks(values: Sequence[object]) -> str:
    """`?, ?, ...` for binding `values` one by one; rounded up to a power of two (the caller
    repeats the last value: `_padded`) so that a few statement texts serve every list length."""
    return ", ".join("?" * _padded_length(len(values)))


def _padded_length(count: int) -> int:
    return 1 << max(count - 1, 0).bit_length()


def _padded(values: Sequence[str]) -> list[str]:
    return [*values, *[values[-1]] * (_padded_length(len(values)) - len(values))]


def _by_names(conn: sqlite3.Connection, sql: str, owner: str, names: Sequence[str]) -> list[sqlite3.Row]:
    """The rows of `sql` (`?` the owner, `{}` where the list of names goes), for every name.

    Names are bound one by one, never sent as JSON: SQLite's JSON functions end a string at its
    first NUL, so "Alice\\0x" would have been "Alice". A value repeated in an IN list changes
    nothing, which lets `_marks` pad the list.
    """
    rows: list[sqlite3.Row] = []
    for chunk in _chunks(names):
        rows += conn.execute(sql.format(_marks(chunk)), (owner, *_padded(chunk))).fetchall()
    return rows


def _origin_columns(origin: Origin | None) -> tuple[float | None, str | None]:
    return (None, None) if origin is None else (origin.at, origin.by)


def _origin_of(at: float | None, by: str | None) -> Origin | None:
    return None if at is None or by is None else Origin(at, by)


def _insert_entity(conn: sqlite3.Connection, owner: str, name: str, entity_type: str, origin: Origin | None
                   ) -> int | None:
    """The new row's id, or None when the owner already has an entity of that name."""
    name_fold, type_fold = _fold(name), _fold(entity_type)
    cursor = conn.execute(
        "INSERT INTO memory_entities (owner, name, entity_type, name_fold, type_fold, created_at, created_by)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, name) DO NOTHING",
        (owner, name, entity_type, name_fold, type_fold, *_origin_columns(origin)),
    )
    if cursor.rowcount == 0 or cursor.lastrowid is None:
        return None
    conn.execute(
        "INSERT INTO memory_entity_search (rowid, name_fold, type_fold) VALUES (?, ?, ?)",
        (cursor.lastrowid, name_fold, type_fold),
    )
    conn.execute("INSERT INTO memory_entity_words (rowid, name_words, type_words) VALUES (?, ?, ?)",
                 (cursor.lastrowid, word_text(name), word_text(entity_type)))
    return cursor.lastrowid


_INSERT_RELATION = """
    INSERT INTO memory_relations (owner, from_name, to_name, relation_type, created_at, created_by)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner, from_name, to_name, relation_type) DO NOTHING
"""


def _next_id(conn: sqlite3.Connection, table: str) -> int:
    """The id SQLite would give the next row of `table` (inside the caller's write transaction)."""
    return int(conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0])  # noqa: S608


def _insert_observations(conn: sqlite3.Connection, observations: Sequence[tuple[str, int, str, Origin | None]]
                         ) -> None:
    """Insert (owner, entity id, content, origin) rows, in order, with ids assigned here (see the module)."""
    if not observations:
        return
    first = _next_id(conn, "memory_observations")
    rows = [(first + i, owner, entity_id, content, _fold(content), *_origin_columns(origin))
            for i, (owner, entity_id, content, origin) in enumerate(observations)]
    conn.executemany("INSERT INTO memory_observations (id, owner, entity_id, content, content_fold, created_at,"
                     " created_by) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    # Indexed from the rows just written (their ids are this range, and only theirs): a third
    # cheaper than binding every folded text a second time.
    conn.execute("INSERT INTO memory_observation_search (rowid, content_fold)"
                 " SELECT id, content_fold FROM memory_observations WHERE id BETWEEN ? AND ?",
                 (first, first + len(rows) - 1))
    # The words are Python's (see the module), so they are bound.
    conn.executemany("INSERT INTO memory_observation_words (rowid, words) VALUES (?, ?)",
                     [(row[0], word_text(row[3])) for row in rows])


def _delete_observations(conn: sqlite3.Connection, select: str, params: Sequence[object]) -> list[sqlite3.Row]:
    """Delete the observations `select` returns (columns id, entity_id, content_fold, and any
    others), and unindex them; returns their rows."""
    rows = conn.execute(select, params).fetchall()
    conn.executemany(
        "INSERT INTO memory_observation_search (memory_observation_search, rowid, content_fold)"
        " VALUES ('delete', ?, ?)",
        [(row["id"], row["content_fold"]) for row in rows],
    )
    ids = json.dumps([row["id"] for row in rows])
    conn.execute("DELETE FROM memory_observation_words WHERE rowid IN (SELECT value FROM json_each(?))", (ids,))
    conn.execute("DELETE FROM memory_observations WHERE id IN (SELECT value FROM json_each(?))", (ids,))
    return rows


def _delete_entity_rows(conn: sqlite3.Connection, owner: str, entity_rows: Sequence[sqlite3.Row]
                        ) -> list[sqlite3.Row]:
    """Delete these entities (rows with id, name_fold, type_fold) with their observations, and
    unindex them; returns the observations' rows (with their size). Relations are the caller's."""
    ids = json.dumps([row["id"] for row in entity_rows])
    observations = _delete_observations(
        conn,
        "SELECT id, entity_id, content_fold, length(CAST(content AS BLOB)) AS size FROM memory_observations"
        " WHERE owner = ? AND entity_id IN (SELECT value FROM json_each(?))",
        (owner, ids),
    )
    conn.executemany(
        "INSERT INTO memory_entity_search (memory_entity_search, rowid, name_fold, type_fold)"
        " VALUES ('delete', ?, ?, ?)",
        [(row["id"], row["name_fold"], row["type_fold"]) for row in entity_rows],
    )
    conn.execute("DELETE FROM memory_entity_words WHERE rowid IN (SELECT value FROM json_each(?))", (ids,))
    conn.execute("DELETE FROM memory_entities WHERE owner = ? AND id IN (SELECT value FROM json_each(?))",
                 (owner, ids))
    stale(conn, owner, ENTITIES, [row["id"] for row in entity_rows])
    return observations


def _entity_ids(conn: sqlite3.Connection, owner: str, names: Sequence[str]) -> dict[str, int]:
    rows = _by_names(conn, "SELECT id, name FROM memory_entities WHERE owner = ? AND name IN ({})",
                     owner, _unique(names))
    return {row["name"]: row["id"] for row in rows}


def _observation_sets(conn: sqlite3.Connection, owner: str, entity_ids: Iterable[int]) -> dict[int, set[str]]:
    ids = list(entity_ids)
    present: dict[int, set[str]] = {entity_id: set() for entity_id in ids}
    rows = conn.execute(
        "SELECT entity_id, content FROM memory_observations"
        " WHERE owner = ? AND entity_id IN (SELECT value FROM json_each(?))",
        (owner, json.dumps(ids)),
    )
    for row in rows:
        present[row["entity_id"]].add(row["content"])
    return present


def _subgraph(conn: sqlite3.Connection, owner: str, entity_rows: Sequence[sqlite3.Row],
              keep: Callable[[str, str, Sequence[str]], bool] | None = None) -> GraphJSON:
    """The given entities (those `keep` accepts, given name, type and observations) with their
    observations, and the relations touching any of them."""
    observations = _observations(conn, owner, [row["id"] for row in entity_rows])
    if keep is not None:
        entity_rows = [row for row in entity_rows
                       if keep(row["name"], row["entity_type"], observations[row["id"]])]
    ids = json.dumps([row["id"] for row in entity_rows])
    relation_rows = conn.execute(_RELATIONS_TOUCHING, {"owner": owner, "ids": ids}).fetchall()
    entities = [entity_json(row["name"], row["entity_type"], observations[row["id"]]) for row in entity_rows]
    relations = [relation_json(row["from_name"], row["to_name"], row["relation_type"]) for row in relation_rows]
    # Each kind as one run of items, so that the text is escaped once per kind, not per item.
    return GraphJSON.of([piece(entities)], [piece(relations)])


# --- pages (server/memory/paging.py says what a page holds) ---------------------------------------

_DANGLING_RELATIONS = """
    SELECT r.id, r.from_name, r.to_name, r.relation_type FROM memory_relations AS r
    WHERE r.owner = :owner
      AND NOT EXISTS (SELECT 1 FROM memory_entities AS e WHERE e.owner = :owner AND e.name = r.from_name)
      AND NOT EXISTS (SELECT 1 FROM memory_entities AS e WHERE e.owner = :owner AND e.name = r.to_name)
"""


def _graph_page(conn: sqlite3.Connection, owner: str, after: Key | None, limit: int | None) -> GraphJSON:
    """A page of read_graph: the owner's entities after `after` in id order (one index range), and
    the relations the page holds, looking up the other endpoint of each by name."""
    sql = "SELECT id, name, entity_type FROM memory_entities WHERE owner = ? AND id > ? ORDER BY id"
    params: tuple[object, ...] = (owner, after[0] if after else 0)
    if limit is not None:
        sql += " LIMIT ?"
        params += (limit + 1,)
    entity_rows = conn.execute(sql, params).fetchall()
    more = limit is not None and len(entity_rows) > limit
    entity_rows = entity_rows[:limit]
    last = (int(entity_rows[-1]["id"]),) if more else None
    keys = {row["name"]: (int(row["id"]),) for row in entity_rows}
    relation_rows = conn.execute(_RELATIONS_TOUCHING, {"owner": owner, "ids": json.dumps(
        [row["id"] for row in entity_rows])}).fetchall()
    if more:
        others = _unique(name for row in relation_rows for name in (row["from_name"], row["to_name"])
                         if name not in keys)
        keys.update((name, (entity_id,)) for name, entity_id in _entity_ids(conn, owner, others).items())
    else:
        relation_rows = sorted([*relation_rows, *conn.execute(_DANGLING_RELATIONS, {"owner": owner})],
                               key=lambda row: int(row["id"]))
    return _page_json(conn, owner, entity_rows, relation_rows, keys.get, last)


def _subgraph_page(conn: sqlite3.Connection, owner: str, entity_rows: Sequence[sqlite3.Row], after: Key | None,
                   limit: int | None) -> GraphJSON:
    """A page of `_subgraph`'s answer for these entity rows (sorted by id): their key is (id,)."""
    keys = {row["name"]: (int(row["id"]),) for row in entity_rows}
    start, end, more = window([(int(row["id"]),) for row in entity_rows], after, limit)
    page = entity_rows[start:end]
    relation_rows = conn.execute(_RELATIONS_TOUCHING, {"owner": owner, "ids": json.dumps(
        [row["id"] for row in page])}).fetchall()
    return _page_json(conn, owner, page, relation_rows, keys.get, (int(page[-1]["id"]),) if more else None)


def _page_json(conn: sqlite3.Connection, owner: str, entity_rows: Sequence[sqlite3.Row],
               relation_rows: Sequence[sqlite3.Row], key_of: Callable[[str], Key | None], last: Key | None
               ) -> GraphJSON:
    observations = _observations(conn, owner, [row["id"] for row in entity_rows])
    entities = [entity_json(row["name"], row["entity_type"], observations[row["id"]]) for row in entity_rows]
    relations = page_relations(
        ((row["from_name"], row["to_name"], relation_json(row["from_name"], row["to_name"], row["relation_type"]))
         for row in relation_rows), key_of, last)
    return dataclasses.replace(GraphJSON.of([piece(entities)], [piece(relations)]), next_key=last)


def _observations(conn: sqlite3.Connection, owner: str, ids: Sequence[int]) -> dict[int, list[str]]:
    """Each entity's observations, in order."""
    observations: dict[int, list[str]] = {entity_id: [] for entity_id in ids}
    for entity_id, content in _tuples(conn).execute(
        "SELECT entity_id, content FROM memory_observations"
        " WHERE owner = ? AND entity_id IN (SELECT value FROM json_each(?)) ORDER BY entity_id, id",
        (owner, json.dumps(list(ids))),
    ):
        observations[entity_id].append(content)
    return observations


def _tuples(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """A cursor of plain tuples: for the statements of many rows, where a `sqlite3.Row` and the
    lookups by name are a measurable part of the time (a search fetches ~600 observations)."""
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor

"""The knowledge graph (`server.memory.graph.GraphStore`) on SQLite.

Schema
------

    memory_entities      (id INTEGER PRIMARY KEY, owner, name, entity_type, name_fold, type_fold)
        UNIQUE INDEX memory_entities_name  (owner, name)
        UNIQUE INDEX memory_entities_order (owner, id)
    memory_observations  (id INTEGER PRIMARY KEY, owner, entity_id, content, content_fold,
                          FOREIGN KEY (owner, entity_id) REFERENCES memory_entities (owner, id)
                          ON DELETE CASCADE)
        INDEX memory_observations_entity (owner, entity_id)
    memory_relations     (id INTEGER PRIMARY KEY, owner, from_name, to_name, relation_type)
        UNIQUE INDEX memory_relations_identity (owner, from_name, to_name, relation_type)
        INDEX memory_relations_to (owner, to_name)
    memory_entity_search       FTS5 (name_fold, type_fold), trigram, external content memory_entities
    memory_observation_search  FTS5 (content_fold), trigram, external content memory_observations
    memory_graph_chunks, memory_graph_generation   the read_graph view: server/storage/sqlite/graph_view.py

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
  trigram tokenizer (`case_sensitive 1`, as the text is already folded): a quoted phrase of three
  or more characters is then an exact substring match answered from the index, in well under a
  millisecond for a selective query (scripts/bench_memory.py). The index costs about as much space
  as the text it indexes. Queries shorter than three characters, which trigrams cannot answer,
  fall back to an `instr` scan of the owner's folded columns.
* The FTS tables are external-content tables over the folded columns, kept in step by this module
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
* Lists of names or ids go to SQLite as one JSON array (`json_each(?)`): one statement whatever
  the list length, no SQL built from strings, no bound-parameter limit.

Every mutation runs in one `BEGIN IMMEDIATE` transaction on the writer thread that touches only
its own rows, and every query in one read transaction on a reader thread (see db.py): each is
atomic with respect to other coroutines and other processes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import Final

from server.memory.graph import (
    AddedObservations,
    Entity,
    EntityNotFoundError,
    GraphJSON,
    ObservationAddition,
    ObservationDeletion,
    Relation,
    entity_json,
    piece,
    relation_json,
)
from server.storage.sqlite import graph_view
from server.storage.sqlite.db import Database
from server.storage.sqlite.graph_view import ENTITIES, RELATIONS, GraphView, stale

DELETE_BATCH: Final = 200
"""Entities (with their observations and relations) or relations deleted per transaction by
`delete_graph`: a few milliseconds of holding the write lock each."""

# Trigrams need a query of at least three characters to use the index.
_MIN_INDEXED_QUERY = 3

# CROSS JOIN fixes the join order: drive from the FTS hits and look each one up by rowid. Left to
# itself the planner walks every observation of the owner and probes the FTS index per row.
_SEARCH_INDEXED = """
    SELECT id, name, entity_type FROM memory_entities
    WHERE owner = :owner AND id IN (
        SELECT rowid FROM memory_entity_search WHERE memory_entity_search MATCH :phrase
        UNION ALL
        SELECT o.entity_id FROM memory_observation_search AS s CROSS JOIN memory_observations AS o ON o.id = s.rowid
        WHERE memory_observation_search MATCH :phrase AND o.owner = :owner)
    ORDER BY id
"""

# The observation subquery is not correlated: SQLite runs it once into a temporary index.
_SEARCH_SCAN = """
    SELECT id, name, entity_type FROM memory_entities
    WHERE owner = :owner AND (instr(name_fold, :q) > 0 OR instr(type_fold, :q) > 0 OR id IN (
        SELECT entity_id FROM memory_observations WHERE owner = :owner AND instr(content_fold, :q) > 0))
    ORDER BY id
"""

# A UNION of two index seeks per name. Written as one WHERE with OR, or without INDEXED BY, the
# planner (which has no statistics) prefers scanning all of the owner's relations in the covering
# unique index over seeking the names in memory_relations_to.
_RELATIONS_TOUCHING = """
    SELECT id, from_name, to_name, relation_type FROM memory_relations INDEXED BY memory_relations_identity
    WHERE owner = :owner AND from_name IN (SELECT value FROM json_each(:names))
    UNION
    SELECT id, from_name, to_name, relation_type FROM memory_relations INDEXED BY memory_relations_to
    WHERE owner = :owner AND to_name IN (SELECT value FROM json_each(:names))
    ORDER BY id
"""


class GraphTables:
    SCHEMA = """
        CREATE TABLE IF NOT EXISTS memory_entities (
            id          INTEGER PRIMARY KEY,
            owner       TEXT NOT NULL,
            name        TEXT NOT NULL,
            entity_type TEXT NOT NULL,
            name_fold   TEXT NOT NULL,
            type_fold   TEXT NOT NULL
        );
        CREATE UNIQUE INDEX IF NOT EXISTS memory_entities_name ON memory_entities (owner, name);
        CREATE UNIQUE INDEX IF NOT EXISTS memory_entities_order ON memory_entities (owner, id);
        CREATE TABLE IF NOT EXISTS memory_observations (
            id           INTEGER PRIMARY KEY,
            owner        TEXT NOT NULL,
            entity_id    INTEGER NOT NULL,
            content      TEXT NOT NULL,
            content_fold TEXT NOT NULL,
            FOREIGN KEY (owner, entity_id) REFERENCES memory_entities (owner, id) ON DELETE CASCADE
        );
        CREATE INDEX IF NOT EXISTS memory_observations_entity ON memory_observations (owner, entity_id);
        CREATE TABLE IF NOT EXISTS memory_relations (
            id            INTEGER PRIMARY KEY,
            owner         TEXT NOT NULL,
            from_name     TEXT NOT NULL,
            to_name       TEXT NOT NULL,
            relation_type TEXT NOT NULL
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
    """
    SCHEMA += graph_view.SCHEMA

    db: Database

    @staticmethod
    def migrate(db: Database) -> None:
        """Bring derived tables up to date with the rows (run after `SCHEMA`)."""
        graph_view.migrate(db)

    @cached_property
    def _view(self) -> GraphView:
        return GraphView(self.db)

    # --- mutations ---------------------------------------------------------------------------

    async def create_entities(self, owner: str, entities: Sequence[Entity]) -> list[Entity]:
        created: list[Entity] = []
        def write(conn: sqlite3.Connection) -> None:
            ids: list[int] = []
            for entity in entities:
                entity_id = _insert_entity(conn, owner, entity)
                if entity_id is None:
                    continue
                observations = _unique(entity.observations)
                _insert_observations(conn, owner, entity_id, observations)
                created.append(Entity(name=entity.name, entityType=entity.entityType, observations=observations))
                ids.append(entity_id)
            stale(conn, owner, ENTITIES, ids)
        await self.db.write(write)
        return created

    async def create_relations(self, owner: str, relations: Sequence[Relation]) -> list[Relation]:
        created: list[Relation] = []
        def write(conn: sqlite3.Connection) -> None:
            ids: list[int] = []
            for relation in relations:
                cursor = conn.execute(
                    "INSERT INTO memory_relations (owner, from_name, to_name, relation_type) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (owner, from_name, to_name, relation_type) DO NOTHING",
                    (owner, relation.from_, relation.to, relation.relationType),
                )
                if cursor.rowcount and cursor.lastrowid is not None:
                    created.append(relation)
                    ids.append(cursor.lastrowid)
            stale(conn, owner, RELATIONS, ids)
        await self.db.write(write)
        return created

    async def add_observations(self, owner: str, additions: Sequence[ObservationAddition]) -> list[AddedObservations]:
        results: list[AddedObservations] = []
        def write(conn: sqlite3.Connection) -> None:
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
                _insert_observations(conn, owner, entity_id, new)
                results.append(AddedObservations(entityName=addition.entityName, addedObservations=new))
            stale(conn, owner, ENTITIES, [ids[r.entityName] for r in results if r.addedObservations])
        await self.db.write(write)
        return results

    async def delete_entities(self, owner: str, names: Sequence[str]) -> None:
        params = {"owner": owner, "names": json.dumps(list(names))}
        def write(conn: sqlite3.Connection) -> None:
            # By name, not by existing entity: like the official server, this also clears
            # relations that point at names which were never created. Two statements, so that each
            # is an index seek per name (see _RELATIONS_TOUCHING).
            relation_ids = [row[0] for row in conn.execute(
                "DELETE FROM memory_relations INDEXED BY memory_relations_identity"
                " WHERE owner = :owner AND from_name IN (SELECT value FROM json_each(:names)) RETURNING id",
                params,
            ).fetchall()]
            relation_ids += [row[0] for row in conn.execute(
                "DELETE FROM memory_relations INDEXED BY memory_relations_to"
                " WHERE owner = :owner AND to_name IN (SELECT value FROM json_each(:names)) RETURNING id",
                params,
            ).fetchall()]
            stale(conn, owner, RELATIONS, relation_ids)
            entity_rows = conn.execute(
                "SELECT id, name_fold, type_fold FROM memory_entities"
                " WHERE owner = :owner AND name IN (SELECT value FROM json_each(:names))",
                params,
            ).fetchall()
            entity_ids = {"owner": owner, "ids": json.dumps([row["id"] for row in entity_rows])}
            _delete_observations(
                conn,
                "SELECT id, entity_id, content_fold FROM memory_observations"
                " WHERE owner = :owner AND entity_id IN (SELECT value FROM json_each(:ids))",
                entity_ids,
            )
            conn.executemany(
                "INSERT INTO memory_entity_search (memory_entity_search, rowid, name_fold, type_fold)"
                " VALUES ('delete', ?, ?, ?)",
                [(row["id"], row["name_fold"], row["type_fold"]) for row in entity_rows],
            )
            conn.execute(
                "DELETE FROM memory_entities WHERE owner = :owner AND id IN (SELECT value FROM json_each(:ids))",
                entity_ids,
            )
            stale(conn, owner, ENTITIES, [row["id"] for row in entity_rows])
        await self.db.write(write)

    async def delete_observations(self, owner: str, deletions: Sequence[ObservationDeletion]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            touched: list[int] = []
            for deletion in deletions:
                touched += _delete_observations(
                    conn,
                    "SELECT id, entity_id, content_fold FROM memory_observations WHERE owner = :owner"
                    " AND entity_id = (SELECT id FROM memory_entities WHERE owner = :owner AND name = :name)"
                    " AND content IN (SELECT value FROM json_each(:contents))",
                    {"owner": owner, "name": deletion.entityName, "contents": json.dumps(deletion.observations)},
                )
            stale(conn, owner, ENTITIES, touched)
        await self.db.write(write)

    async def delete_relations(self, owner: str, relations: Sequence[Relation]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            # One statement per relation: executemany cannot return the deleted ids.
            ids = [row[0] for r in relations for row in conn.execute(
                "DELETE FROM memory_relations WHERE owner = ? AND from_name = ? AND to_name = ? AND relation_type = ?"
                " RETURNING id",
                (owner, r.from_, r.to, r.relationType),
            ).fetchall()]
            stale(conn, owner, RELATIONS, ids)
        await self.db.write(write)

    # --- queries -----------------------------------------------------------------------------
    # Each in one read transaction on a reader thread: its statements see one state of the file.

    async def delete_graph(self, owner: str) -> int:
        # Through delete_entities, which keeps the search index in step, then whatever relations
        # name entities that never existed. In batches, each its own short transaction, so that a
        # large graph never holds the write lock for long (other processes, and this one's other
        # writers, get their turn between batches); re-running finishes an interrupted removal.
        deleted, after = 0, -1
        # By id, in creation order from where the last batch ended: progress whatever the
        # deletion of one batch leaves behind.
        while batch := await self.db.read(_entity_batch, owner, after, DELETE_BATCH):
            await self.delete_entities(owner, [name for _, name in batch])
            deleted += len(batch)
            after = batch[-1][0]
        while await self.db.write(_delete_some_relations, owner, DELETE_BATCH):
            pass

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM memory_graph_chunks WHERE owner = ?", (owner,))
        await self.db.write(write)
        self._view.forget(owner)
        return deleted

    async def read_graph(self, owner: str) -> GraphJSON:
        return await self._view.read(owner)

    async def search_nodes(self, owner: str, query: str) -> GraphJSON:
        def read(conn: sqlite3.Connection) -> GraphJSON:
            folded = query.lower()
            if len(folded) >= _MIN_INDEXED_QUERY and "\0" not in folded:
                # A quoted FTS5 string is taken literally; only its quote character needs doubling.
                phrase = '"' + folded.replace('"', '""') + '"'
                entity_rows = conn.execute(_SEARCH_INDEXED, {"owner": owner, "phrase": phrase}).fetchall()
            else:
                entity_rows = conn.execute(_SEARCH_SCAN, {"owner": owner, "q": folded}).fetchall()
            return _subgraph(conn, owner, entity_rows)
        return await self.db.read(read)

    async def open_nodes(self, owner: str, names: Sequence[str]) -> GraphJSON:
        def read(conn: sqlite3.Connection) -> GraphJSON:
            entity_rows = conn.execute(
                # INDEXED BY: without statistics the planner would rather walk all of the owner's
                # entities in memory_entities_order, to save sorting the few it returns.
                "SELECT id, name, entity_type FROM memory_entities INDEXED BY memory_entities_name"
                " WHERE owner = ? AND name IN (SELECT value FROM json_each(?)) ORDER BY id",
                (owner, json.dumps(list(names))),
            ).fetchall()
            return _subgraph(conn, owner, entity_rows)
        return await self.db.read(read)


def _entity_batch(conn: sqlite3.Connection, owner: str, after: int, limit: int) -> list[tuple[int, str]]:
    return [(row["id"], row["name"]) for row in conn.execute(
        "SELECT id, name FROM memory_entities WHERE owner = ? AND id > ? ORDER BY id LIMIT ?", (owner, after, limit))]


def _delete_some_relations(conn: sqlite3.Connection, owner: str, limit: int) -> int:
    ids = [row[0] for row in conn.execute(
        "DELETE FROM memory_relations WHERE id IN (SELECT id FROM memory_relations WHERE owner = ? LIMIT ?)"
        " RETURNING id", (owner, limit)).fetchall()]
    stale(conn, owner, RELATIONS, ids)  # a read between two batches sees the rows as they are
    return len(ids)


def _unique(items: Iterable[str]) -> list[str]:
    """First occurrence of each item, in order."""
    return list(dict.fromkeys(items))


def _insert_entity(conn: sqlite3.Connection, owner: str, entity: Entity) -> int | None:
    """The new row's id, or None when the owner already has an entity of that name."""
    name_fold, type_fold = entity.name.lower(), entity.entityType.lower()
    cursor = conn.execute(
        "INSERT INTO memory_entities (owner, name, entity_type, name_fold, type_fold) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (owner, name) DO NOTHING",
        (owner, entity.name, entity.entityType, name_fold, type_fold),
    )
    if cursor.rowcount == 0 or cursor.lastrowid is None:
        return None
    conn.execute(
        "INSERT INTO memory_entity_search (rowid, name_fold, type_fold) VALUES (?, ?, ?)",
        (cursor.lastrowid, name_fold, type_fold),
    )
    return cursor.lastrowid


def _insert_observations(conn: sqlite3.Connection, owner: str, entity_id: int, contents: Sequence[str]) -> None:
    indexed: list[tuple[int | None, str]] = []
    for content in contents:
        folded = content.lower()
        cursor = conn.execute(
            "INSERT INTO memory_observations (owner, entity_id, content, content_fold) VALUES (?, ?, ?, ?)",
            (owner, entity_id, content, folded),
        )
        indexed.append((cursor.lastrowid, folded))
    conn.executemany("INSERT INTO memory_observation_search (rowid, content_fold) VALUES (?, ?)", indexed)


def _delete_observations(conn: sqlite3.Connection, select: str, params: Mapping[str, str]) -> list[int]:
    """Delete the observations `select` returns (columns id, entity_id, content_fold), and unindex
    them; returns the ids of the entities that lost any."""
    rows = conn.execute(select, params).fetchall()
    conn.executemany(
        "INSERT INTO memory_observation_search (memory_observation_search, rowid, content_fold)"
        " VALUES ('delete', ?, ?)",
        [(row["id"], row["content_fold"]) for row in rows],
    )
    conn.execute(
        "DELETE FROM memory_observations WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps([row["id"] for row in rows]),),
    )
    return [row["entity_id"] for row in rows]


def _entity_ids(conn: sqlite3.Connection, owner: str, names: Sequence[str]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT id, name FROM memory_entities WHERE owner = ? AND name IN (SELECT value FROM json_each(?))",
        (owner, json.dumps(_unique(names))),
    )
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


def _subgraph(conn: sqlite3.Connection, owner: str, entity_rows: Sequence[sqlite3.Row]) -> GraphJSON:
    """The given entities with their observations, and the relations touching any of them."""
    observations: dict[int, list[str]] = {row["id"]: [] for row in entity_rows}
    for row in conn.execute(
        "SELECT entity_id, content FROM memory_observations"
        " WHERE owner = ? AND entity_id IN (SELECT value FROM json_each(?)) ORDER BY entity_id, id",
        (owner, json.dumps(list(observations))),
    ):
        observations[row["entity_id"]].append(row["content"])
    names = json.dumps([row["name"] for row in entity_rows])
    relation_rows = conn.execute(_RELATIONS_TOUCHING, {"owner": owner, "names": names}).fetchall()
    entities = [entity_json(row["name"], row["entity_type"], observations[row["id"]]) for row in entity_rows]
    relations = [relation_json(row["from_name"], row["to_name"], row["relation_type"]) for row in relation_rows]
    # Each kind as one run of items, so that the text is escaped once per kind, not per item.
    return GraphJSON.of([piece(entities)], [piece(relations)])

"""The materialized view behind `read_graph` on SQLite, and this process's copy of it.

Schema
------

    memory_graph_chunks      (id INTEGER PRIMARY KEY, owner, kind, chunk, generation, json, text)
        UNIQUE INDEX memory_graph_chunks_key (owner, kind, chunk)
    memory_graph_generation  (only = 0, value)   one row: the last generation handed out

Why it exists
-------------

The whole graph is the one result whose size grows with the store: 10,000 entities are 4-5 MB of
JSON, and building that from 60,000 rows on every call cost ~300 ms before any byte was sent. So
the owner's entities are cut into chunks by id (`id >> 7`, at most 128 per chunk), relations
likewise (`kind` 0 and 1), and each chunk row holds its items' JSON exactly as the tool returns
them (compact, comma-separated, no brackets), and the same JSON escaped for the result's text
block (`server.memory.graph.GraphJSON`), which would otherwise be escaped again on every call.
`read_graph` is the owner's chunks in key order, joined.

Rules that keep it exact:

* every mutation marks the chunks of the rows it touched stale (`generation`, `json` and `text`
  NULL), inserting the chunk row if there is none, in the same transaction as the change
  (`stale`); so every chunk that holds a row has a chunk row, and a chunk with JSON is never older
  than its rows;
* stale chunks are rebuilt inside `BEGIN IMMEDIATE`, so that no writer (in this process or
  another) can change a chunk's rows between reading them and storing its JSON; a chunk that
  turned out empty is deleted;
* a rebuild stamps the chunks it stores with a new generation from `memory_graph_generation`, a
  counter that only grows and is shared by every owner: a (owner, kind, chunk, generation) is
  therefore never stored twice with different contents, in any process, even for a chunk that was
  deleted and created again;
* `migrate` inserts stale rows for any rows without a chunk (a database from before the view
  existed), and drops a chunk table of an older layout (it is derived data), so the view repairs
  itself at start-up.

This process's copy (`GraphView`)
---------------------------------

Reading 9 MB of chunks back out of SQLite was, after the view existed, half of a 10,000-entity
`read_graph` (docs/performance.md). `GraphView` keeps the chunks it last read, per owner, with their
generations. A read lists the owner's (kind, chunk, generation) triples, which sit in the rows'
first bytes and cost no blob reads, and fetches only the chunks whose generation it does not hold:
a repeated read fetches nothing, a read after a write fetches the chunks the write touched. The
list and the fetch run in one read transaction, so they see one state of the file. Any process
may write and rebuild; the generations tell every other process which of its copies are out of
date, so nothing needs invalidating by hand. The copy holds at most `VIEW_CACHE_BYTES` in all,
dropping the least recently read owners first; an owner whose graph alone is larger is served
without being kept.

Cost: the view stores the graph's text twice more (JSON and escaped; the FTS index is another
copy), and a mutation pays one more upsert; a read after a write rebuilds only the chunks that
write touched (~1 ms each).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Final

from auth.store import StoreUnavailable
from server.memory.graph import GraphJSON, Piece, entity_json, piece, relation_json
from server.storage.sqlite.db import Database
from server.storage.view_copy import HeldChunks

ENTITIES: Final = 0
RELATIONS: Final = 1
_CHUNK_BITS: Final = 7

VIEW_CACHE_BYTES: Final = 64 * 1024 * 1024
"""How much of the view one process keeps in memory: a 10,000-entity graph is about 9 MB."""

SCHEMA = """
    CREATE TABLE IF NOT EXISTS memory_graph_chunks (
        id         INTEGER PRIMARY KEY,
        owner      TEXT NOT NULL,
        kind       INTEGER NOT NULL,
        chunk      INTEGER NOT NULL,
        generation INTEGER,
        json       BLOB,
        text       BLOB
    );
    CREATE UNIQUE INDEX IF NOT EXISTS memory_graph_chunks_key ON memory_graph_chunks (owner, kind, chunk);
    CREATE TABLE IF NOT EXISTS memory_graph_generation (
        only  INTEGER PRIMARY KEY CHECK (only = 0),
        value INTEGER NOT NULL
    );
"""
# A rowid table with a separate key index, not WITHOUT ROWID: in a WITHOUT ROWID table every row
# is an index key, and SQLite reads a whole key (overflow pages included, so the chunk's blobs)
# to compare it with a range bound, which made listing 80 chunks cost 2 ms. Here the key is in the
# index, and `generation` comes before the blobs: a row's columns are stored in declaration order,
# so reading the generation stops within the row's first page, never touching the overflow pages
# where the chunk's JSON lives.

ChunkKey = tuple[int, int]
"""(kind, chunk)"""
_Held = tuple[int, Piece]
"""A chunk's generation and its JSON."""


def migrate(db: Database) -> None:
    """Bring the view up to date with the rows (run after `SCHEMA`)."""
    columns = [row[1] for row in db.conn.execute("PRAGMA table_info(memory_graph_chunks)")]
    if "generation" not in columns or "id" not in columns:
        with db.transaction() as conn:
            conn.execute("DROP TABLE memory_graph_chunks")
        db.apply_schema(SCHEMA)
    with db.transaction() as conn:
        # `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the INSERT, not a join.
        conn.execute(
            "INSERT INTO memory_graph_chunks (owner, kind, chunk)"
            " SELECT DISTINCT owner, ?, id >> ? FROM memory_entities WHERE true"
            " ON CONFLICT (owner, kind, chunk) DO NOTHING",
            (ENTITIES, _CHUNK_BITS),
        )
        conn.execute(
            "INSERT INTO memory_graph_chunks (owner, kind, chunk)"
            " SELECT DISTINCT owner, ?, id >> ? FROM memory_relations WHERE true"
            " ON CONFLICT (owner, kind, chunk) DO NOTHING",
            (RELATIONS, _CHUNK_BITS),
        )


def stale(conn: sqlite3.Connection, owner: str, kind: int, ids: Iterable[int]) -> None:
    """Mark the chunks holding these rows stale, inside the caller's (writing) transaction."""
    chunks = sorted({row_id >> _CHUNK_BITS for row_id in ids})
    if chunks:
        conn.execute(
            "INSERT INTO memory_graph_chunks (owner, kind, chunk) SELECT ?, ?, value FROM json_each(?)"
            " WHERE true ON CONFLICT (owner, kind, chunk) DO UPDATE SET generation = NULL, json = NULL, text = NULL",
            (owner, kind, json.dumps(chunks)),
        )


class GraphView(HeldChunks[ChunkKey, int, Piece]):
    """`read_graph` from the view, through this process's copy of the chunks (see the module)."""

    def __init__(self, db: Database, budget: int = VIEW_CACHE_BYTES) -> None:
        self.db = db
        super().__init__(budget)

    async def read(self, owner: str) -> GraphJSON:
        # The copy is only ever changed on the loop (`_keep`); a thread gets this owner's held
        # chunks, a dict nobody mutates once kept.
        held = self._held[owner][0] if owner in self._held else {}
        chunks = await self.db.read(self._read_fresh, owner, held)
        if chunks is None:
            try:
                chunks = await self.db.try_write(self._rebuild_and_read, owner, held)
            except StoreUnavailable:
                # The rebuild cannot write at once (the lock is held elsewhere, the writer is
                # busy, the disk is full or read-only): a read never waits for the write lock, so
                # the same bytes are built from the rows without storing them.
                chunks = await self.db.read(self._read_unstored, owner, held)
                return _graph(chunks)
        self._keep(owner, chunks)
        return _graph(chunks)

    def _read_fresh(self, conn: sqlite3.Connection, owner: str, held: dict[ChunkKey, _Held]
                    ) -> dict[ChunkKey, _Held] | None:
        """The chunks when none is stale (one read transaction); None when some must be rebuilt."""
        listing = _listing(conn, owner)
        if any(generation is None for _, generation in listing):
            return None
        return self._current(conn, owner, listing, {}, held)

    def _rebuild_and_read(self, conn: sqlite3.Connection, owner: str, held: dict[ChunkKey, _Held]
                          ) -> dict[ChunkKey, _Held]:
        """Inside BEGIN IMMEDIATE: rebuild the stale chunks, then read them all."""
        rebuilt = _rebuild_stale(conn, owner)
        return self._current(conn, owner, _listing(conn, owner), rebuilt, held)

    def _read_unstored(self, conn: sqlite3.Connection, owner: str, held: dict[ChunkKey, _Held]
                       ) -> dict[ChunkKey, _Held]:
        """Inside a read transaction: stale chunks built from their rows and not stored (their
        generation stays unknown, -1, so that nothing keeps them), the others as usual."""
        listing = _listing(conn, owner)
        built: dict[ChunkKey, _Held] = {}
        for (kind, chunk), generation in listing:
            if generation is None:
                chunk_piece = _build(conn, owner, kind, chunk)
                if chunk_piece is not None:
                    built[kind, chunk] = (-1, chunk_piece)
        current = [(key, -1 if generation is None else generation) for key, generation in listing
                   if generation is not None or key in built]
        return self._current(conn, owner, current, built, held)

    @staticmethod
    def _current(conn: sqlite3.Connection, owner: str, listing: Sequence[tuple[ChunkKey, int | None]],
                 rebuilt: dict[ChunkKey, _Held], held: dict[ChunkKey, _Held]) -> dict[ChunkKey, _Held]:
        """The owner's chunks in key order: from `rebuilt`, else from the copy when its generation is
        current, else fetched."""
        chunks: dict[ChunkKey, _Held] = {}
        missing: list[ChunkKey] = []
        for key, generation in listing:
            known = rebuilt.get(key) or held.get(key)
            if known is not None and known[0] == generation:
                chunks[key] = known
            else:
                missing.append(key)
                chunks[key] = (-1, (b"", b""))  # keeps the key order; filled in below
        if missing:
            cursor = conn.cursor()
            cursor.row_factory = None
            # Scanning the owner's range reads only the key of a chunk that is not wanted, not its blobs.
            for kind, chunk, generation, data, text in cursor.execute(
                "SELECT kind, chunk, generation, json, text FROM memory_graph_chunks"
                " WHERE owner = ? AND (kind << 32 | chunk) IN (SELECT value FROM json_each(?))",
                (owner, json.dumps([kind << 32 | chunk for kind, chunk in missing])),
            ):
                chunks[kind, chunk] = (generation, (data, text))
        return chunks



def _graph(chunks: dict[ChunkKey, _Held]) -> GraphJSON:
    pieces: tuple[list[Piece], list[Piece]] = ([], [])
    for (kind, _), (_, chunk_piece) in chunks.items():
        pieces[kind].append(chunk_piece)
    return GraphJSON.of(*pieces)


def _listing(conn: sqlite3.Connection, owner: str) -> list[tuple[ChunkKey, int | None]]:
    cursor = conn.cursor()
    cursor.row_factory = None
    return [((kind, chunk), generation) for kind, chunk, generation in cursor.execute(
        "SELECT kind, chunk, generation FROM memory_graph_chunks WHERE owner = ? ORDER BY kind, chunk", (owner,))]


def _rebuild_stale(conn: sqlite3.Connection, owner: str) -> dict[ChunkKey, _Held]:
    """Rebuild the owner's stale chunks (inside the caller's BEGIN IMMEDIATE); the non-empty ones."""
    generation: int = conn.execute(
        "INSERT INTO memory_graph_generation (only, value) VALUES (0, 1)"
        " ON CONFLICT (only) DO UPDATE SET value = value + 1 RETURNING value").fetchone()[0]
    rebuilt: dict[ChunkKey, _Held] = {}
    for kind, chunk in conn.execute(
            "SELECT kind, chunk FROM memory_graph_chunks WHERE owner = ? AND generation IS NULL", (owner,)
    ).fetchall():
        chunk_piece = _rebuild(conn, owner, kind, chunk, generation)
        if chunk_piece is not None:
            rebuilt[kind, chunk] = (generation, chunk_piece)
    return rebuilt


def _rebuild(conn: sqlite3.Connection, owner: str, kind: int, chunk: int, generation: int) -> Piece | None:
    """Build a stale chunk from its rows and store it; None when it has no rows left (deleted)."""
    chunk_piece = _build(conn, owner, kind, chunk)
    key = (owner, kind, chunk)
    if chunk_piece is None:
        conn.execute("DELETE FROM memory_graph_chunks WHERE owner = ? AND kind = ? AND chunk = ?", key)
        return None
    data, text = chunk_piece
    conn.execute("UPDATE memory_graph_chunks SET generation = ?, json = ?, text = ?"
                 " WHERE owner = ? AND kind = ? AND chunk = ?", (generation, data, text, *key))
    return data, text


def _build(conn: sqlite3.Connection, owner: str, kind: int, chunk: int) -> Piece | None:
    """A chunk's JSON from its rows; None when it has none."""
    bounds = {"owner": owner, "low": chunk << _CHUNK_BITS, "high": ((chunk + 1) << _CHUNK_BITS) - 1}
    cursor = conn.cursor()
    cursor.row_factory = None
    items: list[bytes]
    if kind == ENTITIES:
        entity_rows = cursor.execute(
            "SELECT id, name, entity_type FROM memory_entities WHERE owner = :owner AND id BETWEEN :low AND :high"
            " ORDER BY id", bounds).fetchall()
        observations: dict[int, list[str]] = {row[0]: [] for row in entity_rows}
        for entity_id, content in cursor.execute(
            "SELECT entity_id, content FROM memory_observations"
            " WHERE owner = :owner AND entity_id BETWEEN :low AND :high ORDER BY entity_id, id", bounds):
            observations[entity_id].append(content)
        items = [entity_json(name, entity_type, observations[entity_id])
                 for entity_id, name, entity_type in entity_rows]
    else:
        items = [relation_json(*row) for row in cursor.execute(
            "SELECT from_name, to_name, relation_type FROM memory_relations"
            " WHERE owner = :owner AND id BETWEEN :low AND :high ORDER BY id", bounds)]
    return piece(items) if items else None

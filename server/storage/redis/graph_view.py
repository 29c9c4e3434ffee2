"""The read_graph view on Redis, and this process's copy of it: the contract of
`server/storage/sqlite/graph_view.py`, on Redis keys.

    graph:chunks:<owner>   hash  "e<n>" / "r<n>" -> generation, or "-<stamp>" while stale
    graph:view:<owner>     hash  "e<n>" / "r<n>" -> the chunk's items as JSON, comma-led (`Piece`)

An owner's entities are cut into chunks by id (`id // 128`: chunk "e<n>"), relations likewise
("r<n>"), and each chunk's JSON is kept exactly as the tool returns it, so that a whole graph is
served by joining pieces, never by building 10,000 entities' JSON on each call.

Rules that keep it exact (graph.py's scripts and the two scripts here):

* every mutation marks the chunks of the rows it touched stale with its stamp, in the same script
  as the change. The stamp is new each time, so a chunk that changed again while a reader was
  rebuilding it does not carry the stamp that reader saw;
* `_READ` is one script, so one state of the owner's keys: the listing, the JSON of every fresh
  chunk this process does not hold at that generation, and the rows of every stale chunk. The
  reply is a consistent graph whatever happens after it;
* `_STORE` stores a rebuilt chunk only if its stamp is still the one `_READ` returned (compare and
  set, in one script), under a new generation; a chunk found empty is deleted instead;
* stamps and generations are 64 random bits drawn by the process that writes (`new_stamp`), not a
  counter: a (owner, chunk, generation) never names two different contents, even for a chunk
  deleted and created again, and even after Redis lost writes (restarted without them, or
  restored from an older snapshot while servers ran), where a counter would hand out again
  numbers that some process's copy holds for other contents. Lua cannot draw them: Redis seeds
  its random generator the same way for every script;
* `delete_graph` UNLINKs both keys with the graph, so no chunk outlives it, and a rebuild racing
  the removal finds no stamp to match.

This process's copy (`RedisGraphView`): the chunks it last read, per owner, with their
generations; `_READ` is told which it holds and sends only the others, so a repeated read moves a
few hundred bytes, and a read after a write moves (or rebuilds) only the chunks the write
touched. Redis keeps only the JSON; the escaped text of the tool result (`GraphJSON.text`) is
derived here once per chunk fetched, since Redis memory is the dearer resource. The copy holds at
most `VIEW_CACHE_BYTES`, least recently read owners dropped first, as on SQLite.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis import exceptions as redis_errors

from server.memory.graph import GraphJSON, Piece
from server.storage.redis.base import RedisBase, unavailable
from server.storage.view_copy import HeldChunks

SEP: Final = b"\xff"
"""Between the texts of a record: a byte that valid UTF-8 never contains (graph.py)."""
END: Final = b"\xfe"
"""Between records where several travel as one string."""
VIEW_CACHE_BYTES: Final = 64 * 1024 * 1024
"""How much of the view one process keeps in memory: a 10,000-entity graph is about 9 MB."""

PRELUDE: Final = r"""
local SEP = '\255'
local CHUNK = 128  -- ids per chunk of the view and of the folds, as SQLite's view (1 << 7)

-- A chunk's folded records are one string: each folded record followed by its entity's id, as
-- TAG, the id in base 8 with digits written as the bytes F5..FC, and TAG_END. None of these bytes
-- occurs in UTF-8, so a query can match only inside one folded text.
local TAG, TAG_END = '\254', '\253'

local function tag(id)
  local n, digits = tonumber(id), {}
  repeat
    digits[#digits + 1] = string.char(245 + n % 8)
    n = math.floor(n / 8)
  until n == 0
  return string.reverse(table.concat(digits))
end

local function untag(bytes)
  local n = 0
  for i = 1, #bytes do n = n * 8 + string.byte(bytes, i) - 245 end
  return n
end

-- Iterate a chunk's folded records: id, folded record.
local function each_fold(blob)
  local position = 1
  return function()
    if position > #blob then return nil end
    local mark = string.find(blob, TAG, position, true)
    local stop = string.find(blob, TAG_END, mark, true)
    local fold = string.sub(blob, position, mark - 1)
    position = stop + 1
    return untag(string.sub(blob, mark + 1, stop - 1)), fold
  end
end

-- The texts of a record (SEP never occurs inside one).
local function split(record)
  local texts, position = {}, 1
  while true do
    local found = string.find(record, SEP, position, true)
    if found == nil then
      texts[#texts + 1] = string.sub(record, position)
      return texts
    end
    texts[#texts + 1] = string.sub(record, position, found - 1)
    position = found + 1
  end
end
"""

# KEYS: chunks, view, entities, relations. ARGV: pairs (chunk, generation) this process holds.
# Returns per chunk: {chunk, generation} when held, {chunk, generation, json} when fresh, and
# {chunk, stamp, {the 128 rows of its id range, false where none}} when stale.
_READ = PRELUDE + """
local held = {}
for i = 1, #ARGV, 2 do held[ARGV[i]] = ARGV[i + 1] end
local listing = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #listing, 2 do
  local chunk, marker = listing[i], listing[i + 1]
  local data = false
  if string.sub(marker, 1, 1) ~= '-' then
    if held[chunk] == marker then
      out[#out + 1] = {chunk, marker}
    else
      data = redis.call('HGET', KEYS[2], chunk)
    end
  end
  if data then
    out[#out + 1] = {chunk, marker, data}
  elseif held[chunk] ~= marker then
    local first, ids = tonumber(string.sub(chunk, 2)) * CHUNK, {}
    for id = first, first + CHUNK - 1 do ids[#ids + 1] = id end
    local rows = KEYS[string.sub(chunk, 1, 1) == 'e' and 3 or 4]
    out[#out + 1] = {chunk, marker, redis.call('HMGET', rows, unpack(ids))}
  end
end
return out
"""

# KEYS: chunks, view. ARGV: the new generation, then triples (chunk, stamp, json; "" for an empty
# chunk). Returns per chunk 1 if stored, 0 if deleted, -1 if it changed meanwhile (not stored).
_STORE = """
local generation, out = ARGV[1], {}
for i = 2, #ARGV, 3 do
  local chunk, stamp, json = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HGET', KEYS[1], chunk) ~= stamp then
    out[#out + 1] = -1
  elseif json == '' then
    redis.call('HDEL', KEYS[1], chunk)
    redis.call('HDEL', KEYS[2], chunk)
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[1], chunk, generation)
    redis.call('HSET', KEYS[2], chunk, json)
    out[#out + 1] = 1
  end
end
return out
"""

@dataclass(frozen=True, slots=True)
class OwnerKeys:
    """The keys of one owner's graph, in the order every graph script takes them (graph.py)."""

    owner: str
    names: str
    entities: str
    folds: str
    triples: str
    relations: str
    ends: str
    chunks: str
    view: str
    origins: str
    words: str
    index: str

    @classmethod
    def of(cls, base: RedisBase, owner: str) -> OwnerKeys:
        def key(kind: str) -> str:
            return base.key("graph", kind, owner)

        return cls(owner=key("owner"), names=key("names"), entities=key("entities"), folds=key("folds"),
                   triples=key("triples"), relations=key("relations"), ends=key("ends"), chunks=key("chunks"),
                   view=key("view"), origins=key("origins"), words=key("words"), index=key("index"))

    @property
    def all(self) -> list[str]:
        return [self.owner, self.names, self.entities, self.folds, self.triples, self.relations, self.ends,
                self.chunks, self.view, self.origins, self.words, self.index]


_WORK_PER_TURN: Final = 8
"""Chunks fetched (1 each) or rebuilt (4 each) between two turns of the event loop."""


def new_stamp() -> str:
    """A stamp or a generation: 64 random bits (see the module)."""
    return secrets.token_hex(8)


ChunkKey = bytes
"""b"e<n>" or b"r<n>"."""
_Held = tuple[bytes, Piece]
"""A chunk's generation (as Redis has it; b"" when not stored) and its JSON."""


class RedisGraphView(HeldChunks[ChunkKey, bytes, Piece]):
    """`read_graph` from the view, through this process's copy of the chunks (see the module)."""

    def __init__(self, base: RedisBase, budget: int = VIEW_CACHE_BYTES) -> None:
        self.base = base
        super().__init__(budget)
        self._read = base.script(_READ)
        self._store = base.script(_STORE)

    async def read(self, owner: str) -> GraphJSON:
        keys = OwnerKeys.of(self.base, owner)
        held, known = self._known(owner)
        reply: list[list[Any]] = await self._read(keys=[keys.chunks, keys.view, keys.entities, keys.relations],
                                                  args=known)
        chunks: dict[ChunkKey, _Held] = {}
        rebuilt: list[bytes] = []
        work = 0
        for chunk, marker, *data in reply:
            if not data:
                chunks[chunk] = held[chunk]
                continue
            if work >= _WORK_PER_TURN:
                # A process's first read of a large graph handles ~80 chunks: the loop gets a turn
                # between every few (about a millisecond of work each when rebuilt).
                await asyncio.sleep(0)
                work = 0
            if isinstance(data[0], bytes):
                chunks[chunk] = (marker, (data[0], _escaped(data[0])))
                work += 1
            else:
                built = _build(chunk, data[0])
                rebuilt += [chunk, marker, built[0]]
                if built[0]:
                    chunks[chunk] = (b"", built)
                work += 4
        if rebuilt:
            await self._store_rebuilt(keys.chunks, keys.view, rebuilt, chunks)
        ordered = dict(sorted(chunks.items(), key=lambda item: _order(item[0])))
        self._keep(owner, ordered)
        return _graph(ordered)

    async def _store_rebuilt(self, chunks_key: str, view_key: str, rebuilt: list[bytes],
                             chunks: dict[ChunkKey, _Held]) -> None:
        """Store the chunks this read rebuilt; the copy keeps those stored under their generation.
        The read does not depend on it: a Redis that cannot take the write now still got the rows
        read, and the graph is served from them (as SQLite serves it when it cannot write)."""
        generation = new_stamp().encode()
        try:
            stored = await self._store(keys=[chunks_key, view_key], args=[generation, *rebuilt])
        except redis_errors.RedisError as exc:
            if unavailable(exc) is None:
                raise
            return
        for chunk, outcome in zip(rebuilt[::3], stored, strict=True):
            if outcome > 0 and chunk in chunks:
                chunks[chunk] = (generation, chunks[chunk][1])



def _order(chunk: ChunkKey) -> tuple[bool, int]:
    return chunk[:1] != b"e", int(chunk[1:])


def _escaped(data: bytes) -> bytes:
    """A chunk's JSON as the inside of a JSON string (`Piece`)."""
    return orjson.dumps(data.decode())[1:-1]


def _build(chunk: ChunkKey, rows: list[bytes | None]) -> Piece:
    """A chunk's piece from its rows (in id order; None where no row); empty when it has none."""
    texts = [texts_of(row) for row in rows if row is not None]
    return entity_pieces(texts) if chunk[:1] == b"e" else relation_pieces(texts)


def texts_of(record: bytes) -> list[str]:
    return [text.decode() for text in record.split(SEP)]


def entity_pieces(texts: list[list[str]]) -> Piece:
    """The piece of these entities (name, type, observations...): the items `entity_json` makes,
    dumped by orjson as one list, since a list's items are written exactly as each alone."""
    return _piece([{"name": t[0], "entityType": t[1], "observations": t[2:]} for t in texts])


def relation_pieces(texts: list[list[str]]) -> Piece:
    """As `entity_pieces`, for relations (from, to, type), the items of `relation_json`."""
    return _piece([{"from": t[0], "to": t[1], "relationType": t[2]} for t in texts])


def _piece(items: list[dict[str, Any]]) -> Piece:
    if not items:
        return b"", b""
    run = b"," + orjson.dumps(items)[1:-1]
    return run, _escaped(run)


def _graph(chunks: dict[ChunkKey, _Held]) -> GraphJSON:
    pieces: tuple[list[Piece], list[Piece]] = ([], [])
    for chunk, (_, chunk_piece) in chunks.items():
        pieces[chunk[:1] != b"e"].append(chunk_piece)
    return GraphJSON.of(*pieces)

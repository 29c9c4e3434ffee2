"""This process's copy of an owner's folds and words, where search_nodes finds its facts on Redis.

A search needs two kinds of facts (server/memory/search.py): the entities whose lowered name,
type or observation contains the query (the floor), and for each query word the entities with a
word starting with it. Redis has neither index, and whatever a script reads it first copies into
Lua, at ~400 MB/s: the folds alone of 100,000 entities and 500,000 observations (~35 MB) cost
100-130 ms of Redis per query, during which it serves nobody else (docs/performance.md). So each
process keeps a copy of the folds and word records of the graphs it searches, finds the facts
here, and gives them to the search script, which does the rest (the rank, the page, the records)
provided the copy is of the graph as it is when the script runs:

* Every mutation script makes its random stamp the graph's `version` (graph:owner), in the same
  atomic step as its write (graph.py, `mark`), and marks the view chunks of what it touched stale
  with the same stamp (graph_view.py). The copy holds, per chunk, the view chunk's marker it was
  read under, and the version of the graph it was read at.
* `sync` is one script (`_SYNC`): the version, and the folds and word records of every chunk
  whose marker is not the one held (`_SYNC` is told which), so after a write the copy fetches
  what the write touched, not the graph. A chunk's folds and words change only in a script that
  also changes its marker, so a chunk whose marker is unchanged holds the same texts; markers and
  versions are 64 random bits, never reused for other contents, as in the view (even after Redis
  lost writes).
* The search script compares the version the copy is of with the graph's, in the same script as
  everything it reads; if they differ it answers 'stale', and the search syncs and tries again (a
  few times, then the script scans everything itself, as it did before this copy existed). A
  search answer is therefore one state of the graph, exactly as when the script scanned.
* What a search reads of the copy: a chunk's blobs are cut into blocks of 16 entity ids (~6 KB),
  and the copy's `Vocabulary` knows, for each token (a run of ASCII letters and digits and of
  non-ASCII bytes: `_TOKEN`), which blocks hold it. Where the query occurs in a text, each of its
  own tokens lies inside one token of that text; a query word starts a word, so it starts a
  token. The floor reads the blocks holding, for every token of the query, a token that contains
  it; a word, the blocks holding a token that starts with it (`facts`). Finding those tokens is a
  `bytes.find` over the vocabulary's lines (~300 KB at 100,000 entities), reading the blocks one
  `bytes.find` per needle: a typical query reads a few dozen blocks instead of 35 MB.
* A copy is never changed once made: a sync builds the next (`Edit` copies the vocabulary and
  applies the blocks' changes), giving the event loop a turn every few chunks, and a search works
  on the copy it started with.

The copy is bounded like the view's (`FOLDS_CACHE_BYTES`, least recently searched owners first);
an owner whose folds and words do not fit is searched by the script's own scan, and remembered as
such for `OVERSIZED_SECONDS`, so that its searches do not fetch them each time.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from server.memory.search import Query
from server.storage.redis.base import RedisBase
from server.storage.redis.graph_view import PRELUDE, SEP
from server.storage.view_copy import HeldChunks

FOLDS_CACHE_BYTES: Final = 128 * 1024 * 1024
"""How much folded text and words one process keeps: ~60 MB for 100,000 entities of five
60-character observations, plus ~20 MB of vocabularies (docs/performance.md)."""
OVERSIZED_SECONDS: Final = 300.0
"""How long an owner whose folds did not fit is searched without trying the copy again."""
_OVERSIZED_KEPT: Final = 1024
_CHUNK: Final = 128
"""Entity ids per chunk (graph_view.PRELUDE's CHUNK)."""
_BLOCK: Final = 16
"""Entity ids per block: what the vocabularies tell apart, and a search reads (~6 KB of text)."""
_BLOCKS: Final = _CHUNK // _BLOCK
_STALE_TOKENS: Final = 10_000
"""Tokens of no block a vocabulary keeps (beyond a quarter of its size) before it is rebuilt."""
_CHUNKS_PER_TURN: Final = 1
"""Chunks read into the copy (~5 ms each at 128 entities of five observations) between two turns of
the event loop."""
_PAIRS_PER_TURN: Final = 20_000
"""(token, block) pairs a vocabulary is changed by between two turns of the event loop (~2 ms)."""
_WORK_PER_TURN: Final = 4000
"""Matches found (or 16 per chunk read) by `facts` between two turns of the event loop (~2 ms)."""

TAG: Final = b"\xfe"
TAG_END: Final = b"\xfd"
"""Around the id after each folded record (graph_view.PRELUDE)."""
_TOKEN: Final = re.compile(rb"[0-9A-Za-z\x80-\xf4]+")
"""A token: a maximal run of ASCII letters and digits and of bytes of non-ASCII characters (UTF-8
never has a byte above F4: the separators and tags, F5-FF, end a token). A word of
server.memory.search (a run of `str.isalnum` characters), of a lowered text or a folded one, lies
inside one token: what the vocabularies need (see `facts`)."""

# KEYS: owner, chunks (the view's), folds, words. ARGV: pairs (view chunk "e<n>", marker) this
# process holds. Returns {version ("" if none), {chunk, marker} per chunk held at that marker,
# {chunk, marker, folds, {the word records of its 128 ids, false where none}} per other chunk of
# entities}.
_SYNC = """
local held = {}
for i = 1, #ARGV, 2 do held[ARGV[i]] = ARGV[i + 1] end
local listing = redis.call('HGETALL', KEYS[2])
local out = {}
for i = 1, #listing, 2 do
  local chunk, marker = listing[i], listing[i + 1]
  if string.sub(chunk, 1, 1) == 'e' then
    if held[chunk] == marker then
      out[#out + 1] = {chunk, marker}
    else
      local first, ids = tonumber(string.sub(chunk, 2)) * CHUNK, {}
      for id = first, first + CHUNK - 1 do ids[#ids + 1] = id end
      out[#out + 1] = {chunk, marker, redis.call('HGET', KEYS[3], string.sub(chunk, 2)) or '',
                       redis.call('HMGET', KEYS[4], unpack(ids))}
    end
  end
end
return {redis.call('HGET', KEYS[1], 'version') or '', out}
"""

class Chunk(NamedTuple):
    """A chunk as held: its folds (as Redis keeps them), its words (the word records, each text
    led by a space, each record followed by its tag as in the folds), and where each block of each
    begins (`_BLOCKS` + 1 offsets: block b of a blob is blob[bounds[b]:bounds[b + 1]])."""

    folds: bytes
    words: bytes
    fold_bounds: tuple[int, ...]
    word_bounds: tuple[int, ...]

    def part(self, which: int, block: int) -> tuple[bytes, int, int]:
        """Block `block` (0 to 7) of the folds (which 0) or the words (1): blob, start, end."""
        blob, bounds = (self.folds, self.fold_bounds) if which == 0 else (self.words, self.word_bounds)
        return blob, bounds[block], bounds[block + 1]


@dataclass(frozen=True)
class Vocabulary:
    """The distinct tokens of a copy's blocks (`_tokens`), each with the set of blocks that hold
    it (bit n: the entity ids n * 16 to n * 16 + 15), and all of them one per line (`lines`), where
    a piece of a token is looked up with `bytes.find`. A token no block holds any more keeps its
    line (no bits) until there are more such than `_STALE_TOKENS` allows. Never changed: a search
    may be using it; `Edit` makes the next one."""

    blocks: dict[bytes, int] = field(default_factory=dict)
    lines: bytes = b"\n"
    stale: int = 0

    def holding(self, piece: bytes, *, prefix: bool) -> int:
        """The blocks holding a token that contains `piece` (or, `prefix`, starts with it)."""
        lines, blocks = self.lines, self.blocks
        needle = b"\n" + piece if prefix else piece
        bits, position = 0, 0
        while (found := lines.find(needle, position)) != -1:
            start = found + 1 if prefix else lines.rfind(b"\n", 0, found) + 1
            end = lines.index(b"\n", found + len(needle))
            bits |= blocks[lines[start:end]]
            position = end
        return bits


class Edit:
    """The next vocabulary, made from one (copied: that one stays as it is) block by block. The
    blocks a token gains or loses are gathered first and applied once per token (`done`): a
    token's bits are an integer of up to one bit per block, costly to rebuild once per block."""

    def __init__(self, base: Vocabulary) -> None:
        self._base = base
        self._gained: dict[bytes, list[int]] = {}
        self._lost: dict[bytes, list[int]] = {}

    def move(self, block: int, before: set[bytes], after: set[bytes]) -> None:
        """A block held the tokens `before` and holds `after`."""
        for token in before - after:
            self._lost.setdefault(token, []).append(block)
        for token in after - before:
            self._gained.setdefault(token, []).append(block)

    async def done(self) -> Vocabulary:
        """The next vocabulary. Private until returned, so building it gives the event loop turns
        (a first copy of 100,000 entities moves ~3 million (token, block) pairs)."""
        if not self._gained and not self._lost:
            return self._base
        blocks = dict(self._base.blocks)
        stale = self._base.stale
        new: list[bytes] = []
        work = 0
        for token, lost in self._lost.items():
            blocks[token] &= ~_bits(lost)
            stale += not blocks[token]
            work += len(lost)
            if work >= _PAIRS_PER_TURN:
                await asyncio.sleep(0)
                work = 0
        for token, gained in self._gained.items():
            held = blocks.get(token)
            if held is None:
                new.append(token)
                held = 0
            else:
                stale -= not held
            blocks[token] = held | _bits(gained)
            work += len(gained)
            if work >= _PAIRS_PER_TURN:
                await asyncio.sleep(0)
                work = 0
        if stale > _STALE_TOKENS + len(blocks) // 4:
            kept = {token: bits for token, bits in blocks.items() if bits}
            return Vocabulary(kept, b"\n" + b"\n".join(kept) + b"\n", 0)
        return Vocabulary(blocks, self._base.lines + b"".join(token + b"\n" for token in new), stale)


def _bits(blocks: list[int]) -> int:
    """The set of these blocks as an integer (bit n: block n)."""
    if len(blocks) < 8:
        return sum(1 << block for block in set(blocks))
    bits = bytearray(max(blocks) // 8 + 1)
    for block in blocks:
        bits[block >> 3] |= 1 << (block & 7)
    return int.from_bytes(bits, "little")


@dataclass(frozen=True)
class Copy:
    """One state of an owner's copy: the graph's version, the chunks (view chunk -> (marker,
    chunk)), and the vocabulary of their blocks."""

    version: bytes
    chunks: dict[bytes, tuple[bytes, Chunk]]
    vocabulary: Vocabulary

    def block(self, number: int, which: int) -> tuple[bytes, int, int]:
        """Block `number`'s folds (which 0) or words (1): the chunk's blob, where it begins and ends."""
        held = self.chunks.get(b"e%d" % (number // _BLOCKS))
        return (b"", 0, 0) if held is None else held[1].part(which, number % _BLOCKS)


class FoldsCopy(HeldChunks[bytes, bytes, Chunk]):
    """The owners' folds and words this process holds (see the module)."""

    def __init__(self, base: RedisBase, budget: int = FOLDS_CACHE_BYTES) -> None:
        super().__init__(budget)
        self._sync = base.script(PRELUDE + _SYNC)
        self._copies: dict[str, Copy] = {}
        self._oversized: OrderedDict[str, float] = OrderedDict()

    def held(self, owner: str) -> Copy | None:
        """The copy of an owner's graph as last synced, if held."""
        return self._copies.get(owner) if owner in self._held else None

    def oversized(self, owner: str) -> bool:
        since = self._oversized.get(owner)
        if since is None:
            return False
        if time.monotonic() - since < OVERSIZED_SECONDS:
            return True
        del self._oversized[owner]
        return False

    async def sync(self, owner: str, keys: Sequence[str]) -> Copy | None:
        """Bring the copy to the graph's current version (keys: owner, view chunks, folds, words);
        None when the owner's graph does not fit the budget. The copy before is not changed (a
        search may be using it): the new one replaces it once complete."""
        before = self.held(owner) or Copy(b"", {}, Vocabulary())
        held, known = self._known(owner)
        version, listing = await self._sync(keys=list(keys), args=known)
        chunks: dict[bytes, tuple[bytes, Chunk]] = {}
        vocabulary = Edit(before.vocabulary)
        work = 0
        for chunk, marker, *data in listing:
            if not data:
                chunks[chunk] = held[chunk]
                continue
            if work >= _CHUNKS_PER_TURN:
                await asyncio.sleep(0)
                work = 0
            work += 1
            folds, records = data
            old = held.get(chunk)
            new = _chunk(int(chunk[1:]), folds, records) if folds else None
            if new is not None:
                chunks[chunk] = (marker, new)
            _change(vocabulary, chunk, old[1] if old else None, new)
        listed = {item[0] for item in listing}
        for chunk, (_, gone) in held.items():
            if chunk not in listed:
                _change(vocabulary, chunk, gone, None)
        copy = Copy(version, chunks, await vocabulary.done())
        self._keep(owner, chunks)
        if owner in self._held:
            self._copies[owner] = copy
            for dropped in [other for other in self._copies if other not in self._held]:
                del self._copies[dropped]
            return copy
        self._copies.pop(owner, None)
        if not chunks:  # an empty graph: nothing to hold, nothing to find
            return copy
        self._oversized[owner] = time.monotonic()
        while len(self._oversized) > _OVERSIZED_KEPT:
            self._oversized.popitem(last=False)
        return None

    def forget(self, owner: str) -> None:
        super().forget(owner)
        self._copies.pop(owner, None)


def _chunk(number: int, folds: bytes, records: list[bytes | None]) -> Chunk:
    """A chunk as held, from its folds and its word records (by id, None where none)."""
    first = number * _CHUNK
    words = bytearray()
    word_bounds = [0]
    for i, record in enumerate(records):
        if i and i % _BLOCK == 0:
            word_bounds.append(len(words))
        if record:
            words += b" " + record.replace(SEP, SEP + b" ") + TAG + _tag(first + i) + TAG_END
    word_bounds.append(len(words))
    fold_bounds = [0]
    position = 0
    block = 0
    while position < len(folds):
        mark = folds.index(TAG, position)
        stop = folds.index(TAG_END, mark)
        while (_untag(folds[mark + 1:stop]) - first) // _BLOCK > block:
            fold_bounds.append(position)
            block += 1
        position = stop + 1
    fold_bounds += [len(folds)] * (_BLOCKS + 1 - len(fold_bounds))
    return Chunk(folds, bytes(words), tuple(fold_bounds), tuple(word_bounds))


def _change(vocabulary: Edit, chunk: bytes, old: Chunk | None, new: Chunk | None) -> None:
    """The vocabulary's changes, block by block, of a chunk that was `old` and is `new`."""
    first = int(chunk[1:]) * _BLOCKS
    for part in range(_BLOCKS):
        before = _tokens(old, part) if old else set()
        after = _tokens(new, part) if new else set()
        if before != after:
            vocabulary.move(first + part, before, after)


def _tokens(chunk: Chunk, part: int) -> set[bytes]:
    """The distinct tokens of a block: of its folds and of its words."""
    tokens = set(_TOKEN.findall(*chunk.part(0, part)))
    tokens.update(_TOKEN.findall(*chunk.part(1, part)))
    return tokens


async def facts(copy: Copy, query: Query) -> list[bytes]:
    """What the search script takes from a copy (graph.py, `_SEARCH`): where the lowered query
    first occurs in each entity that holds it, then for each query word the best field of each
    entity where it starts a word; each as "<entity id> <field> ..." (field: 0 name, 1 type, 2 an
    observation). Exactly what the script finds by itself when it scans.

    Only the chunks that can hold a match are read: for the query, those holding, for every word
    of the query (lowered), a word that contains it (where the query occurs, each of its words lies
    inside one word of the text); for a query word, those holding a word it starts. The chunks
    are chosen before the first turn given to the event loop, from the vocabularies of this state."""
    phrase = query.phrase.encode()
    floor: int | None = None  # None: every block
    for piece in _TOKEN.findall(phrase):
        holding = copy.vocabulary.holding(piece, prefix=False)
        floor = holding if floor is None else floor & holding
    needles: list[tuple[bytes, int, int | None]] = [(phrase, 0, floor)]
    needles += [(b" " + word.encode(), 1, copy.vocabulary.holding(word.encode(), prefix=True))
                for word in query.words]
    work = 0
    found: list[bytes] = []
    for needle, which, chosen in needles:
        hits: list[str] = []
        for blob, start, end in _blocks(copy, which, chosen):
            work += 16 + _first_fields(blob, needle, start, end, hits)
            if work >= _WORK_PER_TURN:
                await asyncio.sleep(0)
                work = 0
        found.append(" ".join(hits).encode())
    return found


def _blocks(copy: Copy, which: int, chosen: int | None) -> Iterator[tuple[bytes, int, int]]:
    """The blocks to read (their folds, which 0, or words, 1): those in `chosen`, or all."""
    if chosen is None:
        for _, held in copy.chunks.values():
            blob = held.words if which else held.folds
            yield blob, 0, len(blob)
        return
    while chosen:
        lowest = chosen & -chosen
        chosen ^= lowest
        yield copy.block(lowest.bit_length() - 1, which)


def _first_fields(blob: bytes, needle: bytes, start: int, end: int, hits: list[str]) -> int:
    """Append "<id> <field>" for each record of a tagged blob that holds the needle, the field of
    its first occurrence: a match lies inside one text (no needle holds a separator or a tag
    byte), the first in a record is in its earliest text, counted by the separators since the
    record's start. Only blob[start:end] is read, whole records. Returns how many it found."""
    count = 0
    position = start
    while (match := blob.find(needle, position, end)) != -1:
        mark = blob.find(TAG, match, end)
        if mark == -1:
            break
        begins = blob.rfind(TAG_END, start, match) + 1 or start
        stop = blob.find(TAG_END, mark)
        hits.append(f"{_untag(blob[mark + 1:stop])} {min(blob.count(SEP, begins, match), 2)}")
        position = stop + 1
        count += 1
    return count


def _tag(number: int) -> bytes:
    """An id as the folds tag it (base 8, digits as the bytes F5..FC): `_untag`'s inverse."""
    digits = bytearray()
    while True:
        digits.append(0xF5 + number % 8)
        number //= 8
        if not number:
            return bytes(reversed(digits))


def _untag(digits: bytes) -> int:
    """An id as tagged in the folds (base 8, digits as the bytes F5..FC)."""
    number = 0
    for digit in digits:
        number = number * 8 + digit - 0xF5
    return number


__all__ = ["Copy", "FoldsCopy", "Vocabulary", "facts"]

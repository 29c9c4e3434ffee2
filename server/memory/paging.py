"""Paging the graph queries (read_graph, search_nodes, open_nodes): cursors, and what a page holds.

A query takes an optional `limit` (entities per page, 1 to `MAX_PAGE_SIZE`) and an optional
`cursor` (the `nextCursor` of the previous page); a result that is not the last page carries
`nextCursor`. Pages are keyset pages: every result lists its entities in the order of a sort key,
a tuple of integers (`Key`: `(entity id,)`, creation order, for read_graph and open_nodes; search
ranks its hits, with keys of its own), and a page holds the entities after the previous page's
last key. An entity added while a client pages gets a key after every existing one, and a
deletion removes keys without moving the others, so no entity is returned twice or skipped
because others were added or removed between pages (docs/performance.md#paging).

What a page holds
-----------------

* Its entities, in key order, each whole (a page is never cut inside an entity).
* Each relation of the result exactly once, on the page of the last of its endpoints that the
  result holds: the page where, in key order, both of its endpoints the result holds have been
  delivered. So a client that pages to the end gets every relation of the unpaged answer once,
  and never a relation before the entities it links. (Relations are not paged after the
  entities: a page would then say nothing about how its entities relate, and search_nodes pages
  would all come before any of their relations.)
* read_graph's relations that name no existing entity (the official server allows them) on its
  last page, since no page holds an endpoint of theirs.

The unpaged answer (no limit, no cursor, within the size cap) is exactly the answer without
paging, the official server's. Under concurrent writes the entities keep the guarantee above; a
relation created or deleted between two pages may be seen or not, as in any read that spans time.

Cursors
-------

A cursor is base64url (no padding) of the JSON `[1, tool, key, digest]`: the format version, the
tool that issued it, the last key of its page, and a digest of the arguments the page depends on
(search_nodes' query, open_nodes' set of names; empty for read_graph). It is not secret (it only
skips within the caller's own graph, and the caller saw every key it holds), but it is checked
strictly: a cursor that does not decode, has another shape, or came from another tool or other
arguments is refused with a message naming `cursor` and saying what to do.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, TypeVar

import orjson

from server.memory.graph import GraphJSON

Key = tuple[int, ...]
"""A result's sort key of one entity."""

MAX_PAGE_SIZE: Final = 1_000
"""The largest `limit`: as many entities as one call may create (`MAX_ITEMS_PER_CALL`)."""

_VERSION: Final = 1
_MAX_CURSOR_LENGTH: Final = 512
_MAX_KEY_PARTS: Final = 8
_INT64: Final = 1 << 63
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")


class CursorError(ValueError):
    """A cursor that cannot continue this call; the message is written for the caller."""


def digest(*arguments: str) -> str:
    """What a cursor records of the arguments its pages depend on."""
    if not arguments:
        return ""
    return base64.urlsafe_b64encode(hashlib.sha256(orjson.dumps(list(arguments))).digest()[:9]).decode()


def names_digest(names: Iterable[str]) -> str:
    """open_nodes' pages depend on the set of names, not their order or repetitions."""
    return digest(*sorted(set(names)))


def encode(tool: str, key: Key, arguments: str) -> str:
    payload = orjson.dumps([_VERSION, tool, list(key), arguments])
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


_DESCRIBED: Final = {"search_nodes": "a different query", "open_nodes": "different names"}
_REPEAT: Final = {"search_nodes": "the same query", "open_nodes": "the same names"}


def decode(cursor: str, tool: str, arguments: str, key_parts: int | None = None) -> Key:
    """The key a cursor continues after; `CursorError` if it is not a cursor of `tool` called with
    these arguments (and, given `key_parts`, a key of that many parts)."""
    start_over = (f"pass the nextCursor of an earlier {tool} result unchanged, or omit cursor to start from the"
                  " first page")
    malformed = CursorError(f"cursor is not a cursor this server issued; {start_over}")
    if not (0 < len(cursor) <= _MAX_CURSOR_LENGTH) or _BASE64URL.fullmatch(cursor) is None:
        raise malformed
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise malformed from None
    if not (isinstance(payload, list) and len(payload) == 4 and payload[0] == _VERSION
            and isinstance(payload[1], str) and isinstance(payload[3], str) and isinstance(payload[2], list)
            and 0 < len(payload[2]) <= _MAX_KEY_PARTS
            and all(type(part) is int and -_INT64 <= part < _INT64 for part in payload[2])):
        raise malformed
    if payload[1] != tool:
        raise CursorError(f"cursor was issued by {payload[1][:40]!r}, not {tool}; {start_over}")
    if key_parts not in (None, len(payload[2])):
        raise malformed
    if payload[3] != arguments:
        raise CursorError(f"cursor was issued for {_DESCRIBED.get(tool, 'other arguments')}; call {tool} with"
                          f" {_REPEAT.get(tool, 'the same arguments')} as the call that returned it, or omit cursor"
                          " to start from the first page")
    return tuple(payload[2])


def continued(graph: GraphJSON, cursor: str, note: str | None = None) -> GraphJSON:
    """The graph with `"nextCursor"` (and `"note"`) added at the end of its object, in both its
    JSON and its text; the parts before are not copied."""
    extra = b',"nextCursor":' + orjson.dumps(cursor)
    if note is not None:
        extra += b',"note":' + orjson.dumps(note)
    # `GraphJSON.of` ends the JSON with `]}` and the text with `]}"`: the extra goes before `}`.
    last_json, last_text = bytes(graph.json_parts[-1]), bytes(graph.text_parts[-1])
    if not (last_json.endswith(b"}") and last_text.endswith(b'}"')):
        raise ValueError("continued() needs a graph built by GraphJSON.of")
    extra_text = orjson.dumps(extra.decode())[1:-1]
    return GraphJSON(json_parts=(*graph.json_parts[:-1], last_json[:-1] + extra + b"}"),
                     text_parts=(*graph.text_parts[:-1], last_text[:-2] + extra_text + b'}"'),
                     next_key=graph.next_key)


def size(graph: GraphJSON) -> int:
    """Bytes of the graph's JSON (the text block's content, and the structured content's)."""
    return sum(len(part) for part in graph.json_parts)


R = TypeVar("R")


def page_relations(relations: Iterable[tuple[str, str, R]], key_of: Callable[[str], Key | None],
                   last: Key | None) -> list[R]:
    """Of the relations touching a page's entities (from, to, and anything), those the page holds:
    the ones whose endpoints in the result (`key_of` gives an endpoint's key there, or None) all
    have keys up to the page's last key. `last` None: this is the last page, which holds them all."""
    if last is None:
        return [item for _, _, item in relations]
    kept = []
    for from_name, to_name, item in relations:
        keys = [key for key in (key_of(from_name), key_of(to_name)) if key is not None]
        if all(key <= last for key in keys):
            kept.append(item)
    return kept


def window(keys: Sequence[Key], after: Key | None, limit: int | None) -> tuple[int, int, bool]:
    """In a sorted list of keys: the start and end index of the page after `after` holding at most
    `limit`, and whether more follow it."""
    start = 0 if after is None else bisect.bisect_right(keys, after)
    end = len(keys) if limit is None else min(len(keys), start + limit)
    return start, end, end < len(keys)


DEFAULT_MAX_RESULT_BYTES: Final = 48 * 1024
"""The default of the `memory_max_result_bytes` setting: the most bytes of graph JSON one tool
result carries (docs/performance.md#paging says why this much)."""
MIN_MAX_RESULT_BYTES: Final = 4096
"""The smallest cap accepted (besides 0, no cap): below it a page would be mostly its cursor."""


Fetch = Callable[[Key | None, int | None], Awaitable[GraphJSON]]
"""A store query: the page after a key, of at most so many entities (None, None: the whole result)."""


async def answer(tool: str, arguments: str, fetch: Fetch, *, limit: int | None, cursor: str | None,
                 max_bytes: int, key_parts: int | None = None) -> GraphJSON:
    """The graph a query's tool result carries: the page the caller asked for (`limit`, `cursor`;
    neither: the whole result) cut to at most `max_bytes` of JSON (0: no cap) at an entity
    boundary, with `nextCursor` when more follow and a `note` when the cap cut it. A page always
    holds at least one entity, however large, so that paging always ends. `key_parts`: how many
    parts this query's keys have, when fixed (checked in the cursor)."""
    after = None if cursor is None else decode(cursor, tool, arguments, key_parts)
    if limit is None and (after is None or not max_bytes):
        # The whole result (or all the rest of it) as it is, if it fits: unpaged, this is the
        # answer without paging, through the store's fastest path.
        graph = await fetch(after, None)
        if not max_bytes or size(graph) <= max_bytes:
            return graph
        # A first page of about twice what fits at the answer's average entity size (a page is
        # read from the rows: 1,000 entities cost ~20 ms), then cut by each entity's size below.
        limit_guess = 2 * _entity_count(graph) * max_bytes // size(graph) + 16
    else:
        limit_guess = MAX_PAGE_SIZE
    count = min(limit or limit_guess, MAX_PAGE_SIZE)
    cut = limit is None
    sizes: list[int] | None = None
    while True:
        graph = await fetch(after, count)
        result = _continued(tool, arguments, graph, _note(tool, max_bytes) if cut else None)
        if not max_bytes or size(result) <= max_bytes:
            return result
        if sizes is None:
            # Each entity's bytes (with its comma), from the first page fetched: the later pages,
            # smaller, are its beginnings.
            sizes = [len(orjson.dumps(entity)) + 1 for entity in orjson.loads(graph.json)["entities"]]
        held = min(count, len(sizes))
        if held <= 1:
            return result
        # Drop entities from the end until their bytes make up the excess (the relations of the
        # dropped ones go too; a note and a cursor may come in: _SLACK).
        excess = size(result) - max_bytes + (0 if cut else len(_note(tool, max_bytes)) + _SLACK)
        while held > 1 and excess > 0:
            held -= 1
            excess -= sizes[held]
        count = min(held, count - 1)
        cut = True


_SLACK: Final = 128
"""Bytes a page may grow by when it gains its `nextCursor` and the JSON around it and the note."""


def _continued(tool: str, arguments: str, graph: GraphJSON, note: str | None) -> GraphJSON:
    if graph.next_key is None:
        return graph
    return continued(graph, encode(tool, graph.next_key, arguments), note)


def _entity_count(graph: GraphJSON) -> int:
    # Exact: every entity's object starts with `{"name":`, no other object has that key, and no
    # string can hold it (its quotes would be escaped).
    return sum(part.count(b'{"name":') if isinstance(part, bytes) else bytes(part).count(b'{"name":')
               for part in graph.json_parts)


def _note(tool: str, max_bytes: int) -> str:
    return (f"This result was cut at {max_bytes:,} bytes (the server's memory_max_result_bytes): it holds only part"
            f" of the answer. Call {tool} again with the same arguments and cursor set to nextCursor for the rest;"
            " limit sets how many entities a page holds.")

"""A memory graph as the official `@modelcontextprotocol/server-memory` keeps it on disk: JSON Lines.

The format (its `saveGraph` and `loadGraph`, src/memory/index.ts)
---------------------------------------------------------------

One JSON object per line, compact (`JSON.stringify`), lines joined by "\\n" with no newline after
the last: every entity first, in the graph's order, then every relation:

    {"type":"entity","name":"Ada","entityType":"person","observations":["likes tea"]}
    {"type":"relation","from":"Ada","to":"Bob","relationType":"knows"}

Its reader splits the file on "\\n", drops lines that are blank after trimming, `JSON.parse`s each
line, and picks `name`, `entityType`, `observations` (or `from`, `to`, `relationType`) out of the
records whose `type` is "entity" (or "relation"): any other field is ignored, and so is a record
of any other type. The file is `memory.jsonl`; before version 0.6.3 it was `memory.json`, in the
same format (the server renames it on start-up).

What this module writes
-----------------------

`export_lines` writes exactly that, byte for byte for a graph without provenance (orjson and
`JSON.stringify` write strings alike: non-ASCII as is, the same escapes), plus provenance as extra
fields that the official reader ignores (above):

* `createdAt`: when the entity or relation was created, ISO 8601 in UTC with microseconds
  ("2026-12-03T16:36:29.123456Z"); `createdBy`: the client id that created it;
* `observationsCreated` (entities): parallel to `observations`, one `{"at": ..., "by": ...}` per
  observation, or null where unknown.

A field is left out where the provenance is unknown (data stored before provenance existed), so a
graph without any writes the official format exactly.

What this module reads (`parse_file`), and what it does with the rest
---------------------------------------------------------------------

Files as people really have them: `memory.json` or `memory.jsonl` or any name; a UTF-8 BOM; CRLF
line ends; blank lines; no newline after the last line; entities without `observations` (older
versions of the official server wrote them when a client left the field out: read as none); two
or more records on one line (`{...}{...}`: what two instances of the official server writing the
same file at once leave behind) are split; a graph saved as one `{"entities": [...],
"relations": [...]}` object on a line (a read_graph result) is read as its records.

The file **cannot be read**, and nothing is imported, when: it cannot be opened or read (the OS
error), it is not UTF-8 text (UTF-16, or the line of the first bad byte is named), or not one of
its non-blank lines holds a JSON object (not a JSON Lines file at all: a pretty-printed JSON
document, a CSV). Such a file is refused whole because skipping every line of it would report an
import of nothing as a success.

A **record is skipped**, reported with its line number and the reason, and the rest imported,
when: its line (or the rest of it) is not JSON (a line cut short by a crash), it is not an object,
its `type` is missing or unknown, a field is missing or of the wrong type, a text is longer than
the tools accept (`server.memory.tools`: names 512 characters, observations 16 KiB), a text holds
an unpaired UTF-16 surrogate (not text), or it repeats an earlier record of the file (a relation,
or an entity that adds no observation: an entity repeated with new observations is merged into the
first, as the official server's add_observations would have done).

Provenance that cannot be read (a `createdAt` that is no time) is replaced by the import's own
(`Origin(import time, "import")`), as for records that carry none; that is noted, not skipped.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from server.memory.graph import (
    ExportBatch,
    GraphStore,
    Imported,
    Origin,
    Quota,
    QuotaExceededError,
    StoredEntity,
    StoredRelation,
    Usage,
    text_bytes,
)
from server.memory.tools import MAX_NAME_LENGTH, MAX_OBSERVATION_LENGTH

IMPORT_CLIENT: Final = "import"
"""`createdBy` of what an import adds without provenance of its own."""
ENTITY_BATCH: Final = 1000
"""Most entities per `import_graph` call (one transaction: a few tens of milliseconds of the lock)."""
OBSERVATION_BATCH: Final = 5000
"""Most observations per `import_graph` call."""
RELATION_BATCH: Final = 2000
"""Most relations per `import_graph` call."""
EXPORT_BATCH: Final = 512
"""Items read from the store per step of an export."""

_BOM: Final = b"\xef\xbb\xbf"
_LAST_TIME: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
_DECODER: Final = json.JSONDecoder()
_WHITESPACE: Final = " \t\r\n"


# --- writing --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def iso_time(at: float) -> str:
    """`createdAt`: the unix time `at` in ISO 8601, UTC, microseconds. Cached: the items a write
    added share its time, and an export formats each time once, not once per observation."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=1024)
def _made(origin: Origin) -> dict[str, str]:
    """An `observationsCreated` item; cached like `iso_time` (orjson only reads it)."""
    return {"at": iso_time(origin.at), "by": origin.by}


def entity_line(entity: StoredEntity) -> bytes:
    """One entity as the official server writes it, with its provenance (see the module)."""
    item: dict[str, Any] = {"type": "entity", "name": entity.name, "entityType": entity.entity_type,
                            "observations": list(entity.observations)}
    if entity.origin is not None:
        item["createdAt"] = iso_time(entity.origin.at)
        item["createdBy"] = entity.origin.by
    origins = [entity.observation_origin(i) for i in range(len(entity.observations))]
    if any(origin is not None for origin in origins):
        item["observationsCreated"] = [None if origin is None else _made(origin) for origin in origins]
    return orjson.dumps(item)


def relation_line(relation: StoredRelation) -> bytes:
    item: dict[str, Any] = {"type": "relation", "from": relation.from_, "to": relation.to,
                            "relationType": relation.relation_type}
    if relation.origin is not None:
        item["createdAt"] = iso_time(relation.origin.at)
        item["createdBy"] = relation.origin.by
    return orjson.dumps(item)


@dataclass
class ExportCounts:
    entities: int = 0
    observations: int = 0
    relations: int = 0


async def export_lines(batches: AsyncIterable[ExportBatch], counts: ExportCounts | None = None
                       ) -> AsyncIterator[bytes]:
    """The file's bytes, a batch's lines at a time: lines joined by "\\n", none after the last (as
    the official server writes it)."""
    counts = counts if counts is not None else ExportCounts()
    first = True
    async for batch in batches:
        lines: list[bytes] = []
        for item in batch:
            if isinstance(item, StoredEntity):
                lines.append(entity_line(item))
                counts.entities += 1
                counts.observations += len(item.observations)
            else:
                lines.append(relation_line(item))
                counts.relations += 1
        if lines:
            yield (b"" if first else b"\n") + b"\n".join(lines)
            first = False


# --- reading --------------------------------------------------------------------------------------


class UnreadableFile(Exception):
    """The file cannot be read as JSON Lines at all; nothing was imported. The message says why."""


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    reason: str


@dataclass
class ParsedFile:
    """Pass 1 of an import: every valid record of the file (entities merged by name, relations
    without repeats, in file order), and what was skipped or noted, by line."""

    entities: list[StoredEntity] = field(default_factory=list)
    relations: list[StoredRelation] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)

    @property
    def observations(self) -> int:
        return sum(len(entity.observations) for entity in self.entities)

    def usage(self) -> Usage:
        """The most an import of it can add (`Usage` measures): all of it, if the owner has none of it."""
        size = sum(text_bytes(e.name, e.entity_type, *e.observations) for e in self.entities)
        size += sum(text_bytes(r.from_, r.to, r.relation_type) for r in self.relations)
        return Usage(len(self.entities), self.observations, size)


class _Skip(Exception):
    """A record is skipped; the message is the reason."""


def parse_file(path: Path, now: float) -> ParsedFile:
    """Pass 1: read and check the whole file (see the module); `UnreadableFile` if it cannot be
    read. Records without provenance get `Origin(now, "import")`."""
    fallback = Origin(now, IMPORT_CLIENT)
    parsed = ParsedFile()
    reader = _Reader(parsed, fallback)
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                if number == 1:
                    raw = raw.removeprefix(_BOM)
                if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise UnreadableFile(f"{path} is UTF-16 text; convert it to UTF-8 (the official server writes "
                                         "UTF-8). Nothing was imported")
                try:
                    text = raw.decode()
                except UnicodeDecodeError as exc:
                    raise UnreadableFile(
                        f"{path} is not UTF-8 text: line {number} has the byte 0x{raw[exc.start]:02x} at column "
                        f"{exc.start + 1}; convert the file to UTF-8 (the official server writes UTF-8). Nothing "
                        "was imported") from None
                reader.line(number, text)
    except OSError as exc:
        raise UnreadableFile(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}; nothing was imported") \
            from None
    if reader.lines_with_text and not reader.lines_with_json:
        raise UnreadableFile(f"{path} is not a JSON Lines file: none of its {reader.lines_with_text} non-blank "
                             "line(s) holds a JSON object (the official server's file has one JSON object per line; "
                             "a pretty-printed JSON document is not one). Nothing was imported")
    return parsed


class _Reader:
    def __init__(self, parsed: ParsedFile, fallback: Origin) -> None:
        self.parsed = parsed
        self.fallback = fallback
        self.lines_with_text = 0
        self.lines_with_json = 0  # lines holding at least one JSON object
        self.entities: dict[str, tuple[int, int, set[str]]] = {}  # name -> (index, line, its observations)
        self.relations: dict[tuple[str, str, str], int] = {}  # identity -> line

    def line(self, number: int, text: str) -> None:
        if not text.strip(_WHITESPACE):
            return
        self.lines_with_text += 1
        try:
            # The usual line: one record, parsed by orjson (which also refuses unpaired
            # surrogates, so its strings need no check for them); anything else takes the slow
            # path below, which finds each record of the line and says what is wrong.
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                self.lines_with_json += 1
            for record in _records(value):
                try:
                    self.record(number, record, checked=True)
                except _Skip as skip:
                    self.parsed.skipped.append(Problem(number, str(skip)))
            return
        position, seen_json = 0, False
        while True:
            while position < len(text) and text[position] in _WHITESPACE:
                position += 1
            if position >= len(text):
                break
            try:
                value, position = _DECODER.raw_decode(text, position)
            except json.JSONDecodeError as exc:
                where = f"column {exc.colno}" + (" (after the records before it on the line)" if seen_json else "")
                self.parsed.skipped.append(Problem(number, f"not valid JSON at {where}: {exc.msg.lower()}"))
                break
            if not seen_json and isinstance(value, dict):
                self.lines_with_json += 1
            seen_json = True
            for record in _records(value):
                try:
                    self.record(number, record)
                except _Skip as skip:
                    self.parsed.skipped.append(Problem(number, str(skip)))

    def record(self, number: int, record: Any, checked: bool = False) -> None:
        """`checked`: the record's strings are known to be text (no unpaired surrogate)."""
        if not isinstance(record, dict):
            raise _Skip(f"not a JSON object but {_json_type(record)}")
        kind = record.get("type")
        if kind == "entity":
            self.entity(number, record, checked)
        elif kind == "relation":
            self.relation(number, record, checked)
        elif kind is None:
            raise _Skip('no "type" field (expected "entity" or "relation")')
        else:
            raise _Skip(f'unknown type {_shown(kind)} (expected "entity" or "relation")')

    def entity(self, number: int, record: dict[str, Any], checked: bool) -> None:
        name = _text(record, "name", MAX_NAME_LENGTH, "entity", checked)
        entity_type = _text(record, "entityType", MAX_NAME_LENGTH, "entity", checked)
        observations = record.get("observations")
        if observations is None:
            observations = []
        if not isinstance(observations, list):
            raise _Skip(f"entity {_shown(name)}: observations must be an array, not {_json_type(observations)}")
        for index, observation in enumerate(observations):
            if not (checked and type(observation) is str and len(observation) <= MAX_OBSERVATION_LENGTH):
                _check_text(observation, f"entity {_shown(name)}: observations[{index}]", MAX_OBSERVATION_LENGTH,
                            checked)
        origin = self.origin(number, record, "entity", name)
        origins = self.observation_origins(number, record, name, len(observations))
        earlier = self.entities.get(name)
        if earlier is None:
            unique: dict[str, Origin] = {}
            for observation, made in zip(observations, origins, strict=True):
                unique.setdefault(observation, made)
            self.entities[name] = (len(self.parsed.entities), number, set(unique))
            self.parsed.entities.append(StoredEntity(name, entity_type, list(unique), origin, list(unique.values())))
            return
        index, line, present = earlier
        first = self.parsed.entities[index]
        new: dict[str, Origin] = {}
        for observation, made in zip(observations, origins, strict=True):
            if observation not in present:
                new.setdefault(observation, made)
        if not new:
            raise _Skip(f"entity {_shown(name)} repeats the one on line {line}")
        present.update(new)
        self.parsed.entities[index] = StoredEntity(
            first.name, first.entity_type, [*first.observations, *new], first.origin,
            [*first.observation_origins, *new.values()])
        self.parsed.notes.append(Problem(number, f"entity {_shown(name)} is also on line {line}: its {len(new)} "
                                                 "observation(s) not there were added to it"))

    def relation(self, number: int, record: dict[str, Any], checked: bool) -> None:
        source = _text(record, "from", MAX_NAME_LENGTH, "relation", checked)
        target = _text(record, "to", MAX_NAME_LENGTH, "relation", checked)
        relation_type = _text(record, "relationType", MAX_NAME_LENGTH, "relation", checked)
        identity = (source, target, relation_type)
        if identity in self.relations:
            raise _Skip(f"relation {_shown(source)} {_shown(relation_type)} {_shown(target)} repeats the one on "
                        f"line {self.relations[identity]}")
        origin = self.origin(number, record, "relation", None)
        self.relations[identity] = number
        self.parsed.relations.append(StoredRelation(source, target, relation_type, origin))

    def origin(self, number: int, record: dict[str, Any], kind: str, name: str | None) -> Origin:
        at, by = record.get("createdAt"), record.get("createdBy")
        if at is None and by is None:
            return self.fallback
        found = _origin(at, by)
        if found is None:
            what = kind if name is None else f"{kind} {_shown(name)}"
            self.parsed.notes.append(Problem(number, f"{what}: createdAt/createdBy {_shown(at)}/{_shown(by)} are "
                                                     "not a time and a client id; the import's are recorded"))
            return self.fallback
        return found

    def observation_origins(self, number: int, record: dict[str, Any], name: str, count: int) -> list[Origin]:
        made = record.get("observationsCreated")
        if made is None:
            return [self.fallback] * count
        if not isinstance(made, list) or len(made) != count:
            self.parsed.notes.append(Problem(number, f"entity {_shown(name)}: observationsCreated is not an array "
                                                     "as long as observations; the import's provenance is recorded"))
            return [self.fallback] * count
        origins: list[Origin] = []
        bad = False
        for item in made:
            found = _origin(item.get("at"), item.get("by")) if isinstance(item, dict) else None
            bad = bad or (found is None and item is not None)
            origins.append(self.fallback if found is None else found)
        if bad:
            self.parsed.notes.append(Problem(number, f"entity {_shown(name)}: some of observationsCreated are not a "
                                                     "time and a client id; the import's are recorded for those"))
        return origins


def _records(value: Any) -> Iterator[Any]:
    """The records of one JSON value: itself, or a read_graph result's entities and relations."""
    if (isinstance(value, dict) and "type" not in value and set(value) <= {"entities", "relations"}
            and all(isinstance(v, list) for v in value.values())):
        for entity in value.get("entities", []):
            yield {"type": "entity", **entity} if isinstance(entity, dict) else entity
        for relation in value.get("relations", []):
            yield {"type": "relation", **relation} if isinstance(relation, dict) else relation
        return
    yield value


def _origin(at: Any, by: Any) -> Origin | None:
    if not isinstance(by, str) or not _encodable(by) or len(by) > MAX_NAME_LENGTH:
        return None
    seconds: float | None = None
    if isinstance(at, str):
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            return None
        seconds = (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
    elif isinstance(at, int | float) and not isinstance(at, bool):
        seconds = float(at)  # unix seconds, as some tools write it
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= _LAST_TIME:
        return None  # also what an export could not write back as a date
    return Origin(seconds, by)


def _text(record: dict[str, Any], key: str, limit: int, what: str, checked: bool) -> str:
    value = record.get(key)
    if checked and type(value) is str and len(value) <= limit:
        return value  # the usual case, without building a message
    if key not in record:
        raise _Skip(f'{what} without "{key}"')
    value = record[key]
    _check_text(value, f"{what} {key}", limit, checked)
    return str(value)


def _check_text(value: Any, where: str, limit: int, checked: bool) -> None:
    if not isinstance(value, str):
        raise _Skip(f"{where} must be a string, not {_json_type(value)}")
    if len(value) > limit:
        raise _Skip(f"{where} is {len(value)} characters long; the limit is {limit}")
    if not checked and not _encodable(value):
        raise _Skip(f"{where} contains an unpaired UTF-16 surrogate, which is not text")


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_TYPE_NAMES: Final = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
                      float: "a number", type(None): "null"}


def _json_type(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _shown(value: Any, limit: int = 60) -> str:
    """A value for a message: as JSON, shortened."""
    shown = json.dumps(value, ensure_ascii=False) if isinstance(value, str | int | float | bool | None) else (
        _json_type(value))
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


# --- importing ------------------------------------------------------------------------------------


class ImportRefused(Exception):
    """The import would cross the owner's quota; nothing was imported. The message says what to do."""


@dataclass(frozen=True, slots=True)
class ImportReport:
    parsed: ParsedFile
    imported: Imported

    def lines(self, shown: int = 20) -> list[str]:
        p, i = self.parsed, self.imported
        present = Imported(len(p.entities) - i.entities, p.observations - i.observations,
                           len(p.relations) - i.relations)
        out = [f"imported {i.entities} entities, {i.observations} observations, {i.relations} relations",
               f"already there (unchanged): {present.entities} entities, {present.observations} observations, "
               f"{present.relations} relations"]
        for title, problems in (("skipped", p.skipped), ("noted", p.notes)):
            if problems:
                out.append(f"{title} {len(problems)} record(s):" if title == "skipped" else
                           f"{len(problems)} note(s):")
                out += [f"  line {problem.line}: {problem.reason}" for problem in problems[:shown]]
                if len(problems) > shown:
                    out.append(f"  ... and {len(problems) - shown} more")
        return out


def _entity_batches(entities: list[StoredEntity]) -> Iterator[list[StoredEntity]]:
    batch: list[StoredEntity] = []
    observations = 0
    for entity in entities:
        if batch and (len(batch) >= ENTITY_BATCH or observations + len(entity.observations) > OBSERVATION_BATCH):
            yield batch
            batch, observations = [], 0
        batch.append(entity)
        observations += len(entity.observations)
    if batch:
        yield batch


async def import_parsed(store: GraphStore, owner: str, parsed: ParsedFile, quota: Quota | None) -> Imported:
    """Pass 2: write what pass 1 read, a batch per transaction (entities first, so that relations
    follow them in creation order, as in the file). With a quota, an import that could cross it
    (were none of the file already there) is refused before anything is written; the store checks
    each batch too (the server may write meanwhile), and a batch refused then stops the import,
    the batches before it kept (`ImportRefused` says so: running the import again adds the rest)."""
    if quota is not None:
        before = await store.usage(owner)
        most = parsed.usage()
        try:
            quota.check(before, Usage(before.entities + most.entities, before.observations + most.observations,
                                      before.bytes + most.bytes))
        except QuotaExceededError as exc:
            raise ImportRefused(
                f"this file holds up to {most.entities:,} entities, {most.observations:,} observations and "
                f"{most.bytes:,} bytes of text; with what the memory holds now ({before.entities:,} entities, "
                f"{before.observations:,} observations, {before.bytes:,} bytes) that could go over the limit of "
                f"{exc.limit:,} {exc.measure} ({exc.SETTINGS[exc.measure]}). Nothing was imported: raise the "
                "limit, delete what is no longer needed, or pass --ignore-quota") from None
    total = Imported()
    limit = quota if quota is not None else Quota(0, 0, 0)
    batches: Iterator[tuple[Sequence[StoredEntity], Sequence[StoredRelation]]] = itertools.chain(
        ((batch, []) for batch in _entity_batches(parsed.entities)),
        (([], parsed.relations[start:start + RELATION_BATCH]) for start in range(0, len(parsed.relations),
                                                                                   RELATION_BATCH)))
    # One batch ahead: each call prepares its batch (Python's share of the work) while the store
    # writes the one before, and writes once that one succeeded (`ready`), so batches land in
    # the file's order and none after a refused one. On Redis this overlaps the server's CPU with
    # this process's (docs/performance.md).
    running: list[asyncio.Task[Imported]] = []
    try:
        try:
            for entities, relations in batches:
                running.append(asyncio.create_task(store.import_graph(
                    owner, entities, relations, limit, ready=running[-1] if running else None)))
                if len(running) == 2:
                    total += await running.pop(0)
            if running:
                total += await running.pop()
        finally:
            for task in running:  # only after a failure: the batch after it writes nothing
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    except QuotaExceededError as exc:
        raise ImportRefused(
            f"{exc}: the memory grew while importing. Imported so far: {total.entities} entities, "
            f"{total.observations} observations, {total.relations} relations; running the import again adds only "
            "what is missing") from None
    return total

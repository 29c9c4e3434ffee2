"""The knowledge graph each user keeps, and the storage contract every backend implements.

The data model and semantics follow the official `@modelcontextprotocol/server-memory`, so that a
client written against it works unchanged. Contract every `GraphStore` keeps:

* Every method takes `owner` (the user's OAuth subject) first and sees only that owner's rows;
  two owners may use the same entity names without ever touching each other's data.
* An entity name is case-sensitive and unique per owner. `create_entities` skips names that exist,
  and later duplicates within the same call (the first one wins). Observations are a set per entity
  kept in insertion order: an observation equal to one the entity already has, or to an earlier one
  in the same call, is not stored twice.
* Relations are identified by the exact (from, to, relationType) triple; duplicates are skipped.
  Like the official server, relations may name entities that do not exist.
* Results come back in creation order: entities in the order they were created, each entity's
  observations in the order they were added, relations in the order they were created.
* Each mutation is all-or-nothing: `add_observations` with any unknown entity raises
  `EntityNotFoundError` and stores nothing.
* Every string is exactly its Python string: a name, type, observation or query containing NUL or
  any other character (valid Unicode; lone surrogates are not text and are refused before the
  store) matches only itself. "Alice\\0x" is not "Alice" to any method, and search finds text
  after a NUL like any other text.
* Per-owner quota: the writes that add data (`create_entities`, `create_relations`,
  `add_observations`) take a `Quota`, and a write that would bring the owner above one of its
  limits raises `QuotaExceededError` and stores nothing. Deletions are never refused.
* Provenance: every entity, observation and relation records when it was created and by which
  client (`Origin`). The mutations that add take it as `origin` (None: unknown, as for data
  stored before provenance existed); the tools' results never show it, `export_batches` gives it
  and `import_graph` takes it, so that it survives an export and an import
  (`server.memory.jsonl`). An observation keeps the origin of its first addition; adding it again
  changes nothing.
* Removal: `delete_graph` first closes the owner's graph; from then on every mutation for that
  owner raises `GraphClosedError` and stores nothing, in the same transaction as the write would
  have been, so that nothing written after the removal began can outlive it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class Entity(BaseModel):
    name: str
    entityType: str
    observations: list[str]


class Relation(BaseModel):
    # `from` is a Python keyword: the attribute is `from_`, the wire name `from`. A validation
    # alias (not `alias`) keeps `Relation(from_=...)` valid for type checkers without a plugin.
    model_config = ConfigDict(frozen=True, serialize_by_alias=True)

    from_: str = Field(validation_alias=AliasChoices("from", "from_"), serialization_alias="from")
    to: str
    relationType: str


class KnowledgeGraph(BaseModel):
    entities: list[Entity]
    relations: list[Relation]


Piece = tuple[bytes, bytes]
"""A run of items (entities or relations) as JSON, each item preceded by a comma: (the JSON, the
same JSON escaped as the inside of a JSON string). See `GraphJSON`: the leading commas let pieces
follow each other on the wire with no separator between them."""


def entity_json(name: str, entity_type: str, observations: list[str]) -> bytes:
    return orjson.dumps({"name": name, "entityType": entity_type, "observations": observations})


def relation_json(from_name: str, to_name: str, relation_type: str) -> bytes:
    return orjson.dumps({"from": from_name, "to": to_name, "relationType": relation_type})


def piece(items: Iterable[bytes]) -> Piece:
    """The piece of these items (each one's JSON)."""
    run = b",".join([b"", *items])
    return run, orjson.dumps(run.decode())[1:-1]


@dataclass(frozen=True, slots=True)
class GraphJSON:
    """A graph (or part of one) as a tool result carries it, already serialised.

    `json` is the object `{"entities": [...], "relations": [...]}` in the wire shape, compact,
    exactly as `orjson.dumps` writes it; `text` is that JSON as a JSON string (quoted, escaped),
    the value of the result's text block. Each is kept as the list of byte strings it is the
    concatenation of (`json_parts`, `text_parts`), and is never joined on the way to the wire.
    Queries return JSON rather than models because a large graph goes straight to the wire: a
    10,000-entity `read_graph` is 4-5 MB, and building models for it, dumping them and escaping
    the text took longer than everything else in the call; joining the pieces of a graph a store
    already keeps serialised was, after that, the largest remaining cost (docs/performance.md).
    Escaping is per character, so the escaped pieces join like the JSON ones.
    """

    json_parts: tuple[bytes | memoryview, ...]
    text_parts: tuple[bytes | memoryview, ...]
    next_key: tuple[int, ...] | None = None
    """Set on a page of a paged query that has more after it: the sort key of the page's last
    entity, which the next page starts after (`server.memory.paging` turns it into a cursor)."""

    @classmethod
    def of(cls, entities: Iterable[Piece], relations: Iterable[Piece]) -> GraphJSON:
        """From the pieces of the entities and of the relations, in order; the pieces are not copied
        (the first of a kind is used without its leading comma, through a memoryview)."""
        json_parts: list[bytes | memoryview] = [b'{"entities":[']
        text_parts: list[bytes | memoryview] = [b'"{\\"entities\\":[']
        closings = ((b'],"relations":[', b'],\\"relations\\":['), (b"]}", b']}"'))
        for pieces, closing in zip((entities, relations), closings, strict=True):
            first = True
            for item_json, item_text in pieces:
                if not item_json:
                    continue
                json_parts.append(memoryview(item_json)[1:] if first else item_json)
                text_parts.append(memoryview(item_text)[1:] if first else item_text)
                first = False
            json_parts.append(closing[0])
            text_parts.append(closing[1])
        return cls(json_parts=tuple(json_parts), text_parts=tuple(text_parts))

    @property
    def json(self) -> bytes:
        return b"".join(self.json_parts)

    @property
    def text(self) -> bytes:
        return b"".join(self.text_parts)

    def model(self) -> KnowledgeGraph:
        return KnowledgeGraph.model_validate_json(self.json)


class ObservationAddition(BaseModel):
    entityName: str
    contents: list[str]


class AddedObservations(BaseModel):
    entityName: str
    addedObservations: list[str]


class ObservationDeletion(BaseModel):
    entityName: str
    observations: list[str]


class EntityNotFoundError(Exception):
    """An operation that needs existing entities named one that the owner does not have."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        if len(self.names) == 1:
            message = f"Entity with name {self.names[0]} not found"
        else:
            message = "Entities with names " + ", ".join(self.names) + " not found"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one owner stores: entities, observations, and bytes of text (UTF-8 of entity names and
    types, observations, and relations' from, to and type; indexes and the read view not counted)."""

    entities: int = 0
    observations: int = 0
    bytes: int = 0


DEFAULT_MAX_ENTITIES: Final = 100_000
DEFAULT_MAX_OBSERVATIONS: Final = 1_000_000
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Quota:
    """The most one owner may store (`Usage`'s measures); 0 means no limit. The defaults leave
    room for years of ordinary use (a 10,000-entity graph is about 5 MB) while keeping one user from
    filling the disk that every user shares."""

    entities: int = DEFAULT_MAX_ENTITIES
    observations: int = DEFAULT_MAX_OBSERVATIONS
    bytes: int = DEFAULT_MAX_BYTES

    def check(self, before: Usage, after: Usage) -> None:
        """Raise `QuotaExceededError` if `after` grows a measure beyond its limit. A measure that
        does not grow is never refused, even above its limit (the limit may have been lowered)."""
        for measure in ("entities", "observations", "bytes"):
            limit, old, new = getattr(self, measure), getattr(before, measure), getattr(after, measure)
            if limit and new > old and new > limit:
                raise QuotaExceededError(measure, old, new, limit)


DEFAULT_QUOTA: Final = Quota()


def text_bytes(*texts: str) -> int:
    """The size of texts as `Usage` counts it."""
    return sum(len(text.encode()) for text in texts)


class QuotaExceededError(Exception):
    """A write would bring its owner above a limit of their `Quota`; nothing was stored."""

    SETTINGS: Final = {"entities": "memory_max_entities", "observations": "memory_max_observations",
                       "bytes": "memory_max_bytes"}

    def __init__(self, measure: str, usage: int, after: int, limit: int) -> None:
        self.measure, self.usage, self.after, self.limit = measure, usage, after, limit
        super().__init__(f"storage quota: this would bring your memory to {after:,} {measure}, over the limit of "
                         f"{limit:,} {measure} (you store {usage:,} now)")


class GraphClosedError(Exception):
    """The owner's graph takes no more writes: the account is being removed (or was)."""

    def __init__(self) -> None:
        super().__init__("this account is being removed: its memory can no longer be changed")


@dataclass(frozen=True, slots=True)
class Origin:
    """Provenance: when (`at`, unix seconds) and by which client (`by`: the OAuth client id of the
    principal, "stdio", "import"...) a piece of the graph was created."""

    at: float
    by: str


@dataclass(frozen=True, slots=True)
class StoredEntity:
    """An entity with its provenance, as `export_batches` yields it and `import_graph` takes it.
    `observation_origins` is parallel to `observations`; None anywhere means unknown."""

    name: str
    entity_type: str
    observations: Sequence[str]
    origin: Origin | None = None
    observation_origins: Sequence[Origin | None] = ()

    def observation_origin(self, index: int) -> Origin | None:
        return self.observation_origins[index] if index < len(self.observation_origins) else None


@dataclass(frozen=True, slots=True)
class StoredRelation:
    """A relation with its provenance (`StoredEntity`'s counterpart)."""

    from_: str
    to: str
    relation_type: str
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class Imported:
    """What an `import_graph` call added (what the owner did not have yet)."""

    entities: int = 0
    observations: int = 0
    relations: int = 0

    def __add__(self, other: Imported) -> Imported:
        return Imported(self.entities + other.entities, self.observations + other.observations,
                        self.relations + other.relations)


ExportBatch = list[StoredEntity] | list[StoredRelation]


class GraphStore(Protocol):
    async def create_entities(self, owner: str, entities: Sequence[Entity], quota: Quota = DEFAULT_QUOTA,
                              origin: Origin | None = None) -> list[Entity]:
        """Store the entities whose names are new; return exactly those, as stored."""
        ...

    async def create_relations(self, owner: str, relations: Sequence[Relation], quota: Quota = DEFAULT_QUOTA,
                               origin: Origin | None = None) -> list[Relation]:
        """Store the relations that are new; return exactly those."""
        ...

    async def add_observations(self, owner: str, additions: Sequence[ObservationAddition],
                               quota: Quota = DEFAULT_QUOTA, origin: Origin | None = None
                               ) -> list[AddedObservations]:
        """One result per addition, listing what was actually new.

        Raises `EntityNotFoundError` (naming every missing entity) before storing anything.
        """
        ...

    async def delete_entities(self, owner: str, names: Sequence[str]) -> None:
        """Delete the entities, their observations, and every relation from or to any of the names."""
        ...

    async def delete_observations(self, owner: str, deletions: Sequence[ObservationDeletion]) -> None:
        """Exact-string removal; unknown entities and observations are ignored."""
        ...

    async def delete_relations(self, owner: str, relations: Sequence[Relation]) -> None:
        """Exact-triple removal; unknown relations are ignored."""
        ...

    # The graph queries. With `after` or `limit` each answers one page of its result (at most
    # `limit` entities, in its order, after the entity whose sort key is `after`; `next_key` set
    # when more follow): the rules of a page are server/memory/paging.py's. Without them, the
    # whole result, exactly as before paging existed.

    async def read_graph(self, owner: str, *, after: tuple[int, ...] | None = None, limit: int | None = None
                         ) -> GraphJSON:
        """Every entity (sort key: (entity id,), creation order) and every relation."""
        ...

    async def search_nodes(self, owner: str, query: str, *, after: tuple[int, ...] | None = None,
                           limit: int | None = None) -> GraphJSON:
        """The entities `query` finds, in rank order (`server.memory.search`: every entity whose
        name, type or any observation contains it ignoring case, and those where a query word starts
        a word), plus every relation with at least one endpoint among them. With `limit`, at most
        that many, those ranked after the key `after`; `next_key` is then the last one's rank key
        when more remain."""
        ...

    async def open_nodes(self, owner: str, names: Sequence[str], *, after: tuple[int, ...] | None = None,
                         limit: int | None = None) -> GraphJSON:
        """The named entities that exist (sort key: (entity id,)), plus every relation with at
        least one endpoint among them."""
        ...

    async def usage(self, owner: str) -> Usage: ...

    def export_batches(self, owner: str, batch_size: int = 512) -> AsyncIterator[ExportBatch]:
        """The owner's graph with its provenance, in batches of at most `batch_size` items: every
        entity in creation order (each with its observations in the order added), then every
        relation in creation order. Memory stays bounded by a batch, whatever the graph's size."""
        ...

    async def import_graph(self, owner: str, entities: Sequence[StoredEntity], relations: Sequence[StoredRelation],
                           quota: Quota = DEFAULT_QUOTA, ready: Awaitable[object] | None = None) -> Imported:
        """Add what the owner does not have yet, keeping the given provenance, in one transaction:
        a new entity with its observations; to an existing entity (its type and origin kept) the
        observations it lacks; a new relation. Idempotent: the same call again adds nothing.
        Refused whole, like every write, by a closed graph or a quota it would cross.

        `ready`, when given, is awaited after the call has prepared what it writes and before it
        writes; if it raises, nothing is written and the call raises the same. An import passes
        the call before it, so that it prepares a batch while the store writes the one before, and
        writes in the file's order (server/memory/jsonl.py, `import_parsed`)."""
        ...

    async def delete_graph(self, owner: str) -> int:
        """Close the owner's graph for good (see the module) and forget everything it holds;
        returns how many entities this call deleted. Incremental (short transactions) and
        resumable: called again after an interruption, it deletes what is left. Not a tool: only
        `memory-mcp users remove` calls it."""
        ...

"""The MCP face of the knowledge graph: the nine tools of the official `@modelcontextprotocol/server-memory`.

Names, input schemas, output schemas and result shapes are those of the official server, so a
client or prompt written for it works unchanged; the JSON schemas below are the ones its SDK
publishes (zod 4 converted to draft-07; output schemas close their objects, input schemas do not).
On top of the schemas, every call is checked against the strict models here: no unknown fields,
no wrong types, and the size limits below, which the official server does not have but a shared
server needs. A rejected call returns an `isError` result that says which field is wrong and why,
and stores nothing.

The one addition: read_graph, search_nodes and open_nodes take optional `limit` and `cursor`
arguments and answer `nextCursor` (and a `note` when the server's size cap cut the result) when
more follow; without them the answer is the official one, unless it exceeds the cap
(`server.memory.paging`, docs/performance.md#paging).

Strings are taken exactly as sent, NUL and every other character included (the store's contract,
`server.memory.graph`); the only string refused is one with a lone UTF-16 surrogate, which is not
text, with the same message in every tool (`_describe_problem`, "string_unicode"). A write that
would exceed the caller's quota, or that reaches an account being removed, is an `isError` result
too, and stores nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Generic, TypeVar, get_args, get_origin

import mcp_types as types
import orjson
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from auth.settings import READ_SCOPE, WRITE_SCOPE
from server.memory import paging
from server.memory.graph import (
    DEFAULT_QUOTA,
    Entity,
    EntityNotFoundError,
    GraphClosedError,
    GraphJSON,
    GraphStore,
    ObservationAddition,
    ObservationDeletion,
    Origin,
    Quota,
    QuotaExceededError,
    Relation,
)
from server.memory.paging import MAX_PAGE_SIZE
from transports.store import StoreUnavailable

MAX_ITEMS_PER_CALL: Final = 1_000
"""Longest list accepted anywhere in the arguments (entities, relations, names, observations...)."""
MAX_OBSERVATIONS_PER_CALL: Final = 10_000
"""Most observation strings in one call, summed over all its entities."""
MAX_NAME_LENGTH: Final = 512
"""Longest entity name, entity type or relation type, in characters."""
MAX_OBSERVATION_LENGTH: Final = 16 * 1024
"""Longest observation, in characters."""
MAX_QUERY_LENGTH: Final = MAX_OBSERVATION_LENGTH
"""Longest search query: a longer one could not be contained in any stored text."""


# --- argument models ---------------------------------------------------------------------------


Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]
Text = Annotated[str, Field(max_length=MAX_OBSERVATION_LENGTH)]
Query = Annotated[str, Field(max_length=MAX_QUERY_LENGTH)]
T = TypeVar("T")
Items = Annotated[list[T], Field(max_length=MAX_ITEMS_PER_CALL)]


class _Arguments(BaseModel):
    # strict: a number is not a string here, as in the published JSON schema.
    model_config = ConfigDict(strict=True, extra="forbid")


class _EntityIn(_Arguments):
    name: Name
    entityType: Name
    observations: Items[Text]


class _RelationIn(_Arguments):
    from_: Name = Field(alias="from")
    to: Name
    relationType: Name

    def to_relation(self) -> Relation:
        return Relation(from_=self.from_, to=self.to, relationType=self.relationType)


class _AdditionIn(_Arguments):
    entityName: Name
    contents: Items[Text]


class _DeletionIn(_Arguments):
    entityName: Name
    observations: Items[Text]


def _check_observation_total(counts: Sequence[int]) -> None:
    total = sum(counts)
    if total > MAX_OBSERVATIONS_PER_CALL:
        raise ValueError(
            f"the call carries {total} observations in all; at most {MAX_OBSERVATIONS_PER_CALL} are accepted"
            " per call, so split it into several calls"
        )


class _CreateEntities(_Arguments):
    entities: Items[_EntityIn]

    @model_validator(mode="after")
    def _total(self) -> _CreateEntities:
        _check_observation_total([len(e.observations) for e in self.entities])
        return self


class _Relations(_Arguments):
    relations: Items[_RelationIn]


class _AddObservations(_Arguments):
    observations: Items[_AdditionIn]

    @model_validator(mode="after")
    def _total(self) -> _AddObservations:
        _check_observation_total([len(a.contents) for a in self.observations])
        return self


class _DeleteEntities(_Arguments):
    entityNames: Items[Name]


class _DeleteObservations(_Arguments):
    deletions: Items[_DeletionIn]

    @model_validator(mode="after")
    def _total(self) -> _DeleteObservations:
        _check_observation_total([len(d.observations) for d in self.deletions])
        return self


def _check_limit(value: object) -> object:
    if value is not None and (type(value) is not int or not 1 <= value <= MAX_PAGE_SIZE):
        shown = repr(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else _JSON_TYPE_NAMES.get(type(value), "that")
        raise ValueError(f"must be a whole number from 1 to {MAX_PAGE_SIZE} (the most entities per page), not {shown}")
    return value


# Paging (server/memory/paging.py): both optional; a null is the same as leaving it out.
Limit = Annotated[int | None, BeforeValidator(_check_limit)]
Cursor = str | None


class _ReadGraph(_Arguments):
    limit: Limit = None
    cursor: Cursor = None


class _SearchNodes(_Arguments):
    query: Query
    limit: Limit = None
    cursor: Cursor = None


class _OpenNodes(_Arguments):
    names: Items[Name]
    limit: Limit = None
    cursor: Cursor = None


# --- the operations ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Query:
    """A graph query, run by `call_tool` through `paging.answer` (pages, cursors, the size cap)."""

    tool: str
    arguments: str
    """What its cursors record of the arguments (`paging.digest`)."""
    fetch: paging.Fetch
    limit: int | None
    cursor: str | None
    key_parts: int | None


Result = dict[str, Any] | _Query


async def _create_entities(graph: GraphStore, owner: str, args: _CreateEntities, quota: Quota,
                           origin: Origin | None) -> Result:
    entities = [Entity(name=e.name, entityType=e.entityType, observations=e.observations) for e in args.entities]
    created = await graph.create_entities(owner, entities, quota, origin)
    return {"entities": [e.model_dump() for e in created]}


async def _create_relations(graph: GraphStore, owner: str, args: _Relations, quota: Quota,
                            origin: Origin | None) -> Result:
    created = await graph.create_relations(owner, [r.to_relation() for r in args.relations], quota, origin)
    return {"relations": [r.model_dump() for r in created]}


async def _add_observations(graph: GraphStore, owner: str, args: _AddObservations, quota: Quota,
                            origin: Origin | None) -> Result:
    additions = [ObservationAddition(entityName=a.entityName, contents=a.contents) for a in args.observations]
    results = await graph.add_observations(owner, additions, quota, origin)
    return {"results": [r.model_dump() for r in results]}


async def _delete_entities(graph: GraphStore, owner: str, args: _DeleteEntities, quota: Quota,
                           origin: Origin | None) -> Result:
    await graph.delete_entities(owner, args.entityNames)
    return {"success": True, "message": "Entities deleted successfully"}


async def _delete_observations(graph: GraphStore, owner: str, args: _DeleteObservations, quota: Quota,
                               origin: Origin | None) -> Result:
    deletions = [ObservationDeletion(entityName=d.entityName, observations=d.observations) for d in args.deletions]
    await graph.delete_observations(owner, deletions)
    return {"success": True, "message": "Observations deleted successfully"}


async def _delete_relations(graph: GraphStore, owner: str, args: _Relations, quota: Quota,
                            origin: Origin | None) -> Result:
    await graph.delete_relations(owner, [r.to_relation() for r in args.relations])
    return {"success": True, "message": "Relations deleted successfully"}


async def _read_graph(graph: GraphStore, owner: str, args: _ReadGraph, quota: Quota,
                      origin: Origin | None) -> Result:
    async def fetch(after: paging.Key | None, limit: int | None) -> GraphJSON:
        return await graph.read_graph(owner, after=after, limit=limit)
    return _Query("read_graph", paging.digest(), fetch, args.limit, args.cursor, key_parts=1)


async def _search_nodes(graph: GraphStore, owner: str, args: _SearchNodes, quota: Quota,
                        origin: Origin | None) -> Result:
    async def fetch(after: paging.Key | None, limit: int | None) -> GraphJSON:
        return await graph.search_nodes(owner, args.query, after=after, limit=limit)
    # The search ranks its hits with keys of its own making: their length is the store's.
    return _Query("search_nodes", paging.digest(args.query), fetch, args.limit, args.cursor, key_parts=None)


async def _open_nodes(graph: GraphStore, owner: str, args: _OpenNodes, quota: Quota,
                      origin: Origin | None) -> Result:
    async def fetch(after: paging.Key | None, limit: int | None) -> GraphJSON:
        return await graph.open_nodes(owner, args.names, after=after, limit=limit)
    return _Query("open_nodes", paging.names_digest(args.names), fetch, args.limit, args.cursor, key_parts=1)


A = TypeVar("A", bound=_Arguments)


@dataclass(frozen=True, slots=True)
class _Operation(Generic[A]):
    arguments: type[A]
    run: Callable[[GraphStore, str, A, Quota, Origin | None], Awaitable[Result]]


_OPERATIONS: Final[dict[str, _Operation[Any]]] = {
    "create_entities": _Operation(_CreateEntities, _create_entities),
    "create_relations": _Operation(_Relations, _create_relations),
    "add_observations": _Operation(_AddObservations, _add_observations),
    "delete_entities": _Operation(_DeleteEntities, _delete_entities),
    "delete_observations": _Operation(_DeleteObservations, _delete_observations),
    "delete_relations": _Operation(_Relations, _delete_relations),
    "read_graph": _Operation(_ReadGraph, _read_graph),
    "search_nodes": _Operation(_SearchNodes, _search_nodes),
    "open_nodes": _Operation(_OpenNodes, _open_nodes),
}

TOOL_SCOPES: Final[dict[str, str]] = {
    "create_entities": WRITE_SCOPE,
    "create_relations": WRITE_SCOPE,
    "add_observations": WRITE_SCOPE,
    "delete_entities": WRITE_SCOPE,
    "delete_observations": WRITE_SCOPE,
    "delete_relations": WRITE_SCOPE,
    "read_graph": READ_SCOPE,
    "search_nodes": READ_SCOPE,
    "open_nodes": READ_SCOPE,
}


async def call_tool(graph: GraphStore, owner: str, name: str, arguments: dict[str, Any] | None,
                    quota: Quota = DEFAULT_QUOTA, origin: Origin | None = None,
                    max_result_bytes: int = paging.DEFAULT_MAX_RESULT_BYTES) -> types.CallToolResult | GraphResult:
    """Run tool `name` for `owner`, whose writes may not take them past `quota`; what they add
    records `origin` (when, and which client) as its provenance, which no result shows. Graph
    queries answer at most `max_result_bytes` of graph JSON at once (0: no cap; `paging.answer`).

    Bad arguments and a missing entity come back as an `isError` result the model can read and act
    on; an unknown tool name is a protocol error (`MCPError`, INVALID_PARAMS). A store that cannot
    answer now (`StoreUnavailable`: locked elsewhere, disk full) is an `isError` result that says
    to retry, on every path that calls tools; other storage failures propagate.

    A graph query's result comes back as a `GraphResult`, which keeps the graph as the JSON the
    store wrote (`GraphJSON` says why); its `result()` is the ordinary `CallToolResult`.
    """
    operation = _OPERATIONS.get(name)
    if operation is None:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
    try:
        args = operation.arguments.model_validate(arguments or {})
    except ValidationError as exc:
        return _error(_describe_invalid(name, operation.arguments, exc))
    try:
        result = await operation.run(graph, owner, args, quota, origin)
        if isinstance(result, _Query):
            return GraphResult(await paging.answer(result.tool, result.arguments, result.fetch, limit=result.limit,
                                                   cursor=result.cursor, max_bytes=max_result_bytes,
                                                   key_parts=result.key_parts))
    except paging.CursorError as exc:
        return _error(f"Invalid arguments for {name}: {exc}. Nothing was changed.")
    except EntityNotFoundError as exc:
        return _error(
            f"{exc}. Nothing was added: every entity must exist before observations can be added to it."
            " Create the missing entities with create_entities first, or check the spelling"
            " (entity names are case-sensitive)."
        )
    except QuotaExceededError as exc:
        return _error(
            f"Storage quota reached: this call would bring your memory to {exc.after:,} {exc.measure}, over the"
            f" limit of {exc.limit:,} (you store {exc.usage:,} now). Nothing was stored. Make room by deleting"
            " what is no longer needed (delete_entities, delete_observations, delete_relations) or store less"
            f" in this call; the server's administrator can raise the limit ({exc.SETTINGS[exc.measure]})."
        )
    except GraphClosedError:
        return _error("This account is being removed: its memory can no longer be changed, and nothing was"
                      " stored. Sign in with another account to keep using memory.")
    except StoreUnavailable as exc:
        # All or nothing, but not always known which: Redis may have run a script whose answer was
        # lost with the connection. Retrying is safe either way, since no tool adds what exists.
        return _error(f"The memory store is temporarily unavailable ({exc.reason}); this call did not complete"
                      " and was applied either entirely or not at all. Retry it in"
                      f" {exc.retry_after} seconds: a retry never adds anything twice.")
    return types.CallToolResult(content=[types.TextContent(text=orjson.dumps(result).decode())],
                                structured_content=result)


@dataclass(frozen=True, slots=True)
class GraphResult:
    """The result of a graph query (read_graph, search_nodes, open_nodes), still as JSON.

    Like every result here, its text is the structured result as compact JSON, unlike the official
    server's two-space indent: the text is what the model reads, and a large read_graph then costs
    about a third fewer tokens (the official server's most reported problem is read_graph
    overflowing the context).
    """

    graph: GraphJSON

    def result(self) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text=self.graph.json.decode())],
                                    structured_content=orjson.loads(self.graph.json))

    def stand_in(self) -> types.CallToolResult:
        """The result's shape, with empty values where `graph.text` and `graph.json` go."""
        return types.CallToolResult(content=[types.TextContent(text="")], structured_content={})


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


# --- messages for invalid arguments ------------------------------------------------------------

_MAX_REPORTED_PROBLEMS = 5
_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}
_EXPECTED = {
    "string_type": "a string",
    "list_type": "an array",
    "model_type": "an object",
    "dict_type": "an object",
    "model_attributes_type": "an object",
}


def _describe_invalid(tool: str, model: type[BaseModel], exc: ValidationError) -> str:
    problems = [_describe_problem(model, error) for error in exc.errors()]
    shown = problems[:_MAX_REPORTED_PROBLEMS]
    more = len(problems) - len(shown)
    summary = "; ".join(shown) + (f"; and {more} more problem(s)" if more else "")
    return f"Invalid arguments for {tool}: {summary}. Nothing was changed."


def _describe_problem(model: type[BaseModel], error: ErrorDetails) -> str:
    loc = error["loc"]
    where = _path(loc) or "arguments"
    kind = error["type"]
    given = error.get("input")
    if kind == "missing":
        return f"{where} is required but missing"
    if kind == "extra_forbidden":
        allowed = ", ".join(_fields_at(model, loc[:-1]))
        return f"{where} is not an accepted field (accepted here: {allowed or 'none'})"
    if kind in _EXPECTED:
        return f"{where} must be {_EXPECTED[kind]}, not {_JSON_TYPE_NAMES.get(type(given), 'that')}"
    if kind == "string_too_long":
        limit = error.get("ctx", {}).get("max_length")
        size = len(given) if isinstance(given, str) else "?"
        return f"{where} is {size} characters long; the limit is {limit} characters"
    if kind == "too_long":
        limit = error.get("ctx", {}).get("max_length")
        size = len(given) if isinstance(given, list) else "?"
        return f"{where} has {size} items; at most {limit} are accepted per call, so split it into several calls"
    if kind == "string_unicode":
        # JSON can carry lone surrogates ("\ud800"), which are not text and cannot be stored.
        return f"{where} contains an unpaired UTF-16 surrogate; send valid Unicode text"
    if kind == "value_error":
        # Raised by our own validators, whose message is already written for the caller.
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    return f"{where}: {error['msg']}"


def _path(loc: tuple[int | str, ...]) -> str:
    """JSON-ish path: `entities[2].name`. Field names are shown as sent (`from`, not `from_`)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + part
    return path


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names (as sent) of the object at `loc` inside `model`'s arguments."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        current = field.annotation
        while get_origin(current) is not None:
            current = get_args(current)[0]
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


# --- tool definitions --------------------------------------------------------------------------

_DRAFT_07 = "http://json-schema.org/draft-07/schema#"


def _string(description: str | None = None) -> dict[str, Any]:
    return {"type": "string", **({"description": description} if description else {})}


def _array(items: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    return {"type": "array", "items": items, **({"description": description} if description else {})}


def _object(properties: dict[str, Any], *, closed: bool) -> dict[str, Any]:
    # zod's JSON schema closes objects (additionalProperties: false) only in output schemas.
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if properties:
        schema["required"] = list(properties)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _root(properties: dict[str, Any], *, closed: bool) -> dict[str, Any]:
    return {"$schema": _DRAFT_07, **_object(properties, closed=closed)}


def _entity_schema(closed: bool) -> dict[str, Any]:
    return _object(
        {
            "name": _string("Unique name that identifies the entity"),
            "entityType": _string("Kind of entity, for example person, organization or event"),
            "observations": _array(_string(), "Facts about the entity, one string each"),
        },
        closed=closed,
    )


def _relation_schema(closed: bool) -> dict[str, Any]:
    return _object(
        {
            "from": _string("Name of the entity the relation starts at"),
            "to": _string("Name of the entity the relation points to"),
            "relationType": _string("Kind of relation, phrased in active voice"),
        },
        closed=closed,
    )


def _graph_output() -> dict[str, Any]:
    schema = _root({"entities": _array(_entity_schema(True)), "relations": _array(_relation_schema(True))},
                   closed=True)
    # Only in a result that is not the last page (server/memory/paging.py); not required.
    schema["properties"]["nextCursor"] = _string(
        "Present when more of the result follows: pass it as cursor, with the same other arguments, for the next page")
    schema["properties"]["note"] = _string("Present when the server's size cap cut the result: says so, and how to"
                                           " get the rest")
    return schema


def _paged_input(properties: dict[str, Any]) -> dict[str, Any]:
    """An input schema whose properties are required, plus the optional paging ones."""
    schema = _root(properties, closed=False)
    schema["properties"] |= {
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                  "description": f"Most entities to return in this page (1 to {MAX_PAGE_SIZE}); default: all, up to"
                                 " the server's size cap"},
        "cursor": _string("The nextCursor of the previous page, to get the page after it; omit for the first page"),
    }
    return schema


_PAGING_HELP = (" Large results come in pages: when a result has nextCursor, call again with the same arguments and"
                " cursor set to it for the rest; limit sets how many entities a page holds.")


def _status_output() -> dict[str, Any]:
    return _root({"success": {"type": "boolean"}, "message": _string()}, closed=True)


def _annotations(*, read_only: bool, destructive: bool, idempotent: bool) -> types.ToolAnnotations:
    return types.ToolAnnotations(
        read_only_hint=read_only, destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=False
    )


_ADDITIVE = {"read_only": False, "destructive": False, "idempotent": False}
_REMOVING = {"read_only": False, "destructive": True, "idempotent": True}
_READING = {"read_only": True, "destructive": False, "idempotent": True}

TOOLS: Final[list[types.Tool]] = [
    types.Tool(
        name="create_entities",
        title="Create Entities",
        description=(
            "Add new entities (nodes) to the knowledge graph, each with a name, an entity type and its first"
            " observations. A name that is already in the graph is skipped, and so is a name repeated later in"
            " the same call (the first occurrence wins). Returns only the entities that were actually created."
        ),
        input_schema=_root({"entities": _array(_entity_schema(False))}, closed=False),
        output_schema=_root({"entities": _array(_entity_schema(True))}, closed=True),
        annotations=_annotations(**_ADDITIVE),
    ),
    types.Tool(
        name="create_relations",
        title="Create Relations",
        description=(
            "Add directed relations between entities, each given by its source (from), target (to) and"
            " relationType; phrase the type in active voice, e.g. works_at. A relation identical to an existing"
            " one is skipped. Returns only the relations that were actually created."
        ),
        input_schema=_root({"relations": _array(_relation_schema(False))}, closed=False),
        output_schema=_root({"relations": _array(_relation_schema(True))}, closed=True),
        annotations=_annotations(**_ADDITIVE),
    ),
    types.Tool(
        name="add_observations",
        title="Add Observations",
        description=(
            "Append observations (facts, as text) to entities that already exist. An observation the entity"
            " already has is skipped; the result lists, per entity, what was really added. If any entity named"
            " does not exist, the whole call fails and nothing is added."
        ),
        input_schema=_root(
            {
                "observations": _array(
                    _object(
                        {
                            "entityName": _string("Name of the existing entity that receives the observations"),
                            "contents": _array(_string(), "Observation texts to add"),
                        },
                        closed=False,
                    )
                )
            },
            closed=False,
        ),
        output_schema=_root(
            {
                "results": _array(
                    _object({"entityName": _string(), "addedObservations": _array(_string())}, closed=True)
                )
            },
            closed=True,
        ),
        annotations=_annotations(**_ADDITIVE),
    ),
    types.Tool(
        name="delete_entities",
        title="Delete Entities",
        description=(
            "Remove entities by name, together with their observations and every relation that starts or ends"
            " at them. Names that are not in the graph are ignored."
        ),
        input_schema=_root({"entityNames": _array(_string(), "Names of the entities to remove")}, closed=False),
        output_schema=_status_output(),
        annotations=_annotations(**_REMOVING),
    ),
    types.Tool(
        name="delete_observations",
        title="Delete Observations",
        description=(
            "Remove particular observations from entities; an observation is removed only if its text matches"
            " exactly. Entities or observations that do not exist are ignored."
        ),
        input_schema=_root(
            {
                "deletions": _array(
                    _object(
                        {
                            "entityName": _string("Name of the entity that holds the observations"),
                            "observations": _array(_string(), "Exact texts of the observations to remove"),
                        },
                        closed=False,
                    )
                )
            },
            closed=False,
        ),
        output_schema=_status_output(),
        annotations=_annotations(**_REMOVING),
    ),
    types.Tool(
        name="delete_relations",
        title="Delete Relations",
        description=(
            "Remove relations from the knowledge graph; a relation is removed only if its from, to and"
            " relationType all match exactly. Relations that do not exist are ignored."
        ),
        input_schema=_root({"relations": _array(_relation_schema(False), "Relations to remove")}, closed=False),
        output_schema=_status_output(),
        annotations=_annotations(**_REMOVING),
    ),
    types.Tool(
        name="read_graph",
        title="Read Graph",
        description="Return the complete knowledge graph: every entity with its observations, and every relation."
        + _PAGING_HELP,
        input_schema=_paged_input({}),
        output_schema=_graph_output(),
        annotations=_annotations(**_READING),
    ),
    types.Tool(
        name="search_nodes",
        title="Search Nodes",
        description=(
            "Search the knowledge graph, best matches first. Finds every entity whose name, type or any"
            " observation contains the query text, ignoring case, and every entity where a word of the query"
            " starts a word of its name, type or observations (case and accents ignored, words in any order,"
            " across fields). Entities matching more of the query's words come first, then name matches"
            " before type matches before observation matches. Returns those entities and every relation"
            " that has at least one of them as an endpoint." + _PAGING_HELP
        ),
        input_schema=_paged_input(
            {"query": _string("Words or text to look for in entity names, entity types and observations")}),
        output_schema=_graph_output(),
        annotations=_annotations(**_READING),
    ),
    types.Tool(
        name="open_nodes",
        title="Open Nodes",
        description=(
            "Fetch entities by their exact (case-sensitive) names, with every relation that has at least one of"
            " them as an endpoint. Names that are not in the graph are skipped." + _PAGING_HELP
        ),
        input_schema=_paged_input({"names": _array(_string(), "Names of the entities to fetch")}),
        output_schema=_graph_output(),
        annotations=_annotations(**_READING),
    ),
]

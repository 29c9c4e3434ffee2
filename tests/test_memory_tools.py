"""The MCP tools (server.memory.tools) over a real graph store, on SQLite and on Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import mcp_types as types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from auth.settings import READ_SCOPE, WRITE_SCOPE
from server.memory.graph import Quota
from server.memory.search import Query, reference_key
from server.memory.tools import (
    MAX_ITEMS_PER_CALL,
    MAX_NAME_LENGTH,
    MAX_OBSERVATION_LENGTH,
    MAX_OBSERVATIONS_PER_CALL,
    TOOL_SCOPES,
    TOOLS,
    GraphResult,
    call_tool,
)
from tests.graph_backends import Backend, Store

OWNER = "user-1"
OFFICIAL_NAMES = [
    "create_entities",
    "create_relations",
    "add_observations",
    "delete_entities",
    "delete_observations",
    "delete_relations",
    "read_graph",
    "search_nodes",
    "open_nodes",
]


def text_of(result: types.CallToolResult) -> str:
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def ok(store: Store, name: str, arguments: dict[str, Any] | None) -> Any:
    result = plain(await call_tool(store, OWNER, name, arguments))
    assert not result.is_error, text_of(result)
    assert result.structured_content == json.loads(text_of(result))
    return result.structured_content


def plain(result: types.CallToolResult | GraphResult) -> types.CallToolResult:
    if isinstance(result, GraphResult):
        assert json.loads(result.graph.text) == result.graph.json.decode()
        converted: types.CallToolResult = result.result()
        return converted
    return result


async def failed(store: Store, name: str, arguments: dict[str, Any] | None) -> str:
    before = await ok(store, "read_graph", {})
    result = plain(await call_tool(store, OWNER, name, arguments))
    assert result.is_error
    assert result.structured_content is None
    assert await ok(store, "read_graph", {}) == before, "a rejected call must not change the graph"
    return text_of(result)


# --- definitions -------------------------------------------------------------------------------


def strip_descriptions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: strip_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [strip_descriptions(v) for v in schema]
    return schema


def official_object(properties: dict[str, Any], closed: bool) -> dict[str, Any]:
    """What zod 4 `toJSONSchema` emits for a z.object (the official SDK's conversion)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if properties:
        schema["required"] = list(properties)
    if closed:
        schema["additionalProperties"] = False
    return schema


STR = {"type": "string"}
STRS = {"type": "array", "items": STR}


def official_schemas(closed: bool) -> dict[str, dict[str, Any]]:
    entity = official_object({"name": STR, "entityType": STR, "observations": STRS}, closed)
    relation = official_object({"from": STR, "to": STR, "relationType": STR}, closed)
    return {"entity": entity, "relation": relation}


def root(properties: dict[str, Any], closed: bool) -> dict[str, Any]:
    return {"$schema": "http://json-schema.org/draft-07/schema#", **official_object(properties, closed)}


def expected_input_schemas() -> dict[str, dict[str, Any]]:
    s = official_schemas(closed=False)
    return {
        "create_entities": root({"entities": {"type": "array", "items": s["entity"]}}, False),
        "create_relations": root({"relations": {"type": "array", "items": s["relation"]}}, False),
        "add_observations": root(
            {"observations": {"type": "array", "items": official_object({"entityName": STR, "contents": STRS}, False)}},
            False,
        ),
        "delete_entities": root({"entityNames": STRS}, False),
        "delete_observations": root(
            {
                "deletions": {
                    "type": "array",
                    "items": official_object({"entityName": STR, "observations": STRS}, False),
                }
            },
            False,
        ),
        "delete_relations": root({"relations": {"type": "array", "items": s["relation"]}}, False),
        "read_graph": paged({}),
        "search_nodes": paged({"query": STR}),
        "open_nodes": paged({"names": STRS}),
    }


def paged(properties: dict[str, Any]) -> dict[str, Any]:
    """The official input schema with the optional paging arguments (issue 14) added."""
    schema = root(properties, False)
    schema["properties"] = {**properties, "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                            "cursor": STR}
    return schema


def expected_output_schemas() -> dict[str, dict[str, Any]]:
    s = official_schemas(closed=True)
    graph = root(
        {"entities": {"type": "array", "items": s["entity"]}, "relations": {"type": "array", "items": s["relation"]}},
        True,
    )
    # Paging (issue 14): optional, only in a result that is not the last page.
    graph["properties"] |= {"nextCursor": STR, "note": STR}
    status = root({"success": {"type": "boolean"}, "message": STR}, True)
    added = official_object({"entityName": STR, "addedObservations": STRS}, True)
    return {
        "create_entities": root({"entities": {"type": "array", "items": s["entity"]}}, True),
        "create_relations": root({"relations": {"type": "array", "items": s["relation"]}}, True),
        "add_observations": root({"results": {"type": "array", "items": added}}, True),
        "delete_entities": status,
        "delete_observations": status,
        "delete_relations": status,
        "read_graph": graph,
        "search_nodes": graph,
        "open_nodes": graph,
    }


def test_tools_are_the_official_nine_with_their_schemas() -> None:
    assert [t.name for t in TOOLS] == OFFICIAL_NAMES
    inputs, outputs = expected_input_schemas(), expected_output_schemas()
    for tool in TOOLS:
        assert tool.description and tool.title
        assert strip_descriptions(tool.input_schema) == inputs[tool.name], tool.name
        assert strip_descriptions(tool.output_schema) == outputs[tool.name], tool.name


def test_every_official_field_is_described() -> None:
    create = next(t for t in TOOLS if t.name == "create_entities")
    entity = create.input_schema["properties"]["entities"]["items"]["properties"]
    assert all(entity[field].get("description") for field in ("name", "entityType", "observations"))
    search = next(t for t in TOOLS if t.name == "search_nodes")
    assert search.input_schema["properties"]["query"]["description"]


def test_annotations() -> None:
    hints = {
        t.name: (
            t.annotations.read_only_hint,
            t.annotations.destructive_hint,
            t.annotations.idempotent_hint,
            t.annotations.open_world_hint,
        )
        for t in TOOLS
        if t.annotations
    }
    additive, removing, reading = (False, False, False, False), (False, True, True, False), (True, False, True, False)
    assert hints == dict(zip(OFFICIAL_NAMES, [additive] * 3 + [removing] * 3 + [reading] * 3, strict=True))


def test_scopes() -> None:
    assert TOOL_SCOPES == {
        name: READ_SCOPE if name in ("read_graph", "search_nodes", "open_nodes") else WRITE_SCOPE
        for name in OFFICIAL_NAMES
    }


def test_tool_list_serialises_with_wire_names() -> None:
    wire = types.Tool.model_validate(TOOLS[0].model_dump(by_alias=True)).model_dump(by_alias=True, exclude_none=True)
    assert {"inputSchema", "outputSchema", "annotations"} <= wire.keys()
    assert wire["annotations"]["openWorldHint"] is False


# --- happy paths -------------------------------------------------------------------------------


async def test_full_session_through_the_tools(store: Store) -> None:
    created = await ok(
        store,
        "create_entities",
        {
            "entities": [
                {"name": "Ada", "entityType": "person", "observations": ["wrote programs"]},
                {"name": "Engine", "entityType": "machine", "observations": []},
                {"name": "Ada", "entityType": "dup", "observations": []},
            ]
        },
    )
    assert created == {
        "entities": [
            {"name": "Ada", "entityType": "person", "observations": ["wrote programs"]},
            {"name": "Engine", "entityType": "machine", "observations": []},
        ]
    }
    assert await ok(
        store, "create_entities", {"entities": [{"name": "Ada", "entityType": "x", "observations": []}]}
    ) == {"entities": []}

    relation = {"from": "Ada", "to": "Engine", "relationType": "programs"}
    assert await ok(store, "create_relations", {"relations": [relation, relation]}) == {"relations": [relation]}
    assert await ok(store, "create_relations", {"relations": [relation]}) == {"relations": []}

    added = await ok(
        store,
        "add_observations",
        {"observations": [{"entityName": "Ada", "contents": ["wrote programs", "met Babbage"]}]},
    )
    assert added == {"results": [{"entityName": "Ada", "addedObservations": ["met Babbage"]}]}

    graph: dict[str, Any] = {
        "entities": [
            {"name": "Ada", "entityType": "person", "observations": ["wrote programs", "met Babbage"]},
            {"name": "Engine", "entityType": "machine", "observations": []},
        ],
        "relations": [relation],
    }
    assert await ok(store, "read_graph", {}) == graph
    assert await ok(store, "read_graph", None) == graph
    assert await ok(store, "search_nodes", {"query": "BABBAGE"}) == {
        "entities": graph["entities"][:1],
        "relations": [relation],
    }
    assert await ok(store, "open_nodes", {"names": ["Engine", "nobody"]}) == {
        "entities": graph["entities"][1:],
        "relations": [relation],
    }

    assert await ok(
        store, "delete_observations", {"deletions": [{"entityName": "Ada", "observations": ["met Babbage", "absent"]}]}
    ) == {"success": True, "message": "Observations deleted successfully"}
    assert await ok(store, "delete_relations", {"relations": [relation]}) == {
        "success": True,
        "message": "Relations deleted successfully",
    }
    assert await ok(store, "delete_entities", {"entityNames": ["Engine", "nobody"]}) == {
        "success": True,
        "message": "Entities deleted successfully",
    }
    assert await ok(store, "read_graph", {}) == {
        "entities": [{"name": "Ada", "entityType": "person", "observations": ["wrote programs"]}],
        "relations": [],
    }


async def test_text_content_is_the_structured_result_as_json(store: Store) -> None:
    result = plain(await call_tool(
        store, OWNER, "create_entities", {"entities": [{"name": "Zoë", "entityType": "t", "observations": ["ü"]}]}
    ))
    # Compact, unescaped UTF-8 JSON (fewer tokens for the model than the official indent).
    assert text_of(result) == json.dumps(result.structured_content, separators=(",", ":"), ensure_ascii=False)
    assert '"Zoë"' in text_of(result)
    # The same for the graph queries, whose JSON comes from the store already written.
    graph = plain(await call_tool(store, OWNER, "read_graph", {}))
    assert text_of(graph) == json.dumps(graph.structured_content, separators=(",", ":"), ensure_ascii=False)


# --- errors ------------------------------------------------------------------------------------


async def test_unknown_tool_is_a_protocol_error(store: Store) -> None:
    with pytest.raises(MCPError) as raised:
        await call_tool(store, OWNER, "drop_everything", {})
    assert raised.value.code == types.INVALID_PARAMS == -32602
    assert raised.value.message == "Unknown tool: drop_everything"


async def test_missing_entity_in_add_observations_fails_whole_call(store: Store) -> None:
    await ok(store, "create_entities", {"entities": [{"name": "Ada", "entityType": "p", "observations": []}]})
    message = await failed(
        store,
        "add_observations",
        {"observations": [{"entityName": "Ada", "contents": ["kept?"]}, {"entityName": "ada", "contents": ["x"]}]},
    )
    assert message.startswith("Entity with name ada not found.")
    assert "create_entities" in message
    assert "case-sensitive" in message


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("create_entities", {}, "entities is required but missing"),
        ("create_entities", None, "entities is required but missing"),
        (
            "create_entities",
            {"entities": [{"name": "A", "entityType": "t"}]},
            "entities[0].observations is required but missing",
        ),
        (
            "create_entities",
            {"entities": [{"name": "A", "entityType": "t", "observations": [], "extra": 1}]},
            "entities[0].extra is not an accepted field (accepted here: name, entityType, observations)",
        ),
        (
            "create_entities",
            {"entities": [], "force": True},
            "force is not an accepted field (accepted here: entities)",
        ),
        (
            "create_entities",
            {"entities": [{"name": 7, "entityType": "t", "observations": []}]},
            "entities[0].name must be a string, not a number",
        ),
        ("create_entities", {"entities": "Ada"}, "entities must be an array, not a string"),
        ("create_entities", {"entities": ["Ada"]}, "entities[0] must be an object, not a string"),
        (
            "create_relations",
            {"relations": [{"from_": "A", "to": "B", "relationType": "r"}]},
            "relations[0].from is required but missing",
        ),
        ("read_graph", {"verbose": True}, "verbose is not an accepted field (accepted here: limit, cursor)"),
        ("search_nodes", {"query": None}, "query must be a string, not null"),
        ("open_nodes", {"names": [["A"]]}, "names[0] must be a string, not an array"),
        ("delete_entities", {"entityNames": [True]}, "entityNames[0] must be a string, not a boolean"),
        (
            "delete_observations",
            {"deletions": [{"entityName": "A", "observations": "x"}]},
            "deletions[0].observations must be an array, not a string",
        ),
    ],
)
async def test_invalid_arguments_are_reported_precisely(
    store: Store, name: str, arguments: dict[str, Any] | None, expected: str
) -> None:
    message = await failed(store, name, arguments)
    assert message.startswith(f"Invalid arguments for {name}: ")
    assert expected in message
    assert message.endswith("Nothing was changed.")


async def test_size_limits(store: Store) -> None:
    long_name = "n" * (MAX_NAME_LENGTH + 1)
    message = await failed(
        store, "create_entities", {"entities": [{"name": long_name, "entityType": "t", "observations": []}]}
    )
    assert f"entities[0].name is {MAX_NAME_LENGTH + 1} characters long; the limit is {MAX_NAME_LENGTH}" in message

    message = await failed(
        store,
        "create_entities",
        {"entities": [{"name": "A", "entityType": "t", "observations": ["o" * (MAX_OBSERVATION_LENGTH + 1)]}]},
    )
    assert f"entities[0].observations[0] is {MAX_OBSERVATION_LENGTH + 1} characters long" in message
    assert str(MAX_OBSERVATION_LENGTH) in message

    message = await failed(store, "open_nodes", {"names": ["x"] * (MAX_ITEMS_PER_CALL + 1)})
    assert f"names has {MAX_ITEMS_PER_CALL + 1} items; at most {MAX_ITEMS_PER_CALL} are accepted per call" in message

    many = [{"name": f"e{i}", "entityType": "t", "observations": [f"o{j}" for j in range(20)]} for i in range(600)]
    message = await failed(store, "create_entities", {"entities": many})
    assert f"carries 12000 observations in all; at most {MAX_OBSERVATIONS_PER_CALL}" in message


async def test_exactly_at_the_limits_is_accepted(store: Store) -> None:
    entity = {"name": "n" * MAX_NAME_LENGTH, "entityType": "t", "observations": ["o" * MAX_OBSERVATION_LENGTH]}
    assert await ok(store, "create_entities", {"entities": [entity]}) == {"entities": [entity]}
    assert await ok(store, "open_nodes", {"names": ["x"] * MAX_ITEMS_PER_CALL}) == {"entities": [], "relations": []}


async def test_text_that_is_not_unicode_is_rejected(store: Store) -> None:
    message = await failed(
        store, "create_entities", {"entities": [{"name": "bad \ud800", "entityType": "t", "observations": []}]}
    )
    assert "entities[0].name contains an unpaired UTF-16 surrogate; send valid Unicode text" in message


async def test_many_problems_are_summarised(store: Store) -> None:
    entities = [{"name": i, "entityType": "t", "observations": []} for i in range(8)]
    message = await failed(store, "create_entities", {"entities": entities})
    assert "entities[4].name must be a string" in message
    assert "entities[5]" not in message
    assert "and 3 more problem(s)" in message


# --- exact strings: NUL and other odd characters (issue 10, defect 4) ---------------------------

# Characters that have changed what a string means somewhere: NUL (SQLite's JSON functions and
# FTS5 end a text there), U+FFFD (what this store folds NUL to for search), other control
# characters, characters whose lower case is longer or different (İ, ß, Σ), separators JSON and
# JavaScript treat specially, SQL and FTS5 syntax, and characters outside the BMP.
ODD = ["\0", "\x01", "\x1f", "\x7f", "\ufffd", "\u2028", "\u0130", "\u00df", "\u03a3", "\U0001f600", '"', "'", "%",
       "_", "*", "\\", " ", "a", "A", "b", "z"]
odd_text = st.text(alphabet=st.sampled_from(ODD), min_size=1, max_size=6)
# Names that differ from "Alice" only after a NUL, or by a NUL, are the ones that were confused.
alice_like = st.sampled_from(["Alice", "Alice\0zzz", "Alice\0", "\0Alice", "alice", "Ali\0ce", "Alice\ufffdzzz"])
odd_name = st.one_of(alice_like, odd_text)


def contains(entity: dict[str, Any], query: str) -> bool:
    folded = query.lower()
    return any(folded in text.lower() for text in (entity["name"], entity["entityType"], *entity["observations"]))


def ranked(entities: list[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    """What search_nodes returns (server.memory.search): the hits, best first; `entities` in creation order."""
    parsed = Query.parse(query)
    keyed = [(key, e) for i, e in enumerate(entities)
             if (key := reference_key(parsed, e["name"], e["entityType"], e["observations"], i)) is not None]
    return [e for _, e in sorted(keyed, key=lambda item: item[0])]


def touching(relations: list[dict[str, str]], names: set[str]) -> list[dict[str, str]]:
    return [r for r in relations if r["from"] in names or r["to"] in names]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(odd_name, min_size=2, max_size=6, unique=True), data=st.data())
def test_every_tool_treats_a_string_as_exactly_itself(backend: Backend, names: list[str],
                                                      data: st.DataObject) -> None:
    """What is created is exactly what open, search and delete find, and no other entity is touched."""
    owner = f"owner-{uuid.uuid4()}"
    store: Store

    async def call(tool: str, arguments: dict[str, Any]) -> Any:
        result = plain(await call_tool(store, owner, tool, arguments))
        assert not result.is_error, text_of(result)
        return result.structured_content

    async def each_example() -> None:
        # A connection per example: each runs in its own event loop (asyncio.run below).
        nonlocal store
        store = await backend.open()
        try:
            await scenario()
        finally:
            await backend.close_store(store)

    async def scenario() -> None:
        entities: list[dict[str, Any]] = [{"name": name, "entityType": data.draw(odd_name), "observations": data.draw(
            st.lists(odd_text, max_size=3, unique=True))} for name in names]
        relations = [{"from": data.draw(st.sampled_from(names)), "to": data.draw(st.sampled_from(names)),
                      "relationType": data.draw(odd_text)} for _ in range(data.draw(st.integers(0, 4)))]
        relations = list({tuple(r.values()): r for r in relations}.values())
        assert await call("create_entities", {"entities": entities}) == {"entities": entities}
        assert await call("create_relations", {"relations": relations}) == {"relations": relations}

        for entity in entities:
            opened = await call("open_nodes", {"names": [entity["name"]]})
            assert opened == {"entities": [entity], "relations": touching(relations, {entity["name"]})}
        queries = [*names, *(o for e in entities for o in e["observations"]), *(n.partition("\0")[2] for n in names),
                   data.draw(odd_text)]
        for query in filter(None, queries):
            found = await call("search_nodes", {"query": query})
            expected = ranked(entities, query)
            assert all(e in expected for e in entities if contains(e, query)), query  # the official floor
            assert found == {"entities": expected, "relations": touching(relations, {e["name"] for e in expected})}, \
                query

        target = data.draw(st.sampled_from(entities))
        added = data.draw(odd_text)
        await call("add_observations", {"observations": [{"entityName": target["name"], "contents": [added]}]})
        if added not in target["observations"]:
            target["observations"].append(added)
        if target["observations"]:
            gone = data.draw(st.sampled_from(target["observations"]))
            await call("delete_observations", {"deletions": [{"entityName": target["name"], "observations": [gone]}]})
            target["observations"].remove(gone)
        if relations:
            relation = data.draw(st.sampled_from(relations))
            await call("delete_relations", {"relations": [relation]})
            relations.remove(relation)
        victim = data.draw(st.sampled_from(entities))
        await call("delete_entities", {"entityNames": [victim["name"]]})
        entities.remove(victim)
        relations = [r for r in relations if victim["name"] not in (r["from"], r["to"])]

        assert await call("read_graph", {}) == {"entities": entities, "relations": relations}
        usage = await store.usage(owner)
        assert (usage.entities, usage.observations) == (len(entities), sum(len(e["observations"]) for e in entities))
        assert usage.bytes == sum(len(t.encode()) for e in entities for t in (e["name"], e["entityType"],
                                                                               *e["observations"])) + \
            sum(len(t.encode()) for r in relations for t in r.values())

    asyncio.run(each_example())


async def test_a_name_with_nul_is_not_the_name_before_it(store: Store) -> None:
    alice = {"name": "Alice", "entityType": "person", "observations": ["likes tea"]}
    await ok(store, "create_entities", {"entities": [alice]})
    assert await ok(store, "open_nodes", {"names": ["Alice\0zzz"]}) == {"entities": [], "relations": []}
    await ok(store, "delete_entities", {"entityNames": ["Alice\0zzz"]})
    await ok(store, "delete_observations", {"deletions": [{"entityName": "Alice", "observations": ["likes tea\0!"]}]})
    assert await ok(store, "read_graph", {}) == {"entities": [alice], "relations": []}
    message = await failed(store, "add_observations", {"observations": [{"entityName": "Alice\0zzz",
                                                                          "contents": ["x"]}]})
    assert "Alice\0zzz not found" in message


async def test_search_finds_text_after_a_nul(store: Store) -> None:
    hidden = {"name": "Box", "entityType": "thing", "observations": ["abc\0needle in the hay"]}
    await ok(store, "create_entities", {"entities": [hidden]})
    for query in ("needle", "NEEDLE", "c\0n", "\0", "abc\0needle in the hay"):
        assert (await ok(store, "search_nodes", {"query": query}))["entities"] == [hidden], query
    # U+FFFD stands in for NUL in the search index, but is not NUL (and it is no word: only the
    # substring floor can find it).
    assert (await ok(store, "search_nodes", {"query": "\ufffd"}))["entities"] == []
    assert (await ok(store, "search_nodes", {"query": "%c\ufffd"}))["entities"] == []


@pytest.mark.parametrize(("tool", "arguments", "where"), [
    ("create_entities", {"entities": [{"name": "\ud800", "entityType": "t", "observations": []}]}, "entities[0].name"),
    ("create_entities", {"entities": [{"name": "n", "entityType": "\udfff", "observations": []}]},
     "entities[0].entityType"),
    ("create_entities", {"entities": [{"name": "n", "entityType": "t", "observations": ["a\ud800"]}]},
     "entities[0].observations[0]"),
    ("create_relations", {"relations": [{"from": "\ud800", "to": "b", "relationType": "r"}]}, "relations[0].from"),
    ("create_relations", {"relations": [{"from": "a", "to": "\ud800", "relationType": "r"}]}, "relations[0].to"),
    ("create_relations", {"relations": [{"from": "a", "to": "b", "relationType": "\ud800"}]},
     "relations[0].relationType"),
    ("add_observations", {"observations": [{"entityName": "\ud800", "contents": []}]}, "observations[0].entityName"),
    ("add_observations", {"observations": [{"entityName": "n", "contents": ["\ud800"]}]},
     "observations[0].contents[0]"),
    ("delete_entities", {"entityNames": ["\ud800"]}, "entityNames[0]"),
    ("delete_observations", {"deletions": [{"entityName": "\ud800", "observations": []}]}, "deletions[0].entityName"),
    ("delete_observations", {"deletions": [{"entityName": "n", "observations": ["\ud800"]}]},
     "deletions[0].observations[0]"),
    ("delete_relations", {"relations": [{"from": "a", "to": "b", "relationType": "\ud800"}]},
     "relations[0].relationType"),
    ("search_nodes", {"query": "\ud800"}, "query"),
    ("open_nodes", {"names": ["\ud800"]}, "names[0]"),
])
async def test_every_string_input_refuses_a_lone_surrogate_the_same_way(
        store: Store, tool: str, arguments: dict[str, Any], where: str) -> None:
    """The one character class a string cannot hold: not text, and not storable as UTF-8."""
    message = await failed(store, tool, arguments)
    assert f"{where} contains an unpaired UTF-16 surrogate; send valid Unicode text" in message


# --- storage quota -----------------------------------------------------------------------------


async def test_quota_refuses_a_whole_call_and_says_which_limit(store: Store) -> None:
    quota = Quota(entities=3, observations=4, bytes=100)

    async def call(tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        return plain(await call_tool(store, OWNER, tool, arguments, quota))

    def entity(name: str, *observations: str) -> dict[str, Any]:
        return {"name": name, "entityType": "t", "observations": list(observations)}

    assert not (await call("create_entities", {"entities": [entity("a", "1"), entity("b", "2")]})).is_error
    before = await ok(store, "read_graph", {})

    refused = await call("create_entities", {"entities": [entity("c"), entity("d")]})
    assert refused.is_error
    message = text_of(refused)
    assert "bring your memory to 4 entities, over the limit of 3 (you store 2 now)" in message
    assert "Nothing was stored" in message and "delete_entities" in message and "memory_max_entities" in message

    refused = await call("add_observations", {"observations": [{"entityName": "a", "contents": ["3", "4"]},
                                                               {"entityName": "b", "contents": ["5"]}]})
    assert "5 observations, over the limit of 4 (you store 2 now)" in text_of(refused)
    assert "memory_max_observations" in text_of(refused)

    refused = await call("create_relations", {"relations": [{"from": "a" * 60, "to": "b" * 60, "relationType": "r"}]})
    assert "over the limit of 100 (you store 6 now)" in text_of(refused) and "memory_max_bytes" in text_of(refused)
    assert await ok(store, "read_graph", {}) == before, "a refused call stores nothing"

    # Up to the limit exactly is accepted; deleting is always possible and makes room again.
    assert not (await call("create_entities", {"entities": [entity("c", "3", "4")]})).is_error
    assert (await call("create_entities", {"entities": [entity("d")]})).is_error
    assert not (await call("delete_entities", {"entityNames": ["a"]})).is_error
    assert not (await call("create_entities", {"entities": [entity("d")]})).is_error
    usage = await store.usage(OWNER)
    assert (usage.entities, usage.observations, usage.bytes) == (3, 3, 9)  # b2, c34, d: 3 + 4 + 2 bytes


async def test_zero_means_no_limit(store: Store) -> None:
    unlimited = Quota(entities=0, observations=0, bytes=0)
    many = [{"name": f"e{i}", "entityType": "t", "observations": ["o"]} for i in range(50)]
    result = plain(await call_tool(store, OWNER, "create_entities", {"entities": many}, unlimited))
    assert not result.is_error


async def test_a_closed_graph_refuses_every_write(store: Store) -> None:
    await ok(store, "create_entities", {"entities": [{"name": "a", "entityType": "t", "observations": ["o"]}]})
    await store.delete_graph(OWNER)
    writes: list[tuple[str, dict[str, Any]]] = [
        ("create_entities", {"entities": [{"name": "b", "entityType": "t", "observations": []}]}),
        ("create_relations", {"relations": [{"from": "a", "to": "b", "relationType": "r"}]}),
        ("add_observations", {"observations": [{"entityName": "a", "contents": ["x"]}]}),
        ("delete_entities", {"entityNames": ["a"]}),
        ("delete_observations", {"deletions": [{"entityName": "a", "observations": ["o"]}]}),
        ("delete_relations", {"relations": [{"from": "a", "to": "b", "relationType": "r"}]}),
    ]
    for tool, arguments in writes:
        message = await failed(store, tool, arguments)
        assert "This account is being removed" in message and "nothing was stored" in message, tool
    assert await ok(store, "read_graph", {}) == {"entities": [], "relations": []}

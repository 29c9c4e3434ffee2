"""The MCP tools (server.memory.tools) over a real SQLite graph."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from auth.settings import READ_SCOPE, WRITE_SCOPE
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
from server.storage.sqlite.db import Database
from server.storage.sqlite.graph import GraphTables

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


class Store(GraphTables):
    def __init__(self, db: Database) -> None:
        self.db = db


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Database(tmp_path / "m.sqlite3")
    db.apply_schema(GraphTables.SCHEMA)
    GraphTables.migrate(db)
    yield Store(db)
    db.close()


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
        "read_graph": root({}, False),
        "search_nodes": root({"query": STR}, False),
        "open_nodes": root({"names": STRS}, False),
    }


def expected_output_schemas() -> dict[str, dict[str, Any]]:
    s = official_schemas(closed=True)
    graph = root(
        {"entities": {"type": "array", "items": s["entity"]}, "relations": {"type": "array", "items": s["relation"]}},
        True,
    )
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
        ("read_graph", {"verbose": True}, "verbose is not an accepted field (accepted here: none)"),
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

"""Paging the graph queries and the size cap of one result (issue 14; server/memory/paging.py), on
SQLite and on Redis: through `call_tool` over the real stores, and through real MCP calls."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import mcp_types as types
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth import accounts
from server.app import MCP_ENDPOINT
from server.config import Settings
from server.memory import paging
from server.memory.paging import MAX_PAGE_SIZE
from server.memory.tools import GraphResult, call_tool
from tests.conftest import OAuthUser, on_both_backends, start_server
from tests.graph_backends import Backend, Store

OWNER = "pager"
QUERIES = ("read_graph", "search_nodes", "open_nodes")


async def call(store: Store, tool: str, arguments: dict[str, Any], owner: str = OWNER,
               max_result_bytes: int = paging.DEFAULT_MAX_RESULT_BYTES) -> types.CallToolResult:
    answer = await call_tool(store, owner, tool, arguments, max_result_bytes=max_result_bytes)
    if isinstance(answer, GraphResult):
        assert json.loads(answer.graph.text) == answer.graph.json.decode()
        answer = answer.result()
    return answer


def text(result: types.CallToolResult) -> str:
    [block] = result.content
    assert isinstance(block, types.TextContent)
    return block.text


async def ok(store: Store, tool: str, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
    result = await call(store, tool, arguments, **options)
    assert not result.is_error, text(result)
    assert result.structured_content == json.loads(text(result))
    structured: dict[str, Any] = result.structured_content
    return structured


async def refused(store: Store, tool: str, arguments: dict[str, Any]) -> str:
    result = await call(store, tool, arguments)
    assert result.is_error and result.structured_content is None
    return text(result)


async def pages(store: Store, tool: str, arguments: dict[str, Any], owner: str = OWNER,
                **options: Any) -> list[dict[str, Any]]:
    """Every page of a query, following nextCursor to the end."""
    got = [await ok(store, tool, arguments, owner=owner, **options)]
    while "nextCursor" in got[-1]:
        assert len(got) < 1000, "paging does not end"
        got.append(await ok(store, tool, {**arguments, "cursor": got[-1]["nextCursor"]}, owner=owner, **options))
    return got


def key(relation: dict[str, str]) -> tuple[str, str, str]:
    return relation["from"], relation["to"], relation["relationType"]


def check_pages(got: list[dict[str, Any]], whole: dict[str, Any], limit: int | None) -> None:
    """The pages hold the whole answer's entities once each, in order, and its relations once each,
    each on the page of the last of its endpoints the answer holds (or the last page)."""
    entities = [entity for page in got for entity in page["entities"]]
    assert entities == whole["entities"]
    assert Counter(key(r) for page in got for r in page["relations"]) == Counter(key(r) for r in whole["relations"])
    page_of = {entity["name"]: index for index, page in enumerate(got) for entity in page["entities"]}
    for index, page in enumerate(got):
        assert set(page) <= {"entities", "relations", "nextCursor", "note"}
        assert ("nextCursor" in page) == (index < len(got) - 1)
        if limit is not None:
            assert len(page["entities"]) <= limit
            assert index == len(got) - 1 or len(page["entities"]) == limit
        for relation in page["relations"]:
            held = [page_of[name] for name in (relation["from"], relation["to"]) if name in page_of]
            assert (max(held) if held else len(got) - 1) == index, (relation, index, held)


# --- what a page holds --------------------------------------------------------------------------

NAMES = ["Ada", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "a\0b", "Zoë"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_paging_through_returns_the_whole_answer_once(backend: Backend, data: st.DataObject) -> None:
    """Any graph (entities deleted between others, relations between any names, existing or not),
    any query, any page size: the pages hold exactly the unpaged answer."""
    owner = f"owner-{uuid.uuid4()}"

    async def scenario(store: Store) -> None:
        created = data.draw(st.lists(st.sampled_from(NAMES), min_size=0, max_size=8, unique=True))
        entities = [{"name": name, "entityType": data.draw(st.sampled_from(["person", "place"])),
                     "observations": data.draw(st.lists(st.sampled_from(["likes tea", "x", "Ada's"]), unique=True,
                                                        max_size=2))} for name in created]
        await ok(store, "create_entities", {"entities": entities}, owner=owner)
        everyone = [*NAMES, "ghost"]
        relations = data.draw(st.lists(st.fixed_dictionaries({"from": st.sampled_from(everyone), "to": st.sampled_from(
            everyone), "relationType": st.sampled_from(["knows", "r"])}), max_size=12))
        await ok(store, "create_relations", {"relations": relations}, owner=owner)
        doomed = data.draw(st.lists(st.sampled_from(created), max_size=2)) if created else []
        await ok(store, "delete_entities", {"entityNames": doomed}, owner=owner)
        await ok(store, "create_entities", {"entities": [{"name": "Late", "entityType": "t", "observations": []}]},
                 owner=owner)
        for tool, arguments in (("read_graph", {}),
                                ("search_nodes", {"query": data.draw(st.sampled_from(["", "a", "e", "likes", "zz"]))}),
                                ("open_nodes", {"names": data.draw(st.lists(st.sampled_from(everyone), max_size=6))})):
            whole = await ok(store, tool, arguments, owner=owner)
            limit = data.draw(st.integers(1, 4))
            check_pages(await pages(store, tool, {**arguments, "limit": limit}, owner=owner), whole, limit)

    async def each_example() -> None:
        store = await backend.open()
        try:
            await scenario(store)
        finally:
            await backend.close_store(store)

    asyncio.run(each_example())


async def test_a_relation_comes_with_the_later_of_its_endpoints(store: Store) -> None:
    await ok(store, "create_entities", {"entities": [
        {"name": n, "entityType": "t", "observations": []} for n in ("A", "B", "C", "D")]})
    relations = [{"from": "D", "to": "A", "relationType": "r"}, {"from": "A", "to": "B", "relationType": "r"},
                 {"from": "C", "to": "nobody", "relationType": "r"}, {"from": "x", "to": "y", "relationType": "r"},
                 {"from": "B", "to": "B", "relationType": "self"}]
    await ok(store, "create_relations", {"relations": relations})
    got = await pages(store, "read_graph", {"limit": 2})
    assert [[e["name"] for e in page["entities"]] for page in got] == [["A", "B"], ["C", "D"]]
    assert got[0]["relations"] == [relations[1], relations[4]]
    # The last page: D's relation to A, C's to a name that is no entity, and the one naming none.
    assert got[1]["relations"] == [relations[0], relations[2], relations[3]]
    # open_nodes and search_nodes: the later endpoint among the answer's entities.
    opened = await pages(store, "open_nodes", {"names": ["D", "A", "C"], "limit": 1})
    assert [(p["entities"][0]["name"], p["relations"]) for p in opened] == [
        ("A", [relations[1]]), ("C", [relations[2]]), ("D", [relations[0]])]


async def test_the_unpaged_answer_is_unchanged(store: Store) -> None:
    """No limit, no cursor, within the cap: byte for byte what the store answers, without nextCursor."""
    await ok(store, "create_entities", {"entities": [
        {"name": f"e{i}", "entityType": "t", "observations": [f"o{i}"]} for i in range(300)]})
    await ok(store, "create_relations", {"relations": [{"from": "e1", "to": "e299", "relationType": "r"}]})
    for tool, arguments, query in (("read_graph", {}, store.read_graph(OWNER)),
                                   ("search_nodes", {"query": "o1"}, store.search_nodes(OWNER, "o1")),
                                   ("open_nodes", {"names": ["e3", "e1"]}, store.open_nodes(OWNER, ["e3", "e1"]))):
        answer = await call_tool(store, OWNER, tool, arguments, max_result_bytes=0)
        assert isinstance(answer, GraphResult)
        expected = await query
        assert answer.graph.json == expected.json and answer.graph.text == expected.text
        assert "nextCursor" not in orjson.loads(answer.graph.json)
    # Paged to the end in one page: the same entities, no cursor.
    assert await ok(store, "read_graph", {"limit": MAX_PAGE_SIZE}, max_result_bytes=0) == \
        await ok(store, "read_graph", {}, max_result_bytes=0)


# --- the size cap -------------------------------------------------------------------------------

CAP = 8192


async def test_a_result_over_the_cap_is_cut_and_says_so(store: Store) -> None:
    entities = [{"name": f"big {i:02d}", "entityType": "t", "observations": [f"{i} " + "ü" * 400]} for i in range(40)]
    await ok(store, "create_entities", {"entities": entities})
    relations = [{"from": f"big {i:02d}", "to": f"big {(i * 7) % 40:02d}", "relationType": "r"} for i in range(40)]
    await ok(store, "create_relations", {"relations": relations})
    whole = await ok(store, "read_graph", {}, max_result_bytes=0)
    for arguments in ({}, {"limit": 30}):
        got = await pages(store, "read_graph", arguments, max_result_bytes=CAP)
        check_pages(got, whole, None)
        assert len(got) > 3
        for page in got[:-1]:
            assert len(json.dumps(page, separators=(",", ":"), ensure_ascii=False).encode()) <= CAP
            assert "memory_max_result_bytes" in page["note"] and "nextCursor" in page["note"]
            # Cut where the next entity would not have fitted: the cap is used, not merely kept.
            assert len(json.dumps(page).encode()) > CAP // 2
    # Within the cap, an explicit page carries no note.
    small = await ok(store, "read_graph", {"limit": 2}, max_result_bytes=CAP)
    assert "note" not in small and "nextCursor" in small
    # search_nodes and open_nodes are cut the same way.
    found = await pages(store, "search_nodes", {"query": "ü"}, max_result_bytes=CAP)
    check_pages(found, whole, None)
    opened = await pages(store, "open_nodes", {"names": [e["name"] for e in entities]}, max_result_bytes=CAP)
    check_pages(opened, whole, None)


async def test_an_entity_larger_than_the_cap_still_comes_alone(store: Store) -> None:
    huge = {"name": "huge", "entityType": "t", "observations": [f"{i} " + "x" * 16000 for i in range(3)]}
    await ok(store, "create_entities", {"entities": [{"name": "a", "entityType": "t", "observations": []}, huge,
                                                     {"name": "z", "entityType": "t", "observations": []}]})
    got = await pages(store, "read_graph", {}, max_result_bytes=CAP)
    assert [[e["name"] for e in page["entities"]] for page in got] == [["a"], ["huge"], ["z"]]


# --- arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1, 2.5, 1.0, "5", True, [3], {}])
async def test_a_bad_limit_is_refused(store: Store, limit: Any) -> None:
    for tool, arguments in (("read_graph", {}), ("search_nodes", {"query": "x"}), ("open_nodes", {"names": []})):
        message = await refused(store, tool, {**arguments, "limit": limit})
        assert message.startswith(f"Invalid arguments for {tool}: limit: must be a whole number from 1 to "
                                  f"{MAX_PAGE_SIZE}"), message


async def test_null_limit_and_cursor_are_absent(store: Store) -> None:
    await ok(store, "create_entities", {"entities": [{"name": "A", "entityType": "t", "observations": []}]})
    assert await ok(store, "read_graph", {"limit": None, "cursor": None}) == await ok(store, "read_graph", {})


def forged(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("cursor", [
    "", "!!!", "a b", "Zm9v", "x" * 600, forged({"a": 1}), forged([2, "read_graph", [1], ""]),
    forged([1, "read_graph", [], ""]), forged([1, "read_graph", ["1"], ""]), forged([1, "read_graph", [True], ""]),
    forged([1, "read_graph", [2**63], ""]), forged([1, "read_graph", [2**70], ""]),
    forged([1, "read_graph", [1, 2], ""]), forged([1, "read_graph", [1.5], ""]),
    forged([1, "read_graph", [1], "", "extra"]), base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),
])
async def test_a_malformed_cursor_is_refused(store: Store, cursor: str) -> None:
    message = await refused(store, "read_graph", {"cursor": cursor})
    assert message == ("Invalid arguments for read_graph: cursor is not a cursor this server issued; pass the"
                       " nextCursor of an earlier read_graph result unchanged, or omit cursor to start from the first"
                       " page. Nothing was changed.")


async def test_a_cursor_continues_only_its_own_call(store: Store) -> None:
    await ok(store, "create_entities", {"entities": [
        {"name": f"e{i}", "entityType": "t", "observations": ["common"]} for i in range(4)]})
    cursors = {
        "read_graph": (await ok(store, "read_graph", {"limit": 1}))["nextCursor"],
        "search_nodes": (await ok(store, "search_nodes", {"query": "common", "limit": 1}))["nextCursor"],
        "open_nodes": (await ok(store, "open_nodes", {"names": ["e0", "e1", "e2"], "limit": 1}))["nextCursor"],
    }
    base: dict[str, dict[str, Any]] = {"read_graph": {}, "search_nodes": {"query": "common"},
                                       "open_nodes": {"names": ["e0"]}}
    for tool in QUERIES:
        for other, cursor in cursors.items():
            if other == tool:
                continue
            message = await refused(store, tool, {**base[tool], "cursor": cursor})
            assert f"cursor was issued by '{other}', not {tool}" in message
    message = await refused(store, "search_nodes", {"query": "Common", "cursor": cursors["search_nodes"]})
    assert "cursor was issued for a different query; call search_nodes with the same query" in message
    message = await refused(store, "open_nodes", {"names": ["e0", "e1"], "cursor": cursors["open_nodes"]})
    assert "cursor was issued for different names; call open_nodes with the same names" in message
    # The same names in another order, or repeated, are the same call.
    rest = await ok(store, "open_nodes", {"names": ["e2", "e1", "e0", "e1"], "cursor": cursors["open_nodes"]})
    assert [e["name"] for e in rest["entities"]] == ["e1", "e2"] and "nextCursor" not in rest


def test_the_setting_is_checked() -> None:
    assert Settings.model_validate({}).memory_max_result_bytes == paging.DEFAULT_MAX_RESULT_BYTES
    assert Settings.model_validate({"memory_max_result_bytes": 0}).memory_max_result_bytes == 0
    for bad in (1, 4095):
        with pytest.raises(ValueError, match="must be 0 \\(no cap\\) or at least 4096 bytes"):
            Settings.model_validate({"memory_max_result_bytes": bad})
    with pytest.raises(ValueError, match="memory_max_result_bytes"):
        Settings.model_validate({"memory_max_result_bytes": -1})


# --- through real MCP calls ---------------------------------------------------------------------

def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data: dict[str, Any] = json.loads(result.content[0].text)
    assert result.structured_content == data
    return data


@on_both_backends("store_settings")
async def test_paging_is_stable_under_concurrent_writes(data_dir: Path, store_settings: dict[str, Any]) -> None:
    """Entities added and others deleted between pages: no entity comes twice, and none that existed
    before the first page and still exists is skipped; the new ones come at the end."""
    server = await start_server(data_dir, **store_settings)
    await accounts.add_user(server.storage, "alice", "alice-password-1")
    try:
        alice = OAuthUser(server.url, "alice", "alice-password-1")
        async with alice.client() as (client, _):
            names = [f"e{i:02d}" for i in range(30)]
            structured(await client.call_tool("create_entities", {"entities": [
                {"name": name, "entityType": "t", "observations": []} for name in names]}))
            seen: list[str] = []
            deleted: set[str] = set()
            added: list[str] = []
            arguments: dict[str, Any] = {"limit": 4}
            round_ = 0
            while True:
                page = structured(await client.call_tool("read_graph", arguments))
                seen += [e["name"] for e in page["entities"]]
                if "nextCursor" not in page:
                    break
                arguments = {"limit": 4, "cursor": page["nextCursor"]}
                # Between pages: two new entities, one deleted ahead of the reader, one behind it.
                round_ += 1
                new = [f"new{round_}a", f"new{round_}b"]
                structured(await client.call_tool("create_entities", {"entities": [
                    {"name": name, "entityType": "t", "observations": []} for name in new]}))
                added += new
                ahead = [n for n in names if n not in seen and n not in deleted]
                behind = [n for n in seen if n not in deleted and n in names]
                doomed = ahead[-1:] + behind[:1]
                structured(await client.call_tool("delete_entities", {"entityNames": doomed}))
                deleted.update(doomed)
            assert len(seen) == len(set(seen)), "an entity came twice"
            surviving = [n for n in names if n not in deleted]
            assert set(surviving) <= set(seen), "a surviving entity was skipped"
            # In creation order: the first entities that were still there when their page was read, then the new.
            assert seen == [n for n in names if n in seen] + added
            assert round_ > 3
    finally:
        await server.stop()


@on_both_backends("store_settings")
async def test_a_capped_result_is_the_same_on_the_direct_path_and_the_sdks(data_dir: Path,
                                                                          store_settings: dict[str, Any]) -> None:
    server = await start_server(data_dir, memory_max_result_bytes=4096, **store_settings)
    await accounts.add_user(server.storage, "alice", "alice-password-1")
    direct = server.app[MCP_ENDPOINT].direct
    try:
        alice = OAuthUser(server.url, "alice", "alice-password-1")
        async with alice.client() as (client, _):
            structured(await client.call_tool("create_entities", {"entities": [
                {"name": f"n{i}", "entityType": "t", "observations": ["é" * 300]} for i in range(30)]}))
            answers = []
            for methods in (direct.methods, frozenset()):
                direct.methods = methods
                answers.append([await client.call_tool("read_graph", {}),
                                await client.call_tool("read_graph", {"limit": 3}),
                                await client.call_tool("search_nodes", {"query": "é", "limit": 50})])
            for on_direct, on_sdk in zip(*answers, strict=True):
                assert on_direct.model_dump() == on_sdk.model_dump()
                page = structured(on_direct)
                assert "nextCursor" in page
            first = structured(answers[0][0])
            assert "memory_max_result_bytes" in first["note"]
            assert len(json.dumps(first, separators=(",", ":"), ensure_ascii=False).encode()) <= 4096
    finally:
        await server.stop()

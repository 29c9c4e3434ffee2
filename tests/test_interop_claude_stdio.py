"""Claude Code with memory-mcp as a local stdio server, in place of `npx -y
@modelcontextprotocol/server-memory`: one run of tests/interop/claude/run_stdio.py (offline, in
its own namespaces) configures `claude mcp add --transport stdio memory -- memory-mcp stdio --user
alice`, checks it with `claude mcp list`, and has the stand-in model call create_entities and
read_graph in `claude -p`, while `memory-mcp serve` runs on the same store. Made on SQLite and on
a private Redis.

Claude Code must be installed (`bash tests/interop/claude/install.sh`): without it these tests fail.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.import_offer import MARKS_FILE, file_version
from server.memory.graph import StoredEntity
from server.storage import Storage
from tests.interop.claude.run_stdio import OFFICIAL_FILE
from tests.interop.harness import drive, namespace_argv, store_after
from tests.test_interop_claude import ADA, CLAUDE, CLAUDE_DIR, ClaudeRun

DRIVER = CLAUDE_DIR / "run_stdio.py"
BABBAGE = {k: v for k, v in OFFICIAL_FILE[0].items() if k != "type"}
RUN_TIMEOUT = 95  # the driver gives up by itself after 80 s (run_stdio.RUN_DEADLINE)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def claude_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> ClaudeRun:
    assert CLAUDE.exists(), f"Claude Code not installed: run `bash {CLAUDE_DIR / 'install.sh'}`"
    work = tmp_path_factory.mktemp("claude-stdio")
    argv = [*namespace_argv(), sys.executable, str(DRIVER), "--work", str(work), "--claude", str(CLAUDE)]
    if request.param == "redis":
        argv.append("--redis")
    result = drive(argv, work, RUN_TIMEOUT, "Claude Code", "*.out")
    return ClaudeRun(work, result)


@pytest.fixture
async def storage(claude_run: ClaudeRun) -> AsyncIterator[Storage]:
    async with store_after(claude_run.result) as opened:
        yield opened


def test_added_as_a_stdio_server_and_connected(claude_run: ClaudeRun) -> None:
    command = " ".join(claude_run.result["stdio_command"])
    assert f"Added stdio MCP server memory with command: {command}" in claude_run.text("claude-mcp-add.out")
    assert f"memory: {command} - ✔ Connected" in claude_run.text("claude-mcp-list.out")


def test_print_mode_calls_our_tools_over_stdio(claude_run: ClaudeRun) -> None:
    stream = claude_run.stream("claude-p-remember")
    calls = [block for event in stream if event["type"] == "assistant"
             for block in event["message"]["content"] if block["type"] == "tool_use"]
    assert [c["name"] for c in calls] == ["ToolSearch", "mcp__memory__create_entities", "mcp__memory__read_graph"]
    results = {block["tool_use_id"]: block for event in stream if event["type"] == "user"
               for block in event["message"]["content"] if block.get("type") == "tool_result"}
    assert not [r for r in results.values() if r.get("is_error")]
    assert json.loads(results["toolu_memory_0"]["content"]) == {"entities": [ADA]}
    # The official server's file was imported into the empty memory at the first start (`claude mcp
    # list`), so the graph holds its entity before the one created here.
    assert json.loads(results["toolu_memory_1"]["content"]) == {"entities": [BABBAGE, ADA], "relations": []}
    [final] = [event for event in stream if event["type"] == "result"]
    assert final["subtype"] == "success" and final["permission_denials"] == []
    # Claude Code's account of the connection: our stderr reached its log, nothing else did.
    debug = claude_run.text("claude-p-remember.debug")
    assert "serving memory 'default' of user 'alice' over stdio" in debug
    assert '"protocolEra":"modern"' in debug and '"name":"memory-mcp"' in debug


async def test_what_claude_code_wrote_is_alices_memory_beside_the_http_server(
        claude_run: ClaudeRun, storage: Storage) -> None:
    alice = await storage.get_user_by_name("alice")
    assert alice is not None
    graph = (await storage.read_graph(alice.id)).model()
    assert [e.model_dump() for e in graph.entities] == [BABBAGE, ADA]
    # Provenance: Ada came through Claude Code over the pipe, Babbage from the imported file.
    origins = {e.name: e.origin.by for e in await exported(storage, alice.id) if e.origin is not None}
    assert origins == {"Ada Lovelace": "stdio", "Charles Babbage": "import"}
    # The HTTP server ran on the same store the whole time and served its health check throughout.
    assert "serving MCP at" in claude_run.text("server.log")
    assert await storage.list_clients() == []  # no OAuth client: the pipe needs none


def test_the_official_file_was_imported_once(claude_run: ClaudeRun) -> None:
    official = Path(claude_run.result["official_file"])
    assert official.read_text() == "".join(json.dumps(r) + "\n" for r in OFFICIAL_FILE)  # only read
    marks = json.loads((Path(claude_run.result["data_dir"]) / MARKS_FILE).read_text())
    assert list(marks.values()) == [file_version(official)]
    assert [key.split(" ", 1)[1] for key in marks] == [str(official)]


async def exported(storage: Storage, owner: str) -> list[StoredEntity]:
    return [item async for batch in storage.export_batches(owner) for item in batch
            if isinstance(item, StoredEntity)]

"""How the files in this directory were made: by the official memory server itself.

    npm ci --prefix scripts/bench          # @modelcontextprotocol/server-memory, pinned
    PYTHONPATH=. .venv/bin/python tests/data/official/make.py

Each file is written by `node scripts/bench/node_modules/@modelcontextprotocol/server-memory/dist/index.js`
(over stdio, through the MCP SDK's client), then, for the quirks no single run of it produces, edited
the way it happens in the field (the edit is named for each file below):

* `memory.jsonl`: what the server wrote after the tool calls below (entities, relations,
  observations with quotes, backslashes, newlines, control characters, non-BMP characters, an
  empty string); no newline after the last line, as it always writes.
* `memory.json`: the legacy name (versions before 0.6.3), the same calls; the format is the same.
* `no-observations.jsonl`: a line without "observations" (as a client that left the field out got
  written by older versions) placed in the file, then a create_entities call made the server load
  and write the file again: the line is rewritten, still without "observations" (its loadGraph
  reads `observations: undefined`, which JSON.stringify leaves out).
* `quirks.jsonl`: `memory.jsonl` with a UTF-8 BOM (a Windows editor), CRLF line ends and blank
  lines (edited by hand), and two records on one line (two instances of the server writing the
  same file: the second's record lands right after the first's, without a newline).
* `bad-lines.jsonl`: `memory.jsonl` with records the importer must skip, each commented in
  tests/test_memory_jsonl.py, and a last line cut short (a crash while writing).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

HERE = Path(__file__).parent
OFFICIAL = HERE.parents[2] / "scripts" / "bench" / "node_modules" / "@modelcontextprotocol" / "server-memory" / \
    "dist" / "index.js"

ENTITIES: list[dict[str, Any]] = [
    {"name": "Ada Lovelace", "entityType": "person",
     "observations": ["Wrote the first program", 'Called it "poetical science"', "Née Byron — 1815"]},
    {"name": "Analytical Engine", "entityType": "machine",
     "observations": ["Designed by Babbage", "path C:\\engine\\notes", "line one\nline two\ttabbed"]},
    {"name": "Charles Babbage", "entityType": "person", "observations": []},
    {"name": "😀 emoji", "entityType": "thing", "observations": ["non-BMP: 𝄞", "", "control \u0001 \u001f"]},
]
RELATIONS = [
    {"from": "Ada Lovelace", "to": "Analytical Engine", "relationType": "wrote programs for"},
    {"from": "Charles Babbage", "to": "Analytical Engine", "relationType": "designed"},
    {"from": "Ada Lovelace", "to": "Nobody Yet", "relationType": "mentions"},
]


async def run_official(path: Path, calls: list[tuple[str, dict[str, Any]]]) -> None:
    params = StdioServerParameters(command="node", args=[str(OFFICIAL)], env={"MEMORY_FILE_PATH": str(path)})
    async with Client(stdio_client(params)) as client:
        for name, arguments in calls:
            result = await client.call_tool(name, arguments)
            if result.is_error:
                raise RuntimeError(f"{name}: {result.content}")


CALLS = [("create_entities", {"entities": ENTITIES}), ("create_relations", {"relations": RELATIONS}),
         ("add_observations", {"observations": [{"entityName": "Charles Babbage",
                                                 "contents": ["Proposed the Difference Engine"]}]})]


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        await run_official(work / "memory.jsonl", CALLS)
        shutil.copy(work / "memory.jsonl", HERE / "memory.jsonl")
        await run_official(work / "memory.json", CALLS)
        shutil.copy(work / "memory.json", HERE / "memory.json")
        (work / "old.jsonl").write_text('{"type":"entity","name":"Old","entityType":"note"}\n'
                                        '{"type":"entity","name":"Older","entityType":"note","observations":["kept"]}')
        await run_official(work / "old.jsonl", [("create_entities", {"entities": [
            {"name": "New", "entityType": "note", "observations": ["fresh"]}]})])
        shutil.copy(work / "old.jsonl", HERE / "no-observations.jsonl")
    lines = (HERE / "memory.jsonl").read_bytes().split(b"\n")
    quirks = b"\xef\xbb\xbf" + lines[0] + b"\r\n\r\n" + lines[1] + lines[2] + b"\r\n   \r\n" + b"\r\n".join(lines[3:])
    (HERE / "quirks.jsonl").write_bytes(quirks)
    bad = [
        lines[0],
        b'{"type":"comment","text":"not a record"}',
        b'{"type":"entity","entityType":"person","observations":[]}',
        b'{"type":"entity","name":"Typed","entityType":7,"observations":[]}',
        b'{"type":"entity","name":"Listless","entityType":"t","observations":"one"}',
        b'{"type":"entity","name":"Long","entityType":"t","observations":["' + b"x" * 16385 + b'"]}',
        b'{"type":"relation","from":"\\ud800","to":"Ada Lovelace","relationType":"r"}',
        b'["an", "array"]',
        lines[0],
        b'{"type":"entity","name":"Fine","entityType":"t","observations":["ok"]} trailing words',
        lines[-1][: len(lines[-1]) // 2],
    ]
    (HERE / "bad-lines.jsonl").write_bytes(b"\n".join(bad))


if __name__ == "__main__":
    asyncio.run(main())

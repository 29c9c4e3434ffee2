"""`memory-mcp stdio`: the memory tools over stdin/stdout, as a local client starts them (the SDK's
stdio client spawning the real command), on the same store as the HTTP server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.stdio import stdio_client as sdk_stdio_client

from auth.models import User
from server.import_offer import OfferMarks, offer_import
from server.memory.graph import Entity
from server.stdio import Target, importer_for
from tests.conftest import BACKENDS, OAuthUser, RunningServer
from tests.test_end_to_end import every_tool, structured

# Every test here that takes `server` runs on SQLite and on Redis (tests/conftest.py).
SERVER_BACKENDS = BACKENDS

CLI = [sys.executable, "-m", "server"]
# The tree under test, whatever the environment's editable install points at.
REPO = str(Path(__file__).resolve().parents[1])
ENV = {"PYTHONPATH": REPO}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}


def stdio_args(server: RunningServer, *args: str) -> list[str]:
    return ["-m", "server", "stdio", *args, *server.store_args()]


@asynccontextmanager
async def stdio_client(server: RunningServer, tmp_path: Path, *args: str, mode: str = "auto",
                       env: dict[str, str] | None = None) -> AsyncIterator[tuple[Client, Path]]:
    """The SDK's client, spawning `memory-mcp stdio` as a local client does; its stderr in a file."""
    errlog = tmp_path / f"stdio-{time.monotonic_ns()}.err"
    params = StdioServerParameters(command=sys.executable, args=stdio_args(server, *args),
                                   env={**ENV, **(env or {})}, cwd=str(tmp_path))
    with errlog.open("w") as err:
        async with Client(sdk_stdio_client(params, errlog=err), mode=mode) as client:
            yield client, errlog


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, **ENV, **(env or {})})


@pytest.mark.parametrize("mode,era", [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_every_tool_over_stdio_is_the_memory_the_http_server_serves(
        server: RunningServer, tmp_path: Path, mode: str, era: str) -> None:
    """A separate process on the same data directory (or Redis) while the HTTP server runs: what
    one writes the other reads, both ways, and it is the user's memory, not another's."""
    async with stdio_client(server, tmp_path, "--user", "alice", mode=mode) as (client, errlog):
        assert client.protocol_version == era
        await every_tool(client)
    assert "serving memory 'default' of user 'alice' over stdio" in errlog.read_text()
    alice_id = (await server.storage.get_user_by_name("alice")).id  # type: ignore[union-attr]
    # Provenance: what came over the pipe was created by the client "stdio".
    [ada] = [json.loads(line) for line in (await export_text(server, alice_id)).splitlines()]
    assert (ada["name"], ada["createdBy"]) == ("Ada", "stdio")

    alice = OAuthUser(server.url, "alice", "alice-password-1")
    async with alice.client() as (http, _):
        graph = structured(await http.call_tool("read_graph", {}))
        assert graph == {"entities": [{"name": "Ada", "entityType": "person", "observations": []}],
                         "relations": []}
        await http.call_tool("add_observations", {"observations": [{"entityName": "Ada",
                                                                    "contents": ["written over HTTP"]}]})
    bob = OAuthUser(server.url, "bob", "bob-password-22")
    async with bob.client() as (http, _):
        assert structured(await http.call_tool("read_graph", {})) == {"entities": [], "relations": []}

    async with stdio_client(server, tmp_path, "--user", "alice", "--memory", "default") as (client, _):
        graph = structured(await client.call_tool("read_graph", {}))
        assert graph["entities"] == [{"name": "Ada", "entityType": "person", "observations": ["written over HTTP"]}]
    async with stdio_client(server, tmp_path, "--user", "bob") as (client, _):
        assert structured(await client.call_tool("open_nodes", {"names": ["Ada"]}))["entities"] == []


async def test_the_stdio_process_has_no_session_and_no_token(server: RunningServer, tmp_path: Path) -> None:
    """Nothing of the OAuth server is used or left behind: no client registered, no token
    issued, no MCP session recorded."""
    async with stdio_client(server, tmp_path, "--user", "alice", mode="legacy") as (client, _):
        structured(await client.call_tool("create_entities", {"entities": [
            {"name": "x", "entityType": "t", "observations": []}]}))
    assert await server.storage.list_clients() == []
    assert len(server.registry) == 0
    sessions = await server.storage.list_sessions()
    assert sessions == []


def test_the_protocol_alone_is_on_stdout_and_eof_ends_the_process(tmp_path: Path) -> None:
    """Raw JSON-RPC lines in, and every stdout line is a JSON-RPC message; closing stdin ends the
    process with status 0. Logging at debug puts nothing on stdout and no memory content on stderr."""
    data = str(tmp_path / "data")
    assert run("users", "add", "alice", "--password-stdin", "--data-dir", data, stdin="alice-password-1\n"
               ).returncode == 0
    secret = "observation-that-must-stay-private-4711"
    lines = [
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "create_entities", "arguments": {
            "entities": [{"name": "private", "entityType": "t", "observations": [secret]}]}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "search_nodes", "arguments": {
            "query": "nothing-matches-this"}}},
    ]
    proc = subprocess.Popen([*CLI, "stdio", "--user", "alice", "--data-dir", data, "--log-level", "debug"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    out, err = proc.communicate("".join(json.dumps(line) + "\n" for line in lines), timeout=60)
    assert proc.returncode == 0, err
    # Requests are handled concurrently: answers come in any order, each exactly once, and the
    # ones still in flight at end of input are answered before the process ends.
    answers = sorted((json.loads(line) for line in out.splitlines()), key=lambda a: a["id"])
    assert [a.get("id") for a in answers] == [1, 2, 3], out
    assert all(a["jsonrpc"] == "2.0" and "result" in a for a in answers), out
    assert answers[0]["result"]["serverInfo"]["name"] == "memory-mcp"
    assert json.loads(answers[1]["result"]["content"][0]["text"])["entities"][0]["observations"] == [secret]
    assert json.loads(answers[2]["result"]["content"][0]["text"]) == {"entities": [], "relations": []}
    assert secret not in err, [line for line in err.splitlines() if secret in line][:3]
    assert "Traceback" not in err, err


async def test_sigterm_ends_it_cleanly(server: RunningServer, tmp_path: Path) -> None:
    """A client stopping its server with SIGTERM: exit status 0, and the write it had answered is kept."""
    proc = subprocess.Popen([sys.executable, *stdio_args(server, "--user", "alice")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    assert proc.stdin is not None and proc.stdout is not None
    for line in [
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "create_entities", "arguments": {
            "entities": [{"name": "kept", "entityType": "t", "observations": []}]}}},
    ]:
        proc.stdin.write(json.dumps(line) + "\n")
        proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["id"] == 1
    assert "result" in json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    user = await server.storage.get_user_by_name("alice")
    assert user is not None
    graph = json.loads((await server.storage.read_graph(user.id)).json)
    assert [e["name"] for e in graph["entities"]] == ["kept"]


async def test_the_resource_is_subscribable_over_stdio(server: RunningServer) -> None:
    """After resources/subscribe, a change of the memory, by this client or another (here the
    store the HTTP server serves, written from outside the process), is sent as
    notifications/resources/updated; after resources/unsubscribe, nothing more."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *stdio_args(server, "--user", "alice"), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **ENV})
    assert proc.stdin is not None and proc.stdout is not None
    user = await server.storage.get_user_by_name("alice")
    assert user is not None

    async def send(message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(message) + "\n").encode())
        await proc.stdin.drain()

    async def next_message(timeout: float = 10.0) -> dict[str, Any]:
        assert proc.stdout is not None
        return json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout))  # type: ignore[no-any-return]

    def create(request_id: int, name: str) -> dict[str, Any]:
        entity = {"name": name, "entityType": "t", "observations": []}
        return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                "params": {"name": "create_entities", "arguments": {"entities": [entity]}}}

    updated = {"jsonrpc": "2.0", "method": "notifications/resources/updated",
               "params": {"uri": "memory://knowledge-graph"}}
    try:
        await send(INITIALIZE)
        assert (await next_message())["result"]["capabilities"]["resources"]["subscribe"] is True
        await send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await send({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe",
                    "params": {"uri": "memory://knowledge-graph"}})
        assert await next_message() == {"jsonrpc": "2.0", "id": 2, "result": {}}
        await send(create(3, "written over stdio"))
        received = [await next_message(), await next_message()]
        assert updated in received and any(m.get("id") == 3 for m in received), received
        await server.storage.create_entities(user.id, [Entity(name="written elsewhere", entityType="t",
                                                              observations=[])])
        assert await next_message() == updated
        await send({"jsonrpc": "2.0", "id": 4, "method": "resources/unsubscribe",
                    "params": {"uri": "memory://knowledge-graph"}})
        assert await next_message() == {"jsonrpc": "2.0", "id": 4, "result": {}}
        await send(create(5, "after unsubscribing"))
        assert (await next_message())["id"] == 5
        await server.storage.create_entities(user.id, [Entity(name="also after", entityType="t", observations=[])])
        with pytest.raises(TimeoutError):
            await next_message(timeout=1.5)  # three polls of SQLite's counters; Redis publishes at once
    finally:
        proc.stdin.close()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and b"Traceback" not in err, err


@pytest.mark.parametrize("args,needle", [
    (["--user", "carol"], "no user named 'carol' in this store; create it first: memory-mcp users add carol"),
    (["--user", "bad name"], "--user 'bad name' is not a valid user name"),
    (["--user", "alice", "--memory", "work"], "--memory 'work': user 'alice' has no memory named 'work'; "
     "`memory-mcp memory list --user alice` shows theirs"),
])
def test_a_user_or_memory_it_cannot_serve_is_one_line_and_a_failure(
        tmp_path: Path, args: list[str], needle: str) -> None:
    data = str(tmp_path / "data")
    assert run("users", "add", "alice", "--password-stdin", "--data-dir", data, stdin="alice-password-1\n"
               ).returncode == 0
    result = run("stdio", *args, "--data-dir", data)
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memory-mcp: ") and needle in lines[0], result.stderr
    assert "serving" not in result.stderr


def test_no_user_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run("stdio", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2 and "--user" in result.stderr, result.stderr


def test_an_unusable_data_directory_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory")
    result = run("stdio", "--user", "alice", "--data-dir", str(data))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("memory-mcp: ") and str(data) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- MEMORY_FILE_PATH: the offer to import the official server's file ---------------------------

OFFICIAL_FILE: list[dict[str, Any]] = [
    {"type": "entity", "name": "Ada", "entityType": "person", "observations": ["wrote the first program"]},
    {"type": "entity", "name": "Charles", "entityType": "person", "observations": []},
    {"type": "relation", "from": "Ada", "to": "Charles", "relationType": "corresponded with"},
]


def official_file(path: Path, records: list[dict[str, Any]] = OFFICIAL_FILE) -> Path:
    """A memory file as @modelcontextprotocol/server-memory writes it: one JSON object per line."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


async def stderr_of_a_start(server: RunningServer, tmp_path: Path, env: dict[str, str]) -> str:
    async with stdio_client(server, tmp_path, "--user", "alice", env=env) as (client, errlog):
        await client.list_tools()
    return errlog.read_text()


async def test_an_empty_memory_gets_the_file_at_the_first_start_only(server: RunningServer, tmp_path: Path) -> None:
    """The move from the official server: its file, named by MEMORY_FILE_PATH, is imported into the
    empty memory at the first start, with its counts on stderr; the next start says nothing; once
    the official server has written the file again, the memory is not empty, so only the command
    that would import it is printed."""
    path = official_file(tmp_path / "memory.jsonl")
    env = {"MEMORY_FILE_PATH": str(path)}
    store = (f"--data-dir {server.settings.data_dir}" if server.settings.redis_url is None
             else "(with the same redis_url: --redis-url or MEMORY_MCP_REDIS_URL)")
    command = f"memory-mcp memory import --user alice {path} {store}"
    async with stdio_client(server, tmp_path, "--user", "alice", env=env) as (client, errlog):
        graph = structured(await client.call_tool("read_graph", {}))
    assert graph == {"entities": [{k: v for k, v in r.items() if k != "type"} for r in OFFICIAL_FILE[:2]],
                     "relations": [{k: v for k, v in OFFICIAL_FILE[2].items() if k != "type"}]}
    [said] = [line for line in errlog.read_text().splitlines() if "MEMORY_FILE_PATH" in line]
    assert said == (f"memory-mcp: imported {path} (MEMORY_FILE_PATH, the official memory server's file) into the "
                    "memory 'default' of user 'alice', which was empty: imported 2 entities, 1 observations, "
                    "1 relations; the file itself is unchanged (importing it again adds nothing and lists any "
                    f"record skipped: {command})")
    user = await server.storage.get_user_by_name("alice")
    assert user is not None
    # What the file did not say the origin of is marked as imported, not as written over stdio.
    exported = [json.loads(line) for line in (await export_text(server, user.id)).splitlines()]
    assert {record.get("createdBy") for record in exported} == {"import"}

    assert "MEMORY_FILE_PATH" not in await stderr_of_a_start(server, tmp_path, env)

    official_file(path, [*OFFICIAL_FILE, {"type": "entity", "name": "Babbage", "entityType": "person",
                                          "observations": []}])
    [said] = [line for line in (await stderr_of_a_start(server, tmp_path, env)).splitlines()
              if "MEMORY_FILE_PATH" in line]
    assert "already holds 2 entities, so it is not imported automatically" in said and said.endswith(command)
    assert "MEMORY_FILE_PATH" not in await stderr_of_a_start(server, tmp_path, env)
    async with stdio_client(server, tmp_path, "--user", "alice", env=env) as (client, _):
        assert structured(await client.call_tool("open_nodes", {"names": ["Babbage"]}))["entities"] == []
    # Another user's memory is another offer: bob's, empty, gets the file.
    async with stdio_client(server, tmp_path, "--user", "bob", env=env) as (client, errlog):
        assert len(structured(await client.call_tool("read_graph", {}))["entities"]) == 3
    assert "into the memory 'default' of user 'bob', which was empty: imported 3 entities" in errlog.read_text()


async def export_text(server: RunningServer, owner: str) -> str:
    from server.memory import jsonl

    return b"".join([chunk async for chunk in jsonl.export_lines(server.storage.export_batches(owner, 100))]).decode()


@pytest.mark.parametrize("value,needle", [
    ("{tmp}/absent.jsonl", "absent.jsonl': no such file or directory; nothing imported"),
    ("memory.jsonl", "MEMORY_FILE_PATH='memory.jsonl' is relative, and there is no such file in"),
    ("{tmp}", "is not a file; nothing imported"),
])
async def test_a_file_that_is_not_there_is_said_and_serving_goes_on(
        server: RunningServer, tmp_path: Path, value: str, needle: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    async with stdio_client(server, work, "--user", "alice",
                            env={"MEMORY_FILE_PATH": value.format(tmp=work)}) as (client, errlog):
        structured(await client.call_tool("read_graph", {}))
    assert needle in errlog.read_text(), errlog.read_text()


async def offer(server: RunningServer, path: Path, owner: str, marks: OfferMarks) -> list[str]:
    """The offer as `memory-mcp stdio` makes it, with the real import, for the memory `owner`."""
    said: list[str] = []
    user = User(id=owner, username="alice", password_hash="", created_at=0)
    importer = importer_for(server.storage, server.settings, Target(user, "default", owner))
    await offer_import(str(path), server.storage, owner, importer, marks, who="memory 'default' of user 'alice'",
                       command=lambda p: f"memory-mcp memory import --user alice {p}", say=said.append)
    return said


async def test_a_memory_with_data_is_never_merged_into(server: RunningServer, tmp_path: Path) -> None:
    owner = "owner-with-data"
    await server.storage.create_entities(owner, [Entity(name="Here", entityType="t", observations=[])])
    [said] = await offer(server, official_file(tmp_path / "memory.jsonl"), owner, OfferMarks(tmp_path))
    assert "already holds 1 entities" in said
    graph = json.loads((await server.storage.read_graph(owner)).json)
    assert [e["name"] for e in graph["entities"]] == ["Here"]


async def test_a_file_that_cannot_be_imported_is_said_and_tried_again(server: RunningServer, tmp_path: Path) -> None:
    owner = "owner-of-a-bad-file"
    path, marks = tmp_path / "memory.json", OfferMarks(tmp_path)
    path.write_text(json.dumps(OFFICIAL_FILE, indent=2))  # one pretty-printed document: not JSON Lines
    [said] = await offer(server, path, owner, marks)
    assert "could not be imported: " in said and "is not a JSON Lines file" in said, said
    assert "the memory 'default' of user 'alice' is unchanged, and the import is tried again at the next start" in said
    assert said.endswith(f"by hand: memory-mcp memory import --user alice {path})")
    assert (await server.storage.usage(owner)).entities == 0
    assert len(await offer(server, path, owner, marks)) == 1  # not remembered: said again
    official_file(path)
    assert "which was empty: imported 2 entities" in (await offer(server, path, owner, marks))[0]


async def test_skipped_records_are_counted(server: RunningServer, tmp_path: Path) -> None:
    path = official_file(tmp_path / "memory.jsonl", [*OFFICIAL_FILE, {"type": "entity", "name": 7}])
    [said] = await offer(server, path, "owner-of-a-flawed-file", OfferMarks(tmp_path))
    assert "imported 2 entities, 1 observations, 1 relations, 1 record(s) skipped;" in said, said


async def test_an_offer_that_cannot_be_remembered_is_said(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    said = await offer(server, official_file(tmp_path / "memory.jsonl"), "someone",
                       OfferMarks(tmp_path / "not-a-directory"))
    assert len(said) == 2 and "which was empty: imported 2 entities" in said[0]
    assert said[1].startswith(f"cannot remember the offer in {tmp_path / 'not-a-directory' / 'import-offers.json'}")


def test_restore_waits_for_the_stdio_process_too(tmp_path: Path) -> None:
    """The stdio process holds the data directory's serve lock, as `serve` does: a restore cannot
    replace the database under it."""
    data = str(tmp_path / "data")
    assert run("users", "add", "alice", "--password-stdin", "--data-dir", data, stdin="alice-password-1\n"
               ).returncode == 0
    assert run("backup", "--to", str(tmp_path / "saved"), "--data-dir", data).returncode == 0
    proc = subprocess.Popen([*CLI, "stdio", "--user", "alice", "--data-dir", data], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(INITIALIZE) + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1  # serving, so the lock is held
        refused = run("restore", "--from", str(tmp_path / "saved"), "--replace", "--data-dir", data)
        assert refused.returncode == 1 and "a memory-mcp server is running" in refused.stderr, refused.stderr
    finally:
        proc.communicate("", timeout=30)  # end of input: the process ends
    assert proc.returncode == 0
    assert run("restore", "--from", str(tmp_path / "saved"), "--replace", "--data-dir", data).returncode == 0


async def test_the_settings_of_serve_apply_over_stdio(server: RunningServer, tmp_path: Path) -> None:
    """The same settings as `serve` (here from the environment, as a client's `env` gives them):
    the result size cap pages a large read_graph."""
    big = "x" * 3000
    async with stdio_client(server, tmp_path, "--user", "alice", mode="legacy",
                            env={"MEMORY_MCP_MEMORY_MAX_RESULT_BYTES": "4096"}) as (client, _):
        structured(await client.call_tool("create_entities", {"entities": [
            {"name": f"e{i}", "entityType": "t", "observations": [big]} for i in range(3)]}))
        page = structured(await client.call_tool("read_graph", {}))
        assert len(page["entities"]) < 3 and "nextCursor" in page, page.keys()


async def test_a_named_memory_over_stdio(server: RunningServer, tmp_path: Path) -> None:
    """`--memory NAME` serves that memory of the user: its graph, not the default one; the import
    offer names it."""
    made = run("memory", "create", "--user", "alice", "work", *server.store_args())
    assert made.returncode == 0, made.stderr
    path = official_file(tmp_path / "memory.jsonl")
    async with stdio_client(server, tmp_path, "--user", "alice", "--memory", "work",
                            env={"MEMORY_FILE_PATH": str(path)}) as (client, errlog):
        assert len(structured(await client.call_tool("read_graph", {}))["entities"]) == 2  # imported into work
        structured(await client.call_tool("create_entities", {"entities": [
            {"name": "only at work", "entityType": "t", "observations": []}]}))
    text = errlog.read_text()
    assert "into the memory 'work' of user 'alice', which was empty" in text
    assert f"memory-mcp memory import --user alice --memory work {path}" in text
    assert "serving memory 'work' of user 'alice' over stdio" in text
    async with stdio_client(server, tmp_path, "--user", "alice") as (client, _):
        assert structured(await client.call_tool("read_graph", {})) == {"entities": [], "relations": []}
    async with stdio_client(server, tmp_path, "--user", "alice", "--memory", "work") as (client, _):
        names = [e["name"] for e in structured(await client.call_tool("read_graph", {}))["entities"]]
        assert names == ["Ada", "Charles", "only at work"]

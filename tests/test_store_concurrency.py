"""The store never blocks the event loop, and a store that cannot write answers a retryable error.

Real server, real HTTP, real SQLite files: another process holds the write lock, or the disk the
database lives on is full (a size-limited tmpfs). Meanwhile `/healthz` and reads are answered at
once, writes are refused after `store_busy_timeout` with 503 + Retry-After (HTTP) or a tool error
that says to retry (tools/call), never a 500, and everything works again once the lock is released
or space is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import mcp_types as types
import pytest
import redis.asyncio as aioredis
from mcp import Client
from mcp.client.sse import sse_client

from auth import accounts
from auth.store import StoreUnavailable
from server.memory.graph import Entity, KnowledgeGraph, Relation
from server.storage.sqlite import SQLiteStorage
from server.storage.sqlite.graph import DELETE_BATCH
from tests.browser import parse_forms
from tests.conftest import OAuthUser, RunningServer, access_token, on_both_backends, start_server

BUSY_TIMEOUT = 2.0
VERSION = "2025-11-25"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class Heartbeat:
    """A task that wakes every 10 ms and records how late it woke: the loop's longest stall."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(0.01)
            self.max_lag = max(self.max_lag, time.monotonic() - start - 0.01)

    def __enter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._beat())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


@contextlib.asynccontextmanager
async def write_lock_held_elsewhere(path: Path) -> AsyncIterator[None]:
    """Another process (as `memory-mcp users remove` or a backup tool would be) holding the
    database's write lock until the block ends."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
        "c.execute('ROLLBACK')\n",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"locked\n"
        yield
    finally:
        holder.stdin.write(b"\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(holder.wait(), 30) == 0


@contextlib.asynccontextmanager
async def redis_paused(url: str, writes_only: bool = False) -> AsyncIterator[None]:
    """Redis stops answering (or, `writes_only`, taking writes) until the block ends, as under a
    long-running script or a failover's pause. Paused for everything, Redis holds back even the
    UNPAUSE: that pause lasts 2 s, and leaving the block waits for its end."""
    other = aioredis.Redis.from_url(url)
    try:
        await other.client_pause(30_000 if writes_only else 2_000, all=not writes_only)
        try:
            yield
        finally:
            await other.client_unpause()
    finally:
        await other.aclose()


@contextlib.asynccontextmanager
async def redis_out_of_memory(url: str) -> AsyncIterator[None]:
    """Redis at its `maxmemory` (under `noeviction`, the policy docs/deploy.md asks for): it refuses
    every write, and answers reads, until the block ends."""
    other: Any = aioredis.Redis.from_url(url)
    try:
        before = await other.config_get("maxmemory*")
        await other.config_set("maxmemory-policy", "noeviction")
        await other.config_set("maxmemory", 1)
        try:
            yield
        finally:
            for name, value in before.items():
                await other.config_set(name, value)
    finally:
        await other.aclose()


@contextlib.asynccontextmanager
async def writes_refused(server: RunningServer) -> AsyncIterator[None]:
    """The store refuses writes until the block ends: SQLite's write lock held by another process,
    Redis out of memory."""
    redis_url = server.settings.redis_url
    held = write_lock_held_elsewhere(server.sqlite.db.path) if redis_url is None else redis_out_of_memory(redis_url)
    async with held:
        yield


@contextlib.asynccontextmanager
async def writes_held_elsewhere(server: RunningServer) -> AsyncIterator[None]:
    """The store takes no write until the block ends: SQLite's write lock held by another process,
    Redis paused for writes."""
    redis_url = server.settings.redis_url
    held = (write_lock_held_elsewhere(server.sqlite.db.path) if redis_url is None
            else redis_paused(redis_url, writes_only=True))
    async with held:
        yield


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
async def busy_server(data_dir: Path, store_settings: dict[str, Any]) -> AsyncIterator[RunningServer]:
    running = await start_server(data_dir, store_busy_timeout=BUSY_TIMEOUT, **store_settings)
    await accounts.add_user(running.storage, "alice", "alice-password-1")
    yield running
    await running.stop()


async def mcp_session(http: httpx2.AsyncClient, server: RunningServer, token: str) -> dict[str, str]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    init = await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert init.status_code == 200, init.text
    headers.update({"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": VERSION})
    return headers


async def call(http: httpx2.AsyncClient, server: RunningServer, headers: dict[str, str], tool: str,
               arguments: dict[str, Any]) -> dict[str, Any]:
    """A tools/call answered as JSON (the direct path); the JSON-RPC result."""
    resp = await http.post(server.url + "/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()["result"]
    return result


def entity(name: str) -> dict[str, Any]:
    return {"name": name, "entityType": "t", "observations": [f"about {name}"]}


def names(result: dict[str, Any]) -> list[str]:
    return [e["name"] for e in result["structuredContent"]["entities"]]


async def login_form(session: aiohttp.ClientSession, server: RunningServer) -> dict[str, str]:
    async with session.get(server.url + "/login") as page:
        assert page.status == 200
        form = parse_forms(await page.text())[0]
    return {**form.fields, "username": "alice", "password": "alice-password-1"}


async def test_a_write_lock_held_elsewhere_blocks_nothing_and_writes_answer_retryable_errors(
        http: httpx2.AsyncClient, busy_server: RunningServer) -> None:
    server = busy_server
    alice = await mcp_session(http, server, await access_token(server, "alice", "alice-password-1"))
    await call(http, server, alice, "create_entities", {"entities": [entity("before")]})
    # Written and not yet read: the read_graph view of it is stale and would need a rebuild (a write).
    await call(http, server, alice, "add_observations",
               {"observations": [{"entityName": "before", "contents": ["more"]}]})

    async with write_lock_held_elsewhere(server.sqlite.db.path):
        with Heartbeat() as heartbeat:
            write = asyncio.create_task(call(http, server, alice, "create_entities", {"entities": [entity("during")]}))
            await asyncio.sleep(0)
            # While that write waits for the lock, everything else is answered.
            health = await http.get(server.url + "/healthz")
            assert health.status_code == 200
            opened = await call(http, server, alice, "open_nodes", {"names": ["before"]})
            assert names(opened) == ["before"]
            graph = await call(http, server, alice, "read_graph", {})
            assert names(graph) == ["before"]
            assert graph["structuredContent"]["entities"][0]["observations"] == ["about before", "more"]
            assert not write.done(), "the reads waited for the write"
            refused = await write
            # A register and a new MCP session need writes: refused with 503 and Retry-After.
            register = await http.post(server.url + "/register", json={
                "client_name": "c", "redirect_uris": ["http://127.0.0.1:9/cb"]})
            init = await http.post(server.url + "/mcp", headers={k: v for k, v in alice.items() if k.lower()
                                                                   not in ("mcp-session-id",)}, json={
                "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                form = await login_form(browser, server)
                async with browser.post(server.url + "/login", data=form, allow_redirects=False) as login:
                    login_status, login_headers, login_page = login.status, login.headers, await login.text()
        # The loop never stalled for anything like the busy timeout (generous bound: a shared
        # machine), though writes waited for it three times.
        assert heartbeat.max_lag < BUSY_TIMEOUT / 3, heartbeat.max_lag

    assert refused["isError"] is True
    assert "temporarily unavailable" in refused["content"][0]["text"]
    assert "Retry" in refused["content"][0]["text"]
    assert register.status_code == 503
    assert register.json()["error"] == "temporarily_unavailable"
    assert int(register.headers["Retry-After"]) >= 1
    assert init.status_code == 503
    assert init.json()["error"]["code"] == -32000 and "retry" in init.json()["error"]["message"]
    assert init.json()["id"] == 0  # the client matches the refusal to its request
    assert int(init.headers["Retry-After"]) >= 1
    assert login_status == 503 and int(login_headers["Retry-After"]) >= 1
    assert login_headers["Content-Type"].startswith("text/html") and "Try again" in login_page

    # Released: the same write succeeds.
    assert not (await call(http, server, alice, "create_entities", {"entities": [entity("during")]}))["isError"]
    assert names(await call(http, server, alice, "read_graph", {})) == ["before", "during"]
    assert (await http.post(server.url + "/register", json={
        "client_name": "c", "redirect_uris": ["http://127.0.0.1:9/cb"]})).status_code == 201


@on_both_backends("store_settings")
async def test_a_tool_write_on_the_sdk_path_answers_a_retryable_tool_error(busy_server: RunningServer) -> None:
    """The legacy SSE transport always goes through the SDK's server: the same tool error there."""
    server = busy_server
    alice = OAuthUser(server.url, "alice", "alice-password-1")
    transport = sse_client(server.url + "/sse", auth=alice.provider("/sse"))
    async with Client(transport, mode="legacy") as client:
        await client.call_tool("create_entities", {"entities": [entity("before")]})
        async with writes_refused(server):
            refused = await client.call_tool("create_entities", {"entities": [entity("during")]})
            graph = await client.call_tool("read_graph", {})
        assert refused.is_error
        text = refused.content[0]
        assert isinstance(text, types.TextContent) and "temporarily unavailable" in text.text
        assert graph.structured_content is not None
        assert [e["name"] for e in graph.structured_content["entities"]] == ["before"]
        assert not (await client.call_tool("create_entities", {"entities": [entity("during")]})).is_error


@on_both_backends("store_settings")
async def test_a_request_through_the_sdk_transport_is_answered_when_its_event_cannot_be_stored(
        http: httpx2.AsyncClient, busy_server: RunningServer) -> None:
    """A ping goes through the SDK transport, which stores each SSE event for resumability: with
    the store locked it is still answered (resuming from it is what is lost), not a 500."""
    server = busy_server
    alice = await mcp_session(http, server, await access_token(server, "alice", "alice-password-1"))
    async with writes_refused(server):
        ping = await http.post(server.url + "/mcp", headers=alice, json={"jsonrpc": "2.0", "id": 5, "method": "ping"})
    assert ping.status_code == 200, ping.text
    assert '{"jsonrpc":"2.0","id":5,"result":{}}' in ping.text.replace(" ", "")


async def test_read_graph_from_rows_while_locked_is_byte_identical(
        http: httpx2.AsyncClient, busy_server: RunningServer) -> None:
    """The read-only answer of a stale view is exactly the one its rebuild gives."""
    server = busy_server
    alice = await mcp_session(http, server, await access_token(server, "alice", "alice-password-1"))
    await call(http, server, alice, "create_entities", {"entities": [entity(f"e{i}") for i in range(300)]})
    await call(http, server, alice, "create_relations", {"relations": [
        {"from": f"e{i}", "to": f"e{i + 1}", "relationType": "next"} for i in range(299)]})
    await call(http, server, alice, "read_graph", {})  # chunks built and cached
    await call(http, server, alice, "add_observations", {"observations": [
        {"entityName": "e200", "contents": ["new \u00e9 \"quoted\""]}]})  # one chunk stale again
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_graph", "arguments": {}}}
    async with write_lock_held_elsewhere(server.sqlite.db.path):
        from_rows = (await http.post(server.url + "/mcp", headers=alice, json=body)).content
    rebuilt = (await http.post(server.url + "/mcp", headers=alice, json=body)).content
    cached = (await http.post(server.url + "/mcp", headers=alice, json=body)).content
    assert from_rows == rebuilt == cached
    assert b"new \\u00e9" in from_rows or "new é".encode() in from_rows


# --- disk full ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs of its own (the test runs as root, as in CI's container)."""
    mount_command, umount_command = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or mount_command is None or umount_command is None:
        pytest.fail("this test mounts a tmpfs: run it as root, with mount(8) installed (CI does)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run([mount_command, "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run([umount_command, "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Fill the file system up to the last byte; the filler's path (delete it to free space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_gives_retryable_errors_and_reads_keep_working(
        http: httpx2.AsyncClient, small_disk: Path) -> None:
    server = await start_server(small_disk / "data")
    try:
        await accounts.add_user(server.storage, "alice", "alice-password-1")
        alice = await mcp_session(http, server, await access_token(server, "alice", "alice-password-1"))
        await call(http, server, alice, "create_entities", {"entities": [entity("kept")]})
        await call(http, server, alice, "add_observations",
                   {"observations": [{"entityName": "kept", "contents": ["stale view"]}]})
        # An empty WAL: the next write has to grow a file, as it does sooner or later on a full disk.
        check = sqlite3.connect(server.sqlite.db.path)
        assert check.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        check.close()
        filler = fill(small_disk)

        refused = await call(http, server, alice, "create_entities", {"entities": [entity("lost")]})
        assert refused["isError"] is True and "disk is full" in refused["content"][0]["text"]
        graph = await call(http, server, alice, "read_graph", {})
        assert graph["structuredContent"]["entities"] == [
            {"name": "kept", "entityType": "t", "observations": ["about kept", "stale view"]}]
        register = await http.post(server.url + "/register", json={
            "client_name": "c", "redirect_uris": ["http://127.0.0.1:9/cb"]})
        assert register.status_code == 503 and register.json()["error"] == "temporarily_unavailable"
        assert "disk is full" in register.json()["error_description"]
        assert int(register.headers["Retry-After"]) >= 1
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            form = await login_form(browser, server)
            async with browser.post(server.url + "/login", data=form, allow_redirects=False) as login:
                assert login.status == 503 and int(login.headers["Retry-After"]) >= 1
                assert "disk is full" in await login.text()

        filler.unlink()
        assert not (await call(http, server, alice, "create_entities", {"entities": [entity("later")]}))["isError"]
        assert names(await call(http, server, alice, "read_graph", {})) == ["kept", "later"]
    finally:
        await server.stop()


# --- long administrative deletions ----------------------------------------------------------------


async def test_deleting_a_large_graph_lets_other_writers_in_between(tmp_path: Path) -> None:
    """`users remove` of a large user, as the admin CLI runs it beside a server: the deletion is
    many short transactions, and the server's writes, which give up after a short busy timeout,
    all get the lock in between."""
    path = tmp_path / "memory.sqlite3"
    admin = SQLiteStorage(path)
    server = SQLiteStorage(path, busy_timeout=0.5)
    try:
        big = [Entity(name=f"entity {i}", entityType="t", observations=[f"fact {j} of {i}" for j in range(5)])
               for i in range(3 * DELETE_BATCH + 17)]
        await admin.create_entities("doomed", big)
        await admin.create_relations("doomed", [Relation(from_=f"entity {i}", to="nobody", relationType="r")
                                                for i in range(2 * DELETE_BATCH)])
        commits: list[str] = []
        await admin.db.write(lambda conn: conn.set_trace_callback(
            lambda sql: commits.append(sql) if sql == "COMMIT" else None))

        deletion = asyncio.create_task(admin.delete_graph("doomed"))
        written_meanwhile = 0
        while not deletion.done():
            await server.create_entities("bystander", [Entity(name=f"b{written_meanwhile}", entityType="t",
                                                              observations=[])])
            written_meanwhile += 1
        assert await deletion == len(big)

        # At least one transaction per batch of entities and of relations, and the other writer
        # got in while the deletion was under way.
        assert len(commits) >= len(big) // DELETE_BATCH + 2, commits
        assert written_meanwhile >= 2
        assert (await server.read_graph("doomed")).model() == KnowledgeGraph(entities=[], relations=[])
        assert len((await server.read_graph("bystander")).model().entities) == written_meanwhile
    finally:
        await admin.close()
        await server.close()


async def test_close_finishes_queued_work_and_stops_the_threads(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "memory.sqlite3")
    writes = [asyncio.create_task(storage.create_entities("o", [Entity(name=f"e{i}", entityType="t",
                                                                          observations=[])])) for i in range(20)]
    await asyncio.sleep(0)  # queued, not all done
    await storage.close()
    assert [len(created) for created in await asyncio.gather(*writes)] == [1] * 20
    assert not any(thread.is_alive() for thread in storage.db._threads)
    with pytest.raises(StoreUnavailable):
        await storage.open_nodes("o", ["e1"])
    reopened = SQLiteStorage(tmp_path / "memory.sqlite3")
    try:
        assert len((await reopened.read_graph("o")).model().entities) == 20
    finally:
        await reopened.close()

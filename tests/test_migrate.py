"""`memory-mcp migrate --to redis://...` and `memory-mcp backup` / `restore` with `redis_url` set
(server/backup.py, through server/storage/portable.py), as an operator runs them: real servers, a
real MCP SDK client that keeps its tokens and its session across the move, the CLI as a
subprocess, the private test Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2

from auth import accounts
from tests.browser import Browser
from tests.conftest import OAuthUser, RunningServer, free_socket, start_server, tokens_by_hand
from tests.redis_server import RedisServer
from tests.test_backup import run_async
from tests.test_cli import Process, run

PASSWORD = "alice-password-1"


def structured(result: Any) -> Any:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


async def write_memory(client: Any) -> Any:
    await client.call_tool("create_entities", {"entities": [
        {"name": name, "entityType": "t", "observations": [f"{name} 1", f"{name} 2"]}
        for name in ("zulu", "alpha", "mike", "gone")]})
    await client.call_tool("create_relations", {"relations": [
        {"from": "zulu", "to": "alpha", "relationType": "knows"}, {"from": "gone", "to": "mike", "relationType": "x"}]})
    await client.call_tool("delete_entities", {"entityNames": ["gone"]})
    await client.call_tool("add_observations", {"observations": [{"entityName": "zulu", "contents": ["later"]}]})
    return structured(await client.call_tool("read_graph", {}))


async def refresh(server_url: str, user: OAuthUser) -> int:
    """A refresh with the client's own refresh token, as its SDK sends one."""
    tokens, info = user.storage.tokens, user.storage.client_info
    assert tokens is not None and tokens.refresh_token and info is not None
    async with httpx2.AsyncClient() as http:
        resp = await http.post(server_url + "/token", data={
            "grant_type": "refresh_token", "refresh_token": tokens.refresh_token, "client_id": info.client_id,
            "resource": server_url + "/mcp"})
    return resp.status_code


async def continues(server: RunningServer, user: OAuthUser, client: Any, graph: Any, session_id: str) -> None:
    """The client goes on where it was: the same graph (entity order included), the same MCP
    session, no new login; then its refresh token works."""
    assert structured(await client.call_tool("read_graph", {})) == graph
    assert [s.session_id for s in server.registry.sessions()] == [session_id]
    assert len(user.redirects) == 1, "the client had to sign in again"
    assert await refresh(server.url, user) == 200


async def test_migrate_moves_a_sqlite_deployment_to_redis_without_a_new_login(
        tmp_path: Path, redis_url: str) -> None:
    data = tmp_path / "data"
    server = await start_server(data)
    port = int(server.url.rsplit(":", 1)[1])
    await accounts.add_user(server.storage, "alice", PASSWORD)
    alice = OAuthUser(server.url, "alice", PASSWORD)
    async with alice.client() as (client, _):
        graph = await write_memory(client)
        assert [e["name"] for e in graph["entities"]] == ["zulu", "alpha", "mike"]
        [session] = server.registry.sessions()
        browser = Browser("alice", PASSWORD)  # signs in once, and keeps its login cookie
        await tokens_by_hand(server, "alice", PASSWORD, "memory:read memory:write", browser)
        assert any('name="password"' in page for page in browser.pages)
        await server.stop()

        code, out = await run_async("migrate", "--to", redis_url, "--data-dir", str(data))
        assert code == 0, out
        assert "1 accounts" in out and "3 entities" in out and "1 relations" in out and "1 MCP sessions" in out

        moved = await start_server(data, port=port, redis_url=redis_url)
        try:
            await continues(moved, alice, client, graph, session.session_id)
            seen = len(browser.pages)
            await tokens_by_hand(moved, "alice", PASSWORD, "memory:read memory:write", browser)
            assert not any('name="password"' in page for page in browser.pages[seen:]), "the browser login ended"
        finally:
            await browser.close()
            await moved.stop()

    again = run("migrate", "--to", redis_url, "--data-dir", str(data))
    assert again.returncode == 1 and "already holds memory-mcp data" in again.stderr, again.stderr


async def test_a_redis_backup_taken_while_serving_restores_into_an_empty_redis(
        tmp_path: Path, redis_url: str, redis_server: RedisServer) -> None:
    data, saved = tmp_path / "data", tmp_path / "backup"
    server = await start_server(data, redis_url=redis_url)
    port = int(server.url.rsplit(":", 1)[1])
    await accounts.add_user(server.storage, "alice", PASSWORD)
    await accounts.add_user(server.storage, "bob", "bob-password-22")
    alice, bob = OAuthUser(server.url, "alice", PASSWORD), OAuthUser(server.url, "bob", "bob-password-22")
    async with alice.client() as (client, _):
        graph = await write_memory(client)
        [session] = server.registry.sessions()
        async with bob.client() as (writing, _):
            written = 0
            done = asyncio.Event()

            async def writer() -> None:
                # Each call adds an entity and a relation to the previous one: a graph read in two
                # steps could hold a relation without its entity, or skip one in the middle.
                nonlocal written
                while not done.is_set():
                    name = f"during-{written:05d}"
                    await writing.call_tool("create_entities", {"entities": [
                        {"name": name, "entityType": "t", "observations": ["x" * 100]}]})
                    if written:
                        await writing.call_tool("create_relations", {"relations": [
                            {"from": f"during-{written - 1:05d}", "to": name, "relationType": "next"}]})
                    written += 1

            task = asyncio.create_task(writer())
            await asyncio.sleep(0.3)
            code, out = await run_async("backup", "--to", str(saved), "--redis-url", redis_url)
            # Stopped between calls, not cancelled: a call cancelled inside the SDK client leaves its
            # answer with nowhere to go, which the client raises on its way out.
            done.set()
            await task
        assert code == 0, out
        assert "backed up Redis" in out and "2 accounts" in out
        assert sorted(p.name for p in saved.iterdir()) == ["memory.sqlite3", "session.key"]
        await server.stop()

        redis_server.flush()
        code, out = await run_async("restore", "--from", str(saved), "--redis-url", redis_url)
        assert code == 0, out
        assert "2 accounts" in out

        restored = await start_server(data, port=port, redis_url=redis_url)
        try:
            await continues(restored, alice, client, graph, session.session_id)
            found = await restored.storage.get_user_by_name("bob")
            assert found is not None
            bobs = json.loads((await restored.storage.read_graph(found.id)).json)
        finally:
            await restored.stop()
    # Each user's graph is one state of it, taken while bob wrote: a prefix of his writes, every
    # relation with its entities.
    during = [e["name"] for e in bobs["entities"]]
    assert 0 < len(during) <= written and during == [f"during-{i:05d}" for i in range(len(during))]
    assert len(bobs["relations"]) in (len(during) - 1, len(during) - 2)
    assert all(r["to"] in during for r in bobs["relations"])

    refused = run("restore", "--from", str(saved), "--redis-url", redis_url, "--replace")
    assert refused.returncode == 1 and "already holds memory-mcp data" in refused.stderr, refused.stderr
    # The same directory restores a SQLite deployment too: one backup format.
    into_sqlite = run("restore", "--from", str(saved), "--data-dir", str(tmp_path / "sqlite"))
    assert into_sqlite.returncode == 0, into_sqlite.stderr


async def test_migrate_refuses_what_it_cannot_do_and_never_prints_the_password(tmp_path: Path,
                                                                                redis_url: str) -> None:
    data = tmp_path / "data"
    nothing = run("migrate", "--to", redis_url, "--data-dir", str(data))
    assert nothing.returncode == 1 and "no database to migrate" in nothing.stderr, nothing.stderr
    assert run("users", "add", "alice", "--password-stdin", "--data-dir", str(data), stdin=PASSWORD + "\n"
               ).returncode == 0

    secret = "s3cret-Pa55word"
    for command in (["migrate", "--to", f"redis://:{secret}@127.0.0.1:1/0", "--data-dir", str(data)],
                    ["backup", "--to", str(tmp_path / "b"), "--redis-url", f"redis://:{secret}@127.0.0.1:1/0"]):
        down = run(*command)
        assert down.returncode == 1, down.stderr
        assert "cannot use Redis at redis://:***@127.0.0.1:1/0" in down.stderr, down.stderr
        assert secret not in down.stdout + down.stderr
    assert not (tmp_path / "b").exists(), "a failed backup leaves nothing that looks like one"
    bad = run("migrate", "--to", f"http://:{secret}@example/", "--data-dir", str(data))
    assert bad.returncode == 2 and "redis://" in bad.stderr and secret not in bad.stderr, bad.stderr
    both = run("migrate", "--to", redis_url, "--data-dir", str(data), env={"MEMORY_MCP_REDIS_URL": redis_url})
    assert both.returncode == 1 and "unset it" in both.stderr, both.stderr

    sock = free_socket()
    sock_port = sock.getsockname()[1]
    sock.close()
    serving = Process(data, sock_port)
    await serving.start()
    try:
        busy = run("migrate", "--to", redis_url, "--data-dir", str(data))
        assert busy.returncode == 1 and "server is running" in busy.stderr, busy.stderr
    finally:
        serving.stop()
    done = run("migrate", "--to", redis_url, "--data-dir", str(data))
    assert done.returncode == 0 and "1 accounts" in done.stdout, done.stderr

"""`memory-mcp backup` and `memory-mcp restore` (server/backup.py), with a real server process and
a real MCP client: a backup taken while the client writes is one consistent snapshot, a restore
refuses while a server runs, and after a restore the client goes on with the tokens it had (no new
login) and finds the memory as it was when the backup was taken."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from mcp.types import TextContent

from tests.conftest import OAuthUser, free_socket
from tests.test_cli import CLI, Process, run

PASSWORD = "alice-password-1"


async def run_async(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*CLI, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def names(text: str) -> set[str]:
    return {entity["name"] for entity in json.loads(text)["entities"]}


async def test_a_backup_taken_under_writes_restores_memory_and_logins(tmp_path: Path) -> None:
    data, saved = tmp_path / "data", tmp_path / "backup"
    assert run("users", "add", "alice", "--password-stdin", "--data-dir", str(data), stdin=PASSWORD + "\n"
               ).returncode == 0
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    server = Process(data, port)
    await server.start()
    user = OAuthUser(server.url, "alice", PASSWORD)
    try:
        async with user.client() as (client, _):
            await client.call_tool("create_entities", {"entities": [{"name": "before", "entityType": "t",
                                                                     "observations": []}]})
            written = 0

            async def writer() -> None:
                nonlocal written
                while True:
                    await client.call_tool("create_entities", {"entities": [
                        {"name": f"during-{written:05d}", "entityType": "t", "observations": ["x" * 200]}]})
                    written += 1

            task = asyncio.create_task(writer())
            await asyncio.sleep(0.3)
            code, out = await run_async("backup", "--to", str(saved), "--data-dir", str(data))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert code == 0, out
            assert "backed up" in out and "1 account(s)" in out
            await client.call_tool("create_entities", {"entities": [{"name": "after", "entityType": "t",
                                                                     "observations": []}]})
        for name in ("memory.sqlite3", "session.key"):
            assert stat.S_IMODE((saved / name).stat().st_mode) == 0o600
        assert stat.S_IMODE(saved.stat().st_mode) == 0o700

        refused = run("restore", "--from", str(saved), "--data-dir", str(data))
        assert refused.returncode == 1 and "server is running" in refused.stderr, refused.stderr
    finally:
        server.stop()

    kept = run("restore", "--from", str(saved), "--data-dir", str(data))
    assert kept.returncode == 1 and "--replace" in kept.stderr, kept.stderr
    restored = run("restore", "--from", str(saved), "--data-dir", str(data), "--replace")
    assert restored.returncode == 0, restored.stderr
    aside = [p for p in data.iterdir() if p.name.startswith("before-restore-")]
    assert len(aside) == 1 and (aside[0] / "memory.sqlite3").exists()

    await server.start()
    try:
        logins = len(user.redirects)
        async with user.client() as (client, _):
            result = await client.call_tool("read_graph", {})
        assert len(user.redirects) == logins, "the restored server must accept the tokens the client had"
    finally:
        server.stop()
    text = result.content[0]
    assert isinstance(text, TextContent)
    found = names(text.text)
    assert "before" in found and "after" not in found
    during = sorted(n for n in found if n.startswith("during-"))
    # One snapshot of sequential writes: a prefix of them, with nothing missing in between.
    assert during == [f"during-{i:05d}" for i in range(len(during))]
    assert 0 < len(during) <= written


def test_backup_and_restore_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    nothing = run("backup", "--to", str(tmp_path / "b"), "--data-dir", str(data))
    assert nothing.returncode == 1 and "no database to back up" in nothing.stderr
    assert run("users", "add", "bob", "--password-stdin", "--data-dir", str(data), stdin="bob-password-22\n"
               ).returncode == 0
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert "not empty" in run("backup", "--to", str(full), "--data-dir", str(data)).stderr
    assert "not a memory-mcp backup" in run("restore", "--from", str(full), "--data-dir", str(data)).stderr
    redis = run("backup", "--to", str(tmp_path / "r"), "--data-dir", str(data),
                env={"MEMORY_MCP_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert redis.returncode == 1 and "cannot use Redis at redis://127.0.0.1:1/0" in redis.stderr, redis.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "memory.sqlite3").write_bytes(os.urandom(4096))
    (broken / "session.key").write_bytes(os.urandom(32))
    damaged = run("restore", "--from", str(broken), "--data-dir", str(tmp_path / "empty"))
    assert damaged.returncode == 1 and "not a memory-mcp database" in damaged.stderr, damaged.stderr

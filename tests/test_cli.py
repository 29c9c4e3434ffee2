"""The command line as a new user meets it: real processes, real files."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import OAuthUser, free_socket
from tests.test_end_to_end import structured

CLI = [sys.executable, "-m", "server"]


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_users_lifecycle(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    added = run("users", "add", "alice", "--password-stdin", "--data-dir", data, stdin="a long password\n")
    assert added.returncode == 0, added.stderr
    assert "a long password" not in added.stdout + added.stderr

    again = run("users", "add", "alice", "--password-stdin", "--data-dir", data, stdin="another password\n")
    assert again.returncode == 1 and "alice" in again.stderr and "exist" in again.stderr

    short = run("users", "add", "bob", "--password-stdin", "--data-dir", data, stdin="short\n")
    assert short.returncode == 1 and "8" in short.stderr
    bad_name = run("users", "add", "bob smith", "--password-stdin", "--data-dir", data, stdin="long enough pw\n")
    assert bad_name.returncode == 1 and "username" in bad_name.stderr.lower()

    assert run("users", "list", "--data-dir", data).stdout.split() == ["alice"]
    assert run("users", "list", env={"MEMORY_MCP_DATA_DIR": data}).stdout.split() == ["alice"]
    assert run("users", "passwd", "alice", "--password-stdin", "--data-dir", data,
               stdin="a new long password\n").returncode == 0
    assert run("users", "passwd", "carol", "--password-stdin", "--data-dir", data,
               stdin="a new long password\n").returncode == 1
    removed = run("users", "remove", "alice", "--data-dir", data)
    assert removed.returncode == 0, removed.stderr
    assert run("users", "list", "--data-dir", data).stdout.split() == []
    assert oct((tmp_path / "data" / "memory.sqlite3").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("args,env,needle", [
    (["--public-url", "ftp://example.com"], {}, "public_url='ftp://example.com' (from flag --public-url)"),
    (["--public-url", "https://example.com/mcp"], {}, "origin only"),
    (["--port", "99999"], {}, "port='99999' (from flag --port)"),
    ([], {"MEMORY_MCP_ACCESS_TOKEN_TTL": "60"}, "environment variable MEMORY_MCP_ACCESS_TOKEN_TTL"),
    (["--host", "0.0.0.0"], {}, "set public_url"),
    (["--config", "/nonexistent.toml"], {}, "cannot read config file"),
    (["--memory-max-bytes", "-1"], {}, "memory_max_bytes='-1' (from flag --memory-max-bytes)"),
    ([], {"MEMORY_MCP_MEMORY_MAX_ENTITIES": "lots"}, "memory_max_entities='lots' (from environment variable"),
])
def test_bad_configuration_is_explained(tmp_path: Path, args: list[str], env: dict[str, str], needle: str) -> None:
    result = run("serve", "--data-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2
    assert needle in result.stderr, result.stderr


class Process:
    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port = data, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([*CLI, "serve", "--port", str(self.port), "--data-dir", str(self.data)],
                                     stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        async with httpx2.AsyncClient() as http:
            for _ in range(100):
                try:
                    if (await http.get(self.url + "/healthz")).status_code == 200:
                        return
                except httpx2.TransportError:
                    await asyncio.sleep(0.1)
        raise AssertionError("server did not start")

    def stop(self) -> tuple[float, str]:
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return time.monotonic() - began, err


@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[Process]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = Process(tmp_path / "data", port)
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()


async def test_serve_as_a_new_user_would(process: Process) -> None:
    await process.start()
    _, err = process.stop()
    assert "memory-mcp users add" in err  # no users yet: it says how to add one

    assert run("users", "add", "alice", "--password-stdin", "--data-dir", str(process.data),
               stdin="alice-password-1\n").returncode == 0
    await process.start()
    alice = OAuthUser(process.url, "alice", "alice-password-1")
    async with alice.client() as (client, _):
        await client.call_tool("create_entities", {"entities": [{"name": "kept", "entityType": "t",
                                                                 "observations": ["across restarts"]}]})
        assert alice.storage.tokens is not None
        auth = {"Authorization": f"Bearer {alice.storage.tokens.access_token}"}
        async with httpx2.AsyncClient(timeout=10) as http, http.stream("GET", process.url + "/sse",
                                                                       headers=auth) as stream:
            # SIGTERM with a live session and an open stream: the stream closes at once, every
            # session ends, and the process exits promptly.
            assert stream.status_code == 200
            stopping = asyncio.get_running_loop().run_in_executor(None, process.stop)
            began = time.monotonic()
            async for _ in stream.aiter_bytes():
                pass
            closed_after = time.monotonic() - began
            elapsed, err = await stopping
    assert closed_after < 2.0, f"the open stream closed {closed_after:.1f}s after SIGTERM"
    assert elapsed < 3.0, f"shutdown took {elapsed:.1f}s"
    assert "Traceback" not in err, err
    assert alice.storage.tokens is not None
    assert alice.storage.tokens.access_token not in err
    assert alice.storage.tokens.refresh_token and alice.storage.tokens.refresh_token not in err

    await process.start()
    async with alice.client() as (client, _):
        graph = structured(await client.call_tool("read_graph", {}))
    assert [e["name"] for e in graph["entities"]] == ["kept"]
    assert len(alice.redirects) == 1
    process.stop()


async def test_log_never_holds_what_a_client_put_in_a_url_or_an_oversized_header(process: Process) -> None:
    """Requests anyone can send: a query string carrying a token-like value, a header and a
    request line over aiohttp's 8190-byte limit, a line that is not HTTP. Each is answered, and
    logged as one line without the value it carried, and without a traceback."""
    secrets = ("qs-secret-0123456789", "header-secret-0123456789", "line-secret-0123456789")
    await process.start()
    async with httpx2.AsyncClient() as http:
        answered = await http.get(f"{process.url}/mcp?access_token={secrets[0]}")
        assert answered.status_code == 401
    replies = []
    for raw in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secrets[1].encode() + b"a" * 9000
                + b"\r\n\r\n",
                b"GET /" + secrets[2].encode() + b"b" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"\x16\x03\x01 not http at all\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
        writer.write(raw)
        await writer.drain()
        replies.append(await reader.read(200))
        writer.close()
    assert all(reply.startswith(b"HTTP/1.") and b" 400 " in reply[:20] for reply in replies), replies
    _, err = process.stop()
    assert "Traceback" not in err, err
    for secret in secrets:
        assert secret not in err, err
    assert '"GET /mcp?… HTTP/1.1" 401' in err
    assert err.count("refused a request from 127.0.0.1: a request line or header over the size limit") == 2, err
    # Not HTTP at all (TLS to a plain port, a scanner): aiohttp logs that at debug level only.
    assert err.count('"UNKNOWN / HTTP/1.0" 400') == 3, err

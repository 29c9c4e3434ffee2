"""Slow and stalled clients over real sockets: request bodies and headers have deadlines, the
connections one can hold are bounded, and a dropped connection is one short log line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.limits import CONNECTIONS
from tests.conftest import RunningServer, access_token, free_socket, start_server

# The deadlines under test, short so that the tests do not wait long for the server to act. What
# is asserted is that the server ends the exchange, never how fast: each wait is bounded by
# `PATIENCE`, far above the deadlines, only so that a server that never acts fails instead of
# hanging the suite.
BODY_TIMEOUT = 1.0
HEADER_TIMEOUT = 2.0
PATIENCE = 60.0

ENDPOINTS = [
    ("/token", "application/x-www-form-urlencoded"),
    ("/revoke", "application/x-www-form-urlencoded"),
    ("/register", "application/json"),
    ("/login", "application/x-www-form-urlencoded"),
    ("/consent", "application/x-www-form-urlencoded"),
    ("/logout", "application/x-www-form-urlencoded"),
    ("/consents", "application/x-www-form-urlencoded"),
    # Answered from the headers (no token) without waiting for the body; the connection must
    # still end rather than wait for it.
    ("/userinfo", "application/x-www-form-urlencoded"),
    ("/mcp", "application/json"),
    ("/messages/", "application/json"),
]


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[RunningServer]:
    from auth import accounts

    running = await start_server(data_dir, body_read_timeout=BODY_TIMEOUT, header_read_timeout=HEADER_TIMEOUT)
    await accounts.add_user(running.storage, "alice", "alice-password-1")
    yield running
    await running.stop()


def port_of(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def exchange(server: RunningServer, data: bytes) -> bytes:
    """Send `data`, then nothing more; everything the server says until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()


def stalled_post(path: str, content_type: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Accept: application/json, text/event-stream\r\n{auth}Content-Length: 1000\r\n\r\n{{\"a").encode()


@pytest.mark.parametrize(("path", "content_type"), ENDPOINTS)
async def test_stalled_body_is_cut_off(server: RunningServer, path: str, content_type: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    # With a token, so that the MCP endpoints get as far as reading the body.
    token = await access_token(server, "alice", "alice-password-1") if path.startswith(("/mcp", "/messages")) else None
    stream = None
    if path == "/messages/":
        # A live legacy SSE session to post to: its endpoint event names the path.
        stream = await asyncio.open_connection("127.0.0.1", port_of(server))
        stream[1].write(f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                        f"Authorization: Bearer {token}\r\n\r\n".encode())
        while not (line := await asyncio.wait_for(stream[0].readline(), PATIENCE)).startswith(b"data: /messages"):
            assert line, "the SSE stream ended before its endpoint event"
        path = line.removeprefix(b"data: ").strip().decode()
    caplog.set_level(logging.DEBUG)
    try:
        answer = await exchange(server, stalled_post(path, content_type, token))
    finally:
        if stream is not None:
            stream[1].close()
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status == (401 if path == "/userinfo" else 408), answer[:200]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
    dropped = [r for r in caplog.records if "dropped a request" in r.getMessage()]
    assert len(dropped) <= 1 and all("\n" not in r.getMessage() for r in dropped)


async def test_body_sent_slowly_but_steadily_is_still_bounded(server: RunningServer) -> None:
    """A trickle resets no timer: the deadline is for the whole body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    try:
        writer.write(stalled_post("/token", "application/x-www-form-urlencoded"))
        answer = b""
        for _ in range(int(PATIENCE * 10)):
            try:
                answer = await asyncio.wait_for(reader.read(), 0.1)
                break
            except TimeoutError:
                writer.write(b"a")  # one byte every tenth of a second
                await writer.drain()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        writer.close()


async def test_aborted_upload_is_one_line_without_traceback(server: RunningServer,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(stalled_post("/register", "application/json"))
    await writer.drain()
    await asyncio.sleep(0.2)  # not a timing assert: lets the server start reading before the abort
    writer.transport.abort()
    # The server notices at once; the next request on a new connection proves it is still fine.
    answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


async def test_stalled_headers_are_cut_off(server: RunningServer) -> None:
    # `exchange` returns only once the server has closed the connection.
    for partial in (b"", b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"GET /healthz HT"):
        assert await exchange(server, partial) == b""


async def test_connections_beyond_the_limit_do_not_stop_a_normal_request(data_dir: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    limit = 20
    server = await start_server(data_dir, max_connections=limit, header_read_timeout=PATIENCE * 10,
                                body_read_timeout=PATIENCE * 10)
    caplog.set_level(logging.INFO)
    held = []
    try:
        # Stalled connections, twice the limit: half of them with a body that never comes (busy
        # with a request), the rest with headers that never end.
        for i in range(2 * limit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(stalled_post("/token", "application/x-www-form-urlencoded") if i < limit // 2
                         else b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            held.append((reader, writer))
        for _ in range(3):
            answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer
        # The ones held with a request in progress are untouched.
        assert all(not reader.at_eof() for reader, _ in held[:limit // 2])
        assert len([r for r in caplog.records if r.exc_info]) == 0
    finally:
        for _, writer in held:
            writer.close()
        await server.stop()


async def test_busy_connections_at_the_limit_refuse_new_ones_quickly(data_dir: Path) -> None:
    limit = 5
    server = await start_server(data_dir, max_connections=limit, header_read_timeout=PATIENCE * 10,
                                body_read_timeout=PATIENCE * 10)
    held = []
    try:
        for _ in range(limit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(stalled_post("/token", "application/x-www-form-urlencoded"))
            await writer.drain()
            held.append((reader, writer))
        connections = server.app[CONNECTIONS]
        while connections.busy_count < limit:  # the server has read every one's headers
            await asyncio.sleep(0.01)
        answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer
        for _, writer in held:
            writer.close()
        for _ in range(int(PATIENCE * 10)):  # the server notices the closes; then it serves again
            answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if answer.startswith(b"HTTP/1.1 200"):
                break
            await asyncio.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        await server.stop()


def _few_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


OPEN_FILES = 256


async def test_stalled_connections_cannot_exhaust_file_descriptors(tmp_path: Path) -> None:
    """`memory-mcp serve` with 256 open files and no max_connections set: twice that many
    stalled connections, then a normal request is still answered, and the log holds no traceback."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "data")], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=_few_open_files)
    held = []
    try:
        async def healthz() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return await asyncio.wait_for(reader.read(), PATIENCE)
            finally:
                writer.close()

        for _ in range(100):
            with contextlib.suppress(OSError):
                if (await healthz()).startswith(b"HTTP/1.1 200"):
                    break
            await asyncio.sleep(0.1)
        for _ in range(2 * OPEN_FILES):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /token HTTP/1.1\r\nHost: x\r\n")
            held.append(writer)
        answer = await healthz()
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        for writer in held:
            writer.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and "ERROR" not in err, err[-3000:]


def test_max_connections_beyond_the_open_files_limit_is_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "server", "serve", "--max-connections", "1000", "--data-dir",
                             str(tmp_path / "data")], capture_output=True, text=True, timeout=60,
                            preexec_fn=_few_open_files)
    assert result.returncode == 2
    assert (f"max_connections=1000 needs about 1128 open files, but the limit is {OPEN_FILES}: raise it "
            "(ulimit -n) or lower max_connections") in result.stderr, result.stderr

"""The command line as a new user meets it: real processes, real files."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.conftest import OAuthUser, free_socket
from tests.test_end_to_end import structured
from tests.test_mcp_http import ACCEPT, INIT

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
    (["--memory-max-result-bytes", "100"], {}, "memory_max_result_bytes='100' (from flag --memory-max-result-bytes): "
     "must be 0 (no cap) or at least 4096 bytes"),
    ([], {"MEMORY_MCP_MEMORY_MAX_ENTITIES": "lots"}, "memory_max_entities='lots' (from environment variable"),
    (["--redis-url", "http://:s3cret-pw@cache:6379/0"], {}, "redis_url (from flag --redis-url): must start with "
     "redis://, rediss:// or unix://"),
    ([], {"MEMORY_MCP_REDIS_URL": "redis://:s3cret-pw@cache:6379/zero"}, "the path must be a database number"),
    (["--redis-url", "redis://:s3cret-pw@cache:port/0"], {}, "redis_url (from flag --redis-url): is not a valid URL"),
    (["--redis-url", "redis://:s3cret-pw@cache:6379/0\r\nX"], {}, "whitespace or control characters"),
    (["--redis-url", "unix://"], {}, "needs the socket's path"),
])
def test_bad_configuration_is_explained(tmp_path: Path, args: list[str], env: dict[str, str], needle: str) -> None:
    result = run("serve", "--data-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2
    assert needle in result.stderr, result.stderr
    # A Redis URL may carry its password: an error names the setting, never the value.
    assert "s3cret-pw" not in result.stderr


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
    assert "users add <name>" in err  # no users yet: it says how to add one

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


# --- A newcomer's first steps, and what an operator meets (issue 10, defects 11 and 14). ---

# Root passes every permission check, so as root the commands run without the capabilities that
# bypass file permissions (setpriv, util-linux): then a chmod'd directory means what it says.
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def run_unprivileged(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UNPRIVILEGED, *CLI, *args], input=stdin, capture_output=True, text=True, timeout=60)


def _read_only_dir(data: Path) -> Path:
    data.chmod(0o555)
    return data


def _with_data(data: Path) -> None:
    assert run("users", "add", "alice", "--password-stdin", "--data-dir", str(data),
               stdin="alice-password-1\n").returncode == 0


def _setup_case(case: str, tmp_path: Path) -> tuple[Path, str]:
    """A data directory this process cannot use, and the path the message must name."""
    data = tmp_path / "data"
    if case == "data_dir is a file":
        data.write_text("not a directory")
        return data, str(data)
    if case == "read-only, empty":
        data.mkdir()
        return _read_only_dir(data), str(data)
    if case == "no access at all":
        data.mkdir(mode=0o000)
        return data, str(data)
    if case == "parent read-only":
        tmp_path.joinpath("parent").mkdir(mode=0o555)
        return tmp_path / "parent" / "data", str(tmp_path / "parent" / "data")
    if case == "parent not searchable":
        tmp_path.joinpath("parent").mkdir(mode=0o000)
        return tmp_path / "parent" / "data", str(tmp_path / "parent" / "data")
    _with_data(data)
    if case == "read-only, with data":
        return _read_only_dir(data), str(data)
    if case == "database file read-only":
        (data / "memory.sqlite3").chmod(0o444)
        return data, str(data / "memory.sqlite3")
    if case == "key file unreadable":
        (data / "session.key").chmod(0o000)
        return data, str(data / "session.key")
    if case == "database is not a database":
        for name in ("memory.sqlite3", "memory.sqlite3-wal", "memory.sqlite3-shm"):
            (data / name).unlink(missing_ok=True)
        (data / "memory.sqlite3").write_bytes(b"this is not SQLite" * 100)
        return data, str(data / "memory.sqlite3")
    raise AssertionError(case)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], path: str) -> None:
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memory-mcp: ") and path in lines[0], lines
    assert "--data-dir" in lines[0] or "backup" in lines[0], lines


CASES = ["data_dir is a file", "read-only, empty", "no access at all", "parent read-only", "parent not searchable",
         "read-only, with data",
         "database file read-only", "key file unreadable", "database is not a database"]
COMMANDS = [["serve", "--port", "0"], ["users", "add", "bob", "--password-stdin"], ["users", "passwd", "alice"],
            ["users", "remove", "alice"], ["users", "list"], ["clients", "list"], ["clients", "remove", "c"],
            ["sessions", "list"], ["sessions", "revoke", "--user", "alice"], ["keys", "rotate"],
            ["tokens", "revoke", "--user", "alice"]]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", [COMMANDS[0], COMMANDS[4]], ids=["serve", "users list"])
def test_an_unusable_data_directory_is_one_clear_line(tmp_path: Path, case: str, command: list[str]) -> None:
    data, path = _setup_case(case, tmp_path)
    assert_one_clear_line(run_unprivileged(*command, "--data-dir", str(data), stdin="bob-password-1\n"), path)


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_every_command_explains_a_read_only_data_directory(tmp_path: Path, command: list[str]) -> None:
    data, path = _setup_case("read-only, with data", tmp_path)
    assert_one_clear_line(run_unprivileged(*command, "--data-dir", str(data), stdin="bob-password-1\n"), path)


def test_version_comes_from_the_package() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"memory-mcp {importlib.metadata.version('memory-mcp')}"


@pytest.mark.parametrize("flag", [["--password-stdin"], []], ids=["--password-stdin", "no flag"])
def test_a_password_at_a_terminal_is_prompted_for_and_never_echoed(tmp_path: Path, flag: list[str]) -> None:
    password = "terminal-password-7"
    main, secondary = os.openpty()
    # A new session: no controlling terminal but this pty on stdin, as in a fresh ssh login.
    proc = subprocess.Popen([*CLI, "users", "add", "alice", *flag, "--data-dir", str(tmp_path / "data")],
                            stdin=secondary, stdout=secondary, stderr=secondary, start_new_session=True)
    os.close(secondary)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while marker not in seen:
            # poll, not select: select() cannot watch a descriptor numbered 1024 or more.
            poller = select.poll()
            poller.register(main, select.POLLIN)
            ready = poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            assert ready, f"no {marker!r} on the terminal; it shows {seen!r}"
            try:
                chunk = os.read(main, 1024)
            except OSError:  # the process ended and closed the terminal
                chunk = b""
            assert chunk, f"no {marker!r} on the terminal; it shows {seen!r}"
            seen += chunk

    try:
        read_until(b"Password:")
        os.write(main, password.encode() + b"\n")
        read_until(b"Repeat password:")
        os.write(main, password.encode() + b"\n")
        read_until(b"added user alice")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert password.encode() not in seen, seen
    assert run("users", "passwd", "alice", "--password-stdin", "--data-dir", str(tmp_path / "data"),
               stdin="another-password-8\n").returncode == 0


class Serving:
    """`memory-mcp serve` as a user starts it, its log in a file (nothing can block on a full pipe)."""

    def __init__(self, tmp_path: Path, *args: str, command: Sequence[str] = CLI,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen([*command, "serve", *args], stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})}, cwd=cwd)
        self.url = ""

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    async def started(self) -> str:
        """The issuer the server says it serves, once it answers there."""
        for _ in range(300):
            found = re.search(r"serving MCP at (\S+)/mcp", self.log)
            if found:
                self.url = found.group(1)
                async with httpx2.AsyncClient() as http:
                    try:
                        if (await http.get(self.url + "/healthz")).status_code == 200:
                            return self.url
                    except httpx2.TransportError:
                        pass
            assert self.proc.poll() is None, self.log
            await asyncio.sleep(0.1)
        raise AssertionError(f"server did not start: {self.log}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.log


async def test_the_first_run_hint_can_be_run_as_printed(tmp_path: Path) -> None:
    """After the quick start `memory-mcp` is `.venv/bin/memory-mcp`, not on PATH: the hint must
    name the program as it can be run, from any directory."""
    script = Path(sys.executable).parent / "memory-mcp"
    assert script.exists(), "the project is installed with its console script"
    data = tmp_path / "my data"
    path = "/usr/local/bin:/usr/bin:/bin"
    # Started by a relative path, as the quick start does.
    serving = Serving(tmp_path, "--port", "0", "--data-dir", str(data), command=[os.path.relpath(script, tmp_path)],
                      env={"PATH": path}, cwd=tmp_path)
    try:
        await serving.started()
    finally:
        log = serving.stop()
    hint = next(line.strip() for line in log.splitlines() if "users add <name>" in line)
    added = subprocess.run(["/bin/sh", "-c", hint.replace("<name>", "alice")], input="alice-password-1\n",
                           capture_output=True, text=True, timeout=60, cwd="/", env={**os.environ, "PATH": path})
    assert added.returncode == 0, (hint, added.stderr)
    assert run("users", "list", "--data-dir", str(data)).stdout.split() == ["alice"]


async def test_port_0_advertises_the_port_it_listens_on(tmp_path: Path) -> None:
    serving = Serving(tmp_path, "--port", "0", "--data-dir", str(tmp_path / "data"))
    try:
        url = await serving.started()
        port = int(url.rsplit(":", 1)[1])
        assert port != 0
        async with httpx2.AsyncClient() as http:
            metadata = (await http.get(url + "/.well-known/oauth-authorization-server")).json()
            resource = (await http.get(url + "/.well-known/oauth-protected-resource/mcp")).json()
        assert metadata["issuer"] == f"http://127.0.0.1:{port}"
        assert metadata["token_endpoint"] == f"http://127.0.0.1:{port}/token"
        assert resource["resource"] == f"http://127.0.0.1:{port}/mcp"
    finally:
        serving.stop()


def test_a_busy_port_is_one_line_and_never_says_serving(tmp_path: Path) -> None:
    busy = free_socket()
    busy.listen()
    try:
        port = busy.getsockname()[1]
        result = run("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    finally:
        busy.close()
    assert result.returncode == 1
    assert "serving" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "--port" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["serve"], ["users", "list"]])
def test_a_misspelled_environment_variable_is_refused(tmp_path: Path, command: list[str]) -> None:
    result = run(*command, "--data-dir", str(tmp_path), env={"MEMORY_MCP_ACESS_TOKEN_TTL": "secret-looking-value"})
    assert result.returncode == 2
    assert "MEMORY_MCP_ACESS_TOKEN_TTL" in result.stderr and "'access_token_ttl'" in result.stderr, result.stderr
    assert "secret-looking-value" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_misspelled_config_key_is_refused_the_same_way(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('acess_token_ttl = 7200\n')
    result = run("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "acess_token_ttl" in result.stderr and "'access_token_ttl'" in result.stderr, result.stderr


async def test_debug_logs_hold_no_memory_content(tmp_path: Path) -> None:
    """At --log-level debug our own loggers speak, but the SDK's and other libraries' loggers,
    which log whole messages at DEBUG, stay at INFO."""
    data = tmp_path / "data"
    _with_data(data)
    secret = "observation-that-must-stay-private-4711"
    serving = Serving(tmp_path, "--port", "0", "--data-dir", str(data), "--log-level", "debug")
    try:
        url = await serving.started()
        alice = OAuthUser(url, "alice", "alice-password-1")
        entity = {"entities": [{"name": "private", "entityType": "t", "observations": [secret]}]}
        async with Client(sse_client(url + "/sse", auth=alice.provider("/sse")), mode="legacy") as client:
            await client.call_tool("create_entities", entity)
            await client.call_tool("read_graph", {})
        async with alice.client() as (client, _):
            await client.call_tool("add_observations", {"observations": [{"entityName": "private",
                                                                          "contents": [secret + "-2"]}]})
            await client.call_tool("read_graph", {})
    finally:
        log = serving.stop()
    assert "DEBUG server." in log, "debug logging is on for our own loggers"
    assert secret not in log, [line for line in log.splitlines() if secret in line][:3]


async def test_sigterm_lets_a_write_in_flight_send_its_response(tmp_path: Path) -> None:
    """A write committed as SIGTERM arrives still gets its whole response, though the client
    reads it slowly: in-flight requests get the shutdown window (`shutdown_timeout`) to finish,
    and only then are connections closed."""
    data = tmp_path / "data"
    _with_data(data)
    serving = Serving(tmp_path, "--port", "0", "--data-dir", str(data))
    try:
        url = await serving.started()
        alice = OAuthUser(url, "alice", "alice-password-1")
        async with alice.client() as (client, _):
            await client.list_tools()
        assert alice.storage.tokens is not None
        token = alice.storage.tokens.access_token
        async with httpx2.AsyncClient() as http:
            init = await http.post(url + "/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {token}"})
            headers = {**ACCEPT, "Authorization": f"Bearer {token}", "Mcp-Session-Id": init.headers["mcp-session-id"],
                       "MCP-Protocol-Version": "2025-06-18"}
            await http.post(url + "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                            headers=headers)
        # The response echoes the entities twice (text and structuredContent): about 7 MB, more
        # than the socket buffers hold, so the handler is still writing it when SIGTERM comes.
        entities = [{"name": f"late-{i}", "entityType": "t", "observations": [f"{i}-{j}-" + "x" * 1000
                                                                             for j in range(5)]} for i in range(600)]
        body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "create_entities", "arguments": {"entities": entities}}}).encode()
        port = int(url.rsplit(":", 1)[1])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}Content-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        status = await reader.readuntil(b"\r\n")  # the write is committed; its response is on the way
        serving.proc.send_signal(signal.SIGTERM)
        # Read nothing for longer than aiohttp's default window (2 x 2 s: wait, then cancel and wait).
        await asyncio.sleep(5)
        response = status + await asyncio.wait_for(reader.read(), 60)
        writer.close()
        await asyncio.to_thread(serving.proc.wait, 60)
    finally:
        log = serving.stop()
    assert serving.proc.returncode == 0, log
    assert response.startswith(b"HTTP/1.1 200"), (response[:200], log)
    answer = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert answer["id"] == 7 and len(answer["result"]["structuredContent"]["entities"]) == 600
    assert "Traceback" not in log, log

"""Real MCP clients from the Node ecosystem against memory-mcp, each signing in the way it does for
a person: mcp-remote (the stdio bridge Claude Desktop, Cursor and others launch) over Streamable
HTTP and over HTTP+SSE, the MCP Inspector CLI, the TypeScript SDK's own client, and the MCP
conformance suite's server scenarios.

The clients are pinned in tests/interop/node/package-lock.json and installed by
tests/interop/node/install.sh; when they are missing these tests fail rather than skip, so a CI
that forgot the install step shows red. The person at the browser is tests/browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from auth import accounts
from server import admin
from server.app import SETTINGS, build_app
from server.config import Settings
from server.memory.graph import Entity
from server.storage import Storage
from server.storage.sqlite import SQLiteStorage
from tests.browser import Browser
from tests.conftest import RunningServer, free_socket, on_both_backends, start_server, tokens_by_hand
from tests.interop.bearer_proxy import BearerProxy
from tests.interop.conformance_fixture import ERROR_TEXT, LOG_MESSAGES, RECONNECTION_TEXT, SIMPLE_TEXT, Fixture
from tests.interop.conformance_fixture import TOOLS as FIXTURE_TOOLS
from tests.test_end_to_end import TOOL_NAMES
from transports.registry import SSE_RETRY_MILLISECONDS

NODE_DIR = Path(__file__).parent / "interop" / "node"
BIN = NODE_DIR / "node_modules" / ".bin"
TS_SDK_CLIENT = NODE_DIR / "ts_sdk_client.mjs"
PASSWORD = "alice-password-1"
# One bound for any single wait on a client: generous for a loaded CI machine, far below pytest's patience.
STEP = 60.0


def installed(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"{path} is missing: run tests/interop/node/install.sh (CI must run it before pytest)")
    return str(path)


def tool(name: str) -> list[str]:
    """The command that runs a pinned Node tool with the pinned Node 22 binary (the Inspector and
    the conformance suite need Node >= 22; the machine's node may be older)."""
    return [installed(BIN / "node"), installed(BIN / name)]


def client_env(home: Path) -> dict[str, str]:
    """The environment of a person's desktop, minus the desktop: a browser that opens nothing
    (xdg-open honours BROWSER when there is no display), and a private home for client state."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "NODE_OPTIONS")}
    env.update(HOME=str(home), BROWSER="true", NO_COLOR="1", MCP_REMOTE_CONFIG_DIR=str(home / "mcp-auth"))
    return env


@contextlib.asynccontextmanager
async def spawn(cmd: list[str], env: dict[str, str], *,
                stdin: bool = False) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child in its own process group, so whatever it starts (a browser opener) ends with it."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, start_new_session=True, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
                break


async def run(cmd: list[str], env: dict[str, str], timeout: float = STEP) -> tuple[int, str, str]:
    async with spawn(cmd, env) as proc:
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            pytest.fail(f"{' '.join(cmd[1:3])} did not finish within {timeout}s")
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


def structured(result: dict[str, Any]) -> Any:
    """A tool result as the wire carries it: no error, text and structured content agree."""
    assert result.get("isError") is not True, result
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    return result["structuredContent"]


async def alice_graph(storage: Storage) -> dict[str, Any]:
    """Alice's memory read straight from storage, independent of any client."""
    user = await storage.get_user_by_name("alice")
    assert user is not None
    return (await storage.read_graph(user.id)).model().model_dump(by_alias=True)


async def click_through(authorize_url: str, origin: str) -> str:
    """The person: log in as alice, approve, and return where the browser was sent."""
    browser = Browser("alice", PASSWORD)
    try:
        return (await browser.authorize(authorize_url, origin)).url
    finally:
        await browser.close()


# --- memory-mcp started from its command line, as a user runs it ---------------------------------


@dataclass
class CliServer:
    tmp: Path
    port: int = 0
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def log(self) -> Path:
        return self.tmp / "server.log"

    @staticmethod
    def command() -> list[str]:
        script = Path(sys.executable).with_name("memory-mcp")
        # The console script exists once the project is pip-installed (scripts/test does); the module
        # is the same entry point for a checkout that was not.
        return [str(script)] if script.exists() else [sys.executable, "-m", "server"]

    async def start(self) -> None:
        add = await asyncio.create_subprocess_exec(
            *self.command(), "users", "add", "alice", "--password-stdin", "--data-dir", str(self.data_dir),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(add.communicate(PASSWORD.encode() + b"\n"), STEP)
        assert add.returncode == 0, err.decode()
        self.port = free_port()
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command(), "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
                stdout=log, stderr=log)
        async with aiohttp.ClientSession() as http:
            for _ in range(150):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                assert self.proc.returncode is None, self.log.read_text()
                await asyncio.sleep(0.1)
        pytest.fail(f"memory-mcp serve did not become healthy:\n{self.log.read_text()}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def graph(self) -> dict[str, Any]:
        # A second connection to the database file, as `memory-mcp users` opens one beside a server.
        storage = SQLiteStorage(self.data_dir / "memory.sqlite3")
        try:
            return await alice_graph(storage)
        finally:
            await storage.close()


@pytest.fixture
async def cli_server(tmp_path: Path) -> AsyncIterator[CliServer]:
    server = CliServer(tmp_path / "server")
    server.tmp.mkdir()
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


# --- mcp-remote ----------------------------------------------------------------------------------


@dataclass
class Person:
    """Reads a client's terminal (stderr) for the sign-in URL, signs in as alice in the browser,
    and lets the browser load the client's loopback callback, as a person would."""

    origin: str
    lines: list[str] = field(default_factory=list)
    authorize_urls: list[str] = field(default_factory=list)
    callbacks: list[tuple[str, int, str]] = field(default_factory=list)

    async def watch(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            start = line.find(self.origin + "/authorize?")
            if start < 0:
                continue
            url = line[start:].split()[0]
            self.authorize_urls.append(url)
            redirect = await click_through(url, self.origin)
            async with aiohttp.ClientSession() as http, http.get(redirect) as resp:
                self.callbacks.append((redirect, resp.status, await resp.text()))

    def tail(self) -> str:
        return "\n".join(self.lines[-40:])


@dataclass
class StdioPeer:
    """Speaks newline-delimited JSON-RPC to a stdio MCP server (here mcp-remote's local side), as
    Claude Desktop does."""

    proc: asyncio.subprocess.Process
    person: Person
    _next_id: int = 0

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        await self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, **({"params": params} if params
                                                                                      is not None else {})})
        assert self.proc.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), STEP)
            except TimeoutError:
                pytest.fail(f"no answer to {method} within {STEP}s; stderr:\n" + self.person.tail())
            assert line, f"mcp-remote exited before answering {method}; stderr:\n" + self.person.tail()
            message = json.loads(line)
            if message.get("id") == self._next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    async def initialize(self) -> dict[str, Any]:
        result = await self.request("initialize", {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "pytest-as-claude-desktop", "version": "1.0"}})
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    async def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return await asyncio.wait_for(self.proc.wait(), 15)


@contextlib.asynccontextmanager
async def mcp_remote(server_url: str, callback_port: int, home: Path, *flags: str) -> AsyncIterator[StdioPeer]:
    origin = server_url.rsplit("/", 1)[0]
    cmd = [*tool("mcp-remote"), server_url, str(callback_port), *flags]
    async with spawn(cmd, client_env(home), stdin=True) as proc:
        peer = StdioPeer(proc, Person(origin))
        watcher = asyncio.create_task(peer.person.watch(proc.stderr))
        try:
            yield peer
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def free_port() -> int:
    with free_socket() as sock:
        port: int = sock.getsockname()[1]
        return port


async def remember_through_mcp_remote(server: CliServer, tmp_path: Path, callback_port: int, path: str, entity: str,
                                      *flags: str) -> StdioPeer:
    async with mcp_remote(server.url + path, callback_port, tmp_path / "home", *flags) as peer:
        init = await peer.initialize()
        assert init["serverInfo"]["name"] == "memory-mcp"
        assert "tools" in init["capabilities"]
        assert {t["name"] for t in (await peer.request("tools/list"))["tools"]} == TOOL_NAMES
        created = structured(await peer.request("tools/call", {"name": "create_entities", "arguments": {
            "entities": [{"name": entity, "entityType": "test", "observations": ["sent through mcp-remote"]}]}}))
        assert [e["name"] for e in created["entities"]] == [entity]
        graph = structured(await peer.request("tools/call", {"name": "read_graph", "arguments": {}}))
        assert entity in [e["name"] for e in graph["entities"]]
        assert await peer.close() == 0, peer.person.tail()

    # One sign-in: the person saw one URL, with PKCE and the resource of the endpoint, approved it,
    # and mcp-remote's callback page accepted the code.
    assert len(peer.person.authorize_urls) == 1, peer.person.tail()
    query = parse_qs(urlsplit(peer.person.authorize_urls[0]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["resource"] == [server.url + path]
    assert query["redirect_uri"] == [f"http://localhost:{callback_port}/oauth/callback"]
    [(redirect, status, body)] = peer.person.callbacks
    assert status == 200 and "Authorization successful" in body, body
    assert parse_qs(urlsplit(redirect).query)["iss"] == [server.url]
    assert {e["name"]: e["observations"] for e in (await server.graph())["entities"]} == {
        entity: ["sent through mcp-remote"]}
    return peer


async def test_mcp_remote_streamable_http(cli_server: CliServer, tmp_path: Path) -> None:
    callback_port = free_port()
    first = await remember_through_mcp_remote(cli_server, tmp_path, callback_port, "/mcp", "via mcp-remote over /mcp")
    assert any("Connected to remote server using StreamableHTTPClientTransport" in line for line in first.person.lines)

    # The desktop app restarts: mcp-remote finds its stored tokens and asks the person nothing.
    async with mcp_remote(cli_server.url + "/mcp", callback_port, tmp_path / "home") as again:
        await again.initialize()
        graph = structured(await again.request("tools/call", {"name": "read_graph", "arguments": {}}))
        assert [e["name"] for e in graph["entities"]] == ["via mcp-remote over /mcp"]
        assert await again.close() == 0, again.person.tail()
    assert again.person.authorize_urls == [], again.person.tail()


async def test_mcp_remote_sse(cli_server: CliServer, tmp_path: Path) -> None:
    peer = await remember_through_mcp_remote(cli_server, tmp_path, free_port(), "/sse", "via mcp-remote over /sse",
                                             "--transport", "sse-only")
    assert any("Connected to remote server using SSEClientTransport" in line for line in peer.person.lines)


# --- MCP Inspector CLI ---------------------------------------------------------------------------


async def test_inspector_cli(server: RunningServer, tmp_path: Path) -> None:
    token = (await tokens_by_hand(server, "alice", PASSWORD, "memory:read memory:write"))["access_token"]
    env = client_env(tmp_path / "home")

    async def inspector(url: str, header: str, *args: str) -> tuple[int, Any, str]:
        code, out, err = await run([*tool("mcp-inspector"), "--cli", url, "--header", header,
                                    "--stored-auth-only", "--format", "json", *args], env)
        return code, (json.loads(out) if out.strip() else None), err

    bearer = f"Authorization: Bearer {token}"
    code, listed, err = await inspector(server.url + "/mcp", bearer, "--method", "tools/list")
    assert code == 0, err
    assert {t["name"] for t in listed["result"]["tools"]} == TOOL_NAMES

    code, called, err = await inspector(
        server.url + "/mcp", bearer, "--method", "tools/call", "--tool-name", "create_entities",
        "--tool-args-json", json.dumps({"entities": [{"name": "via inspector", "entityType": "test",
                                                      "observations": ["sent by the Inspector CLI"]}]}))
    assert code == 0, err
    assert [e["name"] for e in structured(called["result"])["entities"]] == ["via inspector"]

    # The Inspector picks the legacy transport from the /sse path; same token, same memory.
    code, read, err = await inspector(server.url + "/sse", bearer, "--method", "tools/call",
                                      "--tool-name", "read_graph")
    assert code == 0, err
    assert [e["name"] for e in structured(read["result"])["entities"]] == ["via inspector"]

    # The header is what authenticates: a wrong token gets the auth error, not a tool list.
    code, refused, err = await inspector(server.url + "/mcp", "Authorization: Bearer not-a-token",
                                         "--method", "tools/list")
    assert code != 0 and refused is None
    # The CLI's error envelope goes to stderr; it carries the server's own RFC 6750 answer.
    envelope = json.loads(err.strip().splitlines()[-1])
    assert envelope["error"]["code"] == "auth_required" and "invalid_token" in envelope["error"]["message"], err

    assert (await alice_graph(server.storage))["entities"] == [
        {"name": "via inspector", "entityType": "test", "observations": ["sent by the Inspector CLI"]}]


async def test_inspector_cli_with_a_personal_access_token(server: RunningServer, tmp_path: Path) -> None:
    """A headless agent's setup: a token from `memory-mcp tokens create` in the `--header` flag,
    on both transports; a read-only one cannot write; a revoked one is refused."""
    settings = server.app[SETTINGS].auth_settings()
    made = await admin.tokens_create(server.storage, settings, "alice", name="inspector", scope=None, expires_in=None)
    token_id, secret = made.split()[4], made.splitlines()[-1]
    read_only = (await admin.tokens_create(server.storage, settings, "alice", name="reader", scope="memory:read",
                                           expires_in="1")).splitlines()[-1]
    env = client_env(tmp_path / "home")

    async def inspector(url: str, token: str, *args: str) -> tuple[int, Any, str]:
        code, out, err = await run([*tool("mcp-inspector"), "--cli", url, "--header", f"Authorization: Bearer {token}",
                                    "--stored-auth-only", "--format", "json", *args], env)
        return code, (json.loads(out) if out.strip() else None), err

    code, listed, err = await inspector(server.url + "/mcp", secret, "--method", "tools/list")
    assert code == 0, err
    assert {t["name"] for t in listed["result"]["tools"]} == TOOL_NAMES
    code, called, err = await inspector(
        server.url + "/mcp", secret, "--method", "tools/call", "--tool-name", "create_entities",
        "--tool-args-json", json.dumps({"entities": [{"name": "via token", "entityType": "test", "observations": []}]}))
    assert code == 0, err
    assert [e["name"] for e in structured(called["result"])["entities"]] == ["via token"]
    code, read, err = await inspector(server.url + "/sse", read_only, "--method", "tools/call",
                                      "--tool-name", "read_graph")
    assert code == 0, err
    assert [e["name"] for e in structured(read["result"])["entities"]] == ["via token"]

    code, refused, err = await inspector(
        server.url + "/mcp", read_only, "--method", "tools/call", "--tool-name", "create_entities",
        "--tool-args-json", json.dumps({"entities": [{"name": "not written", "entityType": "test",
                                                      "observations": []}]}))
    # The Inspector reads the 403's challenge and names the scope it would need.
    assert code != 0 and refused is None and "Insufficient scope" in err and "memory:write" in err, err

    assert "revoked" in await admin.token_revoke(server.storage, token_id)
    await asyncio.sleep(1.1)  # past the bearer check's one-second memory of verified tokens
    code, refused, err = await inspector(server.url + "/mcp", secret, "--method", "tools/list")
    assert code != 0 and refused is None
    envelope = json.loads(err.strip().splitlines()[-1])
    assert envelope["error"]["code"] == "auth_required" and "invalid_token" in envelope["error"]["message"], err
    assert [e["name"] for e in (await alice_graph(server.storage))["entities"]] == ["via token"]


async def test_inspector_cli_signs_in_itself(server: RunningServer, tmp_path: Path) -> None:
    """No token by hand: the Inspector discovers, registers, sends the person to the login page and
    takes the code on its own loopback callback."""
    callback = f"http://127.0.0.1:{free_port()}/oauth/callback"
    # Without a TTY the CLI refuses interactive OAuth unless told that opening a browser is fine;
    # the secret store is chosen explicitly because a test machine has no OS keychain.
    env = {**client_env(tmp_path / "home"), "MCP_AUTO_OPEN_ENABLED": "true", "MCP_INSPECTOR_SECRET_STORE": "memory"}
    cmd = [*tool("mcp-inspector"), "--cli", server.url + "/mcp", "--callback-url", callback,
           "--method", "tools/call", "--tool-name", "create_entities", "--format", "json", "--tool-args-json",
           json.dumps({"entities": [{"name": "via inspector login", "entityType": "test", "observations": []}]})]
    person = Person(server.url)
    async with spawn(cmd, env) as proc:
        assert proc.stdout is not None
        watcher = asyncio.create_task(person.watch(proc.stderr))
        try:
            out = await asyncio.wait_for(proc.stdout.read(), STEP)
            code = await asyncio.wait_for(proc.wait(), STEP)
            await asyncio.wait_for(watcher, STEP)
        finally:
            watcher.cancel()
    assert code == 0, person.tail()
    assert [e["name"] for e in structured(json.loads(out)["result"])["entities"]] == ["via inspector login"]
    [url] = person.authorize_urls
    query = parse_qs(urlsplit(url).query)
    assert query["redirect_uri"] == [callback] and query["code_challenge_method"] == ["S256"]
    assert query["resource"] == [server.url + "/mcp"]
    [(_, status, _)] = person.callbacks
    assert status == 200
    assert [e["name"] for e in (await alice_graph(server.storage))["entities"]] == ["via inspector login"]


# --- TypeScript SDK ------------------------------------------------------------------------------


# The one run of a node client with the server on Redis too: the others exercise the clients' side,
# the same on either backend, and each costs seconds.
@on_both_backends()
async def test_typescript_sdk_client(server: RunningServer, tmp_path: Path) -> None:
    cmd = [installed(BIN / "node"), str(TS_SDK_CLIENT), server.url + "/mcp", "via the TypeScript SDK"]
    alice = await server.storage.get_user_by_name("alice")
    assert alice is not None
    await server.storage.create_entities(alice.id, [Entity(name="already there", entityType="t", observations=[])])
    events: dict[str, dict[str, Any]] = {}
    async with spawn(cmd, client_env(tmp_path / "home"), stdin=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), STEP)
            if not line:
                break
            event = json.loads(line)
            events[event["event"]] = event
            if event["event"] == "authorize":
                redirect = await click_through(event["url"], server.url)
                proc.stdin.write(json.dumps({"redirect": redirect}).encode() + b"\n")
                await proc.stdin.drain()
        err = (await proc.stderr.read()).decode()
        assert await asyncio.wait_for(proc.wait(), STEP) == 0, err
    assert "done" in events, (events, err)

    query = parse_qs(urlsplit(events["authorize"]["url"]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["resource"] == [server.url + "/mcp"]
    connected = events["connected"]
    assert connected["server"]["name"] == "memory-mcp"
    assert connected["tokenType"].lower() == "bearer" and connected["hasRefreshToken"]
    assert set(events["tools"]["names"]) == TOOL_NAMES
    assert [e["name"] for e in structured(events["created"]["result"])["entities"]] == ["via the TypeScript SDK"]
    names = ["already there", "via the TypeScript SDK"]
    assert [e["name"] for e in structured(events["graph"]["result"])["entities"]] == names
    assert [e["name"] for e in (await alice_graph(server.storage))["entities"]] == names
    # A page with nextCursor, then the last one without: both passed the SDK's output schema check.
    page, rest = structured(events["page"]["result"]), structured(events["rest"]["result"])
    assert [e["name"] for e in page["entities"]] == names[:1] and "nextCursor" in page
    assert [e["name"] for e in rest["entities"]] == names[1:] and "nextCursor" not in rest


# --- MCP conformance suite -----------------------------------------------------------------------

# The scenarios that test a server with no fixture tools: each must pass in full, with these checks.
# Why every other scenario does not apply: tests/interop/node/CONFORMANCE.md.
APPLICABLE = {
    "server-initialize": {"server-initialize"},
    "ping": {"ping"},
    "tools-list": {"tools-list"},
    "server-sse-multiple-streams": {"server-accepts-multiple-post-streams", "server-sse-streams-functional"},
    "dns-rebinding-protection": {"localhost-host-rebinding-rejected", "localhost-host-valid-accepted"},
}


async def run_conformance(proxy_url: str, tmp_path: Path) -> tuple[dict[str, list[dict[str, Any]]], str, str]:
    """`conformance server --suite all` against the server behind the proxy: the checks of each
    scenario by name (from the suite's output files), and its stdout and stderr."""
    out_dir = tmp_path / "conformance"
    _, out, err = await run([*tool("conformance"), "server", "--url", proxy_url + "/mcp", "--suite", "all",
                             "-o", str(out_dir)], client_env(tmp_path / "home"), timeout=120)
    results: dict[str, list[dict[str, Any]]] = {}
    for checks in out_dir.glob("*/checks.json"):
        # The suite names each result folder server-<scenario>-<timestamp>.
        scenario = re.sub(r"-\d{4}-\d\d-\d\dT[\d-]+Z$", "", checks.parent.name.removeprefix("server-"))
        results[scenario] = json.loads(checks.read_text())
    return results, out, err


async def test_conformance_server_scenarios(data_dir: Path, tmp_path: Path) -> None:
    # The suite cannot send a token, so a proxy adds one; memory-mcp is configured with the proxy's
    # origin as its public URL, as it would be behind any reverse proxy.
    sock = free_socket()
    proxy_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = await start_server(data_dir, public_url=proxy_url)
    proxy = BearerProxy(f"http://127.0.0.1:{server.runner.addresses[0][1]}", token="")
    try:
        await accounts.add_user(server.storage, "alice", PASSWORD)
        await proxy.start(sock)
        assert server.url == proxy_url
        proxy.token = (await tokens_by_hand(server, "alice", PASSWORD, "memory:read memory:write"))["access_token"]
        # Its exit status counts the scenarios that need fixture tools too: the checks are read below.
        results, out, err = await run_conformance(proxy_url, tmp_path)
    finally:
        await proxy.stop()
        await server.stop()

    assert set(APPLICABLE) <= set(results), (sorted(results), out[-3000:], err[-3000:])
    # memory-mcp answers tools/list as plain JSON (transports/direct.py), which the suite reports
    # as INFO "SSE streams optional" for this one check: the spec lets a server pick either.
    json_answers = {("server-sse-multiple-streams", "server-sse-streams-functional", "INFO")}
    failed = {name: [(c["id"], c["status"], c.get("errorMessage")) for c in results[name]
                     if c["status"] != "SUCCESS" and (name, c["id"], c["status"]) not in json_answers]
              for name in APPLICABLE}
    assert not any(failed.values()), failed
    for name, ids in APPLICABLE.items():
        assert {c["id"] for c in results[name]} == ids, (name, results[name])

    # Two of these checks would pass on a server that answered nothing useful; their details
    # show that real work was done.
    [listed] = results["tools-list"]
    assert set(listed["details"]["tools"]) == TOOL_NAMES
    multiple = {c["id"]: c for c in results["server-sse-multiple-streams"]}
    assert multiple["server-accepts-multiple-post-streams"]["details"]["statuses"] == [200, 200, 200]
    assert all(t.startswith("application/json")
               for t in multiple["server-accepts-multiple-post-streams"]["details"]["contentTypes"])
    rebinding = {c["id"]: c for c in results["dns-rebinding-protection"]}
    assert rebinding["localhost-host-rebinding-rejected"]["details"]["statusCode"] == 403
    # Everything went through the proxy with alice's token, none of it around it.
    assert any(added for _, path, added in proxy.requests if path.startswith("/mcp"))


# The scenarios that need the suite's fixture tools, resources and prompts, run against
# tests/interop/conformance_fixture.py mounted on memory-mcp's transports and OAuth: scenario ->
# the checks it must report, every one SUCCESS. server-sse-polling is asserted on its own below.
FIXTURE_SCENARIOS: dict[str, set[str]] = {
    **{name: {name} for name in (
        "tools-call-simple-text", "tools-call-image", "tools-call-audio", "tools-call-embedded-resource",
        "tools-call-mixed-content", "tools-call-error", "tools-call-with-progress", "tools-call-with-logging",
        "tools-call-sampling", "tools-call-elicitation", "logging-set-level", "completion-complete",
        "resources-list", "resources-read-text", "resources-read-binary", "resources-templates-read",
        "resources-subscribe", "resources-unsubscribe", "prompts-list", "prompts-get-simple",
        "prompts-get-with-args", "prompts-get-embedded-resource", "prompts-get-with-image")},
    "elicitation-sep1034-defaults": {f"elicitation-sep1034-{kind}-default"
                                     for kind in ("string", "integer", "number", "enum", "boolean")},
    "elicitation-sep1330-enums": {f"elicitation-sep1330-{kind}" for kind in (
        "untitled-single", "titled-single", "legacy-enumnames", "untitled-multi", "titled-multi")},
    "json-schema-2020-12": {"json-schema-2020-12-tool-found", "json-schema-2020-12-$schema",
                            "json-schema-2020-12-$defs", "json-schema-2020-12-additionalProperties"},
}


async def start_fixture_server(fixture: Fixture, data_dir: Path, public_url: str) -> RunningServer:
    """The whole app as `start_server` builds it, with the fixture in place of the memory tools."""
    sock = free_socket()
    settings = Settings.model_validate({"host": "127.0.0.1", "port": sock.getsockname()[1], "data_dir": data_dir,
                                        "public_url": public_url})
    app = await build_app(settings, mcp_server=fixture.server)
    runner = web.AppRunner(app, shutdown_timeout=2.0, handler_cancellation=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return RunningServer(settings.issuer, app, runner)


# The fixture sends logs and sampling requests, which the SDK marks deprecated as of 2026-07-28;
# the scenarios speak 2025-11-25.
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_conformance_fixture_scenarios(data_dir: Path, tmp_path: Path) -> None:
    fixture = Fixture()
    sock = free_socket()
    proxy_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = await start_fixture_server(fixture, data_dir, proxy_url)
    proxy = BearerProxy(f"http://127.0.0.1:{server.runner.addresses[0][1]}", token="")
    try:
        await accounts.add_user(server.storage, "alice", PASSWORD)
        await proxy.start(sock)
        proxy.token = (await tokens_by_hand(server, "alice", PASSWORD, "memory:read memory:write"))["access_token"]
        results, out, err = await run_conformance(proxy_url, tmp_path)
        resumed = await reconnection_at_2025_11_25(proxy_url)
    finally:
        await proxy.stop()
        await server.stop()

    assert any(added for _, path, added in proxy.requests if path.startswith("/mcp"))
    # The generic scenarios pass here too: the same transports, another server behind them.
    expected = FIXTURE_SCENARIOS | APPLICABLE
    assert set(expected) | {"server-sse-polling"} <= set(results), (sorted(results), out[-3000:], err[-3000:])
    failed = {name: [(c["id"], c["status"], c.get("errorMessage")) for c in results[name] if c["status"] != "SUCCESS"]
              for name in expected}
    assert not any(failed.values()), failed
    for name, ids in expected.items():
        assert {c["id"] for c in results[name]} == ids, (name, results[name])

    # Every fixture was really used, once per scenario that needs it (subscribe: two scenarios).
    tools = {t.name for t in FIXTURE_TOOLS} - {"json_schema_2020_12_tool", "test_reconnection"}
    assert {name: fixture.calls[name] for name in tools} == dict.fromkeys(tools, 1), fixture.calls
    assert fixture.calls["resources/subscribe"] == 2 and fixture.calls["resources/unsubscribe"] == 1
    # resources-subscribe's session stays subscribed; resources-unsubscribe's does not.
    assert sorted(map(sorted, fixture.subscriptions.values())) == [[], ["test://watched-resource"]]
    assert fixture.calls["completion/complete"] == 1 and fixture.calls["logging/setLevel"] == 2
    # The two checks that any server answering an unknown tool with an isError text result passes
    # (as MCPServer does): the fixture ran, and its own words came back.
    [simple] = results["tools-call-simple-text"]
    assert simple["details"]["result"]["content"] == [{"type": "text", "text": SIMPLE_TEXT}]
    [error] = results["tools-call-error"]
    assert error["details"]["result"] == {"content": [{"type": "text", "text": ERROR_TEXT}], "isError": True}
    # The server-to-client flows went both ways on the tool call's own stream.
    [progress] = results["tools-call-with-progress"]
    assert [n["progress"] for n in progress["details"]["progressNotifications"]] == [0, 50, 100]
    [logged] = results["tools-call-with-logging"]
    assert [entry["data"] for entry in logged["details"]["logs"]] == list(LOG_MESSAGES)
    [sampling] = results["tools-call-sampling"]
    assert sampling["details"]["result"]["content"] == [
        {"type": "text", "text": "LLM response: This is a test response from the client"}]
    [elicited] = results["tools-call-elicitation"]
    assert '"username": "testuser"' in elicited["details"]["result"]["content"][0]["text"]

    # server-sse-polling: the suite 0.1.16 probes with `MCP-Protocol-Version: 2025-03-26` although the
    # session negotiated 2025-11-25, and SDKs (Python and TypeScript) send priming events and offer
    # close_sse_stream only from 2025-11-25 on (fixed upstream: modelcontextprotocol/conformance#366).
    # So the tool answers on the open stream and the suite warns about priming and retry, nothing else.
    polling = results["server-sse-polling"]
    assert {c["id"]: c["status"] for c in polling if c["status"] != "INFO"} == {
        "server-sse-priming-event": "WARNING", "server-sse-retry-field": "WARNING"}, polling
    assert fixture.calls["test_reconnection:open"] == 1
    assert any(c["id"] == "server-sse-disconnect-resume" and c["details"]["receivedToolResponse"] for c in polling)
    # The same flow at the negotiated version, by hand: a priming event (id, empty data, retry) and
    # nothing else on the POST stream, which the tool closes mid-call; the result comes from the
    # session's event store on a GET with Last-Event-ID.
    assert fixture.calls["test_reconnection:closed"] == 1
    [priming] = resumed["posted"]
    assert priming["data"] == "" and priming["id"] and priming["retry"] == str(SSE_RETRY_MILLISECONDS), resumed
    assert resumed["status"] == 200, resumed
    [result] = [json.loads(e["data"]) for e in resumed["resumed"] if e.get("data")]
    assert result == {"jsonrpc": "2.0", "id": 1, "result": {
        "content": [{"type": "text", "text": RECONNECTION_TEXT}], "isError": False}}

async def sse_events(resp: aiohttp.ClientResponse, until: Callable[[dict[str, str]], bool] | None = None,
                     timeout: float = 10.0) -> list[dict[str, str]]:
    """The events of an SSE response (`id`, `data`, `retry` as sent), to its end or to the first
    one `until` accepts."""
    events: list[dict[str, str]] = []
    event: dict[str, str] = {}
    async with asyncio.timeout(timeout):
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                event[name] = event.get(name, "") + value.removeprefix(" ")
                continue
            if event:
                events.append(event)
                if until is not None and until(event):
                    break
            event = {}
    return events


async def reconnection_at_2025_11_25(proxy_url: str) -> dict[str, Any]:
    """The suite's server-sse-polling flow with the protocol version the session negotiated
    (the suite's own probe says 2025-03-26, for which servers send no priming event): call
    test_reconnection, see the stream end without the result, resume with Last-Event-ID."""
    version = "2025-11-25"
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP)) as http:
        async with http.post(proxy_url + "/mcp", headers=headers, json={
                "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
                             ) as resp:
            assert resp.status == 200, await resp.text()
            session = resp.headers["Mcp-Session-Id"]
            # Either form is the server's to choose; ours answers initialize in JSON.
            if resp.content_type == "application/json":
                init = await resp.json()
            else:
                [init] = [json.loads(e["data"]) for e in await sse_events(resp) if e.get("data")]
        assert init["result"]["protocolVersion"] == version
        headers.update({"Mcp-Session-Id": session, "MCP-Protocol-Version": version})
        async with http.post(proxy_url + "/mcp", headers=headers,
                             json={"jsonrpc": "2.0", "method": "notifications/initialized"}) as resp:
            assert resp.status == 202
        async with http.post(proxy_url + "/mcp", headers=headers, json={
                "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "test_reconnection", "arguments": {}}}) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            posted = await sse_events(resp)
        resume = {k: v for k, v in headers.items() if k != "Content-Type"} | {
            "Accept": "text/event-stream", "Last-Event-ID": posted[-1]["id"] if posted else ""}
        async with http.get(proxy_url + "/mcp", headers=resume) as resp:
            status = resp.status
            resumed = await sse_events(resp, lambda e: '"id":1' in e.get("data", "")) if status == 200 else []
        async with http.delete(proxy_url + "/mcp", headers={**headers, "Accept": "*/*"}) as resp:
            assert resp.status in (200, 204), resp.status
    return {"posted": posted, "status": status, "resumed": resumed}

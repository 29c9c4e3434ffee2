"""The server's log across a whole user's path: one access-log line per request, with the id the
response carried in `X-Request-Id`, and no secret that crossed the wire in any line.

The flow is real: the mcp SDK's client and OAuthClientProvider (discovery, registration, token),
a scripted browser that signs in (once with a wrong password) and approves, tools/call create and
read, then a refresh, a revocation and a call with the revoked token. Every request and response
of both clients is recorded as it went over the wire (httpx2 event hooks, aiohttp tracing), and
the secrets are taken from there: tokens, the code, the PKCE verifier, passwords, cookies, CSRF
tokens, sealed form fields, the /authorize query string and its state and challenge.

Every logger of the process is at DEBUG during the flow, third-party ones included (the server
itself keeps those at INFO: `server.logs.configure`); the records of the test's own clients
(`CLIENT_LOGGERS`) are left out, since they are not the server's. Both log formats are checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from pydantic import AnyUrl

from auth import csrf
from server.logs import REQUEST_ID_HEADER, JSONFormatter, RequestIdFilter, TextFormatter
from tests.browser import Browser, parse_forms
from tests.conftest import BACKENDS, MemoryTokenStorage, RunningServer, free_socket, start_server
from tests.test_end_to_end import structured

# Every test here that takes `server` runs on SQLite and on Redis (tests/conftest.py).
SERVER_BACKENDS = BACKENDS

PASSWORD = "alice-password-1"
WRONG_PASSWORD = "not-alices-password-42"
# Form, query and JSON fields whose values are secrets (or, for state and the challenge, tie a
# log line to one authorization).
SECRET_FIELDS = frozenset({"code", "code_verifier", "code_challenge", "state", "nonce", "access_token",
                           "refresh_token", "id_token", "token", "password", "client_secret", csrf.FIELD, "request"})
CLIENT_LOGGERS = ("httpx2", "httpx", "httpcore", "httpcore2", "mcp.client")
ACCESS_LOGGER = "aiohttp.access"


@dataclass
class Wire:
    """What the test's clients sent and received, reduced to the secrets in it and the request
    ids of the responses."""

    secrets: dict[str, set[str]] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    without_id: list[str] = field(default_factory=list)

    def secret(self, kind: str, value: str | None) -> None:
        if value and len(value) >= 8:
            self.secrets.setdefault(kind, set()).add(value)

    def fields(self, pairs: list[tuple[str, str]]) -> None:
        for name, value in pairs:
            if name in SECRET_FIELDS:
                self.secret(name, value)

    def url(self, url: str) -> None:
        query = urlsplit(url).query
        if urlsplit(url).path == "/authorize":
            self.secret("authorize query", query)
        self.fields(parse_qsl(query, keep_blank_values=True))

    def request_headers(self, headers: Any) -> None:
        self.secret("bearer", headers.get("Authorization", "").partition(" ")[2])
        for pair in headers.get("Cookie", "").split(";"):
            self.secret("cookie", pair.partition("=")[2].strip())

    def body(self, content_type: str, body: bytes) -> None:
        if "application/x-www-form-urlencoded" in content_type or (body and b"=" in body and b"{" not in body[:1]):
            self.fields(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

    def response(self, url: str, headers: Any, body: bytes | None) -> None:
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is None:
            self.without_id.append(url)
        else:
            self.request_ids.append(request_id)
        for cookie in headers.getall("Set-Cookie", []) if hasattr(headers, "getall") else \
                headers.get_list("Set-Cookie"):
            self.secret("cookie", cookie.partition(";")[0].partition("=")[2])
        # A session id is not a credential (requests also need the bearer token), but with a stolen
        # token it names a live session: only its first characters may be logged.
        self.secret("session id", headers.get("Mcp-Session-Id"))
        if "Location" in headers:
            self.url(headers["Location"])
        if body and headers.get("Content-Type", "").startswith("application/json"):
            data = json.loads(body)
            if isinstance(data, dict):
                self.fields([(k, v) for k, v in data.items() if isinstance(v, str)])

    @property
    def all_secrets(self) -> dict[str, str]:
        return {value: kind for kind, values in self.secrets.items() for value in values}

    def hooks(self) -> dict[str, list[Any]]:
        async def on_request(request: httpx2.Request) -> None:
            self.url(str(request.url))
            self.request_headers(request.headers)
            try:
                content = request.content
            except Exception:  # a streamed body: the SDK's are JSON-RPC messages, no secret of ours
                return
            self.body(request.headers.get("Content-Type", ""), content)

        async def on_response(response: httpx2.Response) -> None:
            body = None
            if response.headers.get("Content-Type", "").startswith("application/json"):
                body = await response.aread()
            self.response(str(response.request.url), response.headers, body)

        return {"request": [on_request], "response": [on_response]}

    def trace(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()

        async def start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
            self.url(str(params.url))
            self.request_headers(params.headers)

        async def chunk(_s: Any, _c: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
            self.body("application/x-www-form-urlencoded", params.chunk)

        async def end(_s: Any, _c: Any, params: aiohttp.TraceRequestEndParams) -> None:
            body = await params.response.read() if params.response.content_type == "application/json" else None
            self.response(str(params.url), params.response.headers, body)
            text = await params.response.text()
            for form in parse_forms(text):
                self.fields(list(form.fields.items()))

        trace.on_request_start.append(start)
        trace.on_request_chunk_sent.append(chunk)
        trace.on_request_end.append(end)
        return trace


class Lines(logging.Handler):
    """Every record of the process, formatted as the server formats its log."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(RequestIdFilter())
        self.setFormatter(formatter)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, self.format(record)))

    def server_lines(self) -> list[tuple[str, str]]:
        return [(name, line) for name, line in self.lines
                if not any(name == c or name.startswith(c + ".") for c in CLIENT_LOGGERS)]


@contextmanager
def every_logger_at_debug(handler: logging.Handler) -> Iterator[None]:
    root = logging.getLogger()
    saved = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
             if isinstance(logger, logging.Logger)}
    root_level = root.level
    for name in saved:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def access_id(line: str, log_format: str) -> str:
    if log_format == "json":
        found = json.loads(line).get("request_id")
        assert isinstance(found, str), line
        return found
    match = re.search(r" id=(\S+)", line)
    assert match is not None, line
    return match.group(1)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_secret_in_any_log_line_and_one_access_line_per_request(server: RunningServer,
                                                                         log_format: str) -> None:
    lines = Lines(JSONFormatter() if log_format == "json" else TextFormatter())
    wire = Wire()
    with every_logger_at_debug(lines):
        await full_flow(server, wire)
        # A stream's line is written when it ends, a moment after its client went away.
        deadline = time.monotonic() + 10
        while (len([1 for name, _ in lines.server_lines() if name == ACCESS_LOGGER]) < len(wire.request_ids)
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)

    server_lines = lines.server_lines()
    secrets = wire.all_secrets
    for kind in ("authorize query", "state", "code_challenge", "code", "code_verifier", "access_token",
                 "refresh_token", "bearer", "password", "cookie", csrf.FIELD, "request", "token", "session id"):
        assert wire.secrets.get(kind), f"the flow put no {kind} on the wire: the test would prove nothing"
    assert PASSWORD in secrets and WRONG_PASSWORD in secrets
    leaks = sorted({f"{secrets[s]} in a line of {name}" for name, line in server_lines for s in secrets if s in line})
    assert not leaks, leaks

    assert wire.without_id == [], "responses without X-Request-Id"
    access = [line for name, line in server_lines if name == ACCESS_LOGGER]
    ids = Counter(access_id(line, log_format) for line in access)
    assert ids == Counter(wire.request_ids), (sorted(ids.elements()), sorted(wire.request_ids))
    assert set(ids.values()) == {1}, "a request id logged twice"
    assert len(wire.request_ids) >= 20
    # The parts of a line that may be there are there.
    authorize = [line for line in access if "/authorize" in line]
    assert authorize and all("?…" in line for line in authorize)
    assert any(("session=" in line if log_format == "text" else '"session":' in line) for line in access)
    if log_format == "json":
        for line in (line for _, line in server_lines):
            assert isinstance(json.loads(line), dict)
        entry = json.loads(access[0])
        assert {"time", "level", "logger", "message", "request_id", "client", "method", "path", "status", "bytes",
                "seconds"} <= set(entry)
    # Lines logged while a request is handled carry its id (the failed login's warning).
    failed = [line for name, line in server_lines if "failed login" in line]
    assert len(failed) == 1
    assert any(i in failed[0] for i in wire.request_ids)


async def full_flow(server: RunningServer, wire: Wire) -> None:
    browser = Browser("alice", PASSWORD)
    await browser.session.close()
    browser.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), trace_configs=[wire.trace()])
    try:
        await wrong_password(browser, server.url)
        tokens = MemoryTokenStorage()
        oauth = provider(server.url, browser, tokens)
        async with httpx2.AsyncClient(auth=oauth, timeout=30, event_hooks=wire.hooks()) as http:
            async with Client(streamable_http_client(server.url + "/mcp", http_client=http), mode="legacy") as client:
                structured(await client.call_tool("create_entities", {"entities": [
                    {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]}]}))
                graph = structured(await client.call_tool("read_graph", {}))
                assert [e["name"] for e in graph["entities"]] == ["Ada"]
        for cookie in browser.session.cookie_jar:
            wire.secret("cookie", cookie.value)
    finally:
        await browser.close()
    assert tokens.tokens is not None and tokens.client_info is not None
    client_id = tokens.client_info.client_id
    assert tokens.client_info.client_secret is None  # a public client: no secret to look for
    async with httpx2.AsyncClient(timeout=30, event_hooks=wire.hooks()) as http:
        refreshed = await http.post(server.url + "/token", data={
            "grant_type": "refresh_token", "refresh_token": tokens.tokens.refresh_token, "client_id": client_id})
        assert refreshed.status_code == 200, refreshed.text
        pair = refreshed.json()
        revoked = await http.post(server.url + "/revoke", data={"token": pair["refresh_token"], "client_id": client_id})
        assert revoked.status_code == 200
        refused = await http.post(server.url + "/mcp", headers={
            "Authorization": f"Bearer {pair['access_token']}", "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json"}, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401


async def wrong_password(browser: Browser, base: str) -> None:
    async with browser.session.get(base + "/login") as page:
        form = parse_forms(await page.text())[0]
    data = {**form.fields, "username": "alice", "password": WRONG_PASSWORD}
    async with browser.session.post(base + "/login", data=data, allow_redirects=False) as resp:
        assert resp.status == 401


def provider(base: str, browser: Browser, tokens: MemoryTokenStorage) -> OAuthClientProvider:
    pending: dict[str, AuthorizationCodeResult] = {}

    async def redirect_handler(url: str) -> None:
        redirect = await browser.authorize(url, base)
        params = redirect.params
        pending["result"] = AuthorizationCodeResult(code=params["code"], state=params.get("state"),
                                                    iss=params.get("iss"))

    async def callback_handler() -> AuthorizationCodeResult:
        return pending.pop("result")

    metadata = OAuthClientMetadata(client_name="log test client", redirect_uris=[AnyUrl("http://127.0.0.1:33418/cb")],
                                   grant_types=["authorization_code", "refresh_token"], response_types=["code"])
    return OAuthClientProvider(base + "/mcp", metadata, tokens, redirect_handler=redirect_handler,
                               callback_handler=callback_handler)


# -- request ids from a trusted proxy ------------------------------------------------------------


@pytest.fixture
async def behind_proxy(data_dir: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(data_dir, trusted_proxies=("127.0.0.1/32",))
    yield running
    await running.stop()


async def test_a_trusted_proxy_s_request_id_is_kept_if_it_is_plain(behind_proxy: RunningServer,
                                                                   server: RunningServer) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        kept = await http.get(behind_proxy.url + "/healthz", headers={REQUEST_ID_HEADER: "edge-7f3a:42"})
        assert kept.headers[REQUEST_ID_HEADER] == "edge-7f3a:42"
        for sent in (b"two words", b"x" * 129, b'quote"d', "é".encode()):
            replaced = await http.get(behind_proxy.url + "/healthz", headers={REQUEST_ID_HEADER.encode(): sent})
            assert re.fullmatch(r"[0-9a-f]{16}", replaced.headers[REQUEST_ID_HEADER]), sent
        # From a peer that is not a trusted proxy, the header is anybody's: ignored.
        ignored = await http.get(server.url + "/healthz", headers={REQUEST_ID_HEADER: "edge-7f3a:42"})
        assert re.fullmatch(r"[0-9a-f]{16}", ignored.headers[REQUEST_ID_HEADER])
        ids = {(await http.get(server.url + "/nowhere")).headers[REQUEST_ID_HEADER] for _ in range(5)}
        assert len(ids) == 5


# -- the log format, as `memory-mcp serve` writes it -----------------------------------------------


def test_serve_writes_json_lines(tmp_path: Path) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "data"), "--log-format", "json", "--log-level", "debug"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # until it listens (its output is read only once it has stopped)
            try:
                response = httpx2.get(f"http://127.0.0.1:{port}/healthz?token=hunter2-hunter2", timeout=10)
                break
            except httpx2.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert response.status_code == 200
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
    logged = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    access = [entry for entry in logged if entry["logger"] == ACCESS_LOGGER]
    assert len(access) == 1, rest
    entry = SimpleNamespace(**access[0])
    assert (entry.method, entry.path, entry.status, entry.request_id) == (
        "GET", "/healthz?…", 200, response.headers[REQUEST_ID_HEADER])
    assert "hunter2" not in rest
    # Everything else is the command's own messages (the start-up lines), not log records.
    assert not [line for line in rest.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]

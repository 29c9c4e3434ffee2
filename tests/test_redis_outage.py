"""Redis going away or failing over under load, through HTTP, and what survives a Redis killed mid-write.

Each test runs its own redis-server (AOF on, `appendfsync always`: the settings docs/storage.md
and docs/deploy.md give operators) in its own directory, since it stops or kills it, and a real
server on it. Several clients work at once, each in a loop: Streamable HTTP `tools/call`
create_entities batches on a session opened before the outage, a legacy SSE client posting to
/messages and reading its answers on its stream, refresh token rotations on /token, /authorize page
loads, and a /readyz prober. Redis is stopped (SIGTERM, or SIGKILL), the load goes on for a while,
and Redis is started again on the same port and directory.

What must hold:

* every response is a success or a 503 with Retry-After: on /mcp and /messages a JSON-RPC error
  carrying the request's id, on /token an OAuth error, on /authorize a page; never a 500 and never a
  reset connection. A tool call that meets the outage after it was admitted is answered by the
  tool with a retryable error result (server/memory/tools.py), which counts as a refusal;
* /readyz answers 503 naming the store while Redis is down, and 200 once it is back;
* service resumes by itself: the same bearer tokens and the same MCP session ids work again, and
  the SSE client keeps its stream (a stream holds nothing in Redis while it waits, so an outage
  is no reason to end it; the client never needs to reconnect);
* no half-applied write: a create_entities batch is entirely present or entirely absent, and each
  acknowledged one is present; the refresh chain goes on from the latest token it received;
* nothing is logged as an error: an outage is a condition the server expects (warnings say so).

A failover (Redis's FAILOVER from a primary to its replica, then the address moving to the new
primary) must be answered the same way, and the server must then write to the new primary,
although its pooled connections still lead to the old one. Stopping the server while Redis is down
must complete, ending every stream.

The persistence test kills Redis (SIGKILL; and SIGTERM) while logins, refresh rotations and memory
writes run, starts it again on the same directory, and checks with a new server process (no state
of the first one) that every acknowledged write and every token a client received is there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest

from auth import accounts
from tests.browser import Browser
from tests.conftest import RunningServer, start_server
from tests.redis_server import RedisServer
from tests.test_mcp_http import ACCEPT, INIT

SCOPE = "memory:read memory:write"
REDIRECT_URI = "http://127.0.0.1:9/callback"
USERS = (("alice", "alice-password-1"), ("bob", "bob-password-22"))
BATCH = 4
"""Entities per create_entities call: a half-applied call would show as a batch partly present."""
DOWN_SECONDS = 2.0
RESUME_WITHIN = 15.0
"""Seconds after Redis is back within which every client must have succeeded again."""
REFUSED_TOOL = "The memory store is temporarily unavailable"


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.start()
    yield redis
    redis.kill()


@pytest.fixture
async def running(own_redis: RedisServer, tmp_path: Path) -> AsyncIterator[RunningServer]:
    server = await start_server(tmp_path / "data", redis_url=own_redis.url, registration_rate_limit=0)
    for username, password in USERS:
        await accounts.add_user(server.storage, username, password)
    yield server
    await server.stop()


# -- what the clients saw ----------------------------------------------------------------------


@dataclass
class Seen:
    """Every answer of the load, by client; problems are collected and asserted at the end, so a
    failing test lists all of them."""

    phase: str = "before"
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    succeeded_after: set[str] = field(default_factory=set)
    readiness: list[tuple[str, int, Any]] = field(default_factory=list)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def success(self, client: str) -> None:
        self.count(f"{client} ok ({self.phase})")
        if self.phase == "after":
            self.succeeded_after.add(client)

    def problem(self, client: str, text: str) -> None:
        self.problems.append(f"{client} ({self.phase}): {text}")

    def refused(self, client: str, response: httpx2.Response) -> bool:
        """Whether this is a 503 (counted as a refusal; a problem if it lacks Retry-After)."""
        if response.status_code != 503:
            return False
        if not response.headers.get("Retry-After", "").isdigit():
            self.problem(client, f"503 without a Retry-After: {dict(response.headers)}")
        self.count(f"{client} 503 ({self.phase})")
        return True


def jsonrpc_refusal(seen: Seen, client: str, response: httpx2.Response, request_id: int) -> bool:
    if not seen.refused(client, response):
        return False
    try:
        body = response.json()
    except ValueError:
        seen.problem(client, f"503 whose body is not JSON: {response.text[:200]!r}")
        return True
    error = body.get("error") if isinstance(body, dict) else None
    if body.get("jsonrpc") != "2.0" or body.get("id") != request_id or not isinstance(error, dict) \
            or not isinstance(error.get("code"), int) or "retry" not in str(error.get("message")):
        seen.problem(client, f"503 that is not a JSON-RPC error for request {request_id}: {body}")
    return True


def sse_or_json(response: httpx2.Response) -> Any:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads([d for d in data if d][-1])
    return response.json()


def batch(prefix: str, number: int) -> list[str]:
    return [f"{prefix}-{number}-{k}" for k in range(BATCH)]


def create_call(request_id: int, names: list[str]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {
        "name": "create_entities",
        "arguments": {"entities": [{"name": n, "entityType": "t", "observations": [f"of {n}"]} for n in names]}}}


@dataclass
class Writes:
    """create_entities batches by outcome: acknowledged (the client got the result), refused
    (a 503 or a retryable tool error: nothing should have been stored, but a write whose answer
    was lost with the connection may have been, so only all-or-nothing is required of them), and
    unanswered (none: the client must always get an answer)."""

    acknowledged: list[list[str]] = field(default_factory=list)
    refused: list[list[str]] = field(default_factory=list)


def tool_outcome(seen: Seen, client: str, writes: Writes, names: list[str], message: Any) -> None:
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
        seen.problem(client, f"tools/call answered without a result: {message}")
        writes.refused.append(names)
        return
    if result.get("isError"):
        text = result["content"][0]["text"]
        if not text.startswith(REFUSED_TOOL):
            seen.problem(client, f"tool error that is not the store's refusal: {text}")
        seen.count(f"{client} tool refusal ({seen.phase})")
        writes.refused.append(names)
        return
    writes.acknowledged.append(names)
    seen.success(client)


# -- the clients ---------------------------------------------------------------------------------


@dataclass
class Login:
    access_token: str
    refresh_token: str
    client_id: str


async def register(http: httpx2.AsyncClient, server: RunningServer) -> str:
    response = await http.post(server.url + "/register", json={"client_name": "outage test",
                                                                "redirect_uris": [REDIRECT_URI]})
    if response.status_code != 201:
        raise AssertionError(f"{response.status_code} from /register: {response.text[:300]}")
    client_id: str = response.json()["client_id"]
    return client_id


def authorize_url(server: RunningServer, client_id: str, challenge: str) -> str:
    return server.url + "/authorize?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI, "code_challenge": challenge,
        "code_challenge_method": "S256", "scope": SCOPE, "state": "s", "resource": server.url + "/mcp"})


async def login(http: httpx2.AsyncClient, server: RunningServer, username: str, password: str) -> Login:
    """The authorization code flow through the scripted browser; AssertionError when a step is
    refused (its status in `browser.last_status`) or the code exchange is."""
    client_id = await register(http, server)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    browser = Browser(username, password)
    try:
        redirect = await browser.authorize(authorize_url(server, client_id, challenge), server.url)
    finally:
        await browser.close()
    if "code" not in redirect.params:  # an OAuth error sent back to the client
        raise AssertionError(f"{redirect.params.get('error')} from /authorize: {redirect.params}")
    response = await http.post(server.url + "/token", data={
        "grant_type": "authorization_code", "code": redirect.params["code"], "code_verifier": verifier,
        "client_id": client_id, "redirect_uri": REDIRECT_URI, "resource": server.url + "/mcp"})
    if response.status_code != 200:
        raise AssertionError(f"{response.status_code} from /token: {response.text[:300]}")
    tokens = response.json()
    return Login(tokens["access_token"], tokens["refresh_token"], client_id)


async def open_session(http: httpx2.AsyncClient, server: RunningServer, token: str) -> dict[str, str]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    response = await http.post(server.url + "/mcp", json=INIT, headers=headers)
    assert response.status_code == 200, response.text
    session = {**headers, "Mcp-Session-Id": response.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
    note = await http.post(server.url + "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers=session)
    assert note.status_code == 202, note.text
    return session


async def mcp_writer(name: str, http: httpx2.AsyncClient, server: RunningServer, session: dict[str, str],
                     seen: Seen, writes: Writes, stop: asyncio.Event) -> None:
    """Streamable HTTP: create_entities batches on one session, opened before the outage."""
    number = 0
    while not stop.is_set():
        number += 1
        names = batch(name, number)
        try:
            response = await http.post(server.url + "/mcp", json=create_call(number, names), headers=session)
        except httpx2.TransportError as exc:
            seen.problem(name, f"no answer: {type(exc).__name__}: {exc}")
            writes.refused.append(names)
            continue
        if jsonrpc_refusal(seen, name, response, number):
            writes.refused.append(names)
            await asyncio.sleep(0.05)
            continue
        if response.status_code != 200:
            seen.problem(name, f"{response.status_code}: {response.text[:300]}")
            writes.refused.append(names)
            continue
        tool_outcome(seen, name, writes, names, sse_or_json(response))


class SSEClient:
    """The 2024-11-05 transport over raw HTTP: one GET /sse stream, its answers matched by id."""

    def __init__(self, http: httpx2.AsyncClient, server: RunningServer, token: str) -> None:
        self.http = http
        self.server = server
        self.headers = {"Authorization": f"Bearer {token}"}
        self.endpoint: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.answers: dict[int, asyncio.Future[Any]] = {}
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(asyncio.shield(self.endpoint), 10)
        self.answers[0] = asyncio.get_running_loop().create_future()
        url = self.server.url + self.endpoint.result()
        posted = await self.http.post(url, headers=self.headers, json={**INIT, "id": 0})
        assert posted.status_code == 202, posted.text
        assert "result" in await asyncio.wait_for(self.answers[0], 10)
        posted = await self.http.post(url, headers=self.headers,
                                      json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert posted.status_code == 202, posted.text

    async def _read(self) -> None:
        try:
            async with self.http.stream("GET", self.server.url + "/sse", headers=self.headers,
                                        timeout=httpx2.Timeout(10, read=None)) as response:
                if response.status_code != 200:
                    raise AssertionError(f"GET /sse: {response.status_code}")
                event, data = "message", []
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        self._dispatch(event, "\n".join(data))
                        event, data = "message", []
            self._end("the server ended the stream")
        except Exception as exc:  # what ended it is the report
            self._end(f"{type(exc).__name__}: {exc}")

    def _dispatch(self, event: str, data: str) -> None:
        if event == "endpoint":
            if not self.endpoint.done():
                self.endpoint.set_result(data)
            return
        message = json.loads(data)
        answer = self.answers.get(message.get("id"))
        if answer is not None and not answer.done():
            answer.set_result(message)

    def _end(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)
        if not self.endpoint.done():
            self.endpoint.set_exception(AssertionError(f"the SSE stream ended before its endpoint event: {why}"))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def sse_writer(name: str, client: SSEClient, seen: Seen, writes: Writes, stop: asyncio.Event) -> None:
    """Legacy SSE: create_entities batches posted to /messages, answered on the stream."""
    number = 0
    while not stop.is_set() and not client.ended.done():
        number += 1
        names = batch(name, number)
        client.answers[number] = asyncio.get_running_loop().create_future()
        try:
            posted = await client.http.post(client.server.url + client.endpoint.result(), headers=client.headers,
                                            json=create_call(number, names))
        except httpx2.TransportError as exc:
            seen.problem(name, f"no answer: {type(exc).__name__}: {exc}")
            writes.refused.append(names)
            continue
        if jsonrpc_refusal(seen, name, posted, number):
            writes.refused.append(names)
            await asyncio.sleep(0.05)
            continue
        if posted.status_code != 202:
            seen.problem(name, f"POST /messages: {posted.status_code}: {posted.text[:300]}")
            writes.refused.append(names)
            continue
        try:
            answer = await asyncio.wait_for(client.answers[number], 10)
        except TimeoutError:
            seen.problem(name, f"request {number} accepted (202) but never answered on the stream")
            writes.refused.append(names)
            continue
        tool_outcome(seen, name, writes, names, answer)
    if client.ended.done():
        seen.problem(name, f"the SSE stream ended: {client.ended.result()}")


async def refresher(name: str, http: httpx2.AsyncClient, server: RunningServer, chain: Login, seen: Seen,
                    stop: asyncio.Event, handed_out: list[str] | None = None) -> None:
    """Refresh token rotations on /token: `chain` always holds the latest pair received, and
    `handed_out` gets every access token received."""
    while not stop.is_set():
        try:
            response = await http.post(server.url + "/token", data={
                "grant_type": "refresh_token", "refresh_token": chain.refresh_token, "client_id": chain.client_id,
                "resource": server.url + "/mcp"})
        except httpx2.TransportError as exc:
            seen.problem(name, f"no answer: {type(exc).__name__}: {exc}")
            continue
        if seen.refused(name, response):
            body = response.json()
            if body.get("error") != "temporarily_unavailable" or "retry" not in body.get("error_description", ""):
                seen.problem(name, f"503 that is not an OAuth error: {body}")
            await asyncio.sleep(0.05)
            continue
        if response.status_code != 200:
            seen.problem(name, f"{response.status_code}: {response.text[:300]}")
            await asyncio.sleep(0.05)
            continue
        tokens = response.json()
        chain.access_token, chain.refresh_token = tokens["access_token"], tokens["refresh_token"]
        if handed_out is not None:
            handed_out.append(chain.access_token)
        seen.success(name)
        await asyncio.sleep(0.02)


async def page_loader(name: str, http: httpx2.AsyncClient, url: str, seen: Seen, stop: asyncio.Event) -> None:
    """/authorize loads by a browser that is not signed in: the sign-in page, or a page saying why not."""
    while not stop.is_set():
        try:
            response = await http.get(url)
        except httpx2.TransportError as exc:
            seen.problem(name, f"no answer: {type(exc).__name__}: {exc}")
            continue
        if seen.refused(name, response):
            if not response.headers.get("content-type", "").startswith("text/html") \
                    or "Try again in" not in response.text:
                seen.problem(name, f"503 that is not a readable page: {response.text[:300]}")
            await asyncio.sleep(0.05)
            continue
        if response.status_code != 200 or "password" not in response.text:
            seen.problem(name, f"{response.status_code}: {response.text[:300]}")
        else:
            seen.success(name)
        await asyncio.sleep(0.02)


async def prober(http: httpx2.AsyncClient, server: RunningServer, seen: Seen, stop: asyncio.Event) -> None:
    while not stop.is_set():
        phase = seen.phase
        response = await http.get(server.url + "/readyz")
        if phase == seen.phase:  # a probe that straddles a change of phase says nothing
            seen.readiness.append((phase, response.status_code, response.json()))
        await asyncio.sleep(0.1)


async def until(check: Callable[[], bool], within: float, what: str, seen: Seen | None = None) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}" + (
                "" if seen is None else f"\n{seen.counts}\n" + "\n".join(seen.problems[:20])))
        await asyncio.sleep(0.05)


async def entity_names(http: httpx2.AsyncClient, server: RunningServer, session: dict[str, str]) -> set[str]:
    """Every entity of the graph, page after page (a large graph is cut by memory_max_result_bytes)."""
    names: set[str] = set()
    arguments: dict[str, Any] = {}
    while True:
        response = await http.post(server.url + "/mcp", headers=session, json={
            "jsonrpc": "2.0", "id": "read", "method": "tools/call",
            "params": {"name": "read_graph", "arguments": arguments}})
        assert response.status_code == 200, response.text
        result = sse_or_json(response)["result"]
        assert not result.get("isError"), result
        names |= {entity["name"] for entity in result["structuredContent"]["entities"]}
        if "nextCursor" not in result["structuredContent"]:
            return names
        arguments = {"cursor": result["structuredContent"]["nextCursor"]}


def check_writes(writes: Writes, present: set[str]) -> list[str]:
    problems = []
    for names in writes.acknowledged:
        if not set(names) <= present:
            problems.append(f"acknowledged batch lost: {sorted(set(names) - present)}")
    for names in writes.refused:
        if set(names) & present and not set(names) <= present:
            problems.append(f"half-applied batch: {sorted(set(names) & present)} of {names}")
    return problems


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """An outage is a condition the server expects: warnings say so, an error would be a bug."""
    return [f"logged {r.levelname} by {r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def stop_tasks(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop.set()
    done, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    for task in done:
        task.result()  # a client's own bug fails the test here
    assert not pending, f"{len(pending)} clients did not stop within 30 s"


# -- the outage ----------------------------------------------------------------------------------


CLIENTS = {"mcp0", "mcp1", "mcp2", "sse", "token", "authorize"}


async def under_load(server: RunningServer, seen: Seen, go_away: Callable[[], Awaitable[None]],
                     come_back: Callable[[], Awaitable[None]], away: float) -> tuple[Writes, set[str]]:
    """Every client of CLIENTS at work, with Redis going away (phase "down") for `away` seconds and
    coming back (phase "after"); once each client has succeeded again, the writes and the names of
    the entities in both users' graphs."""
    stop = asyncio.Event()
    async with httpx2.AsyncClient(timeout=20) as http:
        alice = await login(http, server, *USERS[0])
        bob = await login(http, server, *USERS[1])
        chain = await login(http, server, *USERS[1])
        sessions = [await open_session(http, server, token) for token in
                    (alice.access_token, alice.access_token, bob.access_token)]
        page = authorize_url(server, await register(http, server), "x" * 43)
        sse = SSEClient(http, server, alice.access_token)
        await sse.open()
        writes = Writes()
        tasks = [asyncio.create_task(mcp_writer(f"mcp{i}", http, server, session, seen, writes, stop))
                 for i, session in enumerate(sessions)]
        tasks += [asyncio.create_task(sse_writer("sse", sse, seen, writes, stop)),
                  asyncio.create_task(refresher("token", http, server, chain, seen, stop)),
                  asyncio.create_task(page_loader("authorize", http, page, seen, stop)),
                  asyncio.create_task(prober(http, server, seen, stop))]
        try:
            await asyncio.sleep(0.5)
            await go_away()
            seen.phase = "down"
            await asyncio.sleep(away)
            seen.phase = "restarting"
            await come_back()
            seen.phase = "after"
            await until(lambda: seen.succeeded_after >= CLIENTS, RESUME_WITHIN, "every client served again", seen)
            await until(lambda: any(p == "after" and s == 200 for p, s, _ in seen.readiness), RESUME_WITHIN,
                        "/readyz 200 again")
        finally:
            await stop_tasks(stop, tasks)
            await sse.close()

        assert (await http.get(server.url + "/healthz")).status_code == 200
        present = await entity_names(http, server, sessions[0]) | await entity_names(http, server, sessions[2])
    return writes, present


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_an_outage_under_load_is_503_and_service_resumes_by_itself(
        how: str, own_redis: RedisServer, running: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    seen = Seen()

    async def go_away() -> None:
        await asyncio.to_thread(own_redis.stop if how == "stop" else own_redis.kill)

    writes, present = await under_load(running, seen, go_away, lambda: asyncio.to_thread(own_redis.start),
                                       DOWN_SECONDS)
    problems = seen.problems + check_writes(writes, present) + errors_logged(caplog)
    down = [(status, body) for phase, status, body in seen.readiness if phase == "down"]
    if not down:
        problems.append("no /readyz probe while Redis was down")
    for status, body in down:
        if status != 503 or body != {"status": "unavailable", "reason": "store: the store cannot be reached"}:
            problems.append(f"/readyz while Redis was down: {status} {body}")
    assert not problems, "\n".join(problems[:40]) + f"\n{seen.counts}"
    # The outage was seen by every kind of client, and writes went through on both sides of it.
    for client in CLIENTS:
        assert seen.counts.get(f"{client} 503 (down)"), (client, seen.counts)
    assert len(writes.acknowledged) > 10 and writes.refused, seen.counts


@pytest.fixture
async def failover_pair(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, RedisServer, Path]]:
    """A primary and its replica, and the Unix socket path the server is given, a symbolic link to
    the primary's socket: moving the link is how the address moves to the new primary (as a DNS
    name or a proxy would)."""
    primary = RedisServer(tmp_path / "a", appendonly=True)
    primary.start()
    replica = RedisServer(tmp_path / "b", appendonly=True, replica_of=primary)
    try:
        replica.start()
        link = tmp_path / "redis.sock"
        link.symlink_to(primary.socket)
        deadline = time.monotonic() + 10
        while primary.command("WAIT", "1", "100") != b":1":  # the replica is in sync
            assert time.monotonic() < deadline, "the replica did not catch up with its primary"
        yield primary, replica, link
    finally:
        primary.kill()
        replica.kill()


async def test_a_failover_under_load_is_503_and_service_follows_the_new_primary(
        failover_pair: tuple[RedisServer, RedisServer, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The primary hands over to its replica (Redis's FAILOVER: writes pause until the replica has
    them all, then the two swap roles) and the address moves to the new primary a second later.
    Meanwhile writes meet a read-only Redis (503, "failing over"); then the server must write to
    the new primary, although its pooled connections still lead to the old one."""
    primary, replica, link = failover_pair
    server = await start_server(tmp_path / "data", redis_url=f"unix://{link}?db=0", registration_rate_limit=0)
    seen = Seen()
    try:
        for username, password in USERS:
            await accounts.add_user(server.storage, username, password)

        def hand_over() -> None:
            answer = primary.command("FAILOVER", "TO", "127.0.0.1", str(replica.port), "TIMEOUT", "5000")
            assert answer == b"+OK", answer
            deadline = time.monotonic() + 10
            while (primary.role(), replica.role()) != ("slave", "master"):
                assert time.monotonic() < deadline, "the failover did not complete"
                time.sleep(0.02)

        def move_address() -> None:
            moved = link.with_name("moved.sock")
            moved.symlink_to(replica.socket)
            moved.replace(link)

        writes, present = await under_load(server, seen, lambda: asyncio.to_thread(hand_over),
                                           lambda: asyncio.to_thread(move_address), 1.0)
    finally:
        await server.stop()
    problems = seen.problems + check_writes(writes, present) + errors_logged(caplog)
    for phase, status, body in seen.readiness:
        # A replica answers reads, so the server may stay ready; if not, it says why.
        if status != 200 and not (status == 503 and str(body.get("reason")).startswith("store: ")):
            problems.append(f"/readyz ({phase}): {status} {body}")
    assert not problems, "\n".join(problems[:40]) + f"\n{seen.counts}"
    for client in ("mcp0", "mcp1", "mcp2", "sse", "token"):  # each writes, and met the read-only Redis
        assert seen.counts.get(f"{client} 503 (down)") or seen.counts.get(f"{client} tool refusal (down)"), \
            (client, seen.counts)
    assert len(writes.acknowledged) > 10, seen.counts


# -- persistence ---------------------------------------------------------------------------------


async def works_on_mcp(http: httpx2.AsyncClient, server: RunningServer, token: str) -> bool:
    response = await http.post(server.url + "/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {token}"})
    return response.status_code == 200


async def retrying(seen: Seen, name: str, attempt: Callable[[], Awaitable[Login]]) -> Login | None:
    """One login; a refusal while Redis is away is expected (noted, never a 500), None then."""
    try:
        return await attempt()
    except AssertionError as exc:
        if str(exc).startswith(("500", "server_error")):
            seen.problem(name, f"a login step failed as a bug would: {exc}")
        seen.count(f"{name} refused ({seen.phase})")
        return None
    except httpx2.TransportError as exc:
        seen.problem(name, f"no answer: {type(exc).__name__}: {exc}")
        return None


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_every_acknowledged_write_and_issued_token_survives_a_redis_restart(
        how: str, own_redis: RedisServer, running: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL is the case that needs `appendfsync always`; SIGTERM (Redis writes its AOF and
    exits) is the ordinary restart."""
    server = running
    seen = Seen()
    stop = asyncio.Event()
    issued: list[Login] = []
    async with httpx2.AsyncClient(timeout=20) as http:
        first = await login(http, server, *USERS[0])
        chains = [await login(http, server, *USERS[i % 2]) for i in range(2)]
        sessions = [await open_session(http, server, first.access_token) for _ in range(2)]
        writes = Writes()

        async def logins() -> None:
            while not stop.is_set():
                done = await retrying(seen, "login", lambda: login(http, server, *USERS[1]))
                if done is not None:
                    issued.append(done)
                    seen.success("login")
                else:
                    await asyncio.sleep(0.05)

        # Every access token a rotation hands out, not only the latest.
        handed_out = [chain.access_token for chain in chains]
        tasks = [asyncio.create_task(mcp_writer(f"mcp{i}", http, server, session, seen, writes, stop))
                 for i, session in enumerate(sessions)]
        tasks += [asyncio.create_task(refresher(f"token{i}", http, server, chain, seen, stop, handed_out))
                  for i, chain in enumerate(chains)]
        tasks.append(asyncio.create_task(logins()))
        clients = {"mcp0", "mcp1", "token0", "token1", "login"}
        try:
            await until(lambda: len(issued) >= 2 and len(writes.acknowledged) >= 10, 20, "load under way")
            await asyncio.to_thread(own_redis.kill if how == "kill" else own_redis.stop)
            seen.phase = "down"
            await asyncio.sleep(0.3)
            await asyncio.to_thread(own_redis.start)
            seen.phase = "after"
            await until(lambda: seen.succeeded_after >= clients, RESUME_WITHIN, "every client served again", seen)
        finally:
            await stop_tasks(stop, tasks)
    await server.stop()

    # A new server process on the same Redis and the same public URL: nothing of the first one's
    # memory (caches, warm views) can answer for the store.
    port = int(server.url.rsplit(":", 1)[1])
    fresh = await start_server(tmp_path / "data", port=port, redis_url=own_redis.url)
    try:
        async with httpx2.AsyncClient(timeout=20) as http:
            problems = list(seen.problems)
            tokens = [first.access_token, *handed_out, *(login.access_token for login in issued)]
            for token in tokens:
                if not await works_on_mcp(http, fresh, token):
                    problems.append(f"an access token issued before the kill no longer works "
                                    f"({tokens.index(token)} of {len(tokens)})")
            for chain in [*chains, *issued]:
                response = await http.post(fresh.url + "/token", data={
                    "grant_type": "refresh_token", "refresh_token": chain.refresh_token,
                    "client_id": chain.client_id, "resource": fresh.url + "/mcp"})
                if response.status_code != 200:
                    problems.append(f"the latest refresh token of a chain no longer refreshes: {response.text}")
            session = await open_session(http, fresh, first.access_token)
            problems += check_writes(writes, await entity_names(http, fresh, session)) + errors_logged(caplog)
    finally:
        await fresh.stop()
    assert not problems, "\n".join(problems[:40]) + f"\n{seen.counts}"
    assert len(writes.acknowledged) > 10 and len(issued) >= 2 and len(handed_out) > 4, seen.counts


# -- stopping while Redis is away ----------------------------------------------------------------


async def test_streams_end_and_the_server_stops_cleanly_while_redis_is_down(
        own_redis: RedisServer, running: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """A legacy SSE client leaving while Redis is down, and the server stopping then with another
    stream open: each ends (its record cannot be deleted now; it is purged once idle), nothing
    is logged as an error, and the shutdown completes."""
    server = running
    async with httpx2.AsyncClient(timeout=20) as http:
        alice = await login(http, server, *USERS[0])
        await open_session(http, server, alice.access_token)
        leaving, staying = SSEClient(http, server, alice.access_token), SSEClient(http, server, alice.access_token)
        await leaving.open()
        await staying.open()
        await asyncio.to_thread(own_redis.kill)
        await leaving.close()
        await until(lambda: len(server.registry.sessions()) == 2, 10, "the server noticed the client leave")
        await asyncio.wait_for(server.stop(), 20)
        assert await asyncio.wait_for(staying.ended, 10)
        await staying.close()
    assert not server.registry.sessions()
    assert not errors_logged(caplog), errors_logged(caplog)

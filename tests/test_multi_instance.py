"""Several server processes on one data directory, each request of a session free to reach any
of them (docs/decisions.md#10): three `memory-mcp serve` instances behind a round-robin load
balancer that never sticks, and `serve --workers 2` on one port. Real processes, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
import pytest_asyncio
from aiohttp import web
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from multidict import CIMultiDict

from auth import accounts
from auth.crypto import hash_secret
from auth.models import Token
from server.storage.redis import RedisStorage
from server.storage.sqlite import SQLiteStorage
from tests.conftest import OAuthUser, free_socket
from tests.redis_server import RedisServer
from tests.test_end_to_end import structured
from tests.test_mcp_http import ACCEPT, INIT

# One event loop for the module: the three instances behind the balancer are started once and
# shared by the tests that leave them whole (each uses its own names and sessions).
pytestmark = pytest.mark.asyncio(loop_scope="module")

CLI = [sys.executable, "-m", "server"]
SCOPES = ("memory:read", "memory:write")
# Headers of one hop, not to be passed on (RFC 9110 7.6.1), and the framing the proxy redoes.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "content-length"})


@dataclass
class Routed:
    method: str
    path: str
    port: int
    session: str | None


class RoundRobin:
    """A load balancer as unhelpful as one may be: each request goes to the next instance in
    turn, whatever session it belongs to (no stickiness), and responses are passed on as their
    bytes come (SSE streams are never buffered). As load balancers do, a request that could not be
    handed to an instance (connection refused, or closed before any response: an instance that is
    stopping or was killed) is handed to the next one; once a response has begun it is never
    retried. No keep-alive towards the instances, so that a connection to an instance that has
    stopped is never reused."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.routed: list[Routed] = []
        self._turn = itertools.count()
        self._sock = free_socket()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancelled when the client goes away, so that the instance's stream is closed too.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    def ports_of(self, method: str, path: str, session: str | None = None) -> list[int]:
        return [r.port for r in self.routed if r.method == method and r.path == path
                and (session is None or r.session == session)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._client is None:
            raise RuntimeError("the proxy is not started")
        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        upstream: aiohttp.ClientResponse | None = None
        port = 0
        # This request's turn, then each other instance once: concurrent requests take turns of
        # their own meanwhile, and must not send this one back to an instance that refused it.
        start = next(self._turn)
        for offset in range(len(self.ports)):
            port = self.ports[(start + offset) % len(self.ports)]
            try:
                upstream = await self._client.request(request.method, f"http://127.0.0.1:{port}{request.rel_url}",
                                                      headers=headers, data=body or None, allow_redirects=False)
                break
            except aiohttp.ClientConnectionError:
                continue
        if upstream is None:
            return web.Response(status=502, text="no instance answered")
        self.routed.append(Routed(request.method, request.path, port,
                                  request.headers.get("Mcp-Session-Id") or request.query.get("session_id")))
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, value)
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, ConnectionResetError):
            # The instance died mid-response: the client must see a broken connection, as it
            # would through a real load balancer, not a response that ended cleanly.
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            upstream.close()
        await response.write_eof()
        return response


@dataclass
class Instance:
    """One `memory-mcp serve` process, its log in a file."""

    tmp_path: Path
    data: Path
    port: int
    public_url: str
    flags: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log_path = self.tmp_path / f"instance-{self.port}-{len(self.logs)}.log"
        self.logs.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*CLI, "serve", "--port", str(self.port), "--data-dir", str(self.data), "--public-url",
                 self.public_url, "--shutdown-timeout", "5", *self.flags], stdout=log, stderr=subprocess.STDOUT)

    async def ready(self) -> None:
        async with httpx2.AsyncClient(timeout=2) as http:
            for _ in range(300):
                if self.process is None or self.process.poll() is not None:
                    break
                with contextlib.suppress(httpx2.TransportError):
                    if (await http.get(self.url + "/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError(f"instance on port {self.port} did not start: {self.log}")

    @property
    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def terminate(self) -> int:
        """SIGTERM, and the exit status once it has drained and exited."""
        if self.process is None:
            raise RuntimeError("not started")
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 30)


@dataclass
class Cluster:
    proxy: RoundRobin
    instances: list[Instance]
    data: Path
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.proxy.url


async def issue_tokens(data: Path, public_url: str, redis_url: str | None = None) -> dict[str, str]:
    """Alice's and Bob's accounts, and an access token for each, written with the storage API (as
    `/token` would store them) before the instances start: in `data`'s SQLite file, or in Redis."""
    storage: SQLiteStorage | RedisStorage = (SQLiteStorage(data / "memory.sqlite3") if redis_url is None
                                             else RedisStorage(redis_url))
    try:
        tokens = {}
        now = time.time()
        for name in ("alice", "bob"):
            user = await accounts.add_user(storage, name, f"{name}-password-1")
            secret = secrets.token_urlsafe(32)
            await storage.save_tokens([Token(hash_secret(secret), "access", f"grant-{name}", "client-1", user.id,
                                             SCOPES, public_url + "/mcp", now, now + 3600)])
            tokens[name] = secret
        return tokens
    finally:
        await storage.close()


def free_port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


@asynccontextmanager
async def running_cluster(tmp_path: Path, *flags: str, size: int = 3, redis_url: str | None = None
                          ) -> AsyncIterator[Cluster]:
    data = tmp_path / "data"
    ports = [free_port() for _ in range(size)]
    proxy = RoundRobin(ports)
    await proxy.start()
    tokens = await issue_tokens(data, proxy.url, redis_url)
    if redis_url is not None:
        flags = (*flags, "--redis-url", redis_url)
    instances = [Instance(tmp_path, data, port, proxy.url, flags) for port in ports]
    try:
        for instance in instances:
            instance.start()
        await asyncio.gather(*(instance.ready() for instance in instances))
        yield Cluster(proxy, instances, data, tokens)
    finally:
        for instance in instances:
            if instance.process is not None and instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
        for instance in instances:
            if instance.process is not None:
                try:
                    await asyncio.to_thread(instance.process.wait, 20)
                except subprocess.TimeoutExpired:
                    instance.kill()
        await proxy.stop()
    for instance in instances:
        assert "Traceback" not in instance.log, instance.log


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "redis"])
async def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """Three instances on one store: one SQLite data directory, or one Redis (a private one)."""
    if request.param == "sqlite":
        async with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
            yield running
        return
    redis = RedisServer(tmp_path_factory.mktemp("cluster-redis"))
    redis.start()
    try:
        async with running_cluster(tmp_path_factory.mktemp("cluster"), redis_url=redis.url) as running:
            yield running
    finally:
        redis.stop()


@asynccontextmanager
async def mcp_client(url: str, token: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http, \
            Client(streamable_http_client(url + "/mcp", http_client=http), mode="legacy") as client:
        yield client


def entity(name: str) -> dict[str, Any]:
    return {"entities": [{"name": name, "entityType": "test", "observations": [f"written as {name}"]}]}


async def entity_names(url: str, token: str) -> set[str]:
    async with mcp_client(url, token) as client:
        return await all_names(client)


async def all_names(client: Client) -> set[str]:
    """Every entity of the graph, page after page: the tests here share one graph, which outgrows
    one result (memory_max_result_bytes)."""
    names: set[str] = set()
    arguments: dict[str, Any] = {}
    while True:
        page = structured(await client.call_tool("read_graph", arguments))
        names |= {e["name"] for e in page["entities"]}
        if "nextCursor" not in page:
            return names
        arguments = {"cursor": page["nextCursor"]}


# -- the session's requests alternate between the instances -------------------------------------


async def test_a_session_is_served_by_every_instance_in_turn(cluster: Cluster) -> None:
    """An SDK client that logs in (OAuth, through the load balancer: each page and form of the
    flow may reach another instance) and uses one session whose requests land on all three."""
    alice = OAuthUser(cluster.url, "alice", "alice-password-1")
    before = len(cluster.proxy.routed)
    async with alice.client() as (client, _):
        for i in range(6):
            await client.call_tool("create_entities", entity(f"turn-{i}"))
        assert {f"turn-{i}" for i in range(6)} <= await all_names(client)
        assert len((await client.list_tools()).tools) == 9
    sessions = {r.session for r in cluster.proxy.routed[before:] if r.path == "/mcp" and r.session}
    assert len(sessions) == 1, sessions
    served_by = set(cluster.proxy.ports_of("POST", "/mcp", sessions.pop()))
    assert served_by == {i.port for i in cluster.instances}


async def test_a_session_goes_on_when_an_instance_is_killed(cluster: Cluster) -> None:
    before = len(cluster.proxy.routed)
    killed = cluster.instances[0]
    async with mcp_client(cluster.url, cluster.tokens["alice"]) as client:
        for i in range(3):
            await client.call_tool("create_entities", entity(f"before-{i}"))
        killed.kill()
        for i in range(6):
            await client.call_tool("create_entities", entity(f"after-{i}"))
        names = await all_names(client)
    expected = {f"before-{i}" for i in range(3)} | {f"after-{i}" for i in range(6)}
    assert expected <= names
    sessions = {r.session for r in cluster.proxy.routed[before:] if r.path == "/mcp" and r.session}
    assert len(sessions) == 1, "the client never had to start a new session"
    killed.start()  # the cluster whole again for the next test
    await killed.ready()


async def test_a_rolling_restart_loses_no_result_and_no_write(cluster: Cluster) -> None:
    """Three clients write without pause while every instance in turn is stopped (SIGTERM: it
    drains) and started again: every call gets its result, and every acknowledged write is in the
    graph afterwards."""
    stop = asyncio.Event()

    async def writer(name: str) -> list[str]:
        acknowledged = []
        async with mcp_client(cluster.url, cluster.tokens["alice"]) as client:
            for i in itertools.count():
                if stop.is_set():
                    break
                structured(await client.call_tool("create_entities", entity(f"{name}-{i}")))
                acknowledged.append(f"{name}-{i}")
        return acknowledged

    writers = [asyncio.create_task(writer(f"w{k}")) for k in range(3)]
    try:
        await asyncio.sleep(0.5)
        for instance in cluster.instances:
            assert await instance.terminate() == 0, instance.log
            instance.start()
            await instance.ready()
            await asyncio.sleep(0.3)
    finally:
        stop.set()
    written = await asyncio.gather(*writers)
    acknowledged = {name for names in written for name in names}
    assert all(len(names) >= 5 for names in written), [len(names) for names in written]
    assert acknowledged <= await entity_names(cluster.url, cluster.tokens["alice"])


# -- legacy HTTP+SSE: the stream on one instance, the POSTs on the others -------------------------


async def test_a_legacy_sse_stream_answers_messages_posted_to_other_instances(cluster: Cluster) -> None:
    auth = {"Authorization": f"Bearer {cluster.tokens['alice']}"}
    announced: list[str] = []
    async with Client(sse_client(cluster.url + "/sse", headers=auth, on_session_created=announced.append),
                      mode="legacy") as client:
        for i in range(5):
            await client.call_tool("create_entities", entity(f"sse-{i}"))
        assert {f"sse-{i}" for i in range(5)} <= await all_names(client)
        session_id = announced[0].rsplit("=", 1)[-1]
        [stream_port] = [r.port for r in cluster.proxy.routed if r.method == "GET" and r.path == "/sse"]
        posted_to = cluster.proxy.ports_of("POST", "/messages", session_id)
        assert len(posted_to) >= 7 and set(posted_to) == {i.port for i in cluster.instances}
        assert stream_port in posted_to  # the holder's own fast path, beside the others' inbox

        # Another user's token on this session: 404 on every instance, as for an unknown id.
        async with httpx2.AsyncClient(timeout=10) as http:
            for _ in cluster.instances:
                foreign = await http.post(cluster.url + "/messages", params={"session_id": session_id},
                                          json={"jsonrpc": "2.0", "id": 99, "method": "tools/list"},
                                          headers={"Authorization": f"Bearer {cluster.tokens['bob']}"})
                assert foreign.status_code == 404
                invalid = await http.post(cluster.url + "/messages", params={"session_id": session_id},
                                          json={"jsonrpc": "2.0", "nonsense": True}, headers=auth)
                assert invalid.status_code == 400
    # The stream closed: the session is gone for every instance.
    async with httpx2.AsyncClient(timeout=10) as http:
        statuses: list[int] = []
        for _ in range(40):
            statuses = [(await http.post(cluster.url + "/messages", params={"session_id": session_id},
                                         json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
                                         headers=auth)).status_code for _ in cluster.instances]
            if statuses == [404, 404, 404]:
                break
            await asyncio.sleep(0.1)
        assert statuses == [404, 404, 404]


# -- a session's end reaches every instance ------------------------------------------------------


async def open_session(http: httpx2.AsyncClient, url: str, token: str) -> dict[str, str]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    resp = await http.post(url + "/mcp", json=INIT, headers=headers)
    assert resp.status_code == 200, resp.text
    session = {**headers, "Mcp-Session-Id": resp.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
    note = await http.post(url + "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers=session)
    assert note.status_code == 202
    return session


async def status(http: httpx2.AsyncClient, url: str, session: dict[str, str]) -> int:
    resp = await http.post(url + "/mcp", json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, headers=session)
    return resp.status_code


async def test_delete_on_one_instance_ends_the_stream_held_by_another(cluster: Cluster) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        session = await open_session(http, cluster.url, cluster.tokens["alice"])
        loop = asyncio.get_running_loop()
        async with http.stream("GET", cluster.url + "/mcp", headers=session) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            sid = session["Mcp-Session-Id"]
            [stream_port] = cluster.proxy.ports_of("GET", "/mcp", sid)
            deleted = await http.delete(cluster.url + "/mcp", headers=session)
            assert deleted.status_code == 200
            assert cluster.proxy.ports_of("DELETE", "/mcp", sid) != [stream_port]
            began = loop.time()

            async def drain() -> None:
                async for _ in stream.aiter_bytes():
                    pass

            await asyncio.wait_for(drain(), 5)
            took = loop.time() - began
        # About a second (the store is polled once a second), with room for a loaded machine:
        # without the announcement, the stream would stay open until the session's idle timeout.
        assert took < 2, f"the stream held by another instance ended {took:.2f} s after the DELETE"
        # Every instance that held it lets go of it within the same time.
        statuses: list[int] = []
        for _ in range(20):
            statuses = [await status(http, i.url, session) for i in cluster.instances]
            if statuses == [404, 404, 404] or loop.time() - began > 2:
                break
            await asyncio.sleep(0.1)
        assert statuses == [404, 404, 404]


async def test_a_session_used_on_one_instance_does_not_expire_on_another(tmp_path: Path) -> None:
    """Idle expiry reads the shared record: a session idle on A but used on B all the while is
    not ended by A; once nobody uses it, it expires everywhere."""
    async with running_cluster(tmp_path, "--session-idle-timeout", "1", size=2) as cluster, \
            httpx2.AsyncClient(timeout=10) as http:
        a, b = cluster.instances
        session = await open_session(http, a.url, cluster.tokens["alice"])
        began = time.monotonic()
        while time.monotonic() - began < 2:
            assert await status(http, b.url, session) == 200
            await asyncio.sleep(0.1)
        # A let go of it, or still holds it: either way its record is there, and A serves it.
        assert [await status(http, i.url, session) for i in (a, b)] == [200, 200]
        await asyncio.sleep(2.5)
        assert [await status(http, i.url, session) for i in (a, b)] == [404, 404]


async def test_the_per_user_cap_counts_sessions_on_every_instance(tmp_path: Path) -> None:
    """The cap is the user's, whichever instances hold the sessions: at the cap a new session on
    another instance is refused while the user's sessions are in use where they are, and ends the
    least recently used one (on the instance holding it too) once it is quiet."""
    async with running_cluster(tmp_path, "--max-sessions-per-user", "2", "--session-idle-timeout", "4",
                               size=2) as cluster, httpx2.AsyncClient(timeout=10) as http:
        a, b = cluster.instances
        token = cluster.tokens["alice"]
        first = await open_session(http, a.url, token)
        second = await open_session(http, a.url, token)
        refused = await http.post(b.url + "/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {token}"})
        assert refused.status_code == 429, refused.text
        # Bob's sessions are his own.
        await open_session(http, b.url, cluster.tokens["bob"])
        # Quiet for two touch intervals (a quarter of the idle timeout each): the least recently
        # used one is ended to make room, on the instance that holds it too.
        await asyncio.sleep(2.2)
        assert await status(http, a.url, second) == 200
        third = await open_session(http, b.url, token)
        await asyncio.sleep(1.2)
        assert [await status(http, i.url, first) for i in (a, b)] == [404, 404]
        assert [await status(http, i.url, s) for i in (a, b) for s in (second, third)] == [200] * 4


# -- serve --workers ---------------------------------------------------------------------------


async def test_workers_share_one_port_and_are_replaced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen([*CLI, "serve", "--workers", "2", "--port", "0", "--data-dir", str(data)],
                                      stdout=log, stderr=subprocess.STDOUT)
    try:
        url = ""
        for _ in range(200):
            found = re.search(r"serving MCP at (\S+)/mcp", log_path.read_text())
            if found:
                url = found.group(1)
                break
            assert supervisor.poll() is None, log_path.read_text()
            await asyncio.sleep(0.05)
        assert url, log_path.read_text()
        tokens = await issue_tokens(data, url)

        def workers() -> dict[int, int]:
            """slot -> pid of each worker started, the latest last."""
            return {int(slot): int(pid) for slot, pid in
                    re.findall(r"worker (\d) started \(pid (\d+)\)", log_path.read_text())}

        def served_by() -> set[int]:
            return {int(pid) for pid in re.findall(r"aiohttp\.access\[(\d+)\]", log_path.read_text())}

        async def serving(pid: int) -> None:
            for _ in range(600):
                if f"[{pid}]: StreamableHTTP session manager started" in log_path.read_text():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"worker {pid} did not start: {log_path.read_text()}")

        # A session whose requests each come on a new connection: both workers serve it.
        no_keepalive = httpx2.Limits(max_keepalive_connections=0)
        async with httpx2.AsyncClient(timeout=10, limits=no_keepalive) as http:
            session = await open_session(http, url, tokens["alice"])
            for pid in workers().values():
                await serving(pid)
            for _ in range(200):
                assert await status(http, url, session) == 200
                if len(served_by()) == 2:
                    break
            assert served_by() == set(workers().values()), (served_by(), workers())

            victim = workers()[1]
            os.kill(victim, signal.SIGKILL)
            for _ in range(10):  # the other worker serves meanwhile
                assert await status(http, url, session) == 200
            for _ in range(200):
                if workers()[1] != victim:
                    break
                await asyncio.sleep(0.05)
            assert workers()[1] != victim, log_path.read_text()
            assert f"worker 1 (pid {victim}) was killed by SIGKILL" in log_path.read_text()
            replacement = workers()[1]
            await serving(replacement)
            for _ in range(200):
                assert await status(http, url, session) == 200
                if replacement in served_by():
                    break
            assert replacement in served_by()

            # Dying again soon after its start: replaced after a longer delay, and the log says so.
            os.kill(replacement, signal.SIGKILL)
            for _ in range(200):
                if workers()[1] != replacement:
                    break
                await asyncio.sleep(0.05)
            assert re.search(rf"worker 1 \(pid {replacement}\) was killed by SIGKILL [\d.]+ s after it started "
                             r"\(2 time\(s\) in a row\); starting another in 1 s", log_path.read_text()), \
                log_path.read_text()
            assert await status(http, url, session) == 200

        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 30) == 0
        text = log_path.read_text()
        assert "all workers stopped" in text
        for pid in workers().values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        # Start-up messages once, from the supervisor.
        assert text.count("serving MCP at") == 1 and text.count("No users yet") == 1, text
        assert "Traceback" not in text, text
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


async def test_processes_starting_together_on_a_new_data_directory_share_one_key(tmp_path: Path) -> None:
    """The key file is created once, atomically: every process starting at once on an empty data
    directory (workers, instances) reads the same key, and none a half-written file."""
    data = tmp_path / "data"
    # Each process waits for the same instant, so that their first looks at the directory coincide.
    script = "import sys, time; from pathlib import Path; from server.keyfile import cookie_key; " \
             "time.sleep(max(0, float(sys.argv[2]) - time.time())); print(cookie_key(Path(sys.argv[1])).hex())"
    at = str(time.time() + 1.5)
    processes = [await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(data), at,
                                                      stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                 for _ in range(12)]
    results = [await process.communicate() for process in processes]
    assert all(process.returncode == 0 for process in processes), results
    keys = {out.decode().strip() for out, _ in results}
    assert keys == {(data / "session.key").read_bytes().hex()}
    assert [p.name for p in data.iterdir()] == ["session.key"]  # no temporary file left behind


async def test_workers_under_a_service_manager(tmp_path: Path) -> None:
    """Under systemd (`Type=notify`, `NotifyAccess=main`) the supervisor speaks for its workers:
    READY once every worker is, its own watchdog pings, STOPPING at SIGTERM. A worker whose event
    loop stops (SIGSTOP: it can no longer ping) is killed and replaced."""
    from tests.test_systemd import ManagerSocket

    path = Path(tempfile.mkdtemp(prefix="notify-")) / "notify"
    manager = ManagerSocket(str(path), str(path))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [*CLI, "serve", "--workers", "2", "--port", "0", "--data-dir", str(tmp_path / "data")],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    try:
        ready = await manager.wait_for("READY", 60)
        text = log_path.read_text()
        assert text.count("is ready") == 2, text  # both workers, before the supervisor said so
        assert re.fullmatch(r"serving MCP at \S+/mcp with 2 workers", ready.fields.get("STATUS", "")), ready.fields
        await asyncio.sleep(1.2)
        assert sum("WATCHDOG" in d.fields for d in manager.drain()) >= 2

        [stuck] = [int(pid) for slot, pid in re.findall(r"worker (\d) started \(pid (\d+)\)", text) if slot == "2"]
        os.kill(stuck, signal.SIGSTOP)
        for _ in range(200):
            if re.search(rf"worker 2 \(pid {stuck}\) sent no watchdog ping", log_path.read_text()) and \
                    len(re.findall(r"worker 2 started", log_path.read_text())) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(re.findall(r"worker 2 started", log_path.read_text())) == 2, log_path.read_text()
        with pytest.raises(ProcessLookupError):
            os.kill(stuck, 0)
        assert sum("READY" in d.fields for d in manager.drain()) == 1  # said once, not per worker

        supervisor.send_signal(signal.SIGTERM)
        stopping = await manager.wait_for("STOPPING", 10)
        assert stopping.fields.get("STATUS", "").startswith("draining")
        assert await asyncio.to_thread(supervisor.wait, 30) == 0, log_path.read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        manager.close()
        shutil.rmtree(path.parent, ignore_errors=True)


def _serving_workers(log_path: Path) -> dict[int, int]:
    """slot -> pid of each worker that said it is ready, the latest last."""
    return {int(slot): int(pid) for slot, pid in
            re.findall(r"worker (\d) \(pid (\d+)\) is ready", log_path.read_text())}


@pytest.mark.parametrize("where", ["main port", "metrics_address"])
async def test_a_scrape_of_one_worker_shows_every_worker(tmp_path: Path, where: str) -> None:
    """With `--workers 2` a scrape reaches one worker, and answers for both: each worker's series
    labelled with its slot, counts that add up to what was served, whichever worker is scraped,
    and again once a killed worker is replaced."""
    from prometheus_client.parser import text_string_to_metric_families

    token = secrets.token_hex(16)
    log_path = tmp_path / "serve.log"
    flags = ["--metrics-address", f"127.0.0.1:{free_socket().getsockname()[1]}"] if where == "metrics_address" else []
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen([*CLI, "serve", "--workers", "2", "--port", "0", "--data-dir",
                                       str(tmp_path / "data"), *flags],
                                      stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "MEMORY_MCP_METRICS_TOKEN": token})
    try:
        for _ in range(600):
            if len(_serving_workers(log_path)) == 2:
                break
            assert supervisor.poll() is None, log_path.read_text()
            await asyncio.sleep(0.05)
        found = re.search(r"serving MCP at (\S+)/mcp", log_path.read_text())
        assert found and len(_serving_workers(log_path)) == 2, log_path.read_text()
        url = found.group(1)
        scrape_url = (url if where == "main port" else f"http://{flags[1]}") + "/metrics"

        async def scrape(http: httpx2.AsyncClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
            answer = await http.get(scrape_url, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
            for family in text_string_to_metric_families(answer.text):
                for sample in family.samples:
                    samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
            return samples

        def healthz_served(samples: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> float:
            return sum(value for labels, value in samples["memory_mcp_http_request_duration_seconds_count"].items()
                       if ("endpoint", "/healthz") in labels)

        no_keepalive = httpx2.Limits(max_keepalive_connections=0)  # each request may reach either worker
        async with httpx2.AsyncClient(timeout=10, limits=no_keepalive) as http:
            served = 60
            for _ in range(served):
                assert (await http.get(url + "/healthz")).status_code == 200
            for _ in range(8):
                samples = await scrape(http)
                assert samples["memory_mcp_workers_scraped"] == {(): 2.0}
                workers = {dict(labels)["worker"] for labels in samples["process_resident_memory_bytes"]}
                assert workers == {"1", "2"}, samples["process_resident_memory_bytes"]
                assert healthz_served(samples) == served
            if where == "metrics_address":
                assert (await http.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
                        ).status_code == 404
            assert (await http.get(scrape_url)).status_code == 401

            victim = _serving_workers(log_path)[1]
            os.kill(victim, signal.SIGKILL)
            for _ in range(600):
                if _serving_workers(log_path).get(1, victim) != victim:
                    break
                await asyncio.sleep(0.05)
            assert _serving_workers(log_path)[1] != victim, log_path.read_text()
            for _ in range(8):
                samples = await scrape(http)
                assert samples["memory_mcp_workers_scraped"] == {(): 2.0}
                assert {dict(labels)["worker"] for labels in samples["process_resident_memory_bytes"]} == {"1", "2"}
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 30) == 0, log_path.read_text()
        assert "Traceback" not in log_path.read_text(), log_path.read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()

"""Resource subscriptions across processes: two `memory-mcp serve` instances on one store (one
SQLite data directory, or one Redis), and `serve --workers 2` on one SQLite file. A session's
stream may be held by one process while its `resources/subscribe` and the writes reach others:
the subscriber hears every change all the same. Real processes, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from server.mcp_server import GRAPH_URI
from server.memory.graph import Entity
from server.storage.redis import RedisStorage
from server.storage.sqlite import SQLiteStorage
from tests.redis_server import RedisServer
from tests.test_multi_instance import CLI, Cluster, entity, issue_tokens, open_session, running_cluster
from tests.test_resources import Updates

pytestmark = [pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")]

SETTLE = 1.0
"""Long enough for a stream just opened to be followed by its instance's change feed (which looks
every 0.5 s on SQLite), under load."""
UPDATED = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": GRAPH_URI}}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "redis"])
async def pair(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """Two instances on one store, behind a round-robin balancer that never sticks."""
    if request.param == "sqlite":
        async with running_cluster(tmp_path_factory.mktemp("pair"), size=2) as running:
            yield running
        return
    redis = RedisServer(tmp_path_factory.mktemp("pair-redis"))
    redis.start()
    try:
        async with running_cluster(tmp_path_factory.mktemp("pair"), size=2, redis_url=redis.url) as running:
            yield running
    finally:
        redis.stop()


class Stream:
    """A session's GET stream, read in the background: the JSON-RPC messages that came on it."""

    def __init__(self, http: httpx2.AsyncClient, url: str, session: dict[str, str]) -> None:
        self.messages: list[Any] = []
        self._arrived = asyncio.Event()
        self._opened = asyncio.Event()
        self._task = asyncio.create_task(self._read(http, url, session))

    async def _read(self, http: httpx2.AsyncClient, url: str, session: dict[str, str]) -> None:
        headers = {**session, "Accept": "text/event-stream"}
        async with http.stream("GET", url + "/mcp", headers=headers, timeout=None) as response:
            assert response.status_code == 200, await response.aread()
            self._opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip():
                    self.messages.append(json.loads(line[5:]))
                    self._arrived.set()

    async def opened(self) -> None:
        await asyncio.wait_for(self._opened.wait(), 10)
        await asyncio.sleep(SETTLE)

    async def next(self, seen: int) -> Any:
        while len(self.messages) <= seen:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), 10)
        return self.messages[seen]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def rpc(http: httpx2.AsyncClient, url: str, session: dict[str, str], method: str,
              params: dict[str, Any]) -> Any:
    resp = await http.post(url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                                 "params": params})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_the_stream_on_one_instance_hears_of_writes_on_the_other(pair: Cluster, tmp_path: Path) -> None:
    """Deterministic placement: the session opened and subscribed on instance A, its GET stream on
    instance B, writes made on A, on B, and by a writer outside both (as `memory-mcp memory
    import` is)."""
    a, b = (instance.url for instance in pair.instances)
    async with httpx2.AsyncClient(timeout=10) as http:
        session = await open_session(http, a, pair.tokens["alice"])
        stream = Stream(http, b, session)
        try:
            await stream.opened()
            assert "error" not in await rpc(http, a, session, "resources/subscribe", {"uri": GRAPH_URI})
            for name, url in (("on-a", a), ("on-b", b)):
                seen = len(stream.messages)
                answer = await rpc(http, url, session, "tools/call", {"name": "create_entities",
                                                                      "arguments": entity(name)})
                assert not answer["result"].get("isError"), answer
                assert await stream.next(seen) == UPDATED

            seen = len(stream.messages)
            redis_url = _redis_url(pair)
            outside = RedisStorage(redis_url) if redis_url else SQLiteStorage(pair.data / "memory.sqlite3")
            try:
                alice = await outside.get_user_by_name("alice")
                assert alice is not None
                await outside.create_entities(alice.id, [Entity(name="imported", entityType="t", observations=[])])
            finally:
                await outside.close()
            assert await stream.next(seen) == UPDATED

            # Unsubscribed on B: the stream hears nothing more.
            assert "error" not in await rpc(http, b, session, "resources/unsubscribe", {"uri": GRAPH_URI})
            seen = len(stream.messages)
            await rpc(http, a, session, "tools/call", {"name": "create_entities", "arguments": entity("unheard")})
            await asyncio.sleep(1.5)
            assert len(stream.messages) == seen, stream.messages
        finally:
            await stream.close()


def _redis_url(cluster: Cluster) -> str | None:
    flags = list(cluster.instances[0].flags)
    return flags[flags.index("--redis-url") + 1] if "--redis-url" in flags else None


async def test_an_sdk_client_behind_the_balancer_hears_every_write(pair: Cluster) -> None:
    """The SDK's client through the round-robin balancer: its handshake, GET stream, subscription
    and the other client's writes each land on whichever instance comes next."""
    updates = Updates()
    auth = {"Authorization": f"Bearer {pair.tokens['alice']}"}
    async with httpx2.AsyncClient(headers=auth, timeout=30) as http_a, httpx2.AsyncClient(headers=auth, timeout=30) \
            as http_b, Client(streamable_http_client(pair.url + "/mcp", http_client=http_a), mode="legacy",
                              message_handler=updates.handler) as subscriber, \
            Client(streamable_http_client(pair.url + "/mcp", http_client=http_b), mode="legacy") as writer:
        await subscriber.subscribe_resource(GRAPH_URI)
        await asyncio.sleep(SETTLE)
        for i in range(4):
            seen = len(updates.uris)
            await writer.call_tool("create_entities", entity(f"balanced-{i}"))
            await updates.next(seen)
        graph = json.loads((await subscriber.read_resource(GRAPH_URI)).contents[0].text)  # type: ignore[union-attr]
        assert {f"balanced-{i}" for i in range(4)} <= {e["name"] for e in graph["entities"]}
    assert set(pair.proxy.ports_of("POST", "/mcp")) == {i.port for i in pair.instances}


async def test_workers_on_one_sqlite_file(tmp_path: Path) -> None:
    """`serve --workers 2`: every request on a new connection, so the subscription and the writes
    reach both workers, and the stream one of them."""
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
        for _ in range(600):
            if log_path.read_text().count("StreamableHTTP session manager started") >= 2:
                break
            await asyncio.sleep(0.05)

        no_keepalive = httpx2.Limits(max_keepalive_connections=0)
        async with httpx2.AsyncClient(timeout=10, limits=no_keepalive) as http:
            session = await open_session(http, url, tokens["alice"])
            stream = Stream(http, url, session)
            try:
                await stream.opened()
                assert "error" not in await rpc(http, url, session, "resources/subscribe", {"uri": GRAPH_URI})
                for i in range(6):
                    seen = len(stream.messages)
                    await rpc(http, url, session, "tools/call", {"name": "create_entities",
                                                                 "arguments": entity(f"worker-{i}")})
                    assert await stream.next(seen) == UPDATED
            finally:
                await stream.close()
        served_by = set(re.findall(r"aiohttp\.access\[(\d+)\]", log_path.read_text()))
        assert len(served_by) == 2, log_path.read_text()
    finally:
        supervisor.terminate()
        await asyncio.to_thread(supervisor.wait, 30)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


async def test_a_legacy_sse_stream_hears_of_writes_on_the_other_instance(pair: Cluster) -> None:
    """A 2024-11-05 session through the balancer: its stream on one instance, its POSTs (the
    subscription among them) passed to it from the other through the store's inbox."""
    updates = Updates()
    auth = {"Authorization": f"Bearer {pair.tokens['alice']}"}
    async with Client(sse_client(pair.url + "/sse", headers=auth), mode="legacy",
                      message_handler=updates.handler) as subscriber, \
            httpx2.AsyncClient(headers=auth, timeout=30) as http, \
            Client(streamable_http_client(pair.url + "/mcp", http_client=http), mode="legacy") as writer:
        for _ in range(2):  # one of the two goes to the instance that does not hold the stream
            await subscriber.subscribe_resource(GRAPH_URI)
        await asyncio.sleep(SETTLE)
        for i in range(4):
            seen = len(updates.uris)
            await writer.call_tool("create_entities", entity(f"legacy-{i}"))
            await updates.next(seen)
    assert set(pair.proxy.ports_of("POST", "/messages")) == {i.port for i in pair.instances}

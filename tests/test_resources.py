"""The memory as a resource (`memory://knowledge-graph`): listed, read, and subscribed to, through
the SDK's own clients (Streamable HTTP, legacy HTTP+SSE, the 2026-07-28 era), on both backends.
A subscribed session hears `notifications/resources/updated` on every change of its graph, whoever
made it: itself, another session, or a writer outside the server on the same store (as `memory-mcp
memory import` is). Several processes on one store: tests/test_resources_cluster.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from auth.crypto import hash_secret
from auth.models import Token
from server.mcp_server import GRAPH_URI, MemoryTools
from server.memory.changes import CHANGES_POLL_SECONDS
from server.memory.graph import Entity
from server.storage.redis import RedisStorage
from server.storage.sqlite import SQLiteStorage
from tests.conftest import BACKENDS, RunningServer
from tests.test_end_to_end import structured
from tests.test_mcp_http import ACCEPT, INIT
from tests.test_memory_jsonl import OFFICIAL

SERVER_BACKENDS = BACKENDS
# The SDK's client warns that resources/subscribe is gone from 2026-07-28 on; these sessions are
# of the eras that have it.
pytestmark = pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")

READ_WRITE = ("memory:read", "memory:write")
QUIET_SECONDS = 1.5
"""How long a test waits to be sure that no notification comes: three SQLite polls."""


async def token_for(server: RunningServer, username: str, scopes: tuple[str, ...] = READ_WRITE) -> str:
    """An access token for the user, stored as `/token` would store it."""
    user = await server.storage.get_user_by_name(username)
    assert user is not None
    secret = secrets.token_urlsafe(32)
    now = time.time()
    await server.storage.save_tokens([Token(hash_secret(secret), "access", f"grant-{secrets.token_hex(4)}",
                                            "client-1", user.id, scopes, server.url + "/mcp", now, now + 3600)])
    return secret


class Updates:
    """The resource-updated notifications a client received."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self._arrived = asyncio.Condition()

    async def handler(self, message: Any) -> None:
        notification = getattr(message, "root", message)
        if getattr(notification, "method", None) == "notifications/resources/updated":
            async with self._arrived:
                self.uris.append(str(notification.params.uri))
                self._arrived.notify_all()

    async def next(self, seen: int, timeout: float = 10.0) -> None:
        """Wait until more than `seen` notifications arrived."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.uris) > seen), timeout)

    async def none_after(self, seen: int) -> None:
        await asyncio.sleep(QUIET_SECONDS)
        assert len(self.uris) == seen, self.uris


@asynccontextmanager
async def streamable(server: RunningServer, token: str, updates: Updates | None = None,
                     mode: str = "legacy") -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http, \
            Client(streamable_http_client(server.url + "/mcp", http_client=http), mode=mode,
                   message_handler=updates.handler if updates is not None else None) as client:
        yield client


@asynccontextmanager
async def legacy_sse(server: RunningServer, token: str, updates: Updates) -> AsyncIterator[Client]:
    async with Client(sse_client(server.url + "/sse", headers={"Authorization": f"Bearer {token}"}),
                      mode="legacy", message_handler=updates.handler) as client:
        yield client


def entity(name: str) -> dict[str, Any]:
    return {"entities": [{"name": name, "entityType": "test", "observations": [f"about {name}"]}]}


async def subscribed_stream(server: RunningServer, client: Client) -> None:
    """Subscribe, then wait until every session's stream is open (the SDK's client opens its GET
    stream in the background after the handshake) and the change feed has looked at the store
    since: a notification goes out only on an open stream, for changes after the feed first saw
    the stream's graph."""
    await client.subscribe_resource(GRAPH_URI)
    for _ in range(200):
        sessions = server.registry.sessions()
        if sessions and all(session.listening for session in sessions):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the clients' streams did not open")
    await asyncio.sleep(CHANGES_POLL_SECONDS + 0.2)


# -- listing and reading -------------------------------------------------------------------------


async def test_the_graph_is_listed_and_read_as_json(server: RunningServer) -> None:
    token = await token_for(server, "alice")
    async with streamable(server, token) as client:
        capabilities = client.server_capabilities.resources
        assert capabilities is not None and capabilities.subscribe is True
        listed = (await client.list_resources()).resources
        assert [(r.uri, r.name, r.mime_type) for r in listed] == [(GRAPH_URI, "knowledge-graph", "application/json")]
        assert listed[0].title and listed[0].description

        empty = (await client.read_resource(GRAPH_URI)).contents
        assert [(c.uri, c.mime_type) for c in empty] == [(GRAPH_URI, "application/json")]
        assert json.loads(empty[0].text) == {"entities": [], "relations": []}  # type: ignore[union-attr]

        await client.call_tool("create_entities", entity("Ada"))
        await client.call_tool("create_relations", {"relations": [{"from": "Ada", "to": "Ada",
                                                                   "relationType": "knows"}]})
        read = (await client.read_resource(GRAPH_URI)).contents[0]
        assert json.loads(read.text) == structured(await client.call_tool("read_graph", {}))  # type: ignore[union-attr]


async def test_each_caller_reads_their_own_graph(server: RunningServer) -> None:
    async with streamable(server, await token_for(server, "alice")) as alice:
        await alice.call_tool("create_entities", entity("alice's"))
    async with streamable(server, await token_for(server, "bob")) as bob:
        graph = json.loads((await bob.read_resource(GRAPH_URI)).contents[0].text)  # type: ignore[union-attr]
    assert graph == {"entities": [], "relations": []}


async def test_an_unknown_resource_is_invalid_params(server: RunningServer) -> None:
    async with streamable(server, await token_for(server, "alice")) as client:
        for call in (client.read_resource, client.subscribe_resource, client.unsubscribe_resource):
            with pytest.raises(MCPError) as refused:
                await call("memory://someone-else")
            assert refused.value.error.code == -32602
            assert "Unknown resource" in refused.value.error.message


async def test_reading_needs_the_read_scope(server: RunningServer, http: httpx2.AsyncClient) -> None:
    token = await token_for(server, "alice", ("memory:write",))
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    opened = await http.post(server.url + "/mcp", json=INIT, headers=headers)
    session = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
    listed = await http.post(server.url + "/mcp", headers=session,
                             json={"jsonrpc": "2.0", "id": 2, "method": "resources/list"})
    assert listed.status_code == 200 and GRAPH_URI in listed.text
    for method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        refused = await http.post(server.url + "/mcp", headers=session,
                                  json={"jsonrpc": "2.0", "id": 3, "method": method, "params": {"uri": GRAPH_URI}})
        assert refused.status_code == 403, (method, refused.text)
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        assert "memory:read" in refused.headers["www-authenticate"]


async def test_the_2026_era_reads_but_cannot_subscribe(server: RunningServer) -> None:
    """2026-07-28 has no sessions and no resources/subscribe (its subscriptions are
    subscriptions/listen streams, which this server does not serve): the SDK says so in the
    capabilities, and reading works as in every era."""
    async with streamable(server, await token_for(server, "alice"), mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        capabilities = client.server_capabilities.resources
        assert capabilities is not None and not capabilities.subscribe
        assert [r.uri for r in (await client.list_resources()).resources] == [GRAPH_URI]
        await client.call_tool("create_entities", entity("modern"))
        graph = json.loads((await client.read_resource(GRAPH_URI)).contents[0].text)  # type: ignore[union-attr]
        assert [e["name"] for e in graph["entities"]] == ["modern"]


# -- subscriptions -------------------------------------------------------------------------------


async def test_every_change_by_any_client_is_notified(server: RunningServer) -> None:
    token = await token_for(server, "alice")
    updates = Updates()
    async with streamable(server, token, updates) as subscriber, streamable(server, token) as other:
        await subscribed_stream(server, subscriber)
        # Another session of the same user: each kind of write.
        writes: list[tuple[str, dict[str, Any]]] = [
            ("create_entities", entity("A")),
            ("create_relations", {"relations": [{"from": "A", "to": "B", "relationType": "knows"}]}),
            ("add_observations", {"observations": [{"entityName": "A", "contents": ["more"]}]}),
            ("delete_observations", {"deletions": [{"entityName": "A", "observations": ["more"]}]}),
            ("delete_relations", {"relations": [{"from": "A", "to": "B", "relationType": "knows"}]}),
            ("delete_entities", {"entityNames": ["A"]}),
        ]
        for name, arguments in writes:
            seen = len(updates.uris)
            structured(await other.call_tool(name, arguments))
            await updates.next(seen)
        # The subscriber's own write too (the spec: on every change).
        seen = len(updates.uris)
        await subscriber.call_tool("create_entities", entity("mine"))
        await updates.next(seen)
        assert set(updates.uris) == {GRAPH_URI}

        # Reads and writes that change nothing are not changes.
        seen = len(updates.uris)
        await other.call_tool("read_graph", {})
        await other.call_tool("create_entities", entity("mine"))  # exists: skipped
        await other.call_tool("delete_entities", {"entityNames": ["nobody"]})
        await updates.none_after(seen)

        # Unsubscribed: nothing more.
        await subscriber.unsubscribe_resource(GRAPH_URI)
        await other.call_tool("create_entities", entity("after"))
        await updates.none_after(seen)


async def test_a_burst_of_writes_is_coalesced(server: RunningServer) -> None:
    token = await token_for(server, "alice")
    updates = Updates()
    async with streamable(server, token, updates) as subscriber, streamable(server, token) as other:
        await subscribed_stream(server, subscriber)
        await asyncio.gather(*(other.call_tool("create_entities", entity(f"burst-{i}")) for i in range(20)))
        await updates.next(0)
        await asyncio.sleep(QUIET_SECONDS)
        assert 1 <= len(updates.uris) < 20, updates.uris


async def test_only_sessions_subscribed_to_the_changed_graph_hear(server: RunningServer) -> None:
    alice_token, bob_token = await token_for(server, "alice"), await token_for(server, "bob")
    alice_updates, listener_updates, bob_updates = Updates(), Updates(), Updates()
    async with streamable(server, alice_token, alice_updates) as alice, \
            streamable(server, alice_token, listener_updates), \
            streamable(server, bob_token, bob_updates) as bob:
        await subscribed_stream(server, alice)
        await subscribed_stream(server, bob)
        await bob.call_tool("create_entities", entity("bob's"))
        await bob_updates.next(0)
        await alice.call_tool("create_entities", entity("alice's"))
        await alice_updates.next(0)
        await asyncio.sleep(QUIET_SECONDS)
        assert len(alice_updates.uris) == 1 and len(bob_updates.uris) == 1
        assert listener_updates.uris == []  # alice's other session has a stream but never subscribed


async def test_a_writer_outside_the_server_is_notified(server: RunningServer) -> None:
    """A write through another connection to the store, as `memory-mcp memory import` or another
    process makes: the server hears of it from the store, not from its own tools."""
    updates = Updates()
    alice = await server.storage.get_user_by_name("alice")
    assert alice is not None
    redis_url = server.settings.redis_url
    outside = RedisStorage(redis_url) if redis_url is not None else SQLiteStorage(server.settings.database_path)
    try:
        async with streamable(server, await token_for(server, "alice"), updates) as subscriber:
            await subscribed_stream(server, subscriber)
            await outside.create_entities(alice.id, [Entity(name="imported", entityType="t", observations=["x"])])
            await updates.next(0)
            graph = json.loads((await subscriber.read_resource(GRAPH_URI)).contents[0].text)  # type: ignore[union-attr]
            assert [e["name"] for e in graph["entities"]] == ["imported"]
    finally:
        await outside.close()


async def test_a_legacy_sse_session_subscribes(server: RunningServer) -> None:
    token = await token_for(server, "alice")
    updates = Updates()
    async with legacy_sse(server, token, updates) as client, streamable(server, token) as other:
        capabilities = client.server_capabilities.resources
        assert capabilities is not None and capabilities.subscribe is True
        assert [r.uri for r in (await client.list_resources()).resources] == [GRAPH_URI]
        await subscribed_stream(server, client)
        await other.call_tool("create_entities", entity("seen over SSE"))
        await updates.next(0)
        await client.call_tool("create_entities", entity("and my own"))
        await updates.next(1)
        await client.unsubscribe_resource(GRAPH_URI)
        await other.call_tool("create_entities", entity("unheard"))
        await updates.none_after(2)


async def test_subscriptions_are_kept_with_the_session_record(server: RunningServer) -> None:
    """The subscription lives in the session's record (whichever process holds the stream reads
    it there), and goes with it."""
    token = await token_for(server, "alice")
    async with streamable(server, token) as client:
        await client.subscribe_resource(GRAPH_URI)
        await client.subscribe_resource(GRAPH_URI)  # again: still one
        [record] = await server.storage.list_sessions()
        assert record.subscriptions == (GRAPH_URI,)
        await client.unsubscribe_resource(GRAPH_URI)
        assert (await server.storage.get_session(record.session_id)).subscriptions == ()  # type: ignore[union-attr]
        await client.subscribe_resource(GRAPH_URI)
    assert await server.storage.get_session(record.session_id) is None
    assert await server.storage.set_subscriptions(record.session_id, (GRAPH_URI,)) is False
    assert await server.storage.get_session(record.session_id) is None


async def test_a_server_without_sessions_does_not_offer_subscriptions(tmp_path: Path) -> None:
    """`MemoryTools.server()` without `subscribable` (a server that delivers no notifications)
    lists and reads the resource, and does not advertise what it would not do."""
    storage = SQLiteStorage(tmp_path / "memory.sqlite3")
    try:
        async with Client(MemoryTools(storage).server(), mode="legacy") as client:
            capabilities = client.server_capabilities.resources
            assert capabilities is not None and not capabilities.subscribe
            assert [r.uri for r in (await client.list_resources()).resources] == [GRAPH_URI]
    finally:
        await storage.close()


async def test_memory_import_from_the_command_line_is_notified(server: RunningServer) -> None:
    """`memory-mcp memory import` run beside the server writes through the store: subscribers hear it."""
    updates = Updates()
    async with streamable(server, await token_for(server, "alice"), updates) as subscriber:
        await subscribed_stream(server, subscriber)
        imported = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "server", "memory", "import", "--user", "alice",
                             str(OFFICIAL / "quirks.jsonl"), *server.store_args()],
            capture_output=True, text=True, timeout=120)
        assert imported.returncode == 0, imported.stderr
        await updates.next(0)
        graph = json.loads((await subscriber.read_resource(GRAPH_URI)).contents[0].text)  # type: ignore[union-attr]
        assert len(graph["entities"]) == 4  # what the file holds

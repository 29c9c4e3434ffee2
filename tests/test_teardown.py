"""Sessions end when the user's access ends, when they are idle, at the caps, and at shutdown (SIGTERM:
requests in flight are answered first)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

from server.storage.redis import RedisStorage
from tests.browser import Browser, parse_forms
from tests.conftest import BACKENDS, OAuthUser, RunningServer, start_server, tokens_by_hand
from tests.test_mcp_http import ACCEPT, INIT, open_session

# Every test but the SIGTERM ones (below) runs on both backends: how a session learns that it must
# end goes through the store.
SERVER_BACKENDS = BACKENDS
BOTH = "memory:read memory:write"


async def stream_ends(http: httpx2.AsyncClient, url: str, headers: dict[str, str], trigger: asyncio.Task[None],
                      within: float) -> float:
    """Open the standalone GET stream, run `trigger`, and return how long the stream took to close."""
    loop = asyncio.get_running_loop()
    async with http.stream("GET", url, headers=headers) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        started = loop.time()
        trigger_task = asyncio.ensure_future(trigger)

        async def drain() -> None:
            async for _ in stream.aiter_bytes():
                pass

        await asyncio.wait_for(drain(), within)
        await trigger_task
        return loop.time() - started


async def test_logout_ends_live_sessions(http: httpx2.AsyncClient, server: RunningServer) -> None:
    browser = Browser("alice", "alice-password-1")
    try:
        tokens = await tokens_by_hand(server, "alice", "alice-password-1", BOTH, browser=browser)
        session = await open_session(http, server, tokens["access_token"])

        async def sign_out() -> None:
            await asyncio.sleep(0.2)
            async with browser.session.get(server.url + "/logout") as page:
                form = parse_forms(await page.text())[0]
            async with browser.session.post(server.url + "/logout", data=form.fields) as done:
                assert done.status == 200

        await stream_ends(http, server.url + "/mcp", session, asyncio.ensure_future(sign_out()), within=5)
    finally:
        await browser.close()
    assert len(server.registry) == 0
    after = await http.post(server.url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 1,
                                                                         "method": "tools/list"})
    assert after.status_code == 401 and 'error="invalid_token"' in after.headers["www-authenticate"]


async def test_access_token_revocation_ends_that_clients_sessions(http: httpx2.AsyncClient,
                                                                   server: RunningServer) -> None:
    first = await tokens_by_hand(server, "alice", "alice-password-1", BOTH)
    second = await tokens_by_hand(server, "alice", "alice-password-1", BOTH)
    doomed = await open_session(http, server, first["access_token"])
    kept = await open_session(http, server, second["access_token"])

    async def revoke() -> None:
        await asyncio.sleep(0.2)
        resp = await http.post(server.url + "/revoke", data={"token": first["access_token"],
                                                              "client_id": first["client_id"]})
        assert resp.status_code == 200

    await stream_ends(http, server.url + "/mcp", doomed, asyncio.ensure_future(revoke()), within=5)
    assert [s.session_id for s in server.registry.sessions()] == [kept["Mcp-Session-Id"]]


async def test_user_removed_from_the_command_line_is_disconnected(http: httpx2.AsyncClient,
                                                                   server: RunningServer) -> None:
    tokens = await tokens_by_hand(server, "bob", "bob-password-22", BOTH)
    session = await open_session(http, server, tokens["access_token"])

    async def remove() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "users", "remove", "bob", *server.store_args(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err

    took = await stream_ends(http, server.url + "/mcp", session, asyncio.ensure_future(remove()), within=10)
    assert took < 5
    assert len(server.registry) == 0
    after = await http.post(server.url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 1,
                                                                         "method": "tools/list"})
    assert after.status_code == 401


async def test_expired_access_token_then_refresh_continues_the_session(http: httpx2.AsyncClient,
                                                                       server: RunningServer) -> None:
    from auth.crypto import hash_secret

    tokens = await tokens_by_hand(server, "alice", "alice-password-1", BOTH)
    session = await open_session(http, server, tokens["access_token"])
    token_hash = hash_secret(tokens["access_token"])
    if isinstance(server.storage, RedisStorage):
        await server.storage.client.hset(server.storage.key("token", token_hash), "expires_at", 1)
    else:
        server.sqlite.db.conn.execute("UPDATE auth_tokens SET expires_at = 1 WHERE token_hash = ?", (token_hash,))
    # Editing the store behind the server's back is like a change made by another process: the
    # verifier's one-second memory of verified tokens (auth/rfc6750.py) lets it show after that.
    await asyncio.sleep(1.1)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    expired = await http.post(server.url + "/mcp", headers=session, json=call)
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    assert "resource_metadata=" in expired.headers["www-authenticate"]
    assert len(server.registry) == 1  # an expired token does not end the session

    fresh = (await http.post(server.url + "/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": tokens["client_id"]})).json()
    resumed = await http.post(server.url + "/mcp", json=call,
                              headers={**session, "Authorization": f"Bearer {fresh['access_token']}"})
    assert resumed.status_code == 200


async def test_idle_sessions_expire(http: httpx2.AsyncClient, tmp_path: Path, store_settings: dict[str, Any]) -> None:
    from auth import accounts

    server = await start_server(tmp_path / "data", session_idle_timeout=0.5, **store_settings)
    try:
        await accounts.add_user(server.storage, "alice", "alice-password-1")
        tokens = await tokens_by_hand(server, "alice", "alice-password-1", BOTH)
        session = await open_session(http, server, tokens["access_token"])
        for _ in range(40):
            if not len(server.registry):
                break
            await asyncio.sleep(0.1)
        assert len(server.registry) == 0
        gone = await http.post(server.url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 1,
                                                                            "method": "tools/list"})
        assert gone.status_code == 404
        assert await server.storage.list_sessions() == []
    finally:
        await server.stop()


async def test_session_caps(http: httpx2.AsyncClient, tmp_path: Path, store_settings: dict[str, Any]) -> None:
    """At the user's cap, a new session ends the user's least recently used idle session, the
    same client's first; only when none is idle is it refused. The server-wide cap refuses."""
    from auth import accounts

    server = await start_server(tmp_path / "data", max_sessions_per_user=2, max_sessions=3, **store_settings)
    try:
        for name in ("alice", "bob"):
            await accounts.add_user(server.storage, name, f"{name}-password-1")
        # Two clients of Alice's (each registration is a client of its own), one of Bob's.
        first = (await tokens_by_hand(server, "alice", "alice-password-1", BOTH))["access_token"]
        second = (await tokens_by_hand(server, "alice", "alice-password-1", BOTH))["access_token"]
        bob = (await tokens_by_hand(server, "bob", "bob-password-1", BOTH))["access_token"]
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}

        async def status(session: dict[str, str]) -> int:
            return (await http.post(server.url + "/mcp", json=call, headers=session)).status_code

        oldest = await open_session(http, server, first)
        newer = await open_session(http, server, first)
        assert await status(oldest) == 200  # now `newer` is the first client's least recently used
        # The second client is not locked out by the first: the least recently used idle session
        # of the user goes, and the second client has none of its own.
        other = await open_session(http, server, second)
        assert [await status(s) for s in (oldest, newer, other)] == [200, 404, 200]
        # The first client again: its own idle session goes, not the other client's, though that
        # one is the least recently used now.
        assert await status(oldest) == 200
        again = await open_session(http, server, first)
        assert [await status(s) for s in (oldest, other, again)] == [404, 200, 200]

        # Sessions with an open stream are never ended to make room: with none idle, 429.
        async with http.stream("GET", server.url + "/mcp", headers=other) as one, \
                http.stream("GET", server.url + "/mcp", headers=again) as two:
            assert one.status_code == two.status_code == 200
            third = await http.post(server.url + "/mcp", json=init,
                                    headers={**ACCEPT, "Authorization": f"Bearer {first}"})
            assert third.status_code == 429
            assert "2 open MCP sessions, none of them idle" in third.json()["error"]["message"]
        assert [await status(s) for s in (other, again)] == [200, 200]

        await open_session(http, server, bob)
        full = await http.post(server.url + "/mcp", json=init, headers={**ACCEPT, "Authorization": f"Bearer {bob}"})
        assert full.status_code == 503 and "maximum of 3" in full.json()["error"]["message"]
        assert len(server.registry) == 3
    finally:
        await server.stop()


# --- SIGTERM: requests in flight are answered, then sessions and streams end, then the process exits ---
# On SQLite only: a process's shutdown, which the store does not take part in.

REPO = Path(__file__).resolve().parents[1]


class SlowServer:
    """tests/slow_server.py as a process: the real app whose one tool takes its time, run as
    `memory-mcp serve` runs; its log in a file."""

    def __init__(self, tmp_path: Path, shutdown_timeout: float) -> None:
        data = tmp_path / "data"
        added = subprocess.run([sys.executable, "-m", "server", "users", "add", "alice", "--password-stdin",
                                "--data-dir", str(data)], input="alice-password-1\n", capture_output=True,
                               text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        self.log_path = tmp_path / "slow-server.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.slow_server", "--data-dir", str(data),
                 "--shutdown-timeout", str(shutdown_timeout)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.url = ""

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    async def started(self) -> None:
        for _ in range(300):
            found = re.search(r"serving at (\S+)", self.log)
            if found:
                self.url = found.group(1)
                try:
                    async with httpx2.AsyncClient() as http:
                        if (await http.get(self.url + "/healthz")).status_code == 200:
                            return
                except httpx2.TransportError:
                    pass
            assert self.proc.poll() is None, self.log
            await asyncio.sleep(0.1)
        raise AssertionError(f"the server did not start: {self.log}")

    async def tool_started(self) -> None:
        for _ in range(100):
            if "slow tool started" in self.log:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the tool call never started: {self.log}")

    async def token(self) -> str:
        user = OAuthUser(self.url, "alice", "alice-password-1")
        async with user.client() as (client, _):
            await client.list_tools()
        assert user.storage.tokens is not None
        return user.storage.tokens.access_token

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in an SSE body (the `data:` lines of its events)."""
    found = []
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            try:
                found.append(json.loads(line[5:]))
            except ValueError:
                continue  # the legacy transport's endpoint event
    return found


SLOW_CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
             "params": {"name": "slow", "arguments": {"seconds": 1.5, "reply": "answered after SIGTERM"}}}


async def test_sigterm_answers_a_call_in_flight_on_the_sdk_transport(tmp_path: Path) -> None:
    """A tool call that the session's SDK transport serves (not the direct path) is in flight when
    SIGTERM comes, and the session has an open GET stream: the call is answered whole, then the
    stream ends cleanly (the chunked body is terminated, not reset), then the process exits 0,
    all within shutdown_timeout."""
    window = 8.0
    server = SlowServer(tmp_path, shutdown_timeout=window)
    try:
        await server.started()
        token = await server.token()
        async with httpx2.AsyncClient(timeout=30) as http:
            headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
            init = await http.post(server.url + "/mcp", json=INIT, headers=headers)
            assert init.status_code == 200, init.text
            session = {**headers, "Mcp-Session-Id": init.headers["mcp-session-id"],
                       "MCP-Protocol-Version": "2025-06-18"}
            note = await http.post(server.url + "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                   headers=session)
            assert note.status_code == 202

            async def call() -> tuple[str, str]:
                async with http.stream("POST", server.url + "/mcp", json=SLOW_CALL, headers=session) as resp:
                    assert resp.status_code == 200
                    return resp.headers["content-type"], (await resp.aread()).decode()

            async def stream() -> str:
                async with http.stream("GET", server.url + "/mcp", headers=session) as resp:
                    assert resp.status_code == 200
                    # Raises (httpx2.RemoteProtocolError) if the stream is cut rather than ended.
                    return (await resp.aread()).decode()

            streaming = asyncio.ensure_future(stream())
            calling = asyncio.ensure_future(call())
            await server.tool_started()
            began = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            content_type, body = await asyncio.wait_for(calling, window)
            await asyncio.wait_for(streaming, window)
            code = await asyncio.wait_for(asyncio.to_thread(server.proc.wait), window)
            took = time.monotonic() - began
    finally:
        server.kill()
    log = server.log
    assert content_type.startswith("text/event-stream"), "the call went through the SDK transport"
    answers = [m for m in sse_messages(body) if m.get("id") == 7]
    assert answers and answers[0]["result"]["content"][0]["text"] == "answered after SIGTERM", (body, log)
    assert code == 0, log
    assert took < window, f"the process took {took:.1f}s to exit"
    assert "Traceback" not in log and "still in flight" not in log, log


async def test_sigterm_answers_a_call_in_flight_on_the_legacy_sse_transport(tmp_path: Path) -> None:
    """The same on the 2024-11-05 transport, where the answer travels on the session's GET /sse
    stream after the POST got its 202: the stream carries the answer, then ends cleanly."""
    window = 8.0
    server = SlowServer(tmp_path, shutdown_timeout=window)
    try:
        await server.started()
        token = await server.token()
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(timeout=30) as http, \
                http.stream("GET", server.url + "/sse", headers=auth) as events:
            assert events.status_code == 200
            lines = events.aiter_lines()
            endpoint = None
            async for line in lines:
                if line.startswith("data:") and "session_id=" in line:
                    endpoint = line[5:].strip()
                    break
            assert endpoint is not None
            post = {**auth, "Content-Type": "application/json"}
            for message in (INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"}):
                assert (await http.post(server.url + endpoint, json=message, headers=post)).status_code == 202
            assert (await http.post(server.url + endpoint, json=SLOW_CALL, headers=post)).status_code == 202
            await server.tool_started()
            began = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)

            async def rest() -> str:
                # Raises (httpx2.RemoteProtocolError) if the stream is cut rather than ended.
                return "\n".join([line async for line in lines])

            body = await asyncio.wait_for(rest(), window)
            code = await asyncio.wait_for(asyncio.to_thread(server.proc.wait), window)
            took = time.monotonic() - began
    finally:
        server.kill()
    log = server.log
    answers = [m for m in sse_messages(body) if m.get("id") == 7]
    assert answers and answers[0]["result"]["content"][0]["text"] == "answered after SIGTERM", (body, log)
    assert code == 0, log
    assert took < window, f"the process took {took:.1f}s to exit"
    assert "Traceback" not in log and "still in flight" not in log, log


async def test_a_call_longer_than_the_shutdown_window_is_ended_in_time(tmp_path: Path) -> None:
    """The window bounds the drain: a call that would outlast it is cut, and the process still
    exits 0 well within twice the window (what the unit's TimeoutStopSec allows for)."""
    window = 1.5
    server = SlowServer(tmp_path, shutdown_timeout=window)
    try:
        await server.started()
        token = await server.token()
        async with httpx2.AsyncClient(timeout=30) as http:
            headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
            init = await http.post(server.url + "/mcp", json=INIT, headers=headers)
            session = {**headers, "Mcp-Session-Id": init.headers["mcp-session-id"],
                       "MCP-Protocol-Version": "2025-06-18"}
            long_call = {**SLOW_CALL, "params": {"name": "slow", "arguments": {"seconds": 60, "reply": "never"}}}

            async def call() -> str:
                try:
                    async with http.stream("POST", server.url + "/mcp", json=long_call, headers=session) as resp:
                        return (await resp.aread()).decode()
                except httpx2.TransportError as exc:
                    return repr(exc)

            calling = asyncio.ensure_future(call())
            await server.tool_started()
            began = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(asyncio.to_thread(server.proc.wait), 4 * window)
            took = time.monotonic() - began
            body = await asyncio.wait_for(calling, 5)
    finally:
        server.kill()
    log = server.log
    assert "never" not in body
    assert code == 0, log
    assert window - 0.5 < took < 2 * window + 1, f"the process took {took:.1f}s to exit"
    assert "1 MCP session(s) with requests still in flight" in log, log

"""Sessions end when the user's access ends, and when they are idle, and at the caps."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx2

from tests.browser import Browser, parse_forms
from tests.conftest import RunningServer, start_server, tokens_by_hand
from tests.test_mcp_http import ACCEPT, open_session

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
    data_dir = server.sqlite.db.path.parent

    async def remove() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "users", "remove", "bob", "--data-dir", str(data_dir),
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
    server.sqlite.db.conn.execute("UPDATE auth_tokens SET expires_at = 1 WHERE token_hash = ?",
                                   (hash_secret(tokens["access_token"]),))
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


async def test_idle_sessions_expire(http: httpx2.AsyncClient, tmp_path: Path) -> None:
    from auth import accounts

    server = await start_server(tmp_path / "data", session_idle_timeout=0.5)
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
        assert server.sqlite.db.conn.execute("SELECT count(*) FROM mcp_sessions").fetchone()[0] == 0
    finally:
        await server.stop()


async def test_session_caps(http: httpx2.AsyncClient, tmp_path: Path) -> None:
    """At the user's cap, a new session ends the user's least recently used idle session, the
    same client's first; only when none is idle is it refused. The server-wide cap refuses."""
    from auth import accounts

    server = await start_server(tmp_path / "data", max_sessions_per_user=2, max_sessions=3)
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

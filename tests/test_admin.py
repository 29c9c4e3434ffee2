"""`memory-mcp clients|sessions|tokens`: run beside a live server, effective on live sessions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx2
import pytest

from tests.browser import Browser
from tests.conftest import RunningServer, tokens_by_hand
from tests.test_mcp_http import open_session

BOTH = "memory:read memory:write"


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10) as client:
        yield client


async def cli(server: RunningServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, "--data-dir", str(server.storage.db.path.parent),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def ended(server: RunningServer, session_id: str, within: float = 5.0) -> bool:
    for _ in range(int(within / 0.1)):
        if all(s.session_id != session_id for s in server.registry.sessions()):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_clients_list_and_remove(http: httpx2.AsyncClient, server: RunningServer) -> None:
    tokens = await tokens_by_hand(server, "alice", "alice-password-1", BOTH)
    session = await open_session(http, server, tokens["access_token"])
    listed = await cli(server, "clients", "list")
    assert listed.returncode == 0 and tokens["client_id"] in listed.stdout and "by hand" in listed.stdout

    removed = await cli(server, "clients", "remove", tokens["client_id"])
    assert removed.returncode == 0, removed.stderr
    assert await ended(server, session["Mcp-Session-Id"])
    after = await http.post(server.url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 1,
                                                                         "method": "tools/list"})
    assert after.status_code == 401
    assert tokens["client_id"] not in (await cli(server, "clients", "list")).stdout
    missing = await cli(server, "clients", "remove", tokens["client_id"])
    assert missing.returncode == 1 and "clients list" in missing.stderr


async def test_sessions_list_and_revoke_one(http: httpx2.AsyncClient, server: RunningServer) -> None:
    alice = await tokens_by_hand(server, "alice", "alice-password-1", BOTH)
    bob = await tokens_by_hand(server, "bob", "bob-password-22", BOTH)
    alice_session = await open_session(http, server, alice["access_token"])
    bob_session = await open_session(http, server, bob["access_token"])

    listed = await cli(server, "sessions", "list")
    assert alice_session["Mcp-Session-Id"] in listed.stdout and "alice" in listed.stdout
    only_bob = await cli(server, "sessions", "list", "--user", "bob")
    assert bob_session["Mcp-Session-Id"] in only_bob.stdout and alice_session["Mcp-Session-Id"] not in only_bob.stdout

    revoked = await cli(server, "sessions", "revoke", alice_session["Mcp-Session-Id"])
    assert revoked.returncode == 0, revoked.stderr
    assert await ended(server, alice_session["Mcp-Session-Id"])
    assert [s.session_id for s in server.registry.sessions()] == [bob_session["Mcp-Session-Id"]]
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert (await http.post(server.url + "/mcp", headers=alice_session, json=call)).status_code == 401
    assert (await http.post(server.url + "/mcp", headers=bob_session, json=call)).status_code == 200

    unknown = await cli(server, "sessions", "revoke", "nope")
    assert unknown.returncode == 1 and "sessions list" in unknown.stderr
    neither = await cli(server, "sessions", "revoke")
    assert neither.returncode == 1 and "--user" in neither.stderr


async def test_sessions_revoke_user_and_tokens_revoke(http: httpx2.AsyncClient, server: RunningServer) -> None:
    bob = await tokens_by_hand(server, "bob", "bob-password-22", BOTH)
    bob_session = await open_session(http, server, bob["access_token"])
    done = await cli(server, "sessions", "revoke", "--user", "bob")
    assert done.returncode == 0, done.stderr
    assert await ended(server, bob_session["Mcp-Session-Id"])

    alice = await tokens_by_hand(server, "alice", "alice-password-1", BOTH)
    alice_session = await open_session(http, server, alice["access_token"])
    done = await cli(server, "tokens", "revoke", "--user", "alice")
    assert done.returncode == 0 and "revoked" in done.stdout
    assert await ended(server, alice_session["Mcp-Session-Id"])
    refresh = await http.post(server.url + "/token", data={
        "grant_type": "refresh_token", "refresh_token": alice["refresh_token"], "client_id": alice["client_id"]})
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    nobody = await cli(server, "tokens", "revoke", "--user", "carol")
    assert nobody.returncode == 1 and "users list" in nobody.stderr


async def test_keys_rotate_publishes_the_new_key_beside_the_old(http: httpx2.AsyncClient,
                                                                server: RunningServer) -> None:
    jwks_uri = (await http.get(server.url + "/.well-known/openid-configuration")).json()["jwks_uri"]
    before = {k["kid"] for k in (await http.get(jwks_uri)).json()["keys"]}
    rotated = await cli(server, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[4].rstrip(";")
    after = {k["kid"] for k in (await http.get(jwks_uri)).json()["keys"]}
    assert new_kid in after and before <= after
    assert all("d" not in k for k in (await http.get(jwks_uri)).json()["keys"])  # public keys only


async def test_password_change_signs_the_user_out_everywhere(http: httpx2.AsyncClient, server: RunningServer) -> None:
    tokens = await tokens_by_hand(server, "alice", "alice-password-1", BOTH)
    session = await open_session(http, server, tokens["access_token"])
    changed = await cli(server, "users", "passwd", "alice", "--password-stdin", stdin="a brand new password\n")
    assert changed.returncode == 0, changed.stderr
    assert await ended(server, session["Mcp-Session-Id"])
    after = await http.post(server.url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 1,
                                                                         "method": "tools/list"})
    assert after.status_code == 401
    fresh = await tokens_by_hand(server, "alice", "a brand new password", BOTH)
    assert fresh["access_token"]


async def signed_in(server: RunningServer, browser: Browser) -> bool:
    """Is `browser` signed in (its login still recorded), going by what /login shows it?"""
    async with browser.session.get(server.url + "/login") as resp:
        page = await resp.text()
    assert resp.status == 200 and (("You are signed in as" in page) != ('name="password"' in page)), page[:300]
    return "You are signed in as" in page


@pytest.mark.parametrize(("command", "ends_logins"), [
    (["users", "passwd", "alice", "--password-stdin"], True),
    (["tokens", "revoke", "--user", "alice"], True),
    (["sessions", "revoke", "--user", "alice"], True),
    (["users", "remove", "alice"], True),
    (["sessions", "revoke", "SESSION"], False),
])
async def test_which_commands_end_browser_logins(http: httpx2.AsyncClient, server: RunningServer,
                                                 command: list[str], ends_logins: bool) -> None:
    """Issue 10 defect 1: a browser that signed in earlier (perhaps with a phished password) must
    not stay signed in after the commands that say they sign the user out everywhere."""
    browsers = [Browser("alice", "alice-password-1"), Browser("alice", "alice-password-1")]
    try:
        for browser in browsers:
            tokens = await tokens_by_hand(server, "alice", "alice-password-1", BOTH, browser=browser)
            assert await signed_in(server, browser)
        session = await open_session(http, server, tokens["access_token"])
        args = [session["Mcp-Session-Id"] if a == "SESSION" else a for a in command]
        done = await cli(server, *args, stdin="a brand new password\n")
        assert done.returncode == 0, done.stderr
        # Every command says whether it ends browser logins, in its output and its --help.
        assert ("browser login" in done.stdout) == ends_logins, done.stdout
        helped = await cli(server, *command[:2], "--help")
        assert "browser login" in " ".join(helped.stdout.split()), helped.stdout
        assert [await signed_in(server, b) for b in browsers] == [not ends_logins] * 2
    finally:
        for browser in browsers:
            await browser.close()

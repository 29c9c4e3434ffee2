"""`memory-mcp clients|sessions|tokens`: run beside a live server, effective on live sessions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx2
import pytest

from auth import accounts
from server import admin
from server.storage import Storage
from server.storage.redis import RedisStorage
from server.storage.sqlite import SQLiteStorage
from tests.browser import Browser
from tests.conftest import BACKENDS, RunningServer, start_server, tokens_by_hand
from tests.graph_backends import SQLiteStore, rows_of
from tests.test_mcp_http import open_session, sse_or_json

SERVER_BACKENDS = BACKENDS
BOTH = "memory:read memory:write"


async def cli(server: RunningServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, *server.store_args(),
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


# --- users remove: complete, resumable, idempotent (issue 10, defect 2) --------------------------

NUL_NAMES = ["plain", "Alice\0zzz", "\0", "tail\0"]


async def tool(http: httpx2.AsyncClient, server: RunningServer, session: dict[str, str], name: str,
               arguments: dict[str, Any]) -> tuple[int, Any]:
    resp = await http.post(server.url + "/mcp", headers=session, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
    return resp.status_code, sse_or_json(resp) if resp.status_code == 200 else None


async def remember(http: httpx2.AsyncClient, server: RunningServer, session: dict[str, str], *names: str) -> None:
    status, body = await tool(http, server, session, "create_entities", {"entities": [
        {"name": name, "entityType": "t\0", "observations": [f"about {name}"]} for name in names]})
    assert status == 200 and not body["result"].get("isError"), body
    status, body = await tool(http, server, session, "create_relations", {"relations": [
        {"from": names[0], "to": name, "relationType": "r\0"} for name in names]})
    assert status == 200 and not body["result"].get("isError"), body


async def memory_left(server: RunningServer, owner: str) -> dict[str, int]:
    """What the owner still has in the store's rows (SQLite) or keys (Redis), by where it is."""
    storage = server.storage
    store = SQLiteStore(storage.db) if isinstance(storage, SQLiteStorage) else storage
    if not isinstance(store, SQLiteStore | RedisStorage):
        raise TypeError(f"no way to look inside {type(storage).__name__}")
    return {where: count for where, count in (await rows_of(store, owner)).items() if count}


NOTHING: dict[str, int] = {}


def another_connection(server: RunningServer) -> Storage:
    """The server's store opened once more, as another process (the command line) opens it."""
    if server.settings.redis_url is not None:
        return RedisStorage(server.settings.redis_url)
    return SQLiteStorage(server.sqlite.db.path)


async def test_users_remove_racing_writes_leaves_nothing(http: httpx2.AsyncClient, server: RunningServer) -> None:
    """Writes keep coming while `users remove` runs in another process: whatever was accepted is
    gone afterwards, and nothing is accepted once the removal has begun."""
    bob = await tokens_by_hand(server, "bob", "bob-password-22", BOTH)
    session = await open_session(http, server, bob["access_token"])
    owner = (await server.storage.get_user_by_name("bob")).id  # type: ignore[union-attr]
    await remember(http, server, session, *NUL_NAMES)
    removal = asyncio.ensure_future(cli(server, "users", "remove", "bob"))
    accepted_after_removal = 0
    # Until the first refusal after the command has finished (the bearer check, or the closed
    # graph while the verification cache still lets the token through).
    for i in range(10_000):
        status, body = await tool(http, server, session, "create_entities", {"entities": [
            {"name": f"late {i}\0", "entityType": "t", "observations": ["o"]}]})
        refused = status != 200 or "error" in body or body["result"].get("isError")
        if removal.done():
            accepted_after_removal += not refused
            if refused:
                break
    done = await removal
    assert done.returncode == 0, done.stderr
    assert "removed user bob" in done.stdout
    assert accepted_after_removal == 0
    assert await memory_left(server, owner) == NOTHING
    assert await server.storage.get_user_by_name("bob") is None
    assert (await server.storage.usage(owner)).entities == 0


async def test_a_write_after_removal_by_another_connection_is_refused(http: httpx2.AsyncClient,
                                                                     server: RunningServer) -> None:
    """The running server has just verified bob's token when another process removes bob: the
    next write, let through by the verification cache, is refused by the store, not kept."""
    bob = await tokens_by_hand(server, "bob", "bob-password-22", BOTH)
    session = await open_session(http, server, bob["access_token"])
    owner = (await server.storage.get_user_by_name("bob")).id  # type: ignore[union-attr]
    await remember(http, server, session, *NUL_NAMES)
    other = another_connection(server)
    try:
        status, _ = await tool(http, server, session, "read_graph", {})  # bob's token is verified (and cached)
        assert status == 200
        assert "removed user bob" in await admin.users_remove(other, "bob")
        status, body = await tool(http, server, session, "create_entities", {"entities": [
            {"name": "late", "entityType": "t", "observations": ["o"]}]})
        assert status == 401 or "being removed" in body["result"]["content"][0]["text"]
    finally:
        await other.close()
    assert await memory_left(server, owner) == NOTHING


async def test_an_interrupted_removal_is_finished_by_running_it_again(http: httpx2.AsyncClient,
                                                                      server: RunningServer) -> None:
    bob = await tokens_by_hand(server, "bob", "bob-password-22", BOTH)
    session = await open_session(http, server, bob["access_token"])
    owner = (await server.storage.get_user_by_name("bob")).id  # type: ignore[union-attr]
    await remember(http, server, session, *NUL_NAMES)

    class Crash(Exception):
        pass

    async def crash(_owner: str) -> int:
        raise Crash  # the process died after the account was marked and its tokens revoked

    other = another_connection(server)
    try:
        other.delete_graph = crash  # type: ignore[method-assign,assignment]
        with pytest.raises(Crash):
            await admin.users_remove(other, "bob")
    finally:
        await other.close()
    assert await ended(server, session["Mcp-Session-Id"])
    assert await server.storage.get_user_by_name("bob") is None  # cannot sign in while pending
    listed = await cli(server, "users", "list")
    assert "bob (being removed: run `memory-mcp users remove bob` to finish)" in listed.stdout
    taken = await cli(server, "users", "add", "bob", "--password-stdin", stdin="bob-password-33\n")
    assert taken.returncode == 1 and "its removal was interrupted: `memory-mcp users remove bob`" in taken.stderr

    finished = await cli(server, "users", "remove", "bob")
    assert finished.returncode == 0, finished.stderr
    assert "finished the interrupted removal of user bob" in finished.stdout
    assert f"memory ({len(NUL_NAMES)} entities)" in finished.stdout
    assert await memory_left(server, owner) == NOTHING
    assert "bob" not in (await cli(server, "users", "list")).stdout

    again = await cli(server, "users", "remove", "bob")
    assert again.returncode == 1
    assert "no user 'bob': nothing of theirs is left to remove" in again.stderr
    assert await memory_left(server, owner) == NOTHING
    # The name can be taken again, by a new account that owns none of the old one's memory.
    added = await cli(server, "users", "add", "bob", "--password-stdin", stdin="bob-password-33\n")
    assert added.returncode == 0, added.stderr
    assert (await server.storage.get_user_by_name("bob")).id != owner  # type: ignore[union-attr]


async def test_the_configured_quota_applies_to_a_running_server(http: httpx2.AsyncClient, data_dir: Any,
                                                                store_settings: dict[str, Any]) -> None:
    running = await start_server(data_dir, memory_max_entities=2, **store_settings)
    try:
        await accounts.add_user(running.storage, "carol", "carol-password-1")
        carol = await tokens_by_hand(running, "carol", "carol-password-1", BOTH)
        session = await open_session(http, running, carol["access_token"])
        entities = [{"name": f"e{i}", "entityType": "t", "observations": []} for i in range(3)]
        status, body = await tool(http, running, session, "create_entities", {"entities": entities})
        assert status == 200 and body["result"]["isError"]
        assert "3 entities, over the limit of 2 (you store 0 now)" in body["result"]["content"][0]["text"]
        status, body = await tool(http, running, session, "create_entities", {"entities": entities[:2]})
        assert status == 200 and not body["result"].get("isError")
    finally:
        await running.stop()

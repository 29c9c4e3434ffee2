"""Personal access tokens (`memory-mcp tokens create|list|revoke`, auth.personal) against a live
server: accepted on every MCP endpoint and era like an OAuth access token, scoped, bound to this
server's resource, revoked one by one with their live sessions, and refused where an OAuth grant
is expected (/token, /userinfo)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from auth import personal
from auth.crypto import hash_secret
from server.app import SETTINGS
from tests.conftest import BACKENDS, RunningServer, tokens_by_hand
from tests.test_end_to_end import TOOL_NAMES, structured
from tests.test_mcp_http import open_session, sse_or_json

# Every test here that takes `server` runs on SQLite and on Redis (tests/conftest.py).
SERVER_BACKENDS = BACKENDS

CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


async def cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`memory-mcp ...` in another process, on the server's store, knowing its public URL."""
    settings = server.app[SETTINGS]
    store = (["--redis-url", settings.redis_url] if settings.redis_url is not None
             else ["--data-dir", str(settings.data_dir)])
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", *args, *store,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def create(server: RunningServer, user: str = "alice", *args: str) -> tuple[str, str]:
    """A new token's id and secret, from the command's output."""
    made = await cli(server, "tokens", "create", "--user", user, "--public-url", server.url, *args)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.splitlines()[-1]
    token_id = made.stdout.split()[4]
    return token_id, secret


async def ended(server: RunningServer, session_id: str, within: float) -> float | None:
    """Seconds until the session is gone, None if it outlives `within`."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if all(s.session_id != session_id for s in server.registry.sessions()):
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    return None


async def test_create_prints_the_token_alone_on_the_last_line_and_list_never_shows_it(
        server: RunningServer) -> None:
    made = await cli(server, "tokens", "create", "--user", "alice", "--name", "laptop agent", "--public-url",
                     server.url)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    secret = lines[-1]
    assert personal.well_formed(secret) and secret.startswith("mmcp_pat_") and lines[-1].strip() == secret
    assert secret not in "\n".join(lines[:-1])
    token_id = made.stdout.split()[4]
    assert personal.valid_id(token_id)
    assert f"{server.url}/mcp" in made.stdout and "memory:read memory:write" in made.stdout
    # 90 days by default.
    alice = await server.storage.get_user_by_name("alice")
    assert alice is not None
    [record] = await server.storage.list_personal_tokens(alice.id, time.time())
    assert record.expires_at is not None and abs(record.expires_at - record.created_at - 90 * 86400) < 1
    assert record.token_hash == hash_secret(secret) and record.name == "laptop agent"

    never_id, _ = await create(server, "alice", "--scope", "memory:read", "--expires-in", "never")
    listed = await cli(server, "tokens", "list", "--user", "alice")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["ID", "NAME", "SCOPES", "CREATED", "LAST", "USED", "EXPIRES"]
    assert token_id in listed.stdout and never_id in listed.stdout and "laptop agent" in listed.stdout
    assert secret not in listed.stdout and hash_secret(secret) not in listed.stdout and "mmcp_pat_" not in listed.stdout
    never_row = next(line for line in listed.stdout.splitlines() if line.startswith(never_id))
    assert never_row.split()[-1] == "never"
    assert (await cli(server, "tokens", "list", "--user", "bob")).stdout.strip() == "no personal access tokens for bob"

    for bad, says in ((["--scope", "memory:read openid"], "openid"), (["--scope", "memory:admin"], "memory:admin"),
                      (["--scope", " "], "--scope is empty"), (["--expires-in", "0"], "out of range"),
                      (["--expires-in", "soon"], "never"), (["--name", "x" * 101], "--name")):
        refused = await cli(server, "tokens", "create", "--user", "alice", *bad)
        assert refused.returncode == 1 and says in refused.stderr and "mmcp_pat_" not in refused.stdout, bad
    # Without the server's public URL the token would be bound to a guessed one: said, on stderr.
    guessed = await cli(server, "tokens", "create", "--user", "alice")
    assert guessed.returncode == 0 and "public_url is not set" in guessed.stderr
    assert personal.well_formed(guessed.stdout.splitlines()[-1])
    nobody = await cli(server, "tokens", "create", "--user", "carol")
    assert nobody.returncode == 1 and "users list" in nobody.stderr

    revoked = await cli(server, "tokens", "revoke", "--id", token_id)
    assert revoked.returncode == 0 and "revoked personal access token" in revoked.stdout
    again = await cli(server, "tokens", "revoke", "--id", token_id)  # idempotent, and says so
    assert again.returncode == 0 and "nothing to revoke" in again.stdout
    malformed = await cli(server, "tokens", "revoke", "--id", "nope")
    assert malformed.returncode == 1 and "tokens list" in malformed.stderr
    both = await cli(server, "tokens", "revoke", "--id", token_id, "--user", "alice")
    assert both.returncode == 1 and "either --id" in both.stderr


@pytest.mark.parametrize("mode,era", [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
async def test_sdk_client_with_the_header_on_streamable_http(server: RunningServer, mode: str, era: str) -> None:
    _, secret = await create(server)
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
        async with Client(streamable_http_client(server.url + "/mcp", http_client=http), mode=mode) as client:
            assert client.protocol_version == era
            assert {t.name for t in (await client.list_tools()).tools} == TOOL_NAMES
            await client.call_tool("create_entities", {"entities": [{"name": era, "entityType": "t",
                                                                     "observations": []}]})
            graph = structured(await client.call_tool("read_graph", {}))
            assert [e["name"] for e in graph["entities"]] == [era]
            owners = [s.owner for s in server.registry.sessions()]
            if mode == "legacy":
                # The session is bound to a principal of the token's own, not to any OAuth client.
                [owner] = owners
                assert owner.client_id.startswith(personal.CLIENT_PREFIX)
            else:
                assert owners == []


async def test_sdk_client_with_the_header_on_legacy_sse(server: RunningServer) -> None:
    _, secret = await create(server)
    transport = sse_client(server.url + "/sse", headers={"Authorization": f"Bearer {secret}"})
    async with Client(transport, mode="legacy") as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOL_NAMES
        await client.call_tool("create_entities", {"entities": [{"name": "via sse", "entityType": "t",
                                                                 "observations": []}]})
        graph = structured(await client.call_tool("read_graph", {}))
        assert [e["name"] for e in graph["entities"]] == ["via sse"]
        assert [s.kind for s in server.registry.sessions()] == ["sse"]


async def test_a_read_only_token_cannot_write(http: httpx2.AsyncClient, server: RunningServer) -> None:
    _, secret = await create(server, "alice", "--scope", "memory:read")
    session = await open_session(http, server, secret)
    read = await http.post(server.url + "/mcp", headers=session, json={
        "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "read_graph", "arguments": {}}})
    assert read.status_code == 200 and "error" not in sse_or_json(read)
    write = await http.post(server.url + "/mcp", headers=session, json={
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "create_entities", "arguments": {"entities": [{"name": "x", "entityType": "t",
                                                                          "observations": []}]}}})
    assert write.status_code == 403
    assert 'error="insufficient_scope"' in write.headers["www-authenticate"]
    assert "memory:write" in write.headers["www-authenticate"]


async def test_revoking_by_id_ends_the_live_sessions_that_used_it_within_a_second(
        http: httpx2.AsyncClient, server: RunningServer) -> None:
    token_id, secret = await create(server)
    _, other_secret = await create(server)  # the same user's other token is untouched
    session = await open_session(http, server, secret)
    other = await open_session(http, server, other_secret)
    oauth = await tokens_by_hand(server, "alice", "alice-password-1", "memory:read memory:write")
    oauth_session = await open_session(http, server, oauth["access_token"])

    # A legacy SSE session too: its stream must end, not only its record.
    async with http.stream("GET", server.url + "/sse", headers={"Authorization": f"Bearer {secret}"}) as stream:
        assert stream.status_code == 200

        async def drain() -> None:
            async for _ in stream.aiter_bytes():
                pass

        draining = asyncio.ensure_future(drain())
        revoked = await cli(server, "tokens", "revoke", "--id", token_id)
        assert revoked.returncode == 0, revoked.stderr
        # The revocation is in the log before the command exits; the server reads the log at least
        # once a second (SQLite) or is woken by it (Redis). The margin is for a loaded test machine.
        took = await ended(server, session["Mcp-Session-Id"], within=5.0)
        assert took is not None and took < 1.5, took
        await asyncio.wait_for(draining, 1.5)
    assert not any(s.kind == "sse" for s in server.registry.sessions())
    assert (await http.post(server.url + "/mcp", headers=session, json=CALL)).status_code == 401
    fresh = await http.post(server.url + "/mcp", headers={"Authorization": f"Bearer {secret}", "Accept":
                                                          "application/json, text/event-stream"}, json=CALL)
    assert fresh.status_code == 401 and 'error="invalid_token"' in fresh.headers["www-authenticate"]
    for kept in (other, oauth_session):
        assert (await http.post(server.url + "/mcp", headers=kept, json=CALL)).status_code == 200


async def test_sessions_revoke_of_a_token_session_revokes_the_token(http: httpx2.AsyncClient,
                                                                    server: RunningServer) -> None:
    token_id, secret = await create(server)
    session = await open_session(http, server, secret)
    listed = await cli(server, "sessions", "list")
    assert personal.client_id(token_id) in listed.stdout
    done = await cli(server, "sessions", "revoke", session["Mcp-Session-Id"])
    assert done.returncode == 0 and token_id in done.stdout, done.stderr
    assert await ended(server, session["Mcp-Session-Id"], within=5.0) is not None
    assert (await cli(server, "tokens", "list", "--user", "alice")).stdout.strip() == \
        "no personal access tokens for alice"


async def test_signing_out_everywhere_and_removing_the_user_revoke_their_tokens(
        http: httpx2.AsyncClient, server: RunningServer) -> None:
    _, alice_secret = await create(server, "alice")
    _, bob_secret = await create(server, "bob")
    alice_session = await open_session(http, server, alice_secret)
    bob_session = await open_session(http, server, bob_secret)
    signed_out = await cli(server, "tokens", "revoke", "--user", "alice")
    assert signed_out.returncode == 0, signed_out.stderr
    assert await ended(server, alice_session["Mcp-Session-Id"], within=5.0) is not None
    removed = await cli(server, "users", "remove", "bob")
    assert removed.returncode == 0, removed.stderr
    assert await ended(server, bob_session["Mcp-Session-Id"], within=5.0) is not None
    await asyncio.sleep(1.1)  # past the bearer check's one-second memory of verified tokens
    for secret in (alice_secret, bob_secret):
        resp = await http.post(server.url + "/mcp", json=CALL, headers={
            "Authorization": f"Bearer {secret}", "Accept": "application/json, text/event-stream"})
        assert resp.status_code == 401


async def test_last_use_is_recorded(http: httpx2.AsyncClient, server: RunningServer) -> None:
    token_id, secret = await create(server)
    before = time.time()
    await open_session(http, server, secret)
    alice = await server.storage.get_user_by_name("alice")
    assert alice is not None
    for _ in range(100):  # written in a task of its own, after the response
        [record] = await server.storage.list_personal_tokens(alice.id, time.time())
        if record.last_used_at is not None:
            break
        await asyncio.sleep(0.05)
    assert record.last_used_at is not None and record.last_used_at >= before - 1
    listed = await cli(server, "tokens", "list", "--user", "alice")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(token_id))
    assert row.split()[-3] != "never"  # LAST USED: a date and time


# Attacks


async def test_a_token_is_no_grant_at_token_and_no_identity_at_userinfo(http: httpx2.AsyncClient,
                                                                          server: RunningServer) -> None:
    _, secret = await create(server)
    oauth = await tokens_by_hand(server, "alice", "alice-password-1", "memory:read openid profile")
    client_id = oauth["client_id"]
    for form in ({"grant_type": "refresh_token", "refresh_token": secret},
                 {"grant_type": "authorization_code", "code": secret, "code_verifier": "v" * 43,
                  "redirect_uri": "http://127.0.0.1:9/callback"}):
        resp = await http.post(server.url + "/token", data={**form, "client_id": client_id})
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text
        assert secret not in resp.text
    exchange = await http.post(server.url + "/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": secret,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "client_id": client_id})
    assert exchange.status_code == 400 and exchange.json()["error"] == "unsupported_grant_type"

    userinfo = await http.get(server.url + "/userinfo", headers={"Authorization": f"Bearer {secret}"})
    assert userinfo.status_code == 401 and userinfo.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in userinfo.headers["www-authenticate"]
    # The OAuth token of the same user is accepted there: the refusal is the token kind's.
    assert (await http.get(server.url + "/userinfo", headers={
        "Authorization": f"Bearer {oauth['access_token']}"})).status_code == 200
    # And the token still works where it belongs.
    await open_session(http, server, secret)


async def test_a_token_for_another_resource_is_refused(http: httpx2.AsyncClient, server: RunningServer) -> None:
    made = await cli(server, "tokens", "create", "--user", "alice", "--public-url", "https://other.example.com")
    assert made.returncode == 0, made.stderr
    assert "https://other.example.com/mcp" in made.stdout
    secret = made.stdout.splitlines()[-1]
    for path in ("/mcp", "/sse"):
        resp = await http.post(server.url + path, json=CALL, headers={
            "Authorization": f"Bearer {secret}", "Accept": "application/json, text/event-stream"})
        assert resp.status_code == 401, path
        assert "another resource" in resp.headers["www-authenticate"]
    assert len(server.registry) == 0


async def test_forged_expired_and_foreign_session_tokens_are_refused(http: httpx2.AsyncClient,
                                                                     server: RunningServer) -> None:
    token_id, secret = await create(server)
    session = await open_session(http, server, secret)
    flipped = secret[:-7] + ("A" if secret[-7] != "A" else "B") + secret[-6:]
    lookalike = personal.new_secret()  # well formed, never issued
    for forged in (flipped, lookalike, secret[:-1], secret + "0", personal.PREFIX):
        resp = await http.post(server.url + "/mcp", json=CALL, headers={
            "Authorization": f"Bearer {forged}", "Accept": "application/json, text/event-stream"})
        assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["www-authenticate"], forged

    # Same user, OAuth token, on the token's session: another principal, so an unknown session.
    oauth = await tokens_by_hand(server, "alice", "alice-password-1", "memory:read memory:write")
    hijack = await http.post(server.url + "/mcp", json=CALL,
                             headers={**session, "Authorization": f"Bearer {oauth['access_token']}"})
    assert hijack.status_code == 404
    # Another token of the same user, likewise.
    _, second = await create(server)
    hijack = await http.post(server.url + "/mcp", json=CALL, headers={**session, "Authorization": f"Bearer {second}"})
    assert hijack.status_code == 404

    # Expired: the store returns it no more.
    alice = await server.storage.get_user_by_name("alice")
    assert alice is not None
    [record, *_] = await server.storage.list_personal_tokens(alice.id, time.time())
    assert record.id == token_id and record.expires_at is not None
    assert await server.storage.get_personal_token(hash_secret(secret), record.expires_at + 1) is None


async def test_revoke_endpoint_revokes_a_presented_token_and_its_sessions(http: httpx2.AsyncClient,
                                                                          server: RunningServer) -> None:
    _, secret = await create(server)
    session = await open_session(http, server, secret)
    # Any registered client may report it: whoever holds it is its owner or someone it leaked to.
    stranger = (await http.post(server.url + "/register", json={
        "client_name": "scanner", "redirect_uris": ["http://127.0.0.1:9/cb"]})).json()
    resp = await http.post(server.url + "/revoke", data={"token": secret, "client_id": stranger["client_id"]})
    assert resp.status_code == 200
    assert await ended(server, session["Mcp-Session-Id"], within=5.0) is not None
    assert (await http.post(server.url + "/mcp", headers=session, json=CALL)).status_code == 401
    assert (await cli(server, "tokens", "list", "--user", "alice")).stdout.strip() == \
        "no personal access tokens for alice"

"""Attacks on the token endpoint and its lifetimes: code replay, refresh replay, retries within
the grace window, concurrent refreshes, scope escalation, sliding expiry and the absolute cap.

Every refusal is checked twice: the answer, and the store (nothing issued, nothing changed, or
exactly the family revoked). Time moves with an injected clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from auth.crypto import hash_secret
from auth.models import Revocation, Token
from auth.server import AUTH_SERVER
from auth.token import open_successor
from server.config import ConfigError, load
from server.storage.sqlite import SQLiteStorage
from tests.authflow import (
    Backend,
    Env,
    Grant,
    count,
    make_env,
    obtain_code,
    obtain_tokens,
    records,
    register,
    stored_bytes,
    token_request,
)
from tests.conftest import RunningServer, tokens_by_hand
from tests.test_mcp_http import open_session
from tests.test_teardown import stream_ends

CB = "http://127.0.0.1:9/callback"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path, clock: Clock,
              store_backend: Backend) -> Env:
    env = await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)
    env.server.clock = clock
    return env


async def tokens_table(env: Env) -> list[dict[str, str]]:
    """Every token record, superseded ones and their sealed successors included."""
    return await records(env, "tokens")


async def grant_rows(env: Env, grant_id: str) -> int:
    return await count(env, "tokens", grant_id=grant_id)


async def grant_id_of(env: Env, token: str, now: float) -> str:
    record = await env.store.get_token(hash_secret(token), now)
    assert record is not None
    return record.grant_id


async def refresh(env: Env, client_id: str, refresh_token: str, **extra: str) -> Any:
    return await token_request(env, grant_type="refresh_token", refresh_token=refresh_token, client_id=client_id,
                               **extra)


async def refused(resp: Any, error: str = "invalid_grant") -> None:
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"] == error


async def refreshed(env: Env, grant: Grant, refresh_token: str, **extra: str) -> dict[str, Any]:
    resp = await refresh(env, grant.client_id, refresh_token, **extra)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


# Authorization codes


async def test_code_replay_revokes_tokens_issued_from_it(env: Env, clock: Clock) -> None:
    client_id, code, verifier = await obtain_code(env)
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "client_id": client_id,
            "redirect_uri": CB}
    resp = await token_request(env, **form)
    assert resp.status == 200
    first = await resp.json()
    grant_id = await grant_id_of(env, first["access_token"], clock())
    # The family grows by a rotation; the replay must reach that generation too.
    clock.advance(5)
    second = await refreshed(env, Grant(client_id, CB, verifier, first), first["refresh_token"])
    bystander = await obtain_tokens(env)
    bystander_rows = await grant_rows(env, await grant_id_of(env, bystander.tokens["access_token"], clock()))
    clock.advance(5)

    await refused(await token_request(env, **form))

    assert await grant_rows(env, grant_id) == 0
    for token in (first["access_token"], second["access_token"], second["refresh_token"]):
        assert await env.store.get_token(hash_secret(token), clock()) is None
    subject = env.revocations[-1].subject
    assert env.revocations == [Revocation(subject, client_id, grant_id)]
    assert await grant_rows(env, await grant_id_of(env, bystander.tokens["access_token"], clock())) == bystander_rows
    # A third attempt finds nothing at all (the redeemed record went with the grant).
    await refused(await token_request(env, **form))
    assert len(env.revocations) == 1


async def test_code_replay_between_redemption_and_issuance_issues_nothing(env: Env, clock: Clock) -> None:
    client_id, code, _ = await obtain_code(env)
    code_hash = hash_secret(code)
    first = await env.store.consume_code(code_hash, "grant-a", clock())
    assert first.status == "redeemed" and first.code is not None and first.code.grant_id == "grant-a"
    assert (await env.store.consume_code(code_hash, "grant-b", clock())).status == "replayed"
    late = [Token(hash_secret("late-access"), "access", "grant-a", client_id, first.code.subject, (), env.url("/mcp"),
                  clock(), clock() + 60)]
    assert not await env.store.save_code_tokens(code_hash, late)
    assert await tokens_table(env) == []


async def test_code_replay_after_expiry_is_only_refused(env: Env, clock: Clock) -> None:
    client_id, code, verifier = await obtain_code(env)
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "client_id": client_id,
            "redirect_uri": CB}
    assert (await token_request(env, **form)).status == 200
    before = await tokens_table(env)
    clock.advance(env.server.settings.code_ttl + 1)
    await refused(await token_request(env, **form))
    # The redeemed record lives as long as the code would have: past that, nothing to revoke by.
    assert await tokens_table(env) == before and env.revocations == []


async def test_expired_code_refused(env: Env, clock: Clock) -> None:
    assert env.server.settings.code_ttl <= 600
    client_id, code, verifier = await obtain_code(env)
    clock.advance(env.server.settings.code_ttl + 1)
    await refused(await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                                      client_id=client_id, redirect_uri=CB))
    assert await tokens_table(env) == []


async def test_wrong_verifier_burns_code_and_issues_nothing(env: Env) -> None:
    client_id, code, verifier = await obtain_code(env)
    form = {"grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": CB}
    await refused(await token_request(env, **form, code_verifier="x" * 43))
    await refused(await token_request(env, **form, code_verifier=verifier))
    assert await tokens_table(env) == []


# Refresh: retry, replay, concurrency


async def test_refresh_retry_within_grace_returns_same_pair(env: Env, clock: Clock) -> None:
    grant = await obtain_tokens(env)
    first = await refreshed(env, grant, grant.tokens["refresh_token"])
    after_rotation = await tokens_table(env)
    clock.advance(env.server.settings.refresh_grace_seconds - 1)
    again = await refreshed(env, grant, grant.tokens["refresh_token"])
    assert {k: v for k, v in again.items() if k != "expires_in"} == {k: v for k, v in first.items()
                                                                   if k != "expires_in"}
    assert again["expires_in"] == first["expires_in"] - (env.server.settings.refresh_grace_seconds - 1)
    assert await tokens_table(env) == after_rotation and env.revocations == []
    # The pair handed out twice is the live one.
    assert await env.store.get_token(hash_secret(first["refresh_token"]), clock()) is not None
    assert (await refresh(env, grant.client_id, first["refresh_token"])).status == 200


async def test_refresh_replay_after_grace_revokes_family_and_notifies(env: Env, clock: Clock) -> None:
    grant = await obtain_tokens(env)
    grant_id = await grant_id_of(env, grant.tokens["access_token"], clock())
    rotated = await refreshed(env, grant, grant.tokens["refresh_token"])
    bystander = await obtain_tokens(env)
    clock.advance(env.server.settings.refresh_grace_seconds + 1)

    await refused(await refresh(env, grant.client_id, grant.tokens["refresh_token"]))

    assert await grant_rows(env, grant_id) == 0
    subject = env.revocations[-1].subject
    assert env.revocations == [Revocation(subject, grant.client_id, grant_id)]
    await refused(await refresh(env, grant.client_id, rotated["refresh_token"]))
    assert await env.store.get_token(hash_secret(bystander.tokens["access_token"]), clock()) is not None
    assert (await refresh(env, bystander.client_id, bystander.tokens["refresh_token"])).status == 200


@pytest.mark.parametrize("jump", [-1, -3600])
async def test_refresh_replay_after_backward_clock_jump_revokes_family(env: Env, clock: Clock, jump: float) -> None:
    """The store's clock went back after a rotation: the age of the supersession is negative,
    which proves nothing about a retry, so the replay revokes the family like any other."""
    grant = await obtain_tokens(env)
    grant_id = await grant_id_of(env, grant.tokens["access_token"], clock())
    rotated = await refreshed(env, grant, grant.tokens["refresh_token"])
    clock.advance(jump)

    await refused(await refresh(env, grant.client_id, grant.tokens["refresh_token"]))

    assert await grant_rows(env, grant_id) == 0
    assert env.revocations[-1].grant_id == grant_id
    await refused(await refresh(env, grant.client_id, rotated["refresh_token"]))


async def test_concurrent_refreshes_both_succeed(env: Env) -> None:
    grant = await obtain_tokens(env)
    grant_id = await grant_id_of(env, grant.tokens["access_token"], env.server.clock())
    responses = await asyncio.gather(*(refresh(env, grant.client_id, grant.tokens["refresh_token"])
                                       for _ in range(5)))
    assert [r.status for r in responses] == [200] * 5
    bodies = [await r.json() for r in responses]
    assert len({(b["access_token"], b["refresh_token"]) for b in bodies}) == 1
    # One rotation happened: the original pair plus one new pair, and no revocation.
    assert await grant_rows(env, grant_id) == 4 and env.revocations == []
    assert (await refresh(env, grant.client_id, bodies[0]["refresh_token"])).status == 200


async def test_retry_after_successor_rotated_is_refused_without_revoking(env: Env, clock: Clock) -> None:
    grant = await obtain_tokens(env)
    second = await refreshed(env, grant, grant.tokens["refresh_token"])
    third = await refreshed(env, grant, second["refresh_token"])
    before = await tokens_table(env)
    clock.advance(10)
    # Within the first token's window, but its successor is spent: no pair to give, no attack proven.
    await refused(await refresh(env, grant.client_id, grant.tokens["refresh_token"]))
    assert await tokens_table(env) == before and env.revocations == []
    assert await env.store.get_token(hash_secret(third["refresh_token"]), clock()) is not None


async def test_superseded_token_is_no_longer_live(env: Env, clock: Clock) -> None:
    grant = await obtain_tokens(env)
    await refreshed(env, grant, grant.tokens["refresh_token"])
    assert await env.store.get_token(hash_secret(grant.tokens["refresh_token"]), clock()) is None
    record = await env.store.get_refresh_token(hash_secret(grant.tokens["refresh_token"]), clock())
    assert record is not None and record.superseded_at == clock()


async def test_retry_response_is_stored_sealed(env: Env, clock: Clock) -> None:
    grant = await obtain_tokens(env)
    new = await refreshed(env, grant, grant.tokens["refresh_token"])
    stored = await stored_bytes(env)
    for secret in (grant.tokens["refresh_token"], new["access_token"], new["refresh_token"]):
        assert secret.encode() not in stored
    [old] = await records(env, "tokens", token_hash=hash_secret(grant.tokens["refresh_token"]))
    sealed = old["successor"]
    assert open_successor(grant.tokens["refresh_token"], sealed, clock()) is not None
    # Only the old token opens it: not the new one, not the stored hash.
    assert open_successor(new["refresh_token"], sealed, clock()) is None
    assert open_successor(hash_secret(grant.tokens["refresh_token"]), sealed, clock()) is None


# Refresh: what the request may ask


async def test_scope_escalation_on_refresh_refused(env: Env) -> None:
    grant = await obtain_tokens(env, scope="memory:read")
    before = await tokens_table(env)
    await refused(await refresh(env, grant.client_id, grant.tokens["refresh_token"],
                                scope="memory:read memory:write"), "invalid_scope")
    await refused(await refresh(env, grant.client_id, grant.tokens["refresh_token"], scope="openid"),
                  "invalid_scope")
    assert await tokens_table(env) == before
    assert (await refreshed(env, grant, grant.tokens["refresh_token"]))["scope"] == "memory:read"


async def test_refresh_token_of_another_client_refused(env: Env) -> None:
    grant = await obtain_tokens(env)
    thief = await register(env, [CB])
    before = await tokens_table(env)
    await refused(await refresh(env, thief["client_id"], grant.tokens["refresh_token"]))
    assert await tokens_table(env) == before and env.revocations == []


async def test_refresh_for_another_resource_refused(env: Env) -> None:
    grant = await obtain_tokens(env)
    before = await tokens_table(env)
    await refused(await refresh(env, grant.client_id, grant.tokens["refresh_token"],
                                resource="https://evil.example/mcp"), "invalid_target")
    assert await tokens_table(env) == before


async def test_access_token_is_not_a_refresh_token(env: Env) -> None:
    grant = await obtain_tokens(env)
    before = await tokens_table(env)
    await refused(await refresh(env, grant.client_id, grant.tokens["access_token"]))
    assert await tokens_table(env) == before and env.revocations == []


# Lifetimes


@pytest.fixture
async def short_env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
                    clock: Clock, store_backend: Backend) -> Env:
    env = await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend,
                         access_token_ttl=3600, refresh_token_ttl=1000, refresh_token_max_lifetime=2500)
    env.server.clock = clock
    return env


async def expiries(env: Env, body: dict[str, Any]) -> tuple[float, float]:
    now = env.server.clock()
    access = await env.store.get_token(hash_secret(body["access_token"]), now)
    refresh_record = await env.store.get_token(hash_secret(body["refresh_token"]), now)
    assert access is not None and refresh_record is not None
    return access.expires_at, refresh_record.expires_at


async def test_refresh_expiry_slides(short_env: Env, clock: Clock) -> None:
    env = short_env
    start = clock()
    grant = await obtain_tokens(env)
    assert await expiries(env, grant.tokens) == (start + 2500, start + 1000)  # access capped by the grant
    clock.advance(900)
    body = await refreshed(env, grant, grant.tokens["refresh_token"])
    assert (await expiries(env, body))[1] == start + 1900  # renewed from this rotation
    # Unused for longer than refresh_token_ttl: expired, although the grant's cap is not reached.
    clock.advance(1001)
    before = await tokens_table(env)
    await refused(await refresh(env, grant.client_id, body["refresh_token"]))
    assert await tokens_table(env) == before


async def test_refresh_absolute_cap(short_env: Env, clock: Clock) -> None:
    env = short_env
    start = clock()
    grant = await obtain_tokens(env)
    token = grant.tokens["refresh_token"]
    for at, access_left, refresh_expiry in ((900, 1600, 1900), (1800, 700, 2500), (2400, 100, 2500)):
        clock.now = start + at
        body = await refreshed(env, grant, token)
        assert body["expires_in"] == access_left
        assert await expiries(env, body) == (start + 2500, start + refresh_expiry)
        token = body["refresh_token"]
    clock.now = start + 2500
    before = await tokens_table(env)
    await refused(await refresh(env, grant.client_id, token))
    assert await tokens_table(env) == before and env.revocations == []


def test_max_lifetime_setting_is_validated(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path}
    assert load(dict(base), environ={}).refresh_token_max_lifetime == 365 * 86400
    with pytest.raises(ConfigError, match="refresh_token_max_lifetime"):
        load({**base, "refresh_token_ttl": 7200, "refresh_token_max_lifetime": 3600}, environ={})
    settings = load(dict(base), environ={"MEMORY_MCP_REFRESH_TOKEN_MAX_LIFETIME": str(100 * 86400)})
    assert settings.refresh_token_max_lifetime == 100 * 86400
    with pytest.raises(ConfigError, match="refresh_token_max_lifetime"):  # below the default refresh_token_ttl
        load(dict(base), environ={"MEMORY_MCP_REFRESH_TOKEN_MAX_LIFETIME": "86400"})


# Storage


async def test_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE auth_codes (code_hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, redirect_uri TEXT NOT NULL,
            code_challenge TEXT NOT NULL, scopes TEXT NOT NULL, resource TEXT NOT NULL, subject TEXT NOT NULL,
            auth_time REAL NOT NULL, expires_at REAL NOT NULL);
        CREATE TABLE auth_tokens (token_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, grant_id TEXT NOT NULL,
            client_id TEXT NOT NULL, subject TEXT NOT NULL, scopes TEXT NOT NULL, resource TEXT NOT NULL,
            issued_at REAL NOT NULL, expires_at REAL NOT NULL);
        INSERT INTO auth_tokens VALUES ('h', 'refresh', 'g', 'c', 's', 'memory:read', 'r', 100, 1e12);
    """)
    conn.commit()
    conn.close()
    storage = SQLiteStorage(path)
    try:
        token = await storage.get_token("h", 200)
        assert token is not None and token.auth_time == 100 and token.superseded_at is None
    finally:
        await storage.close()


# The whole server: a replay ends the principal's live MCP sessions.


async def test_refresh_replay_ends_live_sessions(server: RunningServer) -> None:
    auth_server = server.app[AUTH_SERVER]
    clock = Clock()
    auth_server.clock = clock
    async with httpx2.AsyncClient(timeout=10) as http:
        tokens = await tokens_by_hand(server, "alice", "alice-password-1", "memory:read memory:write")
        form = {"grant_type": "refresh_token", "client_id": tokens["client_id"]}
        rotated = (await http.post(server.url + "/token", data={**form, "refresh_token": tokens["refresh_token"]}))
        assert rotated.status_code == 200
        session = await open_session(http, server, rotated.json()["access_token"])
        clock.advance(auth_server.settings.refresh_grace_seconds + 1)

        async def replay() -> None:
            await asyncio.sleep(0.2)
            resp = await http.post(server.url + "/token", data={**form, "refresh_token": tokens["refresh_token"]})
            assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"

        await stream_ends(http, server.url + "/mcp", session, asyncio.ensure_future(replay()), within=5)
        assert len(server.registry) == 0
        after = await http.post(server.url + "/mcp", headers=session,
                                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert after.status_code == 401 and 'error="invalid_token"' in after.headers["www-authenticate"]

"""BearerVerifier (the resource server's gate), secrets at rest, and account management."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from auth import accounts, personal
from auth.crypto import hash_secret
from auth.models import AuthorizationCode, BrowserLogin, Principal, Rotation, Token
from auth.rfc6750 import BearerError, BearerVerifier
from auth.settings import AuthSettings
from tests.authflow import AnyStore, Backend, Env, make_env, obtain_tokens, stored_bytes

ISSUER = "https://mcp.example.com"
META = ISSUER + "/.well-known/oauth-protected-resource"
SCOPE = 'scope="memory:read memory:write"'


@pytest.fixture
async def store(tmp_path: Path, store_backend: Backend) -> AsyncIterator[AnyStore]:
    opened = store_backend.open(tmp_path)
    yield opened
    await opened.close()


@pytest.fixture
def verifier(store: AnyStore) -> BearerVerifier:
    return BearerVerifier(AuthSettings(issuer=ISSUER), store)


async def save_access(store: AnyStore, secret: str, resource: str = ISSUER + "/mcp", ttl: float = 3600,
                      kind: str = "access") -> None:
    now = time.time()
    await store.save_tokens([Token(hash_secret(secret), kind, "grant-1", "client-1", "user-1",  # type: ignore[arg-type]
                                   ("memory:read", "memory:write"), resource, now, now + ttl)])


async def refused(verifier: BearerVerifier, authorization: str | None, path: str = "/mcp") -> BearerError:
    with pytest.raises(BearerError) as info:
        await verifier.verify(authorization, path)
    return info.value


async def test_valid_token(store: AnyStore, verifier: BearerVerifier) -> None:
    await save_access(store, "good-token")
    grant = await verifier.verify("Bearer good-token", "/mcp")
    assert grant.principal.issuer == ISSUER and grant.principal.subject == "user-1"
    assert grant.principal.client_id == "client-1" and grant.grant_id == "grant-1"
    assert grant.scopes == frozenset({"memory:read", "memory:write"})
    for header in ("bearer good-token", "BEARER good-token", "  Bearer   good-token  "):
        assert (await verifier.verify(header, "/sse")).principal.subject == "user-1"


async def test_missing_token_challenge(verifier: BearerVerifier) -> None:
    error = await refused(verifier, None)
    assert error.status == 401
    assert error.headers["WWW-Authenticate"] == f'Bearer resource_metadata="{META}/mcp", {SCOPE}'
    response = error.response()
    assert response.status == 401 and response.headers["WWW-Authenticate"] == error.headers["WWW-Authenticate"]
    assert response.content_type == "application/json"
    assert set(error.body) == {"error", "error_description"}


@pytest.mark.parametrize(("path", "document"), [("/mcp", "/mcp"), ("/sse", "/sse"), ("/messages", "/sse")])
async def test_challenge_points_at_the_path_document(verifier: BearerVerifier, path: str, document: str) -> None:
    error = await refused(verifier, "Bearer unknown-token", path)
    assert error.headers["WWW-Authenticate"] == (
        f'Bearer resource_metadata="{META}{document}", {SCOPE}, error="invalid_token", '
        'error_description="the access token is invalid or expired"')
    assert error.body["error"] == "invalid_token"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Token abc", "Bearer", "Bearer ", ""])
async def test_not_a_bearer_token(verifier: BearerVerifier, header: str) -> None:
    error = await refused(verifier, header)
    assert error.status == 401
    assert error.headers["WWW-Authenticate"].startswith(f'Bearer resource_metadata="{META}/mcp"')


@pytest.mark.parametrize("token", ["a b", "tok\x00en", "ä" * 10, "x" * 600, "a=b"])
async def test_garbage_token(verifier: BearerVerifier, token: str) -> None:
    error = await refused(verifier, f"Bearer {token}")
    assert error.status == 401 and 'error="invalid_token"' in error.headers["WWW-Authenticate"]


async def test_expired_refresh_and_foreign_tokens(store: AnyStore, verifier: BearerVerifier) -> None:
    await save_access(store, "expired", ttl=-1)
    await save_access(store, "refresh", kind="refresh")
    await save_access(store, "foreign", resource="https://other.example/mcp")
    await save_access(store, "lookalike", resource="https://mcp.example.com.evil/mcp")
    for token in ("expired", "refresh", "foreign", "lookalike"):
        error = await refused(verifier, f"Bearer {token}")
        assert error.status == 401 and 'error="invalid_token"' in error.headers["WWW-Authenticate"]
    error = await refused(verifier, "Bearer foreign")
    assert error.body["error_description"] == "the access token is for another resource"


@pytest.mark.parametrize("resource", ["https://mcp.example.com/mcp/", "HTTPS://MCP.EXAMPLE.COM/mcp",
                                      "https://mcp.example.com:443/mcp", "https://mcp.example.com",
                                      "https://mcp.example.com/", "https://mcp.example.com/sse"])
async def test_resource_normalisation(store: AnyStore, verifier: BearerVerifier, resource: str) -> None:
    await save_access(store, "tok", resource=resource)
    assert (await verifier.verify("Bearer tok", "/mcp")).principal.subject == "user-1"


async def test_personal_token_is_checked_like_an_access_token(store: AnyStore) -> None:
    settings = AuthSettings(issuer=ISSUER)
    user = await accounts.add_user(store, "alice", "password-1234")
    clock = [time.time()]
    verifier = BearerVerifier(settings, store, clock=lambda: clock[0])
    created = await personal.create(store, settings, user, name="ci", scopes=("memory:read",), days=1, now=clock[0])
    grant = await verifier.verify(f"Bearer {created.secret}", "/sse")
    assert grant.principal == Principal(ISSUER, user.id, "pat:" + created.token.id)
    assert grant.scopes == frozenset({"memory:read"}) and grant.resource == ISSUER + "/mcp"
    # Expired: refused like an expired access token.
    clock[0] += 86400 + 1
    verifier.forget()
    assert (await refused(verifier, f"Bearer {created.secret}")).reason == "invalid_or_expired"
    never = await personal.create(store, settings, user, name="", scopes=("memory:read",), days=None, now=clock[0])
    assert (await verifier.verify(f"Bearer {never.secret}", "/mcp")).expires_at == math.inf


async def test_personal_token_last_use_is_written_at_most_once_a_minute(store: AnyStore) -> None:
    settings = AuthSettings(issuer=ISSUER)
    user = await accounts.add_user(store, "alice", "password-1234")
    start = time.time()
    clock = [start]
    verifier = BearerVerifier(settings, store, clock=lambda: clock[0])
    created = await personal.create(store, settings, user, name="", scopes=("memory:read",), days=1, now=start)

    async def use(at: float) -> float | None:
        clock[0] = at
        verifier.forget()  # every use reaches the store, as after each second of a busy session
        await verifier.verify(f"Bearer {created.secret}", "/mcp")
        await asyncio.sleep(0.05)  # the write runs in a task of its own
        for _ in range(50):
            if not verifier._writes:
                break
            await asyncio.sleep(0.02)
        [record] = await store.list_personal_tokens(user.id, at)
        return record.last_used_at

    assert await use(start + 1) == start + 1
    assert await use(start + 30) == start + 1  # within the minute: not written
    assert await use(start + 60.5) == start + 1
    assert await use(start + 61.5) == start + 61.5
    # Another process (a verifier of its own) that knows nothing of these writes still reads the
    # stored last use, and does not write within its minute either.
    other = BearerVerifier(settings, store, clock=lambda: start + 70)
    await other.verify(f"Bearer {created.secret}", "/mcp")
    await asyncio.sleep(0.1)
    [record] = await store.list_personal_tokens(user.id, start + 70)
    assert record.last_used_at == start + 61.5


async def test_insufficient_scope(verifier: BearerVerifier) -> None:
    error = verifier.insufficient_scope("/sse", "memory:read memory:write")
    assert error.status == 403
    assert error.headers["WWW-Authenticate"] == (
        f'Bearer error="insufficient_scope", scope="memory:read memory:write", resource_metadata="{META}/sse"')
    assert error.body["error"] == "insufficient_scope"


# Secrets at rest


async def test_store_holds_no_plaintext_secret(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int,
                                               tmp_path: Path, store_backend: Backend) -> None:
    env: Env = await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)
    grant = await obtain_tokens(env)
    resp = await env.client.post("/token", data={"grant_type": "refresh_token", "client_id": grant.client_id,
                                                 "refresh_token": grant.tokens["refresh_token"]})
    rotated = await resp.json()
    from tests.authflow import obtain_code
    _, pending_code, _ = await obtain_code(env)
    verifier = BearerVerifier(env.server.settings, env.store)
    assert (await verifier.verify("Bearer " + rotated["access_token"], "/mcp")).principal.client_id == grant.client_id
    secrets = [grant.tokens["access_token"], grant.tokens["refresh_token"], rotated["access_token"],
               rotated["refresh_token"], pending_code]
    stored = await stored_bytes(env)  # SQLite: the dump and the files; Redis: every key and value
    for secret in secrets:
        assert secret.encode() not in stored
    assert hash_secret(rotated["access_token"]).encode() in stored
    assert accounts.USERNAME_RULE and b"correct horse" not in stored


# Store behaviour the flows rely on


async def test_consume_code_is_single_use_and_expires(store: AnyStore) -> None:
    user = await accounts.add_user(store, "bob", "password-1234")
    now = time.time()
    assert await store.create_browser_session("login", user.id, user.password_hash, now, now + 60)
    code = AuthorizationCode("h1", "c", "http://127.0.0.1/cb", "x" * 43, ("memory:read",), ISSUER + "/mcp", user.id,
                             now, now + 60)
    assert await store.save_code(code, "login")
    results = await asyncio.gather(*(store.consume_code("h1", f"g{i}", now) for i in range(5)))
    # Whichever reaches the store first redeems (on Redis, not necessarily the first sent).
    [winner] = [i for i, r in enumerate(results) if r.status == "redeemed"]
    assert results[winner].code == replace(code, grant_id=f"g{winner}")
    # The next redemption is a replay (and deletes the record), the rest find nothing.
    assert sorted(r.status for r in results) == ["invalid", "invalid", "invalid", "redeemed", "replayed"]
    assert await store.save_code(AuthorizationCode("h2", "c", "u", "x", (), "r", user.id, now - 10, now - 1), "login")
    assert (await store.consume_code("h2", "g", now)).status == "invalid"
    # No code without the browser login that approved it, for that user (GrantStore.save_code).
    assert not await store.save_code(replace(code, code_hash="h3"), "another login")
    await store.end_browser_sessions(user.id)
    assert not await store.save_code(replace(code, code_hash="h4"), "login")
    assert (await store.consume_code("h4", "g", now)).status == "invalid"


async def test_rotate_refresh_is_atomic(store: AnyStore) -> None:
    await save_access(store, "r1", kind="refresh")
    now = time.time()
    new = [Token(hash_secret("r2"), "refresh", "grant-1", "client-1", "user-1", (), ISSUER, now, now + 60)]
    assert (await store.rotate_refresh_token(hash_secret("r1"), new, "sealed", now, 60)).status == "rotated"
    # Within the grace window the second exchange gets the first one's sealed response.
    assert await store.rotate_refresh_token(hash_secret("r1"), new, "other", now, 60) == Rotation("retry", "sealed")
    assert await store.get_token(hash_secret("r2"), now) is not None
    assert await store.get_token(hash_secret("r1"), now) is None


async def test_remove_user_and_delete_client_cascade(store: AnyStore) -> None:
    user = await accounts.add_user(store, "bob", "password-1234")
    now = time.time()
    await store.save_tokens([Token(hash_secret("t"), "access", "g", "client-1", user.id, (), ISSUER, now, now + 60),
                             Token(hash_secret("u"), "access", "g2", "client-2", "other", (), ISSUER, now, now + 60)])
    assert await store.create_browser_session("s", user.id, user.password_hash, now - 5, now + 60)
    assert await store.get_browser_session("s", now) == BrowserLogin(user.id, now - 5)
    assert (await accounts.remove_user(store, "bob")).id == user.id
    assert await store.get_token(hash_secret("t"), now) is None
    assert await store.get_browser_session("s", now) is None
    # A login verified before the removal is not recorded after it.
    assert not await store.create_browser_session("s2", user.id, user.password_hash, now, now + 60)
    assert await store.delete_client("client-2") is False  # never registered, tokens still go
    assert await store.get_token(hash_secret("u"), now) is None


# Accounts


async def test_accounts_lifecycle(store: AnyStore) -> None:
    user = await accounts.add_user(store, "carol.x@home-1", "a long password")
    assert [u.username for u in await accounts.list_users(store)] == ["carol.x@home-1"]
    with pytest.raises(accounts.DuplicateUserError, match="already exists"):
        await accounts.add_user(store, "carol.x@home-1", "another password")
    # Case-sensitive usernames.
    await accounts.add_user(store, "Carol.x@home-1", "another password")
    changed = await accounts.set_password(store, "carol.x@home-1", "new password!")
    assert changed.id == user.id and changed.password_hash != user.password_hash
    removed = await accounts.remove_user(store, "carol.x@home-1")
    assert removed.id == user.id
    with pytest.raises(accounts.UnknownUserError, match="no user named"):
        await accounts.remove_user(store, "carol.x@home-1")
    with pytest.raises(accounts.UnknownUserError):
        await accounts.set_password(store, "nobody", "password123")


@pytest.mark.parametrize("username", ["", "a" * 65, "with space", "slash/", "ümlaut", "semi;colon"])
async def test_invalid_usernames(store: AnyStore, username: str) -> None:
    with pytest.raises(accounts.InvalidUsernameError, match="1-64 characters"):
        await accounts.add_user(store, username, "good password")


@pytest.mark.parametrize(("password", "rule"), [("short", "at least 8"), ("x" * 1025, "at most 1024")])
async def test_invalid_passwords(store: AnyStore, password: str, rule: str) -> None:
    with pytest.raises(accounts.InvalidPasswordError, match=rule):
        await accounts.add_user(store, "dave", password)
    assert await store.get_user_by_name("dave") is None


async def test_verified_tokens_are_remembered_for_a_second_at_most(store: AnyStore) -> None:
    """The verifier's memory: a second lookup of a fresh token needs no store read, a token
    deleted behind its back stops working within a second, and forget() ends it at once."""
    from auth.rfc6750 import VERIFIED_CACHE_SECONDS

    now = [1000.0]
    settings = AuthSettings(issuer="http://127.0.0.1:9")
    token = Token(hash_secret("tok"), "access", "g", "c", "alice", ("memory:read",), settings.issuer + "/mcp",
                  now[0], now[0] + 3600)
    await store.save_tokens([token])
    verifier = BearerVerifier(settings, store, clock=lambda: now[0])
    assert (await verifier.verify("Bearer tok", "/mcp")).principal.subject == "alice"
    await store.delete_token(token.token_hash)
    assert (await verifier.verify("Bearer tok", "/mcp")).principal.subject == "alice"  # remembered
    now[0] += VERIFIED_CACHE_SECONDS
    with pytest.raises(BearerError):
        await verifier.verify("Bearer tok", "/mcp")
    await store.save_tokens([token])
    await verifier.verify("Bearer tok", "/mcp")
    await store.delete_token(token.token_hash)
    verifier.forget()
    with pytest.raises(BearerError):
        await verifier.verify("Bearer tok", "/mcp")

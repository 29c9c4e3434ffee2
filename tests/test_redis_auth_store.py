"""What only the Redis backend has: a store that can be unreachable (503, never a 500, and back
when Redis is), TTLs on every key that expires, revocations pushed to the follower at once, the
revocation stream's trimming, and the command line against Redis. Behaviour both backends share
is tested on both in tests/test_auth_*.py, tests/test_auth_store.py and tests/test_ratelimit.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from auth.crypto import hash_secret
from auth.models import RememberedConsent, Revocation, SigningKey
from server.storage import StorageUnavailable
from server.storage.redis import RedisLimiter, RedisStorage
from server.storage.redis import auth as redis_auth
from tests.authflow import Backend, Env, make_env, obtain_tokens, register, token_request
from tests.redis_server import RedisServer

CLI = [sys.executable, "-m", "server"]


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path, redis_url: str) -> Env:
    env = await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, Backend("redis", redis_url))
    env.server.limiter = RedisLimiter(redis_store(env).client, redis_store(env).prefix)
    return env


@pytest.fixture
async def storage(redis_url: str) -> AsyncIterator[RedisStorage]:
    store = RedisStorage(redis_url)
    yield store
    await store.close()


def redis_store(env: Env) -> RedisStorage:
    assert isinstance(env.store, RedisStorage)
    return env.store


# Unreachable


async def test_stopped_redis_is_503_with_retry_after_then_serves_again(env: Env, redis_server: RedisServer) -> None:
    grant = await obtain_tokens(env)
    redis_server.stop()
    try:
        for resp in (await env.client.post("/register", json={"redirect_uris": ["http://127.0.0.1:9/cb"]}),
                     await token_request(env, grant_type="refresh_token", client_id=grant.client_id,
                                         refresh_token=grant.tokens["refresh_token"]),
                     await env.client.get("/login")):
            assert resp.status == 503, await resp.text()
            assert resp.headers["Retry-After"] == "1"
        page = await (await env.client.get("/login")).text()
        assert "Traceback" not in page and "redis" not in page.lower()
        with pytest.raises(StorageUnavailable):
            await env.store.get_user("anyone")
        with pytest.raises(StorageUnavailable):
            await env.server.limiter.hit("register:x", 1, 60)
    finally:
        redis_server.start()
    # The same clients reconnect by themselves (this Redis kept nothing: it has no persistence).
    assert (await register(env))["client_id"]


# TTLs


PERSISTENT = ("client:", "clients", "clients-unused", "client-use", "user:", "usernames", "revocations",
              "signing-key:", "signing-key-current", "signing-keys", "cookie-key")


async def test_every_key_that_expires_has_a_ttl(env: Env) -> None:
    store, settings = redis_store(env), env.server.settings
    grant = await obtain_tokens(env)
    await obtain_tokens(env)  # a second grant: a code redeemed and one approved meanwhile
    now = time.time()
    user = await store.get_user_by_name("alice")
    assert user is not None
    await store.remember_consent(RememberedConsent(user.id, grant.client_id, "u", "r", ("a",), now, now + 3000))
    await store.record_revocation(Revocation(user.id, None, None), now)
    await store.add_signing_key(SigningKey("k1", "RS256", "{}", "x", now), now, now + 100, replace=False)
    await store.add_signing_key(SigningKey("k2", "RS256", "{}", "x", now), now, now + 100, replace=True)
    await store.cookie_key()
    await env.server.limiter.admit([("login-user:x", 900.0), ("login-addr:192.0.2.1", 900.0)], lambda _ages: 0.0)

    ttls: dict[str, float] = {}
    async for raw in store.client.scan_iter(match=store.prefix + "*"):
        name = raw.decode().removeprefix(store.prefix)
        ttls[name] = await store.client.pttl(raw) / 1000
    persistent = {name for name in ttls if name.startswith(PERSISTENT)}
    assert all(ttls[name] == -0.001 for name in persistent if name != "signing-key:k1"), ttls
    expiring = {name: ttl for name, ttl in ttls.items() if name not in persistent}
    assert all(ttl > 0 for ttl in expiring.values()), expiring
    kinds = {name.split(":")[0] for name in expiring}
    assert {"token", "code", "login", "consent", "grant-tokens", "user-tokens", "client-tokens", "user-codes",
            "client-codes", "user-logins", "user-consents", "client-consents", "rate"} <= kinds, kinds
    assert 0 < ttls["signing-key:k1"] <= 100  # retired: published until its date, then gone

    def ttl_of(kind: str, secret_hash: str) -> float:
        return ttls[f"{kind}:{secret_hash}"]

    access, refresh = hash_secret(grant.tokens["access_token"]), hash_secret(grant.tokens["refresh_token"])
    assert settings.access_token_ttl - 60 < ttl_of("token", access) <= settings.access_token_ttl
    assert settings.refresh_token_ttl - 60 < ttl_of("token", refresh) <= settings.refresh_token_ttl
    # An index lives as long as its longest-lived member.
    assert ttls[f"user-tokens:{user.id}"] >= ttl_of("token", refresh) - 1
    codes = [name for name in ttls if name.startswith("code:")]
    assert codes and all(ttls[name] <= settings.code_ttl + 60 for name in codes)
    [login_key] = [name for name in ttls if name.startswith("login:")]
    assert settings.login_ttl - 60 < ttls[login_key] <= settings.login_ttl
    [consent_key] = [name for name in ttls if name.startswith("consent:")]
    assert 2900 < ttls[consent_key] <= 3000
    assert all(0 < ttl <= 3600 for name, ttl in ttls.items() if name.startswith("rate:"))


async def test_personal_tokens_expire_with_a_ttl_unless_they_never_do(storage: RedisStorage) -> None:
    from auth.models import PersonalToken, User

    now = time.time()
    await storage.add_user(User("u1", "alice", "x", now))

    async def pttl(*parts: str) -> float:
        return float(await storage.client.pttl(storage.key(*parts))) / 1000

    def token(token_id: str, expires_at: float | None) -> PersonalToken:
        return PersonalToken(token_id, "h-" + token_id, "u1", "", ("memory:read",), "r", now, expires_at)

    assert await storage.save_personal_token(token("a" * 16, now + 600))
    assert 590 < await pttl("pat", "h-" + "a" * 16) <= 600
    assert 590 < await pttl("pat-id", "a" * 16) <= 600
    assert 590 < await pttl("user-pats", "u1") <= 600
    # A token that never expires: no TTL on its keys, nor on its user's index while it is there.
    assert await storage.save_personal_token(token("b" * 16, None))
    for key in (("pat", "h-" + "b" * 16), ("pat-id", "b" * 16), ("user-pats", "u1")):
        assert await pttl(*key) == -0.001, key
    assert await storage.save_personal_token(token("c" * 16, now + 60))
    assert await pttl("user-pats", "u1") == -0.001
    # Deleted: every key of it goes.
    assert await storage.delete_personal_token("b" * 16) is not None
    assert await storage.client.exists(storage.key("pat", "h-" + "b" * 16), storage.key("pat-id", "b" * 16)) == 0
    assert await storage.client.zscore(storage.key("user-pats", "u1"), "h-" + "b" * 16) is None
    # The next write gives the index a TTL again: as long as its longest-lived member, not the new one's.
    assert await storage.save_personal_token(token("d" * 16, now + 60))
    assert 590 < await pttl("user-pats", "u1") <= 600


async def test_index_members_of_expired_records_are_pruned(storage: RedisStorage) -> None:
    from auth.models import Token

    now = time.time()
    for i in range(20):
        issued = now + i * 100
        await storage.save_tokens([Token(f"t{i}", "access", f"g{i}", "c", "u", (), "r", issued, issued + 50)])
    # Each write dropped the members that had expired by its own time: only the newest is left.
    assert await storage.client.zcard(storage.key("user-tokens", "u")) == 1
    assert await storage.client.zcard(storage.key("client-tokens", "c")) == 1


async def retried(call: Any, *args: Any) -> Any:
    """What a client does with a 503: try again. The first command on each pooled connection
    after Redis restarted fails (redis-py does not retry a command that may have run)."""
    for _ in range(5):
        try:
            return await call(*args)
        except StorageUnavailable:
            await asyncio.sleep(0.1)
    return await call(*args)


# Revocations pushed


async def test_follow_revocations_is_woken_at_once(storage: RedisStorage, redis_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from server import app

    # Were the log polled, nothing would arrive within the test's wait.
    monkeypatch.setattr(app, "REVOCATION_POLL_SECONDS", 60.0)
    arrived: asyncio.Queue[Revocation] = asyncio.Queue()
    follower = asyncio.create_task(app.follow_revocations(storage, arrived.put))
    other = RedisStorage(redis_url)
    try:
        await asyncio.sleep(0.2)
        for i in range(3):
            await other.record_revocation(Revocation(f"u{i}", None, None), time.time())
            assert await asyncio.wait_for(arrived.get(), 10) == Revocation(f"u{i}", None, None)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await other.close()


async def test_follow_revocations_survives_a_redis_restart(storage: RedisStorage, redis_url: str,
                                                           redis_server: RedisServer,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from server import app

    caplog.set_level(logging.INFO, logger="server.app")

    monkeypatch.setattr(app, "REVOCATION_POLL_SECONDS", 0.2)
    arrived: asyncio.Queue[Revocation] = asyncio.Queue()
    follower = asyncio.create_task(app.follow_revocations(storage, arrived.put))
    try:
        await asyncio.sleep(0.2)
        redis_server.stop()
        await asyncio.sleep(0.5)  # the follower's reads fail meanwhile; it retries
        redis_server.start()
        # A new stream, but its entry ids come from the clock: later than the follower's cursor.
        await retried(storage.record_revocation, Revocation("u", "c", None), time.time())
        assert await asyncio.wait_for(arrived.get(), 10) == Revocation("u", "c", None)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    # An outage is a condition, said once when it starts and once when it ends, never a traceback
    # per retry.
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "server.app"]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    assert said[0][1].startswith("revocations made elsewhere not followed until the store answers again: Redis")


async def test_revocation_log_is_trimmed_by_age(storage: RedisStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    start, _ = await storage.revocations_after(None)
    for i in range(3):
        await storage.record_revocation(Revocation(f"u{i}", None, None), time.time())
    assert await storage.client.xlen(storage.key("revocations")) == 3
    await asyncio.sleep(0.01)
    monkeypatch.setattr(redis_auth, "REVOCATION_LOG_SECONDS", 0)
    await storage.record_revocation(Revocation("last", None, None), time.time())
    assert await storage.client.xlen(storage.key("revocations")) == 1
    # A reader that fell that far behind gets what is left, in order.
    _, found = await storage.revocations_after(start)
    assert found == [Revocation("last", None, None)]


# The command line


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("command", [["users", "list"], ["serve", "--port", "0"]])
def test_unreachable_redis_is_one_clear_line_without_the_password(tmp_path: Path, command: list[str]) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{closed_port()}/0"
    result = run(*command, "--data-dir", str(tmp_path / "data"), env={"MEMORY_MCP_REDIS_URL": url})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in lines[0] and "redis_url" in lines[0], lines[0]
    # Nothing was created in the data directory: with Redis the data is not there.
    assert not (tmp_path / "data").exists()


def test_admin_commands_on_redis(redis_url: str) -> None:
    store = ["--redis-url", redis_url]
    added = run("users", "add", "alice", "--password-stdin", *store, stdin="a long password\n")
    assert added.returncode == 0, added.stderr
    assert run("users", "add", "alice", "--password-stdin", *store, stdin="a long password\n").returncode == 1
    assert run("users", "list", env={"MEMORY_MCP_REDIS_URL": redis_url}).stdout.split() == ["alice"]
    changed = run("users", "passwd", "alice", "--password-stdin", *store, stdin="a new long password\n")
    assert changed.returncode == 0 and "signed them out everywhere" in changed.stdout, changed.stderr
    revoked = run("tokens", "revoke", "--user", "alice", *store)
    assert revoked.returncode == 0, revoked.stderr
    rotated = run("keys", "rotate", *store)
    assert rotated.returncode == 0 and "new ID-token signing key" in rotated.stdout, rotated.stderr
    assert run("clients", "list", *store).stdout.strip() == "no registered clients"
    assert run("throttle", "list", *store).returncode == 0
    assert run("throttle", "clear", "--all", *store).returncode == 0

    async def revocations() -> list[Revocation]:
        other = RedisStorage(redis_url)
        try:
            return (await other.revocations_after(0))[1]
        finally:
            await other.close()

    # passwd and tokens revoke each told running servers to end alice's sessions.
    assert len(asyncio.run(revocations())) == 2

"""Login throttling under concurrency, behind a reverse proxy, and lifted by an administrator:
the real server (its throttle store on SQLite and on Redis, real argon2) over real sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from auth import accounts, passwords, throttle
from auth.http import forwarded_client
from server.config import ConfigError, load
from tests.authflow import hidden_fields
from tests.conftest import BACKENDS, RunningServer, start_server

# The tests that count in the store (those taking `store_settings`) run on both backends; those
# about which address is counted, not how, run on SQLite only.
SERVER_BACKENDS = BACKENDS
CLI = [sys.executable, "-m", "server"]
ALICE_PASSWORD = "alice-password-1"


async def login_page(session: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with session.get(url + "/login") as resp:
        return hidden_fields(await resp.text())


async def post_login(session: aiohttp.ClientSession, url: str, form: dict[str, str], username: str, password: str,
                     headers: dict[str, str] | None = None) -> int:
    async with session.post(url + "/login", data={**form, "username": username, "password": password},
                            headers=headers or {}, allow_redirects=False) as resp:
        await resp.read()
        return resp.status


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose socket is bound to `address` (any of 127.0.0.0/8 on Linux): another source
    address as far as the server can tell."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), force_close=True),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each password argon2 really checks (the real check still runs)."""
    seen: list[str] = []
    real = passwords._verify

    def counting(password_hash: str | None, password: str) -> bool:
        seen.append(password)
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "_verify", counting)
    return seen


async def running(data_dir: Path, **overrides: Any) -> RunningServer:
    server = await start_server(data_dir, **overrides)
    await accounts.add_user(server.storage, "alice", ALICE_PASSWORD)
    return server


async def test_concurrent_spray_verifies_at_most_the_limit_and_others_still_sign_in(
        data_dir: Path, verified: list[str], store_settings: dict[str, Any]) -> None:
    server = await running(data_dir, **store_settings)
    try:
        async with session_from("127.0.0.1") as spray, session_from("127.0.0.2") as alice:
            form = await login_page(spray, server.url)
            alice_form = await login_page(alice, server.url)
            spraying = [asyncio.create_task(post_login(spray, server.url, form, f"user{i}", f"guess{i}"))
                        for i in range(60)]
            await asyncio.sleep(0)  # the spray is sent first
            alice_status = await post_login(alice, server.url, alice_form, "alice", ALICE_PASSWORD)
            statuses = await asyncio.gather(*spraying)
        guesses = [p for p in verified if p.startswith("guess")]
        assert len(guesses) <= throttle.ADDRESS_FAILURES, len(guesses)
        assert alice_status == 303
        assert set(statuses) <= {401, 429, 503}, statuses
        # Whatever was refused as busy did not count: the address keeps its unspent budget.
        async with session_from("127.0.0.1") as again:
            form = await login_page(again, server.url)
            for i in range(throttle.ADDRESS_FAILURES - len(guesses)):
                assert await post_login(again, server.url, form, f"later{i}", "wrong") == 401
            assert await post_login(again, server.url, form, "alice", ALICE_PASSWORD) == 429
    finally:
        await server.stop()


async def test_hashing_queue_is_bounded_per_source() -> None:
    """A source with its share of hashing in flight is refused at once; another is not."""
    first = [asyncio.create_task(passwords.verify_password(None, f"p{i}", source="a"))
             for i in range(passwords.MAX_PENDING_PER_SOURCE)]
    await asyncio.sleep(0)
    with pytest.raises(passwords.PasswordsBusy):
        await passwords.verify_password(None, "one too many", source="a")
    assert await passwords.verify_password(None, "other", source="b") is False
    assert await asyncio.gather(*first) == [False] * passwords.MAX_PENDING_PER_SOURCE
    assert await passwords.verify_password(None, "later", source="a") is False


# Behind a reverse proxy


async def test_trusted_proxy_forwarded_address_is_throttled_not_the_proxy(data_dir: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    server = await running(data_dir, trusted_proxies=("127.0.0.1",))
    try:
        async with session_from("127.0.0.1") as proxy:
            form = await login_page(proxy, server.url)
            # The client put an address of its choosing in front; the proxy appended the real one.
            attacker = {"X-Forwarded-For": "192.0.2.99, 198.51.100.7"}
            for i in range(throttle.ADDRESS_FAILURES):
                assert await post_login(proxy, server.url, form, f"user{i}", "wrong", attacker) == 401
            assert await post_login(proxy, server.url, form, "alice", ALICE_PASSWORD, attacker) == 429
            assert "failed login for 'user0' from 198.51.100.7" in caplog.text
            # Everyone else behind the same proxy signs in (the address the client made up
            # included: it was never the one counted).
            for other in ("198.51.100.8", "192.0.2.99"):
                async with session_from("127.0.0.1") as browser:
                    assert await post_login(browser, server.url, await login_page(browser, server.url), "alice",
                                            ALICE_PASSWORD, {"X-Forwarded-For": other}) == 303
    finally:
        await server.stop()


async def test_forwarding_headers_ignored_from_untrusted_peers(data_dir: Path) -> None:
    server = await running(data_dir, trusted_proxies=("127.0.0.2",))
    try:
        async with session_from("127.0.0.1") as client:
            form = await login_page(client, server.url)
            for i in range(throttle.ADDRESS_FAILURES):
                assert await post_login(client, server.url, form, f"user{i}", "wrong",
                                        {"X-Forwarded-For": f"198.51.100.{i}"}) == 401
            assert await post_login(client, server.url, form, "alice", ALICE_PASSWORD,
                                    {"X-Forwarded-For": "203.0.113.1", "Forwarded": "for=203.0.113.2"}) == 429
    finally:
        await server.stop()


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(("peer", "values", "header", "client"), [
    ("10.0.0.1", ["198.51.100.7"], "X-Forwarded-For", "198.51.100.7"),
    ("10.0.0.1", ["1.2.3.4, 198.51.100.7, 10.0.0.2"], "X-Forwarded-For", "198.51.100.7"),
    ("10.0.0.1", ["1.2.3.4", "198.51.100.7"], "X-Forwarded-For", "198.51.100.7"),  # two header lines
    ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "X-Forwarded-For", "10.0.0.3"),  # all ours: the leftmost
    ("10.0.0.1", [], "X-Forwarded-For", "10.0.0.1"),
    ("10.0.0.1", ["not-an-address"], "X-Forwarded-For", None),
    ("192.0.2.1", ["198.51.100.7"], "X-Forwarded-For", None),  # the peer is not a proxy of ours
    ("10.0.0.1", ['for=1.2.3.4, for="[2001:db8::1]:4711";proto=https'], "Forwarded", "2001:db8::1"),
    ("10.0.0.1", ["for=198.51.100.7:8080;by=10.0.0.1, for=10.0.0.5"], "Forwarded", "198.51.100.7"),
    ("10.0.0.1", ["for=_hidden"], "Forwarded", None),
    ("fd00::1", ["198.51.100.9"], "X-Forwarded-For", "198.51.100.9"),
])
def test_rightmost_untrusted_hop(peer: str, values: list[str], header: str, client: str | None) -> None:
    assert forwarded_client(peer, values, TRUSTED, header) == client


@pytest.mark.parametrize(("value", "needle"), [
    ("10.0.0.1/8", "host bits set; write the network as 10.0.0.0/8"),
    ("proxy.example", "'proxy.example' is not an IP address or network"),
    ("10.0.0.0/33", "is not an IP address or network"),
])
def test_trusted_proxies_validated(value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies") as caught:
        load({}, {"MEMORY_MCP_TRUSTED_PROXIES": f"127.0.0.1, {value}"})
    assert needle in str(caught.value)


def test_trusted_proxies_forms() -> None:
    proxies = load({}, {"MEMORY_MCP_TRUSTED_PROXIES": "10.0.0.1, fd00::/8"}).trusted_proxies
    assert tuple(map(str, proxies)) == ("10.0.0.1/32", "fd00::/8")
    assert load({}, {"MEMORY_MCP_PROXY_HEADER": "forwarded"}).proxy_header == "Forwarded"
    with pytest.raises(ConfigError, match="proxy_header"):
        load({}, {"MEMORY_MCP_PROXY_HEADER": "X-Real-IP"})


# Administration


def cli(data_dir: Path, *args: str, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
    store = ["--data-dir", str(data_dir)] + (["--redis-url", redis_url] if redis_url else [])
    return subprocess.run([*CLI, "throttle", *args, *store], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))


async def test_throttle_list_and_clear_while_the_server_runs(data_dir: Path, store_settings: dict[str, Any]) -> None:
    server = await running(data_dir, **store_settings)
    try:
        async with session_from("127.0.0.3") as client:
            form = await login_page(client, server.url)
            for i in range(throttle.ADDRESS_FAILURES):
                user = "alice" if i < throttle.FREE_FAILURES else f"user{i}"
                assert await post_login(client, server.url, form, user, "wrong") == 401
            assert await post_login(client, server.url, form, "alice", ALICE_PASSWORD) == 429

            listed = await asyncio.to_thread(cli, data_dir, "list", **store_settings)
            assert listed.returncode == 0, listed.stderr
            lines = listed.stdout.splitlines()
            assert any(line.split()[:3] == ["login", "address", "127.0.0.3"] and "s" in line.split()[-1]
                       for line in lines), listed.stdout
            assert any(line.split()[:3] == ["login", "user", "alice"] for line in lines), listed.stdout

            cleared = await asyncio.to_thread(cli, data_dir, "clear", "--address", "127.0.0.3", **store_settings)
            assert cleared.returncode == 0 and "127.0.0.3" in cleared.stdout, cleared.stderr
            # The account's own backoff still holds until it is cleared too.
            assert await post_login(client, server.url, form, "alice", ALICE_PASSWORD) == 429
            cleared = await asyncio.to_thread(cli, data_dir, "clear", "--user", "alice", **store_settings)
            assert cleared.returncode == 0, cleared.stderr
            assert await post_login(client, server.url, form, "alice", ALICE_PASSWORD) == 303

            assert (await asyncio.to_thread(cli, data_dir, "clear", "--all", **store_settings)).returncode == 0
            assert "no throttles" in (await asyncio.to_thread(cli, data_dir, "list", **store_settings)).stdout
    finally:
        await server.stop()


@pytest.mark.parametrize(("args", "needle"), [
    ((), "name exactly one of --address ADDRESS, --user NAME or --all"),
    (("--all", "--user", "x"), "name exactly one"),
    (("--address", "nowhere"), "'nowhere' is not an IP address"),
])
def test_throttle_clear_usage_errors(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    result = cli(tmp_path / "data", "clear", *args)
    assert result.returncode == 1 and needle in result.stderr, result.stderr


async def test_registration_limit_counts_the_forwarded_address(data_dir: Path,
                                                               store_settings: dict[str, Any]) -> None:
    server = await start_server(data_dir, trusted_proxies=("127.0.0.0/8",), registration_rate_limit=2,
                                **store_settings)
    body = {"redirect_uris": ["http://127.0.0.1:9/cb"], "token_endpoint_auth_method": "none"}

    async def register(address: str) -> int:
        async with session_from("127.0.0.1") as proxy, proxy.post(
                server.url + "/register", json=body, headers={"X-Forwarded-For": address}) as resp:
            return resp.status

    try:
        assert [await register("198.51.100.7") for _ in range(3)] == [201, 201, 429]
        assert await register("198.51.100.8") == 201
    finally:
        await server.stop()

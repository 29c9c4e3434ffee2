"""Signing in through an upstream OpenID provider (auth/upstream/), against a real one: oidc-provider
(OpenID Certified, pinned in tests/interop/oidc) on loopback, behind a forwarding gateway that can
take it down or forge its ID tokens (tests/upstream.py).

The provider is on `localhost` and the server under test on `127.0.0.1`: two sites, as in a real
deployment, so the browser-side cookies (SameSite=Lax) see a cross-site return from the provider.
Everything is real: the mcp SDK's OAuthClientProvider, the provider's own sign-in and consent
forms (driven by tests/browser.py), the server's /token, its store on SQLite (and, for the flows that
write what the store must keep consistent, on Redis too).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from aiohttp import web
from playwright.async_api import Browser as Chromium
from playwright.async_api import async_playwright

from auth import memories
from auth.crypto import hash_secret
from server import admin
from server.storage.redis import RedisStorage
from tests import test_pages_browser as pages_browser
from tests.browser import Browser, parse_forms
from tests.conftest import OAuthUser, RunningServer, on_both_backends, start_server
from tests.conftest import free_socket as socket_for_callback
from tests.upstream import (
    Gateway,
    Provider,
    claims_of,
    client_for,
    free_port,
    hmac_with_public_key,
    new_key,
    resign,
    start_provider,
    unsigned,
)

SECRET = "provider-secret-of-memory-mcp"
TOKEN_KEY = base64.b64encode(bytes(range(32))).decode()
CLIENT_REDIRECT = "http://127.0.0.1:9/callback"


@dataclass
class IdP:
    """The provider as the server under test sees it: the gateway's origin is its issuer."""

    issuer: str
    gateway: Gateway
    provider: Provider
    workdir: Path
    clients: list[dict[str, Any]]

    async def restart(self, keys: list[Any]) -> None:
        """The provider restarts with other keys (a rotation); the gateway follows it."""
        self.provider.stop()
        self.provider = await asyncio.to_thread(start_provider, self.workdir, self.issuer, self.clients, keys=keys)
        self.gateway.target_port = self.provider.port


@dataclass
class Setup:
    idp: IdP
    server: RunningServer
    port: int

    @property
    def callback(self) -> str:
        return self.server.url + "/login/upstream/callback"


# The flows that write links, upstream tokens and accounts run on both backends
# (`on_both_backends("store_settings")`); those about what the provider sends, on SQLite only.
@pytest.fixture
async def make(tmp_path: Path, store_settings: dict[str, Any]) -> AsyncIterator[Callable[..., Awaitable[Setup]]]:
    """`await make(**settings)`: a provider (behind its gateway) and a server signing in through it."""
    made: list[Setup] = []

    async def build(access_token_ttl: int = 3600, **settings: Any) -> Setup:
        port, gateway_port = free_port(), free_port()
        issuer = f"http://localhost:{gateway_port}"
        clients = [client_for(f"http://127.0.0.1:{port}")]
        provider = await asyncio.to_thread(start_provider, tmp_path / "idp", issuer, clients,
                                           keys=[new_key("key-1")], access_token_ttl=access_token_ttl)
        gateway = Gateway(gateway_port, provider.port)
        await gateway.start()
        idp = IdP(issuer, gateway, provider, tmp_path / "idp", clients)
        options: dict[str, Any] = {"upstream_issuer": issuer, "upstream_client_id": "memory-mcp",
                                   "upstream_client_secret": SECRET, "local_login": False, **store_settings,
                                   **settings}
        server = await start_server(tmp_path / f"data-{len(made)}", port=port, **options)
        setup = Setup(idp, server, port)
        made.append(setup)
        return setup

    yield build
    for setup in made:
        await setup.server.stop()
        await setup.idp.gateway.stop()
        setup.idp.provider.stop()


REFRESH_SETTINGS: dict[str, Any] = {
    "upstream_check": "refresh", "upstream_token_keys": (TOKEN_KEY,),
    "upstream_scopes": ("openid", "profile", "email", "offline_access"),
    "upstream_authorize_params": {"prompt": "consent"},
}


async def register(server: RunningServer, redirect_uri: str = CLIENT_REDIRECT) -> str:
    async with httpx2.AsyncClient() as http:
        resp = await http.post(server.url + "/register",
                               json={"client_name": "by hand", "redirect_uris": [redirect_uri]})
        client_id: str = resp.json()["client_id"]
        return client_id


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize_url(server: RunningServer, client_id: str, challenge: str, **extra: str) -> str:
    return server.url + "/authorize?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": CLIENT_REDIRECT, "state": "client-state",
        "code_challenge": challenge, "code_challenge_method": "S256", "scope": "memory:read memory:write",
        "resource": server.url + "/mcp", **extra})


async def sign_in(setup: Setup, account: str = "alice", browser: Browser | None = None,
                  **extra: str) -> tuple[dict[str, Any], str]:
    """The whole flow by hand: our page, the provider's forms, the code at our /token. Returns our
    token response and the client id."""
    client_id = await register(setup.server)
    verifier, challenge = pkce()
    own = browser is None
    browser = browser or Browser(account, "any password", provider=setup.idp.issuer)
    try:
        redirect = await browser.authorize(authorize_url(setup.server, client_id, challenge, **extra), setup.server.url)
    finally:
        if own:
            await browser.close()
    assert redirect.url.startswith(CLIENT_REDIRECT), redirect.url
    params = redirect.params
    assert params["state"] == "client-state" and params["iss"] == setup.server.url
    async with httpx2.AsyncClient() as http:
        resp = await http.post(setup.server.url + "/token", data={
            "grant_type": "authorization_code", "code": params["code"], "code_verifier": verifier,
            "client_id": client_id, "redirect_uri": CLIENT_REDIRECT})
    assert resp.status_code == 200, resp.text
    return resp.json(), client_id


async def refresh(setup: Setup, tokens: dict[str, Any], client_id: str) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.post(setup.server.url + "/token", data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id})


async def failed_sign_in(setup: Setup, account: str = "alice") -> tuple[int, str]:
    """A flow that must end on one of our error pages: its status and text."""
    client_id = await register(setup.server)
    _, challenge = pkce()
    browser = Browser(account, "any password", provider=setup.idp.issuer)
    try:
        with pytest.raises(AssertionError):
            await browser.authorize(authorize_url(setup.server, client_id, challenge), setup.server.url)
        return browser.last_status, html.unescape(browser.last_page)
    finally:
        await browser.close()


async def stored(server: RunningServer, *kinds: str) -> list[int]:
    """How many codes, tokens and upstream links ("codes", "tokens", "links") the store holds."""
    storage = server.storage
    if isinstance(storage, RedisStorage):
        client: Any = storage.client
        words = {"codes": "code:", "tokens": "token:", "links": "user-upstream:"}
        return [len([key async for key in client.scan_iter(match=storage.key(words[kind]) + "*")]) for kind in kinds]
    tables = {"codes": "auth_codes", "tokens": "auth_tokens", "links": "auth_upstream_links"}
    return await server.sqlite.db.read(lambda conn: [
        conn.execute(f"SELECT count(*) FROM {tables[kind]}").fetchone()[0] for kind in kinds])  # noqa: S608


async def nothing_issued(setup: Setup) -> None:
    """No account was created and no code or token exists."""
    assert await setup.server.storage.list_users() == []
    assert await stored(setup.server, "codes", "tokens", "links") == [0, 0, 0]


# The whole flow


@on_both_backends("store_settings")
async def test_mcp_client_signs_in_through_the_provider_and_holds_our_tokens(make: Any) -> None:
    setup = await make()
    seen_upstream: list[dict[str, Any]] = []

    def record(body: dict[str, Any]) -> dict[str, Any]:
        seen_upstream.append(body)
        return body

    setup.idp.gateway.tamper_token = record
    user = OAuthUser(setup.server.url, "alice", "any password", upstream=setup.idp.issuer)
    async with user.client() as (client, _):
        await client.call_tool("create_entities", {"entities": [
            {"name": "Ada", "entityType": "person", "observations": ["signed in upstream"]}]})
        graph = await client.call_tool("read_graph", {})
    assert graph.structured_content == {"entities": [
        {"name": "Ada", "entityType": "person", "observations": ["signed in upstream"]}], "relations": []}
    ours = user.storage.tokens
    assert ours is not None and ours.refresh_token
    # Our tokens: opaque (not a JWT of the provider), known to our store, bound to our resource.
    [upstream] = seen_upstream
    for token in (ours.access_token, ours.refresh_token):
        assert token.count(".") == 0 and len(token) == 43
        assert token not in (upstream["access_token"], upstream.get("refresh_token"), upstream["id_token"])
    record_ = await setup.server.storage.get_token(hash_secret(ours.access_token), time.time())
    assert record_ is not None and record_.resource == setup.server.url + "/mcp"
    # The account: created on this first sign-in, linked by (issuer, sub), named from the claims.
    [account] = await setup.server.storage.list_users()
    assert account.username == "alice" and record_.subject == account.id
    link = await setup.server.storage.get_upstream_link(account.id)
    assert link is not None and (link.issuer.rstrip("/"), link.subject) == (setup.idp.issuer, "alice")
    # The provider's ID token named the client we configured, and the nonce we sent.
    assert claims_of(upstream["id_token"])["aud"] == "memory-mcp"
    # Upstream check is off: nothing of the provider's is kept.
    assert await setup.server.storage.get_upstream_tokens(account.id) is None
    # A second sign-in (a new client, a new browser) reaches the same account and memory.
    again = OAuthUser(setup.server.url, "alice", "any password", upstream=setup.idp.issuer)
    async with again.client() as (client, _):
        graph = await client.call_tool("read_graph", {})
    assert graph.structured_content["entities"][0]["name"] == "Ada"
    assert [u.id for u in await setup.server.storage.list_users()] == [account.id]


async def test_sign_in_page_is_the_consent_and_leaves_by_navigation(make: Any) -> None:
    setup = await make()
    client_id = await register(setup.server)
    _, challenge = pkce()
    async with httpx2.AsyncClient() as http:
        page = await http.get(authorize_url(setup.server, client_id, challenge))
    assert page.status_code == 200
    assert "wants to access your memory" in page.text and "Approve and sign in with localhost" in page.text
    assert 'name="password"' not in page.text  # local_login off
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    # Password sign-in is off: its POST is a clear refusal.
    async with httpx2.AsyncClient() as http:
        refused = await http.post(setup.server.url + "/login", data={"username": "x", "password": "y"})
    assert refused.status_code == 403 and "turned off" in refused.text


async def test_an_account_with_several_memories_chooses_one_after_the_provider(make: Any) -> None:
    """The approval on the sign-in page is given before the account is known: an account with one
    memory gets its code at once; one with several is shown the consent page after the provider,
    and the memory chosen there is the grant's."""
    setup = await make()
    first, _ = await sign_in(setup)
    [account] = await setup.server.storage.list_users()
    record = await setup.server.storage.get_token(hash_secret(first["access_token"]), time.time())
    assert record is not None and record.memory is None  # the default memory, no page in between
    work = await memories.create(setup.server.storage, account, "work", limit=20, now=time.time())
    browser = Browser("alice", "any password", provider=setup.idp.issuer, memory="work")
    try:
        tokens, _ = await sign_in(setup, browser=browser)
    finally:
        await browser.close()
    assert any('name="memory"' in page and "work" in page for page in browser.pages)
    record = await setup.server.storage.get_token(hash_secret(tokens["access_token"]), time.time())
    assert record is not None and record.memory == memories.stored_id(account.id, work.id)


@on_both_backends("store_settings")
async def test_password_and_provider_side_by_side(make: Any) -> None:
    setup = await make(local_login=True)
    from auth import accounts
    await accounts.add_user(setup.server.storage, "carol", "carol-password-1")
    client_id = await register(setup.server)
    _, challenge = pkce()
    browser = Browser("carol", "carol-password-1")  # the password form, as before
    try:
        first = await browser.authorize(authorize_url(setup.server, client_id, challenge), setup.server.url)
    finally:
        await browser.close()
    assert "code" in first.params
    assert 'action="/login/upstream"' in browser.pages[0] and 'name="password"' in browser.pages[0]
    tokens, _ = await sign_in(setup, "alice")
    assert tokens["access_token"]
    names = sorted(u.username for u in await setup.server.storage.list_users())
    assert names == ["alice", "carol"]
    # The linked account has no password: the password form refuses it like an unknown user.
    browser = Browser("alice", "anything at all")
    try:
        with pytest.raises(AssertionError):
            await browser.authorize(authorize_url(setup.server, client_id, challenge), setup.server.url)
        assert browser.last_status == 401 and "Invalid username or password" in browser.last_page
    finally:
        await browser.close()


# The callback's defences


async def test_callback_replayed_from_another_browser_or_without_pending(make: Any) -> None:
    setup = await make()
    client_id = await register(setup.server)
    _, challenge = pkce()
    url = authorize_url(setup.server, client_id, challenge)
    first = Browser("alice", "pw", provider=setup.idp.issuer)
    other = Browser("alice", "pw", provider=setup.idp.issuer)
    try:
        back = await first.authorize(url, setup.server.url, stop_at=setup.callback)
        assert back.url.startswith(setup.callback) and "code" in back.params
        # Another browser with the provider's answer: nothing pending there.
        async with other.session.get(back.url) as resp:
            assert resp.status == 400 and "No sign-in through localhost is pending" in await resp.text()
        # Without any pending sign-in or state at all.
        async with other.session.get(setup.callback + "?code=abc&state=xyz") as resp:
            assert resp.status == 400
        async with other.session.get(setup.callback) as resp:
            assert resp.status == 400
        await nothing_issued(setup)
        # The browser that started it completes it (its answer, once)...
        done = await first.authorize(back.url, setup.server.url)
        assert "code" in done.params
        # ... and the same answer again is a replay: the pending cookie is gone.
        async with first.session.get(back.url) as resp:
            assert resp.status == 400 and "completed already" in await resp.text()
    finally:
        await first.close()
        await other.close()


async def test_state_mismatch_and_provider_error_end_on_pages(make: Any) -> None:
    setup = await make()
    client_id = await register(setup.server)
    _, challenge = pkce()
    browser = Browser("alice", "pw", provider=setup.idp.issuer)
    try:
        back = await browser.authorize(authorize_url(setup.server, client_id, challenge), setup.server.url,
                                       stop_at=setup.callback)
        query = parse_qs(urlsplit(back.url).query)
        # The right cookie's name, another state: refused (the cookie is named by a hash of the state).
        forged = setup.callback + "?" + urlencode({"code": query["code"][0], "state": query["state"][0] + "x"})
        async with browser.session.get(forged) as resp:
            assert resp.status == 400
        # The provider reporting an error (the user cancelled there).
        cancelled = setup.callback + "?" + urlencode({"error": "access_denied", "state": query["state"][0]})
        async with browser.session.get(cancelled) as resp:
            text = await resp.text()
            assert resp.status == 400 and "did not sign you in (access_denied" in text
        await nothing_issued(setup)
    finally:
        await browser.close()


@pytest.mark.parametrize(("case", "message"), [
    ("wrong nonce", "nonce is not the one this sign-in sent"),
    ("wrong audience", "not meant for this server"),
    ("other azp", "issued to another client"),
    ("expired", "has expired"),
    ("other issuer", "issued by"),
    ("unknown key", "does not publish"),
    ("alg none", "signed with 'none'"),
    ("HS256 with the public key", "signed with 'HS256'"),
])
async def test_forged_id_tokens_are_refused(make: Any, case: str, message: str) -> None:
    setup = await make()
    key = setup.idp.provider.keys[0]
    rogue = new_key("rogue")

    def change(claims: dict[str, Any]) -> None:
        if case == "wrong nonce":
            claims["nonce"] = "not-the-nonce"
        elif case == "wrong audience":
            claims["aud"] = "another-client"
        elif case == "other azp":
            claims["aud"], claims["azp"] = ["memory-mcp", "another-client"], "another-client"
        elif case == "expired":
            claims["exp"], claims["iat"] = int(time.time()) - 3600, int(time.time()) - 7200
        elif case == "other issuer":
            claims["iss"] = "http://localhost:1/"

    def forge(body: dict[str, Any]) -> dict[str, Any]:
        token = body["id_token"]
        if case == "unknown key":
            forged = resign(token, rogue, lambda _: None)
        elif case == "alg none":
            forged = unsigned(token)
        elif case == "HS256 with the public key":
            forged = hmac_with_public_key(token, key)
        else:
            forged = resign(token, key, change)
        return {**body, "id_token": forged}

    setup.idp.gateway.tamper_token = forge
    jwks_before = sum(1 for r in setup.idp.gateway.requests if r.path == "/jwks")
    status, page = await failed_sign_in(setup)
    assert status == 502 and message in page, page
    assert "Nothing was issued" in page
    await nothing_issued(setup)
    if case == "unknown key":
        # One refetch of the keys for the unknown kid (a rotation would have shown up there).
        assert sum(1 for r in setup.idp.gateway.requests if r.path == "/jwks") == jwks_before + 2


async def test_key_rotation_at_the_provider_is_followed(make: Any) -> None:
    setup = await make()
    await sign_in(setup, "alice")
    rotated = new_key("key-2")
    await setup.idp.restart([rotated, setup.idp.provider.keys[0]])
    tokens, _ = await sign_in(setup, "alice")
    assert tokens["access_token"]
    assert len(await setup.server.storage.list_users()) == 1


# Who may sign in


async def test_admission_policy_applies_before_any_account_exists(make: Any) -> None:
    setup = await make(upstream_allowed_domains=("example.com",))
    for account, why in (("mallory", "not among the users allowed"), ("eve", "verified email")):
        status, page = await failed_sign_in(setup, account)
        assert status == 403 and "does not admit your account" in page and why in page, page
    await nothing_issued(setup)
    await sign_in(setup, "alice")
    assert [u.username for u in await setup.server.storage.list_users()] == ["alice"]


async def test_required_group_and_allowed_users(make: Any) -> None:
    setup = await make(upstream_required_claim="groups=memory-users",
                       upstream_scopes=("openid", "profile", "email", "groups"))
    status, page = await failed_sign_in(setup, "bob")
    assert status == 403 and "groups=memory-users" in page
    await sign_in(setup, "alice")
    listed = await make(upstream_allowed_users=("bob@example.com", "mallory"))
    await sign_in(listed, "bob")
    await sign_in(listed, "mallory")
    status, _ = await failed_sign_in(listed, "alice")
    assert status == 403


# The provider down


async def test_provider_down_when_signing_in_and_at_the_callback(make: Any) -> None:
    setup = await make()
    client_id = await register(setup.server)
    _, challenge = pkce()
    browser = Browser("alice", "pw", provider=setup.idp.issuer)
    try:
        back = await browser.authorize(authorize_url(setup.server, client_id, challenge), setup.server.url,
                                       stop_at=setup.callback)
        await setup.idp.gateway.stop()
        async with browser.session.get(back.url) as resp:
            text = await resp.text()
            assert resp.status == 503 and "cannot be reached right now" in text and resp.headers["Retry-After"]
        await nothing_issued(setup)
    finally:
        await browser.close()
    # Before going upstream at all: our page says so (the discovery document was fetched before,
    # so a fresh server is needed to see it missing).
    fresh = await make()
    await fresh.idp.gateway.stop()
    status, page = await failed_sign_in(fresh)
    assert status == 503 and "cannot be reached right now" in page


def serve_argv(data_dir: Path, port: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "server", "serve", "--port", str(port), "--data-dir", str(data_dir), *flags]


async def serve_until_ready(argv: list[str]) -> tuple[int | None, str]:
    """Run `memory-mcp serve`; its exit code (None: it served) and what it printed."""
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    return await proc.wait(), "".join(lines)
                lines.append(line)
                if "serving MCP" in line:
                    return None, "".join(lines)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def test_start_up_reports_the_provider_in_one_line(make: Any, tmp_path: Path) -> None:
    setup = await make()
    issuer = setup.idp.issuer
    base = ["--upstream-issuer", issuer, "--upstream-client-id", "memory-mcp", "--local-login", "false"]
    port = free_port()
    # A correct configuration: it finds that the provider wants client_secret_post, and warns
    # that nobody is kept out.
    code, out = await serve_until_ready(serve_argv(tmp_path / "a", port, *base, "--upstream-client-secret", SECRET))
    assert code is None and f"signing users in through {issuer}" in out and "no admission policy" in out, out
    # A wrong secret stops it, without echoing the secret.
    code, out = await serve_until_ready(serve_argv(tmp_path / "b", port, *base, "--upstream-client-secret",
                                                   "not-the-secret"))
    assert code == 2 and "refused this server's client credentials" in out and "not-the-secret" not in out, out
    assert len([line for line in out.splitlines() if "upstream_issuer=" in line]) == 1
    # A provider without S256 PKCE stops it.
    setup.idp.gateway.tamper_discovery = lambda doc: {**doc, "code_challenge_methods_supported": ["plain"]}
    code, out = await serve_until_ready(serve_argv(tmp_path / "c", port, *base, "--upstream-client-secret", SECRET))
    assert code == 2 and "does not support PKCE with S256" in out, out
    # One that does not say: a warning, and PKCE is sent anyway.
    setup.idp.gateway.tamper_discovery = lambda doc: {k: v for k, v in doc.items()
                                                      if k != "code_challenge_methods_supported"}
    code, out = await serve_until_ready(serve_argv(tmp_path / "d", port, *base, "--upstream-client-secret", SECRET))
    assert code is None and "does not say whether it supports PKCE" in out, out
    # The provider down: the server starts, says so, and serves (issued tokens need no provider).
    await setup.idp.gateway.stop()
    code, out = await serve_until_ready(serve_argv(tmp_path / "e", port, *base, "--upstream-client-secret", SECRET))
    assert code is None and "cannot be reached" in out and "serving anyway" in out, out
    # An issuer that is not the provider's: its discovery names another.
    await setup.idp.gateway.start()
    setup.idp.gateway.tamper_discovery = None
    code, out = await serve_until_ready(serve_argv(tmp_path / "f", port, "--upstream-issuer",
                                                   issuer.replace("localhost", "127.0.0.1"),
                                                   "--upstream-client-id", "memory-mcp",
                                                   "--upstream-client-secret", SECRET))
    assert code == 2 and "names the issuer" in out, out


# Refresh: the provider is asked whether the account is still allowed


async def test_refresh_checks_the_account_upstream(make: Any) -> None:
    # The provider's access tokens live 2 seconds: they expire long before ours, and must not matter.
    setup = await make(access_token_ttl=2, **REFRESH_SETTINGS)
    tokens, client_id = await sign_in(setup, "alice")
    [account] = await setup.server.storage.list_users()
    sealed = await setup.server.storage.get_upstream_tokens(account.id)
    assert sealed is not None and "." in sealed
    await asyncio.sleep(2.5)
    # Our access token outlives the provider's.
    assert await setup.server.storage.get_token(hash_secret(tokens["access_token"]), time.time()) is not None
    resp = await refresh(setup, tokens, client_id)
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    upstream_refreshes = [r for r in setup.idp.gateway.requests
                          if r.path == "/token" and r.form.get("grant_type") == "refresh_token"]
    assert len(upstream_refreshes) == 1
    # Kept sealed, never in the clear: the provider's refresh token is not in the database.
    rotated = await setup.server.storage.get_upstream_tokens(account.id)
    assert rotated is not None and rotated != sealed
    assert upstream_refreshes[0].form["refresh_token"] not in rotated
    # The provider down: a retryable 503, and our grant stays.
    await asyncio.sleep(2.2)  # past the moment a fresh confirmation is reused
    await setup.idp.gateway.stop()
    resp = await refresh(setup, tokens, client_id)
    assert resp.status_code == 503 and resp.json()["error"] == "temporarily_unavailable", resp.text
    assert int(resp.headers["Retry-After"]) > 0
    await setup.idp.gateway.start()
    resp = await refresh(setup, tokens, client_id)
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    await asyncio.sleep(2.2)  # past the moment a fresh confirmation is reused
    # The provider no longer knows the account: our grant is revoked, the user signed out.
    await asyncio.to_thread(setup.idp.provider.disable, "alice")
    resp = await refresh(setup, tokens, client_id)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text
    assert "no longer allowed" in resp.json()["error_description"]
    assert await setup.server.storage.get_token(hash_secret(tokens["access_token"]), time.time()) is None
    assert await setup.server.storage.get_upstream_tokens(account.id) is None


@on_both_backends("store_settings")
async def test_concurrent_refreshes_share_one_upstream_check(make: Any) -> None:
    setup = await make(**REFRESH_SETTINGS)
    first, first_client = await sign_in(setup, "alice")
    second, second_client = await sign_in(setup, "alice")
    answers = await asyncio.gather(refresh(setup, first, first_client), refresh(setup, second, second_client))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    refreshes = [r for r in setup.idp.gateway.requests
                 if r.path == "/token" and r.form.get("grant_type") == "refresh_token"]
    assert len(refreshes) == 1  # the provider rotates and revokes on reuse: one use only
    await asyncio.sleep(2.2)
    again = await refresh(setup, answers[0].json(), first_client)
    assert again.status_code == 200, again.text  # the provider's chain is intact


@on_both_backends("store_settings")
async def test_refresh_without_a_refresh_token_from_the_provider_is_a_clear_error(make: Any) -> None:
    # upstream_check=refresh without offline_access: the provider issues no refresh token.
    setup = await make(upstream_check="refresh", upstream_token_keys=(TOKEN_KEY,))
    status, page = await failed_sign_in(setup)
    assert status == 502 and "issued no refresh token" in page
    assert await setup.server.storage.list_users() == []


# Sign-out and removal


async def test_logout_offers_to_sign_out_upstream(make: Any) -> None:
    setup = await make()
    browser = Browser("alice", "pw", provider=setup.idp.issuer)
    try:
        await sign_in(setup, "alice", browser)
        async with browser.session.get(setup.server.url + "/logout") as resp:
            form = re.search(r'name="csrf_token" value="([^"]*)"', await resp.text())
        assert form is not None
        async with browser.session.post(setup.server.url + "/logout", data={"csrf_token": form.group(1)}) as resp:
            page = await resp.text()
        assert "You are signed out in every browser" in page
        link = re.search(r'<a href="([^"]*)">Sign out of localhost too</a>', page)
        assert link is not None
        end_session = link.group(1).replace("&amp;", "&")
        query = parse_qs(urlsplit(end_session).query)
        assert end_session.startswith(setup.idp.issuer + "/session/end")
        assert query["client_id"] == ["memory-mcp"] and query["post_logout_redirect_uri"] == [
            setup.server.url + "/logout"]
        # Following it: the provider asks, and returns to our signed-out page.
        back = await browser.authorize(end_session, setup.server.url, stop_at=setup.server.url + "/logout")
        assert back.url.startswith(setup.server.url + "/logout")
        # Signed out upstream too: the next sign-in asks for the provider's login again.
        browser.pages.clear()
        await sign_in(setup, "alice", browser)
        assert any('name="login"' in page for page in browser.pages)
    finally:
        await browser.close()


@on_both_backends("store_settings")
async def test_users_remove_works_for_linked_users(make: Any) -> None:
    setup = await make(**REFRESH_SETTINGS)
    tokens, _ = await sign_in(setup, "alice")
    [account] = await setup.server.storage.list_users()
    listed = await admin.users_list(setup.server.storage)
    assert listed == f"alice (signs in through {setup.idp.issuer})"
    done = await admin.users_remove(setup.server.storage, "alice")
    assert done.startswith("removed user alice")
    assert await setup.server.storage.get_upstream_link(account.id) is None
    assert await setup.server.storage.get_upstream_tokens(account.id) is None
    assert await setup.server.storage.get_token(hash_secret(tokens["access_token"]), time.time()) is None
    # Signing in again makes a new, empty account.
    await sign_in(setup, "alice")
    [again] = await setup.server.storage.list_users()
    assert again.id != account.id


async def test_no_provider_token_in_our_logs_or_urls(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    setup = await make(**REFRESH_SETTINGS)
    seen: list[dict[str, Any]] = []

    def record(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return body

    setup.idp.gateway.tamper_token = record
    browser = Browser("alice", "pw", provider=setup.idp.issuer)
    try:
        tokens, client_id = await sign_in(setup, "alice", browser)
        await refresh(setup, tokens, client_id)
    finally:
        await browser.close()
    secrets_seen = {v for body in seen for k, v in body.items() if k in ("access_token", "refresh_token", "id_token")}
    assert secrets_seen
    ours = [url for url in browser.visited if url.startswith(setup.server.url)]
    logged = caplog.text
    for value in secrets_seen:
        assert value not in logged
        assert not any(value in url for url in ours)
    assert json.dumps(seen)  # recorded for the assertions above


# In a real browser: Chromium applies CSP form-action to redirects after a form submission, and
# SameSite to the provider's cross-site return (tests/test_pages_browser.py has the rationale).

@pytest.fixture
async def chromium() -> AsyncIterator[Chromium]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=pages_browser.chromium_path())
        yield launched
        await launched.close()


@pytest.fixture
async def app_callback() -> AsyncIterator[pages_browser.Callback]:
    """The fake OAuth client's redirect URI (as tests/test_pages_browser.py's `callback`)."""
    sock = socket_for_callback()
    result = pages_browser.Callback(f"http://127.0.0.1:{sock.getsockname()[1]}/callback")

    async def arrive(request: web.Request) -> web.Response:
        result.arrivals.put_nowait(dict(request.query))
        return web.Response(text="<!doctype html><title>Connected</title><p>Connected.</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/callback", arrive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    yield result
    await runner.cleanup()


async def test_real_browser_signs_in_through_the_provider(make: Any, app_callback: pages_browser.Callback,
                                                          chromium: Chromium) -> None:
    setup = await make()
    callback = app_callback
    app = await pages_browser.register(setup.server, callback)
    tab = await pages_browser.new_tab(chromium)
    page = tab.page
    await page.goto(app.url)
    assert await page.title() == "Sign in to memory-mcp"
    await page.check("input[name=remember]")
    await page.click("button:has-text('Approve and sign in with localhost')")
    # The provider's own sign-in form, on its own site.
    await page.wait_for_selector("input[name=login]")
    assert page.url.startswith(setup.idp.issuer + "/interaction/")
    await page.fill("input[name=login]", "alice")
    await page.fill("input[name=password]", "any password")
    await page.click("button[type=submit]")
    await page.wait_for_selector("button:has-text('Continue')")
    await page.click("button:has-text('Continue')")
    tokens = await pages_browser.redeem(setup.server, app, await callback.next())
    assert tokens["scope"] == "memory:read openid" and tokens["access_token"].count(".") == 0
    assert tab.csp_violations == []
    # Signed in here now, with the approval remembered: the app's next authorization comes straight back.
    again = pages_browser.authorization(setup.server, app.client_id, callback.url)
    await page.goto(again.url)
    assert "memory:read" in (await pages_browser.redeem(setup.server, again, await callback.next()))["scope"]
    assert tab.csp_violations == []


# Settings: every misconfiguration a message naming the setting, never a secret


def test_upstream_settings_are_validated_without_echoing_secrets(tmp_path: Path) -> None:
    from server.config import ConfigError, load

    base = {"MEMORY_MCP_UPSTREAM_ISSUER": "https://tenant.example.auth0.com/",
            "MEMORY_MCP_UPSTREAM_CLIENT_ID": "abc", "MEMORY_MCP_DATA_DIR": str(tmp_path)}

    def refused(**env: str) -> str:
        with pytest.raises(ConfigError) as caught:
            load({}, {**base, **env})
        return str(caught.value)

    settings = load({}, {**base, "MEMORY_MCP_UPSTREAM_CLIENT_SECRET": "s3cret-value",
                         "MEMORY_MCP_UPSTREAM_AUTHORIZE_PARAMS": "audience=https://api.example.com,connection=db",
                         "MEMORY_MCP_UPSTREAM_SCOPES": "openid profile email offline_access",
                         "MEMORY_MCP_UPSTREAM_REQUIRED_CLAIM": "https://example.com/roles=memory"})
    upstream = settings.upstream_settings()
    assert upstream is not None and upstream.client_secret == "s3cret-value"
    assert upstream.authorize_params == (("audience", "https://api.example.com"), ("connection", "db"))
    assert upstream.policy.required_claim == ("https://example.com/roles", "memory")
    assert "s3cret-value" not in repr(settings) and "s3cret-value" not in repr(upstream)
    # The secret from a file (its first line).
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    from_file = load({}, {**base, "MEMORY_MCP_UPSTREAM_CLIENT_SECRET_FILE": str(secret_file)}).upstream_settings()
    assert from_file is not None and from_file.client_secret == "from-a-file"
    assert "cannot be read" in refused(MEMORY_MCP_UPSTREAM_CLIENT_SECRET_FILE=str(tmp_path / "missing"))
    # Keys: 32 bytes of base64, never echoed.
    bad_key = "not-a-key-at-all-but-secret"
    message = refused(MEMORY_MCP_UPSTREAM_CHECK="refresh", MEMORY_MCP_UPSTREAM_TOKEN_KEYS=bad_key)
    assert "upstream_token_keys" in message and bad_key not in message
    assert "set upstream_token_keys" in refused(MEMORY_MCP_UPSTREAM_CHECK="refresh")
    assert "response_type" in refused(MEMORY_MCP_UPSTREAM_AUTHORIZE_PARAMS="response_type=token")
    assert "must include openid" in refused(MEMORY_MCP_UPSTREAM_SCOPES="profile email")
    assert "must be https" in refused(MEMORY_MCP_UPSTREAM_ISSUER="http://id.example.com")
    assert "upstream_client_id" in refused(MEMORY_MCP_UPSTREAM_CLIENT_ID="")
    # Without an issuer, the other upstream settings are a mistake, and so is no way to sign in.
    with pytest.raises(ConfigError, match="need upstream_issuer"):
        load({}, {"MEMORY_MCP_UPSTREAM_CLIENT_SECRET": "hidden-one", "MEMORY_MCP_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="nobody could sign in"):
        load({}, {"MEMORY_MCP_LOCAL_LOGIN": "false", "MEMORY_MCP_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError) as caught:
        load({}, {"MEMORY_MCP_UPSTREAM_CLIENT_SECRET": "hidden-one", "MEMORY_MCP_DATA_DIR": str(tmp_path)})
    assert "hidden-one" not in str(caught.value)


# The store's side: one account per upstream identity, compare-and-set on kept tokens


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_store_links_one_account_per_identity_and_compares_before_setting(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    from auth.models import User
    from auth.store import UserExistsError
    from server.storage.redis import RedisStorage
    from server.storage.sqlite import SQLiteStorage

    storage: SQLiteStorage | RedisStorage = (SQLiteStorage(tmp_path / "db.sqlite3") if backend == "sqlite"
                                             else RedisStorage(request.getfixturevalue("redis_url")))
    try:
        now = time.time()

        def user(name: str) -> User:
            return User(id=secrets.token_hex(16), username=name, password_hash="!no-password", created_at=now)

        # Two first sign-ins at once: one account.
        made = await asyncio.gather(*(storage.link_upstream_user("https://idp", "sub-1", user(f"a{i}"), now)
                                      for i in range(5)))
        assert len({u.id for u in made}) == 1
        # Another identity with a taken name: refused, nothing stored; with a free name: its own account.
        with pytest.raises(UserExistsError):
            await storage.link_upstream_user("https://idp", "sub-2", user(made[0].username), now)
        other = await storage.link_upstream_user("https://idp", "sub-2", user("b"), now)
        assert other.id != made[0].id
        # The same subject at another issuer is another identity.
        third = await storage.link_upstream_user("https://other-idp", "sub-1", user("c"), now)
        assert third.id not in (made[0].id, other.id)
        link = await storage.get_upstream_link(made[0].id)
        assert link is not None and (link.issuer, link.subject) == ("https://idp", "sub-1")
        # Compare-and-set.
        assert await storage.set_upstream_tokens(other.id, "v1")
        assert not await storage.set_upstream_tokens(other.id, "v2", replacing="v0")
        assert await storage.set_upstream_tokens(other.id, "v2", replacing="v1")
        assert await storage.get_upstream_tokens(other.id) == "v2"
        assert not await storage.set_upstream_tokens(other.id, None, replacing="v1")
        assert await storage.set_upstream_tokens(other.id, None, replacing="v2")
        assert await storage.get_upstream_tokens(other.id) is None
        # Removal takes the link and the kept tokens with the account.
        await storage.set_upstream_tokens(other.id, "v3")
        removing = await storage.begin_removal("b")
        assert removing is not None
        assert await storage.get_upstream_link(other.id) is None and await storage.get_upstream_tokens(other.id) is None
        await storage.remove_user(other.id)
        again = await storage.link_upstream_user("https://idp", "sub-2", user("b"), now)
        assert again.id != other.id
    finally:
        await storage.close()


@on_both_backends("store_settings")
async def test_plain_sign_in_without_an_application(make: Any) -> None:
    """From /login (or /consents): the provider's button signs the browser in, nothing else."""
    setup = await make()
    browser = Browser("alice", "pw", provider=setup.idp.issuer)
    try:
        async with browser.session.get(setup.server.url + "/login") as resp:
            [form] = parse_forms(await resp.text())
        assert form.action == "/login/upstream" and "request" not in form.fields
        async with browser.session.post(setup.server.url + form.action, data=form.fields) as resp:
            leave = re.search(r'content="0;url=([^"]*)"', await resp.text())
        assert leave is not None
        back = await browser.authorize(html.unescape(leave.group(1)), setup.server.url, stop_at=setup.callback)
        async with browser.session.get(back.url) as resp:
            assert "You are signed in as <strong>alice</strong>" in await resp.text()
        # /consents leads to the account page, where nothing is connected.
        async with browser.session.get(setup.server.url + "/consents") as resp:
            page = await resp.text()
            assert "Signed in as <strong>alice</strong>" in page and "No application is connected" in page
    finally:
        await browser.close()
    assert await stored(setup.server, "codes") == [0]

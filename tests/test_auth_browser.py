"""The browser side's defences, each refusal checked together with "nothing was issued or changed":
CSRF, the browser-binding cookie, clickjacking headers, remembered consent and its withdrawal,
login throttling, user enumeration, session fixation, escaping."""

from __future__ import annotations

import re
import statistics
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from auth import accounts, consent, passwords, throttle
from auth.crypto import hash_secret
from auth.models import Token, User
from auth.passwords import hash_password
from auth.ratelimit import MemoryRateLimiter
from auth.routes import install
from auth.settings import AuthSettings
from server.storage.sqlite.auth import AuthTables
from server.storage.sqlite.db import Database
from tests.authflow import (
    COOKIE_KEY,
    PASSWORD,
    Backend,
    Env,
    Store,
    authorize_path,
    count,
    hidden_fields,
    login,
    make_env,
    path_of,
    pkce,
    query_of,
    refresh_target,
    register,
)

CB = "http://127.0.0.1:9/callback"
FIRST_PARTY = {"Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"}
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"}
BOB_PASSWORD = "bob's own passphrase"


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
              store_backend: Backend) -> Env:
    return await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(env: Env) -> FakeClock:
    """The login limiter on a clock the test moves."""
    fake = FakeClock()
    env.server.limiter = MemoryRateLimiter(clock=fake)
    return fake


@pytest.fixture
def fast_passwords(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Password checks without argon2's cost, for tests that only count attempts."""
    checked: list[str] = []

    async def verify(password_hash: str | None, password: str, source: str | None = None) -> bool:
        checked.append(password)
        return password_hash is not None and password in (PASSWORD, BOB_PASSWORD)

    monkeypatch.setattr("auth.login.verify_password", verify)
    return checked


def assert_secure_page(resp: Any, page: str) -> None:
    """Clickjacking and leak headers, and nothing loaded or linked from another origin."""
    assert resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    audit = _Audit()
    audit.feed(page)
    assert "script" not in audit.tags and "iframe" not in audit.tags and "link" not in audit.tags
    for url in audit.urls:
        assert url.startswith("/") and not url.startswith("//"), url
    assert "@import" not in page and "url(" not in page


class _Audit(HTMLParser):
    """Tags and URL-valued attributes of a page, as a browser would parse them."""

    URL_ATTRIBUTES = frozenset({"src", "href", "action", "formaction", "srcset", "poster", "data", "background",
                                "manifest", "ping"})

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.urls += [value or "" for name, value in attrs if name in self.URL_ATTRIBUTES]


async def consent_form(env: Env, path: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Open `path`, sign in if asked, and return the consent form's fields."""
    resp = await env.client.get(path, allow_redirects=False, headers=headers or {})
    assert resp.status == 200, await resp.text()
    page = await resp.text()
    if 'name="password"' in page:
        resp = await login(env, page)
        assert resp.status == 200, await resp.text()
        page = await resp.text()
    assert 'value="approve"' in page and 'name="remember"' in page
    assert 'name="remember" value="1" checked' not in page  # off by default
    return hidden_fields(page)


async def approve_remembering(env: Env, path: str) -> str:
    form = await consent_form(env, path, FIRST_PARTY)
    form.update(decision="approve", remember="1")
    resp = await env.client.post("/consent", data=form, allow_redirects=False)
    assert resp.status == 303
    location: str = resp.headers["Location"]
    assert "code" in query_of(location)
    return location


async def silently(env: Env, path: str, headers: dict[str, str] | None = None) -> bool:
    """Does /authorize answer with a code at once (True), or show a page (False)?"""
    resp = await env.client.get(path, allow_redirects=False, headers=FIRST_PARTY if headers is None else headers)
    if resp.status == 303:
        query = query_of(resp.headers["Location"])
        assert query["iss"] == env.issuer and "code" in query
        return True
    assert resp.status == 200
    page = await resp.text()
    assert 'value="approve"' in page or 'name="password"' in page
    return False


async def add_bob(env: Env) -> User:
    user = User(id="bob-id", username="bob", password_hash=await hash_password(BOB_PASSWORD), created_at=time.time())
    await env.store.add_user(user)
    return user


async def alice(env: Env) -> User:
    user = await env.store.get_user_by_name("alice")
    assert user is not None
    return user


async def give_tokens(env: Env, client_id: str, subject: str) -> None:
    now = time.time()
    await env.store.save_tokens([Token(token_hash=hash_secret(f"{client_id}-{subject}-{kind}"), kind=kind,
                                       grant_id=f"g-{client_id}", client_id=client_id, subject=subject,
                                       scopes=("memory:read",), resource=env.url("/mcp"), issued_at=now,
                                       expires_at=now + 3600)
                                 for kind in ("access", "refresh")])


# CSRF and the browser binding


async def test_consent_csrf_refused_and_nothing_issued(env: Env) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    form = await consent_form(env, authorize_path(client["client_id"], CB, challenge), FIRST_PARTY)
    for token in (None, "", "x" * 43):
        bad = dict(form, decision="approve", remember="1")
        if token is None:
            del bad["csrf_token"]
        else:
            bad["csrf_token"] = token
        resp = await env.client.post("/consent", data=bad, allow_redirects=False)
        assert resp.status == 403 and "Location" not in resp.headers
        assert_secure_page(resp, await resp.text())
    assert await count(env, "codes") == 0
    assert await env.store.list_consents((await alice(env)).id, time.time()) == []


async def test_login_csrf_refused_and_no_login_created(env: Env) -> None:
    page = await (await env.client.get("/login")).text()
    form = dict(hidden_fields(page), username="alice", password=PASSWORD, csrf_token="forged")
    resp = await env.client.post("/login", data=form, allow_redirects=False)
    assert resp.status == 403 and "Location" not in resp.headers
    assert await count(env, "logins") == 0
    assert 'name="password"' in await (await env.client.get("/login")).text()


async def test_logout_csrf_refused_and_nothing_revoked(env: Env) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    await approve_remembering(env, authorize_path(client["client_id"], CB, challenge))
    user = await alice(env)
    await give_tokens(env, client["client_id"], user.id)
    page = await (await env.client.get("/logout")).text()
    resp = await env.client.post("/logout", data=dict(hidden_fields(page), csrf_token="forged"))
    assert resp.status == 403
    assert await count(env, "tokens") == 2 and await count(env, "logins") == 1
    assert len(await env.store.list_consents(user.id, time.time())) == 1
    assert env.revocations == []
    # The real form signs out everywhere: tokens, remembered approvals, the login itself.
    resp = await env.client.post("/logout", data=hidden_fields(page))
    assert resp.status == 200
    assert await count(env, "tokens") == 0 and await count(env, "logins") == 0
    assert await env.store.list_consents(user.id, time.time()) == []
    assert [(r.subject, r.client_id) for r in env.revocations] == [(user.id, None)]


async def test_consent_from_another_browser_refused(env: Env, aiohttp_client: Any) -> None:
    """The victim's browser (B) is logged in as the same user and has a valid CSRF token of its own:
    only the binding cookie tells that A's sealed request was not started in B."""
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    form_a = await consent_form(env, path)
    other = await aiohttp_client(env.client.server)
    page = await (await other.get(path)).text()
    resp = await other.post("/login", data=dict(hidden_fields(page), username="alice", password=PASSWORD),
                            allow_redirects=False)
    page_b = await resp.text()
    form_b = hidden_fields(page_b)
    planted = dict(form_a, csrf_token=form_b["csrf_token"], decision="approve", remember="1")
    resp = await other.post("/consent", data=planted, allow_redirects=False)
    assert resp.status == 403 and "Location" not in resp.headers
    assert "another browser" in await resp.text()
    assert await count(env, "codes") == 0
    assert await env.store.list_consents((await alice(env)).id, time.time()) == []
    # Without any binding cookie at all, too.
    other.session.cookie_jar.clear(lambda c: c.key == "memory-mcp-binding")
    resp = await other.post("/consent", data=dict(form_b, decision="approve"), allow_redirects=False)
    assert resp.status == 403 and await count(env, "codes") == 0
    # Each browser completes its own request.
    resp = await env.client.post("/consent", data=dict(form_a, decision="approve"), allow_redirects=False)
    assert resp.status == 303 and "code" in query_of(resp.headers["Location"])


async def test_login_seal_from_another_browser_refused(env: Env, aiohttp_client: Any) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    seal_a = hidden_fields(await (await env.client.get(path)).text())["request"]
    other = await aiohttp_client(env.client.server)
    form_b = hidden_fields(await (await other.get("/login")).text())
    resp = await other.post("/login", data=dict(form_b, request=seal_a, username="alice", password=PASSWORD),
                            allow_redirects=False)
    assert resp.status == 403 and "Location" not in resp.headers
    assert await count(env, "logins") == 0


async def test_https_binding_cookie_is_host_prefixed(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> None:
    db = Database(tmp_path / "a.sqlite3")
    db.apply_schema(AuthTables.SCHEMA)
    try:
        app = web.Application()
        install(app, settings=AuthSettings(issuer="https://mcp.example.com"), store=Store(db), cookie_key=COOKIE_KEY)
        client = await aiohttp_client(await aiohttp_server(app))
        resp = await client.get("/authorize?client_id=unknown")
        cookies = resp.headers.getall("Set-Cookie")
        binding = next(c for c in cookies if c.startswith("__Host-memory-mcp-binding="))
        lowered = binding.lower()
        assert "secure" in lowered and "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered
        assert "domain" not in lowered and "max-age=" in lowered
    finally:
        db.close()


# Headers on every page


async def test_every_html_page_is_locked_down(env: Env, clock: FakeClock, fast_passwords: list[str]) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    seen: list[str] = []

    async def check(resp: Any) -> str:
        page: str = await resp.text()
        assert_secure_page(resp, page)
        seen.append(f"{resp.method} {resp.url.path} {resp.status}")
        return page

    await check(await env.client.get("/login"))
    await check(await env.client.get("/authorize?client_id=unknown"))
    await check(await env.client.get("/logout"))
    await check(await env.client.get("/consents"))  # logged out: the login form
    page = await check(await env.client.get(path))
    await check(await login(env, page, password="wrong"))
    for _ in range(4):
        await login(env, page, password="wrong")
    await check(await login(env, page))  # 429
    clock.now += 10_000
    await check(await env.client.post("/login", data={"csrf_token": "x"}))
    await check(await env.client.post("/consent", data={"csrf_token": "x"}))
    page = await check(await login(env, page))
    await check(await env.client.get("/login"))  # signed in
    form = hidden_fields(page)
    await env.client.post("/consent", data=dict(form, decision="approve", remember="1"), allow_redirects=False)
    page = await check(await env.client.get("/consents"))
    await check(await env.client.post("/consents", data={"csrf_token": "x", "client_id": "y"}))
    page = await check(await env.client.get("/logout"))
    await check(await env.client.post("/logout", data=hidden_fields(page)))
    assert {s.split()[2] for s in seen} >= {"200", "400", "401", "403", "429"}


async def test_hostile_client_name_is_escaped(env: Env) -> None:
    name = '<script>alert("x")</script><img src=https://evil.example/x.png>'
    client = await register(env, [CB], client_name=name)
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge, state='"><script>')
    await approve_remembering(env, path)
    resp = await env.client.get(path)  # logged in, no Sec-Fetch headers: the consent page
    page = await resp.text()
    assert_secure_page(resp, page)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "<img" not in page
    resp = await env.client.get("/consents")
    page = await resp.text()
    assert_secure_page(resp, page)
    assert "&lt;script&gt;" in page and "<img" not in page


# Remembered consent


async def test_remembered_consent_only_for_the_exact_same_request(env: Env) -> None:
    client = await register(env, [CB, "https://app.example.com/cb"])
    other_client = await register(env, [CB])
    _, challenge = pkce()
    cid = client["client_id"]
    path = authorize_path(cid, CB, challenge, scope="memory:read memory:write", resource=env.url("/mcp"))
    # Approved without ticking the box: nothing remembered.
    form = await consent_form(env, path, FIRST_PARTY)
    resp = await env.client.post("/consent", data=dict(form, decision="approve"), allow_redirects=False)
    assert resp.status == 303
    assert await env.store.list_consents((await alice(env)).id, time.time()) == []
    assert not await silently(env, path)
    await approve_remembering(env, path)
    codes = await count(env, "codes")
    assert await silently(env, path)
    assert await count(env, "codes") == codes + 1
    # Same scope set in another order, and a new state or challenge: still the same approval.
    _, challenge2 = pkce()
    assert await silently(env, authorize_path(cid, CB, challenge2, scope="memory:write memory:read",
                                              resource=env.url("/mcp"), state="other"))
    for different in (
        authorize_path(cid, CB, challenge, scope="memory:read", resource=env.url("/mcp")),
        authorize_path(cid, CB, challenge, scope="memory:read memory:write", resource=env.url("/sse")),
        authorize_path(cid, "http://127.0.0.1:10/callback", challenge, scope="memory:read memory:write",
                       resource=env.url("/mcp")),  # loopback: another port is another redirect URI here
        authorize_path(cid, "https://app.example.com/cb", challenge, scope="memory:read memory:write",
                       resource=env.url("/mcp")),
        authorize_path(other_client["client_id"], CB, challenge, scope="memory:read memory:write",
                       resource=env.url("/mcp")),
        path + "&prompt=consent",
    ):
        before = await count(env, "codes")
        assert not await silently(env, different), different
        assert await count(env, "codes") == before
    # Not a first-party navigation: a third-party site, a frame, or a browser that says nothing.
    for headers in ({}, {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document"},
                    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Dest": "document"},
                    {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Dest": "iframe"},
                    {"Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "empty"}):
        assert not await silently(env, path, headers), headers
    # prompt=none succeeds only through the remembered approval.
    resp = await env.client.get(path + "&prompt=none", allow_redirects=False, headers=FIRST_PARTY)
    assert "code" in query_of(resp.headers["Location"])
    resp = await env.client.get(path + "&prompt=none", allow_redirects=False)
    assert query_of(resp.headers["Location"])["error"] == "consent_required"


async def test_remembered_consent_belongs_to_its_user(env: Env, aiohttp_client: Any) -> None:
    await add_bob(env)
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    await approve_remembering(env, path)
    bob = await aiohttp_client(env.client.server)
    page = await (await bob.get(path, headers=FIRST_PARTY)).text()
    resp = await bob.post("/login", data=dict(hidden_fields(page), username="bob", password=BOB_PASSWORD),
                          allow_redirects=False)
    assert resp.status == 200 and 'value="approve"' in await resp.text()


async def test_login_keeps_the_verdict_of_the_first_navigation(env: Env) -> None:
    """A cross-site start or prompt=consent still shows the consent page after the login form; a
    first-party start does not (the login POST answers with a page that leads to the client)."""
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    user = await alice(env)
    for start, extra, silent in ((FIRST_PARTY, "", True), (FIRST_PARTY, "&prompt=consent", False),
                                 ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document"}, "", False),
                                 ({}, "", False)):
        await consent.remember(env.server, user, client["client_id"], CB, env.url("/mcp"),
                               ("memory:read", "memory:write"))
        page = await (await env.client.get(path + extra, headers=start)).text()
        assert 'name="password"' in page
        resp = await login(env, page)
        assert resp.status == 200 and "Location" not in resp.headers
        after = await resp.text()
        if silent:
            query = query_of(refresh_target(after))
            assert query["iss"] == env.issuer and "code" in query and "state" in query
        else:
            assert 'value="approve"' in after, (start, extra)
        # Sign out (which also forgets the approval) for the next round.
        page = await (await env.client.get("/logout")).text()
        assert (await env.client.post("/logout", data=hidden_fields(page))).status == 200


async def test_withdraw_remembered_consent(env: Env) -> None:
    client = await register(env, [CB], client_name="Agent <One>")
    keep = await register(env, [CB], client_name="Agent Two")
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    keep_path = authorize_path(keep["client_id"], CB, challenge)
    await approve_remembering(env, path)
    await approve_remembering(env, keep_path)
    user = await alice(env)
    await give_tokens(env, client["client_id"], user.id)
    await give_tokens(env, keep["client_id"], user.id)
    page = await (await env.client.get("/consents")).text()
    assert "Agent &lt;One&gt;" in page and "Agent Two" in page and CB in page
    forms = re.findall(r'<form method="post" action="/consents">(.*?)</form>', page)
    assert len(forms) == 2
    form = next(hidden_fields(f) for f in forms if client["client_id"] in f)
    # A forged withdrawal changes nothing.
    resp = await env.client.post("/consents", data=dict(form, csrf_token="forged"), allow_redirects=False)
    assert resp.status == 403
    assert len(await env.store.list_consents(user.id, time.time())) == 2 and await count(env, "tokens") == 4
    assert env.revocations == []
    resp = await env.client.post("/consents", data=form, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == env.url("/consents")
    remaining = await env.store.list_consents(user.id, time.time())
    assert [c.client_id for c in remaining] == [keep["client_id"]]
    # The withdrawn client's tokens are gone and its sessions told to end; the other keeps its own.
    assert await count(env, "tokens", client_id=client["client_id"]) == 0
    assert await count(env, "tokens", client_id=keep["client_id"]) == 2
    assert [(r.subject, r.client_id) for r in env.revocations] == [(user.id, client["client_id"])]
    assert not await silently(env, path)
    assert await silently(env, keep_path)
    page = await (await env.client.get("/consents")).text()
    assert "Agent Two" in page and "Agent &lt;One&gt;" not in page


async def test_withdraw_requires_login(env: Env) -> None:
    page = await (await env.client.get("/consents")).text()
    assert 'name="password"' in page
    resp = await env.client.post("/consents", data={"csrf_token": hidden_fields(page)["csrf_token"],
                                                    "client_id": "x"}, allow_redirects=False)
    assert resp.status == 401 and env.revocations == []


# Login throttling and enumeration


async def test_login_backoff_per_account(env: Env, clock: FakeClock, fast_passwords: list[str]) -> None:
    page = await (await env.client.get("/login")).text()
    for _ in range(throttle.FREE_FAILURES):
        assert (await login(env, page, password="wrong")).status == 401
    waits = []
    for _ in range(8):
        checked = len(fast_passwords)
        resp = await login(env, page)  # even the right password is not looked at while throttled
        assert resp.status == 429 and len(fast_passwords) == checked
        assert "Too many failed sign-in attempts" in await resp.text()
        assert await count(env, "logins") == 0
        waits.append(int(resp.headers["Retry-After"]))
        clock.now += waits[-1] - 1
        assert (await login(env, page)).status == 429  # one second early
        clock.now += 1
        assert (await login(env, page, password="wrong")).status == 401
    assert waits == [30, 60, 120, 240, 480, 900, 900, 900]  # capped, for as long as the failures go on
    clock.now += 900
    resp = await login(env, page)
    assert resp.status == 303 and await count(env, "logins") == 1
    # A success clears the account's failures; so does a pause longer than QUIET.
    page = await (await env.client.get("/login")).text()
    for _ in range(throttle.FREE_FAILURES):
        assert (await login(env, page, "alice", "wrong")).status == 401
    assert (await login(env, page, "alice", "wrong")).status == 429
    clock.now += throttle.QUIET + 1
    assert (await login(env, page, "alice", "wrong")).status == 401


async def test_throttled_unknown_user_looks_like_a_known_one(env: Env, clock: FakeClock,
                                                             fast_passwords: list[str]) -> None:
    page = await (await env.client.get("/login")).text()
    answers = []
    for username in ("alice", "mallory"):
        for _ in range(throttle.FREE_FAILURES):
            assert (await login(env, page, username, "wrong")).status == 401
        resp = await login(env, page, username, "wrong")
        answers.append((resp.status, resp.headers["Retry-After"], (await resp.text()).replace(username, "U")))
    assert answers[0] == answers[1] and answers[0][0] == 429


async def test_login_limit_per_address(env: Env, clock: FakeClock, fast_passwords: list[str]) -> None:
    page = await (await env.client.get("/login")).text()
    for i in range(throttle.ADDRESS_FAILURES):
        clock.now += 1
        assert (await login(env, page, f"user{i}", "wrong")).status == 401
    checked = len(fast_passwords)
    resp = await login(env, page)
    assert resp.status == 429 and len(fast_passwords) == checked
    assert int(resp.headers["Retry-After"]) == throttle.WINDOW - throttle.ADDRESS_FAILURES + 1
    assert await count(env, "logins") == 0
    clock.now += throttle.WINDOW
    assert (await login(env, page)).status == 303


async def test_throttle_keys_and_other_addresses() -> None:
    fake = FakeClock()
    limiter = MemoryRateLimiter(clock=fake)
    # One /64 is one address; another address (the legitimate user at home) is not blocked.
    for i in range(throttle.ADDRESS_FAILURES):
        assert await throttle.begin(limiter, f"user{i}", f"2001:db8::{i + 1:x}") is None
    assert await throttle.begin(limiter, "x", "2001:db8::ffff") is not None
    assert await throttle.begin(limiter, "x", "2001:db8:0:1::1") is None
    assert await throttle.begin(limiter, "y", "::ffff:192.0.2.1") is None
    # The account's backoff follows the account from any address (no bypass by rotating them).
    for _ in range(throttle.FREE_FAILURES):
        assert await throttle.begin(limiter, "alice", "192.0.2.7") is None
    assert await throttle.begin(limiter, "alice", "198.51.100.9") == throttle.BASE_DELAY
    assert throttle.run_length([5.0, 100.0, 100.0 + throttle.QUIET + 1]) == 2
    assert throttle.run_length([throttle.QUIET + 1]) == 0
    assert [throttle.backoff(n) for n in range(4, 13)] == [0, 30, 60, 120, 240, 480, 900, 900, 900]


async def test_no_enumeration_same_work_and_similar_time(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    verified: list[str] = []
    real = passwords._verify

    def counting(password_hash: str, password: str) -> bool:
        verified.append(password)
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "_verify", counting)
    page = await (await env.client.get("/login")).text()
    durations: dict[str, list[float]] = {"known": [], "unknown": []}
    bodies = set()
    for i in range(5):
        for kind, username in (("known", "alice"), ("unknown", f"nobody{i}")):
            env.server.limiter = MemoryRateLimiter()  # measure the password check, not the throttle
            before = len(verified)
            started = time.perf_counter()
            resp = await login(env, page, username, "wrong password")
            durations[kind].append(time.perf_counter() - started)
            assert resp.status == 401 and len(verified) == before + 1  # argon2 ran in both cases
            bodies.add((await resp.text()).replace(username, "U"))
    assert len(bodies) == 1
    known, unknown = (statistics.median(durations[k]) for k in ("known", "unknown"))
    assert known / 3 < unknown < known * 3, durations


# Session fixation


async def test_login_starts_a_new_session(env: Env, aiohttp_client: Any) -> None:
    # The attacker obtains a pre-login cookie and plants it in the victim's browser.
    attacker = await aiohttp_client(env.client.server)
    attacker_page = await (await attacker.get("/login")).text()
    planted = {c.key: c.value for c in attacker.session.cookie_jar}
    env.client.session.cookie_jar.update_cookies(planted)
    page = await (await env.client.get("/login")).text()
    assert hidden_fields(page)["csrf_token"] == hidden_fields(attacker_page)["csrf_token"]
    resp = await login(env, page)
    assert resp.status == 303 and resp.headers["Location"] == env.url("/login")
    after = {c.key: c.value for c in env.client.session.cookie_jar}
    assert after["memory-mcp-login"] != planted["memory-mcp-login"]
    # The attacker's copy does not carry the login, and its CSRF token no longer matches the victim's.
    assert 'name="password"' in await (await attacker.get("/login")).text()
    victim_page = await (await env.client.get("/login")).text()
    assert "signed in as <strong>alice</strong>" in victim_page
    assert hidden_fields(victim_page)["csrf_token"] != hidden_fields(attacker_page)["csrf_token"]
    resp = await env.client.post("/logout", data=hidden_fields(attacker_page))
    assert resp.status == 403 and await count(env, "logins") == 1


async def test_consent_shows_the_verified_metadata_host(env: Env) -> None:
    from auth.models import Client

    await env.store.save_client(Client(client_id="verified-client", client_id_issued_at=0,
                                       redirect_uris=(CB,), client_name="<b>App</b>",
                                       verified_domain="app.example.com"))
    _, challenge = pkce()
    form_page = await env.client.get(authorize_path("verified-client", CB, challenge))
    resp = await login(env, await form_page.text())
    page = await resp.text()
    assert_secure_page(resp, page)
    assert "published by <strong>app.example.com</strong>" in page and "&lt;b&gt;App&lt;/b&gt;" in page


# Signing out everywhere (issue 10 defect 1)


async def sign_in_directly(client: Any) -> None:
    page = await (await client.get("/login")).text()
    resp = await client.post("/login", data=dict(hidden_fields(page), username="alice", password=PASSWORD),
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()


async def test_sign_out_everywhere_ends_every_browsers_login(env: Env, aiohttp_client: Any) -> None:
    """A second browser signed in earlier (with a phished password, say) loses its login when the
    user signs out in theirs: no consent page without a password, no code from a form it holds."""
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    attacker = await aiohttp_client(env.client.server)
    await sign_in_directly(attacker)
    await sign_in_directly(env.client)
    held = await (await attacker.get(path)).text()
    assert 'value="approve"' in held  # signed in: no password asked
    page = await (await env.client.get("/logout")).text()
    assert (await env.client.post("/logout", data=hidden_fields(page))).status == 200
    assert await count(env, "logins") == 0
    # The consent form it already holds leads back to the password form, and no code is made.
    resp = await attacker.post("/consent", data=dict(hidden_fields(held), decision="approve", remember="1"),
                               allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith(env.url("/authorize?"))
    assert 'name="password"' in await (await attacker.get(path_of(resp.headers["Location"]))).text()
    assert 'name="password"' in await (await attacker.get(path)).text()
    assert await count(env, "codes") == 0 and await count(env, "consents") == 0
    assert "You are signed in as" not in await (await attacker.get("/login")).text()


async def test_login_checked_against_a_password_changed_meanwhile_is_refused(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The password is changed (and the user signed out everywhere) while argon2 checks the old
    one: the login must not be recorded after the sign-out, or it would survive it."""
    verify = passwords.verify_password

    async def verify_then_change(password_hash: str | None, password: str, source: str | None = None) -> bool:
        ok = await verify(password_hash, password, source)
        user = await accounts.set_password(env.store, "alice", "the new password")
        await accounts.sign_out_everywhere(env.store, user.id)
        return ok

    monkeypatch.setattr("auth.login.verify_password", verify_then_change)
    client = await register(env, [CB])
    _, challenge = pkce()
    page = await (await env.client.get(authorize_path(client["client_id"], CB, challenge))).text()
    resp = await login(env, page)
    assert resp.status == 401 and 'name="password"' in await resp.text()
    assert await count(env, "logins") == 0


async def test_code_approved_under_an_ended_login_is_not_stored(env: Env) -> None:
    """The race between the consent POST's check of the login and the code's insert: a login ended
    in between must not leave a code behind (`GrantStore.save_code`)."""
    client = await register(env, [CB])
    _, challenge = pkce()
    form = await consent_form(env, authorize_path(client["client_id"], CB, challenge))
    real_save = env.store.save_code

    async def sign_out_first(code: Any, login_hash: str) -> bool:
        await accounts.sign_out_everywhere(env.store, (await alice(env)).id)
        return await real_save(code, login_hash)

    env.store.save_code = sign_out_first  # type: ignore[method-assign]
    resp = await env.client.post("/consent", data=dict(form, decision="approve"), allow_redirects=False)
    assert resp.status == 401 and "Location" not in resp.headers
    assert await count(env, "codes") == 0


async def test_login_rehash_never_overwrites_a_changed_password(env: Env) -> None:
    user = await alice(env)
    assert await env.store.set_password_hash(user.id, "new", replacing=user.password_hash)
    assert not await env.store.set_password_hash(user.id, "rehash of the old one", replacing=user.password_hash)
    assert (await alice(env)).password_hash == "new"

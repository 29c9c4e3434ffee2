"""The sign-in pages in a real browser: Debian's chromium, driven by Playwright over CDP.

An HTTP client that submits forms ignores what only a browser enforces: CSP `form-action`
(applied by Chromium to every redirect after a form submission), meta refresh, `Sec-Fetch-*`
headers, cookies' SameSite and prefixes. These tests type into the fields and click the buttons
of the real pages served by the real app on a loopback port, and a fake OAuth client on another
loopback port receives the code, which is then exchanged at /token.

Chromium comes from the system (`apt-get install chromium`), never from a Playwright download;
`MEMORY_MCP_CHROMIUM` names another binary. Without one every test here fails with that message:
a skipped browser test would be a pass that tested nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

from tests.conftest import RunningServer, free_socket

# On SQLite only: what these tests add is what only a browser enforces (CSP, cookies, navigation);
# the same flows' storage runs on both backends in tests/test_auth_browser.py.

# Bounds a wait for the browser to reach the client so that a blocked navigation fails the test
# instead of hanging it; not a speed assertion.
ARRIVAL_TIMEOUT = 15.0
ALICE = ("alice", "alice-password-1")


def chromium_path() -> str:
    path = os.environ.get("MEMORY_MCP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium to drive: install Debian's package (apt-get install chromium) or set "
                    "MEMORY_MCP_CHROMIUM to a Chromium binary; the page tests need a real browser", pytrace=False)
    return path


@dataclass
class Callback:
    """The fake OAuth client's redirect URI on loopback: every request that reaches it, in order."""

    url: str
    arrivals: asyncio.Queue[dict[str, str]] = field(default_factory=asyncio.Queue)

    async def next(self) -> dict[str, str]:
        try:
            return await asyncio.wait_for(self.arrivals.get(), ARRIVAL_TIMEOUT)
        except TimeoutError:
            pytest.fail("the browser never reached the client's redirect URI", pytrace=False)


@pytest.fixture
async def callback() -> AsyncIterator[Callback]:
    sock = free_socket()
    result = Callback(f"http://127.0.0.1:{sock.getsockname()[1]}/callback")

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


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable)
        yield launched
        await launched.close()


@dataclass
class Tab:
    """One browser context (its own cookies: another browser, as far as the server knows) with one
    page, and every CSP violation it reported."""

    context: BrowserContext
    page: Page
    csp_violations: list[str]


async def new_tab(browser: Browser) -> Tab:
    context = await browser.new_context()
    context.set_default_timeout(ARRIVAL_TIMEOUT * 1000)
    page = await context.new_page()
    violations: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", console)
    return Tab(context, page, violations)


@dataclass
class App:
    """A registered public client and one pending authorization of it."""

    client_id: str
    redirect_uri: str
    verifier: str
    url: str


async def register(server: RunningServer, callback: Callback, **params: str) -> App:
    async with aiohttp.ClientSession() as http, http.post(server.url + "/register", json={
            "client_name": "Browser Test App", "redirect_uris": [callback.url]}) as resp:
        assert resp.status == 201, await resp.text()
        client_id = (await resp.json())["client_id"]
    return authorization(server, client_id, callback.url, **params)


def authorization(server: RunningServer, client_id: str, redirect_uri: str, **params: str) -> App:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": "st-1",
             "code_challenge": challenge, "code_challenge_method": "S256", "scope": "memory:read openid",
             "resource": server.url + "/mcp", **params}
    return App(client_id, redirect_uri, verifier, f"{server.url}/authorize?{urlencode(query)}")


async def redeem(server: RunningServer, app: App, arrival: dict[str, str]) -> dict[str, Any]:
    assert arrival.get("state") == "st-1" and arrival.get("iss") == server.url, arrival
    async with aiohttp.ClientSession() as http, http.post(server.url + "/token", data={
            "grant_type": "authorization_code", "code": arrival["code"], "code_verifier": app.verifier,
            "client_id": app.client_id, "redirect_uri": app.redirect_uri, "resource": server.url + "/mcp"}) as resp:
        assert resp.status == 200, await resp.text()
        tokens: dict[str, Any] = await resp.json()
        return tokens


async def sign_in(tab: Tab, username: str, password: str) -> None:
    page = tab.page
    assert await page.title() == "Sign in to memory-mcp", await page.content()
    await page.fill("#username", username)
    await page.fill("#password", password)
    await page.click("button[type=submit]")


async def approve(tab: Tab, *, remember: bool = False, decision: str = "Approve") -> None:
    page = tab.page
    await page.wait_for_selector("text=wants to access your memory")
    assert await page.title() == "Authorize access"
    if remember:
        await page.check("input[name=remember]")
    await page.click(f"button:has-text('{decision}')")


async def test_login_and_consent_reach_the_client(server: RunningServer, callback: Callback,
                                                  browser: Browser) -> None:
    app = await register(server, callback)
    tab = await new_tab(browser)
    await tab.page.goto(app.url)
    await sign_in(tab, *ALICE)
    await approve(tab)
    tokens = await redeem(server, app, await callback.next())
    assert tokens["scope"] == "memory:read openid" and "id_token" in tokens
    assert tab.csp_violations == []


async def test_deny_reaches_the_client_as_access_denied(server: RunningServer, callback: Callback,
                                                        browser: Browser) -> None:
    app = await register(server, callback)
    tab = await new_tab(browser)
    await tab.page.goto(app.url)
    await sign_in(tab, *ALICE)
    await approve(tab, decision="Deny")
    arrival = await callback.next()
    assert arrival["error"] == "access_denied" and "code" not in arrival and arrival["state"] == "st-1"
    assert tab.csp_violations == []


async def test_remembered_approval_when_signing_in_again(server: RunningServer, callback: Callback,
                                                         browser: Browser) -> None:
    """Issue 10 defect 12: with the approval remembered, the login POST used to redirect through
    /authorize to the client, which the login page's `form-action 'self'` blocked in Chromium."""
    app = await register(server, callback)
    first = await new_tab(browser)
    await first.page.goto(app.url)
    await sign_in(first, *ALICE)
    await approve(first, remember=True)
    await redeem(server, app, await callback.next())
    # Still signed in: the remembered approval goes straight to the client.
    again = authorization(server, app.client_id, app.redirect_uri)
    await first.page.goto(again.url)
    await redeem(server, again, await callback.next())
    # Another browser (or this one after its login expired): the password, then straight on.
    second = await new_tab(browser)
    third = authorization(server, app.client_id, app.redirect_uri)
    await second.page.goto(third.url)
    await sign_in(second, *ALICE)
    await redeem(server, third, await callback.next())
    assert first.csp_violations == second.csp_violations == []


async def test_sign_out_everywhere_ends_the_other_browsers_login(server: RunningServer, callback: Callback,
                                                                 browser: Browser) -> None:
    """Issue 10 defect 1: "sign out" in one browser ends the login of every other browser too."""
    app = await register(server, callback)
    attacker, owner = await new_tab(browser), await new_tab(browser)
    for tab in (attacker, owner):
        await tab.page.goto(server.url + "/login")
        await sign_in(tab, *ALICE)
        await tab.page.wait_for_selector("text=You are signed in as")
    # The attacker's browser gets the consent page without a password...
    await attacker.page.goto(app.url)
    await attacker.page.wait_for_selector("text=wants to access your memory")
    # ...until the owner signs out everywhere (the button on the signed-in page).
    await owner.page.click("button:has-text('Sign out')")
    await owner.page.wait_for_selector("text=You are signed out")
    # The consent page the attacker still shows is dead: approving leads to the password form.
    await attacker.page.click("button:has-text('Approve')")
    await attacker.page.wait_for_selector("#password")
    # And a new authorization asks for the password too.
    again = authorization(server, app.client_id, app.redirect_uri)
    await attacker.page.goto(again.url)
    assert await attacker.page.title() == "Sign in to memory-mcp"
    assert callback.arrivals.empty()
    assert attacker.csp_violations == owner.csp_violations == []


async def test_not_you_sign_out_from_the_consent_page(server: RunningServer, callback: Callback,
                                                      browser: Browser) -> None:
    app = await register(server, callback)
    tab = await new_tab(browser)
    await tab.page.goto(app.url)
    await sign_in(tab, *ALICE)
    await tab.page.wait_for_selector("text=wants to access your memory")
    await tab.page.click("button:has-text('Not you? Sign out')")
    await tab.page.wait_for_selector("text=everywhere?")
    await tab.page.click("button:has-text('Sign out')")
    await tab.page.wait_for_selector("text=You are signed out")
    # Back to the application's request: the password is asked for; bob signs in and approves.
    await tab.page.goto(app.url)
    await sign_in(tab, "bob", "bob-password-22")
    await approve(tab)
    await redeem(server, app, await callback.next())
    assert tab.csp_violations == []


async def test_prompt_login_asks_for_the_password_again(server: RunningServer, callback: Callback,
                                                        browser: Browser) -> None:
    app = await register(server, callback)
    tab = await new_tab(browser)
    await tab.page.goto(app.url)
    await sign_in(tab, *ALICE)
    await approve(tab, remember=True)
    await redeem(server, app, await callback.next())
    fresh = authorization(server, app.client_id, app.redirect_uri, prompt="login")
    await tab.page.goto(fresh.url)
    await tab.page.wait_for_selector("text=enter your password again")
    assert await tab.page.input_value("#username") == "alice"
    await sign_in(tab, *ALICE)
    await redeem(server, fresh, await callback.next())
    assert tab.csp_violations == []


async def test_error_pages(server: RunningServer, callback: Callback, browser: Browser) -> None:
    app = await register(server, callback)
    tab = await new_tab(browser)
    # An unknown client: a page, never a redirect.
    await tab.page.goto(authorization(server, "no-such-client", callback.url).url)
    await tab.page.wait_for_selector("text=Unknown client")
    # A wrong password: the form again, with the message and the username kept.
    await tab.page.goto(app.url)
    await sign_in(tab, "alice", "wrong password")
    await tab.page.wait_for_selector("text=Invalid username or password")
    assert await tab.page.input_value("#username") == "alice"
    await tab.page.fill("#password", ALICE[1])
    await tab.page.click("button[type=submit]")
    await approve(tab)
    await redeem(server, app, await callback.next())
    # A request whose parameters are wrong after the client is known: the error goes to the client.
    bad = authorization(server, app.client_id, app.redirect_uri, code_challenge_method="plain")
    await tab.page.goto(bad.url)
    assert (await callback.next())["error"] == "invalid_request"
    assert tab.csp_violations == []

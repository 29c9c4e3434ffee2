"""The account pages in a real browser (Debian's chromium through Playwright, as
tests/test_pages_browser.py), on both backends: the whole account flow by clicks and typing (sign
in from the account page, the memory browser, deleting after the confirmation, disconnecting a
live client whose open stream then closes and whose next request gets 401, sign out
everywhere), with screenshots at 1280 and 400 px written to the test's directory; and axe-core
(pinned by tests/interop/axe/install.sh) run on every page at both widths, with no serious or
critical violation allowed.

Everything the pages load must come from the server itself, and no CSP violation may be
reported: the pages need no script (axe is injected by the test, in its own context only)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.async_api import Browser, Page

from auth.crypto import hash_secret
from server import memories
from tests.conftest import BACKENDS, RunningServer
from tests.test_account import ALICE, TOOLS_LIST, fill_memory
from tests.test_pages_browser import (
    ARRIVAL_TIMEOUT,
    Callback,
    Tab,
    authorization,
    browser,
    callback,
    new_tab,
    redeem,
    register,
    sign_in,
)

__all__ = ["browser", "callback"]  # the fixtures, imported for the tests here

SERVER_BACKENDS = BACKENDS
AXE = Path(__file__).parent / "interop" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = (1280, 400)


async def shoot(page: Page, directory: Path, name: str) -> None:
    """Screenshots at both widths; nothing may be wider than the window (no sideways scrolling)."""
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        await page.screenshot(path=str(directory / f"{name}-{width}.png"), full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= width, (name, width)
    await page.set_viewport_size({"width": 1280, "height": 900})


def own_requests_only(tab: Tab, origin: str) -> list[str]:
    seen: list[str] = []
    tab.page.on("request", lambda request: seen.append(request.url))
    return seen


async def test_the_account_flow_in_a_browser(server: RunningServer, browser: Browser, http: httpx2.AsyncClient,
                                             tmp_path: Path) -> None:
    session = await fill_memory(http, server, 30)
    tab = await new_tab(browser)
    page = tab.page
    requests = own_requests_only(tab, server.url)
    await page.goto(server.url + "/account")
    await sign_in(tab, *ALICE)
    await page.wait_for_selector("h1:has-text('Your account')")
    assert page.url == server.url + "/account"
    await page.wait_for_selector("h3:has-text('by hand')")
    assert await page.locator("text=2025-11-25").count() == 1
    # The first Tab lands on the navigation, in reading order.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Account"
    await shoot(page, tmp_path, "account")

    # The memory browser: pages, search, one entity, deletion after the confirmation.
    await page.get_by_role("link", name="Memory").first.click()
    await page.wait_for_selector("text=Your memory holds 30 entities")
    await shoot(page, tmp_path, "memory")
    await page.get_by_role("link", name="Next page").first.click()
    await page.wait_for_selector("h3:has-text('entity 29')")
    await page.get_by_label("Search names, types and observations").fill("02")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_selector("text=1 entity matches")
    await page.get_by_role("link", name="entity 00").click()  # its relation, followed
    await page.wait_for_selector("h3:has-text('entity 00')")
    assert page.url.endswith("/account/memory?entity=entity+00")
    await page.get_by_role("button", name="Delete observation of entity 00").first.click()
    await page.wait_for_selector("h1:has-text('Delete this observation?')")
    await shoot(page, tmp_path, "confirm")
    await page.get_by_role("button", name="Delete", exact=True).click()
    await page.wait_for_selector("h3:has-text('entity 00')")
    assert await page.locator("text=fact 0 one").count() == 0
    assert await page.locator("text=fact 0 <b>two</b>").count() == 1
    await page.get_by_role("button", name="Delete entity entity 00").click()
    await page.wait_for_selector("text=and the 2 relations from or to it?")
    await page.get_by_role("link", name="Cancel, keep it").click()
    await page.wait_for_selector("h3:has-text('entity 00')")
    await page.get_by_role("button", name="Delete entity entity 00").click()
    await page.get_by_role("button", name="Delete", exact=True).click()
    await page.wait_for_selector("text=Your memory holds 29 entities")

    # Disconnect the live client: its open stream ends, its next request is refused.
    async with http.stream("GET", server.url + "/mcp", headers=session) as stream:
        assert stream.status_code == 200

        async def drain() -> None:
            async for _ in stream.aiter_bytes():
                pass

        draining = asyncio.ensure_future(drain())
        await page.get_by_role("link", name="Account").first.click()
        await page.get_by_role("button", name="Disconnect by hand").click()
        await page.wait_for_selector("text=No application is connected")
        await asyncio.wait_for(draining, 10)
    assert (await http.post(server.url + "/mcp", headers=session, json=TOOLS_LIST)).status_code == 401
    await shoot(page, tmp_path, "account-empty")

    # A personal access token: created (its secret shown once), used, revoked.
    await page.get_by_label("Name (what it is for)").fill("nightly agent")
    await page.get_by_label("Change your memory").uncheck()
    await page.get_by_label("Expires after").select_option("30")
    await page.get_by_role("button", name="Create token").click()
    await page.wait_for_selector("h1:has-text('Token created')")
    secret = await page.get_by_label("Token").input_value()
    assert secret.startswith("mmcp_pat_")
    await shoot(page, tmp_path, "token")
    pat_session = {**{k: v for k, v in session.items() if k != "Mcp-Session-Id"}, "Authorization": f"Bearer {secret}"}
    init = await http.post(server.url + "/mcp", headers=pat_session, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "agent", "version": "1"}}})
    assert init.status_code == 200
    await page.get_by_role("link", name="Back to your account").click()
    await page.wait_for_selector("h3:has-text('nightly agent')")
    assert await page.locator("h3:has-text('Personal access token “nightly agent”')").count() == 1
    await page.get_by_role("button", name="Revoke nightly agent").click()
    await page.wait_for_selector("text=You have no personal access tokens")
    pat_session["Mcp-Session-Id"] = init.headers["mcp-session-id"]
    assert (await http.post(server.url + "/mcp", headers=pat_session, json=TOOLS_LIST)).status_code == 401

    await page.get_by_role("button", name="Sign out everywhere").click()
    await page.wait_for_selector("text=You are signed out")
    await page.goto(server.url + "/account")
    assert await page.title() == "Sign in to memory-mcp"
    assert tab.csp_violations == []
    assert requests and all(url.startswith(server.url + "/") for url in requests), requests
    for name in ("account", "memory", "confirm", "account-empty", "token"):
        assert all((tmp_path / f"{name}-{w}.png").stat().st_size > 0 for w in WIDTHS)


def axe_source() -> str:
    if not AXE.exists():
        pytest.fail(f"axe-core is not installed: run `bash tests/interop/axe/install.sh` (it installs the pinned "
                    f"version into {AXE.parent.parent})", pytrace=False)
    return AXE.read_text()


async def axe_violations(page: Page, source: str) -> list[dict[str, Any]]:
    await page.add_script_tag(content=source)
    found: list[dict[str, Any]] = await page.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ['violations']});
        return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                             nodes: v.nodes.map(n => n.target.join(' '))}));
    }""")
    return found


async def test_the_account_pages_pass_axe(server: RunningServer, browser: Browser, http: httpx2.AsyncClient,
                                          tmp_path: Path) -> None:
    source = axe_source()
    await fill_memory(http, server, 30)
    # The pages' CSP forbids every script, axe's too: this context alone ignores it.
    context = await browser.new_context(bypass_csp=True)
    page = await context.new_page()
    await page.goto(server.url + "/account")
    # The sign-in page the account page shows, too.
    checked: dict[str, list[dict[str, Any]]] = {"sign-in": await axe_violations(page, source)}
    await page.fill("#username", ALICE[0])
    await page.fill("#password", ALICE[1])
    await page.click("button[type=submit]")
    await page.wait_for_selector("h1:has-text('Your account')")

    async def check(name: str) -> None:
        for width in WIDTHS:
            await page.set_viewport_size({"width": width, "height": 900})
            checked[f"{name}-{width}"] = await axe_violations(page, source)

    await check("account")
    await page.goto(server.url + "/account/memory")
    await check("memory")
    await page.goto(server.url + "/account/memory?q=fact+1")
    await check("search")
    await page.get_by_role("button", name="Delete entity entity 01").click()
    await page.wait_for_selector("h1:has-text('Delete this entity?')")
    await check("confirm")
    await page.goto(server.url + "/account")
    await page.get_by_label("Name (what it is for)").fill("axe")
    await page.get_by_role("button", name="Create token").click()
    await page.wait_for_selector("h1:has-text('Token created')")
    await check("token")
    await context.close()
    (tmp_path / "axe.txt").write_text(repr(checked))
    serious = {name: [v for v in found if v["impact"] in ("serious", "critical")] for name, found in checked.items()}
    assert all(not found for found in serious.values()), serious
    # The pages have none of the lesser findings either (landmarks, heading order): keep it so.
    assert all(not found for found in checked.values()), checked


async def test_the_memory_is_chosen_on_the_consent_page(server: RunningServer, callback: Callback,
                                                        browser: Browser) -> None:
    """The select lists the user's memories with `default` preselected; the choice (or a memory
    created in the text field) is what the tokens are bound to; a bad name is explained on the page
    itself, which passes axe in both states."""
    work = await memories.create_memory(server.storage, ALICE[0], "work", 20)
    app = await register(server, callback)
    # The pages' CSP forbids every script, axe's too: this context alone ignores it.
    context = await browser.new_context(bypass_csp=True)
    context.set_default_timeout(ARRIVAL_TIMEOUT * 1000)
    page = await context.new_page()
    source = axe_source()
    await page.goto(app.url)
    await sign_in(Tab(context, page, []), *ALICE)
    await page.wait_for_selector("text=wants to access your memory")
    assert await page.input_value("#memory") == "default"
    checked = {"consent": await axe_violations(page, source)}
    await page.select_option("#memory", "work")
    await page.click("button:has-text('Approve')")
    tokens = await redeem(server, app, await callback.next())
    record = await server.storage.get_token(hash_secret(tokens["access_token"]), time.time())
    assert record is not None and record.memory == work.id

    again = authorization(server, app.client_id, callback.url)
    await page.goto(again.url)
    await page.wait_for_selector("text=wants to access your memory")
    await page.fill("#new_memory", " padded")
    await page.click("button:has-text('Approve')")
    await page.wait_for_selector("#memory-error")
    assert "starts or ends with a space" in await page.inner_text("#memory-error")
    assert await page.input_value("#new_memory") == " padded"
    checked["consent-error"] = await axe_violations(page, source)
    await page.fill("#new_memory", "From the browser")
    await page.click("button:has-text('Approve')")
    tokens = await redeem(server, again, await callback.next())
    _, made = await memories.resolve_memory(server.storage, ALICE[0], "From the browser")
    record = await server.storage.get_token(hash_secret(tokens["access_token"]), time.time())
    assert record is not None and record.memory == made.id
    await context.close()
    assert all(not found for found in checked.values()), checked

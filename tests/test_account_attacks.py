"""Attacks on the account pages (server/account): every form without or with a forged CSRF token,
and every action naming another user's application, session, entity or observation, or made
signed out. Each is refused, and the whole store is compared before and after (tests/attackkit.py
snapshot: every table) to prove that nothing changed and the victim's live session still works."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from auth import personal
from auth.server import AUTH_SERVER
from server.account.memory import digest
from tests.attackkit import (
    ALICE,
    BOB,
    Page,
    assert_unchanged,
    attack_server,
    call_tool,
    get_page,
    grant,
    log_in,
    open_session,
    post_page,
    snapshot,
)
from tests.browser import Browser
from tests.conftest import RunningServer

TOOLS_LIST = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[RunningServer]:
    server = await attack_server(tmp_path / "data")
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=15) as client:
        yield client


@pytest.fixture
async def alice(srv: RunningServer) -> AsyncIterator[Browser]:
    browser = Browser(*ALICE)
    yield browser
    await browser.close()


@pytest.fixture
async def bob(srv: RunningServer) -> AsyncIterator[Browser]:
    browser = Browser(*BOB)
    yield browser
    await browser.close()


async def csrf_of(browser: Browser, srv: RunningServer) -> str:
    """The CSRF token of the browser's session, as its account page (or sign-in page) carries it."""
    page = await get_page(browser, srv.url + "/account")
    return page.form()["csrf_token"]


async def alices_things(http: httpx2.AsyncClient, srv: RunningServer, alice: Browser) -> dict[str, str]:
    """Alice's connected client with a live session, an entity with an observation, and a
    personal access token."""
    user = await srv.storage.get_user_by_name(ALICE[0])
    assert user is not None
    pat = await personal.create(srv.storage, srv.app[AUTH_SERVER].settings, user, name="alice's agent",
                                scopes=("memory:read",), days=30, now=time.time())
    tokens = await grant(http, srv, alice)
    session = await open_session(http, srv, tokens["access_token"])
    created = await call_tool(http, srv, session, "create_entities", {"entities": [
        {"name": "diary", "entityType": "secret", "observations": ["alice's secret"]}]})
    assert created.status_code == 200
    return {"client_id": tokens["client_id"], "session_id": session["Mcp-Session-Id"], "token_id": pat.token.id,
            **session}


def actions(things: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """Every account form, filled in with Alice's ids (deletion both as the question and as the
    confirmed step)."""
    entity = {"entity": "diary"}
    observation = {"entity": "diary", "observation": digest("alice's secret")}
    return [("/account/disconnect", {"client_id": things["client_id"]}),
            ("/account/sessions/end", {"session_id": things["session_id"]}),
            ("/account/tokens/revoke", {"token_id": things["token_id"]}),
            ("/account/tokens", {"name": "planted", "scope memory:write": "1", "expires": "never"}),
            ("/account/memory/delete", entity), ("/account/memory/delete", {**entity, "confirmed": "yes"}),
            ("/account/memory/delete", observation), ("/account/memory/delete", {**observation, "confirmed": "yes"})]


async def still_alive(http: httpx2.AsyncClient, srv: RunningServer, things: dict[str, str]) -> None:
    headers = {k: v for k, v in things.items() if k not in ("client_id", "session_id", "token_id")}
    assert (await http.post(srv.url + "/mcp", headers=headers, json=TOOLS_LIST)).status_code == 200
    read = await call_tool(http, srv, headers, "read_graph", {})
    assert "alice's secret" in read.text


async def test_attack_account_forms_without_or_with_a_forged_csrf_token(
        srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> None:
    things = await alices_things(http, srv, alice)
    await log_in(alice, srv)
    real = await csrf_of(alice, srv)
    before = snapshot(srv)
    for path, fields in actions(things):
        for token in (None, "forged", real[:-1], ""):
            data = dict(fields) if token is None else {**fields, "csrf_token": token}
            page = await post_page(alice, srv.url + path, data)
            assert page.status == 403 and "CSRF" in page.text, (path, token, page.status)
            assert "no-store" in page.headers["Cache-Control"] and "default-src 'none'" in page.headers[
                "Content-Security-Policy"]
    # Another browser's own valid token does not count in Alice's session either.
    attacker = Browser(*BOB)
    try:
        foreign = await csrf_of(attacker, srv)
        for path, fields in actions(things):
            page = await post_page(alice, srv.url + path, {**fields, "csrf_token": foreign})
            assert page.status == 403, (path, page.status)
    finally:
        await attacker.close()
    assert_unchanged(srv, before)
    await still_alive(http, srv, things)


async def test_attack_account_actions_on_another_users_ids(srv: RunningServer, http: httpx2.AsyncClient,
                                                            alice: Browser, bob: Browser) -> None:
    things = await alices_things(http, srv, alice)
    # Bob has a connected application and a session of his own: his ids are real, just not Alice's.
    bobs = await grant(http, srv, bob)
    await open_session(http, srv, bobs["access_token"])
    await log_in(bob, srv)
    token = await csrf_of(bob, srv)
    before = snapshot(srv)
    for path, fields in actions(things):
        if path == "/account/tokens":
            continue  # names nobody's id: Bob would create a token of his own
        page: Page = await post_page(bob, srv.url + path, {**fields, "csrf_token": token})
        assert page.status == 404, (path, fields, page.status, page.text[:300])
        assert things["client_id"] not in page.text and "alice" not in page.text
    # Ids of nothing at all get the same answer: nobody learns whether an id exists for someone else.
    for path, fields in (("/account/disconnect", {"client_id": "no-such-client"}),
                         ("/account/sessions/end", {"session_id": "no-such-session"}),
                         ("/account/tokens/revoke", {"token_id": "0123456789abcdef"}),
                         ("/account/tokens/revoke", {}),
                         ("/account/memory/delete", {"entity": "no-such-entity"}),
                         ("/account/disconnect", {}), ("/account/sessions/end", {}), ("/account/memory/delete", {})):
        page = await post_page(bob, srv.url + path, {**fields, "csrf_token": token})
        assert page.status == 404, (path, fields, page.status)
    # Bob's pages show nothing of Alice's.
    for view in ("/account", "/account/memory", "/account/memory?entity=diary", "/account/memory?q=secret"):
        page = await get_page(bob, srv.url + view)
        assert page.status == 200 and "<h3>diary</h3>" not in page.text and "s secret" not in page.text, view
        assert "alice" not in page.text and things["client_id"] not in page.text
        assert things["session_id"] not in page.text
    assert_unchanged(srv, before)
    await still_alive(http, srv, things)


async def test_attack_account_actions_signed_out(srv: RunningServer, http: httpx2.AsyncClient,
                                                 alice: Browser) -> None:
    things = await alices_things(http, srv, alice)
    # A browser that never signed in (its session has a CSRF token all the same), and one whose
    # sign-in ended everywhere.
    stranger = Browser(*BOB)
    try:
        token = await csrf_of(stranger, srv)
        before = snapshot(srv)
        for path, fields in actions(things):
            page = await post_page(stranger, srv.url + path, {**fields, "csrf_token": token})
            assert page.status == 401 and "not signed in" in page.text, (path, page.status)
        assert_unchanged(srv, before)
    finally:
        await stranger.close()
    await still_alive(http, srv, things)

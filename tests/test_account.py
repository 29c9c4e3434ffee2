"""The account pages over HTTP, on both backends: sign-in that returns to the page, connected
applications and live sessions as the store and the registry have them, disconnecting a live
client (its next request 401, its open stream closed, its refresh token dead, also for an MCP SDK
client), ending one session, and the memory browser (paging, search, one entity, deletion only
after the confirmation). The same pages in Chromium: tests/test_account_browser.py; attacks:
tests/test_account_attacks.py."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx2

from auth import memories
from server.account.memory import digest
from tests.attackkit import BOTH, Page, call_tool, get_page, open_session, post_page
from tests.browser import Browser, parse_forms
from tests.conftest import BACKENDS, OAuthUser, RunningServer, tokens_by_hand
from tests.test_attacks import stream_closes

SERVER_BACKENDS = BACKENDS
ALICE = ("alice", "alice-password-1")
TOOLS_LIST = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}


async def signed_in(server: RunningServer, username: str = ALICE[0], password: str = ALICE[1]) -> Browser:
    """A browser signed in from the account page itself: the sign-in form comes back to it."""
    browser = Browser(username, password)
    page = await get_page(browser, server.url + "/account")
    assert page.status == 200 and "Sign in to memory-mcp" in page.text
    form = page.form()
    assert form["return_to"] == "/account"
    form.update(username=username, password=password)
    done = await post_page(browser, server.url + "/login", form)
    assert done.status == 303 and done.headers["Location"] == server.url + "/account", done.text[:300]
    return browser


def form_for(page: Page, action: str, *, only: bool = False, **fields: str) -> dict[str, str]:
    """The fields of the form posting to `action` whose hidden fields include `fields` (`only`:
    are `fields` and the CSRF token)."""
    for form in parse_forms(page.text):
        if form.action == action and all(form.fields.get(k) == v for k, v in fields.items()) and (
                not only or set(form.fields) == {*fields, "csrf_token"}):
            return dict(form.fields)
    raise AssertionError(f"no form to {action} with {fields} on {page.url}: {page.text[:500]}")


async def follow(browser: Browser, server: RunningServer, page: Page) -> Page:
    assert page.status == 303, (page.status, page.text[:300])
    return await get_page(browser, server.url + page.headers["Location"].removeprefix(server.url))


async def test_the_account_page_lists_applications_and_sessions(server: RunningServer,
                                                                http: httpx2.AsyncClient) -> None:
    browser = await signed_in(server)
    try:
        empty = await get_page(browser, server.url + "/account")
        assert "No application is connected" in empty.text and "No application has an MCP session" in empty.text
        headers = empty.headers
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "form-action 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
        tokens = await tokens_by_hand(server, *ALICE, BOTH)
        session = await open_session(http, server, tokens["access_token"])
        page = await get_page(browser, server.url + "/account")
        assert "<h3>by hand</h3>" in page.text and tokens["client_id"] in page.text
        assert "an application on this computer" in page.text  # its redirect URI is on loopback
        assert "<code>memory:write</code>" in page.text and "Streamable HTTP" in page.text
        assert "2025-11-25" in page.text
        form_for(page, "/account/disconnect", client_id=tokens["client_id"])
        form_for(page, "/account/sessions/end", session_id=session["Mcp-Session-Id"])
        # Bob sees none of it.
        bob = await signed_in(server, "bob", "bob-password-22")
        try:
            his = await get_page(bob, server.url + "/account")
            assert tokens["client_id"] not in his.text and session["Mcp-Session-Id"] not in his.text
        finally:
            await bob.close()
        # The old address of the remembered approvals leads here.
        old = await get_page(browser, server.url + "/consents")
        assert old.status == 303 and old.headers["Location"] == server.url + "/account#applications"
    finally:
        await browser.close()


async def test_disconnect_ends_a_live_client(server: RunningServer, http: httpx2.AsyncClient) -> None:
    tokens = await tokens_by_hand(server, *ALICE, BOTH)
    session = await open_session(http, server, tokens["access_token"])
    browser = await signed_in(server)
    try:
        page = await get_page(browser, server.url + "/account")
        form = form_for(page, "/account/disconnect", client_id=tokens["client_id"])

        async def disconnect() -> None:
            done = await post_page(browser, server.url + "/account/disconnect", form)
            after = await follow(browser, server, done)
            assert "No application is connected" in after.text, after.text[:1000]

        # Its open GET stream closes...
        await stream_closes(http, server.url + "/mcp", session, disconnect)
        # ...its next request is refused, and its refresh token is dead.
        assert (await http.post(server.url + "/mcp", headers=session, json=TOOLS_LIST)).status_code == 401
        refresh = await http.post(server.url + "/token", data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": tokens["client_id"]})
        assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
        assert await server.storage.list_sessions() == []
    finally:
        await browser.close()


async def test_disconnect_an_sdk_client(server: RunningServer, http: httpx2.AsyncClient) -> None:
    """The MCP SDK's own client, signed in through the OAuth flow, with its session open."""
    user = OAuthUser(server.url, *ALICE)
    browser = await signed_in(server)
    try:
        async with user.client(mode="legacy") as (client, _):
            await client.list_tools()
            assert user.storage.tokens is not None and user.storage.client_info is not None
            client_id = user.storage.client_info.client_id or ""
            [held] = [s for s in server.registry.sessions() if s.owner.client_id == client_id]
            page = await get_page(browser, server.url + "/account")
            assert f"<h3>pytest client of {ALICE[0]}</h3>" in page.text
            done = await post_page(browser, server.url + "/account/disconnect",
                                   form_for(page, "/account/disconnect", client_id=client_id))
            assert done.status == 303
            assert all(s.session_id != held.session_id for s in server.registry.sessions())
            stale = {"Authorization": f"Bearer {user.storage.tokens.access_token}", "Mcp-Session-Id": held.session_id,
                     "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
            assert (await http.post(server.url + "/mcp", headers=stale, json=TOOLS_LIST)).status_code == 401
    finally:
        await browser.close()


async def test_end_one_session(server: RunningServer, http: httpx2.AsyncClient) -> None:
    tokens = await tokens_by_hand(server, *ALICE, BOTH)
    ended, kept = [await open_session(http, server, tokens["access_token"]) for _ in range(2)]
    browser = await signed_in(server)
    try:
        page = await get_page(browser, server.url + "/account")
        form = form_for(page, "/account/sessions/end", session_id=ended["Mcp-Session-Id"])

        async def end() -> None:
            after = await follow(browser, server, await post_page(browser, server.url + "/account/sessions/end", form))
            assert ended["Mcp-Session-Id"] not in after.text and kept["Mcp-Session-Id"] in after.text

        await stream_closes(http, server.url + "/mcp", ended, end)
        # The session is gone; the application is still connected and its other session works.
        assert (await http.post(server.url + "/mcp", headers=ended, json=TOOLS_LIST)).status_code == 404
        assert (await http.post(server.url + "/mcp", headers=kept, json=TOOLS_LIST)).status_code == 200
    finally:
        await browser.close()


async def fill_memory(http: httpx2.AsyncClient, server: RunningServer, count: int) -> dict[str, str]:
    tokens = await tokens_by_hand(server, *ALICE, BOTH)
    session = await open_session(http, server, tokens["access_token"])
    entities = [{"name": f"entity {i:02}", "entityType": "thing" if i % 2 else "person",
                 "observations": [f"fact {i} one", f"fact {i} <b>two</b>"]} for i in range(count)]
    assert (await call_tool(http, server, session, "create_entities", {"entities": entities})).status_code == 200
    relations = [{"from": "entity 00", "to": "entity 01", "relationType": "knows"},
                 {"from": "entity 02", "to": "entity 00", "relationType": "likes"}]
    assert (await call_tool(http, server, session, "create_relations", {"relations": relations})).status_code == 200
    return session


async def graph(server: RunningServer, owner: str) -> dict[str, Any]:
    import orjson

    data: dict[str, Any] = orjson.loads((await server.storage.read_graph(owner)).json)
    return data


async def test_memory_browser_pages_searches_and_deletes_after_confirmation(
        server: RunningServer, http: httpx2.AsyncClient) -> None:
    await fill_memory(http, server, 30)
    alice = await server.storage.get_user_by_name(ALICE[0])
    assert alice is not None
    browser = await signed_in(server)
    try:
        first = await get_page(browser, server.url + "/account/memory")
        assert first.status == 200 and "Your memory holds 30 entities" in first.text
        assert "Page 1 of 2" in first.text and "<h3>entity 24</h3>" in first.text and "entity 25</h3>" not in first.text
        assert "fact 3 &lt;b&gt;two&lt;/b&gt;" in first.text  # escaped, never markup
        assert "knows → " in first.text and "likes → this" in first.text
        second = await get_page(browser, server.url + "/account/memory?page=2")
        assert "Page 2 of 2" in second.text and "<h3>entity 29</h3>" in second.text
        found = await get_page(browser, server.url + "/account/memory?q=07")
        assert "1 entity matches" in found.text and "<h3>entity 07</h3>" in found.text
        one = await get_page(browser, server.url + "/account/memory?entity=entity+00")
        assert "<h3>entity 00</h3>" in one.text and "<h3>entity 01</h3>" not in one.text

        # An observation: the first POST only asks.
        asking = form_for(one, "/account/memory/delete", entity="entity 00", observation=digest("fact 0 one"))
        ask = await post_page(browser, server.url + "/account/memory/delete", asking)
        assert ask.status == 200 and "Delete this observation?" in ask.text and "fact 0 one" in ask.text
        assert "fact 0 one" in (await graph(server, alice.id))["entities"][0]["observations"]
        done = await post_page(browser, server.url + "/account/memory/delete",
                               form_for(ask, "/account/memory/delete", confirmed="yes"))
        assert done.status == 303 and done.headers["Location"] == server.url + "/account/memory?entity=entity+00"
        assert (await graph(server, alice.id))["entities"][0]["observations"] == ["fact 0 <b>two</b>"]

        # An entity, with its relations.
        ask = await post_page(browser, server.url + "/account/memory/delete",
                              form_for(one, "/account/memory/delete", only=True, entity="entity 00"))
        assert "Delete this entity?" in ask.text and "the 2 relations" in ask.text
        assert len((await graph(server, alice.id))["entities"]) == 30
        done = await post_page(browser, server.url + "/account/memory/delete",
                               form_for(ask, "/account/memory/delete", confirmed="yes"))
        assert done.status == 303
        after = await graph(server, alice.id)
        assert len(after["entities"]) == 29 and after["relations"] == []
        again = await post_page(browser, server.url + "/account/memory/delete",
                                form_for(ask, "/account/memory/delete", confirmed="yes"))
        assert again.status == 404 and "no such entity" in again.text
    finally:
        await browser.close()


async def test_signed_out_pages_ask_for_a_sign_in_that_returns(server: RunningServer) -> None:
    browser = Browser(*ALICE)
    try:
        page = await get_page(browser, server.url + "/account/memory")
        form = page.form()
        assert form["return_to"] == "/account/memory"
        # A return address that is not one of the account pages is ignored.
        form.update(username=ALICE[0], password=ALICE[1], return_to="https://evil.example/")
        done = await post_page(browser, server.url + "/login", form)
        assert done.status == 303 and done.headers["Location"] == server.url + "/login"
    finally:
        await browser.close()


async def test_personal_tokens_are_created_used_and_revoked(server: RunningServer, http: httpx2.AsyncClient) -> None:
    browser = await signed_in(server)
    try:
        page = await get_page(browser, server.url + "/account")
        assert "You have no personal access tokens" in page.text
        form = form_for(page, "/account/tokens")
        # Both kinds of access are ticked to begin with.
        assert form.pop("scope memory:read") == form.pop("scope memory:write") == "1"
        # Refused forms create nothing.
        for bad in ({"name": "x" * 101, "scope memory:read": "1", "expires": "90"},
                    {"name": "no access", "expires": "90"},
                    {"name": "odd expiry", "scope memory:read": "1", "expires": "9999"}):
            refused = await post_page(browser, server.url + "/account/tokens", {**form, **bad})
            assert refused.status == 400, (bad, refused.text[:300])
        alice = await server.storage.get_user_by_name(ALICE[0])
        assert alice is not None and await server.storage.list_personal_tokens(alice.id, 0) == []

        made = await post_page(browser, server.url + "/account/tokens",
                               {**form, "name": "ci agent", "scope memory:read": "1", "expires": "30"})
        assert made.status == 200 and made.headers["Cache-Control"] == "no-store"
        [secret] = re.findall(r'value="(mmcp_pat_[A-Za-z0-9]+)"', made.text)
        assert "shown only this once" in made.text
        [token] = await server.storage.list_personal_tokens(alice.id, 0)
        assert token.name == "ci agent" and token.scopes == ("memory:read",)
        assert token.expires_at is not None and 29 * 86400 < token.expires_at - token.created_at <= 30 * 86400

        session = await open_session(http, server, secret)
        page = await get_page(browser, server.url + "/account")
        assert "<h3>ci agent</h3>" in page.text and token.id in page.text
        # Its session is listed under the token's name, and it is not an application.
        assert "Personal access token “ci agent”" in page.text and "No application is connected" in page.text
        revoke = form_for(page, "/account/tokens/revoke", token_id=token.id)

        async def revoked() -> None:
            after = await follow(browser, server, await post_page(browser, server.url + "/account/tokens/revoke",
                                                                  revoke))
            assert "You have no personal access tokens" in after.text

        await stream_closes(http, server.url + "/mcp", session, revoked)
        assert (await http.post(server.url + "/mcp", headers=session, json=TOOLS_LIST)).status_code == 401
        again = await post_page(browser, server.url + "/account/tokens/revoke", revoke)
        assert again.status == 404
    finally:
        await browser.close()


async def test_a_personal_token_is_bound_to_the_memory_chosen_on_the_form(server: RunningServer,
                                                                          http: httpx2.AsyncClient) -> None:
    alice = await server.storage.get_user_by_name(ALICE[0])
    assert alice is not None
    work = await memories.create(server.storage, alice, "Work notes", limit=20, now=time.time())
    browser = await signed_in(server)
    try:
        page = await get_page(browser, server.url + "/account")
        assert re.search(r'<select id="token-memory" name="memory"><option value="default" selected>default</option>'
                         r'<option value="Work notes">Work notes</option></select>', page.text)
        form = {**form_for(page, "/account/tokens"), "name": "work agent", "expires": "30"}
        refused = await post_page(browser, server.url + "/account/tokens", {**form, "memory": "Holidays"})
        assert refused.status == 400 and "no memory named &#x27;Holidays&#x27;" in refused.text
        assert await server.storage.list_personal_tokens(alice.id, 0) == []
        made = await post_page(browser, server.url + "/account/tokens", {**form, "memory": "Work notes"})
        assert made.status == 200
        [secret] = re.findall(r'value="(mmcp_pat_[A-Za-z0-9]+)"', made.text)
        [token] = await server.storage.list_personal_tokens(alice.id, 0)
        assert token.memory == work.id
        page = await get_page(browser, server.url + "/account")
        assert "<dt>Memory</dt><dd>Work notes</dd>" in page.text
        # What the token writes is in that memory, not in the default one.
        session = await open_session(http, server, secret)
        await call_tool(http, server, session, "create_entities",
                        {"entities": [{"name": "Quarterly plan", "entityType": "doc", "observations": []}]})
        assert [e.name for e in (await server.storage.read_graph(work.id)).model().entities] == ["Quarterly plan"]
        assert (await server.storage.read_graph(alice.id)).model().entities == []
    finally:
        await browser.close()


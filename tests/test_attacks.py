"""The attack suite: one named case per attack on the whole server (real app, real SQLite, loopback
socket), each asserting the refusal *and* that nothing was issued or changed: every table the
server writes is snapshotted before the attack and compared after it (`tests.attackkit`).

Grouped as RFC 9700 and docs/security.md group them: authorization codes and PKCE, redirect URIs,
response types and the authorization response, refresh tokens, audiences, the resource server's
sessions, the browser (CSRF, binding, clickjacking, login), registration, and hostile input.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
import pytest

from auth import personal
from auth.models import Token
from auth.server import AUTH_SERVER
from server.app import SETTINGS
from server.storage.redis import RedisStorage
from tests.attackkit import (
    ALICE,
    BOB,
    CAROL,
    INIT,
    REDIRECT,
    Client,
    Code,
    add_users,
    assert_unchanged,
    attack_server,
    authorize_url,
    bearer,
    call_tool,
    changes,
    code_form,
    consent_page,
    count,
    exchange,
    get_page,
    grant,
    log_in,
    obtain_code,
    open_session,
    pkce,
    post_page,
    query_of,
    refresh,
    register,
    rows,
    secret_hash,
    snapshot,
)
from tests.browser import Browser
from tests.conftest import RunningServer, on_both_backends
from tests.test_resumability import events

TOOLS_LIST = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}


# The attacks whose defence is an atomic step of the store (a code redeemed once, a refresh token
# rotated once, a grant revoked whole, a session bound to its user, a login ended) also run on
# Redis (`on_both_backends`); the rest, about what the HTTP layer refuses, on SQLite only.
@pytest.fixture
async def srv(tmp_path: Path, store_settings: dict[str, Any]) -> AsyncIterator[RunningServer]:
    server = await attack_server(tmp_path / "data", **store_settings)
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=15) as client:
        yield client


@pytest.fixture
async def alice() -> AsyncIterator[Browser]:
    browser = Browser(*ALICE)
    yield browser
    await browser.close()


@pytest.fixture
async def bob() -> AsyncIterator[Browser]:
    browser = Browser(*BOB)
    yield browser
    await browser.close()


def oauth_error(resp: httpx2.Response, status: int, error: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error, body
    assert "access_token" not in body and "refresh_token" not in body and "id_token" not in body
    assert resp.headers.get("cache-control") == "no-store"


def html_refusal(resp: httpx2.Response, status: int = 400) -> None:
    """An error page shown to the user: never a redirect anywhere."""
    assert resp.status_code == status, (resp.status_code, resp.headers.get("location"), resp.text[:300])
    assert "location" not in resp.headers
    assert resp.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]


def error_redirect(resp: httpx2.Response, client: Client, error: str, state: str = "st") -> dict[str, list[str]]:
    """An error sent back to the client's own registered redirect URI, with state and iss."""
    assert resp.status_code == 303, resp.text
    location = resp.headers["location"]
    assert location.startswith(client.redirect_uri + "?"), location
    params = query_of(location)
    assert params["error"] == [error], params
    assert params["state"] == [state]
    assert "code" not in params and "access_token" not in params and "#" not in location
    return params


async def sse_session_id(stream: httpx2.Response) -> str:
    """The session id that a legacy /sse stream announces in its endpoint event."""
    text = ""
    async for chunk in stream.aiter_text():
        text += chunk
        found = re.search(r"session_id=([0-9a-f]{32})", text)
        if found:
            return found.group(1)
    raise AssertionError(f"no endpoint event: {text!r}")


async def wait_until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def stream_closes(http: httpx2.AsyncClient, url: str, headers: dict[str, str], trigger: Any,
                        within: float = 5.0) -> None:
    """Open the session's standalone GET stream, run `trigger()`, and require the stream to end."""
    async with http.stream("GET", url, headers=headers) as stream:
        assert stream.status_code == 200

        async def drain() -> None:
            async for _ in stream.aiter_bytes():
                pass

        draining = asyncio.ensure_future(drain())
        await asyncio.sleep(0.2)
        await trigger()
        await asyncio.wait_for(draining, within)


# Authorization codes and PKCE (RFC 9700 4.2.1, 4.5; RFC 7636).


@on_both_backends("store_settings")
async def test_attack_code_replay_revokes_what_the_first_redemption_issued(
        srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> None:
    client = await register(http, srv)
    code = await obtain_code(alice, srv, client)
    tokens = await exchange(http, srv, code)
    session = await open_session(http, srv, tokens["access_token"])
    before = snapshot(srv)

    replay = await http.post(srv.url + "/token", data=code_form(code))

    oauth_error(replay, 400, "invalid_grant")
    diff = changes(before, snapshot(srv))
    gone, new = diff.pop("auth_tokens")
    assert not new and {r[0] for r in gone} == {secret_hash(tokens["access_token"]),
                                                secret_hash(tokens["refresh_token"])}
    gone_codes, new_codes = diff.pop("auth_codes")
    assert [r[0] for r in gone_codes] == [secret_hash(code.code)] and not new_codes
    gone_sessions, new_sessions = diff.pop("mcp_sessions")
    assert [r[0] for r in gone_sessions] == [session["Mcp-Session-Id"]] and not new_sessions
    diff.pop("mcp_events", None)
    assert set(diff) == {"auth_revocations"}
    assert len(srv.registry) == 0
    assert (await http.post(srv.url + "/mcp", headers=session, json=TOOLS_LIST)).status_code == 401
    oauth_error(await refresh(http, srv, tokens["refresh_token"], client.client_id), 400, "invalid_grant")


@on_both_backends("store_settings")
async def test_attack_code_redeemed_by_another_client(srv: RunningServer, http: httpx2.AsyncClient,
                                                      alice: Browser) -> None:
    victim = await register(http, srv)
    attacker = await register(http, srv)
    code = await obtain_code(alice, srv, victim)
    before = snapshot(srv)

    stolen = await http.post(srv.url + "/token", data=code_form(code, client_id=attacker.client_id))

    oauth_error(stolen, 400, "invalid_grant")
    diff = changes(before, snapshot(srv))
    assert set(diff) == {"auth_codes"}  # burnt (marked redeemed), nothing issued
    assert count(srv, "auth_tokens") == 0
    # Burnt: the rightful client cannot redeem it either now, and nothing is issued.
    oauth_error(await http.post(srv.url + "/token", data=code_form(code)), 400, "invalid_grant")
    assert count(srv, "auth_tokens") == 0


@pytest.mark.parametrize("verifier,error", [
    ("wrong", "invalid_grant"),
    (None, "invalid_request"),
    ("short", "invalid_grant"),
    ("x" * 129, "invalid_grant"),
    ("bad chars!" * 5, "invalid_grant"),
])
async def test_attack_wrong_or_missing_pkce_verifier(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                                    verifier: str | None, error: str) -> None:
    code = await obtain_code(alice, srv, await register(http, srv))
    presented = pkce()[0] if verifier == "wrong" else verifier
    before = snapshot(srv)

    resp = await http.post(srv.url + "/token", data=code_form(code, code_verifier=presented))

    oauth_error(resp, 400, error)
    assert set(changes(before, snapshot(srv))) <= {"auth_codes"}
    assert count(srv, "auth_tokens") == 0


async def test_attack_pkce_downgrade_challenge_presented_as_verifier(srv: RunningServer, http: httpx2.AsyncClient,
                                                                    alice: Browser) -> None:
    """An attacker who saw the authorization request (and so the challenge) tries it as a `plain`
    verifier: S256 is the only method, so the challenge is not the verifier."""
    client = await register(http, srv)
    verifier, challenge = pkce()
    redirect = await alice.authorize(authorize_url(srv, client, challenge), srv.url)
    code = Code(client, redirect.params["code"], verifier, client.redirect_uri, redirect)
    before = snapshot(srv)

    resp = await http.post(srv.url + "/token", data=code_form(code, code_verifier=challenge))

    oauth_error(resp, 400, "invalid_grant")
    assert set(changes(before, snapshot(srv))) <= {"auth_codes"}
    assert count(srv, "auth_tokens") == 0


@pytest.mark.parametrize("method", ["plain", "", "s256", "S512", None])
async def test_attack_code_challenge_method_plain_or_unknown(srv: RunningServer, http: httpx2.AsyncClient,
                                                             method: str | None) -> None:
    client = await register(http, srv)
    _, challenge = pkce()
    before = snapshot(srv)
    url = authorize_url(srv, client, None, code_challenge=challenge, code_challenge_method=method)

    resp = await http.get(url)

    error_redirect(resp, client, "invalid_request")
    assert_unchanged(srv, before)


@pytest.mark.parametrize("challenge", [None, "", "tooshort", "a" * 44, "+" * 43])
async def test_attack_missing_or_malformed_code_challenge(srv: RunningServer, http: httpx2.AsyncClient,
                                                          challenge: str | None) -> None:
    client = await register(http, srv)
    before = snapshot(srv)

    resp = await http.get(authorize_url(srv, client, None, code_challenge=challenge, code_challenge_method="S256"))

    error_redirect(resp, client, "invalid_request")
    assert_unchanged(srv, before)


@on_both_backends("store_settings")
async def test_attack_code_injection_with_another_sessions_code(srv: RunningServer, http: httpx2.AsyncClient,
                                                                bob: Browser) -> None:
    """RFC 9700 4.5: the attacker obtains a code for *its own* account from the honest client (with
    its own PKCE challenge) and injects it into the victim's session of that client, which redeems
    it with the victim's verifier. PKCE binds the code to the attacker's challenge: refused."""
    client = await register(http, srv)
    attackers_code = await obtain_code(bob, srv, client)
    victims_verifier, _ = pkce()
    before = snapshot(srv)

    resp = await http.post(srv.url + "/token", data=code_form(attackers_code, code_verifier=victims_verifier))

    oauth_error(resp, 400, "invalid_grant")
    assert set(changes(before, snapshot(srv))) <= {"auth_codes"}
    assert count(srv, "auth_tokens") == 0


@on_both_backends("store_settings")
async def test_attack_expired_code(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> None:
    code = await obtain_code(alice, srv, await register(http, srv))
    if isinstance(srv.storage, RedisStorage):
        await srv.storage.client.hset(srv.storage.key("code", secret_hash(code.code)), "expires_at", time.time() - 1)
    else:
        srv.sqlite.db.conn.execute("UPDATE auth_codes SET expires_at = ? WHERE code_hash = ?",
                                    (time.time() - 1, secret_hash(code.code)))
    before = snapshot(srv)

    oauth_error(await http.post(srv.url + "/token", data=code_form(code)), 400, "invalid_grant")

    assert set(changes(before, snapshot(srv))) <= {"auth_codes"}  # an expired record may be purged
    assert count(srv, "auth_tokens") == 0


async def test_attack_code_of_a_signed_out_user(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> None:
    """Signing out revokes every grant, codes not yet redeemed included."""
    code = await obtain_code(alice, srv, await register(http, srv))
    confirm = await get_page(alice, srv.url + "/logout")
    assert (await post_page(alice, srv.url + "/logout", confirm.form())).status == 200
    before = snapshot(srv)

    oauth_error(await http.post(srv.url + "/token", data=code_form(code)), 400, "invalid_grant")

    assert_unchanged(srv, before)
    assert count(srv, "auth_tokens") == 0


# Redirect URIs (RFC 9700 4.1, RFC 8252 7.3): never an open redirector.

GOOD = "https://good.example/cb"
HOSTILE_REDIRECTS = [
    "https://evil.example/cb",
    "https://good.example/cb/extra",
    "https://good.example/cb?x=1",
    "https://good.example/cb#fragment",
    "https://good.example/cb?",
    "https://good.example/cb/",
    "https://evil.example@good.example/cb",
    "https://good.example@evil.example/cb",
    "https://good.example\\@evil.example/cb",
    "https://good.example\\evil.example/cb",
    "https:\\\\evil.example\\cb",
    "https://good.example%2F@evil.example/cb",
    "https://good.example%40evil.example/cb",
    "https://good.example/cb%2F..%2F..%2Fevil",
    "https://good.example/%63b",
    "https://good.example/cb/../../evil",
    "https://good.example.evil.example/cb",
    "https://good.example:8443/cb",
    "http://good.example/cb",
    "//evil.example/cb",
    "/cb",
    "javascript:alert(1)//https://good.example/cb",
    "data:text/html,<script>alert(1)</script>",
    "https://good.example/cb\r\nLocation: https://evil.example/",
    "https://good.example/cb\x00https://evil.example/",
    " https://good.example/cb",
]


@pytest.mark.parametrize("redirect_uri", HOSTILE_REDIRECTS)
async def test_attack_open_redirect_via_redirect_uri(srv: RunningServer, http: httpx2.AsyncClient,
                                                     redirect_uri: str) -> None:
    client = await register(http, srv, [GOOD])
    _, challenge = pkce()
    before = snapshot(srv)
    for extra in ({}, {"response_type": "token"}, {"code_challenge": None}, {"prompt": "none"}):
        resp = await http.get(authorize_url(srv, client, challenge, redirect_uri=redirect_uri, **extra))
        html_refusal(resp)
        assert "evil.example" not in resp.text or 'href="' + "https://evil" not in resp.text
    assert_unchanged(srv, before)


async def test_attack_redirect_uri_swap_at_authorize(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    """The attacker's registered redirect URI, with the victim client's id."""
    victim = await register(http, srv, ["https://victim.example/cb"])
    attacker = await register(http, srv, ["https://attacker.example/cb"])
    _, challenge = pkce()
    before = snapshot(srv)

    resp = await http.get(authorize_url(srv, victim, challenge, redirect_uri=attacker.redirect_uri))

    html_refusal(resp)
    assert_unchanged(srv, before)


async def test_attack_redirect_uri_swap_at_token(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> None:
    client = await register(http, srv, ["https://a.example/cb", "https://b.example/cb"])
    codes = [await obtain_code(alice, srv, client, redirect_uri="https://a.example/cb") for _ in range(2)]
    before = snapshot(srv)

    swapped = await http.post(srv.url + "/token", data=code_form(codes[0], redirect_uri="https://b.example/cb"))
    oauth_error(swapped, 400, "invalid_grant")
    # Omitted: allowed only when the client registered exactly one URI.
    oauth_error(await http.post(srv.url + "/token", data=code_form(codes[1], redirect_uri=None)),
                400, "invalid_request")

    assert set(changes(before, snapshot(srv))) <= {"auth_codes"}  # burnt, nothing issued
    assert count(srv, "auth_tokens") == 0


@pytest.mark.parametrize("registered,used,accepted", [
    ("http://127.0.0.1:9/callback", "http://127.0.0.1:54321/callback", True),
    ("http://127.0.0.1:9/callback", "http://127.0.0.1/callback", True),
    ("http://localhost/callback", "http://localhost:61000/callback", True),
    ("http://[::1]:9/callback", "http://[::1]:4444/callback", True),
    ("http://127.0.0.1:9/callback", "http://localhost:9/callback", False),
    ("http://127.0.0.1:9/callback", "http://[::1]:9/callback", False),
    ("http://127.0.0.1:9/callback", "http://127.0.0.2:9/callback", False),
    ("http://127.0.0.1:9/callback", "http://127.1:9/callback", False),
    ("http://127.0.0.1:9/callback", "http://2130706433:9/callback", False),
    ("http://127.0.0.1:9/callback", "http://0x7f000001:9/callback", False),
    ("http://127.0.0.1:9/callback", "http://127.0.0.1.nip.io:9/callback", False),
    ("http://127.0.0.1:9/callback", "https://127.0.0.1:9/callback", False),
    ("http://127.0.0.1:9/callback", "http://127.0.0.1:9/callback/evil", False),
    ("http://127.0.0.1:9/callback", "http://127.0.0.1:9/callback?x=1", False),
    ("http://127.0.0.1:9/callback", "http://127.0.0.1:99999/callback", False),
    ("http://localhost/callback", "http://127.0.0.1/callback", False),
    ("http://localhost/callback", "http://localhost.evil.example/callback", False),
    ("http://[::1]:9/callback", "http://[::ffff:127.0.0.1]:9/callback", False),
])
async def test_attack_loopback_port_variants_accepted_host_variants_refused(
        srv: RunningServer, http: httpx2.AsyncClient, alice: Browser, registered: str, used: str,
        accepted: bool) -> None:
    client = await register(http, srv, [registered])
    _, challenge = pkce()
    before = snapshot(srv)
    resp = await http.get(authorize_url(srv, client, challenge, redirect_uri=used))
    if not accepted:
        html_refusal(resp)
        assert_unchanged(srv, before)
        return
    assert resp.status_code == 200 and "location" not in resp.headers  # the login page
    code = await obtain_code(alice, srv, client, redirect_uri=used)
    assert code.redirect.url.startswith(used + "?")  # delivered to the port the client listens on


@pytest.mark.parametrize("used", ["http://127.0.0.1:9/callback#frag", "http://127.0.0.1:4000/callback#",
                                  "http://evil@127.0.0.1:9/callback", "http://user:pw@127.0.0.1:9/callback"])
async def test_attack_loopback_redirect_uri_with_fragment_or_userinfo(srv: RunningServer, http: httpx2.AsyncClient,
                                                                      used: str) -> None:
    """RFC 6749 3.1.2: a redirection endpoint MUST NOT include a fragment; user information is
    refused at registration (auth.rfc8252) and must not slip in through the port-agnostic match."""
    client = await register(http, srv, [REDIRECT])
    _, challenge = pkce()
    before = snapshot(srv)
    html_refusal(await http.get(authorize_url(srv, client, challenge, redirect_uri=used)))
    assert_unchanged(srv, before)


# Response types and the authorization response (RFC 9700 2.1.2, RFC 9207).


@pytest.mark.parametrize("response_type", ["token", "code token", "id_token", "code id_token", "token id_token",
                                           "none", "CODE", "code "])
async def test_attack_implicit_and_hybrid_response_types_refused(srv: RunningServer, http: httpx2.AsyncClient,
                                                                 alice: Browser, response_type: str) -> None:
    client = await register(http, srv)
    await log_in(alice, srv)
    _, challenge = pkce()
    before = snapshot(srv)
    url = authorize_url(srv, client, challenge, response_type=response_type)

    async with alice.session.get(url, allow_redirects=False) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]

    params = query_of(location)
    assert location.startswith(REDIRECT + "?") and "#" not in location
    assert params["error"] == ["unsupported_response_type"] and "code" not in params and "access_token" not in params
    assert_unchanged(srv, before)


async def test_attack_state_and_iss_in_the_authorization_response(srv: RunningServer, http: httpx2.AsyncClient,
                                                                  alice: Browser) -> None:
    """The code comes back with exactly one `iss`, the issuer's, and `state` byte for byte."""
    metadata = (await http.get(srv.url + "/.well-known/oauth-authorization-server")).json()
    assert metadata["authorization_response_iss_parameter_supported"] is True
    client = await register(http, srv)
    state = "s p&a=c/e?#%25+é\"<>'\\;" + "x" * 500
    code = await obtain_code(alice, srv, client, state=state)
    params = query_of(code.redirect.url)
    assert params["iss"] == [metadata["issuer"]] == [srv.url]
    assert params["state"] == [state]
    assert set(params) == {"code", "state", "iss"}


async def test_attack_mix_up_every_error_response_names_the_issuer(srv: RunningServer, http: httpx2.AsyncClient,
                                                                   alice: Browser) -> None:
    """RFC 9207 against mix-up: every response to the redirect URI, errors included, carries the
    metadata's issuer, so a client talking to several servers can tell which one answered."""
    issuer = (await http.get(srv.url + "/.well-known/oauth-authorization-server")).json()["issuer"]
    client = await register(http, srv)
    await log_in(alice, srv)
    _, challenge = pkce()
    cases = {
        "unsupported_response_type": authorize_url(srv, client, challenge, response_type="token"),
        "invalid_request": authorize_url(srv, client, None),
        "invalid_target": authorize_url(srv, client, challenge, resource="https://other.example/mcp"),
        "consent_required": authorize_url(srv, client, challenge, prompt="none"),
    }
    before = snapshot(srv)
    for error, url in cases.items():
        async with alice.session.get(url, allow_redirects=False) as resp:
            params = query_of(resp.headers["Location"])
        assert params["error"] == [error] and params["iss"] == [issuer] and params["state"] == ["st"]
    page = await consent_page(alice, srv, authorize_url(srv, client, challenge))
    denied = await post_page(alice, srv.url + "/consent", {**page.form(), "decision": "deny"})
    params = query_of(denied.headers["Location"])
    assert params["error"] == ["access_denied"] and params["iss"] == [issuer] and "code" not in params
    assert_unchanged(srv, before)


async def test_attack_header_injection_through_state(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    client = await register(http, srv)
    before = snapshot(srv)
    resp = await http.get(authorize_url(srv, client, None, state="x\r\nSet-Cookie: pwned=1\r\n\r\n<html>"))
    error_redirect(resp, client, "invalid_request", state="x\r\nSet-Cookie: pwned=1\r\n\r\n<html>")
    assert "pwned" not in resp.headers.get("set-cookie", "")
    assert "\r" not in resp.headers["location"] and "\n" not in resp.headers["location"]
    assert_unchanged(srv, before)


async def test_attack_prompt_none_never_approves_silently(srv: RunningServer, http: httpx2.AsyncClient,
                                                          alice: Browser) -> None:
    client = await register(http, srv)
    await log_in(alice, srv)
    _, challenge = pkce()
    before = snapshot(srv)
    async with alice.session.get(authorize_url(srv, client, challenge, prompt="none"), allow_redirects=False,
                                 headers={"Sec-Fetch-Site": "none"}) as resp:
        location = resp.headers["Location"]
    assert query_of(location)["error"] == ["consent_required"] and "code" not in query_of(location)
    assert_unchanged(srv, before)


@pytest.mark.parametrize("fetch_headers", [{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document"},
                                           {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Dest": "document"},
                                           {"Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "iframe"},
                                           {}])
async def test_attack_remembered_consent_driven_cross_site(srv: RunningServer, http: httpx2.AsyncClient,
                                                           alice: Browser, fetch_headers: dict[str, str]) -> None:
    """A remembered approval answers with a redirect, which frame-ancestors cannot protect: it is
    honoured only for first-party navigations, so another site cannot mint codes with it."""
    client = await register(http, srv)
    _, challenge = pkce()
    url = authorize_url(srv, client, challenge)
    page = await consent_page(alice, srv, url)
    approved = await post_page(alice, srv.url + "/consent", {**page.form(), "decision": "approve", "remember": "1"})
    assert approved.status == 303 and count(srv, "auth_consents") == 1
    before = snapshot(srv)

    shown = await get_page(alice, url, **fetch_headers)

    assert shown.status == 200 and "Location" not in shown.headers and 'value="approve"' in shown.text
    assert_unchanged(srv, before)
    silent = await get_page(alice, url, **{"Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "document"})
    assert silent.status == 303 and "code" in query_of(silent.headers["Location"])  # the control


# Refresh tokens (RFC 9700 4.14).


async def test_attack_scope_escalation_on_refresh(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> None:
    tokens = await grant(http, srv, alice, scope="memory:read")
    before = snapshot(srv)
    for scope in ("memory:read memory:write", "memory:write", "openid", "memory:read profile", "admin"):
        oauth_error(await refresh(http, srv, tokens["refresh_token"], tokens["client_id"], scope=scope),
                    400, "invalid_scope")
    assert_unchanged(srv, before)
    still = await refresh(http, srv, tokens["refresh_token"], tokens["client_id"])
    assert still.status_code == 200 and still.json()["scope"] == "memory:read"


@on_both_backends("store_settings")
async def test_attack_refresh_replay_within_grace_gets_the_same_pair(srv: RunningServer, http: httpx2.AsyncClient,
                                                                     alice: Browser) -> None:
    tokens = await grant(http, srv, alice)
    first = await refresh(http, srv, tokens["refresh_token"], tokens["client_id"])
    assert first.status_code == 200
    before = snapshot(srv)

    again = await refresh(http, srv, tokens["refresh_token"], tokens["client_id"])

    assert again.status_code == 200
    assert again.json()["access_token"] == first.json()["access_token"]
    assert again.json()["refresh_token"] == first.json()["refresh_token"]
    assert_unchanged(srv, before)  # nothing else issued, nothing revoked


async def test_attack_refresh_replay_after_grace_revokes_the_family(srv: RunningServer, http: httpx2.AsyncClient,
                                                                    alice: Browser) -> None:
    tokens = await grant(http, srv, alice)
    other = await grant(http, srv, alice)  # another grant of the same user stays
    rotated = (await refresh(http, srv, tokens["refresh_token"], tokens["client_id"])).json()
    session = await open_session(http, srv, rotated["access_token"])
    grace = srv.app[AUTH_SERVER].settings.refresh_grace_seconds
    srv.sqlite.db.conn.execute("UPDATE auth_tokens SET superseded_at = superseded_at - ? WHERE token_hash = ?",
                                (grace + 5, secret_hash(tokens["refresh_token"])))
    before = snapshot(srv)

    async def replay() -> None:
        oauth_error(await refresh(http, srv, tokens["refresh_token"], tokens["client_id"]), 400, "invalid_grant")

    await stream_closes(http, srv.url + "/mcp", session, replay)

    gone, new = changes(before, snapshot(srv))["auth_tokens"]
    assert not new
    grant_id = rows(srv, "SELECT grant_id FROM auth_tokens WHERE token_hash = ?",
                    secret_hash(other["access_token"]))[0][0]
    assert count(srv, "auth_tokens") == 2 and {r[2] for r in rows(srv, "SELECT * FROM auth_tokens")} == {grant_id}
    assert {secret_hash(tokens["access_token"]), secret_hash(rotated["access_token"]),
            secret_hash(rotated["refresh_token"])} <= {r[0] for r in gone}
    assert (await http.post(srv.url + "/mcp", headers=session, json=TOOLS_LIST)).status_code == 401
    oauth_error(await refresh(http, srv, rotated["refresh_token"], tokens["client_id"]), 400, "invalid_grant")


@on_both_backends("store_settings")
async def test_attack_refresh_token_used_by_another_client(srv: RunningServer, http: httpx2.AsyncClient,
                                                           alice: Browser) -> None:
    tokens = await grant(http, srv, alice)
    attacker = await register(http, srv)
    before = snapshot(srv)
    oauth_error(await refresh(http, srv, tokens["refresh_token"], attacker.client_id), 400, "invalid_grant")
    basic = base64.b64encode(f"{attacker.client_id}:".encode()).decode()
    resp = await http.post(srv.url + "/token", headers={"Authorization": f"Basic {basic}"},
                           data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    oauth_error(resp, 400, "invalid_grant")
    assert_unchanged(srv, before)
    assert (await refresh(http, srv, tokens["refresh_token"], tokens["client_id"])).status_code == 200


async def test_attack_access_token_presented_as_refresh_token(srv: RunningServer, http: httpx2.AsyncClient,
                                                              alice: Browser) -> None:
    tokens = await grant(http, srv, alice)
    before = snapshot(srv)
    oauth_error(await refresh(http, srv, tokens["access_token"], tokens["client_id"]), 400, "invalid_grant")
    assert_unchanged(srv, before)


async def test_attack_refresh_token_presented_as_access_token(srv: RunningServer, http: httpx2.AsyncClient,
                                                              alice: Browser) -> None:
    tokens = await grant(http, srv, alice, scope="memory:read memory:write openid")
    before = snapshot(srv)
    for path in ("/mcp", "/userinfo"):
        resp = await http.post(srv.url + path, json=INIT, headers=bearer(tokens["refresh_token"]))
        assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert_unchanged(srv, before)
    assert len(srv.registry) == 0


@on_both_backends("store_settings")
async def test_attack_refresh_token_of_a_revoked_grant(srv: RunningServer, http: httpx2.AsyncClient,
                                                       alice: Browser) -> None:
    tokens = await grant(http, srv, alice)
    revoked = await http.post(srv.url + "/revoke", data={"token": tokens["refresh_token"],
                                                          "client_id": tokens["client_id"]})
    assert revoked.status_code == 200 and count(srv, "auth_tokens") == 0
    before = snapshot(srv)
    oauth_error(await refresh(http, srv, tokens["refresh_token"], tokens["client_id"]), 400, "invalid_grant")
    resp = await http.post(srv.url + "/mcp", json=INIT, headers=bearer(tokens["access_token"]))
    assert resp.status_code == 401
    assert_unchanged(srv, before)


@on_both_backends("store_settings")
async def test_attack_revoking_another_clients_token(srv: RunningServer, http: httpx2.AsyncClient,
                                                     alice: Browser) -> None:
    """RFC 7009 2.1: a client may only revoke its own tokens; the answer must not say whether the
    token exists."""
    tokens = await grant(http, srv, alice)
    attacker = await register(http, srv)
    before = snapshot(srv)
    for token in (tokens["access_token"], tokens["refresh_token"]):
        resp = await http.post(srv.url + "/revoke", data={"token": token, "client_id": attacker.client_id})
        assert resp.status_code == 200 and resp.content == b""
    assert_unchanged(srv, before)
    session = await open_session(http, srv, tokens["access_token"])
    assert (await http.post(srv.url + "/mcp", headers=session, json=TOOLS_LIST)).status_code == 200


@pytest.mark.parametrize("form", [
    {"client_secret": "guess"},
    {"client_id": "someone-else"},
])
async def test_attack_client_confusion_at_token(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                                form: dict[str, str]) -> None:
    """A secret where none exists, or Basic credentials naming another client than the body."""
    tokens = await grant(http, srv, alice)
    basic = base64.b64encode(f"{tokens['client_id']}:".encode()).decode()
    before = snapshot(srv)
    resp = await http.post(srv.url + "/token", headers={"Authorization": f"Basic {basic}"}, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], **form})
    assert resp.status_code in (400, 401) and resp.json()["error"] in ("invalid_client", "invalid_request")
    assert "access_token" not in resp.text
    assert_unchanged(srv, before)


@pytest.mark.parametrize("where", ["authorize", "token"])
async def test_attack_repeated_parameters(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                          where: str) -> None:
    """RFC 6749 3.1: parameters MUST NOT repeat; a proxy and the server could read different ones."""
    client = await register(http, srv)
    other = await register(http, srv, ["https://evil.example/cb"])
    if where == "authorize":
        _, challenge = pkce()
        before = snapshot(srv)
        url = authorize_url(srv, client, challenge) + "&" + urlencode(
            {"client_id": other.client_id, "redirect_uri": other.redirect_uri})
        html_refusal(await http.get(url))
        assert_unchanged(srv, before)
        return
    code = await obtain_code(alice, srv, client)
    before = snapshot(srv)
    body = urlencode(code_form(code)) + "&" + urlencode({"code_verifier": pkce()[0]})
    resp = await http.post(srv.url + "/token", content=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    oauth_error(resp, 400, "invalid_request")
    assert_unchanged(srv, before)


# Audiences (RFC 8707, MCP "token passthrough").


async def test_attack_token_for_another_resource_at_mcp(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    alice_id = rows(srv, "SELECT id FROM auth_users WHERE username = 'alice'")[0][0]
    secret = "another-servers-token-" + "x" * 30
    now = time.time()
    await srv.storage.save_tokens([Token(secret_hash(secret), "access", "foreign-grant", "foreign-client", alice_id,
                                         ("memory:read", "memory:write", "openid"), "https://other.example/mcp",
                                         now, now + 3600)])
    before = snapshot(srv)
    for method, path in (("POST", "/mcp"), ("GET", "/mcp"), ("GET", "/sse"), ("POST", "/messages?session_id=x"),
                         ("GET", "/userinfo")):
        resp = await http.request(method, srv.url + path, headers=bearer(secret), content=json.dumps(INIT))
        assert resp.status_code == 401, (path, resp.text)
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert_unchanged(srv, before)
    assert len(srv.registry) == 0


@pytest.mark.parametrize("resource", ["https://other.example/mcp", "http://127.0.0.1:1/mcp", "{url}/admin",
                                      "{url}/mcp#frag", "http://user@{host}/mcp", "urn:memory-mcp", "{url}/mcp/../x",
                                      "file:///mcp"])
async def test_attack_authorize_for_a_foreign_resource(srv: RunningServer, http: httpx2.AsyncClient,
                                                       resource: str) -> None:
    client = await register(http, srv)
    _, challenge = pkce()
    before = snapshot(srv)
    target = resource.format(url=srv.url, host=urlsplit(srv.url).netloc)
    resp = await http.get(authorize_url(srv, client, challenge, resource=target))
    error_redirect(resp, client, "invalid_target")
    assert_unchanged(srv, before)


async def test_attack_token_request_for_a_foreign_resource(srv: RunningServer, http: httpx2.AsyncClient,
                                                           alice: Browser) -> None:
    code = await obtain_code(alice, srv, await register(http, srv))
    before = snapshot(srv)
    resp = await http.post(srv.url + "/token", data=code_form(code, resource="https://other.example/mcp"))
    oauth_error(resp, 400, "invalid_target")
    assert set(changes(before, snapshot(srv))) <= {"auth_codes"}
    assert count(srv, "auth_tokens") == 0


# Personal access tokens (auth.personal): bearer tokens for the MCP endpoints only, never a grant.


async def personal_token(srv: RunningServer, issuer: str | None = None, scope: str | None = None) -> str:
    """Alice's new personal access token, bound to `issuer`'s resource (default: this server's)."""
    settings = srv.app[SETTINGS].auth_settings()
    if issuer is not None:
        settings = dataclasses.replace(settings, issuer=issuer)
    user = await srv.storage.get_user_by_name("alice")
    assert user is not None
    created = await personal.create(srv.storage, settings, user, name="attack", days=1, now=time.time(),
                                    scopes=personal.parse_scopes(scope, settings))
    return created.secret


async def test_attack_personal_token_at_the_token_endpoint(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    secret = await personal_token(srv)
    client = await register(http, srv)
    before = snapshot(srv)
    oauth_error(await refresh(http, srv, secret, client.client_id), 400, "invalid_grant")
    oauth_error(await refresh(http, srv, secret, client.client_id, scope="memory:read openid"), 400, "invalid_grant")
    resp = await http.post(srv.url + "/token", data={
        "grant_type": "authorization_code", "code": secret, "code_verifier": "v" * 43, "client_id": client.client_id,
        "redirect_uri": client.redirect_uri})
    oauth_error(resp, 400, "invalid_grant")
    resp = await http.post(srv.url + "/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": secret,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "client_id": client.client_id})
    oauth_error(resp, 400, "unsupported_grant_type")
    assert_unchanged(srv, before)


async def test_attack_personal_token_at_userinfo(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    secret = await personal_token(srv)
    before = snapshot(srv)
    for method in ("GET", "POST"):
        resp = await http.request(method, srv.url + "/userinfo", headers=bearer(secret))
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
        assert "sub" not in resp.json() and "preferred_username" not in resp.json()
    assert_unchanged(srv, before)


async def test_attack_personal_token_for_another_resource(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    secret = await personal_token(srv, issuer="https://other.example")
    before = snapshot(srv)
    for method, path in (("POST", "/mcp"), ("GET", "/mcp"), ("GET", "/sse"), ("POST", "/messages?session_id=x")):
        resp = await http.request(method, srv.url + path, headers=bearer(secret), content=json.dumps(INIT))
        assert resp.status_code == 401, (path, resp.text)
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    await asyncio.sleep(0.2)  # a use recorded by mistake would be written by now
    assert_unchanged(srv, before)  # its last use included
    assert len(srv.registry) == 0


async def test_attack_forged_personal_tokens(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    secret = await personal_token(srv)
    flipped = secret[:20] + ("a" if secret[20] != "a" else "b") + secret[21:]
    before = snapshot(srv)
    for forged in (flipped, personal.new_secret(), secret[:-1], secret + "0", secret.upper(), personal.PREFIX,
                   secret.replace(personal.PREFIX, "mmcp_pat-")):
        resp = await http.post(srv.url + "/mcp", headers=bearer(forged), json=INIT)
        assert resp.status_code == 401, forged
    await asyncio.sleep(0.2)
    assert_unchanged(srv, before)
    assert len(srv.registry) == 0


# The resource server's sessions (MCP transports).


async def test_attack_revoked_token_on_a_live_session(srv: RunningServer, http: httpx2.AsyncClient,
                                                      alice: Browser) -> None:
    tokens = await grant(http, srv, alice)
    session = await open_session(http, srv, tokens["access_token"])

    async def revoke() -> None:
        resp = await http.post(srv.url + "/revoke", data={"token": tokens["access_token"],
                                                          "client_id": tokens["client_id"]})
        assert resp.status_code == 200

    await stream_closes(http, srv.url + "/mcp", session, revoke)
    assert len(srv.registry) == 0 and count(srv, "mcp_sessions") == 0
    before = snapshot(srv)
    after = await call_tool(http, srv, session, "create_entities",
                            {"entities": [{"name": "after revocation", "entityType": "t", "observations": []}]})
    assert after.status_code == 401
    assert_unchanged(srv, before)


@on_both_backends("store_settings")
async def test_attack_other_users_session_id_on_mcp(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                                    bob: Browser) -> None:
    alices = await open_session(http, srv, (await grant(http, srv, alice))["access_token"])
    bobs_token = (await grant(http, srv, bob))["access_token"]
    before = snapshot(srv)
    hijack = {**bearer(bobs_token), "Mcp-Session-Id": alices["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
    write = await call_tool(http, srv, hijack, "create_entities",
                            {"entities": [{"name": "planted by bob", "entityType": "t", "observations": []}]})
    assert write.status_code == 404
    read = await call_tool(http, srv, hijack, "read_graph", {})
    assert read.status_code == 404
    get = await http.get(srv.url + "/mcp", headers=hijack)
    assert get.status_code == 404
    assert_unchanged(srv, before)
    ok = await call_tool(http, srv, alices, "read_graph", {})
    assert ok.status_code == 200 and "planted by bob" not in ok.text


@on_both_backends("store_settings")
async def test_attack_delete_of_another_users_session(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                                      bob: Browser) -> None:
    alices = await open_session(http, srv, (await grant(http, srv, alice))["access_token"])
    bobs_token = (await grant(http, srv, bob))["access_token"]
    before = snapshot(srv)
    hijack = {**bearer(bobs_token), "Mcp-Session-Id": alices["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
    resp = await http.delete(srv.url + "/mcp", headers=hijack)
    assert resp.status_code == 404
    assert_unchanged(srv, before)
    assert [s.session_id for s in srv.registry.sessions()] == [alices["Mcp-Session-Id"]]
    assert (await http.post(srv.url + "/mcp", headers=alices, json=TOOLS_LIST)).status_code == 200


@on_both_backends("store_settings")
async def test_attack_other_users_session_id_on_messages(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                                         bob: Browser) -> None:
    alices_token = (await grant(http, srv, alice))["access_token"]
    bobs_token = (await grant(http, srv, bob))["access_token"]
    async with http.stream("GET", srv.url + "/sse", headers={"Authorization": f"Bearer {alices_token}"}) as stream:
        sid = await sse_session_id(stream)
        await wait_until(lambda: any(s.session_id == sid for s in srv.registry.sessions()))
        before = snapshot(srv)
        for message in (INIT, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "create_entities", "arguments": {"entities": [
                    {"name": "planted by bob", "entityType": "t", "observations": []}]}}}):
            resp = await http.post(srv.url + "/messages", params={"session_id": sid}, json=message,
                                   headers={"Authorization": f"Bearer {bobs_token}"})
            assert resp.status_code == 404
        assert_unchanged(srv, before)
        own = await http.post(srv.url + "/messages", params={"session_id": sid}, json=INIT,
                              headers={"Authorization": f"Bearer {alices_token}"})
        assert own.status_code == 202  # alice's session is untouched


async def test_attack_last_event_id_of_another_session(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                                       bob: Browser) -> None:
    alices = await open_session(http, srv, (await grant(http, srv, alice))["access_token"])
    await call_tool(http, srv, alices, "create_entities",
                    {"entities": [{"name": "alice's secret", "entityType": "t", "observations": ["diary"]}]})
    posted = await http.post(srv.url + "/mcp", headers=alices, json={"jsonrpc": "2.0", "id": 7, "method": "ping"})
    assert posted.headers["content-type"].startswith("text/event-stream")
    alices_events = [str(r[0]) for r in rows(srv, "SELECT event_id FROM mcp_events WHERE session_id = ? "
                                                  "ORDER BY event_id", alices["Mcp-Session-Id"])]
    assert alices_events and events(posted.text)[0]["id"] in alices_events
    bobs = await open_session(http, srv, (await grant(http, srv, bob))["access_token"])
    before = snapshot(srv)

    async def first_bytes(headers: dict[str, str]) -> tuple[int, str]:
        async with http.stream("GET", srv.url + "/mcp", headers=headers) as resp:
            text = ""
            try:
                async with asyncio.timeout(1.5):
                    async for chunk in resp.aiter_text():
                        text += chunk
            except TimeoutError:
                pass
            return resp.status_code, text

    for event_id in (alices_events[0], alices_events[-1]):
        status, text = await first_bytes({**bobs, "Last-Event-ID": event_id})
        assert status in (200, 400, 404)
        assert "alice's secret" not in text and '"id":7' not in text.replace(" ", "")
        status, text = await first_bytes({**bobs, "Mcp-Session-Id": alices["Mcp-Session-Id"],
                                          "Last-Event-ID": event_id})
        assert status == 404 and '"id":7' not in text.replace(" ", "")
    assert_unchanged(srv, before, ignore=("mcp_sessions",))  # bob's own session may note that it was seen
    assert rows(srv, "SELECT session_id FROM mcp_sessions ORDER BY session_id") == sorted(
        [(alices["Mcp-Session-Id"],), (bobs["Mcp-Session-Id"],)])


async def test_attack_token_in_the_query_string_or_body(srv: RunningServer, http: httpx2.AsyncClient,
                                                        alice: Browser) -> None:
    """Tokens are taken from the Authorization header only (URLs end up in logs and Referers)."""
    token = (await grant(http, srv, alice, scope="memory:read memory:write openid"))["access_token"]
    before = snapshot(srv)
    for method, path in (("POST", "/mcp"), ("GET", "/mcp"), ("GET", "/sse"), ("POST", "/messages?session_id=x"),
                         ("GET", "/userinfo"), ("POST", "/userinfo")):
        sep = "&" if "?" in path else "?"
        resp = await http.request(method, f"{srv.url}{path}{sep}access_token={token}", content=json.dumps(INIT),
                                  headers=ACCEPT_JSON)
        assert resp.status_code == 401, (path, resp.status_code)
        assert "invalid_token" not in resp.headers["www-authenticate"]  # no token was presented
    form = await http.post(srv.url + "/userinfo", data={"access_token": token})
    assert form.status_code == 401
    assert_unchanged(srv, before)
    assert len(srv.registry) == 0


ACCEPT_JSON = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_attack_foreign_origin_on_mcp(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> None:
    """DNS rebinding: a page on another origin, reaching the server through the user's browser."""
    token = (await grant(http, srv, alice))["access_token"]
    before = snapshot(srv)
    for origin in ("https://evil.example", "http://127.0.0.1.evil.example", "null", srv.url + ".evil.example"):
        resp = await http.post(srv.url + "/mcp", json=INIT, headers={**bearer(token), "Origin": origin})
        assert resp.status_code == 403
        assert "access-control-allow-origin" not in resp.headers
    assert_unchanged(srv, before)
    assert len(srv.registry) == 0


@on_both_backends("store_settings")
async def test_attack_removed_users_token_dies_at_once(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    await add_users(srv, CAROL)
    carol = Browser(*CAROL)
    try:
        tokens = await grant(http, srv, carol, scope="memory:read memory:write openid")
    finally:
        await carol.close()
    session = await open_session(http, srv, tokens["access_token"])

    async def remove() -> None:
        await srv.app[AUTH_SERVER].remove_user("carol")

    await stream_closes(http, srv.url + "/mcp", session, remove)
    assert len(srv.registry) == 0
    before = snapshot(srv)
    assert (await http.post(srv.url + "/mcp", json=INIT, headers=bearer(tokens["access_token"]))).status_code == 401
    assert (await http.get(srv.url + "/userinfo", headers=bearer(tokens["access_token"]))).status_code == 401
    oauth_error(await refresh(http, srv, tokens["refresh_token"], tokens["client_id"]), 400, "invalid_grant")
    assert_unchanged(srv, before)
    carol_again = Browser(*CAROL)  # and the password no longer signs in
    try:
        page = await get_page(carol_again, srv.url + "/login")
        failed = await post_page(carol_again, srv.url + "/login",
                                 {**page.form(), "username": CAROL[0], "password": CAROL[1]})
        assert failed.status == 401
    finally:
        await carol_again.close()
    assert_unchanged(srv, before)


# The browser: CSRF, binding, clickjacking, login.


async def with_csrf(srv: RunningServer, form: dict[str, str], csrf: str | None,
                    account: tuple[str, str]) -> dict[str, str]:
    """`form` with its CSRF token missing (None), replaced by `csrf`, or ("other-browser") replaced
    by a genuine token of another browser's session."""
    if csrf == "other-browser":
        other = Browser(*account)
        try:
            return {**form, "csrf_token": (await get_page(other, srv.url + "/login")).form()["csrf_token"]}
        finally:
            await other.close()
    if csrf is None:
        return {k: v for k, v in form.items() if k != "csrf_token"}
    return {**form, "csrf_token": csrf}


@pytest.mark.parametrize("csrf", [None, "", "forged-token", "other-browser"])
async def test_attack_consent_csrf(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                   csrf: str | None) -> None:
    client = await register(http, srv)
    page = await consent_page(alice, srv, authorize_url(srv, client, pkce()[1]))
    form = await with_csrf(srv, {**page.form(), "decision": "approve"}, csrf, ALICE)
    before = snapshot(srv)

    resp = await post_page(alice, srv.url + "/consent", form)

    assert resp.status == 403 and "Location" not in resp.headers and "CSRF" in resp.text
    assert_unchanged(srv, before)


@pytest.mark.parametrize("csrf", [None, "forged-token", "other-browser"])
async def test_attack_login_csrf(srv: RunningServer, http: httpx2.AsyncClient, csrf: str | None) -> None:
    """A forged login would connect the victim's client to the attacker's account."""
    client = await register(http, srv)
    victim = Browser(*BOB)
    try:
        page = await get_page(victim, authorize_url(srv, client, pkce()[1]))
        form = await with_csrf(srv, {**page.form(), "username": BOB[0], "password": BOB[1]}, csrf, BOB)
        before = snapshot(srv)
        resp = await post_page(victim, srv.url + "/login", form)
        assert resp.status == 403 and "Location" not in resp.headers
        assert_unchanged(srv, before)
        assert count(srv, "auth_browser_sessions") == 0
    finally:
        await victim.close()


async def test_attack_consent_posted_from_another_browser(srv: RunningServer, http: httpx2.AsyncClient,
                                                          alice: Browser) -> None:
    """GHSA-rww4-4w9c-7733: the sealed request of one browser, posted by another browser that has
    a valid CSRF token and login of its own, is refused (binding cookie)."""
    client = await register(http, srv)
    page = await consent_page(alice, srv, authorize_url(srv, client, pkce()[1]))
    other = Browser(*ALICE)
    try:
        await log_in(other, srv)
        own = await consent_page(other, srv, authorize_url(srv, client, pkce()[1]))
        before = snapshot(srv)
        form = {**own.form(), "request": page.form()["request"], "decision": "approve"}
        resp = await post_page(other, srv.url + "/consent", form)
        assert resp.status == 403 and "Location" not in resp.headers and "another browser" in resp.text
        assert_unchanged(srv, before)
    finally:
        await other.close()


async def test_attack_login_seal_from_another_browser(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    client = await register(http, srv)
    attacker, victim = Browser(*BOB), Browser(*ALICE)
    try:
        planted = (await get_page(attacker, authorize_url(srv, client, pkce()[1]))).form()["request"]
        page = await get_page(victim, authorize_url(srv, client, pkce()[1]))
        before = snapshot(srv)
        form = {**page.form(), "request": planted, "username": ALICE[0], "password": ALICE[1]}
        resp = await post_page(victim, srv.url + "/login", form)
        assert resp.status == 403 and "Location" not in resp.headers
        assert_unchanged(srv, before)
    finally:
        await attacker.close()
        await victim.close()


@on_both_backends("store_settings")
async def test_attack_consent_seal_of_another_user(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    """A consent page shown to bob, submitted after the same browser signed in as alice: the
    approval must come from the user the page was shown to, so it is asked again."""
    client = await register(http, srv)
    browser = Browser(*BOB)
    try:
        page = await consent_page(browser, srv, authorize_url(srv, client, pkce()[1]))
        sealed = page.form()["request"]
        browser.username, browser.password = ALICE
        confirm = await get_page(browser, srv.url + "/logout")
        await post_page(browser, srv.url + "/logout", confirm.form())
        await log_in(browser, srv)
        csrf = (await get_page(browser, srv.url + "/login")).form()["csrf_token"]
        before = snapshot(srv)
        resp = await post_page(browser, srv.url + "/consent", {"csrf_token": csrf, "request": sealed,
                                                                "decision": "approve"})
        assert resp.status == 303 and resp.headers["Location"].startswith(srv.url + "/authorize?")
        assert_unchanged(srv, before)
    finally:
        await browser.close()


@pytest.mark.parametrize("tamper", ["flip", "truncate", "empty", "other-key"])
async def test_attack_tampered_sealed_request(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser,
                                              tamper: str) -> None:
    from cryptography.fernet import Fernet

    client = await register(http, srv)
    page = await consent_page(alice, srv, authorize_url(srv, client, pkce()[1]))
    form = {**page.form(), "decision": "approve"}
    sealed = form["request"]
    form["request"] = {
        "flip": sealed[:40] + ("A" if sealed[40] != "A" else "B") + sealed[41:],
        "truncate": sealed[:-10],
        "empty": "",
        "other-key": Fernet(Fernet.generate_key()).encrypt(json.dumps({
            "client_id": client.client_id, "redirect_uri": "https://evil.example/cb", "redirect_uri_explicit": True,
            "state": None, "code_challenge": pkce()[1], "scopes": ["memory:read"], "resource": srv.url + "/mcp",
        }).encode()).decode(),
    }[tamper]
    before = snapshot(srv)
    resp = await post_page(alice, srv.url + "/consent", form)
    assert resp.status == 400 and "Location" not in resp.headers
    assert_unchanged(srv, before)


@on_both_backends("store_settings")
async def test_attack_logout_and_withdrawal_csrf(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> None:
    """Cross-site sign-out would revoke every token: GET only asks, POST needs the token."""
    client = await register(http, srv)
    page = await consent_page(alice, srv, authorize_url(srv, client, pkce()[1]))
    approved = await post_page(alice, srv.url + "/consent", {**page.form(), "decision": "approve", "remember": "1"})
    assert approved.status == 303
    await grant(http, srv, alice)
    before = snapshot(srv)
    asked = await get_page(alice, srv.url + "/logout")
    assert asked.status == 200
    for path, form in (("/logout", {}), ("/logout", {"csrf_token": "forged"}),
                       ("/consents", {"client_id": client.client_id}),
                       ("/consents", {"client_id": client.client_id, "csrf_token": "forged"})):
        resp = await post_page(alice, srv.url + path, form)
        assert resp.status == 403, (path, resp.text)
    assert_unchanged(srv, before)
    assert "You are signed in as" in (await get_page(alice, srv.url + "/login")).text


async def test_attack_clickjacking_headers_on_every_html_page(srv: RunningServer, http: httpx2.AsyncClient,
                                                              alice: Browser) -> None:
    client = await register(http, srv)
    anonymous = Browser(*BOB)
    try:
        pages = [
            await get_page(anonymous, srv.url + "/authorize"),
            await get_page(anonymous, srv.url + "/authorize?client_id=nope"),
            await get_page(anonymous, authorize_url(srv, client, pkce()[1])),
            await get_page(anonymous, srv.url + "/login"),
            await get_page(anonymous, srv.url + "/logout"),
            await get_page(anonymous, srv.url + "/account"),
            await get_page(anonymous, srv.url + "/account/memory"),
            *[await post_page(anonymous, srv.url + path, {}) for path in ACCOUNT_FORMS],
            await post_page(anonymous, srv.url + "/login", {"username": "x", "password": "y"}),
            await post_page(anonymous, srv.url + "/consent", {}),
            await post_page(anonymous, srv.url + "/logout", {}),
            await post_page(anonymous, srv.url + "/consents", {}),
        ]
        login_page = await get_page(anonymous, srv.url + "/login")
        pages.append(await post_page(anonymous, srv.url + "/login",
                                     {**login_page.form(), "username": "bob", "password": "wrong"}))
        pages.append(await consent_page(alice, srv, authorize_url(srv, client, pkce()[1])))
        pages += [await get_page(alice, srv.url + p) for p in ("/login", "/logout", "/account", "/account/memory",
                                                               "/account/memory?q=x&page=2")]
        ipv6 = await register(http, srv, ["http://[::1]:9/cb"])
        pages.append(await consent_page(alice, srv, authorize_url(srv, ipv6, pkce()[1])))
    finally:
        await anonymous.close()
    for page in pages:
        assert page.headers["Content-Type"].startswith("text/html"), page.url
        csp = page.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, (page.url, csp)
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert page.headers["Cache-Control"] == "no-store"
        assert "<script" not in page.text.lower() and "javascript:" not in page.text.lower()


async def test_attack_login_brute_force_gets_429(srv: RunningServer) -> None:
    browser = Browser(*ALICE)
    try:
        page = await get_page(browser, srv.url + "/login")
        for i in range(5):
            failed = await post_page(browser, srv.url + "/login",
                                     {**page.form(), "username": "alice", "password": f"guess-{i}"})
            assert failed.status == 401
        before = snapshot(srv)
        for password in ("guess-5", ALICE[1]):  # even the right password is not tried while throttled
            throttled = await post_page(browser, srv.url + "/login",
                                        {**page.form(), "username": "alice", "password": password})
            assert throttled.status == 429 and 1 <= int(throttled.headers["Retry-After"]) <= 30
            assert "Location" not in throttled.headers
            assert "frame-ancestors 'none'" in throttled.headers["Content-Security-Policy"]
        assert_unchanged(srv, before)
        assert count(srv, "auth_browser_sessions") == 0
    finally:
        await browser.close()


def _normalise(page: str) -> str:
    page = re.sub(r'name="(csrf_token|request)" value="[^"]*"', r'name="\1" value=""', page)
    return re.sub(r'id="username" name="username" value="[^"]*"', 'id="username" name="username" value=""', page)


async def test_attack_user_enumeration(srv: RunningServer) -> None:
    """An unknown user and a wrong password get the same page and status, and the same throttle."""
    browser = Browser(*ALICE)
    try:
        page = await get_page(browser, srv.url + "/login")
        before = snapshot(srv)
        known = await post_page(browser, srv.url + "/login", {**page.form(), "username": "alice", "password": "nope"})
        unknown = await post_page(browser, srv.url + "/login",
                                  {**page.form(), "username": "mallory", "password": "nope"})
        assert known.status == unknown.status == 401
        assert _normalise(known.text) == _normalise(unknown.text)
        assert set(known.headers) - {"Date", "Set-Cookie"} == set(unknown.headers) - {"Date", "Set-Cookie"}
        for _ in range(4):
            await post_page(browser, srv.url + "/login", {**page.form(), "username": "mallory", "password": "nope"})
            await post_page(browser, srv.url + "/login", {**page.form(), "username": "alice", "password": "nope"})
        known = await post_page(browser, srv.url + "/login", {**page.form(), "username": "alice", "password": "x"})
        unknown = await post_page(browser, srv.url + "/login", {**page.form(), "username": "mallory", "password": "x"})
        assert known.status == unknown.status == 429
        assert _normalise(known.text) == _normalise(unknown.text)
        assert known.headers["Retry-After"] == unknown.headers["Retry-After"]
        assert_unchanged(srv, before)
    finally:
        await browser.close()


@on_both_backends("store_settings")
async def test_attack_session_fixation(srv: RunningServer) -> None:
    """A cookie planted before the login (or read by the attacker) is not the logged-in one."""
    victim = Browser(*ALICE)
    attacker = Browser(*BOB)
    try:
        page = await get_page(victim, srv.url + "/login")
        planted = {c.key: c.value for c in victim.session.cookie_jar}
        assert planted.get("memory-mcp-login")
        done = await post_page(victim, srv.url + "/login", {**page.form(), "username": "alice",
                                                             "password": ALICE[1]})
        assert done.status == 303
        after = {c.key: c.value for c in victim.session.cookie_jar}
        assert after["memory-mcp-login"] != planted["memory-mcp-login"]
        assert (await get_page(victim, srv.url + "/login")).form()["csrf_token"] != page.form()["csrf_token"]
        attacker.session.cookie_jar.update_cookies(planted, response_url=__import__("yarl").URL(srv.url))
        before = snapshot(srv)
        seen = await get_page(attacker, srv.url + "/login")
        assert "Signed in" not in seen.text and 'name="password"' in seen.text
        for path in ("/account", "/account/memory"):
            account = await get_page(attacker, srv.url + path)
            assert 'name="password"' in account.text and "Your account" not in account.text
        assert_unchanged(srv, before)
    finally:
        await victim.close()
        await attacker.close()


# Registration (RFC 7591) and metadata documents.


HOSTILE_REGISTRATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("javascript", {"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
    ("data", {"redirect_uris": ["data:text/html,<script>alert(1)</script>"]}, "invalid_redirect_uri"),
    ("file", {"redirect_uris": ["file:///etc/passwd"]}, "invalid_redirect_uri"),
    ("fragment", {"redirect_uris": ["https://good.example/cb#frag"]}, "invalid_redirect_uri"),
    ("http-remote", {"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
    ("userinfo", {"redirect_uris": ["https://good.example@evil.example/cb"]}, "invalid_redirect_uri"),
    ("private-scheme", {"redirect_uris": ["com.example.app:/cb"]}, "invalid_redirect_uri"),
    ("relative", {"redirect_uris": ["/cb"]}, "invalid_redirect_uri"),
    ("crlf", {"redirect_uris": ["https://good.example/cb\r\nX: y"]}, "invalid_redirect_uri"),
    ("1000-uris", {"redirect_uris": [f"https://good.example/cb{i}" for i in range(1000)]}, "invalid_redirect_uri"),
    ("csp-injection", {"redirect_uris": ["https://x.example;frame-ancestors */cb"]}, "invalid_redirect_uri"),
    ("client-uri-javascript", {"client_uri": "javascript:alert(1)"}, "invalid_client_metadata"),
    ("logo-data", {"logo_uri": "data:image/svg+xml,<svg onload=alert(1)>"}, "invalid_client_metadata"),
    ("bidi-name", {"client_name": "Claude \u202eevil.com"}, "invalid_client_metadata"),
    ("secret-method", {"token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata"),
    ("jwks", {"jwks_uri": "https://evil.example/jwks"}, "invalid_client_metadata"),
    ("implicit", {"grant_types": ["implicit"], "response_types": ["token"]}, "invalid_client_metadata"),
    ("huge-extras", {"x": "y" * 9000}, "invalid_client_metadata"),
]


@pytest.mark.parametrize("name,extra,error", HOSTILE_REGISTRATIONS, ids=[c[0] for c in HOSTILE_REGISTRATIONS])
async def test_attack_registration_with_hostile_metadata(srv: RunningServer, http: httpx2.AsyncClient, name: str,
                                                         extra: dict[str, Any], error: str) -> None:
    before = snapshot(srv)
    resp = await http.post(srv.url + "/register", json={"client_name": "x", "redirect_uris": [REDIRECT], **extra})
    oauth_error(resp, 400, error)
    assert_unchanged(srv, before)


async def test_attack_registration_with_a_huge_body(srv: RunningServer, http: httpx2.AsyncClient) -> None:
    before = snapshot(srv)
    body = json.dumps({"redirect_uris": [REDIRECT], "client_name": "x", "padding": "y" * (1024 * 1024)})
    oauth_error(await http.post(srv.url + "/register", content=body, headers={"Content-Type": "application/json"}),
                413, "invalid_client_metadata")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield b'{"redirect_uris": ["' + REDIRECT.encode() + b'"], "x": "'
        for _ in range(64):
            yield b"y" * 16384
        yield b'"}'

    streamed = await http.post(srv.url + "/register", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert_unchanged(srv, before)


async def test_attack_cimd_client_id_pointing_at_a_private_address(tmp_path: Path, http: httpx2.AsyncClient) -> None:
    """SSRF through a Client ID Metadata Document URL: loopback and private addresses are refused
    before any connection is made."""
    connections: list[str] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append("connected")
        writer.close()

    listener = await asyncio.start_server(record, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server = await attack_server(tmp_path / "data", client_id_metadata_documents=True)
    try:
        metadata = (await http.get(server.url + "/.well-known/oauth-authorization-server")).json()
        assert metadata.get("client_id_metadata_document_supported") is True
        before = snapshot(server)
        _, challenge = pkce()
        for client_id in (f"https://127.0.0.1:{port}/client.json", f"https://localhost:{port}/client.json",
                          f"https://[::1]:{port}/client.json", f"https://[::ffff:127.0.0.1]:{port}/client.json",
                          "https://10.0.0.1/client.json", "https://169.254.169.254/latest/meta-data",
                          "https://[fd00::1]/client.json", "https://0.0.0.0/client.json",
                          f"http://127.0.0.1:{port}/client.json"):
            query = urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
                               "code_challenge": challenge, "code_challenge_method": "S256", "state": "s"})
            html_refusal(await http.get(f"{server.url}/authorize?{query}"))
            resp = await http.post(server.url + "/token", data={"grant_type": "refresh_token", "refresh_token": "x",
                                                                "client_id": client_id})
            oauth_error(resp, 401, "invalid_client")
            resp = await http.post(server.url + "/revoke", data={"token": "x", "client_id": client_id})
            assert resp.status_code == 401
        await asyncio.sleep(0.1)
        assert connections == []
        assert_unchanged(server, before)
    finally:
        await server.stop()
        listener.close()
        await listener.wait_closed()


# Hostile input on every endpoint: a clear 4xx, never a 5xx or a trace.

ACCOUNT_FORMS = ("/account/disconnect", "/account/sessions/end", "/account/tokens", "/account/tokens/revoke",
                 "/account/memory/delete")
ENDPOINTS = ["/register", "/authorize", "/login", "/consent", "/token", "/revoke", "/userinfo", "/mcp", "/messages",
             "/logout", "/consents", "/sse", "/account", "/account/memory", *ACCOUNT_FORMS]


def no_crash(resp: httpx2.Response, what: object) -> None:
    assert resp.status_code < 500, (what, resp.status_code, resp.text[:300])
    for marker in ("Traceback", 'File "', "Error:", "Exception"):
        assert marker not in resp.text, (what, resp.text[:300])


@pytest.fixture
async def alice_token(srv: RunningServer, http: httpx2.AsyncClient, alice: Browser) -> str:
    tokens = await grant(http, srv, alice, scope="memory:read memory:write openid")
    token: str = tokens["access_token"]
    return token


async def test_attack_oversized_bodies(srv: RunningServer, http: httpx2.AsyncClient, alice_token: str) -> None:
    before = snapshot(srv)
    huge = b"a=" + b"x" * (5 * 1024 * 1024)
    for path, content_type in itertools.product(ENDPOINTS, ("application/x-www-form-urlencoded", "application/json")):
        for auth in ({}, {"Authorization": f"Bearer {alice_token}"}):
            resp = await http.post(srv.url + path, content=huge, headers={"Content-Type": content_type, **auth,
                                                                         "Connection": "close",
                                                                         "Accept": ACCEPT_JSON["Accept"]})
            no_crash(resp, (path, content_type, auth))
            if path in ("/register", "/login", "/consent", "/token", "/revoke", "/logout", "/consents",
                        *ACCOUNT_FORMS) and (
                    path != "/register" or content_type == "application/json") and (
                    content_type != "application/json" or path == "/register"):
                assert resp.status_code == 413, (path, content_type, resp.status_code)
            elif path == "/mcp" and auth and content_type == "application/json":
                assert resp.status_code == 413
            else:
                assert 400 <= resp.status_code < 500 or (path == "/userinfo" and auth), (path, resp.status_code)
    assert_unchanged(srv, before)


MALFORMED: list[tuple[str, bytes, str | None]] = [
    ("bad-json", b'{"redirect_uris": [', "application/json"),
    ("json-not-object", b"[1, 2]", "application/json"),
    ("nan", b'{"a": NaN}', "application/json"),
    ("non-utf8-json", b'{"a": "\xff\xfe"}', "application/json"),
    ("non-utf8-form", b"grant_type=\xff\xfe&code=\xc3", "application/x-www-form-urlencoded"),
    ("bad-percent", b"grant_type=%ff%fe&username=%c3", "application/x-www-form-urlencoded"),
    ("nul-form", b"grant_type=authorization_code&code=\x00&username=al\x00ice&password=\x00&token=\x00",
     "application/x-www-form-urlencoded"),
    ("nul-json", b'{"redirect_uris": ["http://127.0.0.1:9/cb\\u0000"], "client_name": "\\u0000"}', "application/json"),
    ("wrong-type", b"<xml/>", "application/xml"),
    ("multipart", b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),
    ("no-type", b"grant_type=refresh_token", None),
    ("many-fields", b"&".join(b"f%d=1" % i for i in range(5000)), "application/x-www-form-urlencoded"),
    ("repeated", b"a=1&a=2&csrf_token=1&csrf_token=2", "application/x-www-form-urlencoded"),
    ("empty", b"", "application/x-www-form-urlencoded"),
    ("deep-json", b"[" * 5000 + b"]" * 5000, "application/json"),
]


async def test_attack_malformed_bodies(srv: RunningServer, http: httpx2.AsyncClient, alice_token: str) -> None:
    before = snapshot(srv)
    for path, (name, body, content_type) in itertools.product(ENDPOINTS, MALFORMED):
        if name == "deep-json" and path in ("/mcp", "/messages"):
            continue  # test_attack_deeply_nested_json_on_the_mcp_endpoints
        headers = {"Accept": ACCEPT_JSON["Accept"], "Authorization": f"Bearer {alice_token}"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            resp = await http.request(method, srv.url + path, content=body, headers=headers)
            no_crash(resp, (path, name, method))
            if method == "POST" and path in ("/register", "/token", "/revoke"):
                assert 400 <= resp.status_code < 500 and resp.json()["error"], (path, name, resp.text)
            if method == "POST" and path in ("/login", "/consent", "/logout", "/consents", *ACCOUNT_FORMS):
                assert resp.status_code in (400, 401, 403, 413, 415), (path, name, resp.status_code)
    assert_unchanged(srv, before, ignore=("mcp_sessions", "mcp_events"))
    assert len(srv.registry) == 0


@pytest.mark.parametrize("path", ["/mcp", "/messages"])
async def test_attack_deeply_nested_json_on_the_mcp_endpoints(srv: RunningServer, http: httpx2.AsyncClient,
                                                             alice_token: str, path: str) -> None:
    headers = bearer(alice_token)
    if path == "/messages":
        async with http.stream("GET", srv.url + "/sse", headers={"Authorization": f"Bearer {alice_token}"}) as stream:
            sid = await sse_session_id(stream)
            await wait_until(lambda: len(srv.registry) == 1)
            resp = await http.post(f"{srv.url}/messages?session_id={sid}", headers=headers,
                                   content=b"[" * 100_000)
    else:
        resp = await http.post(srv.url + path, headers=headers, content=b"[" * 100_000)
    no_crash(resp, path)
    assert resp.status_code == 400


@pytest.mark.parametrize("field,value", [("client_name", "\ud800"), ("redirect_uris", ["http://127.0.0.1:9/\udfff"]),
                                         ("software_id", "\udfff"), ("contacts", ["\ud800"]), ("extra", "\ud800")])
async def test_attack_registration_with_lone_surrogates(srv: RunningServer, http: httpx2.AsyncClient, field: str,
                                                        value: object) -> None:
    before = snapshot(srv)
    body = {"client_name": "x", "redirect_uris": [REDIRECT], field: value}
    resp = await http.post(srv.url + "/register", content=json.dumps(body),  # ASCII: "\\ud800" escapes
                           headers={"Content-Type": "application/json"})
    no_crash(resp, field)
    oauth_error(resp, 400, "invalid_redirect_uri" if field == "redirect_uris" else "invalid_client_metadata")
    assert_unchanged(srv, before)


async def test_attack_very_long_and_odd_query_strings(srv: RunningServer, http: httpx2.AsyncClient,
                                                      alice_token: str) -> None:
    before = snapshot(srv)
    auth = {"Authorization": f"Bearer {alice_token}", **ACCEPT_JSON}
    paths = [*ENDPOINTS, "/.well-known/oauth-authorization-server", "/.well-known/jwks.json"]
    # The first is beyond the request-line limit: refused by the HTTP parser.
    for path, query in itertools.product(paths, ("x=" + "a" * 20_000,
                  "client_id=" + "a" * 7000 + "&session_id=" + "b" * 500,
                  "client_id=%ff%fe&redirect_uri=%c3&state=%ed%a0%80&session_id=%00",
                  "client_id=%00&redirect_uri=http://127.0.0.1:9/callback%00.evil.example",
                  "&".join(f"p{i}=v" for i in range(1000)),
                  "client_id=a&client_id=b&session_id=a&session_id=b")):
        for method in ("GET", "POST"):
            headers = ACCEPT_JSON if path == "/sse" and method == "GET" else auth  # a valid one streams forever
            resp = await http.request(method, f"{srv.url}{path}?{query}", headers=headers, content=b"{}")
            no_crash(resp, (path, query[:30], method))
            if len(query) > 10_000:
                assert 400 <= resp.status_code < 500
            if path == "/authorize" and method == "GET":
                assert resp.status_code == 400 and "location" not in resp.headers
    assert_unchanged(srv, before, ignore=("mcp_sessions", "mcp_events"))


@pytest.mark.parametrize("header", [
    "Bearer", "Bearer " + "a" * 5000, "Bearer \x01", "Bearer a b", "Basic Og==", "Basic \xff\xfe", "Basic //46",
    "Bearer ../../etc/passwd", "Bearer %00", "Digest x", "Bearer " + "=" * 50, "Bearer\ttoken",
])
async def test_attack_malformed_authorization_headers(srv: RunningServer, http: httpx2.AsyncClient,
                                                      header: str) -> None:
    before = snapshot(srv)
    for method, path in (("POST", "/mcp"), ("GET", "/sse"), ("POST", "/messages?session_id=x"), ("GET", "/userinfo"),
                         ("POST", "/token"), ("POST", "/revoke")):
        form = path in ("/token", "/revoke")
        body = b"grant_type=refresh_token&refresh_token=x&token=x" if form else json.dumps(INIT).encode()
        content_type = "application/x-www-form-urlencoded" if form else "application/json"
        headers = [(b"Accept", ACCEPT_JSON["Accept"].encode()), (b"Authorization", header.encode("latin-1")),
                   (b"Content-Type", content_type.encode())]
        resp = await http.request(method, srv.url + path, content=body, headers=headers)
        no_crash(resp, (path, header[:20]))
        assert resp.status_code in (400, 401), (path, header[:20], resp.status_code)
    assert_unchanged(srv, before)

"""The browser part: /authorize, login, consent, logout, driven over HTTP like a person would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auth.crypto import hash_secret
from auth.settings import AuthSettings
from tests.authflow import (
    COOKIE_KEY,
    PASSWORD,
    Backend,
    Env,
    approve,
    authorize_path,
    hidden_fields,
    login,
    make_env,
    path_of,
    pkce,
    query_of,
    register,
)

CB = "http://127.0.0.1:9/callback"


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
              store_backend: Backend) -> Env:
    return await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)


def assert_page_headers(resp: Any) -> None:
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.content_type == "text/html"


async def test_full_flow_then_consent_only_when_logged_in(env: Env) -> None:
    client = await register(env, [CB], client_name="<b>Evil & Co</b>")
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge, scope="memory:read memory:write",
                          resource=env.url("/mcp"), state="a b&c=d")
    resp = await env.client.get(path, allow_redirects=False, headers={"MCP-Protocol-Version": "2024-11-05"})
    assert resp.status == 200
    assert_page_headers(resp)
    page = await resp.text()
    assert 'name="username"' in page and 'name="password"' in page and "csrf_token" in page
    # The login POST answers with the consent page itself: no redirect after a form (auth.authorize).
    resp = await login(env, page)
    assert resp.status == 200 and "Location" not in resp.headers
    page = await resp.text()
    assert_page_headers(resp)
    # The client's name is shown escaped, with the redirect host; the form may post to the callback origin.
    assert "&lt;b&gt;Evil &amp; Co&lt;/b&gt;" in page and "<b>Evil" not in page
    assert "127.0.0.1:9" in page and "memory:read" in page and "memory:write" in page
    assert "form-action 'self' http://127.0.0.1:9" in resp.headers["Content-Security-Policy"]
    form = hidden_fields(page)
    form["decision"] = "approve"
    resp = await env.client.post("/consent", data=form, allow_redirects=False)
    assert resp.status == 303
    location = resp.headers["Location"]
    assert location.startswith(CB + "?")
    query = query_of(location)
    assert query["state"] == "a b&c=d" and query["iss"] == env.issuer and len(query["code"]) >= 40
    # Logged in now: the next authorization goes straight to consent, never silently to a code.
    second = await approve(env, authorize_path(client["client_id"], CB, challenge), logged_in=True)
    assert "code" in query_of(second)


async def test_deny(env: Env) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    location = await approve(env, authorize_path(client["client_id"], CB, challenge), decision="deny")
    query = query_of(location)
    assert query["error"] == "access_denied" and query["state"] == "st-123" and query["iss"] == env.issuer
    assert "code" not in query


async def test_wrong_password_and_unknown_user_look_the_same(env: Env) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    page = await (await env.client.get(authorize_path(client["client_id"], CB, challenge))).text()
    bodies = []
    for username, password in (("alice", "wrong password"), ("mallory", PASSWORD), ("bad name!", "x"),
                               ("alice", "x" * 5000)):
        resp = await login(env, page, username, password)
        assert resp.status == 401
        bodies.append((await resp.text()).replace(username, "U"))
        assert "Invalid username or password" in bodies[-1]
    assert len({b.count("csrf_token") for b in bodies}) == 1
    # The form still works after failures.
    resp = await login(env, page)
    assert resp.status == 200 and 'value="approve"' in await resp.text()


@pytest.mark.parametrize("token", [None, "", "wrong"])
async def test_login_csrf_refused(env: Env, token: str | None) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    page = await (await env.client.get(authorize_path(client["client_id"], CB, challenge))).text()
    form = hidden_fields(page)
    form.update(username="alice", password=PASSWORD)
    if token is None:
        del form["csrf_token"]
    else:
        form["csrf_token"] = token
    resp = await env.client.post("/login", data=form, allow_redirects=False)
    assert resp.status == 403


async def test_consent_csrf_refused_and_token_from_other_browser(env: Env, aiohttp_client: Any) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    page = await (await login(env, await (await env.client.get(path)).text())).text()
    form = hidden_fields(page)
    form["decision"] = "approve"
    bad = dict(form, csrf_token="x" * 43)
    resp = await env.client.post("/consent", data=bad, allow_redirects=False)
    assert resp.status == 403 and "Location" not in resp.headers
    # The same form posted without the victim's cookie (a cross-site attacker) is refused too.
    other = await aiohttp_client(env.client.server)
    resp = await other.post("/consent", data=form, allow_redirects=False)
    assert resp.status == 403


async def test_logged_in_cookie_is_bound_to_server_side_login(env: Env) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    await approve(env, path)
    page = await (await env.client.get("/logout")).text()
    assert "Sign out" in page
    resp = await env.client.post("/logout", data=hidden_fields(page))
    assert resp.status == 200
    # Signing out revokes the user's grants and tells the resource server (which ends sessions).
    assert [(r.subject, r.client_id) for r in env.revocations] == [(env.revocations[0].subject, None)]
    page = await (await env.client.get(path)).text()
    assert 'name="password"' in page


async def test_user_removal_ends_browser_login(env: Env) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    page = await (await login(env, await (await env.client.get(path)).text())).text()
    user = await env.store.get_user_by_name("alice")
    assert user is not None
    await env.server.remove_user("alice")
    assert env.revocations[-1].subject == user.id
    form = hidden_fields(page)
    form["decision"] = "approve"
    resp = await env.client.post("/consent", data=form, allow_redirects=False)
    # Not a code: the browser is sent back to log in again.
    assert resp.status == 303 and resp.headers["Location"].startswith(env.url("/authorize?"))
    assert 'name="password"' in await (await env.client.get(path_of(resp.headers["Location"]))).text()


async def test_tampered_or_missing_sealed_request(env: Env) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], CB, challenge)
    page = await (await login(env, await (await env.client.get(path)).text())).text()
    form = hidden_fields(page)
    form["decision"] = "approve"
    for sealed in ("", "garbage", form["request"][:-4] + "AAAA", "é"):
        resp = await env.client.post("/consent", data=dict(form, request=sealed), allow_redirects=False)
        assert resp.status == 400 and "Location" not in resp.headers


@pytest.mark.parametrize("params", [
    {"client_id": "unknown"},
    {"client_id": None},
    {"redirect_uri": "http://127.0.0.1:9/other"},
    {"redirect_uri": "https://evil.example/callback"},
    {"redirect_uri": "http://localhost:9/callback"},  # host swap
    {"redirect_uri": "http://[::1]:9/callback"},
    {"redirect_uri": "http://127.0.0.1:9/callback?x=1"},
    {"redirect_uri": "http://127.0.0.1:9/callback/"},
    {"redirect_uri": "javascript:alert(1)"},
])
async def test_bad_client_or_redirect_uri_is_a_page_not_a_redirect(env: Env, params: dict[str, Any]) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    query = {"client_id": client["client_id"], "redirect_uri": CB, **params}
    resp = await env.client.get(authorize_path(query["client_id"], query["redirect_uri"], challenge),
                                allow_redirects=False)
    assert resp.status == 400
    assert "Location" not in resp.headers
    assert_page_headers(resp)


async def test_missing_redirect_uri(env: Env) -> None:
    one = await register(env, [CB])
    two = await register(env, [CB, "http://localhost:7/cb"])
    _, challenge = pkce()
    location = await approve(env, authorize_path(one["client_id"], None, challenge))
    assert location.startswith(CB + "?code=")
    resp = await env.client.get(authorize_path(two["client_id"], None, challenge), allow_redirects=False)
    assert resp.status == 400


@pytest.mark.parametrize(("registered", "used"), [
    ("http://127.0.0.1:9/callback/G3FW", "http://127.0.0.1:38471/callback/G3FW"),
    ("http://127.0.0.1/callback", "http://127.0.0.1:50000/callback"),
    ("http://localhost:54802/callback", "http://localhost:1234/callback"),
    ("http://[::1]:80/cb", "http://[::1]:8080/cb"),
    ("http://localhost/cb", "http://LOCALHOST:5/cb"),
])
async def test_loopback_any_port(env: Env, registered: str, used: str) -> None:
    client = await register(env, [registered])
    _, challenge = pkce()
    location = await approve(env, authorize_path(client["client_id"], used, challenge))
    assert location.startswith(used + "?code=")


async def test_ipv6_loopback_consent_leaves_form_action_out(env: Env) -> None:
    client = await register(env, ["http://[::1]:8080/cb"])
    _, challenge = pkce()
    path = authorize_path(client["client_id"], "http://[::1]:8080/cb", challenge)
    resp = await login(env, await (await env.client.get(path)).text())
    assert 'value="approve"' in await resp.text()
    assert "form-action" not in resp.headers["Content-Security-Policy"]


async def test_https_redirect_keeps_port_exact(env: Env) -> None:
    client = await register(env, ["https://app.example.com/cb"])
    _, challenge = pkce()
    resp = await env.client.get(authorize_path(client["client_id"], "https://app.example.com:8443/cb", challenge),
                                allow_redirects=False)
    assert resp.status == 400


@pytest.mark.parametrize(("params", "error"), [
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"response_type": ""}, "invalid_request"),
    ({"code_challenge": None}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge_method": ""}, "invalid_request"),
    ({"code_challenge": "short"}, "invalid_request"),
    ({"resource": "https://other.example/mcp"}, "invalid_target"),
    ({"resource": "not a url"}, "invalid_target"),
    ({"prompt": "none"}, "login_required"),
])
async def test_errors_redirected_to_client(env: Env, params: dict[str, Any], error: str) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    query: dict[str, Any] = {"code_challenge": challenge, "code_challenge_method": "S256", **params}
    path = authorize_path(client["client_id"], CB, None, **{k: v for k, v in query.items() if v is not None})
    resp = await env.client.get(path, allow_redirects=False)
    assert resp.status == 303
    result = query_of(resp.headers["Location"])
    assert result["error"] == error and result["state"] == "st-123" and result["iss"] == env.issuer


async def test_repeated_parameter_is_refused(env: Env) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    resp = await env.client.get(authorize_path(client["client_id"], CB, challenge) + "&state=again",
                                allow_redirects=False)
    assert resp.status == 400 and "Location" not in resp.headers


@pytest.mark.parametrize(("scope", "granted"), [
    ("openid email profile", "memory:read memory:write openid profile"),  # mcp-remote's fallback: defaults
    ("mcp:tools", "memory:read memory:write"),
    (None, "memory:read memory:write"),
    ("memory:read openid", "memory:read openid"),
    ("memory:write memory:read", "memory:read memory:write"),
])
async def test_scope_selection(env: Env, scope: str | None, granted: str) -> None:
    client = await register(env, [CB])
    verifier, challenge = pkce()
    params = {"scope": scope} if scope else {}
    location = await approve(env, authorize_path(client["client_id"], CB, challenge, **params))
    resp = await env.client.post("/token", data={
        "grant_type": "authorization_code", "code": query_of(location)["code"], "code_verifier": verifier,
        "client_id": client["client_id"], "redirect_uri": CB})
    assert (await resp.json())["scope"] == granted


@pytest.mark.parametrize("resource", ["{issuer}/mcp", "{issuer}/mcp/", "{ISSUER}/mcp", "{issuer}/sse", "{issuer}",
                                      "{issuer}/"])
async def test_resource_variants_accepted(env: Env, resource: str) -> None:
    client = await register(env, [CB])
    _, challenge = pkce()
    value = resource.format(issuer=env.issuer, ISSUER=env.issuer.upper())
    location = await approve(env, authorize_path(client["client_id"], CB, challenge, resource=value))
    code = query_of(location)["code"]
    record = (await env.store.consume_code(hash_secret(code), "grant-1", 0)).code
    assert record is not None and record.resource == value.lower().rstrip("/")


async def test_https_issuer_cookie_attributes(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int,
                                              tmp_path: Path) -> None:
    from aiohttp import web

    from auth.routes import install
    from server.storage.sqlite.auth import AuthTables
    from server.storage.sqlite.db import Database
    from tests.authflow import Store

    db = Database(tmp_path / "a.sqlite3")
    db.apply_schema(AuthTables.SCHEMA)
    try:
        app = web.Application()
        install(app, settings=AuthSettings(issuer="https://mcp.example.com"), store=Store(db), cookie_key=COOKIE_KEY)
        client = await aiohttp_client(await aiohttp_server(app))
        resp = await client.get("/login")
        cookie = resp.headers["Set-Cookie"]
        assert cookie.startswith("__Host-memory-mcp-login=")
        lowered = cookie.lower()
        assert "secure" in lowered and "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered
        assert "domain" not in lowered
    finally:
        db.close()


async def test_fernet_cookie_key_accepted(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int,
                                          tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    from auth.browser import derive_fernet

    raw = Fernet.generate_key()
    assert derive_fernet(raw, "x").encrypt(b"ok")
    with pytest.raises(ValueError, match="32 raw bytes or a Fernet key"):
        derive_fernet(b"short", "x")


@pytest.mark.parametrize(("method", "path", "data", "content_type"), [
    ("GET", "/authorize?client_id=%ff%fe&redirect_uri=%c3", None, None),
    ("GET", "/authorize?client_id=a&client_id=b", None, None),
    ("GET", "/authorize", None, None),
    ("POST", "/login", b"\xff\xfe\x00", "application/x-www-form-urlencoded"),
    ("POST", "/login", b"username=%ff", "application/x-www-form-urlencoded"),
    ("POST", "/login", b"{}", "application/json"),
    ("POST", "/login", b"a=" + b"x" * 70_000, "application/x-www-form-urlencoded"),
    ("POST", "/consent", b"decision=approve", "application/x-www-form-urlencoded"),
    ("POST", "/consent", b"\xff", "text/plain"),
    ("POST", "/logout", b"", "application/x-www-form-urlencoded"),
])
async def test_browser_endpoints_never_500(env: Env, method: str, path: str, data: bytes | None,
                                           content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await env.client.request(method, path, data=data, headers=headers, allow_redirects=False)
    assert 400 <= resp.status < 500
    assert resp.content_type == "text/html"
    assert "Location" not in resp.headers


async def test_login_page_without_pending_request(env: Env) -> None:
    page = await (await env.client.get("/login")).text()
    resp = await login(env, page)
    assert resp.status == 303 and resp.headers["Location"] == env.url("/login")
    page = await (await env.client.get("/login")).text()
    assert "signed in as <strong>alice</strong>" in page


# Every C0 control, DEL, and whitespace beyond ASCII's (urlsplit drops TAB, CR and LF anywhere
# and strips leading controls, so these once matched the registered URI).
UNSAFE = [chr(c) for c in range(0x20)] + ["\x7f", " ", "\x85", "\xa0", "\u1680", "\u2000", "\u2028", "\u3000"]


async def test_redirect_uri_with_control_or_space_never_matches(env: Env) -> None:
    https_cb = "https://app.example.com/cb"
    client = await register(env, [CB, https_cb])
    _, challenge = pkce()
    refused = []
    for registered in (CB, https_cb):
        scheme, rest = registered.split("://")
        host, path = rest.split("/", 1)
        for char in UNSAFE:
            for variant in (char + registered, registered + char, f"{scheme}://{char}{rest}",
                            f"{scheme}://{host}{char}/{path}", f"{scheme}://{host}/{char}{path}",
                            f"{scheme}{char}://{rest}"):
                resp = await env.client.get(authorize_path(client["client_id"], variant, challenge),
                                            allow_redirects=False)
                page = await resp.text()
                if resp.status != 400 or "Location" in resp.headers or "control characters" not in page:
                    refused.append((variant, resp.status))
    assert refused == []


async def test_redirect_uri_with_control_characters_never_redirects_when_signed_in(env: Env) -> None:
    """Signed in with a remembered approval, a matching URI would be redirected to at once."""
    client = await register(env, [CB])
    _, challenge = pkce()
    await approve(env, authorize_path(client["client_id"], CB, challenge))
    for variant in (CB + "\r\nSet-Cookie: x=1", CB + "\t", "http://127.0.0.1:9/call\nback"):
        resp = await env.client.get(authorize_path(client["client_id"], variant, challenge), allow_redirects=False)
        assert resp.status == 400 and "Location" not in resp.headers


async def test_every_parsed_url_refuses_control_characters(env: Env) -> None:
    """The same rule wherever a URL goes through urlsplit: informational client URIs, resource
    indicators, metadata-document client ids and the configured origins."""
    from auth import cimd_fetch
    from auth.rfc8707 import normalize_resource
    from server.config import ConfigError, load

    for char in ("\x00", "\t", "\r", "\n", "\x7f", "\u2028"):
        body = {"redirect_uris": [CB], "token_endpoint_auth_method": "none",
                "client_uri": f"{char}https://app.example.com/"}
        resp = await env.client.post("/register", json=body)
        assert resp.status == 400 and "client_uri: must not contain" in (await resp.json())["error_description"]
        assert normalize_resource(f"{env.issuer}/mcp{char}") is None
        with pytest.raises(cimd_fetch.ClientMetadataError, match="control characters"):
            cimd_fetch.check_document_url(f"https://app.example.com/{char}client.json")
        with pytest.raises(ConfigError, match="control characters"):
            load({"public_url": f"https://memory.exa{char}mple.com"}, {})

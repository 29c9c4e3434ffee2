"""Property-based fuzzing of every endpoint of the authorization server, on the whole app.

The server runs on its own event loop in a thread (as in `tests/test_mcp_fuzz.py`), and hypothesis
drives it with a synchronous client: random JSON and bytes at /register, random query strings at
/authorize, random forms at /login, /consent, /token, /revoke, /logout and /consents (with and
without a valid cookie, CSRF token and sealed request), random Authorization headers at /userinfo
and random paths under /.well-known/. Every response must be a clean refusal or a success: never a
5xx, never a stack trace, never a redirect to a host the client did not register.

And no secret ever leaks: a handler on the root logger records every line the server logs
(aiohttp.access included) for the whole run; every code and token issued during the run is
collected, with alice's and bob's passwords, alice's password hash and the `session.key` bytes (hex
and base64). The last test checks that none of them appears in any captured log line or in any
response, except the response that legitimately carries it (a token response its tokens, an
authorization redirect its code).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import string
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.keyfile import KEY_FILE
from tests.attackkit import ALICE, BOB, REDIRECT, attack_server, pkce, rows
from tests.browser import parse_forms
from tests.conftest import RunningServer

T = TypeVar("T")
GOOD = "https://good.example/cb"
TRACE_MARKERS = ("Traceback", 'File "', "RecursionError", "KeyError", "TypeError", "ValueError", "AttributeError",
                 "UnicodeEncodeError", "UnicodeDecodeError", "AssertionError", "sqlite3.", "pydantic_core")
# Loggers of the test's own HTTP client and of hypothesis: not the server's output.
CLIENT_LOGGERS = ("httpx", "httpcore", "hpack", "hypothesis", "asyncio")


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0].rstrip("2") in CLIENT_LOGGERS:
            return
        text = f"{record.name} {record.levelname} " + logging.Formatter().format(record)
        # Handler.handle holds the handler's own lock around emit (server thread and test thread).
        self.lines.append(text)
        if record.levelno >= logging.ERROR and record.exc_info:
            self.errors.append(text)


@dataclass
class Seen:
    """A response, and the secrets it may legitimately carry (what it issues)."""

    what: str
    text: str
    allowed: set[str]


@dataclass
class Fuzz:
    server: RunningServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    capture: Capture
    secrets: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    clients: dict[str, str] = field(default_factory=dict)  # client_id -> redirect URI
    access: list[str] = field(default_factory=list)
    id_tokens: list[str] = field(default_factory=list)
    redeemed: set[str] = field(default_factory=set)
    refresh: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    verifier: str = ""
    alice: httpx2.Client | None = None
    bob: httpx2.Client | None = None
    anon: httpx2.Client | None = None
    consent_form: dict[str, str] = field(default_factory=dict)
    login_form: dict[str, str] = field(default_factory=dict)
    bob_csrf: str = ""
    userinfo_ok: int = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    @property
    def url(self) -> str:
        return self.server.url

    def record(self, what: str, resp: httpx2.Response) -> None:
        """Check one response, and collect what it issues."""
        assert resp.status_code < 500, (what, resp.status_code, resp.text[:500])
        text = resp.text
        for marker in TRACE_MARKERS:
            assert marker not in text, (what, marker, text[:500])
        allowed: set[str] = set()
        location = resp.headers.get("location")
        if location is not None:
            check_location(self, what, location)
            for code in parse_qs(urlsplit(location).query).get("code", []):
                allowed.add(code)
                self.codes.append(code)
        if resp.status_code == 200 and resp.headers.get("content-type", "").startswith("application/json"):
            try:
                body = resp.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                for name, pool in (("access_token", self.access), ("refresh_token", self.refresh),
                                   ("id_token", self.id_tokens)):
                    value = body.get(name)
                    if isinstance(value, str):
                        allowed.add(value)
                        if value not in pool:
                            pool.append(value)
        self.secrets |= allowed
        headers = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
        self.seen.append(Seen(what, headers + "\n" + text, allowed))
        leaked = {s for s in self.secrets - allowed if s in text or s in headers}
        assert not leaked, (what, "a known secret is in the response")


def check_location(fuzz: Fuzz, what: str, location: str) -> None:
    """Redirects go to our own origin, or to a redirect URI the client registered: never elsewhere."""
    if location.startswith("/") and not location.startswith("//"):
        return
    if location.startswith(fuzz.url + "/"):
        return
    parts = urlsplit(location)
    if parts.scheme == "https":
        assert location.startswith(GOOD + "?"), (what, location)
    else:
        assert parts.scheme == "http" and parts.hostname == "127.0.0.1" and parts.path == "/callback", (what, location)
        assert not parts.username and not parts.password and "#" not in location, (what, location)


def _form(page: str) -> dict[str, str]:
    forms = parse_forms(page)
    assert forms, page[:300]
    return dict(forms[0].fields)


async def _setup(data_dir: Path) -> RunningServer:
    return await attack_server(data_dir)


def _authorize_query(fuzz: Fuzz, client_id: str, challenge: str, scope: str = "memory:read memory:write") -> str:
    return urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": fuzz.clients[client_id],
                      "code_challenge": challenge, "code_challenge_method": "S256", "scope": scope, "state": "s",
                      "resource": fuzz.url + "/mcp"})


def _sign_in(fuzz: Fuzz, client: httpx2.Client, user: tuple[str, str], query: str) -> str:
    """Sign `client` in through /authorize; returns its consent page."""
    page = client.get(fuzz.url + "/authorize?" + query)
    form = {**_form(page.text), "username": user[0], "password": user[1]}
    # The login POST answers with the consent page itself (auth.authorize.resume).
    consent = client.post(fuzz.url + "/login", data=form)
    assert consent.status_code == 200 and 'value="approve"' in consent.text, consent.text
    return consent.text


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    capture = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    data_dir = tmp_path_factory.mktemp("authfuzz") / "data"
    server = asyncio.run_coroutine_threadsafe(_setup(data_dir), loop).result(60)
    state = Fuzz(server, loop, thread, capture)
    try:
        key = (data_dir / KEY_FILE).read_bytes()
        state.secrets |= {ALICE[1], BOB[1], key.hex(), base64.b64encode(key).decode(),
                          base64.urlsafe_b64encode(key).decode(), base64.urlsafe_b64encode(key).decode().rstrip("=")}
        state.secrets |= {r[0] for r in rows(server, "SELECT password_hash FROM auth_users")}
        with httpx2.Client(timeout=10) as http:
            for uri in (REDIRECT, GOOD):
                reg = http.post(server.url + "/register", json={"client_name": "fuzz", "redirect_uris": [uri]})
                state.clients[reg.json()["client_id"]] = uri
        loopback = next(c for c, u in state.clients.items() if u == REDIRECT)
        state.verifier, challenge = pkce()
        state.alice = httpx2.Client(timeout=10)
        state.bob = httpx2.Client(timeout=10)
        state.anon = httpx2.Client(timeout=10)
        consent = _sign_in(state, state.alice, ALICE, _authorize_query(state, loopback, challenge,
                                                                       "memory:read memory:write openid profile"))
        state.consent_form = _form(consent)
        approved = state.alice.post(state.url + "/consent", data={**state.consent_form, "decision": "approve"})
        state.record("setup consent", approved)
        # A few valid codes and token pairs, for the fuzzers to pick from.
        for _ in range(3):
            page = state.alice.get(state.url + "/authorize?" + _authorize_query(state, loopback, challenge,
                                                                                "memory:read openid profile"))
            state.consent_form = _form(page.text)
            state.record("setup consent", state.alice.post(state.url + "/consent",
                                                           data={**state.consent_form, "decision": "approve"}))
        for code in state.codes[:2]:
            state.record("setup token", state.alice.post(state.url + "/token", data={
                "grant_type": "authorization_code", "code": code, "code_verifier": state.verifier,
                "client_id": loopback, "redirect_uri": REDIRECT}))
        _sign_in(state, state.bob, BOB, _authorize_query(state, loopback, challenge))
        state.bob_csrf = _form(state.bob.get(state.url + "/logout").text)["csrf_token"]
        state.login_form = _form(state.anon.get(state.url + "/authorize?" + _authorize_query(
            state, loopback, challenge)).text)
        yield state
    finally:
        for client in (state.alice, state.bob, state.anon):
            if client is not None:
                client.close()
        state.run(server.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        root.removeHandler(capture)
        root.setLevel(old_level)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10) as client:
        yield client


# Strategies.

short_text = st.text(max_size=40)
json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=10)
uris = st.sampled_from([REDIRECT, "http://127.0.0.1:5000/callback", "http://localhost/callback", GOOD,
                        "https://good.example/cb#x", "https://evil.example/cb", "javascript:alert(1)", "data:,x",
                        "http://evil@127.0.0.1:9/callback", "http://127.0.0.1:9/callback\\@evil.example", ""]
                       ) | short_text
form_bodies = st.one_of(st.binary(max_size=200), st.dictionaries(short_text, short_text, max_size=6).map(
    lambda d: urlencode(d).encode()))
content_types = st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain",
                                 "multipart/form-data; boundary=x", "application/x-www-form-urlencoded; charset=utf-8",
                                 None])


def maybe(values: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.none() | values | short_text


def clean(d: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in d.items() if v is not None}


def post_raw(client: httpx2.Client, url: str, body: bytes, content_type: str | None) -> httpx2.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(url, content=body, headers=headers)


# /register


registrations_fields: dict[str, st.SearchStrategy[Any]] = {
    "redirect_uris": st.lists(uris, max_size=12) | json_values,
    "client_name": short_text | json_values,
    "grant_types": st.lists(st.sampled_from(["authorization_code", "refresh_token", "implicit", "password"]),
                            max_size=3) | json_values,
    "response_types": st.lists(st.sampled_from(["code", "token"]), max_size=2) | json_values,
    "token_endpoint_auth_method": st.sampled_from(["none", "client_secret_post", "private_key_jwt"]) | json_values,
    "client_uri": uris | json_values,
    "logo_uri": uris | json_values,
    "scope": short_text | json_values,
    "contacts": st.lists(short_text, max_size=3) | json_values,
    "software_statement": short_text,
    "jwks_uri": uris,
}
registrations = st.fixed_dictionaries({}, optional=registrations_fields)


@fuzz_settings(150)
@given(data=st.data(), raw=st.none() | st.one_of(registrations, json_values).map(lambda v: json.dumps(v).encode())
       | st.binary(max_size=100),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8"]) | content_types)
def test_register_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, raw: bytes | None,
                       content_type: str | None) -> None:
    if raw is None:  # a valid registration with a few fields changed
        valid = {"client_name": "fuzz", "redirect_uris": [REDIRECT], "grant_types": ["authorization_code"]}
        changed = data.draw(st.lists(st.sampled_from(sorted(registrations_fields)), max_size=2, unique=True))
        document: dict[str, object] = dict(valid)
        for name in changed:
            document[name] = data.draw(registrations_fields[name])
        raw = json.dumps(document).encode()
    body = raw
    resp = post_raw(http, fuzz.url + "/register", body, content_type)
    fuzz.record("/register", resp)
    assert resp.status_code in (201, 400, 413, 415), resp.text
    assert resp.json()["client_id" if resp.status_code == 201 else "error"]


def mutate(data: st.DataObject, valid: dict[str, str], alternatives: dict[str, st.SearchStrategy[str]]
           ) -> dict[str, str]:
    """A valid request with 0 to 3 fields dropped or replaced: most examples probe one mistake
    next to an otherwise correct request, and the unmutated ones succeed and issue credentials."""
    names = sorted(set(valid) | set(alternatives))
    changed = data.draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
    form = dict(valid)
    for name in changed:
        value = data.draw(st.none() | alternatives.get(name, short_text) | short_text)
        if value is None:
            form.pop(name, None)
        else:
            form[name] = value
    return form


def loopback_client(fuzz: Fuzz) -> str:
    return next(c for c, u in fuzz.clients.items() if u == REDIRECT)


# Credentials issued during the run are named by placeholders in the strategies and looked up when
# the request is sent: the strategies must not depend on the server's state, or hypothesis cannot
# replay an example.
ISSUED = st.sampled_from(["@access0", "@access1", "@access2", "@refresh0", "@refresh1", "@refresh2", "@code0",
                          "@code1", "@id0"])


def resolve(fuzz: Fuzz, value: str) -> str:
    match = re.fullmatch(r"@(access|refresh|code|id)(\d)", value)
    if match is None:
        return value
    pool = {"access": fuzz.access, "refresh": fuzz.refresh, "code": fuzz.codes, "id": fuzz.id_tokens}[match[1]]
    return pool[-1 - int(match[2])] if len(pool) > int(match[2]) else "none-issued-yet"


def resolved(fuzz: Fuzz, form: dict[str, str]) -> dict[str, str]:
    return {k: resolve(fuzz, v) for k, v in form.items()}


def fresh_code(fuzz: Fuzz) -> str:
    """The newest code not yet sent by the token fuzzer (a valid request should succeed)."""
    unused = [c for c in fuzz.codes if c not in fuzz.redeemed]
    if not unused:
        return "none-issued-yet"
    fuzz.redeemed.add(unused[-1])
    return unused[-1]


# /authorize


@fuzz_settings(200)
@given(data=st.data(), who=st.sampled_from(["alice", "anon", "none"]),
       extra=st.dictionaries(short_text, short_text, max_size=2),
       fetch_site=st.sampled_from([None, "none", "same-origin", "cross-site"]))
def test_authorize_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, who: str, extra: dict[str, str],
                        fetch_site: str | None) -> None:
    _, challenge = pkce()
    client_id = data.draw(st.sampled_from(sorted(fuzz.clients)))
    valid = {"response_type": "code", "client_id": client_id, "redirect_uri": fuzz.clients[client_id],
             "code_challenge": challenge, "code_challenge_method": "S256", "scope": "memory:read openid profile",
             "state": "s", "resource": fuzz.url + "/mcp"}
    params = mutate(data, valid, {
        "response_type": st.sampled_from(["token", "code id_token", "none", "CODE"]),
        "client_id": st.sampled_from([*sorted(fuzz.clients), "https://127.0.0.1/client.json", "https://x.example/c"]),
        "redirect_uri": uris,
        "code_challenge": st.sampled_from(["", "a" * 43, "+" * 43, pkce()[0]]),
        "code_challenge_method": st.sampled_from(["plain", "s256", ""]),
        "scope": st.sampled_from(["memory:read", "memory:read memory:write openid", "admin", ""]),
        "state": st.text(max_size=60),
        "resource": st.sampled_from([fuzz.url + "/sse/", fuzz.url.upper() + "/MCP", "https://x.example/mcp"]),
        "prompt": st.sampled_from(["none", "consent", "login", "none consent"]),
        "nonce": short_text,
    })
    client = {"alice": fuzz.alice, "anon": fuzz.anon}.get(who, http)
    assert client is not None
    headers = {"Sec-Fetch-Site": fetch_site} if fetch_site else {}
    resp = client.get(fuzz.url + "/authorize?" + urlencode({**extra, **params}), headers=headers)
    fuzz.record("/authorize", resp)
    assert resp.status_code in (200, 303, 400), resp.text[:300]
    if resp.status_code != 303:
        assert resp.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]


# /login and /consent


@fuzz_settings(100)
@given(data=st.data(), body=st.none() | form_bodies, content_type=content_types,
       who=st.sampled_from(["anon", "none"]))
def test_login_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, body: bytes | None,
                    content_type: str | None, who: str) -> None:
    client = fuzz.anon if who == "anon" else http
    assert client is not None
    if body is None:
        form = mutate(data, {**fuzz.login_form, "username": ALICE[0], "password": ALICE[1]}, {
            "username": st.sampled_from(["bob", "Alice", "alice ", "x" * 300, ""]),
            "password": st.sampled_from(["wrong", "p" * 5000, ""]),
        })
        resp = client.post(fuzz.url + "/login", data=form)
    else:
        resp = post_raw(client, fuzz.url + "/login", body, content_type)
    fuzz.record("/login", resp)
    # 200: signed in, and the answer is the next page of the pending authorization.
    assert resp.status_code in (200, 303, 400, 401, 403, 413, 415, 429), resp.text[:300]
    if resp.status_code in (200, 303) and client is fuzz.anon:  # signed in: a new session, a new CSRF token
        fuzz.login_form["csrf_token"] = _form(client.get(fuzz.url + "/login").text)["csrf_token"]


@fuzz_settings(150)
@given(data=st.data(), body=st.none() | form_bodies, content_type=content_types,
       who=st.sampled_from(["alice", "alice", "alice", "anon", "none"]))
def test_consent_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, body: bytes | None,
                      content_type: str | None, who: str) -> None:
    client = {"alice": fuzz.alice, "anon": fuzz.anon}.get(who, http)
    assert client is not None
    if body is None:
        sealed = fuzz.consent_form.get("request", "")
        form = mutate(data, {**fuzz.consent_form, "decision": "approve"}, {
            "request": st.sampled_from([sealed[:-4], sealed[:20] + "A" + sealed[21:], fuzz.login_form["request"]]),
            "decision": st.sampled_from(["deny", "Approve", ""]),
            "remember": st.just("1"),
        })
        resp = client.post(fuzz.url + "/consent", data=form)
    else:
        resp = post_raw(client, fuzz.url + "/consent", body, content_type)
    fuzz.record("/consent", resp)
    assert resp.status_code in (303, 400, 403, 413, 415), resp.text[:300]


# /token, /userinfo and /revoke


@fuzz_settings(200)
@given(data=st.data(), body=st.none() | st.none() | form_bodies, content_type=content_types,
       basic=st.none() | st.none() | st.sampled_from(["client", "client:secret", "garbage"]))
def test_token_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, body: bytes | None,
                    content_type: str | None, basic: str | None) -> None:
    client_id = loopback_client(fuzz)
    headers: dict[str, str] = {}
    if basic is not None:
        raw = {"client": f"{client_id}:", "client:secret": f"{client_id}:s3cret"}.get(basic)
        headers["Authorization"] = "Basic " + (base64.b64encode(raw.encode()).decode() if raw else "%%%")
    code_grant = data.draw(st.booleans())
    if body is not None:
        resp = http.post(fuzz.url + "/token", content=body, headers={
            **headers, **({"Content-Type": content_type} if content_type else {})})
    else:
        if code_grant:
            valid = {"grant_type": "authorization_code", "code": fresh_code(fuzz), "code_verifier": fuzz.verifier,
                     "client_id": client_id, "redirect_uri": REDIRECT, "resource": fuzz.url + "/mcp"}
        else:
            valid = {"grant_type": "refresh_token", "refresh_token": "@refresh0", "client_id": client_id}
        form = resolved(fuzz, mutate(data, valid, {
            "grant_type": st.sampled_from(["authorization_code", "refresh_token", "password", "client_credentials"]),
            "code": ISSUED,
            "code_verifier": st.sampled_from([pkce()[0], "short", "~" * 129]),
            "client_id": st.sampled_from(sorted(fuzz.clients)),
            "redirect_uri": uris,
            "refresh_token": ISSUED,
            "scope": st.sampled_from(["memory:read", "memory:write", "openid profile", "memory:read openid", ""]),
            "resource": st.sampled_from([fuzz.url + "/mcp/", "https://other.example/mcp"]),
            "client_secret": short_text,
        }))
        if basic is not None and code_grant:
            form.pop("client_id", None)
        resp = http.post(fuzz.url + "/token", data=form, headers=headers)
    fuzz.record("/token", resp)
    assert resp.status_code in (200, 400, 401, 405, 413, 415), resp.text[:300]
    assert resp.headers.get("cache-control") == "no-store"
    body_json = resp.json()
    assert ("access_token" in body_json) == (resp.status_code == 200)


header_chars = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


@fuzz_settings(150)
@given(data=st.data(), scheme=st.sampled_from(["Bearer", "Bearer", "bearer", "BEARER", "Basic", "DPoP", "",
                                               "Bearer  "]),
       credential=st.none() | st.none() | st.text(header_chars, max_size=80),
       method=st.sampled_from(["GET", "POST", "PUT"]))
def test_userinfo_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, scheme: str, credential: str | None,
                       method: str) -> None:
    if credential is None:
        credential = resolve(fuzz, data.draw(ISSUED))
    value = f"{scheme} {credential}".strip()
    headers = [(b"Authorization", value.encode("latin-1"))] if value else []
    resp = http.request(method, fuzz.url + "/userinfo", headers=headers)
    fuzz.record("/userinfo", resp)
    assert resp.status_code in (200, 401, 403, 405), resp.text[:300]
    if resp.status_code == 200:
        assert set(resp.json()) <= {"sub", "preferred_username"}
        fuzz.userinfo_ok += 1
    elif resp.status_code in (401, 403):
        assert resp.headers["www-authenticate"].startswith("Bearer ")


@fuzz_settings(100)
@given(data=st.data(), body=st.none() | st.none() | form_bodies, content_type=content_types)
def test_revoke_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, body: bytes | None,
                     content_type: str | None) -> None:
    if body is None:
        form = resolved(fuzz, mutate(data, {"token": "@access2", "client_id": loopback_client(fuzz)}, {
            "token": ISSUED,
            "token_type_hint": st.sampled_from(["access_token", "refresh_token", "id_token"]),
            "client_id": st.sampled_from(sorted(fuzz.clients)),
            "client_secret": short_text,
        }))
        resp = http.post(fuzz.url + "/revoke", data=form)
    else:
        resp = post_raw(http, fuzz.url + "/revoke", body, content_type)
    fuzz.record("/revoke", resp)
    assert resp.status_code in (200, 400, 401, 413, 415), resp.text[:300]


# /.well-known/*

path_chars = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%/"


@fuzz_settings(100)
@given(path=st.one_of(st.sampled_from(["oauth-authorization-server", "oauth-protected-resource",
                                       "oauth-protected-resource/mcp", "oauth-protected-resource/sse",
                                       "openid-configuration", "jwks.json", "oauth-authorization-server/mcp",
                                       "openid-configuration/../jwks.json", "%2e%2e/%2e%2e/etc/passwd"]),
                      st.text(path_chars, max_size=60)),
       method=st.sampled_from(["GET", "POST", "OPTIONS", "DELETE", "HEAD"]))
def test_well_known_fuzz(fuzz: Fuzz, http: httpx2.Client, path: str, method: str) -> None:
    resp = http.request(method, fuzz.url + "/.well-known/" + quote(path, safe=path_chars))
    fuzz.record("/.well-known/" + path, resp)
    assert resp.status_code in (200, 204, 400, 404, 405), (path, resp.status_code)
    if resp.status_code == 200 and method == "GET":
        document = resp.json()
        assert isinstance(document, dict)
        for key in document.get("keys", []):  # never a private key member
            assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key), key


# /logout and /consents


@fuzz_settings(60)
@given(data=st.data(), method=st.sampled_from(["GET", "POST"]), body=st.none() | form_bodies,
       content_type=content_types, who=st.sampled_from(["bob", "none"]))
def test_logout_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, method: str, body: bytes | None,
                     content_type: str | None, who: str) -> None:
    client = fuzz.bob if who == "bob" else http
    assert client is not None
    if method == "GET":
        resp = client.get(fuzz.url + "/logout", params=data.draw(st.dictionaries(short_text, short_text, max_size=3)))
    elif body is None:
        form = clean({"csrf_token": data.draw(maybe(st.just(fuzz.bob_csrf)))})
        resp = client.post(fuzz.url + "/logout", data=form)
    else:
        resp = post_raw(client, fuzz.url + "/logout", body, content_type)
    fuzz.record("/logout", resp)
    assert resp.status_code in (200, 400, 403, 413, 415), resp.text[:300]


@fuzz_settings(80)
@given(data=st.data(), method=st.sampled_from(["GET", "POST"]), body=st.none() | form_bodies,
       content_type=content_types, who=st.sampled_from(["alice", "anon", "none"]))
def test_consents_fuzz(fuzz: Fuzz, http: httpx2.Client, data: st.DataObject, method: str, body: bytes | None,
                       content_type: str | None, who: str) -> None:
    client = {"alice": fuzz.alice, "anon": fuzz.anon}.get(who, http)
    assert client is not None
    if method == "GET":
        resp = client.get(fuzz.url + "/consents")
    elif body is None:
        form = clean({"csrf_token": data.draw(maybe(st.just(fuzz.consent_form.get("csrf_token", "")))),
                      "client_id": data.draw(maybe(st.sampled_from(sorted(fuzz.clients))))})
        resp = client.post(fuzz.url + "/consents", data=form)
    else:
        resp = post_raw(client, fuzz.url + "/consents", body, content_type)
    fuzz.record("/consents", resp)
    assert resp.status_code in (200, 303, 400, 401, 403, 413, 415), resp.text[:300]


# The end of the run: no secret in any log line or response that should not carry it.


def test_no_secret_in_any_response_or_log_line(fuzz: Fuzz) -> None:
    # The run did issue credentials (beyond the setup's few), and used them.
    assert len(fuzz.access) > 5 and len(fuzz.refresh) > 5 and len(fuzz.codes) > 5
    assert fuzz.userinfo_ok > 0
    assert fuzz.seen and fuzz.capture.lines  # and the server did answer and log
    assert any(line.startswith("aiohttp.access") for line in fuzz.capture.lines)
    secrets = {s for s in fuzz.secrets if len(s) >= 8}
    for line in fuzz.capture.lines:
        found = [s[:6] + "..." for s in secrets if s in line]
        assert not found, f"secret(s) {found} in a log line: {line[:300]!r}"
    for seen in fuzz.seen:
        found = [s[:6] + "..." for s in secrets - seen.allowed if s in seen.text]
        assert not found, f"secret(s) {found} in the response of {seen.what}: {seen.text[:300]!r}"
    assert not fuzz.capture.errors, f"unhandled exceptions logged: {fuzz.capture.errors[:3]}"
    traces = [line for line in fuzz.capture.lines if re.search(r"Traceback|Error handling request", line)]
    assert not traces, traces[:3]

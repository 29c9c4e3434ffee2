"""Tools for the attack suite (`tests/test_attacks.py`) and the auth fuzzer (`tests/test_auth_fuzz.py`):
a server with alice and bob, a snapshot of everything the server stores (to prove that a refused
attack issued and changed nothing), and the steps of the authorization code flow one by one, so
that an attack can replace any of them."""

from __future__ import annotations

import base64
import hashlib
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import redis

from auth.models import User
from auth.passwords import hash_password
from tests.browser import Browser, Redirect, parse_forms
from tests.conftest import RunningServer, start_server

ALICE = ("alice", "alice-password-1")
BOB = ("bob", "bob-password-22")
CAROL = ("carol", "carol-password-333")
REDIRECT = "http://127.0.0.1:9/callback"
BOTH = "memory:read memory:write"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "attacker", "version": "1"}}}

# Every table the server writes. A refused attack leaves all of them as they were.
TABLES = ("auth_clients", "auth_client_use", "auth_users", "auth_codes", "auth_tokens", "auth_personal_tokens",
          "auth_browser_sessions",
          "auth_consents", "auth_revocations", "auth_signing_keys", "mcp_sessions", "mcp_events",
          "memory_entities", "memory_observations", "memory_relations")

_hashes: dict[str, str] = {}


async def add_users(server: RunningServer, *users: tuple[str, str]) -> dict[str, User]:
    """Accounts with argon2 hashes computed once per run (each hash costs ~0.3 s by design)."""
    added: dict[str, User] = {}
    for name, password in users:
        if password not in _hashes:
            _hashes[password] = await hash_password(password)
        user = User(id=secrets.token_hex(16), username=name, password_hash=_hashes[password], created_at=time.time())
        await server.storage.add_user(user)
        added[name] = user
    return added


async def attack_server(data_dir: Path, **overrides: Any) -> RunningServer:
    """The whole app (start_server) with alice and bob, and no registration budget to run out of."""
    overrides.setdefault("registration_rate_limit", 0)
    server = await start_server(data_dir, **overrides)
    await add_users(server, ALICE, BOB)
    return server


# What the server stores.

Snapshot = dict[str, list[tuple[Any, ...]]]

# On Redis, a snapshot holds the keys of records, each under the SQLite table that holds the same
# records, as (record id, its value): a test's expectations (`ignore=`, which tables changed, which
# records went) read alike on both. Left out: the indexes derived from the records (per user,
# client or grant; name lookups; event costs), and, as SQLite keeps them outside TABLES too, the
# rate limiter's counts and the server's cookie key.
REDIS_RECORDS = (("token:", "auth_tokens"), ("pat:", "auth_personal_tokens"), ("code:", "auth_codes"),
                 ("client:", "auth_clients"), ("user:", "auth_users"), ("login:", "auth_browser_sessions"),
                 ("consent:", "auth_consents"), ("signing-key:", "auth_signing_keys"),
                 ("revocations", "auth_revocations"), ("session:record:", "mcp_sessions"),
                 ("events:log:", "mcp_events"), ("graph:", "memory_entities"))


def snapshot(server: RunningServer) -> Snapshot:
    """Every row of every table (SQLite) or every record with its value (Redis), through a
    connection of its own."""
    if server.settings.redis_url is not None:
        return _redis_snapshot(server.settings.redis_url, server.storage.key(""))  # type: ignore[attr-defined]
    conn = sqlite3.connect(f"file:{server.sqlite.db.path}?mode=ro", uri=True)
    try:
        return {table: sorted((tuple(row) for row in conn.execute(f"SELECT * FROM {table}")),  # noqa: S608
                              key=repr)
                for table in TABLES}
    finally:
        conn.close()


def _redis_snapshot(url: str, prefix: str) -> Snapshot:
    client: Any = redis.Redis.from_url(url)  # what it answers is typed by the kind of key
    found: Snapshot = {}
    try:
        for raw in client.scan_iter(match=prefix + "*", count=1000):
            name = raw.decode()[len(prefix):]
            record = next(((start, t) for start, t in REDIS_RECORDS if name.startswith(start)), None)
            if record is None:
                continue
            start, table = record
            record_id = name.removeprefix(start)
            kind = client.type(raw).decode()
            value: Any
            if kind == "hash":
                value = tuple(sorted(client.hgetall(raw).items()))
            elif kind == "zset":
                value = tuple(client.zrange(raw, 0, -1, withscores=True))
            elif kind == "set":
                value = tuple(sorted(client.smembers(raw)))
            elif kind == "list":
                value = tuple(client.lrange(raw, 0, -1))
            elif kind == "stream":
                value = tuple((entry_id, tuple(sorted(fields.items()))) for entry_id, fields in client.xrange(raw))
            else:
                value = client.get(raw)
            found.setdefault(table, []).append((record_id, value))
    finally:
        client.close()
    return {table: sorted(found.get(table, []), key=repr) for table in TABLES}


def changes(before: Snapshot, after: Snapshot) -> dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per table: (rows gone, rows new)."""
    found = {}
    for table in TABLES:
        old, new = set(before[table]), set(after[table])
        if old != new:
            found[table] = (sorted(old - new, key=repr), sorted(new - old, key=repr))
    return found


def assert_unchanged(server: RunningServer, before: Snapshot, *, ignore: Iterable[str] = ()) -> None:
    diff = {t: d for t, d in changes(before, snapshot(server)).items() if t not in set(ignore)}
    assert not diff, f"the refused attack changed the store: {diff}"


def rows(server: RunningServer, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{server.sqlite.db.path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def count(server: RunningServer, table: str) -> int:
    if server.settings.redis_url is not None:
        return len(snapshot(server)[table])
    return int(rows(server, f"SELECT count(*) FROM {table}")[0][0])  # noqa: S608


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# The flow, step by step.


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


@dataclass
class Client:
    client_id: str
    redirect_uris: list[str]

    @property
    def redirect_uri(self) -> str:
        return self.redirect_uris[0]


async def register(http: httpx2.AsyncClient, server: RunningServer, redirect_uris: list[str] | None = None,
                   **extra: Any) -> Client:
    body = {"client_name": "attack suite", "redirect_uris": redirect_uris or [REDIRECT], **extra}
    resp = await http.post(server.url + "/register", json=body)
    assert resp.status_code == 201, resp.text
    data = resp.json()
    return Client(data["client_id"], data["redirect_uris"])


def authorize_url(server: RunningServer, client: Client, challenge: str | None, *, redirect_uri: str | None = None,
                  scope: str = BOTH, state: str = "st", **params: str | None) -> str:
    query: dict[str, str | None] = {
        "response_type": "code", "client_id": client.client_id, "redirect_uri": redirect_uri or client.redirect_uri,
        "scope": scope, "state": state, "resource": server.url + "/mcp"}
    if challenge is not None:
        query.update(code_challenge=challenge, code_challenge_method="S256")
    query.update(params)
    return server.url + "/authorize?" + urlencode({k: v for k, v in query.items() if v is not None})


@dataclass
class Code:
    client: Client
    code: str
    verifier: str
    redirect_uri: str
    redirect: Redirect


async def obtain_code(browser: Browser, server: RunningServer, client: Client, *, scope: str = BOTH,
                      redirect_uri: str | None = None, **params: str) -> Code:
    verifier, challenge = pkce()
    uri = redirect_uri or client.redirect_uri
    redirect = await browser.authorize(authorize_url(server, client, challenge, redirect_uri=uri, scope=scope,
                                                     **params), server.url)
    assert "code" in redirect.params, redirect.url
    return Code(client, redirect.params["code"], verifier, uri, redirect)


def code_form(code: Code, **overrides: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
        "client_id": code.client.client_id, "redirect_uri": code.redirect_uri}
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


async def exchange(http: httpx2.AsyncClient, server: RunningServer, code: Code) -> dict[str, Any]:
    resp = await http.post(server.url + "/token", data=code_form(code))
    assert resp.status_code == 200, resp.text
    tokens: dict[str, Any] = resp.json()
    tokens["client_id"] = code.client.client_id
    return tokens


async def grant(http: httpx2.AsyncClient, server: RunningServer, browser: Browser, scope: str = BOTH,
                client: Client | None = None) -> dict[str, Any]:
    """A fresh client (or `client`) and its first tokens, approved in `browser`."""
    client = client or await register(http, server)
    return await exchange(http, server, await obtain_code(browser, server, client, scope=scope))


async def refresh(http: httpx2.AsyncClient, server: RunningServer, refresh_token: str, client_id: str,
                  **extra: str) -> httpx2.Response:
    return await http.post(server.url + "/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id, **extra})


def bearer(token: str) -> dict[str, str]:
    return {**ACCEPT, "Authorization": f"Bearer {token}"}


async def open_session(http: httpx2.AsyncClient, server: RunningServer, token: str) -> dict[str, str]:
    """Initialize an MCP session; returns the headers that use it."""
    resp = await http.post(server.url + "/mcp", json=INIT, headers=bearer(token))
    assert resp.status_code == 200, resp.text
    headers = {**bearer(token), "Mcp-Session-Id": resp.headers["mcp-session-id"],
               "MCP-Protocol-Version": "2025-11-25"}
    note = await http.post(server.url + "/mcp", headers=headers,
                           json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert note.status_code == 202, note.text
    return headers


async def call_tool(http: httpx2.AsyncClient, server: RunningServer, headers: Mapping[str, str], name: str,
                    arguments: dict[str, Any], request_id: int = 2) -> httpx2.Response:
    return await http.post(server.url + "/mcp", headers=dict(headers), json={
        "jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})


# Browser pages.


@dataclass
class Page:
    status: int
    text: str
    headers: Mapping[str, str]
    url: str

    def form(self, index: int = 0) -> dict[str, str]:
        forms = parse_forms(self.text)
        assert forms, f"no form on {self.url}: {self.text[:300]}"
        return dict(forms[index].fields)


async def get_page(browser: Browser, url: str, **headers: str) -> Page:
    async with browser.session.get(url, allow_redirects=False, headers=headers) as resp:
        return Page(resp.status, await resp.text(), dict(resp.headers), url)


async def post_page(browser: Browser, url: str, data: Mapping[str, str]) -> Page:
    async with browser.session.post(url, data=dict(data), allow_redirects=False) as resp:
        return Page(resp.status, await resp.text(), dict(resp.headers), url)


async def log_in(browser: Browser, server: RunningServer) -> None:
    """Sign `browser` in directly on /login (no pending authorization)."""
    page = await get_page(browser, server.url + "/login")
    form = page.form()
    form.update(username=browser.username, password=browser.password)
    done = await post_page(browser, server.url + "/login", form)
    assert done.status == 303, done.text


async def consent_page(browser: Browser, server: RunningServer, url: str) -> Page:
    """Follow `url` (an /authorize URL) in a signed-in browser up to its consent page."""
    page = await get_page(browser, url)
    if 'name="password"' in page.text:
        form = page.form()
        form.update(username=browser.username, password=browser.password)
        # The login POST answers with the consent page itself (auth.authorize.resume).
        page = await post_page(browser, server.url + "/login", form)
    assert page.status == 200 and 'value="approve"' in page.text, page.text[:500]
    return page

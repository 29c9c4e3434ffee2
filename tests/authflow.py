"""Helpers for the auth tests: a real app on a loopback port, real SQLite, and a browser-like
driver of the authorization flow (the same requests the MCP SDK's OAuthClientProvider makes,
with the user's clicks in between)."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web
from aiohttp.test_utils import TestClient

from auth.models import Revocation, User
from auth.passwords import hash_password
from auth.routes import install
from auth.server import AuthorizationServer
from auth.settings import AuthSettings
from server.storage.redis import RedisStorage
from server.storage.sqlite.auth import AuthTables
from server.storage.sqlite.db import Database
from server.storage.sqlite.keys import SigningKeyTables
from server.storage.sqlite.memories import MemoryTables

USERNAME = "alice"
PASSWORD = "correct horse battery"
COOKIE_KEY = bytes(range(32))


_alice_hash: str | None = None


async def add_alice(store: AnyStore) -> User:
    """The test user, hashed once per run: argon2id costs ~0.3 s by design."""
    global _alice_hash
    if _alice_hash is None:
        _alice_hash = await hash_password(PASSWORD)
    user = User(id=secrets.token_hex(16), username=USERNAME, password_hash=_alice_hash, created_at=time.time())
    await store.add_user(user)
    return user


class Store(AuthTables, MemoryTables, SigningKeyTables):
    def __init__(self, db: Database) -> None:
        self.db = db
        # Idempotent; callers apply AuthTables.SCHEMA themselves.
        db.apply_schema(SigningKeyTables.SCHEMA)
        db.apply_schema(MemoryTables.SCHEMA)

    async def close(self) -> None:
        await self.db.aclose()  # its threads and their connections


# What the auth tests store in: either backend, behind the same protocol.
AnyStore = Store | RedisStorage


@dataclass(frozen=True)
class Backend:
    """Which storage backend a test's auth store is on (the `store_backend` fixture gives each
    test both, one after the other). The auth tests use only its auth part."""

    name: str  # "sqlite" or "redis"
    redis_url: str | None = None

    def __str__(self) -> str:
        return self.name

    def open(self, tmp_path: Path) -> AnyStore:
        if self.redis_url is not None:
            return RedisStorage(self.redis_url)
        db = Database(tmp_path / "auth.sqlite3")
        db.apply_schema(AuthTables.SCHEMA)
        return Store(db)


SQLITE = Backend("sqlite")


@dataclass
class Env:
    client: TestClient[Any, Any]
    server: AuthorizationServer
    store: AnyStore
    issuer: str
    revocations: list[Revocation] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.issuer + path

    @property
    def db(self) -> Database:
        """The SQLite database, for a test that looks inside the file (it runs on SQLite only)."""
        if not isinstance(self.store, Store):
            raise TypeError(f"this test needs the SQLite backend, not {type(self.store).__name__}")
        return self.store.db


async def make_env(aiohttp_server: Any, aiohttp_client: Any, port: int, tmp_path: Path, backend: Backend,
                   **overrides: Any) -> Env:
    issuer = f"http://127.0.0.1:{port}"
    settings = AuthSettings(issuer=issuer, **overrides)
    store = backend.open(tmp_path)
    await add_alice(store)
    app = web.Application()

    async def close_store(_app: web.Application) -> None:
        await store.close()  # when the test server stops

    app.on_cleanup.append(close_store)
    server = install(app, settings=settings, store=store, cookie_key=COOKIE_KEY)
    env_revocations: list[Revocation] = []

    async def listener(revocation: Revocation) -> None:
        env_revocations.append(revocation)

    server.revocation_listeners.append(listener)
    test_server = await aiohttp_server(app, port=port)
    client = await aiohttp_client(test_server)
    return Env(client, server, store, issuer, env_revocations)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def hidden_fields(page: str) -> dict[str, str]:
    return {html.unescape(n): html.unescape(v)
            for n, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page)}


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


def refresh_target(page: str) -> str:
    """Where a `pages.continue_to` page sends the browser."""
    found = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]*)">', page)
    assert found, page[:500]
    return html.unescape(found.group(1))


def path_of(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + ("?" + parts.query if parts.query else "")


async def register(env: Env, redirect_uris: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body = {"client_name": "Test Client", "redirect_uris": redirect_uris or ["http://127.0.0.1:9/callback"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": "none", **extra}
    resp = await env.client.post("/register", json=body)
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


def authorize_path(client_id: str, redirect_uri: str | None, challenge: str | None, **params: str) -> str:
    query: dict[str, str] = {"response_type": "code", "client_id": client_id, "state": "st-123"}
    if redirect_uri is not None:
        query["redirect_uri"] = redirect_uri
    if challenge is not None:
        query.update(code_challenge=challenge, code_challenge_method="S256")
    query.update(params)
    return "/authorize?" + urlencode({k: v for k, v in query.items() if v is not None})


async def login(env: Env, page: str, username: str = USERNAME, password: str = PASSWORD) -> Any:
    form = hidden_fields(page)
    form.update(username=username, password=password)
    return await env.client.post("/login", data=form, allow_redirects=False)


async def approve(env: Env, path: str, decision: str = "approve", *, logged_in: bool | None = None) -> str:
    """Drive the browser from GET /authorize to the redirect back to the client; return Location."""
    resp = await env.client.get(path, allow_redirects=False)
    assert resp.status == 200, await resp.text()
    page = await resp.text()
    if logged_in is not None:
        assert ('name="password"' not in page) == logged_in
    if 'name="password"' in page:
        # The login POST answers with the next page itself, never a redirect (auth.authorize).
        resp = await login(env, page)
        assert resp.status == 200, await resp.text()
        page = await resp.text()
    assert 'value="approve"' in page
    form = hidden_fields(page)
    form["decision"] = decision
    resp = await env.client.post("/consent", data=form, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    location: str = resp.headers["Location"]
    return location


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    verifier: str
    tokens: dict[str, Any]


async def obtain_code(env: Env, redirect_uri: str = "http://127.0.0.1:9/callback",
                      **params: str) -> tuple[str, str, str]:
    """Register a client and complete the browser flow; returns (client_id, code, verifier)."""
    client = await register(env, [redirect_uri])
    verifier, challenge = pkce()
    location = await approve(env, authorize_path(client["client_id"], redirect_uri, challenge, **params))
    query = query_of(location)
    assert query["state"] == "st-123" and query["iss"] == env.issuer
    return client["client_id"], query["code"], verifier


async def token_request(env: Env, **form: str) -> Any:
    return await env.client.post("/token", data=form)


async def obtain_tokens(env: Env, redirect_uri: str = "http://127.0.0.1:9/callback", **params: str) -> Grant:
    client_id, code, verifier = await obtain_code(env, redirect_uri, **params)
    resp = await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                               client_id=client_id, redirect_uri=redirect_uri, resource=env.url("/mcp"))
    assert resp.status == 200, await resp.text()
    return Grant(client_id, redirect_uri, verifier, await resp.json())


# Looking inside the store, on either backend: what the auth tests check besides the HTTP answers.

# kind -> (SQLite table, Redis key word, the column the Redis key's last part stands for)
_KINDS = {"tokens": ("auth_tokens", "token", "token_hash"), "codes": ("auth_codes", "code", "code_hash"),
          "logins": ("auth_browser_sessions", "login", "session_hash"), "consents": ("auth_consents", "consent", None)}


async def records(env: Env, kind: str, **where: str) -> list[dict[str, str]]:
    """Every stored record of a kind ("tokens", "codes", "logins", "consents"), expired or
    superseded ones included, as {field: value as text} (absent/NULL fields left out), sorted;
    only those whose fields equal `where`."""
    table, word, id_column = _KINDS[kind]
    found: list[dict[str, str]] = []
    if isinstance(env.store, Store):
        for row in env.store.db.conn.execute(f"SELECT * FROM {table}"):  # noqa: S608 - a fixed name
            found.append({name: _text(row[name]) for name in row.keys() if row[name] is not None})
    else:
        client: Any = env.store.client
        prefix = env.store.prefix + word + ":"
        async for key in client.scan_iter(match=prefix + "*"):
            raw = await client.hgetall(key)
            record = {name.decode(): value.decode() for name, value in raw.items()}
            if id_column is not None:
                record[id_column] = key.decode().removeprefix(prefix)
            found.append(record)
    return sorted((r for r in found if all(r.get(k) == v for k, v in where.items())), key=repr)


def _text(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


async def count(env: Env, kind: str, **where: str) -> int:
    return len(await records(env, kind, **where))


async def client_last_used(env: Env, client_id: str) -> float | None:
    """When the store last recorded the client obtaining a token (None: never)."""
    if isinstance(env.store, Store):
        row = env.store.db.conn.execute("SELECT last_used_at FROM auth_client_use WHERE client_id = ?",
                                        (client_id,)).fetchone()
        return None if row is None else float(row[0])
    score = await env.store.client.zscore(env.store.key("client-use"), client_id)
    return None if score is None else float(score)


async def lose_client_use(env: Env) -> None:
    """Forget every client's last use, as a store restored from an old backup may have: then
    every client looks never used."""
    if isinstance(env.store, Store):
        env.store.db.conn.execute("DELETE FROM auth_client_use")
        return
    client: Any = env.store.client
    key = env.store.key
    for client_id, issued in await client.zrange(key("clients"), 0, -1, withscores=True):
        await client.zadd(key("clients-unused"), {client_id: issued})
    await client.delete(key("client-use"))


async def stored_bytes(env: Env) -> bytes:
    """Everything the store holds, as bytes: to show that no secret is in it."""
    if isinstance(env.store, Store):
        env.store.db.conn.execute("PRAGMA wal_checkpoint(FULL)")
        dump = "\n".join(env.store.db.conn.iterdump()).encode()
        return dump + b"".join(p.read_bytes() for p in env.store.db.path.parent.glob(env.store.db.path.name + "*"))
    client: Any = env.store.client
    parts: list[bytes] = []
    async for key in client.scan_iter():
        parts.append(key)
        kind = (await client.type(key)).decode()
        if kind == "string":
            parts.append(await client.get(key) or b"")
        elif kind == "hash":
            parts += [b"%s=%s" % pair for pair in (await client.hgetall(key)).items()]
        elif kind == "zset":
            parts += await client.zrange(key, 0, -1)
        elif kind == "stream":
            parts += [repr(entry).encode() for entry in await client.xrange(key)]
        else:
            raise AssertionError(f"unexpected Redis type {kind} at {key!r}")
    return b"\n".join(parts)

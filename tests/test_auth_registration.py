"""Dynamic client registration under hostile input: every field checked, refusals store nothing,
unused registrations expire, registrations are rate limited per address."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth import rfc7591
from auth.errors import OAuth2Error
from auth.rfc7591 import validate_metadata
from auth.rfc8252 import check_registrable
from auth.routes import install
from auth.settings import AuthSettings
from server.storage.sqlite.auth import AuthTables
from server.storage.sqlite.db import Database
from tests.authflow import (
    COOKIE_KEY,
    Backend,
    Env,
    Store,
    authorize_path,
    client_last_used,
    lose_client_use,
    make_env,
    obtain_tokens,
    pkce,
    register,
)
from tests.conftest import free_socket

T = TypeVar("T")
CB = "http://127.0.0.1:9/callback"


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
              store_backend: Backend) -> Env:
    return await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)


def body(**fields: Any) -> dict[str, Any]:
    return {"redirect_uris": [CB], **fields}


HOSTILE: list[tuple[dict[str, Any], str, str]] = [
    # (body, error, the field the description must name)
    ({"client_name": "no redirect"}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": None}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": {"a": CB}}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["javascript:alert(document.cookie)"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["JavaScript://%0aalert(1)"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["data:text/html;base64,PHNjcmlwdD4="]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["file:///etc/passwd"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["vbscript:msgbox(1)"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["ftp://example.com/cb"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["https://app.example.com/cb#x"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["http://127.0.0.1/cb#"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["http://app.example.com/cb"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["http://10.0.0.1/cb"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["http://localhost.evil.com/cb"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["http://127.0.0.1.nip.io/cb"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": [CB, "javascript:alert(1)"]}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": [f"http://127.0.0.1:{9000 + i}/cb" for i in range(11)]}, "invalid_redirect_uri",
     "redirect_uris"),
    ({"redirect_uris": ["https://app.example.com/" + "a" * 2000]}, "invalid_redirect_uri", "redirect_uris"),
    (body(token_endpoint_auth_method="client_secret_basic"), "invalid_client_metadata", "token_endpoint_auth_method"),
    (body(token_endpoint_auth_method="client_secret_post"), "invalid_client_metadata", "token_endpoint_auth_method"),
    (body(token_endpoint_auth_method="client_secret_jwt"), "invalid_client_metadata", "token_endpoint_auth_method"),
    (body(token_endpoint_auth_method="private_key_jwt"), "invalid_client_metadata", "token_endpoint_auth_method"),
    (body(token_endpoint_auth_method=["none"]), "invalid_client_metadata", "token_endpoint_auth_method"),
    (body(jwks={"keys": []}), "invalid_client_metadata", "jwks"),
    (body(jwks_uri="https://app.example.com/jwks.json"), "invalid_client_metadata", "jwks_uri"),
    (body(grant_types=["client_credentials"]), "invalid_client_metadata", "grant_types"),
    (body(grant_types=["authorization_code", "implicit"]), "invalid_client_metadata", "grant_types"),
    (body(grant_types=["authorization_code", "password"]), "invalid_client_metadata", "grant_types"),
    (body(grant_types=["refresh_token"]), "invalid_client_metadata", "grant_types"),
    (body(grant_types=[]), "invalid_client_metadata", "grant_types"),
    (body(grant_types="authorization_code"), "invalid_client_metadata", "grant_types"),
    (body(response_types=["token"]), "invalid_client_metadata", "response_types"),
    (body(response_types=["code", "token"]), "invalid_client_metadata", "response_types"),
    (body(response_types=["code", "id_token"]), "invalid_client_metadata", "response_types"),
    (body(client_name=5), "invalid_client_metadata", "client_name"),
    (body(client_name=["Codex"]), "invalid_client_metadata", "client_name"),
    (body(client_name="x" * 201), "invalid_client_metadata", "client_name"),
    (body(client_name="Good App\u202egnp.exe"), "invalid_client_metadata", "client_name"),
    (body(client_name="line\nbreak"), "invalid_client_metadata", "client_name"),
    (body(client_name="nul\x00"), "invalid_client_metadata", "client_name"),
    (body(client_uri="javascript:alert(1)"), "invalid_client_metadata", "client_uri"),
    (body(client_uri="http://app.example.com"), "invalid_client_metadata", "client_uri"),
    (body(client_uri="https://user:pw@app.example.com"), "invalid_client_metadata", "client_uri"),
    (body(client_uri="https://" + "a" * 2000 + ".com"), "invalid_client_metadata", "client_uri"),
    (body(client_uri=7), "invalid_client_metadata", "client_uri"),
    (body(logo_uri="data:image/svg+xml,<svg onload=alert(1)>"), "invalid_client_metadata", "logo_uri"),
    (body(tos_uri="file:///etc/passwd"), "invalid_client_metadata", "tos_uri"),
    (body(policy_uri="vbscript:x"), "invalid_client_metadata", "policy_uri"),
    (body(policy_uri="/relative"), "invalid_client_metadata", "policy_uri"),
    (body(software_id="s" * 201), "invalid_client_metadata", "software_id"),
    (body(software_version=1.5), "invalid_client_metadata", "software_version"),
    (body(contacts="admin@example.com"), "invalid_client_metadata", "contacts"),
    (body(contacts=[1]), "invalid_client_metadata", "contacts"),
    (body(contacts=[f"a{i}@example.com" for i in range(11)]), "invalid_client_metadata", "contacts"),
    (body(contacts=["a" * 321]), "invalid_client_metadata", "contacts"),
    (body(scope=["memory:read"]), "invalid_client_metadata", "scope"),
    (body(scope='memory:read "x"'), "invalid_client_metadata", "scope"),
    (body(scope="s" * 1001), "invalid_client_metadata", "scope"),
    (body(application_type="service"), "invalid_client_metadata", "application_type"),
    (body(application_type=1), "invalid_client_metadata", "application_type"),
    (body(**{f"x_{i}": i for i in range(33)}), "invalid_client_metadata", "body"),
    (body(x_blob="b" * 9000), "invalid_client_metadata", "body"),
    (body(**{"k" * 101: 1}), "invalid_client_metadata", "body"),
]


@pytest.mark.parametrize(("data", "error", "field"), HOSTILE)
async def test_hostile_metadata_is_refused_and_nothing_stored(env: Env, data: dict[str, Any], error: str,
                                                              field: str) -> None:
    resp = await env.client.post("/register", json=data)
    assert resp.status == 400, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    reply = await resp.json()
    assert reply["error"] == error
    assert reply["error_description"].startswith(field + ":"), reply
    assert await env.store.list_clients() == []


async def test_every_field_validated_and_echoed(env: Env) -> None:
    sent: dict[str, Any] = {
        "redirect_uris": [CB, "http://localhost/cb", "http://[::1]:1/cb", "https://app.example.com/cb?x=1"],
        "token_endpoint_auth_method": "none", "grant_types": ["authorization_code"], "response_types": ["code"],
        "client_name": "Ünïcode App ✓", "client_uri": "https://app.example.com", "logo_uri": "https://app.example.com/l.png",
        "tos_uri": "https://app.example.com/tos#s2", "policy_uri": "https://app.example.com/privacy",
        "software_id": "4NRB1-0XZABZI9E6-5SM3R", "software_version": "2.1", "contacts": ["ops@example.com"],
        "scope": "memory:read memory:write offline_access", "application_type": "native",
        "client_name#fr": "Appli", "x_vendor": {"nested": [1, 2, {"deep": None}]},
    }
    reply = await register(env, **{k: v for k, v in sent.items() if k != "redirect_uris"},
                           redirect_uris=sent["redirect_uris"])
    for key, value in sent.items():
        assert reply[key] == value, key
    stored = await env.store.get_client(reply["client_id"])
    assert stored is not None and stored.registration_response() == reply
    assert "refresh_token" not in stored.grant_types


async def test_nulls_are_absent_and_server_fields_and_statements_dropped(env: Env) -> None:
    resp = await env.client.post("/register", json=body(
        client_name=None, client_uri=None, jwks=None, jwks_uri=None, token_endpoint_auth_method=None,
        grant_types=None, scope=None, client_id="mine", client_secret="s3cret", client_secret_expires_at=0,
        registration_access_token="t", software_statement="eyJhbGciOiJub25lIn0.e30."))
    assert resp.status == 201, await resp.text()
    reply = await resp.json()
    assert reply["client_id"] != "mine"
    assert reply["token_endpoint_auth_method"] == "none"
    assert reply["grant_types"] == ["authorization_code", "refresh_token"]
    for absent in ("client_secret", "client_secret_expires_at", "registration_access_token", "software_statement",
                   "client_uri", "jwks", "client_name", "scope"):
        assert absent not in reply


@pytest.mark.parametrize("raw", [b'{"redirect_uris": ["http://127.0.0.1:9/callback"], "x": NaN}',
                                 b'{"redirect_uris": ["http://127.0.0.1:9/callback"], "x": [-Infinity]}',
                                 b'{"redirect_uris": ["http://127.0.0.1:9/callback"], "x": 1e400}'])
async def test_non_json_numbers_are_refused(env: Env, raw: bytes) -> None:
    resp = await env.client.post("/register", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_client_metadata"
    assert await env.store.list_clients() == []


async def test_duplicate_redirect_uris_are_collapsed(env: Env) -> None:
    reply = await register(env, [CB, CB, "http://localhost/cb"])
    assert reply["redirect_uris"] == [CB, "http://localhost/cb"]


@pytest.mark.parametrize("used", ["http://127.0.0.1:51234/callback", "http://127.0.0.1/callback",
                                  "http://127.0.0.1:1/callback"])
async def test_loopback_port_variants_accepted(env: Env, used: str) -> None:
    client = await register(env, ["http://127.0.0.1:9/callback"])
    _, challenge = pkce()
    resp = await env.client.get(authorize_path(client["client_id"], used, challenge), allow_redirects=False)
    assert resp.status == 200 and 'name="password"' in await resp.text()


@pytest.mark.parametrize("used", ["http://localhost:9/callback", "http://[::1]:9/callback",
                                  "http://127.0.0.2:9/callback", "https://127.0.0.1:9/callback",
                                  "http://127.0.0.1:9/callback/other", "http://127.0.0.1:9/Callback",
                                  "http://127.0.0.1:9/callback?x=1", "http://evil.com:9/callback",
                                  "http://127.0.0.1:9@evil.com/callback"])
async def test_loopback_host_path_and_scheme_variants_refused(env: Env, used: str) -> None:
    client = await register(env, ["http://127.0.0.1:9/callback"])
    _, challenge = pkce()
    resp = await env.client.get(authorize_path(client["client_id"], used, challenge), allow_redirects=False)
    assert resp.status == 400 and "Location" not in resp.headers
    assert "not registered" in await resp.text()


# Expiry of unused registrations

async def test_unused_registrations_expire_used_ones_stay(env: Env) -> None:
    now = [1_800_000_000.0]
    env.server.clock = lambda: now[0]
    unused = await register(env)
    used = await obtain_tokens(env)  # registers and obtains tokens at the same instant
    now[0] += env.server.settings.unused_client_ttl - 60
    await register(env)  # a registration runs the purge: nothing is old enough yet
    assert await env.store.get_client(unused["client_id"]) is not None
    now[0] += 120
    fresh = await register(env)
    assert await env.store.get_client(unused["client_id"]) is None
    assert await env.store.get_client(used.client_id) is not None
    assert await env.store.get_client(fresh["client_id"]) is not None
    # A deleted client is unknown at /authorize: the application registers again.
    _, challenge = pkce()
    resp = await env.client.get(authorize_path(unused["client_id"], CB, challenge))
    assert resp.status == 400 and "register again" in await resp.text()


async def test_long_idle_client_without_live_tokens_is_purged(env: Env) -> None:
    now = [1_800_000_000.0]
    env.server.clock = lambda: now[0]
    used = await obtain_tokens(env)
    settings = env.server.settings
    now[0] += settings.idle_client_ttl + 1
    # Still a live refresh token? Only if the refresh lifetime exceeds the idle lifetime.
    assert settings.refresh_token_ttl < settings.idle_client_ttl
    await register(env)
    assert await env.store.get_client(used.client_id) is None
    assert await client_last_used(env, used.client_id) is None


async def test_client_with_live_tokens_is_never_purged(env: Env) -> None:
    now = [1_800_000_000.0]
    env.server.clock = lambda: now[0]
    used = await obtain_tokens(env)
    # Forget the use record, as if it had been lost: the live tokens alone protect the client.
    await lose_client_use(env)
    now[0] += env.server.settings.unused_client_ttl * 3
    await register(env)
    assert await env.store.get_client(used.client_id) is not None


async def test_refresh_marks_the_client_used(env: Env) -> None:
    now = [1_800_000_000.0]
    env.server.clock = lambda: now[0]
    grant = await obtain_tokens(env)
    now[0] += 3600
    resp = await env.client.post("/token", data={"grant_type": "refresh_token", "client_id": grant.client_id,
                                                 "refresh_token": grant.tokens["refresh_token"]})
    assert resp.status == 200, await resp.text()
    assert await client_last_used(env, grant.client_id) == now[0]


async def test_purge_is_bounded(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_800_000_000.0]
    env.server.clock = lambda: now[0]
    for _ in range(5):
        await register(env)
    now[0] += env.server.settings.unused_client_ttl + 1
    monkeypatch.setattr(rfc7591, "PURGE_BATCH", 2)
    await register(env)
    assert len(await env.store.list_clients()) == 4  # 5 old - 2 purged + 1 new


# Rate limit

async def test_registration_is_rate_limited_per_address(aiohttp_server: Any, aiohttp_client: Any,
                                                        unused_tcp_port: int, tmp_path: Path,
                                                        store_backend: Backend) -> None:
    env = await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend,
                         registration_rate_limit=3)
    await register(env)
    bad = await env.client.post("/register", json={"redirect_uris": ["javascript:x"]})
    assert bad.status == 400  # refused attempts count too
    await register(env)
    resp = await env.client.post("/register", json=body())
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 3600
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    reply = await resp.json()
    assert reply["error"] == "temporarily_unavailable" and "too many" in reply["error_description"]
    assert len(await env.store.list_clients()) == 2
    # Another address has its own budget.
    assert await env.server.limiter.hit("register:192.0.2.1", 3, 3600) is None


async def test_rate_limit_zero_means_unlimited(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int,
                                               tmp_path: Path, store_backend: Backend) -> None:
    env = await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend,
                         registration_rate_limit=0)
    for _ in range(25):
        await register(env)


# Property-based

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
uris = st.sampled_from([CB, "http://localhost/cb", "http://[::1]:80/x", "https://a.example/cb", "javascript:x",
                        "data:,x", "http://a.example/cb", "https://a.example/#f", "", "file:///x"]) \
    | st.text(max_size=30)
fields = st.fixed_dictionaries({}, optional={
    "redirect_uris": st.lists(uris, max_size=12) | json_values,
    "token_endpoint_auth_method": st.sampled_from(["none", "client_secret_basic", None]) | json_values,
    "grant_types": st.lists(st.sampled_from(["authorization_code", "refresh_token", "implicit"]), max_size=3)
    | json_values,
    "response_types": st.lists(st.sampled_from(["code", "token"]), max_size=2) | json_values,
    "client_name": st.text(max_size=40) | json_values,
    "client_uri": st.sampled_from(["https://a.example", "javascript:x", "http://a.example"]) | json_values,
    "logo_uri": uris | json_values,
    "contacts": st.lists(st.text(max_size=10), max_size=3) | json_values,
    "scope": st.text(max_size=20) | json_values,
    "application_type": st.sampled_from(["native", "web", "x"]) | json_values,
    "jwks": json_values,
    "client_id": json_values,
})
bodies = st.builds(lambda known, extra: {**extra, **known}, fields,
                   st.dictionaries(st.text(max_size=12), json_values, max_size=5))


def assert_valid_registration(reply: dict[str, Any]) -> None:
    assert isinstance(reply["client_id"], str) and "://" not in reply["client_id"]
    assert reply["token_endpoint_auth_method"] == "none"
    assert reply["response_types"] == ["code"]
    assert "authorization_code" in reply["grant_types"]
    assert set(reply["grant_types"]) <= {"authorization_code", "refresh_token"}
    assert 1 <= len(reply["redirect_uris"]) <= rfc7591.MAX_REDIRECT_URIS
    for uri in reply["redirect_uris"]:
        check_registrable(uri)
    for field in ("client_uri", "logo_uri", "tos_uri", "policy_uri"):
        assert field not in reply or reply[field].startswith("https://")
    for field in ("client_secret", "jwks", "jwks_uri"):
        assert field not in reply
    # What was registered passes the same rules again, unchanged.
    echoed = {k: v for k, v in reply.items() if k not in ("client_id", "client_id_issued_at")}
    again = validate_metadata(echoed)
    assert list(again.redirect_uris) == reply["redirect_uris"]


@given(bodies)
@settings(max_examples=400, deadline=None)
def test_validation_only_raises_registration_errors(data: dict[str, object]) -> None:
    try:
        meta = validate_metadata(data)
    except OAuth2Error as exc:
        assert exc.error in ("invalid_redirect_uri", "invalid_client_metadata") and exc.description
        return
    reply = rfc7591.build_client(data, 0).registration_response()
    assert_valid_registration(json.loads(json.dumps(reply)))
    assert meta.redirect_uris


class ThreadedAuthServer:
    """The authorization server on its own loop in a thread, so that hypothesis can drive it from
    a synchronous test (as in test_mcp_fuzz)."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.db = Database(tmp_path / "auth.sqlite3")
        self.db.apply_schema(AuthTables.SCHEMA)
        self.store = Store(self.db)
        self.runner, self.url = self.run(self._start())

    async def _start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        install(app, settings=AuthSettings(issuer="http://127.0.0.1", registration_rate_limit=0),
                store=self.store, cookie_key=COOKIE_KEY)
        runner = web.AppRunner(app, handler_cancellation=False)
        await runner.setup()
        sock = free_socket()
        await web.SockSite(runner, sock).start()
        return runner, f"http://127.0.0.1:{sock.getsockname()[1]}"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.db.close()


@pytest.fixture(scope="module")
def threaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedAuthServer]:
    server = ThreadedAuthServer(tmp_path_factory.mktemp("register"))
    yield server
    server.close()


@given(st.one_of(bodies, json_values))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_register_endpoint_never_fails_on_arbitrary_json(threaded: ThreadedAuthServer, data: object) -> None:
    with httpx2.Client(timeout=10) as http:
        resp = http.post(threaded.url + "/register", content=json.dumps(data),
                         headers={"Content-Type": "application/json"})
    assert resp.status_code in (201, 400), resp.text
    reply = resp.json()
    if resp.status_code == 400:
        assert reply["error"] in ("invalid_redirect_uri", "invalid_client_metadata") and reply["error_description"]
        return
    assert_valid_registration(reply)
    stored = threaded.run(threaded.store.get_client(reply["client_id"]))
    assert stored is not None and stored.registration_response() == reply

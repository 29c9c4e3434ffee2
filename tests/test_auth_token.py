"""/token and /revoke: code redemption, PKCE, refresh rotation, revocation, malformed input."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest

from auth.crypto import hash_secret
from auth.models import Token
from tests.authflow import Backend, Env, make_env, obtain_code, obtain_tokens, pkce, register, token_request

CB = "http://127.0.0.1:9/callback"


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
              store_backend: Backend) -> Env:
    return await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)


async def assert_error(resp: Any, error: str, status: int = 400) -> None:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    body = await resp.json()
    assert body["error"] == error and isinstance(body["error_description"], str)


async def test_code_exchange_response(env: Env) -> None:
    grant = await obtain_tokens(env)
    tokens = grant.tokens
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == env.server.settings.access_token_ttl >= 3600
    assert isinstance(tokens["expires_in"], int)
    assert tokens["scope"] == "memory:read memory:write"
    access = await env.store.get_token(hash_secret(tokens["access_token"]), time.time())
    refresh = await env.store.get_token(hash_secret(tokens["refresh_token"]), time.time())
    assert access is not None and refresh is not None
    assert access.kind == "access" and refresh.kind == "refresh" and access.grant_id == refresh.grant_id
    assert access.resource == env.url("/mcp")


async def test_token_response_headers(env: Env) -> None:
    client_id, code, verifier = await obtain_code(env)
    resp = await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                               client_id=client_id, redirect_uri=CB)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"



async def test_error_response_headers(env: Env) -> None:
    """Every refusal at /token and /revoke, whichever step raised it, is the same JSON error
    with no-store and CORS; a Basic-authenticated client's 401 carries the Basic challenge."""
    import base64

    basic = "Basic " + base64.b64encode(b"some-client:a-secret").decode()
    cases = [
        ("/token", {"grant_type": "password"}, {}, 400, "unsupported_grant_type"),
        ("/token", {"grant_type": "authorization_code", "client_id": "nobody"}, {}, 401, "invalid_client"),
        ("/token", {"grant_type": "authorization_code"}, {"Authorization": basic}, 401, "invalid_client"),
        ("/token", {"grant_type": "authorization_code", "a": "1"}, {"Content-Type": "text/plain"}, 415,
         "invalid_request"),
        ("/revoke", {}, {}, 400, "invalid_request"),
        ("/revoke", {"token": "x", "client_id": "nobody"}, {}, 401, "invalid_client"),
    ]
    for path, form, headers, status, error in cases:
        resp = await env.client.post(path, data=form, headers=headers)
        assert resp.status == status, (path, form)
        assert (await resp.json())["error"] == error
        assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert ("WWW-Authenticate" in resp.headers) == ("Authorization" in headers)
        if "Authorization" in headers:
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="memory-mcp"'


async def test_code_replay_refused(env: Env) -> None:
    client_id, code, verifier = await obtain_code(env)
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "client_id": client_id,
            "redirect_uri": CB}
    assert (await token_request(env, **form)).status == 200
    await assert_error(await token_request(env, **form), "invalid_grant")


async def test_code_for_another_client(env: Env) -> None:
    _, code, verifier = await obtain_code(env)
    other = await register(env, [CB])
    await assert_error(await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                                           client_id=other["client_id"], redirect_uri=CB), "invalid_grant")


async def test_redirect_uri_mismatch(env: Env) -> None:
    client_id, code, verifier = await obtain_code(env, "http://127.0.0.1:4444/callback")
    # Registered URI (port 9) is not the one used at /authorize: exact match with the request.
    await assert_error(await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                                           client_id=client_id, redirect_uri="http://127.0.0.1:5555/callback"),
                       "invalid_grant")


async def test_loopback_port_redirect_uri_must_match_authorize(env: Env) -> None:
    client = await register(env, [CB])
    verifier, challenge = pkce()
    from tests.authflow import approve, authorize_path, query_of
    used = "http://127.0.0.1:38471/callback"
    code = query_of(await approve(env, authorize_path(client["client_id"], used, challenge)))["code"]
    resp = await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                               client_id=client["client_id"], redirect_uri=used)
    assert resp.status == 200


@pytest.mark.parametrize("verifier", ["wrong" * 10, "a" * 42, "a" * 129, "ä" * 50, None])
async def test_pkce_verifier_refused(env: Env, verifier: str | None) -> None:
    client_id, code, _ = await obtain_code(env)
    form = {"grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": CB}
    if verifier is not None:
        form["code_verifier"] = verifier
    resp = await token_request(env, **form)
    await assert_error(resp, "invalid_request" if verifier is None else "invalid_grant")


async def test_wrong_verifier_burns_the_code(env: Env) -> None:
    client_id, code, verifier = await obtain_code(env)
    form = {"grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": CB}
    await assert_error(await token_request(env, **form, code_verifier="x" * 43), "invalid_grant")
    await assert_error(await token_request(env, **form, code_verifier=verifier), "invalid_grant")


async def test_resource_at_token_must_match(env: Env) -> None:
    client_id, code, verifier = await obtain_code(env, resource=env.url("/mcp"))
    form = {"grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": CB,
            "code_verifier": verifier}
    await assert_error(await token_request(env, **form, resource=env.url("/sse")), "invalid_target")
    client_id, code, verifier = await obtain_code(env, resource=env.url("/mcp"))
    form.update(code=code, client_id=client_id, code_verifier=verifier)
    assert (await token_request(env, **form, resource=env.url("/mcp/").upper().replace("/MCP/", "/mcp/"))).status == 200


async def test_basic_auth_with_empty_secret(env: Env) -> None:
    client_id, code, verifier = await obtain_code(env)
    basic = base64.b64encode(f"{client_id}:".encode()).decode()
    resp = await env.client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                                 "code_verifier": verifier, "redirect_uri": CB},
                                 headers={"Authorization": f"Basic {basic}"})
    assert resp.status == 200
    secret = base64.b64encode(f"{client_id}:secret".encode()).decode()
    resp = await env.client.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"},
                                 headers={"Authorization": f"Basic {secret}"})
    await assert_error(resp, "invalid_client", 401)
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(("form", "error", "status"), [
    ({}, "invalid_request", 400),
    ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type", 400),
    ({"grant_type": "client_credentials"}, "unsupported_grant_type", 400),
    ({"grant_type": "authorization_code", "code": "x", "code_verifier": "a" * 43}, "invalid_client", 401),
    ({"grant_type": "authorization_code", "code": "x", "code_verifier": "a" * 43, "client_id": "nope"},
     "invalid_client", 401),
    ({"grant_type": "refresh_token", "refresh_token": "x", "client_id": "nope"}, "invalid_client", 401),
])
async def test_token_request_errors(env: Env, form: dict[str, str], error: str, status: int) -> None:
    await assert_error(await token_request(env, **form), error, status)


async def test_unknown_code_and_missing_code(env: Env) -> None:
    client = await register(env, [CB])
    base = {"grant_type": "authorization_code", "client_id": client["client_id"], "redirect_uri": CB,
            "code_verifier": "a" * 43}
    await assert_error(await token_request(env, **base, code="nope"), "invalid_grant")
    await assert_error(await token_request(env, **base), "invalid_request")


# Refresh


async def refresh(env: Env, grant_client_id: str, refresh_token: str, **extra: str) -> Any:
    return await token_request(env, grant_type="refresh_token", refresh_token=refresh_token,
                               client_id=grant_client_id, **extra)


async def test_refresh_rotation(env: Env) -> None:
    grant = await obtain_tokens(env)
    first = grant.tokens["refresh_token"]
    resp = await refresh(env, grant.client_id, first, resource=env.url("/mcp"))
    assert resp.status == 200
    new = await resp.json()
    assert new["refresh_token"] != first and new["access_token"] != grant.tokens["access_token"]
    assert new["scope"] == "memory:read memory:write"
    old_record = await env.store.get_token(hash_secret(grant.tokens["access_token"]), time.time())
    new_record = await env.store.get_token(hash_secret(new["access_token"]), time.time())
    assert old_record is not None and new_record is not None and old_record.grant_id == new_record.grant_id
    # Presented again at once (a lost response): the same pair, nothing new (tests/test_auth_refresh.py).
    again = await (await refresh(env, grant.client_id, first)).json()
    assert (again["access_token"], again["refresh_token"]) == (new["access_token"], new["refresh_token"])
    # Claude Code sends no scope and a resource; Codex sends both; neither is required.
    assert (await refresh(env, grant.client_id, new["refresh_token"])).status == 200


async def test_refresh_scope_narrowing_and_escalation(env: Env) -> None:
    grant = await obtain_tokens(env)
    resp = await refresh(env, grant.client_id, grant.tokens["refresh_token"], scope="memory:read")
    assert resp.status == 200
    narrowed = await resp.json()
    assert narrowed["scope"] == "memory:read"
    # The refresh token keeps the whole grant: the full scope can be asked for again.
    resp = await refresh(env, grant.client_id, narrowed["refresh_token"], scope="memory:read memory:write")
    assert resp.status == 200
    restricted = await obtain_tokens(env, scope="memory:read")
    resp = await refresh(env, restricted.client_id, restricted.tokens["refresh_token"],
                         scope="memory:read memory:write")
    await assert_error(resp, "invalid_scope")
    # A refused request does not consume the refresh token.
    assert (await refresh(env, restricted.client_id, restricted.tokens["refresh_token"])).status == 200


async def test_refresh_wrong_client_resource_or_kind(env: Env) -> None:
    grant = await obtain_tokens(env)
    other = await register(env, [CB])
    await assert_error(await refresh(env, other["client_id"], grant.tokens["refresh_token"]), "invalid_grant")
    await assert_error(await refresh(env, grant.client_id, grant.tokens["refresh_token"],
                                     resource="https://other.example/mcp"), "invalid_target")
    await assert_error(await refresh(env, grant.client_id, grant.tokens["access_token"]), "invalid_grant")
    await assert_error(await refresh(env, grant.client_id, "garbage"), "invalid_grant")
    assert (await refresh(env, grant.client_id, grant.tokens["refresh_token"],
                          resource=env.url("/mcp/"))).status == 200


async def test_expired_refresh_token(env: Env) -> None:
    client = await register(env, [CB])
    now = time.time()
    await env.store.save_tokens([Token(hash_secret("old-refresh"), "refresh", "g1", client["client_id"], "sub",
                                       ("memory:read",), env.url("/mcp"), now - 100, now - 1)])
    await assert_error(await refresh(env, client["client_id"], "old-refresh"), "invalid_grant")


async def test_client_without_refresh_grant_gets_no_refresh_token(env: Env) -> None:
    client = await register(env, [CB], grant_types=["authorization_code"])
    verifier, challenge = pkce()
    from tests.authflow import approve, authorize_path, query_of
    code = query_of(await approve(env, authorize_path(client["client_id"], CB, challenge)))["code"]
    resp = await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                               client_id=client["client_id"], redirect_uri=CB)
    assert "refresh_token" not in await resp.json()
    await assert_error(await refresh(env, client["client_id"], "x"), "unauthorized_client")


# Revocation


async def revoke(env: Env, client_id: str | None, token: str, **extra: str) -> Any:
    form = {"token": token, **extra}
    if client_id is not None:
        form["client_id"] = client_id
    return await env.client.post("/revoke", data=form)


async def test_revoke_access_token(env: Env) -> None:
    grant = await obtain_tokens(env)
    resp = await revoke(env, grant.client_id, grant.tokens["access_token"], token_type_hint="access_token")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert await env.store.get_token(hash_secret(grant.tokens["access_token"]), time.time()) is None
    assert await env.store.get_token(hash_secret(grant.tokens["refresh_token"]), time.time()) is not None
    assert len(env.revocations) == 1 and env.revocations[0].client_id == grant.client_id


async def test_revoke_refresh_kills_the_grant(env: Env) -> None:
    grant = await obtain_tokens(env)
    resp = await refresh(env, grant.client_id, grant.tokens["refresh_token"])
    rotated = await resp.json()
    other = await obtain_tokens(env)
    assert (await revoke(env, grant.client_id, rotated["refresh_token"])).status == 200
    for token in (grant.tokens["access_token"], rotated["access_token"], rotated["refresh_token"]):
        assert await env.store.get_token(hash_secret(token), time.time()) is None
    assert await env.store.get_token(hash_secret(other.tokens["access_token"]), time.time()) is not None
    record_grant = env.revocations[-1].grant_id
    assert record_grant is not None


async def test_revoke_unknown_and_foreign_tokens(env: Env) -> None:
    grant = await obtain_tokens(env)
    other = await register(env, [CB])
    assert (await revoke(env, grant.client_id, "no-such-token")).status == 200
    assert (await revoke(env, other["client_id"], grant.tokens["access_token"])).status == 200
    assert await env.store.get_token(hash_secret(grant.tokens["access_token"]), time.time()) is not None
    assert env.revocations == []
    await assert_error(await revoke(env, None, grant.tokens["access_token"]), "invalid_client", 401)
    await assert_error(await revoke(env, "nope", grant.tokens["access_token"]), "invalid_client", 401)
    await assert_error(await env.client.post("/revoke", data={"client_id": grant.client_id}), "invalid_request")


async def test_failing_listener_does_not_break_revocation(env: Env) -> None:
    async def broken(_: Any) -> None:
        raise RuntimeError("boom")

    env.server.revocation_listeners.insert(0, broken)
    grant = await obtain_tokens(env)
    assert (await revoke(env, grant.client_id, grant.tokens["refresh_token"])).status == 200
    assert len(env.revocations) == 1


# Malformed input never yields a 500 and always yields JSON with no-store.


@pytest.mark.parametrize("path", ["/token", "/revoke"])
@pytest.mark.parametrize(("data", "headers", "status"), [
    (b'{"grant_type": "authorization_code"}', {"Content-Type": "application/json"}, 415),
    (b"grant_type=%ff%fe", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
    (b"\xff\xfe=\x00", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
    (b"grant_type=refresh_token&grant_type=authorization_code&token=a&token=b",
     {"Content-Type": "application/x-www-form-urlencoded"}, 400),
    (b"a=" + b"x" * 20_000, {"Content-Type": "application/x-www-form-urlencoded"}, 413),
    (b"&".join(b"k%d=v" % i for i in range(200)), {"Content-Type": "application/x-www-form-urlencoded"}, 400),
    (b"--b\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\nx\r\n--b--",
     {"Content-Type": "multipart/form-data; boundary=b"}, 415),
])
async def test_malformed_bodies(env: Env, path: str, data: bytes, headers: dict[str, str], status: int) -> None:
    resp = await env.client.post(path, data=data, headers=headers)
    await assert_error(resp, "invalid_request", status)


async def test_malformed_basic_header(env: Env) -> None:
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe").decode(), "Basic " +
                   base64.b64encode(b"no-colon").decode()):
        resp = await env.client.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"},
                                     headers={"Authorization": header})
        await assert_error(resp, "invalid_client", 401)


async def test_chunked_huge_body(env: Env) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 1024

    resp = await env.client.post("/token", data=chunks(),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    await assert_error(resp, "invalid_request", 413)


@pytest.mark.parametrize("path", ["/token", "/revoke", "/register"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_wrong_method_is_json(env: Env, path: str, method: str) -> None:
    resp = await env.client.request(method, path)
    await assert_error(resp, "invalid_request", 405)

"""OpenID Connect: the discovery document, the JWKS, ID tokens, UserInfo and key rotation, over
real HTTP and real SQLite, checked with independent libraries (authlib's discovery validator and
OAuth client, joserfc for signatures)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from auth import oidc_discovery, rfc8414
from auth.crypto import hash_secret
from auth.oidc_core import at_hash
from auth.rfc6750 import BearerError, BearerVerifier
from auth.rfc7517 import KEY_OVERLAP, new_signing_key, rotate_signing_key
from auth.settings import AuthSettings
from tests.authflow import (
    PASSWORD,
    USERNAME,
    Backend,
    Env,
    approve,
    authorize_path,
    hidden_fields,
    make_env,
    pkce,
    query_of,
    register,
    token_request,
)
from tests.browser import Browser

CB = "http://127.0.0.1:9/callback"
HTTPS = AuthSettings(issuer="https://memory.example.com")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
              store_backend: Backend) -> Env:
    return await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)


async def get_json(env: Env, path: str) -> Any:
    resp = await env.client.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def jwks(env: Env) -> KeySet:
    return KeySet.import_key_set(await get_json(env, "/.well-known/jwks.json"))


async def login(env: Env, scope: str, nonce: str | None = None) -> tuple[str, dict[str, Any]]:
    client = await register(env, [CB])
    verifier, challenge = pkce()
    params = {"scope": scope, **({"nonce": nonce} if nonce else {})}
    code = query_of(await approve(env, authorize_path(client["client_id"], CB, challenge, **params)))["code"]
    resp = await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                               client_id=client["client_id"], redirect_uri=CB)
    assert resp.status == 200, await resp.text()
    return client["client_id"], await resp.json()


def claims_of(id_token: str, keys: KeySet, *, issuer: str, client_id: str, nonce: str | None) -> dict[str, Any]:
    token = jwt.decode(id_token, keys, algorithms=["RS256"])
    registry = JWTClaimsRegistry(iss={"essential": True, "value": issuer}, aud={"essential": True, "value": client_id},
                                 sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
                                 nonce={"essential": True, "value": nonce} if nonce else {"essential": False})
    registry.validate(token.claims)
    assert token.header["alg"] == "RS256" and token.header["kid"]
    return dict(token.claims)


# Discovery


async def test_openid_configuration_is_complete_and_valid(env: Env) -> None:
    doc = await get_json(env, "/.well-known/openid-configuration")
    assert doc == oidc_discovery.document(env.server.settings)
    # authlib refuses a non-https issuer, so validate the same document for an https deployment.
    OpenIDProviderMetadata(oidc_discovery.document(HTTPS)).validate()
    AuthorizationServerMetadata(rfc8414.metadata(HTTPS).model_dump(exclude_none=True)).validate()
    # The fields the TS SDK's zod schema requires (docs/protocol.md#G9), and ours.
    assert doc["jwks_uri"] == env.url("/.well-known/jwks.json")
    assert doc["userinfo_endpoint"] == env.url("/userinfo")
    assert doc["subject_types_supported"] == ["public"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["response_types_supported"] == ["code"]
    assert {"openid", "profile", "memory:read", "memory:write"} <= set(doc["scopes_supported"])
    assert {"sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "preferred_username"} <= set(
        doc["claims_supported"])
    # One issuer, one set of facts: every RFC 8414 field has the same value here.
    oauth = await get_json(env, "/.well-known/oauth-authorization-server")
    assert {k: doc[k] for k in oauth} == oauth


async def test_oidc_scopes_stay_out_of_the_resource_documents(env: Env) -> None:
    prm = await get_json(env, "/.well-known/oauth-protected-resource/mcp")
    assert prm["scopes_supported"] == ["memory:read", "memory:write"]
    with pytest.raises(BearerError) as info:
        await BearerVerifier(env.server.settings, env.store).verify(None, "/mcp")
    assert 'scope="memory:read memory:write"' in info.value.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("scope", "granted"), [
    ("openid email profile", "memory:read memory:write openid profile"),  # mcp-remote's fallback
    ("memory:read memory:write", "memory:read memory:write"),  # Codex, Claude: no ID token
])
async def test_mcp_clients_still_get_the_resource_scopes(env: Env, scope: str, granted: str) -> None:
    _, tokens = await login(env, scope)
    assert tokens["scope"] == granted
    assert ("id_token" in tokens) == ("openid" in granted)


# ID tokens


async def test_id_token_claims(env: Env) -> None:
    nonce = secrets.token_urlsafe(16)
    before = int(time.time())
    client_id, tokens = await login(env, "openid profile memory:read", nonce)
    claims = claims_of(tokens["id_token"], await jwks(env), issuer=env.issuer, client_id=client_id, nonce=nonce)
    user = await env.store.get_user_by_name(USERNAME)
    assert user is not None and claims["sub"] == user.id
    assert claims["exp"] - claims["iat"] == env.server.settings.id_token_ttl
    assert before - 1 <= claims["auth_time"] <= claims["iat"]
    assert claims["at_hash"] == at_hash(tokens["access_token"])
    assert "preferred_username" not in claims  # served by UserInfo


async def test_refresh_id_token_keeps_auth_time_and_drops_nonce(env: Env) -> None:
    client_id, tokens = await login(env, "openid memory:read", "n-123")
    first = claims_of(tokens["id_token"], await jwks(env), issuer=env.issuer, client_id=client_id, nonce="n-123")
    resp = await token_request(env, grant_type="refresh_token", refresh_token=tokens["refresh_token"],
                               client_id=client_id)
    refreshed = await resp.json()
    second = claims_of(refreshed["id_token"], await jwks(env), issuer=env.issuer, client_id=client_id, nonce=None)
    assert second["auth_time"] == first["auth_time"] and second["sub"] == first["sub"]
    assert "nonce" not in second  # OIDC Core 12.2
    # Narrowed to the resource scopes: no ID token.
    resp = await token_request(env, grant_type="refresh_token", refresh_token=refreshed["refresh_token"],
                               client_id=client_id, scope="memory:read")
    assert "id_token" not in await resp.json()


async def test_forged_id_token_does_not_verify(env: Env) -> None:
    client_id, tokens = await login(env, "openid", "n")
    header, payload, signature = tokens["id_token"].split(".")
    other = new_signing_key(env.server.key_sealer, time.time())
    forged = jwt.encode({"alg": "RS256", "kid": json.loads(other.public_jwk)["kid"]}, {"sub": "mallory"},
                        KeySet.import_key_set({"keys": [json.loads(env.server.key_sealer.decrypt(
                            other.private_jwk.encode()))]}).keys[0])
    for token in (forged, f"{header}.{payload}.{signature[:-4]}AAAA"):
        with pytest.raises(Exception):  # noqa: B017 - joserfc raises several error types
            claims_of(token, await jwks(env), issuer=env.issuer, client_id=client_id, nonce="n")


# Keys


async def test_jwks_publishes_only_public_keys_and_stores_private_ones_encrypted(env: Env) -> None:
    await login(env, "openid", "n")
    published = (await get_json(env, "/.well-known/jwks.json"))["keys"]
    assert len(published) == 1
    assert published[0]["kty"] == "RSA" and published[0]["use"] == "sig" and published[0]["alg"] == "RS256"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(published[0])
    [stored] = await env.store.signing_keys(time.time())  # as the store holds it
    assert stored.kid == published[0]["kid"]
    assert '"d"' not in stored.private_jwk and published[0]["n"] not in stored.private_jwk


async def test_key_rotation_keeps_issued_tokens_verifiable(env: Env) -> None:
    clock = Clock()
    env.server.clock = clock
    client_id, old = await login(env, "openid", "n1")
    old_kid = jwt.decode(old["id_token"], await jwks(env)).header["kid"]

    new_kid = await rotate_signing_key(env.server.store, env.server.key_sealer, clock(),
                                       env.server.settings.id_token_ttl)

    assert new_kid != old_kid
    keys = await jwks(env)
    assert {k.kid for k in keys.keys} == {old_kid, new_kid}
    claims_of(old["id_token"], keys, issuer=env.issuer, client_id=client_id, nonce="n1")
    client_id2, new = await login(env, "openid", "n2")
    assert jwt.decode(new["id_token"], keys).header["kid"] == new_kid
    claims_of(new["id_token"], keys, issuer=env.issuer, client_id=client_id2, nonce="n2")
    # Once every token the old key signed has expired, it is no longer published.
    clock.now += env.server.settings.id_token_ttl + KEY_OVERLAP + 1
    assert {k.kid for k in (await jwks(env)).keys} == {new_kid}


async def test_two_first_keys_at_once_keep_one(env: Env) -> None:
    now = time.time()
    first, second = new_signing_key(env.server.key_sealer, now), new_signing_key(env.server.key_sealer, now)
    assert await env.store.add_signing_key(first, now, now, replace=False)
    assert not await env.store.add_signing_key(second, now, now, replace=False)
    assert [k.kid for k in await env.store.signing_keys(now)] == [first.kid]


# UserInfo


async def test_userinfo(env: Env) -> None:
    _, tokens = await login(env, "openid profile memory:read")
    user = await env.store.get_user_by_name(USERNAME)
    assert user is not None
    for method in ("GET", "POST"):
        resp = await env.client.request(method, "/userinfo",
                                        headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        assert await resp.json() == {"sub": user.id, "preferred_username": USERNAME}
    _, without_profile = await login(env, "openid")
    resp = await env.client.get("/userinfo", headers={"Authorization": f"Bearer {without_profile['access_token']}"})
    assert await resp.json() == {"sub": user.id}


@pytest.mark.parametrize(("authorization", "status", "error"), [
    (None, 401, None),
    ("Bearer not-a-token", 401, "invalid_token"),
    ("Basic YWxpY2U6eA==", 401, None),
])
async def test_userinfo_refusals(env: Env, authorization: str | None, status: int, error: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    resp = await env.client.get("/userinfo", headers=headers)
    assert resp.status == status
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer") and "resource_metadata" not in challenge
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)


async def test_userinfo_needs_openid_scope(env: Env) -> None:
    _, tokens = await login(env, "memory:read")
    resp = await env.client.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status == 403 and 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]


async def test_userinfo_refuses_a_refresh_token(env: Env) -> None:
    _, tokens = await login(env, "openid profile")
    resp = await env.client.get("/userinfo", headers={"Authorization": f"Bearer {tokens['refresh_token']}"})
    assert resp.status == 401
    assert await env.store.get_token(hash_secret(tokens["refresh_token"]), time.time()) is not None


# A relying party library end to end


async def test_oidc_login_with_authlib_client(env: Env) -> None:
    client_info = await register(env, [CB])
    async with AsyncOAuth2Client(client_id=client_info["client_id"], redirect_uri=CB,
                                 scope="openid profile memory:read memory:write",
                                 token_endpoint_auth_method="none", code_challenge_method="S256") as client:
        meta = (await client.request("GET", env.url("/.well-known/openid-configuration"),
                                     withhold_token=True)).json()
        OpenIDProviderMetadata(meta).validate_jwks_uri()
        verifier = secrets.token_urlsafe(64)
        nonce = secrets.token_urlsafe(16)
        url, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier,
                                                     nonce=nonce, resource=env.url("/mcp"))
        browser = Browser(USERNAME, PASSWORD)
        try:
            redirect = await browser.authorize(url, env.issuer)
        finally:
            await browser.close()
        assert redirect.params["iss"] == meta["issuer"] and redirect.params["state"] == state
        token = await client.fetch_token(meta["token_endpoint"], authorization_response=redirect.url,
                                         code_verifier=verifier, resource=env.url("/mcp"))
        assert token["token_type"] == "Bearer" and "openid" in token["scope"].split()
        keys = KeySet.import_key_set((await client.request("GET", meta["jwks_uri"], withhold_token=True)).json())
        claims = claims_of(token["id_token"], keys, issuer=meta["issuer"], client_id=client_info["client_id"],
                           nonce=nonce)
        info = (await client.request("GET", meta["userinfo_endpoint"])).json()
        assert info == {"sub": claims["sub"], "preferred_username": USERNAME}


# auth_time, prompt and max_age (issue 10 defect 10)


def authorize_openid(client_id: str, challenge: str, **params: str) -> str:
    return authorize_path(client_id, CB, challenge, scope="openid memory:read", **params)


async def redeem(env: Env, client_id: str, verifier: str, location: str) -> dict[str, Any]:
    resp = await token_request(env, grant_type="authorization_code", code=query_of(location)["code"],
                               code_verifier=verifier, client_id=client_id, redirect_uri=CB)
    assert resp.status == 200, await resp.text()
    tokens: dict[str, Any] = await resp.json()
    return tokens


async def test_auth_time_is_when_the_user_signed_in(env: Env) -> None:
    """Not when the code was issued: a browser signed in long ago approves a new grant."""
    clock = Clock()
    clock.now -= 3000  # stays in the past: the ID token's iat is checked against real time
    env.server.clock = clock
    signed_in_at = clock.now
    client = await register(env, [CB])
    client_id = client["client_id"]
    verifier, challenge = pkce()
    await approve(env, authorize_openid(client_id, challenge), logged_in=False)
    clock.now += 1000
    location = await approve(env, authorize_openid(client_id, challenge), logged_in=True)
    tokens = await redeem(env, client_id, verifier, location)
    claims = claims_of(tokens["id_token"], await jwks(env), issuer=env.issuer, client_id=client_id, nonce=None)
    assert claims["auth_time"] == int(signed_in_at) and claims["iat"] == int(clock.now)
    # The same on every refresh of the grant (OIDC Core 12.2).
    clock.now += 1000
    resp = await token_request(env, grant_type="refresh_token", refresh_token=tokens["refresh_token"],
                               client_id=client_id)
    refreshed = claims_of((await resp.json())["id_token"], await jwks(env), issuer=env.issuer, client_id=client_id,
                          nonce=None)
    assert refreshed["auth_time"] == int(signed_in_at) and refreshed["iat"] == int(clock.now)


async def test_prompt_login_and_max_age_ask_for_the_password_again(env: Env) -> None:
    clock = Clock()
    clock.now -= 3000
    env.server.clock = clock
    client = await register(env, [CB])
    client_id = client["client_id"]
    verifier, challenge = pkce()
    await approve(env, authorize_openid(client_id, challenge), logged_in=False)
    clock.now += 100
    for params in ({"prompt": "login"}, {"prompt": "consent login"}, {"max_age": "0"}, {"max_age": "99"},
                   {"max_age": "99", "prompt": "consent"}):
        resp = await env.client.get(authorize_openid(client_id, challenge, **params), allow_redirects=False)
        page = await resp.text()
        assert resp.status == 200 and 'name="password"' in page, params
        assert "enter your password again" in page and 'value="alice"' in page
    # A login exactly max_age old is recent enough.
    page = await (await env.client.get(authorize_openid(client_id, challenge, max_age="100"))).text()
    assert 'name="password"' not in page and 'value="approve"' in page
    # Typing the password satisfies the request: the consent page follows, and the new login's
    # time is the ID token's auth_time.
    page = await (await env.client.get(authorize_openid(client_id, challenge, prompt="login", max_age="0"))).text()
    clock.now += 50
    resp = await env.client.post("/login", data=dict(hidden_fields(page), username=USERNAME, password=PASSWORD),
                                 allow_redirects=False)
    page = await resp.text()
    assert resp.status == 200 and 'value="approve"' in page
    resp = await env.client.post("/consent", data=dict(hidden_fields(page), decision="approve"),
                                 allow_redirects=False)
    tokens = await redeem(env, client_id, verifier, resp.headers["Location"])
    claims = claims_of(tokens["id_token"], await jwks(env), issuer=env.issuer, client_id=client_id, nonce=None)
    assert claims["auth_time"] == int(clock.now)


async def test_prompt_none_and_bad_prompt_or_max_age(env: Env) -> None:
    doc = await get_json(env, "/.well-known/openid-configuration")
    assert doc["prompt_values_supported"] == ["none", "login", "consent"]
    clock = Clock()
    env.server.clock = clock
    client = await register(env, [CB])
    client_id = client["client_id"]
    _, challenge = pkce()

    async def error_of(**params: str) -> str:
        resp = await env.client.get(authorize_openid(client_id, challenge, **params), allow_redirects=False)
        assert resp.status == 303, await resp.text()
        query = query_of(resp.headers["Location"])
        assert resp.headers["Location"].startswith(CB + "?") and query["state"] == "st-123" and "code" not in query
        return query["error"]

    assert await error_of(prompt="none") == "login_required"
    await approve(env, authorize_openid(client_id, challenge), logged_in=False)
    assert await error_of(prompt="none") == "consent_required"
    clock.now += 100
    assert await error_of(prompt="none", max_age="50") == "login_required"
    for params in ({"prompt": "none login"}, {"prompt": "consent none"}, {"max_age": "-1"}, {"max_age": "1.5"},
                   {"max_age": "ten"}, {"max_age": "\u0663"}, {"max_age": "1" * 11}):
        assert await error_of(**params) == "invalid_request", params
    # An empty max_age is no max_age (RFC 6749 3.1).
    page = await (await env.client.get(authorize_openid(client_id, challenge, max_age=""))).text()
    assert 'value="approve"' in page

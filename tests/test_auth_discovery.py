"""Discovery documents and dynamic client registration, over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.authflow import Backend, Env, make_env, register


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
              store_backend: Backend) -> Env:
    return await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)


async def test_authorization_server_metadata(env: Env) -> None:
    resp = await env.client.get("/.well-known/oauth-authorization-server",
                                headers={"MCP-Protocol-Version": "2024-11-05"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    doc = await resp.json()
    assert doc == {
        "issuer": env.issuer,
        "authorization_endpoint": env.url("/authorize"),
        "token_endpoint": env.url("/token"),
        "registration_endpoint": env.url("/register"),
        "jwks_uri": env.url("/.well-known/jwks.json"),
        "revocation_endpoint": env.url("/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["memory:read", "memory:write", "openid", "profile"],
        "authorization_response_iss_parameter_supported": True,
    }


@pytest.mark.parametrize(("path", "resource_suffix"), [("", ""), ("/mcp", "/mcp"), ("/sse", "/sse")])
async def test_protected_resource_metadata(env: Env, path: str, resource_suffix: str) -> None:
    resp = await env.client.get("/.well-known/oauth-protected-resource" + path,
                                headers={"MCP-Protocol-Version": "2026-07-28"})
    assert resp.status == 200
    doc = await resp.json()
    assert doc["resource"] == env.issuer + resource_suffix
    assert doc["authorization_servers"] == [env.issuer]
    as_doc = await (await env.client.get("/.well-known/oauth-authorization-server")).json()
    assert doc["authorization_servers"][0].encode() == as_doc["issuer"].encode()
    assert doc["scopes_supported"] == ["memory:read", "memory:write"]
    assert doc["bearer_methods_supported"] == ["header"]
    assert doc["resource_name"] == "memory-mcp"


@pytest.mark.parametrize("path", [
    "/.well-known/oauth-authorization-server/mcp",
    "/.well-known/openid-configuration/mcp",
    "/mcp/.well-known/openid-configuration",
    "/.well-known/oauth-protected-resource/other",
    "/.well-known/oauth-protected-resource/mcp/extra",
])
async def test_unserved_well_known_paths_are_404(env: Env, path: str) -> None:
    resp = await env.client.get(path, headers={"MCP-Protocol-Version": "2025-11-25"})
    assert resp.status == 404


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server",
                                  "/.well-known/oauth-protected-resource/mcp", "/register", "/token", "/revoke"])
async def test_cors_preflight(env: Env, path: str) -> None:
    resp = await env.client.options(path, headers={"Origin": "http://localhost:6274",
                                                   "Access-Control-Request-Method": "POST"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    for header in ("authorization", "content-type", "mcp-protocol-version"):
        assert header in allowed


# Registration

CODEX = {"client_name": "Codex", "redirect_uris": ["http://127.0.0.1:38471/callback/G3FWhQwTkI7e"],
         "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none",
         "response_types": ["code"], "scope": "mcp:tools", "application_type": "native"}


async def test_register_codex_body_echoes_everything(env: Env) -> None:
    resp = await env.client.post("/register", json=CODEX, headers={"MCP-Protocol-Version": "2024-11-05"})
    assert resp.status == 201
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    for key, value in CODEX.items():
        assert body[key] == value
    assert isinstance(body["client_id"], str) and len(body["client_id"]) >= 32
    assert isinstance(body["client_id_issued_at"], int)
    assert "client_secret" not in body
    assert (await env.store.get_client(body["client_id"])) is not None


async def test_register_defaults_and_unknown_fields(env: Env) -> None:
    # The Python SDK omits token_endpoint_auth_method; mcp-remote sends software_id and friends.
    resp = await env.client.post("/register", json={
        "redirect_uris": ["http://localhost:3335/oauth/callback"], "client_name": "MCP CLI Proxy",
        "client_uri": "https://github.com/geelen/mcp-remote", "software_id": "2e6dc280", "software_version": "0.15.1",
        "logo_uri": "https://example.com/logo.png", "client_id": "chosen-by-client", "client_secret": "nope"})
    assert resp.status == 201
    body = await resp.json()
    assert body["token_endpoint_auth_method"] == "none"
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["response_types"] == ["code"]
    assert body["software_id"] == "2e6dc280" and body["software_version"] == "0.15.1"
    assert body["client_uri"] == "https://github.com/geelen/mcp-remote"
    assert body["client_id"] != "chosen-by-client"
    assert "client_secret" not in body


async def test_register_accepts_every_loopback_form(env: Env) -> None:
    uris = ["http://127.0.0.1/cb", "http://[::1]:8080/cb", "http://localhost:1/x/y?z=1", "https://app.example.com/cb"]
    body = await register(env, uris)
    assert body["redirect_uris"] == uris


@pytest.mark.parametrize(("body", "error"), [
    ({}, "invalid_redirect_uri"),
    ({"redirect_uris": []}, "invalid_redirect_uri"),
    ({"redirect_uris": "http://127.0.0.1/cb"}, "invalid_redirect_uri"),
    ({"redirect_uris": [7]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["http://127.0.0.1/cb"] * 11}, "invalid_redirect_uri"),
    ({"redirect_uris": ["http://127.0.0.1/" + "a" * 2000]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["http://example.com/cb"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["http://127.0.0.2/cb"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["https://app.example.com/cb#frag"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["data:text/html,hi"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["file:///etc/passwd"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["cursor://callback"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["/relative"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["https://user:pw@app.example.com/cb"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["https://app.example.com:99999/cb"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["https://app.example.com/c b"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["https://x.com;frame-ancestors */cb"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["https://x_y.com/cb"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["https://[fe80::1%eth0]/cb"]}, "invalid_redirect_uri"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "client_secret_basic"},
     "invalid_client_metadata"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "client_secret_post"},
     "invalid_client_metadata"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["client_credentials"]}, "invalid_client_metadata"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["refresh_token"]}, "invalid_client_metadata"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "response_types": ["token"]}, "invalid_client_metadata"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "client_name": 5}, "invalid_client_metadata"),
])
async def test_register_refusals(env: Env, body: dict[str, Any], error: str) -> None:
    resp = await env.client.post("/register", json=body)
    assert resp.status == 400, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    data = await resp.json()
    assert data["error"] == error and data["error_description"]


@pytest.mark.parametrize(("data", "content_type", "status"), [
    (b"redirect_uris=http://127.0.0.1/cb", "application/x-www-form-urlencoded", 415),
    (b'{"redirect_uris": ["http://127.0.0.1/cb"]}', "text/plain", 415),
    (b'{"redirect_uris": ', "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b"\xff\xfe\x00garbage", "application/json", 400),
    (b"[" * 100_000, "application/json", 413),
    (b"[" * 60_000, "application/json", 400),
    (b'{"redirect_uris": ["http://127.0.0.1/cb"], "x": "' + b"a" * 70_000 + b'"}', "application/json", 413),
])
async def test_register_malformed_bodies(env: Env, data: bytes, content_type: str, status: int) -> None:
    resp = await env.client.post("/register", data=data, headers={"Content-Type": content_type})
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"] == "invalid_client_metadata"


async def test_register_without_content_type(env: Env) -> None:
    resp = await env.client.post("/register", data=b'{"redirect_uris": ["http://127.0.0.1/cb"]}',
                                 skip_auto_headers=["Content-Type"])
    assert resp.status == 415

"""RFC 8414 authorization server metadata, served at the root well-known URL only.

The issuer has no path, so `/.well-known/oauth-authorization-server` is its only metadata URL.
Nothing is served at the path-suffixed variants: rmcp and the Python SDK derive an expected issuer
from the URL they fetched and fail hard on a document found elsewhere (docs/protocol.md#A4, #G4).
Those URLs get aiohttp's plain 404. `/.well-known/openid-configuration` is served, as a complete
OpenID Connect document built on this one (`auth.oidc_discovery`; a partial one breaks TS clients,
docs/protocol.md#G9).

`scopes_supported` lists the OpenID Connect scopes too: this server grants them, and MCP clients
never pick scopes from this document while the resource's challenge and RFC 9728 document name
scopes (which list only the resource's). `jwks_uri` is an RFC 8414 field as well.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from auth.server import AUTH_SERVER
from auth.settings import AuthSettings

PATH = "/.well-known/oauth-authorization-server"


class AuthorizationServerMetadata(BaseModel):
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    registration_endpoint: str
    jwks_uri: str
    revocation_endpoint: str
    response_types_supported: list[str]
    response_modes_supported: list[str]
    grant_types_supported: list[str]
    code_challenge_methods_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    scopes_supported: list[str]
    authorization_response_iss_parameter_supported: bool
    # Present only when enabled, never as false: Codex and Claude Code switch to Client ID Metadata
    # Documents as soon as they see it (docs/protocol.md#D, #G14).
    client_id_metadata_document_supported: bool | None = None


def metadata(settings: AuthSettings) -> AuthorizationServerMetadata:
    return AuthorizationServerMetadata(
        issuer=settings.issuer,
        authorization_endpoint=settings.url("/authorize"),
        token_endpoint=settings.url("/token"),
        registration_endpoint=settings.url("/register"),
        jwks_uri=settings.url("/.well-known/jwks.json"),
        revocation_endpoint=settings.url("/revoke"),
        response_types_supported=["code"],
        response_modes_supported=["query"],
        grant_types_supported=["authorization_code", "refresh_token"],
        code_challenge_methods_supported=["S256"],
        # Public clients only: listing secret methods would make clients expect a secret.
        token_endpoint_auth_methods_supported=["none"],
        revocation_endpoint_auth_methods_supported=["none"],
        scopes_supported=list(settings.as_scopes_supported),
        authorization_response_iss_parameter_supported=True,
        client_id_metadata_document_supported=True if settings.client_id_metadata_documents else None,
    )


async def handle(request: web.Request) -> web.Response:
    settings = request.app[AUTH_SERVER].settings
    return web.json_response(metadata(settings).model_dump(exclude_none=True), headers={"Cache-Control": "max-age=300"})

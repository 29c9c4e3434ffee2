"""RFC 8414 authorization server metadata, served at the root well-known URL only.

The issuer has no path, so `/.well-known/oauth-authorization-server` is its only metadata URL.
Nothing is served at the path-suffixed variants or at `openid-configuration`: rmcp and the Python
SDK derive an expected issuer from the URL they fetched and fail hard on a document found
elsewhere, and TS clients reject an OIDC document that lacks the OIDC-only fields
(protocol-checklist A.4, G4, G9). Those URLs get aiohttp's plain 404.
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
    revocation_endpoint: str
    response_types_supported: list[str]
    response_modes_supported: list[str]
    grant_types_supported: list[str]
    code_challenge_methods_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    scopes_supported: list[str]
    authorization_response_iss_parameter_supported: bool


def metadata(settings: AuthSettings) -> AuthorizationServerMetadata:
    return AuthorizationServerMetadata(
        issuer=settings.issuer,
        authorization_endpoint=settings.url("/authorize"),
        token_endpoint=settings.url("/token"),
        registration_endpoint=settings.url("/register"),
        revocation_endpoint=settings.url("/revoke"),
        response_types_supported=["code"],
        response_modes_supported=["query"],
        grant_types_supported=["authorization_code", "refresh_token"],
        code_challenge_methods_supported=["S256"],
        # Public clients only: listing secret methods would make clients expect a secret.
        token_endpoint_auth_methods_supported=["none"],
        revocation_endpoint_auth_methods_supported=["none"],
        scopes_supported=list(settings.scopes_supported),
        authorization_response_iss_parameter_supported=True,
    )


async def handle(request: web.Request) -> web.Response:
    settings = request.app[AUTH_SERVER].settings
    return web.json_response(metadata(settings).model_dump(), headers={"Cache-Control": "max-age=300"})

"""OpenID Connect Discovery 1.0: `/.well-known/openid-configuration`, root only.

The document is the RFC 8414 one (same issuer, endpoints and values, whatever gets added there)
plus the fields OpenID Connect requires or whose defaults would be wrong for us. It is complete
on purpose: the TS SDK and mcp-remote validate it with zod and reject a partial one
(docs/protocol.md#G9), and MCP clients may read it instead of the RFC 8414 document.

`request_uri_parameter_supported` defaults to true in the spec, and `claims_parameter_supported`
and `request_parameter_supported` are stated although false is their default: we support none.
"""

from __future__ import annotations

from aiohttp import web

from auth import oidc_core, rfc7517, rfc8414
from auth.server import AUTH_SERVER
from auth.settings import AuthSettings

PATH = "/.well-known/openid-configuration"


def document(settings: AuthSettings) -> dict[str, object]:
    doc: dict[str, object] = rfc8414.metadata(settings).model_dump(exclude_none=True)
    doc.update(
        userinfo_endpoint=settings.url(oidc_core.USERINFO_PATH),
        jwks_uri=settings.url(rfc7517.PATH),
        subject_types_supported=["public"],
        id_token_signing_alg_values_supported=[rfc7517.ALG],
        claims_supported=list(oidc_core.CLAIMS_SUPPORTED),
        claims_parameter_supported=False,
        request_parameter_supported=False,
        request_uri_parameter_supported=False,
        # auth.authorize: `prompt=none|login|consent` and `max_age` are honoured.
        prompt_values_supported=["none", "login", "consent"],
    )
    return doc


async def handle(request: web.Request) -> web.Response:
    settings = request.app[AUTH_SERVER].settings
    return web.json_response(document(settings), headers={"Cache-Control": "max-age=300"})

"""RFC 9728 protected resource metadata: one document per protected path plus the root one.

Each document's `resource` is exactly the identifier its URL was built from (section 3.3), and
clients check that it prefixes the URL they were given: a `/sse` client that receives the `/mcp`
document gives up (docs/protocol.md#G6). `authorization_servers[0]` is the issuer string
itself, byte for byte, because clients compare it with the AS metadata `issuer`.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from auth.http import Handler
from auth.server import AUTH_SERVER
from auth.settings import AuthSettings

PREFIX = "/.well-known/oauth-protected-resource"

# Legacy SSE posts to /messages, which belongs to the /sse resource.
_ALIASES = {"/messages": "/sse"}


class ProtectedResourceMetadata(BaseModel):
    resource: str
    authorization_servers: list[str]
    scopes_supported: list[str]
    bearer_methods_supported: list[str]
    resource_name: str


def document_path(settings: AuthSettings, resource_path: str) -> str:
    """The metadata path describing `resource_path` ("" or "/" for the origin itself)."""
    path = _ALIASES.get(resource_path, resource_path)
    return PREFIX + path if path in settings.resource_paths else PREFIX


def metadata_url(settings: AuthSettings, resource_path: str) -> str:
    return settings.url(document_path(settings, resource_path))


def metadata(settings: AuthSettings, resource_path: str) -> ProtectedResourceMetadata:
    return ProtectedResourceMetadata(
        resource=settings.issuer + resource_path,
        authorization_servers=[settings.issuer],
        scopes_supported=list(settings.scopes_supported),
        bearer_methods_supported=["header"],
        resource_name=settings.resource_name,
    )


def handler_for(resource_path: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        settings = request.app[AUTH_SERVER].settings
        return web.json_response(metadata(settings, resource_path).model_dump(),
                                 headers={"Cache-Control": "max-age=300"})

    return handle

"""RFC 7591 dynamic client registration: open, public clients only.

Open because every MCP client registers itself, most of them on every login (protocol-checklist
C.1, C.4): an initial access token would lock them all out. Public only because we issue no client
secrets yet: a client that asks for a secret-based method is told so plainly instead of getting
a registration it cannot use (the Python SDK refuses one with a method but no secret).

Unknown metadata (application_type, software_id, client_uri, logo_uri, ...) is stored and echoed,
as the RFC asks; only what the server itself issues (client_id, secrets, timestamps) is dropped.
"""

from __future__ import annotations

import time

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from auth.crypto import new_secret
from auth.http import BadRequest, oauth_error, read_json_object
from auth.models import Client
from auth.rfc8252 import RedirectURIError, check_registrable
from auth.server import AUTH_SERVER

MAX_REDIRECT_URIS = 10
SUPPORTED_GRANT_TYPES = ("authorization_code", "refresh_token")
# Fields the server assigns; a client cannot choose them.
_SERVER_ASSIGNED = frozenset({"client_id", "client_secret", "client_id_issued_at", "client_secret_expires_at",
                              "registration_access_token", "registration_client_uri"})


class RegistrationError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class ClientRegistrationRequest(BaseModel):
    """The fields we act on; everything else is kept in `model_extra` and echoed."""

    model_config = ConfigDict(extra="allow")

    redirect_uris: list[StrictStr] = Field(min_length=1, max_length=MAX_REDIRECT_URIS)
    token_endpoint_auth_method: StrictStr = "none"  # noqa: S105 - a method name
    grant_types: list[StrictStr] = Field(default_factory=lambda: list(SUPPORTED_GRANT_TYPES), min_length=1)
    response_types: list[StrictStr] = Field(default_factory=lambda: ["code"], min_length=1)
    client_name: StrictStr | None = Field(default=None, max_length=200)
    scope: StrictStr | None = Field(default=None, max_length=1000)


def _describe(exc: ValidationError) -> RegistrationError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    error = "invalid_redirect_uri" if first["loc"][:1] == ("redirect_uris",) else "invalid_client_metadata"
    return RegistrationError(error, f"{field}: {first['msg']}")


def build_client(body: dict[str, object], issued_at: int) -> Client:
    try:
        request = ClientRegistrationRequest.model_validate(body)
    except ValidationError as exc:
        raise _describe(exc) from exc
    for uri in request.redirect_uris:
        try:
            check_registrable(uri)
        except RedirectURIError as exc:
            raise RegistrationError("invalid_redirect_uri", str(exc)) from exc
    if request.token_endpoint_auth_method != "none":  # noqa: S105
        raise RegistrationError(
            "invalid_client_metadata",
            f"token_endpoint_auth_method {request.token_endpoint_auth_method!r} is not supported: this server "
            "registers public clients only (\"none\", with PKCE)",
        )
    unknown = [g for g in request.grant_types if g not in SUPPORTED_GRANT_TYPES]
    if unknown or "authorization_code" not in request.grant_types:
        raise RegistrationError("invalid_client_metadata",
                                "grant_types must include authorization_code and may add refresh_token only")
    if set(request.response_types) != {"code"}:
        raise RegistrationError("invalid_client_metadata", 'response_types must be ["code"]')
    extra = {k: v for k, v in (request.model_extra or {}).items() if k not in _SERVER_ASSIGNED}
    return Client(
        client_id=new_secret(24),
        client_id_issued_at=issued_at,
        redirect_uris=tuple(dict.fromkeys(request.redirect_uris)),
        token_endpoint_auth_method="none",  # noqa: S106
        grant_types=tuple(dict.fromkeys(request.grant_types)),
        response_types=("code",),
        client_name=request.client_name,
        scope=request.scope,
        metadata=extra,
    )


async def handle(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    try:
        body = await read_json_object(request)
        client = build_client(body, int(time.time()))
    except BadRequest as exc:
        return oauth_error("invalid_client_metadata", exc.description, exc.status)
    except RegistrationError as exc:
        return oauth_error(exc.error, exc.description)
    await server.store.save_client(client)
    return web.json_response(client.registration_response(), status=201,
                             headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

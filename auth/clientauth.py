"""Client authentication at /token and /revoke (RFC 6749 section 2.3), public clients only.

A public client identifies itself with `client_id` in the body (what every MCP client does) or
with HTTP Basic and an empty secret (what some generic OAuth libraries do). We issue no secrets,
so any presented secret is refused rather than ignored: a client that believes it has a secret is
misconfigured, and silently accepting it would hide that.

Refusals are `OAuth2Error`s (`invalid_client`, with a Basic challenge after Basic credentials,
RFC 6749 section 5.2). `authenticated_form` is the whole preamble /token and /revoke share.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from urllib.parse import unquote_plus

from aiohttp import web

from auth import cimd
from auth.cimd_fetch import ClientMetadataError
from auth.errors import OAuth2Error
from auth.http import client_address, read_form
from auth.models import Client
from auth.server import AuthorizationServer


def client_auth_error(error: str, description: str, status: int = 401, basic: bool = False) -> OAuth2Error:
    # Section 5.2: a 401 after Basic authentication must carry a matching challenge.
    headers = {"WWW-Authenticate": 'Basic realm="memory-mcp"'} if basic and status == 401 else None
    return OAuth2Error(error, description, status, headers)


def _basic_client_id(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise client_auth_error("invalid_client", "malformed Basic credentials", basic=True) from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon or secret:
        raise client_auth_error("invalid_client", "this server issues no client secrets; authenticate with client_id "
                              "only", basic=True)
    return unquote_plus(client_id)  # section 2.3.1: credentials are form-encoded before Basic


async def authenticate(server: AuthorizationServer, request: web.Request, form: dict[str, str]) -> Client:
    basic_id = _basic_client_id(request.headers.get("Authorization"))
    body_id = form.get("client_id")
    if basic_id is not None and body_id and basic_id != body_id:
        raise client_auth_error("invalid_request", "client_id in the body and in Basic credentials differ", 400)
    client_id = basic_id or body_id
    if not client_id:
        raise client_auth_error("invalid_client", "client_id is required")
    if form.get("client_secret"):
        raise client_auth_error("invalid_client", "this server issues no client secrets; send client_id only")
    try:
        # Registered, or known by its metadata document (auth.cimd); a stored document serves
        # when a re-fetch fails transiently, so a refresh survives the document host blinking.
        client = await cimd.lookup_client(server, client_id, client_address(request), allow_stale=True)
    except ClientMetadataError as exc:
        raise client_auth_error("invalid_client", exc.description, basic=basic_id is not None) from exc
    if client is None:
        raise client_auth_error("invalid_client", "unknown client; register again", basic=basic_id is not None)
    return client


async def authenticated_form(server: AuthorizationServer, request: web.Request, limit: int,
                             check: Callable[[dict[str, str]], None]) -> tuple[dict[str, str], Client]:
    """The preamble of /token and /revoke: the form (at most `limit` bytes), checked by `check`
    before the client is looked up (a malformed request costs no lookup or fetch), then the
    authenticated client. Every refusal is raised as an `OAuth2Error`."""
    form = await read_form(request, limit)
    check(form)
    return form, await authenticate(server, request, form)

"""The token endpoint (RFC 6749 sections 4.1.3 and 6, OAuth 2.1): code and refresh grants.

Both grants hinge on one atomic store operation: `consume_code` (a code is redeemed once, even
under concurrent requests) and `rotate_refresh_token` (a refresh token is exchanged once, MCP's
MUST for public clients). All tokens descending from one code share a `grant_id`, so revoking a
refresh token can take the whole family down (RFC 9700 section 4.14.2).

Access tokens last `access_token_ttl` (at least an hour: Claude Code refreshes five minutes
before expiry and would otherwise refresh before every request). A refresh keeps the grant's full
scope on the new refresh token even when the client narrows the access token (RFC 6749 section 6:
the refresh token's scope MUST stay identical).
"""

from __future__ import annotations

from aiohttp import web

from auth import rfc7636
from auth.clientauth import ClientAuthError, authenticate
from auth.crypto import hash_secret, new_secret
from auth.http import NO_STORE, BadRequest, oauth_error, read_form
from auth.models import Client, Token
from auth.rfc8707 import normalize_resource
from auth.scopes import join, parse
from auth.server import AUTH_SERVER, AuthorizationServer

TOKEN_FORM_LIMIT = 16 * 1024
GRANT_TYPES = ("authorization_code", "refresh_token")


class TokenError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _check_resource(form: dict[str, str], bound: str) -> None:
    """`resource` is optional at /token (not every client repeats it), but if sent it must name
    the resource the grant is bound to; slash, case and default-port variants are the same."""
    requested = form.get("resource")
    if requested and normalize_resource(requested) != normalize_resource(bound):
        raise TokenError("invalid_target", "resource does not match the authorization")


def _mint(server: AuthorizationServer, client: Client, subject: str, grant_id: str, access_scopes: tuple[str, ...],
          refresh_scopes: tuple[str, ...], resource: str, now: float) -> tuple[dict[str, object], list[Token]]:
    settings = server.settings
    access = new_secret()
    tokens = [Token(hash_secret(access), "access", grant_id, client.client_id, subject, access_scopes, resource,
                    now, now + settings.access_token_ttl)]
    body: dict[str, object] = {"access_token": access, "token_type": "Bearer",
                               "expires_in": int(settings.access_token_ttl)}
    if "refresh_token" in client.grant_types:
        refresh = new_secret()
        tokens.append(Token(hash_secret(refresh), "refresh", grant_id, client.client_id, subject, refresh_scopes,
                            resource, now, now + settings.refresh_token_ttl))
        body["refresh_token"] = refresh
    body["scope"] = join(access_scopes)
    return body, tokens


async def _code_grant(server: AuthorizationServer, client: Client, form: dict[str, str]) -> dict[str, object]:
    code, verifier = form.get("code"), form.get("code_verifier")
    if not code:
        raise TokenError("invalid_request", "code is required")
    if not verifier:
        raise TokenError("invalid_request", "code_verifier is required (PKCE)")
    if not rfc7636.valid_verifier(verifier):
        raise TokenError("invalid_grant", "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]")
    now = server.clock()
    # Consumed before checking who presents it and how: a code presented with a wrong verifier or
    # by the wrong client is burnt, so an intercepted code cannot be retried.
    record = await server.store.consume_code(hash_secret(code), now)
    if record is None:
        raise TokenError("invalid_grant", "the authorization code is invalid, expired or already used")
    if record.client_id != client.client_id:
        raise TokenError("invalid_grant", "the authorization code was issued to another client")
    redirect_uri = form.get("redirect_uri")
    if redirect_uri is None:
        # Allowed only when /authorize could omit it too: the client has exactly that one URI.
        if client.redirect_uris != (record.redirect_uri,):
            raise TokenError("invalid_request", "redirect_uri is required")
    elif redirect_uri != record.redirect_uri:
        raise TokenError("invalid_grant", "redirect_uri differs from the authorization request")
    if not rfc7636.verify(verifier, record.code_challenge):
        raise TokenError("invalid_grant", "PKCE verification failed")
    _check_resource(form, record.resource)
    body, tokens = _mint(server, client, record.subject, new_secret(16), record.scopes, record.scopes,
                         record.resource, now)
    await server.store.save_tokens(tokens)
    return body


async def _refresh_grant(server: AuthorizationServer, client: Client, form: dict[str, str]) -> dict[str, object]:
    refresh = form.get("refresh_token")
    if not refresh:
        raise TokenError("invalid_request", "refresh_token is required")
    now = server.clock()
    old_hash = hash_secret(refresh)
    record = await server.store.get_token(old_hash, now)
    if record is None or record.kind != "refresh":
        raise TokenError("invalid_grant", "the refresh token is invalid, expired or already used")
    if record.client_id != client.client_id:
        raise TokenError("invalid_grant", "the refresh token was issued to another client")
    requested = parse(form.get("scope"))
    if requested and not set(requested) <= set(record.scopes):
        raise TokenError("invalid_scope", "the requested scope exceeds the original grant")
    _check_resource(form, record.resource)
    access_scopes = tuple(s for s in record.scopes if s in requested) if requested else record.scopes
    body, tokens = _mint(server, client, record.subject, record.grant_id, access_scopes, record.scopes,
                         record.resource, now)
    if not await server.store.rotate_refresh_token(old_hash, tokens, now):
        raise TokenError("invalid_grant", "the refresh token is invalid, expired or already used")
    return body


async def handle(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    try:
        form = await read_form(request, TOKEN_FORM_LIMIT)
    except BadRequest as exc:
        return oauth_error("invalid_request", exc.description, exc.status)
    grant_type = form.get("grant_type")
    if not grant_type:
        return oauth_error("invalid_request", "grant_type is required")
    if grant_type not in GRANT_TYPES:
        return oauth_error("unsupported_grant_type", f"grant_type must be one of {', '.join(GRANT_TYPES)}")
    try:
        client = await authenticate(server, request, form)
    except ClientAuthError as exc:
        return exc.response()
    if grant_type not in client.grant_types:
        return oauth_error("unauthorized_client", f"this client did not register the {grant_type} grant")
    try:
        if grant_type == "authorization_code":
            body = await _code_grant(server, client, form)
        else:
            body = await _refresh_grant(server, client, form)
    except TokenError as exc:
        return oauth_error(exc.error, exc.description)
    return web.json_response(body, headers=NO_STORE)

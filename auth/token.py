"""The token endpoint (RFC 6749 sections 4.1.3 and 6, OAuth 2.1, RFC 9700): code and refresh grants.

Both grants hinge on one atomic store operation (`auth.store.GrantStore`):

* `consume_code`: a code is redeemed once. Its record stays, marked with the grant it started,
  until it would have expired; a second redemption is refused and revokes every token issued from
  the code (RFC 6749 4.1.2, RFC 9700 4.2.1), and the MCP layer ends that principal's sessions.
* `rotate_refresh_token`: a refresh token is exchanged once (MCP's MUST for public clients), with
  a grace window (`refresh_grace_seconds`): presented again within it, while the pair it was
  rotated to is still current, it gets that same pair (a lost response, two processes refreshing
  at once: nobody is logged out). Later, a superseded token revokes its whole family (RFC 9700
  4.14.2 replay detection) and the principal's sessions end.

The retry needs the plaintext of the pair, which is never stored: the response is sealed with
AES-GCM under a key derived (HKDF-SHA256) from the old refresh token, the way Cloudflare's
provider wraps grant keys. Only the holder of the old token can open it; the store holds
ciphertext and hashes.

Before a live refresh token is rotated, each sign-in method may refuse it (`auth.signin`,
`AuthorizationServer.refresh_checks`): with `upstream_check=refresh` the upstream provider is
asked whether the account is still allowed. A "no" signs the user out everywhere; "cannot tell
now" is a retryable 503 `temporarily_unavailable` with Retry-After, and the grant stays.

Lifetimes: access tokens `access_token_ttl` (at least an hour: Claude Code refreshes five minutes
before expiry), refresh tokens `refresh_token_ttl` from each rotation (sliding), and nothing of a
grant outlives `refresh_token_max_lifetime` after the user authenticated (absolute cap). A refresh
keeps the grant's full scope on the new refresh token even when the client narrows the access
token (RFC 6749 section 6: the refresh token's scope MUST stay identical).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from auth import oidc_core, personal, rfc7636
from auth.clientauth import authenticated_form
from auth.crypto import hash_secret, new_secret
from auth.errors import NO_STORE, OAuth2Error
from auth.models import Client, Revocation, Token
from auth.rfc8707 import normalize_resource
from auth.scopes import join, parse
from auth.server import AUTH_SERVER, AuthEvent, AuthorizationServer
from auth.settings import OPENID_SCOPE

log = logging.getLogger(__name__)

TOKEN_FORM_LIMIT = 16 * 1024
GRANT_TYPES = ("authorization_code", "refresh_token")
_SUCCESSOR_INFO = b"memory-mcp refresh successor"


def _check_resource(form: dict[str, str], bound: str) -> None:
    """`resource` is optional at /token (not every client repeats it), but if sent it must name
    the resource the grant is bound to; slash, case and default-port variants are the same."""
    requested = form.get("resource")
    if requested and normalize_resource(requested) != normalize_resource(bound):
        raise OAuth2Error("invalid_target", "resource does not match the authorization")


# Sealing a rotation's response under the refresh token it replaced.


def _successor_cipher(old_refresh: str) -> AESGCM:
    # HKDF without salt is sound here: the input is a 256-bit random secret, not a password.
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SUCCESSOR_INFO).derive(old_refresh.encode())
    return AESGCM(key)


def seal_successor(old_refresh: str, body: dict[str, object], access_expires_at: float) -> str:
    nonce = os.urandom(12)
    plain = json.dumps({"body": body, "access_expires_at": access_expires_at}).encode()
    # The old token's hash as associated data: a sealed response moved onto another record fails.
    sealed = _successor_cipher(old_refresh).encrypt(nonce, plain, hash_secret(old_refresh).encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def open_successor(old_refresh: str, sealed: str, now: float) -> dict[str, object] | None:
    try:
        raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
        plain = _successor_cipher(old_refresh).decrypt(raw[:12], raw[12:], hash_secret(old_refresh).encode())
    except (InvalidTag, ValueError, binascii.Error):
        return None
    data = json.loads(plain)
    body: dict[str, object] = data["body"]
    body["expires_in"] = max(0, int(data["access_expires_at"] - now))
    return body


# Issuing


async def _mint(server: AuthorizationServer, client: Client, *, subject: str, grant_id: str,
                access_scopes: tuple[str, ...], refresh_scopes: tuple[str, ...], resource: str, auth_time: float,
                nonce: str | None, now: float, memory: str | None) -> tuple[dict[str, object], list[Token], float]:
    """A token response, the records to store, and the access token's expiry. `memory`: the one
    the grant is bound to (`auth.memories`), carried by every token of it."""
    settings = server.settings
    # The absolute cap: nothing of this grant lives past it, however often it was refreshed.
    end = auth_time + settings.refresh_token_max_lifetime
    access = new_secret()
    access_expires_at = min(now + settings.access_token_ttl, end)
    tokens = [Token(hash_secret(access), "access", grant_id, client.client_id, subject, access_scopes, resource,
                    now, access_expires_at, auth_time=auth_time, memory=memory)]
    body: dict[str, object] = {"access_token": access, "token_type": "Bearer",
                               "expires_in": int(access_expires_at - now)}
    if "refresh_token" in client.grant_types:
        refresh = new_secret()
        tokens.append(Token(hash_secret(refresh), "refresh", grant_id, client.client_id, subject, refresh_scopes,
                            resource, now, min(now + settings.refresh_token_ttl, end), auth_time=auth_time,
                            memory=memory))
        body["refresh_token"] = refresh
    body["scope"] = join(access_scopes)
    if OPENID_SCOPE in access_scopes:
        body["id_token"] = await oidc_core.id_token(server, client_id=client.client_id, subject=subject,
                                                    auth_time=auth_time, nonce=nonce, access_token=access, now=now)
    return body, tokens, access_expires_at


async def _code_grant(server: AuthorizationServer, client: Client, form: dict[str, str]) -> dict[str, object]:
    code, verifier = form.get("code"), form.get("code_verifier")
    if not code:
        raise OAuth2Error("invalid_request", "code is required")
    if not verifier:
        raise OAuth2Error("invalid_request", "code_verifier is required (PKCE)")
    if not rfc7636.valid_verifier(verifier):
        raise OAuth2Error("invalid_grant", "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]")
    now = server.clock()
    code_hash = hash_secret(code)
    # Redeemed before checking who presents it and how: a code presented with a wrong verifier or
    # by the wrong client is burnt, so an intercepted code cannot be retried.
    redemption = await server.store.consume_code(code_hash, new_secret(16), now)
    if redemption.status == "replayed" and redemption.code is not None:
        replayed = redemption.code
        log.warning("authorization code replayed (client %s, user %s): grant %s revoked", replayed.client_id,
                    replayed.subject, replayed.grant_id)
        server.observe(AuthEvent.REPLAY_DETECTED, "authorization_code")
        await server.notify(Revocation(replayed.subject, replayed.client_id, replayed.grant_id))
        raise OAuth2Error("invalid_grant", "the authorization code was already used; the tokens issued for it "
                         "are revoked")
    record = redemption.code
    if redemption.status != "redeemed" or record is None or record.grant_id is None:
        raise OAuth2Error("invalid_grant", "the authorization code is invalid, expired or already used")
    if record.client_id != client.client_id:
        raise OAuth2Error("invalid_grant", "the authorization code was issued to another client")
    redirect_uri = form.get("redirect_uri")
    if redirect_uri is None:
        # Allowed only when /authorize could omit it too: the client has exactly that one URI.
        if client.redirect_uris != (record.redirect_uri,):
            raise OAuth2Error("invalid_request", "redirect_uri is required")
    elif redirect_uri != record.redirect_uri:
        raise OAuth2Error("invalid_grant", "redirect_uri differs from the authorization request")
    if not rfc7636.verify(verifier, record.code_challenge):
        raise OAuth2Error("invalid_grant", "PKCE verification failed")
    _check_resource(form, record.resource)
    body, tokens, _ = await _mint(server, client, subject=record.subject, grant_id=record.grant_id,
                                  access_scopes=record.scopes, refresh_scopes=record.scopes,
                                  resource=record.resource, auth_time=record.auth_time, nonce=record.nonce, now=now,
                                  memory=record.memory)
    if not await server.store.save_code_tokens(code_hash, tokens):
        # Replayed between redemption and now: the grant is revoked, so nothing may be issued.
        raise OAuth2Error("invalid_grant", "the authorization code was already used")
    return body


async def _refresh_grant(server: AuthorizationServer, client: Client, form: dict[str, str]) -> dict[str, object]:
    refresh = form.get("refresh_token")
    if not refresh:
        raise OAuth2Error("invalid_request", "refresh_token is required")
    now = server.clock()
    old_hash = hash_secret(refresh)
    record = await server.store.get_refresh_token(old_hash, now)
    if record is None:
        raise OAuth2Error("invalid_grant", "the refresh token is invalid, expired or already used")
    if record.client_id != client.client_id:
        raise OAuth2Error("invalid_grant", "the refresh token was issued to another client")
    body: dict[str, object] = {}
    tokens: list[Token] = []
    sealed = ""
    if record.superseded_at is None:
        # A live token: check the request and prepare the rotation. A superseded one goes
        # straight to the store, which tells a retry (same pair) from a replay.
        requested = parse(form.get("scope"))
        if requested and not set(requested) <= set(record.scopes):
            raise OAuth2Error("invalid_scope", "the requested scope exceeds the original grant")
        _check_resource(form, record.resource)
        access_scopes = tuple(s for s in record.scopes if s in requested) if requested else record.scopes
        # The sign-in methods' say (`auth.signin`): an upstream provider may no longer admit the
        # account (then every grant of it goes), or not be able to tell now (its OAuth2Error).
        for still_allowed in server.refresh_checks:
            if not await still_allowed(record.subject):
                log.warning("refresh refused: the account of user %s is no longer allowed by its sign-in provider; "
                            "signed out everywhere", record.subject)
                await server.sign_out_everywhere(record.subject)
                raise OAuth2Error("invalid_grant", "the account is no longer allowed to sign in here (its sign-in "
                                  "provider refused it); sign in again")
        auth_time = record.auth_time if record.auth_time is not None else record.issued_at
        body, tokens, access_expires_at = await _mint(
            server, client, subject=record.subject, grant_id=record.grant_id, access_scopes=access_scopes,
            refresh_scopes=record.scopes, resource=record.resource, auth_time=auth_time, nonce=None, now=now,
            memory=record.memory)
        sealed = seal_successor(refresh, body, access_expires_at)
    rotation = await server.store.rotate_refresh_token(old_hash, tokens, sealed, now,
                                                       server.settings.refresh_grace_seconds)
    if rotation.status == "rotated":
        return body
    if rotation.status == "retry" and rotation.successor is not None:
        previous = open_successor(refresh, rotation.successor, now)
        if previous is not None:
            return previous
    if rotation.status == "replayed":
        log.warning("superseded refresh token replayed (client %s, user %s): grant %s revoked", record.client_id,
                    record.subject, record.grant_id)
        server.observe(AuthEvent.REPLAY_DETECTED, "refresh_token")
        await server.notify(Revocation(record.subject, record.client_id, record.grant_id))
    raise OAuth2Error("invalid_grant", "the refresh token is invalid, expired or already used")


def _check_grant_type(form: dict[str, str]) -> None:
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuth2Error("invalid_request", "grant_type is required")
    if grant_type not in GRANT_TYPES:
        raise OAuth2Error("unsupported_grant_type", f"grant_type must be one of {', '.join(GRANT_TYPES)}")


async def handle(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    try:
        form, client = await authenticated_form(server, request, TOKEN_FORM_LIMIT, _check_grant_type)
        grant_type = form["grant_type"]
        if any(personal.is_personal(form.get(name) or "") for name in ("code", "refresh_token")):
            raise OAuth2Error("invalid_grant", "a personal access token is no grant: it cannot be refreshed or "
                              "exchanged here; send it as a bearer token to the MCP endpoint")
        if grant_type not in client.grant_types:
            raise OAuth2Error("unauthorized_client", f"this client did not register the {grant_type} grant")
        if grant_type == "authorization_code":
            body = await _code_grant(server, client, form)
        else:
            body = await _refresh_grant(server, client, form)
    except OAuth2Error as exc:
        server.observe(AuthEvent.TOKEN_ERROR, exc.error)
        raise
    server.observe(AuthEvent.TOKEN_ISSUED, grant_type)
    return web.json_response(body, headers=NO_STORE)

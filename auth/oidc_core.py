"""OpenID Connect Core 1.0: ID tokens from the token endpoint, and the UserInfo endpoint.

An ID token is issued when the grant's scope includes `openid` (section 3.1.3.3), signed RS256
with the current key of `auth.rfc7517` (`kid` in the header). Claims: `iss`, `sub` (the user's
random, never reused id: a public subject identifier), `aud` = the client, `exp`, `iat`,
`auth_time` (when the user typed the password in the browser login that approved this grant,
not when the code was issued: `auth.browser.Login`; section 12.2 requires the same value on
refresh, so the tokens of the grant carry it), `nonce` from /authorize on the code exchange
only (12.2: not on refresh), and `at_hash` binding it to the access token issued with it.
Profile claims are served by UserInfo only (section 5.4: an access token was issued, so that is
where they belong).

UserInfo (section 5.3) takes the access token as a bearer token in the header only, like the MCP
endpoints, and needs `openid` in its scope; `profile` adds `preferred_username`. A personal
access token is refused here (`auth.personal`): it was issued to no OpenID Connect client.
"""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web
from joserfc import jwt

from auth import personal, rfc7517
from auth.errors import NO_STORE, OAuth2Error
from auth.rfc6750 import BearerError, BearerVerifier
from auth.server import AUTH_SERVER, AuthorizationServer
from auth.settings import OPENID_SCOPE, PROFILE_SCOPE

USERINFO_PATH = "/userinfo"
CLAIMS_SUPPORTED = ("iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "preferred_username")


def at_hash(access_token: str) -> str:
    """Section 3.1.3.6: the left half of the SHA-256 of the access token, base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


async def id_token(server: AuthorizationServer, *, client_id: str, subject: str, auth_time: float,
                   nonce: str | None, access_token: str, now: float) -> str:
    kid, key = await rfc7517.current_key(server)
    claims: dict[str, object] = {
        "iss": server.settings.issuer, "sub": subject, "aud": client_id,
        "iat": int(now), "exp": int(now + server.settings.id_token_ttl), "auth_time": int(auth_time),
        "at_hash": at_hash(access_token),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    return jwt.encode({"alg": rfc7517.ALG, "kid": kid, "typ": "JWT"}, claims, key)


def _challenge(error: str | None, description: str, status: int = 401, scope: str | None = None) -> OAuth2Error:
    # RFC 6750 section 3, as section 5.3.3 asks; no `resource_metadata`: UserInfo is not an MCP
    # resource, and clients must not start an MCP authorization from it.
    challenge = 'Bearer realm="userinfo"'
    if error is not None:
        challenge += f', error="{error}", error_description="{description}"'
    if scope is not None:
        challenge += f', scope="{scope}"'
    return OAuth2Error(error or "invalid_request", description, status, {"WWW-Authenticate": challenge})


async def handle_userinfo(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    scheme, _, presented = (request.headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and personal.is_personal(presented.strip()):
        # Not an OpenID Connect client's token (auth.personal): refused before any lookup.
        raise _challenge("invalid_token", "personal access tokens are accepted by the MCP endpoints only")
    verifier = BearerVerifier(server.settings, server.store, clock=server.clock)
    try:
        grant = await verifier.verify(request.headers.get("Authorization"), "")
    except BearerError as exc:
        # The verifier's challenge points at the MCP resource; UserInfo answers with its own.
        raise _challenge(None if exc.error == "invalid_request" else exc.error, exc.description) from None
    if OPENID_SCOPE not in grant.scopes:
        raise _challenge("insufficient_scope", "this access token was not issued for OpenID Connect", 403,
                          OPENID_SCOPE)
    user = await server.store.get_user(grant.principal.subject)
    if user is None:
        raise _challenge("invalid_token", "the user no longer exists")
    claims: dict[str, object] = {"sub": user.id}
    if PROFILE_SCOPE in grant.scopes:
        claims["preferred_username"] = user.username
    return web.json_response(claims, headers=NO_STORE)

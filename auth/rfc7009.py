"""RFC 7009 token revocation for public clients (`client_id` only, like the token endpoint).

Revoking a refresh token ends its whole grant (every access and refresh token of the family);
revoking an access token ends that token. Unknown tokens, and tokens of another client, get the
same 200 as a success (section 2.2): the answer must not tell a caller which tokens exist.
`token_type_hint` is accepted and needs no use: one lookup by hash finds either kind.
A refresh token already rotated is no longer live (`auth.token`): revoking it is such an
unknown token; the client revokes the one it holds, which takes the family down.

A personal access token (`auth.personal`) presented here is revoked whichever registered client
presents it, and the live sessions that used it end: RFC 7009 lets the server revoke any token it
issued, and only the token's holder can present it, who is either its owner or someone it leaked
to (a secret scanner's report is acted on by revoking). The answer is the same 200 either way.
"""

from __future__ import annotations

from aiohttp import web

from auth import personal
from auth.clientauth import authenticated_form
from auth.crypto import hash_secret
from auth.errors import NO_STORE, OAuth2Error
from auth.models import Revocation
from auth.server import AUTH_SERVER, AuthEvent, AuthorizationServer

REVOKE_FORM_LIMIT = 16 * 1024


async def _revoke_personal(server: AuthorizationServer, token: str, token_hash: str) -> None:
    """Whichever client presents it (see the module): its holder is either its owner or someone
    it leaked to, and either way it must stop working."""
    record = await server.store.get_personal_token(token_hash, server.clock()) if personal.well_formed(token) else None
    if record is None or await server.store.delete_personal_token(record.id) is None:
        return
    server.observe(AuthEvent.TOKEN_REVOKED, "personal")
    await server.notify(Revocation(record.subject, personal.client_id(record.id), None))


def _check_token(form: dict[str, str]) -> None:
    if not form.get("token"):
        raise OAuth2Error("invalid_request", "token is required")


async def handle(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    form, client = await authenticated_form(server, request, REVOKE_FORM_LIMIT, _check_token)
    token = form["token"]
    token_hash = hash_secret(token)
    if personal.is_personal(token):
        await _revoke_personal(server, token, token_hash)
        return web.Response(status=200, headers=NO_STORE)
    record = await server.store.get_token(token_hash, server.clock())
    if record is not None and record.client_id == client.client_id:
        if record.kind == "refresh":
            await server.store.revoke_grant(record.grant_id)
        else:
            await server.store.delete_token(token_hash)
        server.observe(AuthEvent.TOKEN_REVOKED, record.kind)
        await server.notify(Revocation(record.subject, record.client_id, record.grant_id))
    return web.Response(status=200, headers=NO_STORE)

"""RFC 7009 token revocation for public clients (`client_id` only, like the token endpoint).

Revoking a refresh token ends its whole grant (every access and refresh token of the family);
revoking an access token ends that token. Unknown tokens, and tokens of another client, get the
same 200 as a success (section 2.2): the answer must not tell a caller which tokens exist.
`token_type_hint` is accepted and needs no use: one lookup by hash finds either kind.
A refresh token already rotated is no longer live (`auth.token`): revoking it is such an
unknown token; the client revokes the one it holds, which takes the family down.
"""

from __future__ import annotations

from aiohttp import web

from auth.clientauth import authenticated_form
from auth.crypto import hash_secret
from auth.errors import NO_STORE, OAuth2Error
from auth.models import Revocation
from auth.server import AUTH_SERVER, AuthEvent

REVOKE_FORM_LIMIT = 16 * 1024


def _check_token(form: dict[str, str]) -> None:
    if not form.get("token"):
        raise OAuth2Error("invalid_request", "token is required")


async def handle(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    form, client = await authenticated_form(server, request, REVOKE_FORM_LIMIT, _check_token)
    token = form["token"]
    token_hash = hash_secret(token)
    record = await server.store.get_token(token_hash, server.clock())
    if record is not None and record.client_id == client.client_id:
        if record.kind == "refresh":
            await server.store.revoke_grant(record.grant_id)
        else:
            await server.store.delete_token(token_hash)
        server.observe(AuthEvent.TOKEN_REVOKED, record.kind)
        await server.notify(Revocation(record.subject, record.client_id, record.grant_id))
    return web.Response(status=200, headers=NO_STORE)

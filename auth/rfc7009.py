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

from auth.clientauth import ClientAuthError, authenticate
from auth.crypto import hash_secret
from auth.http import NO_STORE, BadRequest, oauth_error, read_form
from auth.models import Revocation
from auth.server import AUTH_SERVER

REVOKE_FORM_LIMIT = 16 * 1024


async def handle(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    try:
        form = await read_form(request, REVOKE_FORM_LIMIT)
    except BadRequest as exc:
        return oauth_error("invalid_request", exc.description, exc.status)
    token = form.get("token")
    if not token:
        return oauth_error("invalid_request", "token is required")
    try:
        client = await authenticate(server, request, form)
    except ClientAuthError as exc:
        return exc.response()
    token_hash = hash_secret(token)
    record = await server.store.get_token(token_hash, server.clock())
    if record is not None and record.client_id == client.client_id:
        if record.kind == "refresh":
            await server.store.revoke_grant(record.grant_id)
        else:
            await server.store.delete_token(token_hash)
        await server.notify(Revocation(record.subject, record.client_id, record.grant_id))
    return web.Response(status=200, headers=NO_STORE)

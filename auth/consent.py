"""Remembered consent: an approval the user chose to remember, and the `/consents` page that
withdraws it.

What is remembered: the consent page has a "Remember this approval" checkbox, off by default.
Ticked, the approval is stored server-side (`auth.store.ConsentStore`) under the user, the
client, the exact redirect URI, the canonical resource and the exact scope set, for
`AuthSettings.consent_ttl`, with the memory the user chose (`auth.memories`): a request the
approval stands in for gets a code for that memory. The memory is what the approval says, not
part of what a request must match (the request does not name a memory; the page would have asked):
approving the same request again for another memory, and remembering it, replaces it. A later
`/authorize` skips the page only when all five are equal: a
new scope, another redirect URI (a loopback port included: native clients on ephemeral ports
will be asked again, the safe direction), another resource or another user all show the page.
Plain identifiers, no secret: a copy of the table lets no one act as the user. Server-side rather
than a cookie (Cloudflare's `__Host-oauth-approvals`) so that it can be listed and withdrawn from
any browser, and has no size limit (FastMCP #3747).

When it is used: only for a logged-in user, without `prompt=consent`, and only for a navigation the
browser says is first-party: `Sec-Fetch-Site` `none` (typed URL, bookmark, or a native app opening
the browser, which is how CLI clients start the flow) or `same-origin` (our own redirect to
/authorize after a consent form whose login ended), and `Sec-Fetch-Dest` `document` when sent. A
missing header fails closed, as in FastMCP's "remember" mode. Why: a silent approval answers with a
redirect, not a page, so `frame-ancestors` does not stop a third-party site from driving it in a
hidden frame or a navigation the user never meant; such a site could mint codes for the remembered
client at will (FastMCP GHSA-6x8h-498w-gv8c, the case for consent at all). The consent page stays
the default for cross-site starts (web clients like claude.ai), which only costs a click. A request
that had to log in first carries the verdict of its *first* navigation in its seal
(`AuthorizationRequest.prompt_consent`), which the login POST decides with
(`auth.authorize.resume`): the login POST itself is same-origin, and the login page does not name
the client.

Withdrawal: `/consents` lists the user's remembered approvals per client, each client with a
CSRF-protected "Forget and disconnect" button. It forgets every remembered approval of that
client *and* revokes the tokens and codes issued to it for this user, then tells the resource
servers so live MCP sessions end: someone who withdraws an approval means "this application must
stop", and forgetting the approval alone would leave it connected for up to 60 days of refresh.
Logout forgets every remembered approval as well as every token (sign out everywhere).
"""

from __future__ import annotations

from aiohttp import web

from auth import browser, csrf, memories, pages, signin
from auth.errors import PageError
from auth.models import RememberedConsent, Revocation, User
from auth.server import AUTH_SERVER, AuthorizationServer

REMEMBER_FIELD = "remember"
_FIRST_PARTY_SITES = frozenset({"none", "same-origin"})


def first_party_navigation(request: web.Request) -> bool:
    """Did the user (or our own pages) start this request, as opposed to another site?"""
    site = request.headers.get("Sec-Fetch-Site")
    dest = request.headers.get("Sec-Fetch-Dest")
    return site in _FIRST_PARTY_SITES and dest in (None, "document")


async def remembered(server: AuthorizationServer, user: User, client_id: str, redirect_uri: str,
                     resource: str, scopes: tuple[str, ...]) -> RememberedConsent | None:
    """The approval that stands in for the consent page, if there is one; its `memory` is the
    memory the new code is bound to (None: the default one). One whose memory is gone (deleted in
    the moment it was remembered: deleting a memory forgets its approvals) stands for nothing."""
    found = await server.store.find_consent(user.id, client_id, redirect_uri, resource, scopes, server.clock())
    if found is None or await memories.find_by_id(server.store, user, found.memory) is None:
        return None
    return found


async def remember(server: AuthorizationServer, user: User, client_id: str, redirect_uri: str, resource: str,
                   scopes: tuple[str, ...], memory: str | None = None) -> None:
    now = server.clock()
    await server.store.remember_consent(RememberedConsent(
        user_id=user.id, client_id=client_id, redirect_uri=redirect_uri, resource=resource, scopes=scopes,
        created_at=now, expires_at=now + server.settings.consent_ttl, memory=memory,
    ))


async def handle_consents_page(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    sess = await browser.session(request)
    user = await browser.current_user(request)
    if user is None:
        return signin.page(request, signin.SignInView(csrf.token(sess)))
    entries: list[pages.ConsentEntry] = []
    names = {m.id: m.name for m in await memories.memories_of(server.store, user)}
    for item in await server.store.list_consents(user.id, server.clock()):
        client = await server.store.get_client(item.client_id)
        entries.append(pages.ConsentEntry(
            client_id=item.client_id, client_name=client.client_name if client else None,
            redirect_uri=item.redirect_uri, resource=item.resource, scopes=item.scopes,
            expires_at=item.expires_at, memory=names.get(item.memory or user.id, memories.DEFAULT_NAME)))
    return pages.consents(csrf.token(sess), user.username, entries)


async def handle_withdraw(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    _, form = await browser.csrf_form(request, "Withdrawal failed")
    user = await browser.current_user(request)
    if user is None:
        raise PageError("You are not signed in.", 401, "Withdrawal failed")
    client_id = form.get("client_id")
    if not client_id:
        raise PageError("Choose an application.", 400, "Withdrawal failed")
    await server.store.withdraw_consents(user.id, client_id)
    await server.notify(Revocation(user.id, client_id, None))
    return web.Response(status=303, headers={"Location": server.settings.url("/consents"),
                                             "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

"""`/login` and `/logout`: the browser login that the consent page relies on, and the local-password
way of signing in (`PasswordSignIn`, one of the `auth.signin` methods; the `local_login` setting).

Signed out, a page of the application's (`auth.signin.RETURN_PATHS`) shows the sign-in page with
its own path in a `return_to` field; the login POST without a pending authorization redirects
there, and to `/login` for any value that is not exactly one of those paths.

A failed login says only "invalid username or password", with the same status and the same
argon2 work whether the user exists or not (no user enumeration). Attempts are throttled per
account and per source address before any of that work (`auth.throttle`: 429 with
`Retry-After`, the same for unknown users). A login starts a new session: new cookie, new login
id, new CSRF token (`auth.browser.log_in`, session fixation). A login that resumes an
authorization must come from the browser that opened it (binding cookie, `auth.browser`), and it
continues that authorization in its own answer (`auth.authorize.resume`: a page, never a redirect
off our origin, which the login page's CSP would block).

Logout signs the user out everywhere (`AuthorizationServer.sign_out_everywhere`): it ends every
browser login of the user, in every browser (the server-side records go, so a copied cookie or a
browser signed in with a phished password is signed out too), forgets the user's remembered
approvals (`auth.consent`) and revokes every token issued to the user's clients, which ends their
live MCP sessions through the revocation listeners. A person who signs out expects their agents
to lose access too, and not to come back without asking.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

from aiohttp import web

from auth import browser, csrf, pages, signin, throttle
from auth.accounts import NO_PASSWORD, PASSWORD_MAX, valid_username
from auth.authorize import redirect, resume
from auth.errors import PageError
from auth.http import client_address
from auth.passwords import BUSY_RETRY_AFTER, PasswordsBusy, hash_password, needs_rehash, verify_password
from auth.pending import AuthorizationRequest
from auth.server import AUTH_SERVER, AuthEvent
from auth.signin import SignInMethod, SignInView

log = logging.getLogger(__name__)


async def handle_login_page(request: web.Request) -> web.Response:
    sess = await browser.session(request)
    user = await browser.current_user(request)
    if user is not None:
        return pages.signed_in(csrf.token(sess), user.username)
    return signin.page(request, SignInView(csrf.token(sess)))


async def handle_login_off(request: web.Request) -> web.Response:
    """POST /login where password sign-in is turned off (`local_login=false`)."""
    raise PageError("Signing in with a password is turned off on this server. Use the sign-in page.", 403,
                    "Sign-in failed")


class PasswordSignIn(SignInMethod):
    """Local accounts (`memory-mcp users add`) and their argon2id passwords (module docstring)."""

    def __init__(self) -> None:
        self.routes = (("POST", "/login", self.handle_login),)

    def section(self, view: SignInView) -> str:
        return pages.password_form(view.csrf_token, view.seal, username=view.username, again=view.again,
                                   return_to=view.return_to)[0]

    async def _page(self, request: web.Request, sess_csrf: str, sealed: str | None, username: str, *,
                    failed: bool = False, retry_after: int | None = None, busy: bool = False,
                    return_to: str = "") -> web.Response:
        html, status = pages.password_form(sess_csrf, sealed, username=username, failed=failed,
                                           retry_after=retry_after, busy=busy, return_to=return_to)
        server = request.app[AUTH_SERVER]
        pending = browser.unseal(server.sealer, sealed, AuthorizationRequest) if sealed else None
        client = await server.store.get_client(pending.client_id) if pending else None
        return signin.page(request, SignInView(sess_csrf, sealed, pending, client, username, return_to=return_to),
                           own=self, own_html=html, status=status, retry_after=retry_after)

    async def handle_login(self, request: web.Request) -> web.Response:
        server = request.app[AUTH_SERVER]
        sess, form = await browser.csrf_form(request, "Sign-in failed")
        sealed = form.get("request")
        pending = browser.unseal(server.sealer, sealed, AuthorizationRequest) if sealed else None
        if sealed and pending is None:
            raise PageError("This authorization request has expired; start again from your application.")
        if pending is not None and not browser.bound(request, pending.binding):
            raise PageError(pages.OTHER_BROWSER, 403, "Sign-in failed")
        username = form.get("username", "")
        password = form.get("password", "")
        return_to = signin.return_path(request, form.get(pages.RETURN_FIELD))
        address = client_address(request)
        wait = await throttle.begin(server.limiter, username, address)
        if wait is not None:
            server.observe(AuthEvent.LOGIN_REFUSED, "throttled")
            log.warning("throttled login for %r from %s (%d s)", username[:64], address, wait)
            return await self._page(request, csrf.token(sess), sealed, username, retry_after=wait,
                                    return_to=return_to)
        user = await server.store.get_user_by_name(username) if valid_username(username) else None
        # Oversized passwords, and accounts without a password (upstream sign-in only), are verified
        # against the dummy hash: same work, no special response.
        plausible = user is not None and len(password) <= PASSWORD_MAX and user.password_hash != NO_PASSWORD
        # The hashing queue is shared per address as the throttle counts it (IPv6 per /64).
        source = throttle.address_key(address)
        try:
            ok = await verify_password(user.password_hash if plausible and user else None, password[:PASSWORD_MAX],
                                       source=source)
        except PasswordsBusy:
            await throttle.not_attempted(server.limiter, username, address)
            server.observe(AuthEvent.LOGIN_REFUSED, "busy")
            log.warning("login from %s refused: password checks busy", address)
            return await self._page(request, csrf.token(sess), sealed, username, retry_after=BUSY_RETRY_AFTER,
                                    busy=True, return_to=return_to)
        if not ok or user is None:
            # One line per failure, for fail2ban-style throttling in front of the server.
            server.observe(AuthEvent.LOGIN_REFUSED, "failed")
            log.warning("failed login for %r from %s", username[:64], address)
            return await self._page(request, csrf.token(sess), sealed, username, failed=True,
                                    return_to=return_to)
        await throttle.succeeded(server.limiter, username, address)
        if needs_rehash(user.password_hash):
            with contextlib.suppress(PasswordsBusy):  # upgraded at a quieter login
                rehashed = await hash_password(password, source=source)
                # Only over the hash just verified: a password changed meanwhile must stay changed.
                if await server.store.set_password_hash(user.id, rehashed, replacing=user.password_hash):
                    user = replace(user, password_hash=rehashed)
        signed_in = await browser.log_in(request, user)
        if signed_in is None:
            server.observe(AuthEvent.LOGIN_REFUSED, "failed")
            log.warning("login for %r from %s refused: the password changed while it was checked", username[:64],
                        address)
            return await self._page(request, csrf.token(sess), sealed, username, failed=True,
                                    return_to=return_to)
        new, login = signed_in
        csrf.token(new)
        if pending is None:
            return redirect(server.settings.url(return_to or "/login"))
        return await resume(server, new, pending, login)


async def handle_logout_page(request: web.Request) -> web.Response:
    sess = await browser.session(request)
    user = await browser.current_user(request)
    return pages.logout_confirm(csrf.token(sess), user.username if user else None)


async def handle_logout(request: web.Request) -> web.Response:
    await browser.csrf_form(request, "Sign-out failed")
    user = await browser.current_user(request)
    await browser.log_out(request)
    extra = ""
    if user is not None:
        await request.app[AUTH_SERVER].sign_out_everywhere(user.id)
        extra = "".join([await method.signed_out(user) for method in request.app[signin.METHODS]])
    return pages.signed_out(extra)

"""Signing in through the upstream OpenID provider: the `auth.signin` method, its two routes, and
the account it maps the upstream identity to.

    POST /login/upstream            the sign-in page's button: approve (or deny), then go upstream
    GET  /login/upstream/callback   the provider sends the browser back here (fixed path)

Flow: `/authorize` validates the client's request first (`auth.authorize`). With no live
browser login, the sign-in page shows this method's section: what the application asks, and
"Approve and sign in with <provider>" (the consent, taken before the browser leaves, so that the
callback can complete the authorization; a remembered approval is offered as on the consent
page). The POST answers with a page that navigates to the provider's authorization endpoint
(never a redirect: `form-action`, `auth.signin`) with `state`, `nonce` and a PKCE S256 challenge,
and sets this sign-in's pending cookie.

The pending cookie: one per sign-in in progress (named by a hash of its `state`, so several tabs
do not evict each other), `__Host-` and Secure over https, HttpOnly, SameSite=Lax (sent on the
provider's top-level redirect back), ten minutes. It holds, sealed with Fernet under a key of its
own purpose: the state, the nonce, the PKCE verifier, the sealed authorization request (with its
browser binding, `auth.browser`) and the approval. Nothing is stored server-side before the user
is known, so unauthenticated requests write nothing.

The callback, in order, each failure an error page (`PageError`) with nothing issued:
the pending cookie named by `state` exists, opens, and holds exactly that `state` (constant-time);
the cookie is deleted by this answer whatever happens (single use: a replayed callback finds none);
the authorization request is bound to this browser; the provider reported no error; `iss`, when
sent (RFC 9207) or advertised, is the provider's; the code is exchanged with the PKCE verifier;
the ID token is validated (`auth.upstream.id_token`, nonce included); the admission policy
admits the claims (`auth.upstream.admission`), *before* any account is created; the identity is
mapped to its local account (`link_upstream_user`: created on the first sign-in, linked by
(issuer, identity claim) and never by email); with `upstream_check=refresh` its refresh token is
kept (`auth.upstream.kept`); the browser signs in (a new session) and the original authorization
completes with this server's own code, on a page that navigates to the client (for an account
with several memories, the consent page first, to choose one: `auth.authorize.complete_approved`).

The provider's tokens never leave this server and never appear in a URL or log of ours; MCP
clients only ever hold this server's tokens.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel

from auth import browser, csrf, pages
from auth.accounts import NO_PASSWORD, valid_username
from auth.authorize import complete_approved, unknown_client, with_params
from auth.crypto import hash_secret, new_secret, same
from auth.errors import OAuth2Error, PageError
from auth.http import single_query
from auth.models import User
from auth.pending import AuthorizationRequest
from auth.rfc8252 import is_loopback
from auth.server import AuthorizationServer
from auth.signin import SignInMethod, SignInView
from auth.store import UserExistsError
from auth.upstream.client import NAME_CLAIMS, UpstreamClient
from auth.upstream.http import HTTP, BadResponse, Misconfigured, Refused, Unavailable, UpstreamError
from auth.upstream.id_token import LEEWAY
from auth.upstream.kept import AccountCheck, TokenCipher
from auth.upstream.settings import CALLBACK_PATH, UpstreamSettings

log = logging.getLogger(__name__)

START_PATH = "/login/upstream"
# A cookie holds about 4 KB with its name and attributes.
COOKIE_BUDGET = 3800
RETRY_AFTER = 30
TITLE = "Sign-in failed"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._@-]+")


class PendingSignIn(BaseModel):
    """What the pending cookie holds (module docstring)."""

    state: str
    nonce: str
    verifier: str
    request: AuthorizationRequest | None = None
    remember: bool = False
    started_at: float


class UpstreamSignIn(SignInMethod):
    def __init__(self, settings: UpstreamSettings, *, http: HTTP | None = None) -> None:
        self.settings = settings
        self._http = http
        self.name = urlsplit(settings.issuer).hostname or settings.issuer
        self.routes = (("POST", START_PATH, self.handle_start), ("GET", CALLBACK_PATH, self.handle_callback))

    def attach(self, server: AuthorizationServer, cookie_key: bytes) -> None:
        self.server = server
        self.sealer = browser.derive_fernet(cookie_key, "upstream sign-in")
        self.client = UpstreamClient(self.settings, server.settings.url(CALLBACK_PATH), clock=server.clock,
                                     http=self._http)
        self.check = (AccountCheck(self.client, server.store, TokenCipher(self.settings.token_keys), server.clock)
                      if self.settings.check == "refresh" else None)

    # The interface (auth.signin)

    def section(self, view: SignInView) -> str:
        req, client = view.pending, view.client
        if req is None or view.seal is None:
            return pages.upstream_section(view.csrf_token, None, provider=self.name)
        return pages.upstream_section(
            view.csrf_token, view.seal, provider=self.name, client_name=client.client_name if client else None,
            client_id=req.client_id, redirect_host=urlsplit(req.redirect_uri).netloc,
            loopback=is_loopback(req.redirect_uri), scopes=req.scopes, resource=req.resource, again=view.again)

    async def still_allowed(self, user_id: str) -> bool:
        if self.check is None:
            return True
        link = await self.server.store.get_upstream_link(user_id)
        if link is None:
            return True  # a local account: nothing upstream to ask
        if link.issuer.rstrip("/") != self.settings.issuer.rstrip("/"):
            log.warning("user %s was linked through %s, not the configured provider: the client must sign in again",
                        user_id, link.issuer)
            return False
        try:
            return await self.check.still_allowed(user_id, link.subject)
        except Unavailable as exc:
            raise OAuth2Error("temporarily_unavailable", f"the sign-in provider cannot confirm the account now "
                              f"({exc}); retry in {RETRY_AFTER} seconds", 503,
                              {"Retry-After": str(RETRY_AFTER)}) from None

    async def signed_out(self, user: User) -> str:
        if await self.server.store.get_upstream_link(user.id) is None:
            return ""
        url = await self.client.end_session_url(self.server.settings.url("/logout"))
        return pages.upstream_sign_out(url, self.name) if url else ""

    async def close(self) -> None:
        await self.client.close()

    # Routes

    def cookie_name(self, state: str) -> str:
        prefix = "__Host-" if self.server.settings.secure_cookies else ""
        return f"{prefix}memory-mcp-upstream-{hash_secret(state)[:16]}"

    def _failure(self, exc: UpstreamError) -> PageError:
        who = self.name
        if isinstance(exc, Unavailable):
            log.warning("upstream sign-in: %s", exc)
            error = PageError(f"{who} cannot be reached right now ({exc}). Try again in a minute.", 503, TITLE)
            error.headers["Retry-After"] = str(RETRY_AFTER)
            return error
        if isinstance(exc, Refused):
            log.warning("upstream sign-in refused: %s", exc)
            return PageError(f"{who} refused the sign-in: {exc}. Start again from your application.", 400, TITLE)
        if isinstance(exc, Misconfigured):
            log.error("upstream sign-in through %s is misconfigured: %s", who, exc)
            return PageError(f"Signing in through {who} is misconfigured on this server ({exc}). Tell the server's "
                             "operator.", 502, TITLE)
        log.warning("upstream sign-in: untrustworthy answer of the provider: %s", exc)
        return PageError(f"The answer of {who} could not be trusted ({exc}). Nothing was issued; start again from "
                         "your application.", 502, TITLE)

    async def handle_start(self, request: web.Request) -> web.Response:
        server = self.server
        _, form = await browser.csrf_form(request, TITLE)
        sealed = form.get("request")
        req = browser.unseal(server.sealer, sealed, AuthorizationRequest) if sealed else None
        if sealed and req is None:
            raise PageError("This authorization request has expired; start again from your application.", 400, TITLE)
        if req is not None:
            if not browser.bound(request, req.binding):
                raise PageError(pages.OTHER_BROWSER, 403, TITLE)
            decision = form.get("decision")
            if decision == "deny":
                params = {"error": "access_denied", "error_description": "the user denied the request"}
                if req.state is not None:
                    params["state"] = req.state
                params["iss"] = server.settings.issuer
                return pages.continue_to(with_params(req.redirect_uri, params))
            if decision != "approve":
                raise PageError("Choose approve or deny.", 400, TITLE)
            if await server.store.get_client(req.client_id) is None:
                raise unknown_client()
        try:
            metadata = await self.client.metadata()
        except UpstreamError as exc:
            raise self._failure(exc) from None
        pending = PendingSignIn(state=new_secret(), nonce=new_secret(), verifier=new_secret(), request=req,
                                remember=form.get("remember") == "1", started_at=server.clock())
        value = browser.seal(self.sealer, pending)
        if len(value) > COOKIE_BUDGET:
            raise PageError("This authorization request is too large to continue through the sign-in provider (its "
                            "redirect URI or state is unusually long).", 400, TITLE)
        url = self.client.authorization_url(
            metadata, state=pending.state, nonce=pending.nonce, verifier=pending.verifier,
            prompt_login=req is not None and (req.prompt_login or req.max_age == 0),
            max_age=req.max_age if req is not None and req.max_age else None)
        response = pages.continue_to(url, provider=self.name)
        response.set_cookie(self.cookie_name(pending.state), value, max_age=browser.SEAL_TTL, path="/",
                            secure=server.settings.secure_cookies, httponly=True, samesite="Lax")
        return response

    async def handle_callback(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "")
        name = self.cookie_name(state) if state else None
        try:
            response = await self._callback(request, state, request.cookies.get(name) if name else None)
        except OAuth2Error as exc:
            response = exc.response(page=True)
        if name is not None:
            # Single use, whatever the outcome: a replay of this callback finds no pending sign-in.
            response.del_cookie(name, path="/", secure=self.server.settings.secure_cookies, httponly=True,
                                samesite="Lax")
        return response

    async def _callback(self, request: web.Request, state: str, cookie: str | None) -> web.Response:
        server = self.server
        params = single_query(request)
        pending = browser.unseal(self.sealer, cookie, PendingSignIn) if cookie else None
        if pending is None or not same(pending.state, state):
            raise PageError(f"No sign-in through {self.name} is pending in this browser for this answer: it was "
                            "completed already, it expired, or it was started in another browser. Start again from "
                            "your application.", 400, TITLE)
        req = pending.request
        if req is not None and not browser.bound(request, req.binding):
            raise PageError(pages.OTHER_BROWSER, 403, TITLE)
        if "error" in params:
            error = params["error"][:64]
            description = params.get("error_description", "")[:200]
            log.info("upstream sign-in ended by the provider: %s", error)
            raise PageError(f"{self.name} did not sign you in ({error}{': ' + description if description else ''}). "
                            "Start again from your application.", 400, TITLE)
        try:
            metadata = await self.client.metadata()
            issuer = params.get("iss")
            if (issuer is not None and issuer != metadata.issuer) or (issuer is None and metadata.iss_parameter):
                raise BadResponse("the answer names another issuer (iss): a mix-up between providers")
            code = params.get("code")
            if not code:
                raise BadResponse("the answer carries no code")
            tokens = await self.client.exchange(code, pending.verifier)
            claims = await self.client.claims(tokens, nonce=pending.nonce,
                                              max_age=req.max_age if req is not None else None)
            identity = self.client.identity(claims)
        except UpstreamError as exc:
            raise self._failure(exc) from None
        auth_time = claims.get("auth_time")
        authenticated_at = float(auth_time) if isinstance(auth_time, int | float) and not isinstance(
            auth_time, bool) else None
        if (req is not None and req.prompt_login and authenticated_at is not None
                and authenticated_at < pending.started_at - LEEWAY):
            raise self._failure(BadResponse("the provider did not sign the user in again, as the application asked"))
        refused = self.client.refusal(identity, claims)
        if refused is not None:
            log.warning("upstream sign-in of %r through %s refused by the admission policy: %s", identity[:128],
                        self.name, refused)
            raise PageError(f"You signed in at {self.name}, but this server does not admit your account: {refused}.",
                            403, TITLE)
        if self.check is not None and not tokens.refresh_token:
            log.error("upstream_check=refresh needs a refresh token and %s issued none: request offline_access in "
                      "upstream_scopes (Auth0, Okta, Entra ID, oidc-provider, with prompt=consent in "
                      "upstream_authorize_params for the latter), or access_type=offline with prompt=consent in "
                      "upstream_authorize_params (Google)", self.name)
            raise PageError(f"{self.name} issued no refresh token, which this server's settings require "
                            "(upstream_check=refresh). Tell the server's operator.", 502, TITLE)
        user = await self._account(metadata.issuer, identity, claims)
        if self.check is not None and tokens.refresh_token:
            await self.check.keep(user.id, tokens.refresh_token)
        signed = await browser.log_in(request, user, authenticated_at)
        if signed is None:
            raise PageError("Your account changed while you were signing in. Start again from your application.",
                            409, TITLE)
        session, login = signed
        log.info("user %s signed in through %s", user.username, self.name)
        if req is None:
            return pages.signed_in(csrf.token(session), user.username)
        csrf.token(session)
        return await complete_approved(server, session, req, login, remember=pending.remember)

    async def _account(self, issuer: str, identity: str, claims: dict[str, object]) -> User:
        """The local account linked to this identity, created (with a name from the claims, made
        unique) on the first sign-in."""
        now = self.server.clock()
        base = _username(claims)
        digest = hashlib.sha256(f"{issuer}\x00{identity}".encode()).hexdigest()[:6]
        for username in (base, f"{base[:57]}-{digest}", f"user-{secrets.token_hex(6)}"):
            user = User(id=secrets.token_hex(16), username=username, password_hash=NO_PASSWORD, created_at=now)
            try:
                linked = await self.server.store.link_upstream_user(issuer, identity, user, now)
            except UserExistsError:
                continue
            if linked.id == user.id:
                log.info("created user %s for %r at %s", linked.username, identity[:128], issuer)
            return linked
        raise PageError("No account name could be chosen for you; try again.", 409, TITLE)


def _username(claims: dict[str, object]) -> str:
    for name in NAME_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str):
            candidate = _NAME_CHARS.sub("-", value).strip("-.")[:64]
            if valid_username(candidate):
                return candidate
    return "user"

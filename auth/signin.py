"""Who the user is: the one pluggable interface between the authorization server and the ways a
person signs in (the migration plan's `authenticate_user`).

The authorization server (`auth.authorize`, `auth.consent`, `auth.token` ...) never asks *how*
someone signed in. It needs three things, and a `SignInMethod` provides them:

* a part of the sign-in page (`section`), shown when `/authorize` (or `/login`, `/consents`) finds
  no live browser login: a form, a button, whatever starts that way of signing in, on the
  routes the method serves (`routes`, browser pages: they get the login cookie and error pages);
* once the method knows the user, a browser login (`auth.browser.log_in`, a new session), and the
  pending authorization continued (`auth.authorize.resume`: the consent page; or
  `auth.authorize.complete_approved` when the method took the approval before sending the
  browser away, as the upstream one does);
* at each refresh of a grant, the chance to say the account is no longer allowed
  (`still_allowed`; `auth.token` then signs the user out everywhere) or that this cannot be told
  now (an `OAuth2Error`, e.g. 503 `temporarily_unavailable`).

Two implementations ship: local passwords (`auth.login.PasswordSignIn`, the `local_login`
setting) and an upstream OpenID provider (`auth.upstream.flow.UpstreamSignIn`). A deployment adds
its own by passing it to `auth.routes.install(..., sign_in=[...])`, without touching the
authorization server: accounts are `auth.models.User` records in the store, whichever method
created them.

Every page a method serves keeps the page rules of `auth.pages`: no form of ours answers with a
redirect off our origin (a page that navigates instead, `pages.continue_to`), because Chromium
applies `form-action` to every redirect after a form submission.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from auth import pages
from auth.http import Handler
from auth.models import Client, User
from auth.pending import AuthorizationRequest
from auth.server import AuthorizationServer

Route = tuple[str, str, Handler]


@dataclass(frozen=True, slots=True)
class SignInView:
    """What the sign-in page is for: its CSRF token, the pending authorization (sealed for the
    forms, and as a model with the client asking, to describe it), and the name to prefill."""

    csrf_token: str
    seal: str | None = None
    pending: AuthorizationRequest | None = None
    client: Client | None = None
    username: str = ""
    # The browser is signed in, but the application asked for a fresh sign-in (prompt, max_age).
    again: bool = False
    # A page of ours to go back to once signed in (one of `RETURN_PATHS`), when there is no
    # pending authorization: the page that asked for the sign-in.
    return_to: str = ""


class SignInMethod:
    """One way to learn who the user is (module docstring). Override `section`, and whatever else
    the method needs; the defaults do nothing."""

    routes: Sequence[Route] = ()

    def attach(self, server: AuthorizationServer, cookie_key: bytes) -> None:
        """Called once by `auth.routes.install`, before any request."""

    def section(self, view: SignInView) -> str:
        """This method's part of the sign-in page (HTML; every value from outside escaped)."""
        raise NotImplementedError

    async def still_allowed(self, user_id: str) -> bool:
        """At each refresh of a grant of `user_id`: False when the account must not get new tokens
        (the grant is then revoked and the user signed out everywhere). Raise `OAuth2Error` when
        it cannot be told now (the client retries)."""
        return True

    async def signed_out(self, user: User) -> str:
        """HTML added to the signed-out page for `user` (e.g. an offer to sign out upstream)."""
        return ""

    async def close(self) -> None:
        """Release what the method holds (connections), when the app stops."""


METHODS: web.AppKey[tuple[SignInMethod, ...]] = web.AppKey("memory_mcp_sign_in_methods", tuple)
RETURN_PATHS: web.AppKey[frozenset[str]] = web.AppKey("memory_mcp_return_paths", frozenset)
"""The pages a sign-in may return to (`SignInView.return_to`): the application's own pages
(`auth.routes.install(pages=...)`) by exact path, so that the field can never send the browser
anywhere else."""


def return_path(request: web.Request, value: str | None) -> str:
    """`value` if it is one of `RETURN_PATHS`, else ""."""
    return value if value and value in request.app.get(RETURN_PATHS, frozenset()) else ""


def page(request: web.Request, view: SignInView, *, own: SignInMethod | None = None, own_html: str = "",
         status: int = 200, retry_after: int | None = None) -> web.Response:
    """The sign-in page: every method's section, in order; `own` (the method answering) shows
    `own_html` in its place (a failed password, a throttle)."""
    sections = [own_html if method is own else method.section(view) for method in request.app[METHODS]]
    return pages.sign_in([s for s in sections if s], status=status, retry_after=retry_after)

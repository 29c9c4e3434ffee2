"""Installs the authorization server on an aiohttp application (all paths at the root).

    GET  /.well-known/oauth-authorization-server       RFC 8414 (CORS)
    GET  /.well-known/oauth-protected-resource[/mcp|/sse]  RFC 9728 (CORS)
    POST /register                                     RFC 7591 (CORS)
    GET  /authorize                                    login or consent page
    GET  /login, POST /login                           browser login (POST: local passwords)
    POST /login/upstream, GET /login/upstream/callback sign-in through an upstream OpenID provider
    POST /consent                                      approve / deny -> redirect with code
    GET  /logout, POST /logout                         end the browser login
    GET  /consents, POST /consents                     remembered approvals, withdraw one
    POST /token                                        RFC 6749 code + refresh grants (CORS)
    POST /revoke                                       RFC 7009 (CORS)
    GET  /.well-known/openid-configuration             OpenID Connect Discovery (CORS)
    GET  /.well-known/jwks.json                        RFC 7517 ID-token signing keys (CORS)
    GET  /userinfo, POST /userinfo                     OpenID Connect UserInfo (CORS)
    GET  /setup, POST /setup                           the first account, from the one-time link

The application may add browser pages of its own (`install(app_pages=...)`: an account page),
which get the login cookie, error pages and a sign-in that returns to them, and may replace one of
these by method and path.

Handlers raise `auth.errors.OAuth2Error` for every refusal; `auth.errors.middleware`, installed
here, is where it becomes a response (a page on the browser paths), as `_store_unavailable` is
for a store that cannot answer now.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from auth import (
    authorize,
    browser,
    consent,
    errors,
    login,
    oidc_core,
    oidc_discovery,
    pages,
    rfc7009,
    rfc7517,
    rfc7591,
    rfc8414,
    rfc9728,
    setup,
    signin,
    token,
)
from auth.http import (
    CORS_HEADERS,
    Handler,
    forwarded_middleware,
    json_method_not_allowed,
    oauth_error,
    preflight,
    with_cors,
)
from auth.models import Revocation
from auth.server import AUTH_SERVER, AuthorizationServer
from auth.settings import AuthSettings
from auth.store import AuthStore, StoreUnavailable

__all__ = ["AUTH_SERVER", "AuthorizationServer", "Revocation", "install"]

"""The endpoints a browser shows: their errors are pages, the others' are OAuth JSON."""


def install(app: web.Application, *, settings: AuthSettings, store: AuthStore, cookie_key: bytes,
            sign_in: Sequence[signin.SignInMethod] | None = None,
            app_pages: Sequence[signin.Route] = ()) -> AuthorizationServer:
    """`sign_in`: the ways people sign in, in the order the sign-in page shows them (`auth.signin`);
    default local passwords alone. `app_pages`: the application's own browser pages (an account
    page), served like ours: the login cookie, error pages, a sign-in that
    returns to them (`signin.RETURN_PATHS`, their GET paths). One with the method and path of one
    of ours replaces it."""
    server = AuthorizationServer(settings=settings, store=store,
                                 sealer=browser.derive_fernet(cookie_key, "pending authorization"),
                                 key_sealer=rfc7517.private_key_cipher(cookie_key))
    app[AUTH_SERVER] = server
    methods = tuple(sign_in) if sign_in is not None else (login.PasswordSignIn(),)
    app[signin.METHODS] = methods
    for method in methods:
        method.attach(server, cookie_key)
        server.refresh_checks.append(method.still_allowed)

    async def close_methods(_app: web.Application) -> None:
        for method in methods:
            await method.close()

    app.on_cleanup.append(close_methods)
    if settings.trusted_proxies:
        # First: every later middleware and handler, and the access log, see the client's address.
        app.middlewares.insert(0, forwarded_middleware(settings.trusted_proxies, settings.proxy_header))
    # The browser pages, declared once: routed here, and the only paths with the login cookie.
    browser_routes: list[signin.Route] = [
        ("GET", "/authorize", authorize.handle_authorize),
        ("POST", "/consent", authorize.handle_consent),
        ("GET", "/login", login.handle_login_page),
        ("GET", "/logout", login.handle_logout_page),
        ("POST", "/logout", login.handle_logout),
        ("GET", "/consents", consent.handle_consents_page),
        ("POST", "/consents", consent.handle_withdraw),
        # The first account is a password account: only where passwords sign in.
        *(setup.SetupPage(cookie_key).routes if any(isinstance(m, login.PasswordSignIn) for m in methods) else ()),
        *(route for method in methods for route in method.routes),
    ]
    replaced = {(verb, path) for verb, path, _ in app_pages}
    browser_routes = [route for route in browser_routes if route[:2] not in replaced] + list(app_pages)
    app[signin.RETURN_PATHS] = frozenset(path for verb, path, _ in app_pages if verb == "GET")
    if not any(route[:2] == ("POST", "/login") for route in browser_routes):
        browser_routes.append(("POST", "/login", login.handle_login_off))
    browser_paths = frozenset(path for _, path, _ in browser_routes)
    app.middlewares.append(browser.middleware(browser.cookie_storage(settings, cookie_key), browser_paths))
    before = set(app.router.resources())

    def cors(path: str, method: str, handler: Handler) -> None:
        if method == "GET":  # add_get's default; add_route adds no HEAD, which would then be a 405
            app.router.add_route("HEAD", path, with_cors(handler))
        app.router.add_route(method, path, with_cors(handler))
        app.router.add_route("OPTIONS", path, preflight)

    cors(rfc8414.PATH, "GET", rfc8414.handle)
    cors(rfc9728.PREFIX, "GET", rfc9728.handler_for(""))
    for path in settings.resource_paths:
        cors(rfc9728.PREFIX + path, "GET", rfc9728.handler_for(path))
    cors(oidc_discovery.PATH, "GET", oidc_discovery.handle)
    cors(rfc7517.PATH, "GET", rfc7517.handle)
    cors(oidc_core.USERINFO_PATH, "GET", oidc_core.handle_userinfo)
    app.router.add_post(oidc_core.USERINFO_PATH, with_cors(oidc_core.handle_userinfo))
    for path, handler in (("/register", rfc7591.handle), ("/token", token.handle), ("/revoke", rfc7009.handle)):
        cors(path, "POST", handler)
        app.router.add_route("*", path, json_method_not_allowed)

    for verb, path, page_handler in browser_routes:
        if verb == "GET":
            app.router.add_get(path, page_handler)  # and HEAD
        else:
            app.router.add_route(verb, path, page_handler)
    # Both inside the browser session middleware, so that an error page still carries the
    # session's cookie; they catch different exceptions, so their order between them is free.
    app.middlewares.append(errors.middleware(browser_paths))
    app.middlewares.append(_store_unavailable(frozenset(set(app.router.resources()) - before), browser_paths))
    return server


def _store_unavailable(ours: frozenset[web.AbstractResource], pages_at: frozenset[str]) -> Middleware:
    """The one place a store that cannot answer now (`StoreUnavailable`) becomes a response on
    this server's endpoints: 503 with Retry-After, as OAuth JSON or, on a browser page, a page.
    Never a 500: the request can simply be retried."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            if request.match_info.route.resource not in ours:
                raise
            retry = {"Retry-After": str(exc.retry_after)}
            if request.path in pages_at:
                response = pages.error(f"The server cannot complete this right now: {exc.reason}. "
                                       f"Try again in {exc.retry_after} seconds.", 503,
                                       title="Temporarily unavailable")
                response.headers.update(retry)
                return response
            return oauth_error("temporarily_unavailable",
                               f"{exc.reason}; retry in {exc.retry_after} seconds", 503,
                               headers={**retry, **CORS_HEADERS})

    return middleware

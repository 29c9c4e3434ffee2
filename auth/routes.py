"""Installs the authorization server on an aiohttp application (all paths at the root).

    GET  /.well-known/oauth-authorization-server       RFC 8414 (CORS)
    GET  /.well-known/oauth-protected-resource[/mcp|/sse]  RFC 9728 (CORS)
    POST /register                                     RFC 7591 (CORS)
    GET  /authorize                                    login or consent page
    GET  /login, POST /login                           browser login
    POST /consent                                      approve / deny -> redirect with code
    GET  /logout, POST /logout                         end the browser login
    GET  /consents, POST /consents                     remembered approvals, withdraw one
    POST /token                                        RFC 6749 code + refresh grants (CORS)
    POST /revoke                                       RFC 7009 (CORS)
    GET  /.well-known/openid-configuration             OpenID Connect Discovery (CORS)
    GET  /.well-known/jwks.json                        RFC 7517 ID-token signing keys (CORS)
    GET  /userinfo, POST /userinfo                     OpenID Connect UserInfo (CORS)
"""

from __future__ import annotations

from aiohttp import web

from auth import (
    authorize,
    browser,
    consent,
    login,
    oidc_core,
    oidc_discovery,
    rfc7009,
    rfc7517,
    rfc7591,
    rfc8414,
    rfc9728,
    token,
)
from auth.http import Handler, json_method_not_allowed, preflight, with_cors
from auth.models import Revocation
from auth.server import AUTH_SERVER, AuthorizationServer
from auth.settings import AuthSettings
from auth.store import AuthStore

__all__ = ["AUTH_SERVER", "AuthorizationServer", "Revocation", "install"]


def install(app: web.Application, *, settings: AuthSettings, store: AuthStore,
            cookie_key: bytes) -> AuthorizationServer:
    server = AuthorizationServer(settings=settings, store=store,
                                 sealer=browser.derive_fernet(cookie_key, "pending authorization"),
                                 key_sealer=rfc7517.private_key_cipher(cookie_key))
    app[AUTH_SERVER] = server
    # The browser pages, declared once: routed here, and the only paths with the login cookie.
    browser_routes = (
        ("GET", "/authorize", authorize.handle_authorize),
        ("POST", "/consent", authorize.handle_consent),
        ("GET", "/login", login.handle_login_page),
        ("POST", "/login", login.handle_login),
        ("GET", "/logout", login.handle_logout_page),
        ("POST", "/logout", login.handle_logout),
        ("GET", "/consents", consent.handle_consents_page),
        ("POST", "/consents", consent.handle_withdraw),
    )
    browser_paths = frozenset(path for _, path, _ in browser_routes)
    app.middlewares.append(browser.middleware(browser.cookie_storage(settings, cookie_key), browser_paths))

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

    for method, path, handler in browser_routes:
        if method == "GET":
            app.router.add_get(path, handler)  # and HEAD
        else:
            app.router.add_route(method, path, handler)
    return server

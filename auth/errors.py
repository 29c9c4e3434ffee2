"""The authorization server's one error type, `OAuth2Error` (as authlib's), and where it becomes a
response.

Handlers raise; they do not format. `middleware` (installed by `auth.routes` inside the browser
session middleware, so a page answered for an error still carries the session's cookie) turns
every `OAuth2Error` into its response in one place:

* on the JSON endpoints, the RFC 6749 section 5.2 body (`error`, `error_description`), never
  cached, with the error's extra headers (a Basic challenge, Retry-After, CORS added by
  `auth.http.with_cors`);
* on the browser pages, the HTML error page (`auth.pages.error`) with the same status.

Subclasses carry their own rendering where it is fixed whatever the path: `PageError` (always a
page, with its title) and `auth.rfc6750.BearerError` (the WWW-Authenticate challenge). `BadRequest`
(the body or query itself is refused) is the `invalid_request` the body readers raise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from auth import pages

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuth2Error(Exception):
    """An error code (RFC 6749 section 5.2, RFC 7591 section 3.2.2, RFC 6750 section 3.1), what
    to tell the caller, the HTTP status, and headers the response must carry."""

    def __init__(self, error: str, description: str, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def response(self, page: bool = False) -> web.Response:
        if page:
            response = pages.error(self.description, self.status)
            response.headers.update(self.headers)
            return response
        return web.json_response({"error": self.error, "error_description": self.description},
                                 status=self.status, headers={**NO_STORE, **self.headers})


class BadRequest(OAuth2Error):
    """A request the endpoint refuses before looking at its meaning (size, encoding, syntax).
    `error` is `invalid_request` except where the endpoint's RFC names another code for it
    (RFC 7591 section 3.2.2 has no invalid_request: a refused registration body is
    `invalid_client_metadata`)."""

    def __init__(self, description: str, status: int = 400, error: str = "invalid_request") -> None:
        super().__init__(error, description, status)


class PageError(OAuth2Error):
    """An error for the user's browser, always an HTML page (with `title`): the request cannot
    go back to the client, because its redirect URI is not (yet) trusted or the request is the
    browser's own form."""

    def __init__(self, description: str, status: int = 400, title: str = "Authorization failed", *,
                 hint_html: str = "") -> None:
        """`hint_html`: what to do next, as markup of ours (default: start the login again)."""
        super().__init__("invalid_request", description, status)
        self.title = title
        self.hint_html = hint_html

    def response(self, page: bool = True) -> web.Response:
        response = pages.error(self.description, self.status, self.title, hint_html=self.hint_html)
        response.headers.update(self.headers)
        return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(pages_at: frozenset[str]) -> Middleware:
    """The one place an `OAuth2Error` becomes a response: a page on the browser paths
    (`pages_at`), the error's own form everywhere else."""

    @web.middleware
    async def translate(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except OAuth2Error as exc:
            return exc.response(page=request.path in pages_at)

    return translate

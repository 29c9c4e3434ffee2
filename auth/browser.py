"""The browser side of the authorization server: the login cookie and sealed pending requests.

Cookie: aiohttp-session's `EncryptedCookieStorage` (Fernet), HttpOnly, SameSite=Lax, and Secure
with the `__Host-` prefix when the issuer is https (no Domain, Path=/: it cannot be planted by a
sibling subdomain). It holds only a random login id and the CSRF token. The login id is also
recorded server-side (hashed) with `create_browser_session`, and every request that relies on the
login looks the record up: sign-out everywhere, a password change and user removal delete the
user's records (`auth.accounts.sign_out_everywhere`), which ends every browser's login at once,
including a copied cookie or a second browser signed in with a phished password. The record also
keeps when the user typed the password: the OpenID Connect `auth_time` (`Login.auth_time`).

Pending authorization requests are *not* kept in the cookie: a validated request is sealed
(Fernet, 10-minute TTL) into a hidden field of the login and consent forms. A cookie would cap
the request at ~4 KB (registered redirect URIs may be 2,000 characters, `state` is unbounded),
evict one tab's pending request when another tab starts one, and a store table would let
unauthenticated GETs write to the database. The seal makes the fields tamper-proof; the CSRF
token and the subject bound into a consent seal tie the POST to this browser and this login.

Browser binding (FastMCP GHSA-rww4-4w9c-7733): a seal must only be completable by the browser
that started the authorization, not by whoever obtains the sealed field (copied from a page,
leaked by a proxy log, or planted in a victim's form by an attacker who started the flow with
its own PKCE challenge). `/authorize` gives the browser a random value in a dedicated cookie
(`__Host-` and Secure over https, HttpOnly, SameSite=Lax, lifetime of a pending request) and
seals its hash into the request; `/login` and `/consent` refuse a seal whose hash differs from
the cookie they receive. It is a cookie of its own, not a session-cookie entry, because the
session is replaced at login (session fixation) while the pending request must survive it. The
value is reused while the cookie lives, so several tabs can authorize at once.

The session middleware only runs on the browser paths: elsewhere (`/mcp`, `/sse`) it would cost a
cookie decryption per request for nothing, and it raises on prepared (streamed) `web.Response`s.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ValidationError

from auth import csrf, pages
from auth.crypto import hash_secret, new_secret, same
from auth.errors import BadRequest, PageError
from auth.http import read_form
from auth.models import User
from auth.server import AUTH_SERVER
from auth.settings import AuthSettings

SEAL_TTL = 600
# Outlives any seal it binds: it is set again (same value) at every /authorize.
BINDING_TTL = 2 * SEAL_TTL
_BINDING_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")
_LOGIN_KEY = "login"

M = TypeVar("M", bound=BaseModel)


def _key_material(cookie_key: bytes) -> bytes:
    """Accept 32 raw bytes or a Fernet key (its urlsafe base64 form, as `Fernet.generate_key()`
    returns). aiohttp-session would base64 the latter once more and fail (docs/decisions.md#6)."""
    if len(cookie_key) == 32:
        return bytes(cookie_key)
    try:
        raw = base64.urlsafe_b64decode(cookie_key)
    except ValueError as exc:
        raise ValueError("cookie_key must be 32 raw bytes or a Fernet key") from exc
    if len(raw) != 32:
        raise ValueError("cookie_key must be 32 raw bytes or a Fernet key")
    return raw


def derive_fernet(cookie_key: bytes, purpose: str) -> Fernet:
    """Separate keys per purpose, so a sealed request can never be replayed as a cookie."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"memory-mcp {purpose}".encode())
    return Fernet(base64.urlsafe_b64encode(hkdf.derive(_key_material(cookie_key))))


def cookie_storage(settings: AuthSettings, cookie_key: bytes) -> EncryptedCookieStorage:
    secure = settings.secure_cookies
    return EncryptedCookieStorage(
        derive_fernet(cookie_key, "session cookie"),
        cookie_name="__Host-memory-mcp-login" if secure else "memory-mcp-login",
        max_age=settings.login_ttl,
        path="/",
        secure=secure,
        httponly=True,
        samesite="Lax",
    )


def middleware(storage: EncryptedCookieStorage, browser_paths: frozenset[str]) -> Middleware:
    """`browser_paths`: where the session cookie is read and written (auth.routes declares them),
    and the binding cookie sent (`refresh_binding`)."""
    inner = session_middleware(storage)

    @web.middleware
    async def browser_session(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in browser_paths:
            return await handler(request)
        # Outside `auth.errors.middleware`: the response seen here is the final one, error pages
        # and error redirects included.
        response = await inner(request, handler)
        _send_binding(request, response)
        return response

    return browser_session


async def session(request: web.Request) -> Session:
    return await get_session(request)


async def csrf_form(request: web.Request, title: str = "Authorization failed") -> tuple[Session, dict[str, str]]:
    """The preamble of every form the browser posts: the session and the form, refused as a
    page titled `title` when the body cannot be read (its status) or the CSRF token does not
    match this session (403)."""
    sess = await session(request)
    try:
        form = await read_form(request)
    except BadRequest as exc:
        raise PageError(exc.description, exc.status, title) from exc
    if not csrf.valid(sess, form.get(csrf.FIELD)):
        raise PageError(pages.CSRF_FAILED, 403, title)
    return sess, form


@dataclass(frozen=True, slots=True)
class Login:
    """This browser's live login: who, when they typed the password, and the hash of the login
    id (what a code approved under this login is bound to, `GrantStore.save_code`)."""

    user: User
    auth_time: float
    login_hash: str


async def current_login(request: web.Request) -> Login | None:
    """The login of this browser, if the cookie's login is still recorded server-side."""
    sess = await get_session(request)
    login_id = sess.get(_LOGIN_KEY)
    if not isinstance(login_id, str):
        return None
    server = request.app[AUTH_SERVER]
    login_hash = hash_secret(login_id)
    record = await server.store.get_browser_session(login_hash, server.clock())
    user = await server.store.get_user(record.user_id) if record else None
    if record is None or user is None:
        del sess[_LOGIN_KEY]
        return None
    return Login(user, record.authenticated_at, login_hash)


async def current_user(request: web.Request) -> User | None:
    login = await current_login(request)
    return login.user if login else None


async def log_in(request: web.Request, user: User,
                 authenticated_at: float | None = None) -> tuple[Session, Login] | None:
    """Start a new session for `user`, whose password was just verified against
    `user.password_hash`: a new cookie and CSRF token, so that nothing an attacker planted before
    the login (session fixation) survives it. None when that hash is no longer the user's (the
    password was changed or the account removed while it was being verified): no login then.
    `authenticated_at`: when the user actually authenticated, if earlier than now (an upstream
    provider's `auth_time`); the login's `auth_time`."""
    server = request.app[AUTH_SERVER]
    current = await get_session(request)
    old = current.pop(_LOGIN_KEY, None)
    if isinstance(old, str):
        await server.store.delete_browser_session(hash_secret(old))
    login_id = new_secret()
    login_hash = hash_secret(login_id)
    now = server.clock()
    at = now if authenticated_at is None else min(now, authenticated_at)
    if not await server.store.create_browser_session(login_hash, user.id, user.password_hash, at,
                                                     now + server.settings.login_ttl):
        return None
    sess = await new_session(request)
    sess[_LOGIN_KEY] = login_id
    return sess, Login(user, at, login_hash)


async def log_out(request: web.Request) -> None:
    sess = await get_session(request)
    login_id = sess.get(_LOGIN_KEY)
    if isinstance(login_id, str):
        await request.app[AUTH_SERVER].store.delete_browser_session(hash_secret(login_id))
    sess.invalidate()


def binding_cookie_name(settings: AuthSettings) -> str:
    return "__Host-memory-mcp-binding" if settings.secure_cookies else "memory-mcp-binding"


def binding(request: web.Request) -> str:
    """This browser's binding value: the one its cookie holds, or a new one."""
    value = request.cookies.get(binding_cookie_name(request.app[AUTH_SERVER].settings), "")
    return value if _BINDING_VALUE.fullmatch(value) else new_secret()


_BINDING = web.RequestKey("binding", str)


def refresh_binding(request: web.Request) -> str:
    """This browser's binding value (`binding`), sent back by `middleware` with whatever
    response the request gets, error pages and redirects included, so that no handler or error
    path has to remember it."""
    value = request[_BINDING] = binding(request)
    return value


def _send_binding(request: web.Request, response: web.StreamResponse) -> None:
    value = request.get(_BINDING)
    if value is not None:
        settings = request.app[AUTH_SERVER].settings
        response.set_cookie(binding_cookie_name(settings), value, max_age=BINDING_TTL, path="/",
                            secure=settings.secure_cookies, httponly=True, samesite="Lax")


def bound(request: web.Request, binding_hash: str) -> bool:
    """Does this request come from the browser whose binding value hashes to `binding_hash`?"""
    value = request.cookies.get(binding_cookie_name(request.app[AUTH_SERVER].settings), "")
    return bool(binding_hash) and bool(_BINDING_VALUE.fullmatch(value)) and same(hash_secret(value), binding_hash)


def seal(fernet: Fernet, model: BaseModel) -> str:
    return fernet.encrypt(model.model_dump_json().encode()).decode("ascii")


def unseal(fernet: Fernet, sealed: str | None, model: type[M]) -> M | None:
    if not sealed:
        return None
    try:
        data = fernet.decrypt(sealed.encode("ascii", "replace"), ttl=SEAL_TTL)
        return model.model_validate_json(data)
    except (InvalidToken, ValidationError):
        return None

"""The authorization server object that `auth.routes.install` returns, and its app keys."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.fernet import Fernet

from auth import accounts
from auth.cimd_fetch import DocumentFetcher
from auth.models import Revocation, User
from auth.ratelimit import MemoryRateLimiter, RateLimiter
from auth.settings import AuthSettings
from auth.store import AuthStore

log = logging.getLogger(__name__)


RevocationListener = Callable[[Revocation], Awaitable[None]]
# Asked before each refresh of a grant, with its subject: False refuses it (`auth.signin`).
RefreshCheck = Callable[[str], Awaitable[bool]]


class AuthEvent(enum.Enum):
    """What the authorization server tells its observers (metrics), with a detail from a fixed
    set: never a user, client, token or address, so that whoever counts them by detail stays
    bounded."""

    LOGIN_REFUSED = enum.auto()
    """detail: `failed` (wrong user name or password), `throttled`, `busy` (password checks busy)."""
    TOKEN_ERROR = enum.auto()
    """The token endpoint refused a request; detail: the OAuth error code."""
    TOKEN_ISSUED = enum.auto()
    """detail: the grant type (`authorization_code` or `refresh_token`)."""
    TOKEN_REVOKED = enum.auto()
    """At the revocation endpoint; detail: the kind of token (`access`, `refresh` or `personal`)."""
    REPLAY_DETECTED = enum.auto()
    """A redeemed code or a superseded refresh token presented again, and its grant revoked;
    detail: `authorization_code` or `refresh_token`."""


AuthObserver = Callable[[AuthEvent, str], None]
"""Called on the event loop for every event: must be quick and must not raise."""


@dataclass(eq=False)
class AuthorizationServer:
    settings: AuthSettings
    store: AuthStore
    # Seals pending authorization requests into the login and consent forms (auth.browser).
    sealer: Fernet
    # Encrypts the private ID-token signing keys at rest (auth.rfc7517).
    key_sealer: Fernet
    revocation_listeners: list[RevocationListener] = field(default_factory=list)
    refresh_checks: list[RefreshCheck] = field(default_factory=list)
    observers: list[AuthObserver] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    limiter: RateLimiter = field(default_factory=MemoryRateLimiter)
    # Fetches Client ID Metadata Documents; None = auth.cimd's default. Tests put one here that
    # trusts their local CA.
    cimd_fetcher: DocumentFetcher | None = None

    async def notify(self, revocation: Revocation) -> None:
        # Recorded for the other processes that serve the same store (and `memory-mcp` commands
        # run beside the server), then told to this process's listeners at once.
        await self.store.record_revocation(revocation, self.clock())
        # A listener failure must not turn a successful revocation into an error response:
        # the credentials are already gone from the store.
        for listener in list(self.revocation_listeners):
            try:
                await listener(revocation)
            except Exception:
                log.exception("revocation listener %r failed for %r", listener, revocation)

    def observe(self, event: AuthEvent, detail: str) -> None:
        for observer in self.observers:
            observer(event, detail)

    async def sign_out_everywhere(self, subject: str) -> accounts.SignedOut:
        """`accounts.sign_out_everywhere`, then end the user's live MCP sessions."""
        ended = await accounts.sign_out_everywhere(self.store, subject)
        await self.notify(Revocation(subject, None, None))
        return ended

    async def remove_user(self, username: str) -> User:
        """Remove an account while the server runs, closing its live sessions."""
        user = await accounts.remove_user(self.store, username)
        await self.notify(Revocation(user.id, None, None))
        return user


AUTH_SERVER = web.AppKey("memory_mcp_auth_server", AuthorizationServer)

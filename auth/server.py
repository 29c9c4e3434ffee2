"""The authorization server object that `auth.routes.install` returns, and its app keys."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.fernet import Fernet

from auth import accounts
from auth.models import User
from auth.settings import AuthSettings
from auth.store import AuthStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Revocation:
    """Credentials that stopped being valid, so that resource servers can drop live sessions.

    `client_id`/`grant_id` None mean "every client" / "every grant" of that subject. A revoked
    access token reports its grant although the grant's refresh token may still be alive: the
    client is expected to refresh, and a listener closing the sessions of that grant is what
    makes the revocation take effect immediately.
    """

    subject: str
    client_id: str | None
    grant_id: str | None


RevocationListener = Callable[[Revocation], Awaitable[None]]


@dataclass(eq=False)
class AuthorizationServer:
    settings: AuthSettings
    store: AuthStore
    # Seals pending authorization requests into the login and consent forms (auth.browser).
    sealer: Fernet
    revocation_listeners: list[RevocationListener] = field(default_factory=list)
    clock: Callable[[], float] = time.time

    async def notify(self, revocation: Revocation) -> None:
        # A listener failure must not turn a successful revocation into an error response:
        # the credentials are already gone from the store.
        for listener in list(self.revocation_listeners):
            try:
                await listener(revocation)
            except Exception:
                log.exception("revocation listener %r failed for %r", listener, revocation)

    async def revoke_subject(self, subject: str) -> int:
        """End every grant of a user (e.g. after a password change); returns the number of
        tokens and codes deleted."""
        count = await self.store.revoke_subject(subject)
        await self.notify(Revocation(subject, None, None))
        return count

    async def remove_user(self, username: str) -> User:
        """Remove an account while the server runs, closing its live sessions."""
        user = await accounts.remove_user(self.store, username)
        await self.notify(Revocation(user.id, None, None))
        return user


AUTH_SERVER = web.AppKey("memory_mcp_auth_server", AuthorizationServer)

"""The storage the authorization server needs, declared here and implemented by `server/storage/`.

Contract every backend must keep (the shared test suite in `tests/test_storage.py` checks it):

* Lookups by secret take the SHA-256 hash, never the secret.
* `consume_code` is atomic: of two concurrent redemptions of one code, exactly one gets the record.
* `rotate_refresh_token` is atomic: the old refresh token is deleted and the new tokens inserted in
  one step, and it returns False (inserting nothing) when the old token was already gone.
* Expired records are never returned; backends may purge them lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from auth.models import AuthorizationCode, Client, Revocation, Token, User


class UserExistsError(Exception):
    """A user with that username already exists."""


class ClientStore(Protocol):
    async def save_client(self, client: Client) -> None: ...

    async def get_client(self, client_id: str) -> Client | None: ...

    async def list_clients(self) -> list[Client]: ...

    async def delete_client(self, client_id: str) -> bool:
        """Delete the client and every token issued to it."""
        ...


class UserStore(Protocol):
    async def add_user(self, user: User) -> None:
        """Raises `UserExistsError` when the username is taken."""
        ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def get_user_by_name(self, username: str) -> User | None: ...

    async def list_users(self) -> list[User]: ...

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool: ...

    async def remove_user(self, user_id: str) -> bool:
        """Delete the account, its codes and tokens, and its browser sessions."""
        ...


class GrantStore(Protocol):
    async def save_code(self, code: AuthorizationCode) -> None: ...

    async def consume_code(self, code_hash: str, now: float) -> AuthorizationCode | None: ...

    async def save_tokens(self, tokens: Sequence[Token]) -> None: ...

    async def get_token(self, token_hash: str, now: float) -> Token | None: ...

    async def rotate_refresh_token(self, old_hash: str, new_tokens: Sequence[Token], now: float) -> bool: ...

    async def delete_token(self, token_hash: str) -> Token | None: ...

    async def revoke_grant(self, grant_id: str) -> int: ...

    async def revoke_subject(self, subject: str, client_id: str | None = None) -> int:
        """Delete the user's tokens and codes (only those of `client_id` when given)."""
        ...


class BrowserSessionStore(Protocol):
    """Server-side records of browser logins, so that a login can be ended from the server
    (logout, user removal) although the cookie itself lives in the browser."""

    async def create_browser_session(self, session_hash: str, user_id: str, created_at: float,
                                     expires_at: float) -> None: ...

    async def get_browser_session_user(self, session_hash: str, now: float) -> str | None: ...

    async def delete_browser_session(self, session_hash: str) -> None: ...


class RevocationLog(Protocol):
    """Revocations in the order they happened, for every process that serves this store: a
    server learns within a second that a `memory-mcp` command (or another instance) revoked a
    user's access, and ends that user's live sessions."""

    async def record_revocation(self, revocation: Revocation, now: float) -> None: ...

    async def revocations_after(self, cursor: int | None) -> tuple[int, list[Revocation]]:
        """Revocations recorded after `cursor`, and the cursor to ask with next time. Cursor None
        asks only for the current end of the log ("from now on")."""
        ...


class AuthStore(ClientStore, UserStore, GrantStore, BrowserSessionStore, RevocationLog, Protocol):
    """Everything `auth/` stores."""

"""Local user accounts, as managed by `memory-mcp users ...`.

These functions fire no revocation listeners: the CLI usually runs without a server in the
process. `AuthorizationServer.remove_user` and `.sign_out_everywhere` wrap them for the running
server. Removing a user or signing them out deletes their tokens and browser logins in the store,
so a running server refuses them on the next request either way; the listeners only make live MCP
sessions end sooner.

`remove_user` removes the account only. `memory-mcp users remove` (`server.admin.users_remove`)
removes an account with everything it owns, in resumable steps that start with the store's
`begin_removal` (the account becomes REMOVING: unknown to sign-in and to every token check).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from auth.models import AccountState, User
from auth.passwords import hash_password
from auth.store import AuthStore, UserExistsError

USERNAME_RULE = "usernames are 1-64 characters of letters, digits, '.', '_', '@' and '-'"
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
# The password hash of an account created by an upstream sign-in (`auth.upstream`): no argon2 hash
# at all, so no password verifies against it; `memory-mcp users passwd` may give it one.
NO_PASSWORD = "!no-password"  # noqa: S105 - a marker, not a credential
_USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


class AccountError(Exception):
    """An account operation was refused; the message says which rule and is safe to print."""


class InvalidUsernameError(AccountError):
    pass


class InvalidPasswordError(AccountError):
    pass


class DuplicateUserError(AccountError):
    pass


class UnknownUserError(AccountError):
    pass


def valid_username(username: str) -> bool:
    return _USERNAME.fullmatch(username) is not None


def check_username(username: str) -> None:
    if not valid_username(username):
        raise InvalidUsernameError(f"invalid username {username!r}: {USERNAME_RULE}")


def check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN:
        raise InvalidPasswordError(f"passwords must be at least {PASSWORD_MIN} characters long")
    if len(password) > PASSWORD_MAX:
        raise InvalidPasswordError(f"passwords must be at most {PASSWORD_MAX} characters long")


async def add_user(store: AuthStore, username: str, password: str, *, first: bool = False) -> User:
    """`first`: only as the first account (`NotFirstUserError` otherwise; `auth.setup`)."""
    check_username(username)
    check_password(password)
    # A fresh random id, never the username: a removed then re-created username must not inherit
    # the old account's memory or tokens.
    user = User(id=secrets.token_hex(16), username=username, password_hash=await hash_password(password),
                created_at=time.time())
    try:
        await store.add_user(user, first=first)
    except UserExistsError as exc:
        pending = any(u.username == username and u.state is AccountState.REMOVING for u in await store.list_users())
        hint = f"; its removal was interrupted: `memory-mcp users remove {username}` finishes it" if pending else ""
        raise DuplicateUserError(f"user {username!r} already exists{hint}") from exc
    return user


async def list_users(store: AuthStore) -> list[User]:
    return await store.list_users()


async def _get(store: AuthStore, username: str) -> User:
    user = await store.get_user_by_name(username)
    if user is None:
        raise UnknownUserError(f"no user named {username!r}")
    return user


async def remove_user(store: AuthStore, username: str) -> User:
    """Delete the account with its codes, tokens and browser logins."""
    user = await _get(store, username)
    await store.remove_user(user.id)
    return user


@dataclass(frozen=True, slots=True)
class SignedOut:
    """What `sign_out_everywhere` ended."""

    logins: int
    approvals: int
    grants: int


async def sign_out_everywhere(store: AuthStore, user_id: str) -> SignedOut:
    """End every browser login of the user, forget their remembered approvals and delete every
    token and code issued to them, and the upstream tokens kept for them (`auth.upstream`: with
    no grant left, nothing needs them). The one meaning of "sign out everywhere": the user's
    /logout, `users passwd` and `tokens revoke --user`.

    Logins end first: from then on no browser can approve a new grant for this user, so the
    tokens and codes deleted last cannot be replaced behind our back (a code minted from a login
    that is already gone is refused by `GrantStore.save_code`)."""
    logins = await store.end_browser_sessions(user_id)
    approvals = await store.forget_consents(user_id)
    grants = await store.revoke_subject(user_id)
    await store.set_upstream_tokens(user_id, None)
    return SignedOut(logins, approvals, grants)


async def set_password(store: AuthStore, username: str, password: str) -> User:
    """Change the password. A browser login that is being verified against the old one is not
    recorded (`BrowserSessionStore.create_browser_session`); existing logins and tokens stay valid
    until `sign_out_everywhere`, which `memory-mcp users passwd` runs next."""
    check_password(password)
    user = await _get(store, username)
    password_hash = await hash_password(password)
    if not await store.set_password_hash(user.id, password_hash):
        raise UnknownUserError(f"no user named {username!r}")
    return User(id=user.id, username=user.username, password_hash=password_hash, created_at=user.created_at)

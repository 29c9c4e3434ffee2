"""The storage the authorization server needs, declared here and implemented by `server/storage/`.

Contract every backend must keep (checked against SQLite through the HTTP tests in `tests/test_auth_*.py`;
a second backend must pass them too):

* Lookups by secret take the SHA-256 hash, never the secret.
* `consume_code` is atomic: of two concurrent redemptions of one code, exactly one gets the record;
  a later one revokes the grant the first one started (see the method).
* `rotate_refresh_token` is atomic: deciding between rotation, retry and replay, and acting on it,
  is one step (SQLite: one transaction; Redis: one script over the old token's key, its
  successor's key and the grant's index).
* Expired records are never returned; backends may purge them lazily.
* `save_tokens`, `save_code_tokens` and `rotate_refresh_token` record the tokens' `issued_at` as
  their client's last use: `purge_clients` tells unused registrations from used ones by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from auth.memories import MemoryDirectory
from auth.models import (
    AuthorizationCode,
    BrowserLogin,
    Client,
    PersonalToken,
    Redemption,
    RememberedConsent,
    Revocation,
    Rotation,
    SigningKey,
    Token,
    UpstreamLink,
    User,
)


class UserExistsError(Exception):
    """A user with that username already exists."""


class NotFirstUserError(Exception):
    """`add_user(first=True)` found an account already there."""


class StoreUnavailable(Exception):
    """The store cannot answer now (its lock is held elsewhere, its disk is full or failing):
    the request may succeed if retried after `retry_after` seconds. `reason` is a short phrase
    safe to show to clients; the message is for the operator's log."""

    reason: str = "the store is unavailable"
    retry_after: int = 1


class ClientStore(Protocol):
    async def save_client(self, client: Client) -> None:
        """Insert, or replace the registration of an existing `client_id` (a re-fetched metadata
        document), keeping its recorded last use."""
        ...

    async def get_client(self, client_id: str) -> Client | None: ...

    async def list_clients(self) -> list[Client]: ...

    async def delete_client(self, client_id: str) -> bool:
        """Delete the client and every token issued to it."""
        ...

    async def purge_clients(self, unused_issued_before: float, idle_before: float, now: float,
                            limit: int) -> int:
        """Delete (as `delete_client` does) at most `limit` clients that hold no unexpired token
        or code and either never obtained a token and were registered before
        `unused_issued_before`, or last obtained one before `idle_before`. Returns how many.
        Bounded so that it can run inline in a request (auth.rfc7591)."""
        ...


class UserStore(Protocol):
    async def add_user(self, user: User, *, first: bool = False) -> None:
        """Raises `UserExistsError` when the username is taken; with `first`, `NotFirstUserError`
        when any account exists (checked in the same step as the insert: `auth.setup`)."""
        ...

    async def get_user(self, user_id: str) -> User | None:
        """The account, if it is ACTIVE: every sign-in and use of an account goes through this or
        `get_user_by_name`, so an account being removed is unknown to all of them."""
        ...

    async def get_user_by_name(self, username: str) -> User | None:
        """The account, if it is ACTIVE."""
        ...

    async def list_users(self) -> list[User]:
        """Every account, in any state."""
        ...

    async def begin_removal(self, username: str) -> User | None:
        """First step of removing an account: mark it REMOVING and delete its codes, tokens,
        personal access tokens, browser sessions, remembered approvals, upstream link and kept upstream tokens, in one
        step. Returns the account as it was before (REMOVING already when an earlier removal was
        interrupted), None if there is none."""
        ...

    async def set_password_hash(self, user_id: str, password_hash: str, *, replacing: str | None = None) -> bool:
        """False if there is no such user or, with `replacing`, if the stored hash is no longer
        that one: a login's rehash must never overwrite a password changed meanwhile."""
        ...

    async def remove_user(self, user_id: str) -> bool:
        """Delete the account, its codes and tokens, its personal access tokens, its browser
        sessions, its upstream link and kept upstream tokens (in any state: the last step of a
        removal)."""
        ...


class GrantStore(Protocol):
    async def save_code(self, code: AuthorizationCode, login_hash: str) -> bool:
        """Store the code only while the browser login `login_hash` that approved it is still
        recorded for its subject, in one step: a code approved just before the login was ended
        (sign-out everywhere, password change) must not outlive it. False, and nothing stored,
        otherwise."""
        ...

    async def consume_code(self, code_hash: str, grant_id: str, now: float) -> Redemption:
        """Redeem an unexpired code for the new grant `grant_id`: the record is kept, marked with
        it, until the code would have expired. Presented again ("replayed"), the record and every
        token of its grant are deleted in the same step (RFC 6749 4.1.2, RFC 9700 4.2.1)."""
        ...

    async def save_code_tokens(self, code_hash: str, tokens: Sequence[Token]) -> bool:
        """Store the first tokens of a grant, unless its code was replayed (and so deleted) since
        `consume_code`: then store nothing and return False. Closes the race in which a replay
        lands between redemption and issuance and the tokens would outlive the revocation."""
        ...

    async def save_tokens(self, tokens: Sequence[Token]) -> None: ...

    async def get_token(self, token_hash: str, now: float) -> Token | None:
        """A live token: unexpired and, for refresh tokens, not superseded."""
        ...

    async def get_refresh_token(self, token_hash: str, now: float) -> Token | None:
        """An unexpired refresh token, superseded or not (`superseded_at` tells)."""
        ...

    async def rotate_refresh_token(self, old_hash: str, new_tokens: Sequence[Token], successor: str,
                                   now: float, grace: float) -> Rotation:
        """Exchange a refresh token, atomically (RFC 9700 4.14.2, with a grace window):

        * live: mark it superseded at `now` with `successor` (the response, sealed under the old
          token) and the new refresh token's hash, store `new_tokens` -> "rotated";
        * superseded at most `grace` seconds ago and its successor refresh token still live ->
          "retry" with the stored `successor` (nothing stored);
        * superseded longer ago -> delete every token of its grant -> "replayed";
        * otherwise "invalid", nothing changed.
        """
        ...

    async def delete_token(self, token_hash: str) -> Token | None: ...

    async def revoke_grant(self, grant_id: str) -> int: ...

    async def list_subject_tokens(self, subject: str, now: float) -> list[Token]:
        """Every unexpired token of the user, superseded refresh tokens included, oldest
        `issued_at` first: what the account page tells the user's connected applications by."""
        ...

    async def revoke_subject(self, subject: str, client_id: str | None = None) -> int:
        """Delete the user's tokens and codes (only those of `client_id` when given); without
        `client_id`, their personal access tokens too (signing out everywhere ends those)."""
        ...


class PersonalTokenStore(Protocol):
    """Personal access tokens (`auth.personal`). `UserStore.begin_removal` and `remove_user`
    delete the user's, and `revoke_subject` without a client, in the same step as the rest."""

    async def save_personal_token(self, token: PersonalToken) -> bool:
        """Store it only while its user is ACTIVE, in one step: a token created while the account
        is being removed must not outlive the removal. False, and nothing stored, otherwise."""
        ...

    async def get_personal_token(self, token_hash: str, now: float) -> PersonalToken | None:
        """The unexpired token with that hash."""
        ...

    async def list_personal_tokens(self, subject: str, now: float) -> list[PersonalToken]:
        """The user's unexpired tokens, oldest first."""
        ...

    async def delete_personal_token(self, token_id: str) -> PersonalToken | None:
        """Delete the token; what it was, None if there was none."""
        ...

    async def touch_personal_token(self, token_id: str, used_at: float) -> None:
        """Record a use: `last_used_at` becomes `used_at` unless it is later already. Creates
        nothing: a token deleted meanwhile stays deleted."""
        ...


class BrowserSessionStore(Protocol):
    """Server-side records of browser logins, so that a login can be ended from the server
    (logout, password change, user removal) although the cookie itself lives in the browser.
    Every request that relies on a login looks its record up, so a deleted record ends the login
    at once, whoever holds a copy of the cookie."""

    async def create_browser_session(self, session_hash: str, user_id: str, password_hash: str, created_at: float,
                                     expires_at: float) -> bool:
        """Record a login, in one step with checking that `password_hash` (the hash the password
        was verified against) is still the user's. False, and nothing stored, when the password
        was changed or the user removed meanwhile: a login verified with an old password while
        `end_browser_sessions` ran must not survive it."""
        ...

    async def get_browser_session(self, session_hash: str, now: float) -> BrowserLogin | None: ...

    async def delete_browser_session(self, session_hash: str) -> None: ...

    async def end_browser_sessions(self, user_id: str) -> int:
        """Delete every browser login of the user; returns how many."""
        ...


class ConsentStore(Protocol):
    """Approvals a user asked to remember (`auth.consent`), and their withdrawal. Removing the user
    or the client forgets them too."""

    async def remember_consent(self, consent: RememberedConsent) -> None:
        """Insert, or renew the times and memory of the approval with equal user, client, redirect
        URI, resource and scope set (the memory is what it stands for, not part of its key)."""
        ...

    async def find_consent(self, user_id: str, client_id: str, redirect_uri: str, resource: str,
                           scopes: tuple[str, ...], now: float) -> RememberedConsent | None:
        """The unexpired approval equal on every field (scopes compared as a set), exact strings."""
        ...

    async def list_consents(self, user_id: str, now: float) -> list[RememberedConsent]: ...

    async def withdraw_consents(self, user_id: str, client_id: str) -> int:
        """Forget the user's approvals of the client and, in the same step, delete the codes and
        tokens issued to that client for that user. Returns the number of approvals forgotten."""
        ...

    async def forget_consents(self, user_id: str) -> int:
        """Forget every approval of the user (sign-out everywhere)."""
        ...


class RevocationLog(Protocol):
    """Revocations in the order they happened, for every process that serves this store: a
    server learns that a `memory-mcp` command (or another instance) revoked a user's access, and
    ends that user's live sessions (within a second on a store that polls, at once on one that
    pushes)."""

    async def record_revocation(self, revocation: Revocation, now: float) -> None: ...

    async def revocations_after(self, cursor: int | None) -> tuple[int, list[Revocation]]:
        """Revocations recorded after `cursor`, and the cursor to ask with next time. Cursor None
        asks only for the current end of the log ("from now on")."""
        ...

    async def wait_revocations(self, cursor: int, seconds: float) -> tuple[int, list[Revocation]]:
        """As `revocations_after(cursor)`, after waiting up to `seconds` for one to be recorded:
        a store that can be woken (Redis) returns as soon as there is one; one that cannot
        (SQLite) sleeps `seconds` and then looks."""
        ...


class SigningKeyStore(Protocol):
    """The keys that sign ID tokens (`auth.rfc7517`)."""

    async def signing_keys(self, now: float) -> list[SigningKey]:
        """The current key first (if any), then retired keys still published, newest first."""
        ...

    async def add_signing_key(self, key: SigningKey, now: float, retire_until: float, *, replace: bool) -> bool:
        """Make `key` the current key, atomically. replace=False: only if there is none (two
        processes starting at once keep one key; returns False and stores nothing otherwise).
        replace=True: the current key is retired at `now` and published until `retire_until`;
        retired keys past their date are dropped."""
        ...


class UpstreamStore(Protocol):
    """Accounts that sign in through an upstream OpenID provider (`auth.upstream`), and the
    upstream refresh token kept for them when `upstream_check=refresh` asks for it (sealed with
    AES-GCM by `auth.upstream.kept` before it gets here: the store holds ciphertext only).
    `UserStore.begin_removal` and `remove_user` delete the user's link and kept tokens too, in
    the same step as the rest of the account's records."""

    async def link_upstream_user(self, issuer: str, subject: str, user: User, now: float) -> User:
        """The ACTIVE account linked to (`issuer`, `subject`). When there is none, `user` is
        created and linked to it, in one step: two first sign-ins of one person at once create
        one account. Raises `UserExistsError`, storing nothing, when no link exists and
        `user.username` is taken (the caller retries with another name)."""
        ...

    async def get_upstream_link(self, user_id: str) -> UpstreamLink | None:
        """The upstream identity the account was created for, if it was."""
        ...

    async def get_upstream_tokens(self, user_id: str) -> str | None:
        """The sealed upstream tokens kept for the user, exactly as last stored."""
        ...

    async def set_upstream_tokens(self, user_id: str, sealed: str | None, *, replacing: str | None = None) -> bool:
        """Store the user's sealed upstream tokens (`None` deletes them). With `replacing`, only
        if the stored value is exactly that string, as one atomic compare-and-set; False and
        nothing changed otherwise (this is how concurrent refresh-time checks of one user, in
        any process, take turns: `auth.upstream.kept`). Without it, unconditionally (True)."""
        ...


class AuthStore(ClientStore, UserStore, GrantStore, PersonalTokenStore, BrowserSessionStore, ConsentStore,
                SigningKeyStore, RevocationLog, UpstreamStore, MemoryDirectory, Protocol):
    """Everything `auth/` stores."""

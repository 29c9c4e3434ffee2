"""Personal access tokens: one user's long-lived bearer credential for the MCP endpoints, for
agents that cannot run a browser sign-in (`memory-mcp tokens create`).

Not the shared static token this project started by removing: each belongs to one user, carries
its own scopes, is bound to this server's resource identifier, expires (90 days unless another
lifetime, or none, is asked for explicitly), is revoked one by one, and records when it was last
used. At the MCP endpoints it is checked exactly like an OAuth access token (`auth.rfc6750`):
same audience check, same scope checks, and its sessions are bound to a principal of their own
(`client_id`), so that revoking it ends exactly the sessions that used it.

It is not an OAuth grant: `/token` refuses it (it cannot be refreshed or exchanged), `/userinfo`
refuses it (it identifies no OpenID Connect client). `/revoke` does revoke it, whatever client
presents it: only a holder of the secret can present it, and a holder who is not its owner is
exactly the case in which it must stop working (a token found leaked).

Format: `mmcp_pat_`, 40 random base62 characters (238 bits), then a 6-character base62 CRC-32 of
everything before it. The prefix lets secret scanners find a leaked token; the checksum lets them
(and the bearer check, before any store lookup) tell a real token from a look-alike offline. The
store keeps its SHA-256 only, as for OAuth tokens (`auth.crypto.hash_secret`).
"""

from __future__ import annotations

import re
import secrets
import string
import zlib
from dataclasses import dataclass

from auth import memories
from auth.crypto import hash_secret
from auth.models import PersonalToken, User
from auth.scopes import join, parse
from auth.settings import AuthSettings
from auth.store import AuthStore

PREFIX = "mmcp_pat_"
_ALPHABET = string.digits + string.ascii_letters
_RANDOM_CHARS = 40
_CHECKSUM_CHARS = 6
LENGTH = len(PREFIX) + _RANDOM_CHARS + _CHECKSUM_CHARS
# Sessions opened with a personal access token are owned by (subject, "pat:<id>"): never an OAuth
# client id, which is random without a colon (dynamic registration) or an https URL (metadata
# documents).
CLIENT_PREFIX = "pat:"
DEFAULT_DAYS = 90
MAX_DAYS = 3650
NAME_MAX = 100
NEVER = "never"
# Last use is written at most this often per token and process: a busy token costs no write per
# request.
LAST_USE_INTERVAL = 60.0
_ID = re.compile(r"[0-9a-f]{16}")


class PersonalTokenError(Exception):
    """A token cannot be created as asked; the message says which value and what to do."""


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(head: str) -> str:
    return _base62(zlib.crc32(head.encode("ascii")), _CHECKSUM_CHARS)


def new_secret() -> str:
    head = PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return head + _checksum(head)


def is_personal(token: str) -> bool:
    """Presented as a personal access token (whether or not a valid one)."""
    return token.startswith(PREFIX)


def well_formed(token: str) -> bool:
    """Prefix, length, alphabet and checksum right: worth a store lookup."""
    if len(token) != LENGTH or not is_personal(token):
        return False
    body = token[len(PREFIX):]
    if any(c not in _ALPHABET for c in body):
        return False
    return secrets.compare_digest(_checksum(token[:-_CHECKSUM_CHARS]), token[-_CHECKSUM_CHARS:])


def client_id(token_id: str) -> str:
    """The client part of the principal that owns the sessions opened with this token."""
    return CLIENT_PREFIX + token_id


def token_id_of(client: str) -> str | None:
    """The token id behind a session owner's client id, None for an OAuth client."""
    return client.removeprefix(CLIENT_PREFIX) if client.startswith(CLIENT_PREFIX) else None


def valid_id(token_id: str) -> bool:
    return _ID.fullmatch(token_id) is not None


def parse_expiry(text: str | None) -> int | None:
    """Days from `--expires-in` (default DEFAULT_DAYS); None for `never`."""
    if text is None:
        return DEFAULT_DAYS
    if text.strip().lower() == NEVER:
        return None
    try:
        days = int(text)
    except ValueError:
        raise PersonalTokenError(f"--expires-in {text!r} is neither a number of days nor {NEVER!r}") from None
    if not 1 <= days <= MAX_DAYS:
        raise PersonalTokenError(f"--expires-in {days} is out of range: give 1 to {MAX_DAYS} days, or {NEVER!r} "
                                 "for a token that does not expire")
    return days


def parse_scopes(scope: str | None, settings: AuthSettings) -> tuple[str, ...]:
    """The scopes asked for (the resource's default set when none), in the server's order.
    Unlike /authorize, which ignores what it does not know so that clients' guesses still work,
    this is typed by a person: an unknown scope is an error, not silently dropped."""
    if scope is None:
        return settings.default_scopes
    wanted = parse(scope)
    if not wanted:
        raise PersonalTokenError(f"--scope is empty: give one or more of {join(settings.scopes_supported)!r}")
    unknown = [s for s in wanted if s not in settings.scopes_supported]
    if unknown:
        why = (" (OpenID Connect scopes are for sign-in clients; personal access tokens are not accepted at "
               "/userinfo)" if set(unknown) & set(settings.oidc_scopes) else "")
        raise PersonalTokenError(f"unknown scope {' '.join(unknown)!r} in --scope: personal access tokens carry "
                                 f"the server's scopes {join(settings.scopes_supported)!r}{why}")
    return tuple(s for s in settings.scopes_supported if s in wanted)


def check_name(name: str) -> str:
    name = name.strip()
    if len(name) > NAME_MAX or any(not c.isprintable() for c in name):
        raise PersonalTokenError(f"--name must be at most {NAME_MAX} printable characters")
    return name


@dataclass(frozen=True, slots=True)
class Created:
    secret: str
    token: PersonalToken


async def create(store: AuthStore, settings: AuthSettings, user: User, *, name: str, scopes: tuple[str, ...],
                 days: int | None, now: float, memory: str | None = None) -> Created:
    """A new token for `user`, bound to this server's MCP resource and to the user's memory
    `memory` (an id, `auth.memories`; None: the default memory). The secret is in the result
    only: the store gets its hash."""
    secret = new_secret()
    token = PersonalToken(
        id=secrets.token_hex(8), token_hash=hash_secret(secret), subject=user.id, name=check_name(name),
        scopes=scopes, resource=settings.url(settings.resource_paths[0]), created_at=now,
        expires_at=None if days is None else now + days * 86400.0,
        memory=None if memory is None else memories.stored_id(user.id, memory))
    if not await store.save_personal_token(token):
        raise PersonalTokenError(f"user {user.username!r} was removed meanwhile; no token was created")
    return Created(secret, token)

"""The administration commands behind `memory-mcp clients|sessions|tokens`.

They run beside the server, on the same storage. What they revoke is gone from the store at
once, and each records a revocation that a running server reads within a second to end the live
MCP sessions concerned (`server.app.follow_revocations`). A running server may still accept a
revoked token for up to a second: its bearer check remembers a verified token that long.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from auth import accounts, rfc7517
from auth.models import Revocation
from auth.settings import AuthSettings
from server.keyfile import cookie_key
from server.principals import parse_owner_label
from server.storage.sqlite import SQLiteStorage


class AdminError(Exception):
    """A command cannot be carried out; the message says why and what to do."""


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


async def _revoke(storage: SQLiteStorage, revocation: Revocation) -> None:
    await storage.record_revocation(revocation, time.time())


async def clients_list(storage: SQLiteStorage) -> str:
    clients = await storage.list_clients()
    if not clients:
        return "no registered clients"
    rows = [(c.client_id, c.client_name or "-", " ".join(c.redirect_uris), _when(c.client_id_issued_at))
            for c in clients]
    return _table(("CLIENT ID", "NAME", "REDIRECT URIS", "REGISTERED"), rows)


async def clients_remove(storage: SQLiteStorage, client_id: str) -> str:
    if not await storage.delete_client(client_id):
        raise AdminError(f"no client {client_id!r}; `memory-mcp clients list` shows the registered ones")
    await _revoke(storage, Revocation(None, client_id, None))
    return f"removed client {client_id} and revoked its tokens"


async def _usernames(storage: SQLiteStorage) -> dict[str, str]:
    return {u.id: u.username for u in await storage.list_users()}


async def _user_id(storage: SQLiteStorage, username: str) -> str:
    user = await storage.get_user_by_name(username)
    if user is None:
        raise AdminError(f"no user {username!r}; `memory-mcp users list` shows the accounts")
    return user.id


async def sessions_list(storage: SQLiteStorage, username: str | None) -> str:
    records = await storage.list_sessions(None if username is None else await _user_id(storage, username))
    if not records:
        return "no MCP sessions"
    names = await _usernames(storage)
    rows = []
    for r in records:
        _, client_id = parse_owner_label(r.owner)
        rows.append((r.session_id, names.get(r.user, r.user), client_id, r.transport, r.protocol_version or "-",
                     _when(r.created_at), _when(r.last_seen_at)))
    return _table(("SESSION ID", "USER", "CLIENT", "TRANSPORT", "PROTOCOL", "OPENED", "LAST SEEN"), rows)


async def sessions_revoke(storage: SQLiteStorage, session_id: str | None, username: str | None) -> str:
    """End one session (by revoking the grant of that user's client behind it, so that the client
    cannot simply open another) or every session of a user."""
    if (session_id is None) == (username is None):
        raise AdminError("name either a session id or --user NAME")
    if username is not None:
        return await tokens_revoke(storage, username)
    assert session_id is not None
    record = await storage.get_session(session_id)
    if record is None:
        raise AdminError(f"no session {session_id!r}; `memory-mcp sessions list` shows the open ones")
    subject, client_id = parse_owner_label(record.owner)
    await storage.revoke_subject(subject, client_id)
    await storage.delete_session(session_id)
    await _revoke(storage, Revocation(subject, client_id, None))
    return f"ended session {session_id} and revoked the tokens of client {client_id} for that user"


async def tokens_revoke(storage: SQLiteStorage, username: str) -> str:
    user_id = await _user_id(storage, username)
    count = await storage.revoke_subject(user_id)
    await _revoke(storage, Revocation(user_id, None, None))
    return f"revoked {count} token(s) and code(s) of {username}; their MCP sessions end"


async def users_passwd(storage: SQLiteStorage, username: str, password: str) -> str:
    """A new password signs the user out everywhere: it is most often changed because the old one
    leaked, and tokens obtained with it must not outlive it."""
    user = await accounts.set_password(storage, username, password)
    count = await storage.revoke_subject(user.id)
    await _revoke(storage, Revocation(user.id, None, None))
    return f"changed the password of {username} and revoked their {count} token(s); their clients sign in again"


async def users_remove(storage: SQLiteStorage, username: str) -> str:
    user = await accounts.remove_user(storage, username)
    await _revoke(storage, Revocation(user.id, None, None))
    entities = await storage.delete_graph(user.id)
    return f"removed user {user.username} with their tokens, sessions and memory ({entities} entities)"


async def keys_rotate(storage: SQLiteStorage, data_dir: Path, auth_settings: AuthSettings) -> str:
    kid = await rfc7517.rotate_signing_key(storage, rfc7517.private_key_cipher(cookie_key(data_dir)), time.time(),
                                           auth_settings.id_token_ttl)
    return (f"new ID-token signing key {kid}; the previous one stays published until the tokens it signed expire. "
            "Running servers use the new key from now on.")

"""The administration commands behind `memory-mcp clients|sessions|tokens|throttle`.

They run beside the server, on the same storage. What they revoke is gone from the store at
once (the next request with those tokens, or with a browser login they end, is refused), and each
records a revocation that a running server reads within a second to end the live MCP sessions
concerned (`server.app.follow_revocations`). A running server may still accept a revoked token
for up to a second: its bearer check remembers a verified token that long.

Personal access tokens (`tokens create|list|revoke --id`, `auth.personal`) are created here, for
agents that cannot sign in with a browser. Signing a user out everywhere revokes theirs too:
whoever knew the password could have made one.

`memory export|import` move a user's memory out of and into files in the official memory server's
format (server/memory/jsonl.py), also while the server runs: an export reads one state of the
graph, an import writes in short transactions (SQLite) or scripts (Redis) beside the server's own.

Which end browser logins: `users passwd`, `users remove`, `tokens revoke --user` and
`sessions revoke --user` (the same command as `tokens revoke --user`) do, with the user's
remembered approvals; `sessions revoke SESSION_ID` and `clients remove` do not (they end one
client's access, not the person's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from auth import accounts, personal, rfc7517, rfc7591, throttle
from auth.models import AccountState, Revocation
from auth.settings import AuthSettings
from server.memory.graph import Quota
from server.principals import parse_owner_label
from server.storage import Limiter, Storage


class AdminError(Exception):
    """A command cannot be carried out; the message says why and what to do."""


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


async def _revoke(storage: Storage, revocation: Revocation) -> None:
    await storage.record_revocation(revocation, time.time())


async def clients_list(storage: Storage) -> str:
    clients = await storage.list_clients()
    if not clients:
        return "no registered clients"
    rows = [(c.client_id, c.client_name or "-", " ".join(c.redirect_uris), _when(c.client_id_issued_at))
            for c in clients]
    return _table(("CLIENT ID", "NAME", "REDIRECT URIS", "REGISTERED"), rows)


async def clients_remove(storage: Storage, client_id: str) -> str:
    if not await storage.delete_client(client_id):
        raise AdminError(f"no client {client_id!r}; `memory-mcp clients list` shows the registered ones")
    await _revoke(storage, Revocation(None, client_id, None))
    return f"removed client {client_id} and revoked its tokens"


async def _usernames(storage: Storage) -> dict[str, str]:
    return {u.id: u.username for u in await storage.list_users()}


async def _user_id(storage: Storage, username: str) -> str:
    user = await storage.get_user_by_name(username)
    if user is None:
        raise AdminError(f"no user {username!r}; `memory-mcp users list` shows the accounts")
    return user.id


async def sessions_list(storage: Storage, username: str | None) -> str:
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


async def sessions_revoke(storage: Storage, session_id: str | None, username: str | None) -> str:
    """End one session (by revoking the grant of that user's client behind it, so that the client
    cannot simply open another; the user's browser login stays), or with `username` sign the user
    out everywhere (`tokens_revoke`)."""
    if username is not None:
        if session_id is not None:
            raise AdminError("name either a session id or --user NAME, not both")
        return await tokens_revoke(storage, username)
    if session_id is None:
        raise AdminError("name either a session id or --user NAME")
    record = await storage.get_session(session_id)
    if record is None:
        raise AdminError(f"no session {session_id!r}; `memory-mcp sessions list` shows the open ones")
    subject, client_id = parse_owner_label(record.owner)
    token_id = personal.token_id_of(client_id)
    if token_id is not None:
        # Opened with a personal access token: that token is what must go, or it opens another.
        await storage.delete_personal_token(token_id)
        done = f"revoked the personal access token {token_id} it was opened with"
    else:
        await storage.revoke_subject(subject, client_id)
        done = f"revoked the tokens of client {client_id} for that user"
    await storage.delete_session(session_id)
    await _revoke(storage, Revocation(subject, client_id, None))
    return f"ended session {session_id} and {done}"


async def _sign_out_everywhere(storage: Storage, user_id: str) -> str:
    ended = await accounts.sign_out_everywhere(storage, user_id)
    await _revoke(storage, Revocation(user_id, None, None))
    return (f"ended {ended.logins} browser login(s), forgot {ended.approvals} remembered approval(s), "
            f"revoked {ended.grants} token(s) and code(s); their MCP sessions end")


async def tokens_revoke(storage: Storage, username: str) -> str:
    """Sign the user out everywhere, as their own "sign out" at /logout does: every browser login
    too, or a browser that is still signed in (perhaps the attacker's) could approve new tokens."""
    user_id = await _user_id(storage, username)
    return f"signed {username} out everywhere: " + await _sign_out_everywhere(storage, user_id)


async def tokens_create(storage: Storage, settings: AuthSettings, username: str, *, name: str | None,
                        scope: str | None, expires_in: str | None) -> str:
    """A personal access token for the user (`auth.personal`). The secret is the last line, alone,
    so that a script can take it with `tail -n 1`; it is shown this once."""
    try:
        days = personal.parse_expiry(expires_in)
        scopes = personal.parse_scopes(scope, settings)
        user = await storage.get_user_by_name(username)
        if user is None:
            raise AdminError(f"no user {username!r}; `memory-mcp users list` shows the accounts")
        created = await personal.create(storage, settings, user, name=name or "", scopes=scopes, days=days,
                                        now=time.time())
    except personal.PersonalTokenError as exc:
        raise AdminError(str(exc)) from None
    token = created.token
    expires = "never (revoke it when it is no longer needed)" if token.expires_at is None else (
        f"{_when(token.expires_at)} (in {days} days)")
    return "\n".join((
        f"created personal access token {token.id} for {username}",
        f"  name:     {token.name or '-'}",
        f"  scopes:   {' '.join(token.scopes)}",
        f"  resource: {token.resource} (clients must use this server's URL)",
        f"  expires:  {expires}",
        f"It is shown only now and stored as a hash: keep it in a secret store. Revoke it with "
        f"`memory-mcp tokens revoke --id {token.id}`.",
        created.secret,
    ))


async def tokens_list(storage: Storage, username: str) -> str:
    """The user's live personal access tokens; never a secret (the store has none to show)."""
    user_id = await _user_id(storage, username)
    tokens = await storage.list_personal_tokens(user_id, time.time())
    if not tokens:
        return f"no personal access tokens for {username}"
    rows = [(t.id, t.name or "-", " ".join(t.scopes), _when(t.created_at),
             "never" if t.last_used_at is None else _when(t.last_used_at),
             "never" if t.expires_at is None else _when(t.expires_at)) for t in tokens]
    return _table(("ID", "NAME", "SCOPES", "CREATED", "LAST USED", "EXPIRES"), rows)


async def token_revoke(storage: Storage, token_id: str) -> str:
    """Revoke one personal access token and end the sessions that used it. Idempotent: a token
    already gone is said to be, and that is not an error."""
    if not personal.valid_id(token_id):
        raise AdminError(f"{token_id!r} is not a personal access token id (16 hexadecimal digits, as "
                         "`memory-mcp tokens list --user NAME` shows them)")
    token = await storage.delete_personal_token(token_id)
    if token is None:
        return (f"no live personal access token {token_id}: nothing to revoke (already revoked, expired, or never "
                "created; `memory-mcp tokens list --user NAME` shows the live ones)")
    await _revoke(storage, Revocation(token.subject, personal.client_id(token.id), None))
    return f"revoked personal access token {token_id}; the MCP sessions that used it end"


async def users_passwd(storage: Storage, username: str, password: str) -> str:
    """A new password signs the user out everywhere: it is most often changed because the old one
    leaked, and logins and tokens obtained with it must not outlive it."""
    user = await accounts.set_password(storage, username, password)
    return f"changed the password of {username} and signed them out everywhere: " + await _sign_out_everywhere(
        storage, user.id)


async def users_list(storage: Storage) -> str:
    """One account a line; those created by an upstream sign-in name their provider."""
    lines = []
    for user in await accounts.list_users(storage):
        if user.state is not AccountState.ACTIVE:
            lines.append(f"{user.username} (being removed: run `memory-mcp users remove {user.username}` to finish)")
            continue
        link = await storage.get_upstream_link(user.id)
        lines.append(user.username if link is None else f"{user.username} (signs in through {link.issuer})")
    return "\n".join(lines)


async def users_remove(storage: Storage, username: str) -> str:
    """Remove an account and everything it owns, in steps that each leave a state the next run
    finishes (run again after an interruption, it resumes):

    1. the account is marked REMOVING and its codes, tokens, browser logins and approvals are
       deleted (one transaction): from then on it can neither sign in nor obtain a token;
    2. a revocation is recorded, so that running servers end its live MCP sessions;
    3. its graph is closed, then deleted in short batches (`GraphStore.delete_graph`): a write
       still on its way (its token checked a moment before step 1) is refused in its own
       transaction once the graph is closed, and anything committed before is deleted;
    4. the account row goes last, so that until the end a re-run finds the removal by name.
    """
    user = await storage.begin_removal(username)
    if user is None:
        raise AdminError(f"no user {username!r}: nothing of theirs is left to remove (a finished removal leaves "
                         "nothing behind); `memory-mcp users list` shows the accounts")
    await _revoke(storage, Revocation(user.id, None, None))
    entities = await storage.delete_graph(user.id)
    await storage.remove_user(user.id)
    done = f"their tokens, browser logins, MCP sessions and memory ({entities} entities) are gone"
    if user.state is AccountState.REMOVING:
        return f"finished the interrupted removal of user {user.username}: {done}"
    return f"removed user {user.username}: {done}"


async def keys_rotate(storage: Storage, auth_settings: AuthSettings) -> str:
    kid = await rfc7517.rotate_signing_key(storage, rfc7517.private_key_cipher(await storage.cookie_key()), time.time(),
                                           auth_settings.id_token_ttl)
    return (f"new ID-token signing key {kid}; the previous one stays published until the tokens it signed expire. "
            "Running servers use the new key from now on.")


async def throttle_list(limiter: Limiter, storage: Storage, registration_limit: int) -> str:
    """Every login throttle and registration limit with attempts counted, and how long each still
    refuses. Account throttles are keyed by a hash of the name as typed: existing accounts are
    named, other names (mistyped, or guessed by someone) are shown as such."""
    names = {throttle.account_key(u.username): u.username for u in await storage.list_users()}
    rows = []
    for counted in await limiter.counted():
        key, ages = counted.key, counted.ages
        if key.startswith(throttle.ACCOUNT_PREFIX):
            kind, who, wait = "login user", names.get(key, "(not an account)"), throttle.account_wait(ages)
        elif key.startswith(throttle.ADDRESS_PREFIX):
            kind, who = "login address", key.removeprefix(throttle.ADDRESS_PREFIX)
            wait = throttle.address_wait(ages)
        elif key.startswith(rfc7591.REGISTER_PREFIX):
            kind, who = "registration", key.removeprefix(rfc7591.REGISTER_PREFIX)
            wait = (rfc7591.RATE_WINDOW - ages[registration_limit - 1]
                    if 0 < registration_limit <= len(ages) else 0.0)
        else:
            continue
        refusing = f"{int(wait) + 1} s" if wait > 0 else "-"
        rows.append((kind, who, str(len(ages)), _when(time.time() - ages[0]), refusing))
    if not rows:
        return "no throttles: no failed logins or registrations counted"
    return _table(("KIND", "WHO", "ATTEMPTS", "LAST", "REFUSING FOR"), rows)


async def throttle_clear(limiter: Limiter, *, address: str | None, username: str | None,
                         everything: bool) -> str:
    """Lift throttles at once, also in a running server (it reads them from the same file)."""
    if sum((address is not None, username is not None, everything)) != 1 or (address is None and not (
            username is not None or everything)):
        raise AdminError("name exactly one of --address ADDRESS, --user NAME or --all")
    if everything:
        return f"cleared every throttle ({await limiter.clear(None)} counted attempt(s))"
    if username is not None:
        count = await limiter.clear([throttle.account_key(username)])
        return f"cleared the login throttle of {username!r} ({count} counted attempt(s))"
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        raise AdminError(f"{address!r} is not an IP address; `memory-mcp throttle list` shows the "
                         "throttled ones") from None
    count = await limiter.clear([throttle.address_key(str(ip)), rfc7591.registration_key(str(ip))])
    return (f"cleared the login and registration limits of {ip} "
            f"({throttle.address_key(str(ip)).removeprefix(throttle.ADDRESS_PREFIX)}; {count} counted attempt(s))")


# --- memory import and export (the official server's JSON Lines format: server/memory/jsonl.py) ---

DEFAULT_MEMORY = "default"


async def memory_owner(storage: Storage, username: str, memory: str | None) -> tuple[str, str]:
    """The graph owner key of the user's memory named `memory` (None: the default one), and how to
    name it in messages. The one place that resolves a memory name for the CLI."""
    user = await storage.get_user_by_name(username)
    if user is None or user.state is not AccountState.ACTIVE:
        raise AdminError(f"no user {username!r}; `memory-mcp users list` shows the accounts")
    name = memory or DEFAULT_MEMORY
    if name == DEFAULT_MEMORY:
        return user.id, f"{username}'s default memory"
    raise AdminError(f"{username} has no memory named {name!r}: this server keeps one memory per user, "
                     f"{DEFAULT_MEMORY!r}")


async def memory_export(storage: Storage, username: str, memory: str | None, path: Path | None) -> str:
    """Write the memory to `path` (atomically: a temporary file beside it, renamed over it once
    complete) or, without a path, to standard output; return the summary line."""
    from server.memory import jsonl

    owner, what = await memory_owner(storage, username, memory)
    counts = jsonl.ExportCounts()
    lines = jsonl.export_lines(storage.export_batches(owner, jsonl.EXPORT_BATCH), counts)
    if path is None:
        out = sys.stdout.buffer
        async for chunk in lines:
            await asyncio.to_thread(out.write, chunk)
        await asyncio.to_thread(out.flush)
        where = "standard output"
    else:
        fd, temporary, target = await asyncio.to_thread(_partial_file, path)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in lines:
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(out.flush)
                await asyncio.to_thread(os.fsync, out.fileno())
            await asyncio.to_thread(os.replace, temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        where = str(path)
    return (f"exported {what} to {where}: {counts.entities} entities, {counts.observations} observations, "
            f"{counts.relations} relations")


def _partial_file(path: Path) -> tuple[int, str, Path]:
    """A new private file beside `path` to write the export into, renamed over `path` once complete."""
    target = path.resolve()
    if target.is_dir():
        raise AdminError(f"{path} is a directory: name the file to write (for example {path / 'memory.jsonl'})")
    try:
        # mkstemp creates it 0600: a memory is as private as the data directory it comes from.
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    except OSError as exc:
        raise AdminError(f"cannot write in {target.parent}: {(exc.strerror or str(exc)).lower()}") from None
    return fd, temporary, target


async def memory_import(storage: Storage, username: str, memory: str | None, path: Path, quota: Quota | None
                        ) -> str:
    """Import a file in the official format (`server.memory.jsonl`) into the memory: pass 1 reads
    and checks the whole file (a file that cannot be read changes nothing), pass 2 writes it in
    batches; what was imported, what was already there, and what was skipped (by line)."""
    from server.memory import jsonl

    owner, what = await memory_owner(storage, username, memory)
    try:
        parsed = await asyncio.to_thread(jsonl.parse_file, path, time.time())
        imported = await jsonl.import_parsed(storage, owner, parsed, quota)
    except (jsonl.UnreadableFile, jsonl.ImportRefused) as exc:
        raise AdminError(str(exc)) from None
    report = jsonl.ImportReport(parsed, imported)
    return "\n".join([f"{path} into {what}:", *report.lines()])

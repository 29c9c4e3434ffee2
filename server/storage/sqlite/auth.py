"""The authorization server's tables in the embedded SQLite backend (`auth.store.AuthStore`).

Schema and the reasons for it:

* `auth_clients`: one row per registered client. The full registration (unknown fields included,
  to echo them) is a JSON column; nothing ever queries inside it.
* `auth_client_use`: when each client last obtained a token (written by `save_tokens` and
  `rotate_refresh_token`). A client without a row never obtained one: `purge_clients` deletes
  such registrations after a day. A table of its own, not a column, so that databases created
  before it need no migration (`CREATE TABLE IF NOT EXISTS` adds it) and the registration row
  is never rewritten on the token path. `auth_clients_issued` serves the purge's oldest-first scan.
* `auth_users`: `id` is the OAuth subject, random and never reused; `username` is UNIQUE, which
  is what makes `add_user` race-free against a concurrent CLI process.
* `auth_codes`, `auth_tokens`, `auth_browser_sessions` are keyed by the SHA-256 of the secret, never
  the secret: a copy of this file yields no usable credential, and a bearer check is one primary
  key lookup. Secondary indexes exist only for the bulk deletes (grant, subject, client, expiry).
* A redeemed code keeps its `auth_codes` row, marked with the `grant_id` it started, until it
  would have expired: a second redemption finds it and revokes that grant. A rotated refresh
  token keeps its `auth_tokens` row with `superseded_at`, `successor_hash` (the new refresh
  token's hash) and `successor` (the token response, AES-GCM under a key derived from the old
  token: ciphertext only), until it would have expired: to tell a retry from a replay.
* `auth_personal_tokens`: personal access tokens (`auth.personal`), keyed by their public `id`
  (what `memory-mcp tokens revoke --id` names) with the SHA-256 of the secret UNIQUE (the bearer
  check's lookup). `expires_at` NULL means "never expires", only when asked for. `last_used_at`
  is written at most once a minute per token and process (`touch_personal_token`), never
  backwards. A user's go with their other tokens (removal, signing out everywhere).
* `auth_consents`: approvals a user asked to remember (`auth.consent`), keyed by everything a
  request must match (user, client, redirect URI, resource, scope set as sorted space-joined
  string). Plain identifiers, no secret: nothing here lets anyone act as the user.
* `auth_upstream_links`: accounts created by a sign-in through an upstream OpenID provider
  (`auth.upstream`), keyed by the upstream identity (issuer, value of the identity claim); the
  local `user_id` is UNIQUE (one identity per account). `link_upstream_user` finds or creates the
  account and its link in one transaction, so two first sign-ins at once make one account.
* `auth_upstream_tokens`: the upstream refresh token kept per user for `upstream_check=refresh`,
  as `auth.upstream.kept` sealed it (AES-GCM under a configured key, bound to the user id): the
  file alone yields no upstream credential. `set_upstream_tokens(..., replacing=...)` is a
  compare-and-set on the whole sealed string, one `UPDATE ... WHERE sealed = ?`.
* No foreign keys: rows are created in an order the auth flow controls, and deletes cascade
  explicitly inside one transaction, which keeps the contract identical to the Redis backend.
* Expired rows are never returned (every read checks `expires_at`) and are purged lazily when new
  rows of the same kind are written, via the `expires_at` indexes.

Atomicity: every method's statements run as one transaction on the database's threads
(`Database.write`: BEGIN IMMEDIATE on the one writer thread; `Database.read`: one snapshot), so it is
atomic against other coroutines of this process and against other processes.
`consume_code` and `rotate_refresh_token` read and decide inside one such transaction,
so of two concurrent redemptions or rotations exactly one wins and the other sees its outcome.

Tables added after the first release (`auth_client_use`, `auth_consents`, `auth_upstream_links`,
`auth_upstream_tokens`, `auth_personal_tokens`) reach older files through `CREATE TABLE IF NOT EXISTS` at every start.
Columns added after the first release are added to older files by `migrate` (`ALTER TABLE ... ADD
COLUMN`, nullable or with a constant default, so instant and safe on a live file).

`auth_users.state` is the account's `auth.models.AccountState`: `get_user` and `get_user_by_name`
return ACTIVE accounts only, so an account being removed can neither sign in nor be used while its
memory is deleted; `begin_removal` sets REMOVING, `remove_user` deletes the row last.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import replace

from auth.models import (
    AccountState,
    AuthorizationCode,
    BrowserLogin,
    Client,
    PersonalToken,
    Redemption,
    RememberedConsent,
    Revocation,
    Rotation,
    Token,
    UpstreamLink,
    User,
)
from auth.store import NotFirstUserError, UserExistsError
from server.storage.sqlite.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_clients (
    client_id TEXT PRIMARY KEY,
    issued_at INTEGER NOT NULL,
    registration TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_clients_issued ON auth_clients (issued_at);
CREATE TABLE IF NOT EXISTS auth_client_use (
    client_id TEXT PRIMARY KEY,
    last_used_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_client_use_time ON auth_client_use (last_used_at);
CREATE TABLE IF NOT EXISTS auth_users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'removing'))
);
CREATE TABLE IF NOT EXISTS auth_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scopes TEXT NOT NULL,
    resource TEXT NOT NULL,
    subject TEXT NOT NULL,
    auth_time REAL NOT NULL,
    expires_at REAL NOT NULL,
    nonce TEXT,
    grant_id TEXT,
    memory TEXT
);
CREATE INDEX IF NOT EXISTS auth_codes_subject ON auth_codes (subject);
CREATE INDEX IF NOT EXISTS auth_codes_client ON auth_codes (client_id);
CREATE INDEX IF NOT EXISTS auth_codes_expiry ON auth_codes (expires_at);
CREATE TABLE IF NOT EXISTS auth_tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
    grant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scopes TEXT NOT NULL,
    resource TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    auth_time REAL,
    superseded_at REAL,
    successor_hash TEXT,
    successor TEXT,
    memory TEXT
);
CREATE INDEX IF NOT EXISTS auth_tokens_grant ON auth_tokens (grant_id);
CREATE INDEX IF NOT EXISTS auth_tokens_subject ON auth_tokens (subject);
CREATE INDEX IF NOT EXISTS auth_tokens_client ON auth_tokens (client_id);
CREATE INDEX IF NOT EXISTS auth_tokens_expiry ON auth_tokens (expires_at);
CREATE TABLE IF NOT EXISTS auth_browser_sessions (
    session_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_browser_sessions_user ON auth_browser_sessions (user_id);
CREATE INDEX IF NOT EXISTS auth_browser_sessions_expiry ON auth_browser_sessions (expires_at);
CREATE TABLE IF NOT EXISTS auth_consents (
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    memory TEXT,
    PRIMARY KEY (user_id, client_id, redirect_uri, resource, scopes)
);
CREATE INDEX IF NOT EXISTS auth_consents_client ON auth_consents (client_id);
CREATE INDEX IF NOT EXISTS auth_consents_expiry ON auth_consents (expires_at);
CREATE TABLE IF NOT EXISTS auth_upstream_links (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE TABLE IF NOT EXISTS auth_upstream_tokens (
    user_id TEXT PRIMARY KEY,
    sealed TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_personal_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    resource TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    last_used_at REAL,
    memory TEXT
);
CREATE INDEX IF NOT EXISTS auth_personal_tokens_subject ON auth_personal_tokens (subject);
CREATE INDEX IF NOT EXISTS auth_personal_tokens_expiry ON auth_personal_tokens (expires_at);
CREATE TABLE IF NOT EXISTS auth_revocations (
    id INTEGER PRIMARY KEY,
    subject TEXT,
    client_id TEXT,
    grant_id TEXT,
    created_at REAL NOT NULL,
    memory TEXT
)
"""

# How long a revocation stays in the log: far longer than any reader's polling interval.
REVOCATION_LOG_SECONDS = 3600


# Columns added to existing tables since the first release: (table, column, declaration).
ADDED_COLUMNS = (
    ("auth_codes", "nonce", "TEXT"),
    ("auth_codes", "grant_id", "TEXT"),
    ("auth_tokens", "auth_time", "REAL"),
    ("auth_tokens", "superseded_at", "REAL"),
    ("auth_tokens", "successor_hash", "TEXT"),
    ("auth_tokens", "successor", "TEXT"),
    ("auth_users", "state", "TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'removing'))"),
    # Named memories (auth.memories): NULL is the default memory, which is what every record made
    # before them is bound to.
    ("auth_codes", "memory", "TEXT"),
    ("auth_tokens", "memory", "TEXT"),
    ("auth_consents", "memory", "TEXT"),
    ("auth_personal_tokens", "memory", "TEXT"),
    ("auth_revocations", "memory", "TEXT"),
)


def migrate(db: Database) -> None:
    """Bring a database file created by an older version up to `SCHEMA` (run after it)."""
    with db.transaction() as conn:
        for table, column, declaration in ADDED_COLUMNS:
            present = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                if (table, column) == ("auth_tokens", "auth_time"):
                    # Older tokens: the best known start of their grant is their own issue time.
                    conn.execute("UPDATE auth_tokens SET auth_time = issued_at")


def _delete_user_records(conn: sqlite3.Connection, user_id: str) -> None:
    """Everything that lets the account act: codes, tokens, browser logins, remembered approvals,
    its upstream link (a new sign-in through the provider then makes a new account) and the
    upstream tokens kept for it."""
    conn.execute("DELETE FROM auth_codes WHERE subject = ?", (user_id,))
    conn.execute("DELETE FROM auth_tokens WHERE subject = ?", (user_id,))
    conn.execute("DELETE FROM auth_personal_tokens WHERE subject = ?", (user_id,))
    conn.execute("DELETE FROM auth_browser_sessions WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM auth_consents WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM auth_upstream_links WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM auth_upstream_tokens WHERE user_id = ?", (user_id,))


def _scopes(value: str) -> tuple[str, ...]:
    return tuple(value.split())


def _client(row: sqlite3.Row) -> Client:
    return Client.model_validate_json(row["registration"])


def _user(row: sqlite3.Row) -> User:
    return User(id=row["id"], username=row["username"], password_hash=row["password_hash"],
                created_at=row["created_at"], state=AccountState(row["state"]))


def _code(row: sqlite3.Row) -> AuthorizationCode:
    return AuthorizationCode(
        code_hash=row["code_hash"], client_id=row["client_id"], redirect_uri=row["redirect_uri"],
        code_challenge=row["code_challenge"], scopes=_scopes(row["scopes"]), resource=row["resource"],
        subject=row["subject"], auth_time=row["auth_time"], expires_at=row["expires_at"], nonce=row["nonce"],
        grant_id=row["grant_id"], memory=row["memory"],
    )


def _token(row: sqlite3.Row) -> Token:
    return Token(
        token_hash=row["token_hash"], kind=row["kind"], grant_id=row["grant_id"], client_id=row["client_id"],
        subject=row["subject"], scopes=_scopes(row["scopes"]), resource=row["resource"],
        issued_at=row["issued_at"], expires_at=row["expires_at"], auth_time=row["auth_time"],
        superseded_at=row["superseded_at"], memory=row["memory"],
    )


def _personal(row: sqlite3.Row) -> PersonalToken:
    return PersonalToken(
        id=row["id"], token_hash=row["token_hash"], subject=row["subject"], name=row["name"],
        scopes=_scopes(row["scopes"]), resource=row["resource"], created_at=row["created_at"],
        expires_at=row["expires_at"], last_used_at=row["last_used_at"], memory=row["memory"],
    )


def _consent_scopes(scopes: tuple[str, ...]) -> str:
    # A set: the same scopes in another order are the same approval.
    return " ".join(sorted(set(scopes)))


def _consent(row: sqlite3.Row) -> RememberedConsent:
    return RememberedConsent(
        user_id=row["user_id"], client_id=row["client_id"], redirect_uri=row["redirect_uri"],
        resource=row["resource"], scopes=_scopes(row["scopes"]), created_at=row["created_at"],
        expires_at=row["expires_at"], memory=row["memory"],
    )


_INSERT_TOKEN = """INSERT INTO auth_tokens (token_hash, kind, grant_id, client_id, subject, scopes, resource,
                   issued_at, expires_at, auth_time, memory) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""  # noqa: S105 - SQL


def _token_row(t: Token) -> tuple[object, ...]:
    return (t.token_hash, t.kind, t.grant_id, t.client_id, t.subject, " ".join(t.scopes), t.resource,
            t.issued_at, t.expires_at, t.auth_time, t.memory)


def _record_client_use(conn: sqlite3.Connection, tokens: Sequence[Token]) -> None:
    """Issuing tokens marks their client used (`auth.store` contract), inside the caller's
    transaction."""
    last: dict[str, float] = {}
    for t in tokens:
        last[t.client_id] = max(t.issued_at, last.get(t.client_id, t.issued_at))
    conn.executemany(
        """INSERT INTO auth_client_use (client_id, last_used_at) VALUES (?, ?)
           ON CONFLICT (client_id) DO UPDATE SET last_used_at = max(last_used_at, excluded.last_used_at)""",
        list(last.items()),
    )


def _delete_client_records(conn: sqlite3.Connection, client_ids: Sequence[str]) -> None:
    """Everything hanging off deleted clients (the cascade of `delete_client`)."""
    params = [(client_id,) for client_id in client_ids]
    conn.executemany("DELETE FROM auth_tokens WHERE client_id = ?", params)
    conn.executemany("DELETE FROM auth_codes WHERE client_id = ?", params)
    conn.executemany("DELETE FROM auth_consents WHERE client_id = ?", params)
    conn.executemany("DELETE FROM auth_client_use WHERE client_id = ?", params)


class AuthTables:
    """Mixin implementing `auth.store.AuthStore`; the concrete storage class provides `self.db`."""

    SCHEMA: str = SCHEMA
    db: Database

    # Clients

    async def save_client(self, client: Client) -> None:
        # An upsert, not INSERT OR REPLACE: re-saving a client (a re-fetched metadata document)
        # keeps the row's issue time, which the unused-registration purge goes by.
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                """INSERT INTO auth_clients (client_id, issued_at, registration) VALUES (?, ?, ?)
                   ON CONFLICT (client_id) DO UPDATE SET registration = excluded.registration""",
                (client.client_id, client.client_id_issued_at, client.model_dump_json()),
            )
        await self.db.write(write)

    async def get_client(self, client_id: str) -> Client | None:
        row = await self.db.read(_one, "SELECT registration FROM auth_clients WHERE client_id = ?", (client_id,))
        return _client(row) if row else None

    async def list_clients(self) -> list[Client]:
        rows = await self.db.read(_all, "SELECT registration FROM auth_clients ORDER BY issued_at, client_id", ())
        return [_client(r) for r in rows]

    async def delete_client(self, client_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> int:
            deleted = conn.execute("DELETE FROM auth_clients WHERE client_id = ?", (client_id,)).rowcount
            _delete_client_records(conn, [client_id])
            return int(deleted)
        return await self.db.write(write) > 0

    async def purge_clients(self, unused_issued_before: float, idle_before: float, now: float,
                            limit: int) -> int:
        # Oldest registrations first; a client holding a live token or code is skipped whatever
        # its record says (its use row may lag behind, e.g. a store restored from a backup).
        def write(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                """DELETE FROM auth_clients WHERE client_id IN (
                     SELECT c.client_id FROM auth_clients c LEFT JOIN auth_client_use u USING (client_id)
                     WHERE ((u.last_used_at IS NULL AND c.issued_at < :unused) OR u.last_used_at < :idle)
                       AND NOT EXISTS (SELECT 1 FROM auth_tokens t
                                       WHERE t.client_id = c.client_id AND t.expires_at > :now)
                       AND NOT EXISTS (SELECT 1 FROM auth_codes k
                                       WHERE k.client_id = c.client_id AND k.expires_at > :now)
                     ORDER BY c.issued_at LIMIT :limit)
                   RETURNING client_id""",
                {"unused": unused_issued_before, "idle": idle_before, "now": now, "limit": limit},
            ).fetchall()
            _delete_client_records(conn, [r["client_id"] for r in rows])
            return len(rows)
        return await self.db.write(write)

    # Users

    async def add_user(self, user: User, *, first: bool = False) -> None:
        def write(conn: sqlite3.Connection) -> None:
            # One statement, in the writer's transaction: no account can appear between the
            # check and the insert.
            only_first = " WHERE NOT EXISTS (SELECT 1 FROM auth_users)" if first else ""
            try:
                added = conn.execute(
                    "INSERT INTO auth_users (id, username, password_hash, created_at, state) SELECT ?, ?, ?, ?, ?"
                    + only_first, (user.id, user.username, user.password_hash, user.created_at, user.state)).rowcount
            except sqlite3.IntegrityError as exc:
                raise UserExistsError(user.username) from exc
            if not added:
                raise NotFirstUserError(user.username)
        await self.db.write(write)

    async def get_user(self, user_id: str) -> User | None:
        row = await self.db.read(_one, "SELECT * FROM auth_users WHERE id = ? AND state = ?",
                                 (user_id, AccountState.ACTIVE))
        return _user(row) if row else None

    async def get_user_by_name(self, username: str) -> User | None:
        row = await self.db.read(_one, "SELECT * FROM auth_users WHERE username = ? AND state = ?",
                                 (username, AccountState.ACTIVE))
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        return [_user(r) for r in await self.db.read(_all, "SELECT * FROM auth_users ORDER BY username", ())]

    async def set_password_hash(self, user_id: str, password_hash: str, *, replacing: str | None = None) -> bool:
        if replacing is None:
            return await self.db.write(_count, "UPDATE auth_users SET password_hash = ? WHERE id = ?",
                                       (password_hash, user_id)) > 0
        return await self.db.write(_count, "UPDATE auth_users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                                   (password_hash, user_id, replacing)) > 0

    async def begin_removal(self, username: str) -> User | None:
        def write(conn: sqlite3.Connection) -> User | None:
            row = conn.execute("SELECT * FROM auth_users WHERE username = ?", (username,)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE auth_users SET state = ? WHERE id = ?", (AccountState.REMOVING, row["id"]))
            _delete_user_records(conn, row["id"])
            return _user(row)
        return await self.db.write(write)

    async def remove_user(self, user_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> int:
            deleted = conn.execute("DELETE FROM auth_users WHERE id = ?", (user_id,)).rowcount
            _delete_user_records(conn, user_id)
            # Its memories last: until now a re-run of an interrupted removal still finds their
            # graphs by them (`memory-mcp users remove`).
            conn.execute("DELETE FROM auth_memories WHERE user_id = ?", (user_id,))
            return int(deleted)
        return await self.db.write(write) > 0

    # Accounts of an upstream OpenID provider

    async def link_upstream_user(self, issuer: str, subject: str, user: User, now: float) -> User:
        def write(conn: sqlite3.Connection) -> User:
            row = conn.execute(
                """SELECT u.* FROM auth_upstream_links l JOIN auth_users u ON u.id = l.user_id
                   WHERE l.issuer = ? AND l.subject = ? AND u.state = ?""",
                (issuer, subject, AccountState.ACTIVE)).fetchone()
            if row is not None:
                return _user(row)
            # A link to no active account cannot outlive a removal (it deletes the link in the
            # same transaction); dropped here all the same, so that it never blocks a sign-in.
            conn.execute("DELETE FROM auth_upstream_links WHERE issuer = ? AND subject = ?", (issuer, subject))
            try:
                conn.execute(
                    "INSERT INTO auth_users (id, username, password_hash, created_at) VALUES (?, ?, ?, ?)",
                    (user.id, user.username, user.password_hash, user.created_at))
            except sqlite3.IntegrityError as exc:
                raise UserExistsError(user.username) from exc
            conn.execute("INSERT INTO auth_upstream_links (issuer, subject, user_id, created_at) VALUES (?, ?, ?, ?)",
                         (issuer, subject, user.id, now))
            return user
        return await self.db.write(write)

    async def get_upstream_link(self, user_id: str) -> UpstreamLink | None:
        row = await self.db.read(_one, "SELECT * FROM auth_upstream_links WHERE user_id = ?", (user_id,))
        return UpstreamLink(row["issuer"], row["subject"], row["user_id"], row["created_at"]) if row else None

    async def get_upstream_tokens(self, user_id: str) -> str | None:
        row = await self.db.read(_one, "SELECT sealed FROM auth_upstream_tokens WHERE user_id = ?", (user_id,))
        return str(row["sealed"]) if row else None

    async def set_upstream_tokens(self, user_id: str, sealed: str | None, *, replacing: str | None = None) -> bool:
        if replacing is not None:
            if sealed is None:
                return await self.db.write(_count, "DELETE FROM auth_upstream_tokens WHERE user_id = ? AND sealed = ?",
                                           (user_id, replacing)) > 0
            return await self.db.write(
                _count, "UPDATE auth_upstream_tokens SET sealed = ? WHERE user_id = ? AND sealed = ?",
                (sealed, user_id, replacing)) > 0
        if sealed is None:
            await self.db.write(_count, "DELETE FROM auth_upstream_tokens WHERE user_id = ?", (user_id,))
            return True
        await self.db.write(_count, """INSERT INTO auth_upstream_tokens (user_id, sealed) VALUES (?, ?)
                                       ON CONFLICT (user_id) DO UPDATE SET sealed = excluded.sealed""",
                            (user_id, sealed))
        return True

    # Codes and tokens

    async def save_code(self, code: AuthorizationCode, login_hash: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM auth_codes WHERE expires_at <= ?", (code.auth_time,))
            inserted = conn.execute(
                """INSERT INTO auth_codes (code_hash, client_id, redirect_uri, code_challenge, scopes, resource,
                   subject, auth_time, expires_at, nonce, memory) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
                   WHERE EXISTS (SELECT 1 FROM auth_browser_sessions WHERE session_hash = ? AND user_id = ?)""",
                (code.code_hash, code.client_id, code.redirect_uri, code.code_challenge, " ".join(code.scopes),
                 code.resource, code.subject, code.auth_time, code.expires_at, code.nonce, code.memory, login_hash,
                 code.subject),
            ).rowcount
            return inserted > 0
        return await self.db.write(write)

    async def consume_code(self, code_hash: str, grant_id: str, now: float) -> Redemption:
        def write(conn: sqlite3.Connection) -> Redemption:
            row = conn.execute("SELECT * FROM auth_codes WHERE code_hash = ? AND expires_at > ?",
                               (code_hash, now)).fetchone()
            if row is None:
                return Redemption("invalid")
            if row["grant_id"] is None:
                conn.execute("UPDATE auth_codes SET grant_id = ? WHERE code_hash = ?", (grant_id, code_hash))
                return Redemption("redeemed", replace(_code(row), grant_id=grant_id))
            # Replayed: the record goes too, so a third attempt is plainly unknown and a
            # `save_code_tokens` still in flight for the first redemption stores nothing.
            conn.execute("DELETE FROM auth_codes WHERE code_hash = ?", (code_hash,))
            conn.execute("DELETE FROM auth_tokens WHERE grant_id = ?", (row["grant_id"],))
            return Redemption("replayed", _code(row))
        return await self.db.write(write)

    async def save_code_tokens(self, code_hash: str, tokens: Sequence[Token]) -> bool:
        grant_ids = {t.grant_id for t in tokens}
        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT grant_id FROM auth_codes WHERE code_hash = ?", (code_hash,)).fetchone()
            if row is None or row["grant_id"] is None or grant_ids != {row["grant_id"]}:
                return False
            conn.executemany(_INSERT_TOKEN, [_token_row(t) for t in tokens])
            _record_client_use(conn, tokens)
            return True
        return await self.db.write(write)

    async def save_tokens(self, tokens: Sequence[Token]) -> None:
        if not tokens:
            return
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM auth_tokens WHERE expires_at <= ?", (min(t.issued_at for t in tokens),))
            conn.executemany(_INSERT_TOKEN, [_token_row(t) for t in tokens])
            _record_client_use(conn, tokens)
        await self.db.write(write)

    async def get_token(self, token_hash: str, now: float) -> Token | None:
        row = await self.db.read(
            _one, "SELECT * FROM auth_tokens WHERE token_hash = ? AND expires_at > ? AND superseded_at IS NULL",
            (token_hash, now))
        return _token(row) if row else None

    async def get_refresh_token(self, token_hash: str, now: float) -> Token | None:
        row = await self.db.read(
            _one, "SELECT * FROM auth_tokens WHERE token_hash = ? AND kind = 'refresh' AND expires_at > ?",
            (token_hash, now))
        return _token(row) if row else None

    async def rotate_refresh_token(self, old_hash: str, new_tokens: Sequence[Token], successor: str,
                                   now: float, grace: float) -> Rotation:
        # One transaction decides and acts, so two concurrent refreshes with one token serialize:
        # the first rotates, the second finds it superseded a moment ago and gets the same pair.
        def write(conn: sqlite3.Connection) -> Rotation:
            old = conn.execute(
                "SELECT * FROM auth_tokens WHERE token_hash = ? AND kind = 'refresh' AND expires_at > ?",
                (old_hash, now)).fetchone()
            if old is None:
                return Rotation("invalid")
            if old["superseded_at"] is None:
                new_refresh = [t.token_hash for t in new_tokens if t.kind == "refresh"]
                conn.execute("UPDATE auth_tokens SET superseded_at = ?, successor_hash = ?, successor = ? "
                             "WHERE token_hash = ?", (now, new_refresh[0] if new_refresh else None, successor,
                                                      old_hash))
                conn.execute("DELETE FROM auth_tokens WHERE expires_at <= ?", (now,))
                conn.executemany(_INSERT_TOKEN, [_token_row(t) for t in new_tokens])
                _record_client_use(conn, new_tokens)
                return Rotation("rotated")
            # A negative age (the clock went back since the rotation) is not within grace: it says
            # nothing about how long ago the token was replaced, so it is treated as a replay.
            if 0 <= now - old["superseded_at"] <= grace:
                live = conn.execute(
                    "SELECT 1 FROM auth_tokens WHERE token_hash = ? AND expires_at > ? AND superseded_at IS NULL",
                    (old["successor_hash"], now)).fetchone()
                return Rotation("retry", old["successor"]) if live else Rotation("invalid")
            conn.execute("DELETE FROM auth_tokens WHERE grant_id = ?", (old["grant_id"],))
            return Rotation("replayed")
        return await self.db.write(write)

    async def delete_token(self, token_hash: str) -> Token | None:
        rows = await self.db.write(_all, "DELETE FROM auth_tokens WHERE token_hash = ? RETURNING *", (token_hash,))
        return _token(rows[0]) if rows else None

    async def revoke_grant(self, grant_id: str) -> int:
        return await self.db.write(_count, "DELETE FROM auth_tokens WHERE grant_id = ?", (grant_id,))

    async def list_subject_tokens(self, subject: str, now: float) -> list[Token]:
        rows = await self.db.read(
            _all, "SELECT * FROM auth_tokens WHERE subject = ? AND expires_at > ? ORDER BY issued_at, token_hash",
            (subject, now))
        return [_token(r) for r in rows]

    async def revoke_subject(self, subject: str, client_id: str | None = None) -> int:
        where = "subject = ?" if client_id is None else "subject = ? AND client_id = ?"
        params = (subject,) if client_id is None else (subject, client_id)
        def write(conn: sqlite3.Connection) -> int:
            tokens = conn.execute(f"DELETE FROM auth_tokens WHERE {where}", params).rowcount  # noqa: S608
            codes = conn.execute(f"DELETE FROM auth_codes WHERE {where}", params).rowcount  # noqa: S608
            personal = 0 if client_id is not None else conn.execute(
                "DELETE FROM auth_personal_tokens WHERE subject = ?", (subject,)).rowcount
            return int(tokens + codes + personal)
        return await self.db.write(write)

    # Personal access tokens

    async def save_personal_token(self, token: PersonalToken) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM auth_personal_tokens WHERE expires_at <= ?", (token.created_at,))
            inserted = conn.execute(
                """INSERT INTO auth_personal_tokens (id, token_hash, subject, name, scopes, resource, created_at,
                   expires_at, memory) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?
                   WHERE EXISTS (SELECT 1 FROM auth_users WHERE id = ? AND state = ?)""",
                (token.id, token.token_hash, token.subject, token.name, " ".join(token.scopes), token.resource,
                 token.created_at, token.expires_at, token.memory, token.subject, AccountState.ACTIVE),
            ).rowcount
            return inserted > 0
        return await self.db.write(write)

    async def get_personal_token(self, token_hash: str, now: float) -> PersonalToken | None:
        row = await self.db.read(
            _one, "SELECT * FROM auth_personal_tokens WHERE token_hash = ? AND (expires_at IS NULL OR expires_at > ?)",
            (token_hash, now))
        return _personal(row) if row else None

    async def list_personal_tokens(self, subject: str, now: float) -> list[PersonalToken]:
        rows = await self.db.read(
            _all, """SELECT * FROM auth_personal_tokens WHERE subject = ? AND (expires_at IS NULL OR expires_at > ?)
                     ORDER BY created_at, id""", (subject, now))
        return [_personal(r) for r in rows]

    async def delete_personal_token(self, token_id: str) -> PersonalToken | None:
        rows = await self.db.write(_all, "DELETE FROM auth_personal_tokens WHERE id = ? RETURNING *", (token_id,))
        return _personal(rows[0]) if rows else None

    async def touch_personal_token(self, token_id: str, used_at: float) -> None:
        await self.db.write(
            _count, """UPDATE auth_personal_tokens SET last_used_at = ?
                       WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)""", (used_at, token_id, used_at))

    # Browser logins

    async def create_browser_session(self, session_hash: str, user_id: str, password_hash: str, created_at: float,
                                     expires_at: float) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM auth_browser_sessions WHERE expires_at <= ?", (created_at,))
            # Only while the password that was verified is still the account's (see the protocol).
            inserted = conn.execute(
                """INSERT INTO auth_browser_sessions (session_hash, user_id, created_at, expires_at)
                   SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM auth_users WHERE id = ? AND password_hash = ?)""",
                (session_hash, user_id, created_at, expires_at, user_id, password_hash),
            ).rowcount
            return inserted > 0
        return await self.db.write(write)

    async def get_browser_session(self, session_hash: str, now: float) -> BrowserLogin | None:
        row = await self.db.read(
            _one, "SELECT user_id, created_at FROM auth_browser_sessions WHERE session_hash = ? AND expires_at > ?",
            (session_hash, now))
        return BrowserLogin(str(row["user_id"]), float(row["created_at"])) if row else None

    async def delete_browser_session(self, session_hash: str) -> None:
        await self.db.write(_count, "DELETE FROM auth_browser_sessions WHERE session_hash = ?", (session_hash,))

    async def end_browser_sessions(self, user_id: str) -> int:
        return await self.db.write(_count, "DELETE FROM auth_browser_sessions WHERE user_id = ?", (user_id,))

    # Remembered consents

    async def remember_consent(self, consent: RememberedConsent) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM auth_consents WHERE expires_at <= ?", (consent.created_at,))
            conn.execute(
                """INSERT INTO auth_consents (user_id, client_id, redirect_uri, resource, scopes, created_at,
                   expires_at, memory) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (user_id, client_id, redirect_uri, resource, scopes)
                   DO UPDATE SET created_at = excluded.created_at, expires_at = excluded.expires_at,
                                 memory = excluded.memory""",
                (consent.user_id, consent.client_id, consent.redirect_uri, consent.resource,
                 _consent_scopes(consent.scopes), consent.created_at, consent.expires_at, consent.memory),
            )
        await self.db.write(write)

    async def find_consent(self, user_id: str, client_id: str, redirect_uri: str, resource: str,
                           scopes: tuple[str, ...], now: float) -> RememberedConsent | None:
        row = await self.db.read(
            _one,
            """SELECT * FROM auth_consents WHERE user_id = ? AND client_id = ? AND redirect_uri = ?
               AND resource = ? AND scopes = ? AND expires_at > ?""",
            (user_id, client_id, redirect_uri, resource, _consent_scopes(scopes), now),
        )
        return _consent(row) if row else None

    async def list_consents(self, user_id: str, now: float) -> list[RememberedConsent]:
        rows = await self.db.read(
            _all, "SELECT * FROM auth_consents WHERE user_id = ? AND expires_at > ? ORDER BY client_id, created_at",
            (user_id, now))
        return [_consent(r) for r in rows]

    async def withdraw_consents(self, user_id: str, client_id: str) -> int:
        def write(conn: sqlite3.Connection) -> int:
            forgotten = conn.execute("DELETE FROM auth_consents WHERE user_id = ? AND client_id = ?",
                                     (user_id, client_id)).rowcount
            conn.execute("DELETE FROM auth_tokens WHERE subject = ? AND client_id = ?", (user_id, client_id))
            conn.execute("DELETE FROM auth_codes WHERE subject = ? AND client_id = ?", (user_id, client_id))
            return int(forgotten)
        return await self.db.write(write)

    async def forget_consents(self, user_id: str) -> int:
        return await self.db.write(_count, "DELETE FROM auth_consents WHERE user_id = ?", (user_id,))

    async def record_revocation(self, revocation: Revocation, now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            # The newest row stays whatever its age: with none left, the next revocation would get a
            # rowid readers' cursors are already past, and no running server would see it.
            conn.execute("DELETE FROM auth_revocations WHERE created_at < ? AND id < (SELECT max(id) FROM "
                         "auth_revocations)", (now - REVOCATION_LOG_SECONDS,))
            conn.execute("INSERT INTO auth_revocations (subject, client_id, grant_id, created_at, memory) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (revocation.subject, revocation.client_id, revocation.grant_id, now, revocation.memory))
        await self.db.write(write)

    async def revocations_after(self, cursor: int | None) -> tuple[int, list[Revocation]]:
        if cursor is None:
            rows = await self.db.read(_all, "SELECT coalesce(max(id), 0) FROM auth_revocations", ())
            return int(rows[0][0]), []
        rows = await self.db.read(
            _all, "SELECT id, subject, client_id, grant_id, memory FROM auth_revocations WHERE id > ? ORDER BY id",
            (cursor,))
        if not rows:
            return cursor, []
        return int(rows[-1]["id"]), [Revocation(r["subject"], r["client_id"], r["grant_id"], r["memory"])
                                     for r in rows]

    async def wait_revocations(self, cursor: int, seconds: float) -> tuple[int, list[Revocation]]:
        # Nothing can wake a reader of a file: poll.
        await asyncio.sleep(seconds)
        return await self.revocations_after(cursor)


# One statement, as a `Database.read`/`write` job.

def _one(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
    return row


def _all(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


def _count(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> int:
    """The rows a statement changed."""
    return int(conn.execute(sql, params).rowcount)

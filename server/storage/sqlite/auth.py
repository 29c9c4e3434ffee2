"""The authorization server's tables in the embedded SQLite backend (`auth.store.AuthStore`).

Schema and the reasons for it:

* `auth_clients`: one row per registered client. The full registration (unknown fields included,
  to echo them) is a JSON column; nothing ever queries inside it.
* `auth_users`: `id` is the OAuth subject, random and never reused; `username` is UNIQUE, which
  is what makes `add_user` race-free against a concurrent CLI process.
* `auth_codes`, `auth_tokens`, `auth_browser_sessions` are keyed by the SHA-256 of the secret, never
  the secret: a copy of this file yields no usable credential, and a bearer check is one primary
  key lookup. Secondary indexes exist only for the bulk deletes (grant, subject, client, expiry).
* `auth_consents`: approvals a user asked to remember (`auth.consent`), keyed by everything a
  request must match (user, client, redirect URI, resource, scope set as sorted space-joined
  string). Plain identifiers, no secret: nothing here lets anyone act as the user.
* No foreign keys: rows are created in an order the auth flow controls, and deletes cascade
  explicitly inside one transaction, which keeps the contract identical to the Redis backend.
* Expired rows are never returned (every read checks `expires_at`) and are purged lazily when new
  rows of the same kind are written, via the `expires_at` indexes.

Atomicity: every method runs without awaiting, so it is atomic against other coroutines of this
process; multi-statement writes use `BEGIN IMMEDIATE` (`Database.transaction`) against other
processes. `consume_code` and `rotate_refresh_token` hinge on a single DELETE whose row count (or
RETURNING row) decides the winner, so two concurrent redemptions cannot both succeed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from auth.models import AuthorizationCode, Client, RememberedConsent, Revocation, Token, User
from auth.store import UserExistsError
from server.storage.sqlite.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_clients (
    client_id TEXT PRIMARY KEY,
    issued_at INTEGER NOT NULL,
    registration TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL
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
    expires_at REAL NOT NULL
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
    expires_at REAL NOT NULL
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
    PRIMARY KEY (user_id, client_id, redirect_uri, resource, scopes)
);
CREATE INDEX IF NOT EXISTS auth_consents_client ON auth_consents (client_id);
CREATE INDEX IF NOT EXISTS auth_consents_expiry ON auth_consents (expires_at);
CREATE TABLE IF NOT EXISTS auth_revocations (
    id INTEGER PRIMARY KEY,
    subject TEXT,
    client_id TEXT,
    grant_id TEXT,
    created_at REAL NOT NULL
)
"""

# How long a revocation stays in the log: far longer than any reader's polling interval.
REVOCATION_LOG_SECONDS = 3600


def _scopes(value: str) -> tuple[str, ...]:
    return tuple(value.split())


def _client(row: sqlite3.Row) -> Client:
    return Client.model_validate_json(row["registration"])


def _user(row: sqlite3.Row) -> User:
    return User(id=row["id"], username=row["username"], password_hash=row["password_hash"],
                created_at=row["created_at"])


def _code(row: sqlite3.Row) -> AuthorizationCode:
    return AuthorizationCode(
        code_hash=row["code_hash"], client_id=row["client_id"], redirect_uri=row["redirect_uri"],
        code_challenge=row["code_challenge"], scopes=_scopes(row["scopes"]), resource=row["resource"],
        subject=row["subject"], auth_time=row["auth_time"], expires_at=row["expires_at"],
    )


def _token(row: sqlite3.Row) -> Token:
    return Token(
        token_hash=row["token_hash"], kind=row["kind"], grant_id=row["grant_id"], client_id=row["client_id"],
        subject=row["subject"], scopes=_scopes(row["scopes"]), resource=row["resource"],
        issued_at=row["issued_at"], expires_at=row["expires_at"],
    )


def _consent_scopes(scopes: tuple[str, ...]) -> str:
    # A set: the same scopes in another order are the same approval.
    return " ".join(sorted(set(scopes)))


def _consent(row: sqlite3.Row) -> RememberedConsent:
    return RememberedConsent(
        user_id=row["user_id"], client_id=row["client_id"], redirect_uri=row["redirect_uri"],
        resource=row["resource"], scopes=_scopes(row["scopes"]), created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


_INSERT_TOKEN = """INSERT INTO auth_tokens (token_hash, kind, grant_id, client_id, subject, scopes, resource,
                   issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""  # noqa: S105 - SQL, not a secret


def _token_row(t: Token) -> tuple[object, ...]:
    return (t.token_hash, t.kind, t.grant_id, t.client_id, t.subject, " ".join(t.scopes), t.resource,
            t.issued_at, t.expires_at)


class AuthTables:
    """Mixin implementing `auth.store.AuthStore`; the concrete storage class provides `self.db`."""

    SCHEMA: str = SCHEMA
    db: Database

    # Clients

    async def save_client(self, client: Client) -> None:
        self.db.conn.execute(
            "INSERT OR REPLACE INTO auth_clients (client_id, issued_at, registration) VALUES (?, ?, ?)",
            (client.client_id, client.client_id_issued_at, client.model_dump_json()),
        )

    async def get_client(self, client_id: str) -> Client | None:
        row = self.db.conn.execute("SELECT registration FROM auth_clients WHERE client_id = ?",
                                   (client_id,)).fetchone()
        return _client(row) if row else None

    async def list_clients(self) -> list[Client]:
        rows = self.db.conn.execute("SELECT registration FROM auth_clients ORDER BY issued_at, client_id")
        return [_client(r) for r in rows]

    async def delete_client(self, client_id: str) -> bool:
        with self.db.transaction() as conn:
            deleted = conn.execute("DELETE FROM auth_clients WHERE client_id = ?", (client_id,)).rowcount
            conn.execute("DELETE FROM auth_tokens WHERE client_id = ?", (client_id,))
            conn.execute("DELETE FROM auth_codes WHERE client_id = ?", (client_id,))
            conn.execute("DELETE FROM auth_consents WHERE client_id = ?", (client_id,))
        return deleted > 0

    # Users

    async def add_user(self, user: User) -> None:
        try:
            self.db.conn.execute(
                "INSERT INTO auth_users (id, username, password_hash, created_at) VALUES (?, ?, ?, ?)",
                (user.id, user.username, user.password_hash, user.created_at),
            )
        except sqlite3.IntegrityError as exc:
            raise UserExistsError(user.username) from exc

    async def get_user(self, user_id: str) -> User | None:
        row = self.db.conn.execute("SELECT * FROM auth_users WHERE id = ?", (user_id,)).fetchone()
        return _user(row) if row else None

    async def get_user_by_name(self, username: str) -> User | None:
        row = self.db.conn.execute("SELECT * FROM auth_users WHERE username = ?", (username,)).fetchone()
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        return [_user(r) for r in self.db.conn.execute("SELECT * FROM auth_users ORDER BY username")]

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        cursor = self.db.conn.execute("UPDATE auth_users SET password_hash = ? WHERE id = ?",
                                      (password_hash, user_id))
        return cursor.rowcount > 0

    async def remove_user(self, user_id: str) -> bool:
        with self.db.transaction() as conn:
            deleted = conn.execute("DELETE FROM auth_users WHERE id = ?", (user_id,)).rowcount
            conn.execute("DELETE FROM auth_codes WHERE subject = ?", (user_id,))
            conn.execute("DELETE FROM auth_tokens WHERE subject = ?", (user_id,))
            conn.execute("DELETE FROM auth_browser_sessions WHERE user_id = ?", (user_id,))
            conn.execute("DELETE FROM auth_consents WHERE user_id = ?", (user_id,))
        return deleted > 0

    # Codes and tokens

    async def save_code(self, code: AuthorizationCode) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM auth_codes WHERE expires_at <= ?", (code.auth_time,))
            conn.execute(
                """INSERT INTO auth_codes (code_hash, client_id, redirect_uri, code_challenge, scopes, resource,
                   subject, auth_time, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (code.code_hash, code.client_id, code.redirect_uri, code.code_challenge, " ".join(code.scopes),
                 code.resource, code.subject, code.auth_time, code.expires_at),
            )

    async def consume_code(self, code_hash: str, now: float) -> AuthorizationCode | None:
        # DELETE ... RETURNING: the row goes away in the same statement that reads it, so a code
        # is single-use even across processes; an expired code is deleted and refused.
        # fetchall(), not fetchone(): a RETURNING statement only completes (and releases its write
        # lock in autocommit mode) once it has been stepped to the end.
        rows = self.db.conn.execute("DELETE FROM auth_codes WHERE code_hash = ? RETURNING *", (code_hash,)).fetchall()
        row = rows[0] if rows else None
        if row is None or row["expires_at"] <= now:
            return None
        return _code(row)

    async def save_tokens(self, tokens: Sequence[Token]) -> None:
        if not tokens:
            return
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM auth_tokens WHERE expires_at <= ?", (min(t.issued_at for t in tokens),))
            conn.executemany(_INSERT_TOKEN, [_token_row(t) for t in tokens])

    async def get_token(self, token_hash: str, now: float) -> Token | None:
        row = self.db.conn.execute("SELECT * FROM auth_tokens WHERE token_hash = ? AND expires_at > ?",
                                   (token_hash, now)).fetchone()
        return _token(row) if row else None

    async def rotate_refresh_token(self, old_hash: str, new_tokens: Sequence[Token], now: float) -> bool:
        with self.db.transaction() as conn:
            gone = conn.execute(
                "DELETE FROM auth_tokens WHERE token_hash = ? AND kind = 'refresh' AND expires_at > ?",
                (old_hash, now),
            ).rowcount
            if gone == 0:
                return False
            conn.executemany(_INSERT_TOKEN, [_token_row(t) for t in new_tokens])
        return True

    async def delete_token(self, token_hash: str) -> Token | None:
        rows = self.db.conn.execute("DELETE FROM auth_tokens WHERE token_hash = ? RETURNING *",
                                    (token_hash,)).fetchall()
        return _token(rows[0]) if rows else None

    async def revoke_grant(self, grant_id: str) -> int:
        return int(self.db.conn.execute("DELETE FROM auth_tokens WHERE grant_id = ?", (grant_id,)).rowcount)

    async def revoke_subject(self, subject: str, client_id: str | None = None) -> int:
        where = "subject = ?" if client_id is None else "subject = ? AND client_id = ?"
        params = (subject,) if client_id is None else (subject, client_id)
        with self.db.transaction() as conn:
            tokens = conn.execute(f"DELETE FROM auth_tokens WHERE {where}", params).rowcount  # noqa: S608
            codes = conn.execute(f"DELETE FROM auth_codes WHERE {where}", params).rowcount  # noqa: S608
        return int(tokens + codes)

    # Browser logins

    async def create_browser_session(self, session_hash: str, user_id: str, created_at: float,
                                     expires_at: float) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM auth_browser_sessions WHERE expires_at <= ?", (created_at,))
            conn.execute(
                "INSERT INTO auth_browser_sessions (session_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (session_hash, user_id, created_at, expires_at),
            )

    async def get_browser_session_user(self, session_hash: str, now: float) -> str | None:
        row = self.db.conn.execute(
            "SELECT user_id FROM auth_browser_sessions WHERE session_hash = ? AND expires_at > ?",
            (session_hash, now),
        ).fetchone()
        return str(row["user_id"]) if row else None

    async def delete_browser_session(self, session_hash: str) -> None:
        self.db.conn.execute("DELETE FROM auth_browser_sessions WHERE session_hash = ?", (session_hash,))

    # Remembered consents

    async def remember_consent(self, consent: RememberedConsent) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM auth_consents WHERE expires_at <= ?", (consent.created_at,))
            conn.execute(
                """INSERT INTO auth_consents (user_id, client_id, redirect_uri, resource, scopes, created_at,
                   expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (user_id, client_id, redirect_uri, resource, scopes)
                   DO UPDATE SET created_at = excluded.created_at, expires_at = excluded.expires_at""",
                (consent.user_id, consent.client_id, consent.redirect_uri, consent.resource,
                 _consent_scopes(consent.scopes), consent.created_at, consent.expires_at),
            )

    async def find_consent(self, user_id: str, client_id: str, redirect_uri: str, resource: str,
                           scopes: tuple[str, ...], now: float) -> RememberedConsent | None:
        row = self.db.conn.execute(
            """SELECT * FROM auth_consents WHERE user_id = ? AND client_id = ? AND redirect_uri = ?
               AND resource = ? AND scopes = ? AND expires_at > ?""",
            (user_id, client_id, redirect_uri, resource, _consent_scopes(scopes), now),
        ).fetchone()
        return _consent(row) if row else None

    async def list_consents(self, user_id: str, now: float) -> list[RememberedConsent]:
        rows = self.db.conn.execute(
            "SELECT * FROM auth_consents WHERE user_id = ? AND expires_at > ? ORDER BY client_id, created_at",
            (user_id, now))
        return [_consent(r) for r in rows]

    async def withdraw_consents(self, user_id: str, client_id: str) -> int:
        with self.db.transaction() as conn:
            forgotten = conn.execute("DELETE FROM auth_consents WHERE user_id = ? AND client_id = ?",
                                     (user_id, client_id)).rowcount
            conn.execute("DELETE FROM auth_tokens WHERE subject = ? AND client_id = ?", (user_id, client_id))
            conn.execute("DELETE FROM auth_codes WHERE subject = ? AND client_id = ?", (user_id, client_id))
        return int(forgotten)

    async def forget_consents(self, user_id: str) -> int:
        return int(self.db.conn.execute("DELETE FROM auth_consents WHERE user_id = ?", (user_id,)).rowcount)

    async def record_revocation(self, revocation: Revocation, now: float) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM auth_revocations WHERE created_at < ?", (now - REVOCATION_LOG_SECONDS,))
            conn.execute("INSERT INTO auth_revocations (subject, client_id, grant_id, created_at) VALUES (?, ?, ?, ?)",
                         (revocation.subject, revocation.client_id, revocation.grant_id, now))

    async def revocations_after(self, cursor: int | None) -> tuple[int, list[Revocation]]:
        if cursor is None:
            row = self.db.conn.execute("SELECT coalesce(max(id), 0) FROM auth_revocations").fetchone()
            return int(row[0]), []
        rows = self.db.conn.execute(
            "SELECT id, subject, client_id, grant_id FROM auth_revocations WHERE id > ? ORDER BY id",
            (cursor,)).fetchall()
        if not rows:
            return cursor, []
        return int(rows[-1]["id"]), [Revocation(r["subject"], r["client_id"], r["grant_id"]) for r in rows]

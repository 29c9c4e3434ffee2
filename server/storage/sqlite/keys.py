"""ID-token signing keys in the embedded SQLite backend (`auth.store.SigningKeyStore`), and the
cookie key (`server.storage.Storage.cookie_key`: the key file beside the database, `server.keyfile`).

`auth_signing_keys` holds one row per key, keyed by its `kid` (the RFC 7638 thumbprint). The
private JWK column holds ciphertext only (Fernet under a key derived from the server's key file,
see `auth.rfc7517`): a copy of the database alone cannot sign tokens. At most one row has
`retired_at` NULL (the current key); retired rows stay until `published_until` so that tokens
they signed still verify against the JWKS, and are dropped by the next rotation after that.

Atomicity: `add_signing_key` checks for a current key and inserts in one `BEGIN IMMEDIATE`
transaction (`Database.write`), so two processes generating a first key at once keep exactly one.
"""

from __future__ import annotations

import asyncio
import sqlite3

from auth.models import SigningKey
from server import keyfile
from server.storage.sqlite.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    private_jwk TEXT NOT NULL,
    created_at REAL NOT NULL,
    retired_at REAL,
    published_until REAL
)
"""


def _key(row: sqlite3.Row) -> SigningKey:
    return SigningKey(kid=row["kid"], alg=row["alg"], public_jwk=row["public_jwk"], private_jwk=row["private_jwk"],
                      created_at=row["created_at"], retired_at=row["retired_at"],
                      published_until=row["published_until"])


class SigningKeyTables:
    """Mixin implementing `auth.store.SigningKeyStore`; the storage class provides `self.db`."""

    SCHEMA: str = SCHEMA
    db: Database

    async def signing_keys(self, now: float) -> list[SigningKey]:
        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(
                """SELECT * FROM auth_signing_keys WHERE retired_at IS NULL OR published_until > ?
                   ORDER BY retired_at IS NOT NULL, created_at DESC""", (now,)).fetchall()
        return [_key(r) for r in await self.db.read(read)]

    async def add_signing_key(self, key: SigningKey, now: float, retire_until: float, *, replace: bool) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            current = conn.execute("SELECT 1 FROM auth_signing_keys WHERE retired_at IS NULL").fetchone()
            if current is not None and not replace:
                return False
            conn.execute("UPDATE auth_signing_keys SET retired_at = ?, published_until = ? WHERE retired_at IS NULL",
                         (now, retire_until))
            conn.execute("DELETE FROM auth_signing_keys WHERE published_until <= ?", (now,))
            conn.execute(
                """INSERT INTO auth_signing_keys (kid, alg, public_jwk, private_jwk, created_at)
                   VALUES (?, ?, ?, ?, ?)""",
                (key.kid, key.alg, key.public_jwk, key.private_jwk, key.created_at))
            return True
        return await self.db.write(write)

    async def cookie_key(self) -> bytes:
        # On a thread: reading (or creating) the file waits on the disk.
        return await asyncio.to_thread(keyfile.cookie_key, self.db.path.parent)

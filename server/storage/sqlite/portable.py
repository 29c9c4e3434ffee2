"""The SQLite backend's side of `server.storage.portable`: export a database file (with the key file
beside it) as records, and what an import needs beyond the storage protocols.

An export reads one snapshot: its own read-only connection opens one read transaction and keeps
it to the end, so a server writing meanwhile (WAL) changes nothing it returns. It streams: rows are
read a batch at a time on a worker thread and handed to the event loop, so the memory used does
not grow with the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from itertools import islice
from pathlib import Path

from auth.memories import Memory
from auth.models import AccountState, SigningKey, UpstreamLink, User
from server.keyfile import KEY_FILE
from server.memory.graph import Origin
from server.storage.portable import (
    BATCH,
    ClientRecord,
    ConsentRecord,
    CookieKey,
    EntityRecord,
    LoginRecord,
    MemoryRecord,
    PersonalTokenRecord,
    PortableError,
    Record,
    RelationRecord,
    SessionRecordRecord,
    SigningKeyRecord,
    TokenRecord,
    UserRecord,
)
from server.storage.sqlite.auth import _client, _consent, _personal, _token
from server.storage.sqlite.db import Database
from server.storage.sqlite.keys import _key
from transports.store import SessionRecord


async def export_database(path: Path, now: float) -> AsyncIterator[Record]:
    """The records of the database at `path` and of the key file beside it."""
    conn = await asyncio.to_thread(_open, path)
    try:
        rows = _records(conn, path.parent / KEY_FILE, now)
        while batch := await asyncio.to_thread(lambda: list(islice(rows, BATCH))):
            for record in batch:
                yield record
    finally:
        await asyncio.to_thread(conn.close)


def _open(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise PortableError(f"there is no database at {path}")
    # Worker threads take turns on it, never two at once.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("BEGIN")
    return conn


def _records(conn: sqlite3.Connection, key_file: Path, now: float) -> Iterator[Record]:
    try:
        key = key_file.read_bytes()
    except FileNotFoundError:
        raise PortableError(f"{key_file} is missing: without it the signing keys and browser logins stored in "
                            "the database cannot be used") from None
    yield CookieKey(key)
    # The first read fixes the snapshot the rest of the export sees.
    for row in conn.execute("SELECT * FROM auth_signing_keys WHERE retired_at IS NULL OR published_until > ? "
                            "ORDER BY created_at, kid", (now,)):
        yield SigningKeyRecord(_key(row))
    for row in conn.execute(
            """SELECT u.*, l.issuer, l.subject, l.created_at AS linked_at, t.sealed FROM auth_users u
               LEFT JOIN auth_upstream_links l ON l.user_id = u.id LEFT JOIN auth_upstream_tokens t ON t.user_id = u.id
               ORDER BY u.created_at, u.id"""):
        user = User(id=row["id"], username=row["username"], password_hash=row["password_hash"],
                    created_at=row["created_at"], state=AccountState(row["state"]))
        link = None if row["issuer"] is None else UpstreamLink(row["issuer"], row["subject"], user.id,
                                                                row["linked_at"])
        yield UserRecord(user, link, row["sealed"])
    for row in conn.execute("SELECT * FROM auth_memories ORDER BY created_at, id"):
        yield MemoryRecord(Memory(row["id"], row["user_id"], row["name"], row["created_at"]))
    for row in conn.execute("""SELECT c.registration, u.last_used_at FROM auth_clients c
                               LEFT JOIN auth_client_use u USING (client_id) ORDER BY c.issued_at, c.client_id"""):
        yield ClientRecord(_client(row), row["last_used_at"])
    for row in conn.execute("SELECT * FROM auth_consents WHERE expires_at > ? ORDER BY created_at, user_id", (now,)):
        yield ConsentRecord(_consent(row))
    for row in conn.execute("SELECT * FROM auth_browser_sessions WHERE expires_at > ? ORDER BY created_at, "
                            "session_hash", (now,)):
        yield LoginRecord(row["session_hash"], row["user_id"], row["created_at"], row["expires_at"])
    for row in conn.execute("SELECT * FROM auth_tokens WHERE expires_at > ? ORDER BY issued_at, token_hash", (now,)):
        yield TokenRecord(_token(row), row["successor_hash"], row["successor"])
    for row in conn.execute("SELECT * FROM auth_personal_tokens WHERE expires_at IS NULL OR expires_at > ? "
                            "ORDER BY created_at, id", (now,)):
        yield PersonalTokenRecord(_personal(row))
    owners = [row[0] for row in conn.execute(
        """SELECT owner FROM (SELECT owner FROM memory_entities UNION SELECT owner FROM memory_relations)
           WHERE owner NOT IN (SELECT owner FROM memory_owners WHERE state = 'closed') ORDER BY owner""")]
    # Provenance columns are absent from a database no server of this version opened yet: unknown.
    made = {table: ("created_at, created_by" if "created_at" in {row[1] for row in conn.execute(
        f"PRAGMA table_info({table})")} else "NULL, NULL") for table in ("memory_entities", "memory_observations",
                                                                       "memory_relations")}
    for owner in owners:
        yield from _entities(conn, owner, made)
        for row in conn.execute(f"SELECT from_name, to_name, relation_type, {made['memory_relations']} "  # noqa: S608
                                "FROM memory_relations WHERE owner = ? ORDER BY id", (owner,)):
            yield RelationRecord(owner, row[0], row[1], row[2], _origin(row[3], row[4]))
    for row in conn.execute("SELECT * FROM mcp_sessions ORDER BY created_at, session_id"):
        yield SessionRecordRecord(SessionRecord(
            session_id=row["session_id"], owner=row["owner"], user=row["user"], transport=row["transport"],
            protocol_version=row["protocol_version"], created_at=row["created_at"],
            last_seen_at=row["last_seen_at"], client_params=row["client_params"],
            subscriptions=tuple(json.loads(row["subscriptions"])) if row["subscriptions"] else ()))


def _origin(at: float | None, by: str | None) -> Origin | None:
    return None if at is None or by is None else Origin(at, by)


def _entities(conn: sqlite3.Connection, owner: str, made: dict[str, str]) -> Iterator[EntityRecord]:
    current: tuple[int, str, str, Origin | None] | None = None
    observations: list[str] = []
    origins: list[Origin | None] = []
    entity_made = made["memory_entities"].replace("created", "e.created")
    observation_made = made["memory_observations"].replace("created", "o.created")
    for entity_id, name, entity_type, at, by, content, content_at, content_by in conn.execute(
            f"""SELECT e.id, e.name, e.entity_type, {entity_made}, o.content, {observation_made}
                FROM memory_entities e LEFT JOIN memory_observations o ON o.owner = e.owner AND o.entity_id = e.id
                WHERE e.owner = ? ORDER BY e.id, o.id""", (owner,)):  # noqa: S608
        if current is not None and current[0] != entity_id:
            yield EntityRecord(owner, current[1], current[2], tuple(observations), current[3], tuple(origins))
            observations, origins = [], []
        current = (entity_id, name, entity_type, _origin(at, by))
        if content is not None:
            observations.append(content)
            origins.append(_origin(content_at, content_by))
    if current is not None:
        yield EntityRecord(owner, current[1], current[2], tuple(observations), current[3], tuple(origins))


class SQLitePortable:
    """Mixin: `server.storage.portable.PortableStore`'s additions; the storage class provides `self.db`."""

    db: Database

    def export_records(self, now: float) -> AsyncIterator[Record]:
        return export_database(self.db.path, now)

    async def put_cookie_key(self, key: bytes) -> None:
        await asyncio.to_thread(_put_key_file, self.db.path.parent / KEY_FILE, key)

    async def put_signing_key(self, key: SigningKey) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                """INSERT INTO auth_signing_keys (kid, alg, public_jwk, private_jwk, created_at, retired_at,
                   published_until) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (key.kid, key.alg, key.public_jwk, key.private_jwk, key.created_at, key.retired_at,
                 key.published_until))
        await self.db.write(write)

    async def put_client_use(self, client_id: str, at: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("""INSERT INTO auth_client_use (client_id, last_used_at) VALUES (?, ?)
                            ON CONFLICT (client_id)
                            DO UPDATE SET last_used_at = max(last_used_at, excluded.last_used_at)""", (client_id, at))
        await self.db.write(write)

    async def put_supersession(self, record: TokenRecord) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE auth_tokens SET superseded_at = ?, successor_hash = ?, successor = ? "
                         "WHERE token_hash = ?", (record.token.superseded_at, record.successor_hash,
                                                  record.successor, record.token.token_hash))
        await self.db.write(write)


def _put_key_file(path: Path, key: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.read_bytes() != key:
            raise PortableError(f"{path} holds another server key: import into an empty data directory") from None
        return
    with os.fdopen(fd, "wb") as out:
        out.write(key)
        out.flush()
        os.fsync(out.fileno())

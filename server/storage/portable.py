"""The backend-neutral form of what a store holds: how data moves from one backend to the other.

Each backend exports its durable records as a stream of the records below (`PortableStore.
export_records`), in the order `KINDS` lists, and any backend imports such a stream
(`import_records`): mostly through the storage protocols themselves (`add_user`, `save_client`,
`save_tokens`, `create_entities`, `save_session`...), so that every index, counter and search
fold of the target is written by the code that always writes it; what the protocols cannot say
(the cookie key, a client's last use, a rotated refresh token's successor, a signing key as
stored) through the few `put_*` methods of `PortableStore`.

Carried: the cookie key (signing keys and kept upstream tokens are encrypted under keys derived
from it, and browser login cookies are sealed with it), accounts, OAuth clients and when each last
obtained a token, remembered approvals, tokens and personal access tokens that have not expired
(their hashes, as stored, and a personal token's last use),
browser logins, signing keys (the private key as its ciphertext), upstream links and kept upstream
tokens (ciphertext), memory graphs (entities and relations in creation order, observations in the
order added, each with its provenance: when and by which client it was created) and MCP session
records. Not carried: rate-limit counts (they matter for minutes),
authorization codes (they live for minutes, and a client holding one simply signs in again),
the revocation log (it tells the running processes of revocations made in the last seconds; the
revoked records themselves are gone, so there is nothing to carry), the event logs of resumable
streams (a reconnecting client resumes from an event id, and without the log it is answered as a
fresh stream: no message is replayed twice) and records past their expiry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Final, Protocol

from auth.models import AccountState, Client, PersonalToken, RememberedConsent, SigningKey, Token, UpstreamLink, User
from server.memory.graph import Origin, Quota, StoredEntity, StoredRelation
from server.storage import Storage
from transports.store import SessionRecord


@dataclass(frozen=True, slots=True)
class CookieKey:
    key: bytes


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    key: SigningKey


@dataclass(frozen=True, slots=True)
class UserRecord:
    user: User
    link: UpstreamLink | None = None
    upstream_tokens: str | None = None
    """Sealed under the cookie key; opaque here."""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client: Client
    last_used_at: float | None = None
    """When it last obtained a token (None: never): what the purge of idle registrations reads."""


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    consent: RememberedConsent


@dataclass(frozen=True, slots=True)
class LoginRecord:
    session_hash: str
    user_id: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token: Token
    successor_hash: str | None = None
    successor: str | None = None
    """A rotated refresh token's sealed answer (`token.superseded_at` set): what a retry gets."""


@dataclass(frozen=True, slots=True)
class PersonalTokenRecord:
    token: PersonalToken
    """As stored: the secret's hash, never the secret; with its last use."""


@dataclass(frozen=True, slots=True)
class EntityRecord:
    owner: str
    name: str
    entity_type: str
    observations: tuple[str, ...]
    origin: Origin | None = None
    observation_origins: tuple[Origin | None, ...] = ()
    """Parallel to `observations` (shorter, or None in places: unknown)."""


@dataclass(frozen=True, slots=True)
class RelationRecord:
    owner: str
    source: str
    target: str
    relation_type: str
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class SessionRecordRecord:
    record: SessionRecord


Record = (CookieKey | SigningKeyRecord | UserRecord | ClientRecord | ConsentRecord | LoginRecord | TokenRecord
          | PersonalTokenRecord | EntityRecord | RelationRecord | SessionRecordRecord)

# The order of an export, and the names counts are reported under. An importer relies on it: a
# login names its user, a token its client, a relation entities created before it (per owner:
# the owner's entities, then the owner's relations).
KINDS: Final[dict[type, str]] = {
    CookieKey: "cookie key", SigningKeyRecord: "signing keys", UserRecord: "accounts", ClientRecord: "clients",
    ConsentRecord: "approvals", LoginRecord: "browser logins", TokenRecord: "tokens",
    PersonalTokenRecord: "personal access tokens", EntityRecord: "entities",
    RelationRecord: "relations", SessionRecordRecord: "MCP sessions",
}

BATCH: Final = 256
"""Entities or relations written per call on import; what an export reads per step."""

# An import writes what the source held, whatever the quotas now are.
_NO_QUOTA: Final = Quota(entities=0, observations=0, bytes=0)


class PortableError(Exception):
    """The stream cannot be imported as it is (the target holds another cookie key, a user name
    twice...): the message says what."""


class PortableStore(Storage, Protocol):
    def export_records(self, now: float) -> AsyncIterator[Record]:
        """Every durable record, in `KINDS` order, records expired by `now` left out."""
        ...

    async def put_cookie_key(self, key: bytes) -> None:
        """Store the server secret; `PortableError` if the store already holds a different one."""

    async def put_signing_key(self, key: SigningKey) -> None:
        """Store a key as it is (current or retired), beside those stored."""

    async def put_client_use(self, client_id: str, at: float) -> None:
        """Record that the client last obtained a token at `at` (only ever later)."""

    async def put_supersession(self, record: TokenRecord) -> None:
        """Mark a stored refresh token rotated: `superseded_at`, successor hash and sealed answer."""


class Counts(Counter[str]):
    def line(self) -> str:
        return ", ".join(f"{self[kind]} {kind}" for kind in KINDS.values() if kind != "cookie key")


async def import_records(store: PortableStore, records: AsyncIterable[Record]) -> Counts:
    """Write `records` (an export, in its order) into `store`; what was written, per kind."""
    counts = Counts()
    passwords: dict[str, str] = {}
    pending: list[EntityRecord] | list[RelationRecord] = []

    async def flush() -> None:
        if not pending:
            return
        owner = pending[0].owner
        # import_graph, not create_entities: it keeps each item's provenance.
        entities = [StoredEntity(e.name, e.entity_type, e.observations, e.origin, e.observation_origins)
                    for e in pending if isinstance(e, EntityRecord)]
        relations = [StoredRelation(r.source, r.target, r.relation_type, r.origin)
                     for r in pending if isinstance(r, RelationRecord)]
        await store.import_graph(owner, entities, relations, _NO_QUOTA)
        pending.clear()

    async for record in records:
        if isinstance(record, EntityRecord | RelationRecord):
            if pending and (type(pending[0]) is not type(record) or pending[0].owner != record.owner
                            or len(pending) >= BATCH):
                await flush()
            pending.append(record)  # type: ignore[arg-type]
            counts[KINDS[type(record)]] += 1
            continue
        await flush()
        match record:
            case CookieKey(key):
                await store.put_cookie_key(key)
            case SigningKeyRecord(key):
                await store.put_signing_key(key)
            case UserRecord(user, link, upstream_tokens):
                if link is not None and user.state is AccountState.ACTIVE:
                    await store.link_upstream_user(link.issuer, link.subject, user, link.created_at)
                else:
                    await store.add_user(user)
                if upstream_tokens is not None:
                    await store.set_upstream_tokens(user.id, upstream_tokens)
                passwords[user.id] = user.password_hash
            case ClientRecord(client, last_used_at):
                await store.save_client(client)
                if last_used_at is not None:
                    await store.put_client_use(client.client_id, last_used_at)
            case ConsentRecord(consent):
                await store.remember_consent(consent)
            case LoginRecord(session_hash, user_id, created_at, expires_at):
                password = passwords.get(user_id)
                if password is None or not await store.create_browser_session(
                        session_hash, user_id, password, created_at, expires_at):
                    continue  # the login of an account that is not carried (being removed)
            case TokenRecord(token):
                await store.save_tokens([token])
                if token.superseded_at is not None:
                    await store.put_supersession(record)
            case PersonalTokenRecord(personal):
                if not await store.save_personal_token(personal):
                    continue  # the token of an account that is not carried (being removed)
                if personal.last_used_at is not None:
                    await store.touch_personal_token(personal.id, personal.last_used_at)
            case SessionRecordRecord(session):
                await store.save_session(session)
        counts[KINDS[type(record)]] += 1
    await flush()
    return counts


async def count_records(records: AsyncIterable[Record]) -> Counts:
    counts = Counts()
    async for record in records:
        counts[KINDS[type(record)]] += 1
    return counts

"""The Redis backend's side of `server.storage.portable`: export what Redis holds as records, and what
an import needs beyond the storage protocols.

Redis has no snapshot read across keys, so an export taken while servers run is consistent per
record (one HGETALL each) and per owner's graph (the owner's state, entities and relations are
read in one MULTI/EXEC, which Redis runs alone: one state of that graph, as a read_graph sees
it), not across records: a token issued during the export may be missing, a login ended during
it may still be there. Records are found with SCAN, a batch of keys at a time; SCAN may return a
key twice, so the ids already exported are remembered per kind (memory that grows with the
number of accounts, clients, tokens and logins, never with the graphs, which are read one owner
at a time).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from auth.models import SigningKey
from server.storage.portable import (
    ClientRecord,
    ConsentRecord,
    CookieKey,
    EntityRecord,
    LoginRecord,
    PersonalTokenRecord,
    PortableError,
    Record,
    RelationRecord,
    SessionRecordRecord,
    SigningKeyRecord,
    TokenRecord,
    UserRecord,
)
from server.storage.redis.auth import RedisAuth, _consent, _fields, _num, _text, _token
from server.storage.redis.base import guard_all
from server.storage.redis.graph import RedisGraph, parse_origin
from server.storage.redis.graph_view import SEP, texts_of
from server.storage.redis.keys import RedisKeys
from server.storage.redis.sessions import RedisSessions, _record

SCAN_COUNT = 512


@guard_all
class RedisPortable(RedisAuth, RedisKeys, RedisGraph, RedisSessions):
    """Mixin: `server.storage.portable.PortableStore`'s additions."""

    async def _scan(self, kind: str) -> AsyncIterator[str]:
        """The ids of the keys `<prefix><kind>:<id>`, each once."""
        start = self.key(kind, "")
        seen: set[str] = set()
        async for name in self.client.scan_iter(match=start.replace("[", "\\[") + "*", count=SCAN_COUNT):
            ident = _text(name)[len(start):]
            if ident not in seen:
                seen.add(ident)
                yield ident

    async def export_records(self, now: float) -> AsyncIterator[Record]:
        key: Any = await self.client.get(self.key("cookie-key"))
        if key is None:
            raise PortableError("Redis holds no memory-mcp data (no cookie-key under the prefix "
                                f"{self.prefix!r})")
        yield CookieKey(bytes(key))
        for signing in sorted(await self.signing_keys(now), key=lambda k: (k.created_at, k.kid)):
            yield SigningKeyRecord(signing)
        users = sorted(await self.list_users(), key=lambda u: (u.created_at, u.id))
        for user in users:
            link = await self.get_upstream_link(user.id)
            yield UserRecord(user, link, await self.get_upstream_tokens(user.id))
        for client in await self.list_clients():
            used = await self.client.zscore(self.key("client-use"), client.client_id)
            yield ClientRecord(client, None if used is None else float(used))
        async for ident in self._scan("consent"):
            found = _fields(await self.client.hgetall(self.key("consent", ident)))  # type: ignore[arg-type]
            if found is not None and float(found["expires_at"]) > now:
                yield ConsentRecord(_consent(found))
        async for ident in self._scan("login"):
            found = _fields(await self.client.hgetall(self.key("login", ident)))  # type: ignore[arg-type]
            if found is not None and float(found["expires_at"]) > now:
                yield LoginRecord(ident, found["user_id"], float(found["created_at"]), float(found["expires_at"]))
        async for ident in self._scan("token"):
            found = _fields(await self.client.hgetall(self.key("token", ident)))  # type: ignore[arg-type]
            if found is not None and float(found["expires_at"]) > now:
                yield TokenRecord(_token(ident, found), found.get("successor_hash"), found.get("successor"))
        personal = [t for user in users for t in await self.list_personal_tokens(user.id, now)]
        for token in sorted(personal, key=lambda t: (t.created_at, t.id)):
            yield PersonalTokenRecord(token)
        owners = [owner async for owner in self._scan("graph:owner")]
        for owner in sorted(owners):
            async for record in self._export_graph(owner):
                yield record
        async for ident in self._scan("session:record"):
            fields: Any = await self.client.hgetall(self.key("session", "record", ident))
            if fields:
                yield SessionRecordRecord(_record(ident, fields))

    async def _export_graph(self, owner: str) -> AsyncIterator[Record]:
        keys = self.graph_keys(owner)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(keys.owner, "state")
            pipe.hgetall(keys.entities)
            pipe.hgetall(keys.relations)
            pipe.hgetall(keys.origins)
            state, entities, relations, origins = await pipe.execute()
        if state == b"closed":
            return
        for ident, record in sorted((int(ident), record) for ident, record in entities.items()):
            name, entity_type, *observations = texts_of(record)
            made = origins.get(f"e{ident}".encode())
            pairs = made.split(SEP) if made else []
            found = [parse_origin(pairs[i], pairs[i + 1]) if i + 1 < len(pairs) else None
                     for i in range(0, 2 * (1 + len(observations)), 2)]
            yield EntityRecord(owner, name, entity_type, tuple(observations), found[0], tuple(found[1:]))
        del entities
        for ident, record in sorted((int(ident), record) for ident, record in relations.items()):
            source, target, relation_type = texts_of(record)
            made = origins.get(f"r{ident}".encode())
            yield RelationRecord(owner, source, target, relation_type, parse_origin(*made.split(SEP)) if made else None)

    async def put_cookie_key(self, key: bytes) -> None:
        existing: Any = await self.client.set(self.key("cookie-key"), key, nx=True, get=True)
        if existing is not None and bytes(existing) != key:
            raise PortableError("Redis already holds another server key: import into a Redis without "
                                "memory-mcp data")

    async def put_signing_key(self, key: SigningKey) -> None:
        name = self.key("signing-key", key.kid)
        fields = {"alg": key.alg, "public_jwk": key.public_jwk, "private_jwk": key.private_jwk,
                  "created_at": _num(key.created_at)}
        if key.retired_at is not None:
            fields["retired_at"] = _num(key.retired_at)
        if key.published_until is not None:
            fields["published_until"] = _num(key.published_until)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping=fields)  # type: ignore[arg-type]
            pipe.zadd(self.key("signing-keys"), {key.kid: key.created_at})
            if key.retired_at is None:
                pipe.set(self.key("signing-key-current"), key.kid)
            elif key.published_until is not None:
                pipe.pexpireat(name, int(key.published_until * 1000))
            await pipe.execute()

    async def put_client_use(self, client_id: str, at: float) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.key("client-use"), {client_id: at}, gt=True)
            pipe.zrem(self.key("clients-unused"), client_id)
            await pipe.execute()

    async def put_supersession(self, record: TokenRecord) -> None:
        token = record.token
        if token.superseded_at is None:
            return
        fields = {"superseded_at": _num(token.superseded_at)}
        if record.successor is not None:
            fields["successor"] = record.successor
        if record.successor_hash is not None:
            fields["successor_hash"] = record.successor_hash
        await self.client.hset(self.key("token", token.token_hash), mapping=fields)  # type: ignore[arg-type]

    async def holds_data(self) -> bool:
        """Whether any memory-mcp key is there, rate-limit counts aside (a running server writes
        them; they mean nothing to an import)."""
        rates = self.key("rate", "")
        async for name in self.client.scan_iter(match=self.prefix.replace("[", "\\[") + "*", count=SCAN_COUNT):
            if not _text(name).startswith(rates):
                return True
        return False


__all__ = ["RedisPortable"]

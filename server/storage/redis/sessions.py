"""MCP session records and their resumable event logs (`transports.store.TransportStore`) on Redis.

Keys (formats and TTLs in docs/storage.md):

    session:record:<session id>  hash    owner, user, transport, protocol_version, created_at,
                                         last_seen_at, client_params, subscriptions (the
                                         subscribed resource URIs, a JSON list) (absent fields:
                                         None, no subscriptions)
    session:all                  zset    session id scored by created_at: every record, listing order
    session:user:<user>          set     the user's session ids (the per-user cap's count)
    session:inbox:<session id>   list    messages posted for a legacy SSE session, oldest first
    session-ended                channel a session id, published when its record is deleted
    events:next                  string  the last event id handed out, for every session
    events:log:<session id>      hash    event id -> stream id FF message (no FF: a priming event)
    events:index:<session id>    zset    "<event id> FF <cost> FF <stream id>" scored by event id
    events:meta:<session id>     hash    user (the session's, for its user's bounds), bytes (its cost)
    events:user:<user>           zset    "<event id> FF <cost> FF <session id>" scored by event id
    events:user-bytes            hash    user -> what that user's events cost
    events:sessions              set     the session ids that have events (what a purge checks)

Records. A streamable-http record expires `session_ttl` seconds (the session_idle_timeout
setting) after its `last_seen_at`, renewed by each touch: past that no server restores it (the
registry refuses a record idle that long), so Redis may forget it without anyone asking. A legacy
SSE record has no TTL, as on SQLite: it goes when its stream ends, or with a purge once idle (its
holder touches it every few seconds while the stream lasts). Touches only move `last_seen_at`
forward: several processes touch one record, each with its own clock. `session:all` and
`session:user:<user>` may name a record that expired: listing drops such names from the first,
counting a user at the cap from the second, in the script that finds them gone.

What crosses processes (docs/decisions.md#10). Deleting a record (delete_session, a purge) is one
script that also deletes the inbox and, when there was a record, publishes the id on
`session-ended`: a process that hears of the end can no longer read the record. `session_endings`
subscribes on a connection of its own; pub/sub keeps nothing for a subscriber that is away, so an
end announced while the subscription is down (Redis restarting, a network cut) is missed by that
process, which keeps serving such a session it holds until the session is idle there, rather
than letting go of it at once. The iterator retries every second and never ends. A legacy
SSE session's inbox is a list: `send_to_session` checks its length and appends in one script, and
gives it the record's TTL (an SSE record has none: the inbox goes with it); `session_messages`
pops it with BLPOP on a connection of its own, one per held stream, so waits never take the
shared pool's connections.

Events. Ids come from one counter (`events:next`), so they are digits, unique across sessions and
growing, as SQLite's rowids: every lookup also names the session (`events:log:<session id>`), so
another session's id finds nothing. Costs are counted as on SQLite (`EVENT_OVERHEAD_BYTES` plus the
message's UTF-8 length) in `events:meta` and `events:user-bytes`; the members of both indexes
carry each event's cost, so that evicting the oldest events reads no message. Each operation on
the log is one Lua script: appending an event, evicting the oldest beyond both bounds and keeping
the counters is one atomic step, as the SQLite transaction is. The scripts name the keys of other
sessions of the same user (eviction by user), which a single Redis (or a primary with replicas)
allows; Redis Cluster does not, and is not supported.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Mapping
from functools import cached_property
from typing import Any, Final

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.client import PubSub

from server.storage.redis.base import DEFAULT_PREFIX, RedisBase, guard_all, unavailable
from transports.store import EVENT_OVERHEAD_BYTES, EventLimits, SessionRecord

log = logging.getLogger(__name__)

SEP: Final = b"\xff"
PURGE_BATCH: Final = 200
"""Sessions looked at per script by a purge: each script is short, whatever the number of sessions."""
ENDINGS_WAIT_SECONDS: Final = 1.0
INBOX_WAIT_SECONDS: Final = 1.0
"""How long one wait for an end or a message lasts before the iterator asks again. Closing the
iterator never waits for it: the caller cancels the task that waits, or closes it between items."""
RETRY_SECONDS: Final = 1.0
"""The pause before an iterator asks again a Redis that did not answer."""

_FIELDS: Final = ("owner", "user", "transport", "protocol_version", "created_at", "last_seen_at", "client_params")

# ARGV[1]: the key prefix; `key(kind, id)` is how base.RedisBase.key names the events' keys.
_EVENTS_LUA = r"""
local SEP = '\255'
local P = ARGV[1]
local function key(kind, id) return P .. 'events:' .. kind .. ':' .. id end
local USER_BYTES, SESSIONS, NEXT = P .. 'events:user-bytes', P .. 'events:sessions', P .. 'events:next'

-- An index member: event id, cost, and the stream (session index) or session (user index).
local function parse(member)
  local a = string.find(member, SEP, 1, true)
  local b = string.find(member, SEP, a + 1, true)
  return string.sub(member, 1, a - 1), tonumber(string.sub(member, a + 1, b - 1)), string.sub(member, b + 1)
end

local function add_bytes(sid, user, size)
  redis.call('HINCRBY', key('meta', sid), 'bytes', size)
  if redis.call('HINCRBY', USER_BYTES, user, size) <= 0 then redis.call('HDEL', USER_BYTES, user) end
end

-- Forget one event of session `sid` (the user is the session's).
local function drop(sid, user, id, size)
  redis.call('HDEL', key('log', sid), id)
  redis.call('ZREMRANGEBYSCORE', key('index', sid), id, id)
  redis.call('ZREMRANGEBYSCORE', key('user', user), id, id)
  add_bytes(sid, user, -size)
end

-- Forget every event of session `sid`.
local function drop_session(sid)
  local meta = key('meta', sid)
  local user = redis.call('HGET', meta, 'user')
  if user then
    for _, member in ipairs(redis.call('ZRANGE', key('index', sid), 0, -1)) do
      local id = parse(member)
      redis.call('ZREMRANGEBYSCORE', key('user', user), id, id)
    end
    add_bytes(sid, user, -(tonumber(redis.call('HGET', meta, 'bytes')) or 0))
  end
  redis.call('DEL', key('log', sid), key('index', sid), meta)
  redis.call('SREM', SESSIONS, sid)
end

-- Forget the oldest events of an index (a session's or a user's) until `counted` is within `limit`.
local function evict(index, counted, limit, session_of)
  local excess = counted() - limit
  while excess > 0 do
    local oldest = redis.call('ZRANGE', index, 0, 255)
    if #oldest == 0 then return end
    for _, member in ipairs(oldest) do
      local id, size, rest = parse(member)
      local sid, user = session_of(rest)
      drop(sid, user, id, size)
      excess = excess - size
      if excess <= 0 then return end
    end
  end
end
"""

# ARGV: prefix, session, user, stream, cost, per-session limit, per-user limit, then the message
# (absent for a priming event). Returns the new event's id, or false when it was not stored.
_APPEND = _EVENTS_LUA + """
local sid, user, stream, size = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local per_session, per_user = tonumber(ARGV[6]), tonumber(ARGV[7])
local meta = key('meta', sid)
if size > per_session or size > per_user then
  -- Not stored, and the stream's earlier events go: a replay from one of them would skip it.
  local owner = redis.call('HGET', meta, 'user')
  for _, member in ipairs(redis.call('ZRANGE', key('index', sid), 0, -1)) do
    local id, cost, event_stream = parse(member)
    if event_stream == stream then drop(sid, owner, id, cost) end
  end
  return false
end
redis.call('HSETNX', meta, 'user', user)
user = redis.call('HGET', meta, 'user')
local id = redis.call('INCR', NEXT)
local value = stream
if #ARGV >= 8 then value = stream .. SEP .. ARGV[8] end
redis.call('HSET', key('log', sid), id, value)
redis.call('ZADD', key('index', sid), id, id .. SEP .. size .. SEP .. stream)
redis.call('ZADD', key('user', user), id, id .. SEP .. size .. SEP .. sid)
redis.call('SADD', SESSIONS, sid)
add_bytes(sid, user, size)
evict(key('index', sid), function() return tonumber(redis.call('HGET', meta, 'bytes')) end, per_session,
      function() return sid, user end)
evict(key('user', user), function() return tonumber(redis.call('HGET', USER_BYTES, user)) or 0 end, per_user,
      function(other) return other, user end)
return id
"""

# ARGV: prefix, session, event id. Returns false, or {stream, id, value, id, value...}.
_AFTER = _EVENTS_LUA + """
local sid, after = ARGV[2], ARGV[3]
local value = redis.call('HGET', key('log', sid), after)
if not value then return false end
local cut = string.find(value, SEP, 1, true)
local stream = cut and string.sub(value, 1, cut - 1) or value
local out = {stream}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', key('index', sid), '(' .. after, '+inf')) do
  local id, _, event_stream = parse(member)
  if event_stream == stream then
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', key('log', sid), id)
  end
end
return out
"""

# ARGV: prefix, session, and either nothing (every event) or stream and the last event id to delete.
_DELETE = _EVENTS_LUA + """
local sid = ARGV[2]
if #ARGV < 4 then
  drop_session(sid)
  return 0
end
local stream, through = ARGV[3], ARGV[4]
local user = redis.call('HGET', key('meta', sid), 'user')
for _, member in ipairs(redis.call('ZRANGEBYSCORE', key('index', sid), '-inf', through)) do
  local id, size, event_stream = parse(member)
  if event_stream == stream then drop(sid, user, id, size) end
end
return 0
"""

# ARGV: prefix, then session ids: drop the events of those that have no record (any more).
_DROP_ORPHANS = _EVENTS_LUA + """
for i = 2, #ARGV do
  if redis.call('EXISTS', P .. 'session:record:' .. ARGV[i]) == 0 then drop_session(ARGV[i]) end
end
return 0
"""

# What the session scripts share. ARGV[1]: the key prefix, as base.RedisBase.key builds keys.
_SESSION_LUA = r"""
local P = ARGV[1]
local ALL, ENDED = P .. 'session:all', P .. 'session-ended'
local function record_key(sid) return P .. 'session:record:' .. sid end
local function inbox_key(sid) return P .. 'session:inbox:' .. sid end
local function user_key(user) return P .. 'session:user:' .. user end

-- Forget session `sid` (its record, its names, its inbox); announce the end if it had a record.
local function forget(sid)
  local user = redis.call('HGET', record_key(sid), 'user')
  redis.call('DEL', record_key(sid), inbox_key(sid))
  redis.call('ZREM', ALL, sid)
  if not user then return 0 end
  redis.call('SREM', user_key(user), sid)
  redis.call('PUBLISH', ENDED, sid)
  return 1
end
"""

# ARGV: prefix, the session, then field, value pairs; the last two are the transport and the
# expiry (ms since the epoch, "" for none). Replaces the record, moving it to its user's set.
_SAVE = _SESSION_LUA + """
local sid, transport, expiry = ARGV[2], ARGV[#ARGV - 1], ARGV[#ARGV]
local record = record_key(sid)
local before = redis.call('HGET', record, 'user')
if before then redis.call('SREM', user_key(before), sid) end
redis.call('DEL', record)
local fields, user = {}, nil
for i = 3, #ARGV - 2, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == 'user' then user = ARGV[i + 1] end
end
redis.call('HSET', record, unpack(fields))
redis.call('ZADD', ALL, redis.call('HGET', record, 'created_at'), sid)
redis.call('SADD', user_key(user), sid)
if expiry ~= '' and transport ~= 'sse' then redis.call('PEXPIREAT', record, expiry) end
return 1
"""

# ARGV: prefix, the session, its subscriptions (JSON; "" for none). Returns 1 when there was a
# record, else 0 (nothing written: a record must not come back without its other fields).
_SUBSCRIBE = _SESSION_LUA + """
local record = record_key(ARGV[2])
if redis.call('EXISTS', record) == 0 then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', record, 'subscriptions')
else
  redis.call('HSET', record, 'subscriptions', ARGV[3])
end
return 1
"""

# ARGV: prefix, the session. Returns 1 when there was a record (its end announced), else 0.
_FORGET = _SESSION_LUA + """
return forget(ARGV[2])
"""

# ARGV: prefix, last_seen_at bound, then session ids. Forgets the records last seen before the
# bound (announcing each end) and the names whose record expired. Returns the count forgotten.
_PURGE = _SESSION_LUA + """
local gone = 0
for i = 3, #ARGV do
  local sid = ARGV[i]
  local seen = redis.call('HGET', record_key(sid), 'last_seen_at')
  if not seen then
    redis.call('ZREM', ALL, sid)
    redis.call('DEL', inbox_key(sid))
  elseif tonumber(seen) < tonumber(ARGV[2]) then
    gone = gone + forget(sid)
  end
end
return gone
"""

# ARGV: prefix, user, limit. The user's records, up to `limit`; at the limit, names whose record
# expired are dropped first (nothing else learns of an expiry), so the set stays near the cap.
_COUNT = _SESSION_LUA + """
local users, limit = user_key(ARGV[2]), tonumber(ARGV[3])
local count = redis.call('SCARD', users)
if count >= limit then
  for _, sid in ipairs(redis.call('SMEMBERS', users)) do
    if redis.call('EXISTS', record_key(sid)) == 0 then
      redis.call('SREM', users, sid)
      count = count - 1
    end
  end
end
return math.min(count, limit)
"""

# ARGV: prefix, the session, the message, the limit. 0: the limit is reached; 1: queued (or
# dropped, when the session has no record any more: it would have gone with the record).
_SEND = _SESSION_LUA + """
local sid, limit = ARGV[2], tonumber(ARGV[4])
local ttl = redis.call('PTTL', record_key(sid))
if ttl == -2 then return 1 end
local inbox = inbox_key(sid)
if redis.call('LLEN', inbox) >= limit then return 0 end
redis.call('RPUSH', inbox, ARGV[3])
if ttl > 0 then redis.call('PEXPIRE', inbox, ttl) end
return 1
"""

# KEYS: session:all. ARGV: prefix. Every record, oldest first: {session id, HGETALL reply, ...};
# forgets names whose record expired.
_LIST = """
local out = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('HGETALL', ARGV[1] .. 'session:record:' .. sid)
  if #record == 0 then
    redis.call('ZREM', KEYS[1], sid)
  else
    out[#out + 1] = sid
    out[#out + 1] = record
  end
end
return out
"""

# ARGV: prefix, the session, last_seen_at, the expiry (ms since the epoch; "" for none). Touches
# only a record that exists, and only forward (processes touch with their own clocks); an SSE record
# keeps no TTL; the inbox keeps the record's.
_TOUCH = _SESSION_LUA + """
local record = record_key(ARGV[2])
local fields = redis.call('HMGET', record, 'last_seen_at', 'transport')
if not fields[1] or tonumber(fields[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', record, 'last_seen_at', ARGV[3])
if ARGV[4] ~= '' and fields[2] ~= 'sse' then
  redis.call('PEXPIREAT', record, ARGV[4])
  if redis.call('EXISTS', inbox_key(ARGV[2])) == 1 then redis.call('PEXPIREAT', inbox_key(ARGV[2]), ARGV[4]) end
end
return 1
"""


class _Scripts:
    def __init__(self, base: RedisBase) -> None:
        self.append = base.script(_APPEND)
        self.after = base.script(_AFTER)
        self.delete = base.script(_DELETE)
        self.drop_orphans = base.script(_DROP_ORPHANS)
        self.save = base.script(_SAVE)
        self.subscribe = base.script(_SUBSCRIBE)
        self.forget = base.script(_FORGET)
        self.purge = base.script(_PURGE)
        self.count = base.script(_COUNT)
        self.send = base.script(_SEND)
        self.list = base.script(_LIST)
        self.touch = base.script(_TOUCH)


@guard_all
class RedisSessions(RedisBase):
    """`TransportStore` on Redis (see the module)."""

    def __init__(self, url: str, *, timeout: float = 3.0, prefix: str = DEFAULT_PREFIX,
                 session_ttl: float | None = None) -> None:
        super().__init__(url, timeout=timeout, prefix=prefix)
        self.session_ttl = session_ttl
        """Seconds a streamable-http record lives past its last_seen_at (None: until deleted)."""
        self.timeout = timeout

    @cached_property
    def _session_scripts(self) -> _Scripts:
        return _Scripts(self)

    def _expiry(self, last_seen_at: float) -> str:
        """PEXPIREAT's argument for a record last seen then ("" when records do not expire)."""
        return "" if self.session_ttl is None else str(int((last_seen_at + self.session_ttl) * 1000))

    # --- session records ---------------------------------------------------------------------

    async def save_session(self, record: SessionRecord) -> None:
        args: list[str] = [self.prefix, record.session_id]
        for name in _FIELDS:
            if getattr(record, name) is not None:
                args += [name, _encode(getattr(record, name))]
        if record.subscriptions:
            args += ["subscriptions", json.dumps(list(record.subscriptions))]
        await self._session_scripts.save(args=[*args, record.transport, self._expiry(record.last_seen_at)])

    async def get_session(self, session_id: str) -> SessionRecord | None:
        fields = await self.client.hgetall(self.key("session", "record", session_id))
        return _record(session_id, fields) if fields else None

    async def set_subscriptions(self, session_id: str, uris: tuple[str, ...]) -> bool:
        encoded = json.dumps(list(uris)) if uris else ""
        return bool(await self._session_scripts.subscribe(args=[self.prefix, session_id, encoded]))

    async def touch_session(self, session_id: str, now: float) -> None:
        # A hint for a later restore or purge: a request neither fails nor waits past one round
        # trip for it (SQLite queues it without waiting).
        try:
            await self._session_scripts.touch(args=[self.prefix, session_id, repr(now), self._expiry(now)])
        except redis_errors.RedisError as exc:
            if unavailable(exc) is None:
                raise
            log.warning("MCP session %s…: last-seen time not stored: %s", session_id[:8], exc)

    async def delete_session(self, session_id: str) -> None:
        await self._session_scripts.forget(args=[self.prefix, session_id])

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        reply = await self._session_scripts.list(keys=[self.key("session", "all")], args=[self.prefix])
        records = []
        for session_id, flat in zip(reply[::2], reply[1::2], strict=True):
            record = _record(session_id.decode(), dict(zip(flat[::2], flat[1::2], strict=True)))
            if user is None or record.user == user:
                records.append(record)
        return records

    async def count_sessions(self, user: str, limit: int) -> int:
        return int(await self._session_scripts.count(args=[self.prefix, user, limit]))

    async def purge_sessions(self, idle_before: float) -> int:
        gone = 0
        session_ids = [_text(sid) for sid in await self.client.zrange(self.key("session", "all"), 0, -1)]
        for start in range(0, len(session_ids), PURGE_BATCH):
            gone += int(await self._session_scripts.purge(
                args=[self.prefix, repr(idle_before), *session_ids[start:start + PURGE_BATCH]]))
        with_events = [_text(sid) for sid in await self.client.smembers(self.key("events", "sessions"))]
        for start in range(0, len(with_events), PURGE_BATCH):
            await self._session_scripts.drop_orphans(args=[self.prefix, *with_events[start:start + PURGE_BATCH]])
        return gone

    async def session_endings(self) -> AsyncGenerator[str, None]:
        # Its own connection (not the pool's): it is held for as long as the caller iterates.
        client = self._dedicated_client(ENDINGS_WAIT_SECONDS)
        channel = self.key("session-ended")
        pubsub: PubSub | None = None
        outage = False
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = client.pubsub(ignore_subscribe_messages=True)
                        await pubsub.subscribe(channel)
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=ENDINGS_WAIT_SECONDS)
                except (redis_errors.RedisError, OSError) as exc:
                    # Pub/sub keeps nothing for a subscriber that is away: ends announced until
                    # the next subscription are missed (docs/storage.md says what that costs).
                    if not outage:
                        log.warning("MCP session ends from other processes not followed until Redis answers "
                                    "again: %s: %s", type(exc).__name__, exc)
                        outage = True
                    if pubsub is not None:
                        await _quietly(pubsub.aclose())
                        pubsub = None
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if outage:
                    log.warning("MCP session ends from other processes followed again")
                    outage = False
                if message is not None and message.get("type") == "message":
                    yield _text(message["data"])
        finally:
            if pubsub is not None:
                await _quietly(pubsub.aclose())
            await _quietly(client.aclose())

    # --- inboxes of legacy SSE sessions ------------------------------------------------------

    async def send_to_session(self, session_id: str, message: str, limit: int) -> bool:
        return bool(await self._session_scripts.send(args=[self.prefix, session_id, message, limit]))

    async def session_messages(self, session_id: str) -> AsyncGenerator[str, None]:
        # A connection of its own: BLPOP holds it while it waits, which the shared pool must not
        # lend (one per held stream would starve the requests).
        client = self._dedicated_client(INBOX_WAIT_SECONDS)
        inbox = self.key("session", "inbox", session_id)
        outage = False
        try:
            while True:
                try:
                    popped = await client.blpop([inbox], timeout=INBOX_WAIT_SECONDS)
                except (redis_errors.RedisError, OSError) as exc:
                    if not outage:
                        log.warning("messages for SSE session %s… not read until Redis answers again: %s: %s",
                                    session_id[:8], type(exc).__name__, exc)
                        outage = True
                    if isinstance(exc, redis_errors.ReadOnlyError):
                        # A replica since a failover (BLPOP writes): connect again, to wherever
                        # the address leads now (base.guarded says more).
                        await _quietly(client.aclose())
                        client = self._dedicated_client(INBOX_WAIT_SECONDS)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                outage = False
                if popped is not None:
                    yield _text(popped[1])
        finally:
            await _quietly(client.aclose())

    def _dedicated_client(self, wait: float) -> aioredis.Redis:
        """A client with one connection of its own, for a command that blocks up to `wait` seconds."""
        return aioredis.Redis.from_url(self.url, single_connection_client=True, socket_connect_timeout=self.timeout,
                                       socket_timeout=wait + self.timeout)

    # --- event log ---------------------------------------------------------------------------

    async def append_event(self, session_id: str, user: str, stream_id: str, message: str | None,
                           limits: EventLimits) -> str | None:
        encoded = None if message is None else message.encode()
        size = EVENT_OVERHEAD_BYTES + (0 if encoded is None else len(encoded))
        args: list[str | bytes | int] = [self.prefix, session_id, user, stream_id, size, limits.per_session,
                                         limits.per_user]
        if encoded is not None:
            args.append(encoded)
        event_id = await self._session_scripts.append(args=args)
        return None if event_id is None else str(event_id)

    async def events_after(self, session_id: str, event_id: str) -> tuple[str, list[tuple[str, str | None]]] | None:
        if not (event_id.isascii() and event_id.isdigit()):
            return None
        reply = await self._session_scripts.after(args=[self.prefix, session_id, str(int(event_id))])
        if reply is None:
            return None
        events = []
        for found, value in zip(reply[1::2], reply[2::2], strict=True):
            _, separator, message = value.partition(SEP)
            events.append((found.decode(), message.decode() if separator else None))
        return reply[0].decode(), events

    async def delete_events(self, session_id: str, stream: tuple[str, str] | None = None) -> None:
        args: list[str | int] = [self.prefix, session_id]
        if stream is not None:
            stream_id, through = stream
            args += [stream_id, int(through)]
        await self._session_scripts.delete(args=args)

    async def event_bytes(self, session_id: str | None = None, user: str | None = None) -> int:
        if session_id is not None:
            counted = await self.client.hget(self.key("events", "meta", session_id), "bytes")
        elif user is not None:
            counted = await self.client.hget(self.key("events", "user-bytes"), user)
        else:
            return 0
        return int(counted or 0)


def _encode(value: object) -> str:
    """A record field as stored: floats in their repr (read back exactly), text as is."""
    return repr(value) if isinstance(value, float) else str(value)


async def _quietly(closing: Awaitable[None]) -> None:
    """Close a connection that may be broken: closing it is all that is left to do."""
    try:
        await closing
    except (redis_errors.RedisError, OSError) as exc:
        log.debug("closing a Redis connection: %s", exc)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(session_id: str, fields: Mapping[Any, Any]) -> SessionRecord:
    text = {_text(name): _text(value) for name, value in fields.items()}
    return SessionRecord(
        session_id=session_id,
        owner=text["owner"], user=text["user"], transport=text["transport"],
        protocol_version=text.get("protocol_version"), created_at=float(text["created_at"]),
        last_seen_at=float(text["last_seen_at"]), client_params=text.get("client_params"),
        subscriptions=tuple(json.loads(text["subscriptions"])) if "subscriptions" in text else ())


__all__ = ["RedisSessions"]

"""The authorization server's records in the Redis backend (`auth.store.AuthStore`, except the
signing keys: `keys.py`).

Key names, value formats and TTLs: docs/storage.md ("Redis: authorization"). In short:

* one hash per record, keyed by what the protocol looks it up by: `client:<client_id>` (a
  string: the registration's JSON), `user:<id>`, `code:<sha256>`, `token:<sha256>`,
  `pat:<sha256>` (a personal access token; `pat-id:<id>` holds its hash, for revocation by id),
  `login:<sha256>`, `consent:<sha256 of user, client, redirect URI, resource, scope set>`;
  secrets only ever as their SHA-256, as in SQLite;
* a TTL on every record that expires, counted from a time the record carries that is never later
  than the caller's "now" (a token's `issued_at`, a login's or a consent's `created_at`, a code's
  `auth_time`), so that a record outlives its validity on the caller's clock whatever Redis's
  clock says; every read still checks `expires_at` against the `now` it is given;
* secondary indexes, one sorted set per (kind, owner), scored by the member's `expires_at`:
  `grant-tokens:<grant_id>`, `user-tokens:<subject>`, `client-tokens:<client_id>`,
  `user-codes:<subject>`, `client-codes:<client_id>`, `user-logins:<user_id>`,
  `user-consents:<user_id>`, `client-consents:<client_id>`, `user-pats:<user_id>` (a personal
  access token that never expires is scored +inf, and keeps its index without a TTL). They serve the bulk deletes
  (by grant, subject, client) and the purge's "holds a live token" check (a ZCOUNT above now).
  Every delete of a record removes it from its indexes in the same script; members whose record
  expired are pruned when the index is next written (ZREMRANGEBYSCORE up to the writer's time),
  and each index carries a TTL at least as long as its longest-lived member, so none outlives
  what it indexes;
* `usernames` (hash: username -> user id) makes `add_user`'s uniqueness one HSETNX;
* `clients` (registrations by issue time), `clients-unused` (registrations that never obtained a
  token, by issue time), `client-use` (last token issued, by client): the purge reads only its
  candidates, not every registration;
* `revocations`: a stream; see `record_revocation`.

Every variable part (an id, a hash, a URL-shaped client_id) comes last in its key and each kind
has its own fixed word, so no two keys can collide whatever a client_id contains.

Atomicity: every operation that reads then writes, or writes several keys, is one Lua script
(`_LIB` + the operation), run by EVALSHA: Redis runs a script alone, so `consume_code`,
`rotate_refresh_token`, `save_code` (checks the login), `create_browser_session` (checks the
password hash), `add_user` (HSETNX), the cascades of `begin_removal`, `remove_user`,
`delete_client`, `purge_clients` and `withdraw_consents` each decide and act in one step, like a
SQLite transaction. The scripts build key names from the prefix (their first argument) and from
the records they read, so they need one Redis (a primary, with replicas or Sentinel for
failover), not Redis Cluster. Scripts never format a float: times go in as the strings Python
wrote (`repr`, exact) and are only compared inside.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import Connection

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
from server.storage.redis.base import RedisBase, guard_all

# How long a revocation stays in the log: far longer than any reader's wait (as in SQLite).
REVOCATION_LOG_SECONDS = 3600
# A revocation cursor is the stream entry id <ms>-<seq> as one integer, ms * SEQ_SPAN + seq: no
# Redis appends a million entries to one stream within a millisecond.
SEQ_SPAN = 1_000_000
# The longest `wait_revocations` blocks in one call.
WAIT_MAX = 10.0

# Helpers every script starts with. ARGV[1] is the key prefix.
_LIB = """
local P = ARGV[1]
local function k(kind, id) return P .. kind .. ':' .. id end
local function k0(name) return P .. name end

local function fields(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- Add `member` (living until `expires_at`) to a sorted-set index; drop members expired by
-- `since`; keep the index alive at least `ttl_ms`.
local function index_add(index, member, expires_at, since, ttl_ms)
  redis.call('ZADD', index, expires_at, member)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', since)
  if redis.call('PTTL', index) < tonumber(ttl_ms) then redis.call('PEXPIRE', index, ttl_ms) end
end

local function del_token(h)
  local key = k('token', h)
  local t = redis.call('HMGET', key, 'grant_id', 'subject', 'client_id')
  if not t[1] then return 0 end
  redis.call('DEL', key)
  redis.call('ZREM', k('grant-tokens', t[1]), h)
  redis.call('ZREM', k('user-tokens', t[2]), h)
  redis.call('ZREM', k('client-tokens', t[3]), h)
  return 1
end

local function del_code(h)
  local key = k('code', h)
  local t = redis.call('HMGET', key, 'subject', 'client_id')
  if not t[1] then return 0 end
  redis.call('DEL', key)
  redis.call('ZREM', k('user-codes', t[1]), h)
  redis.call('ZREM', k('client-codes', t[2]), h)
  return 1
end

local function del_login(h)
  local key = k('login', h)
  local user = redis.call('HGET', key, 'user_id')
  if not user then return 0 end
  redis.call('DEL', key)
  redis.call('ZREM', k('user-logins', user), h)
  return 1
end

local function del_pat(h)
  local key = k('pat', h)
  local t = redis.call('HMGET', key, 'id', 'subject')
  if not t[1] then return 0 end
  redis.call('DEL', key)
  if redis.call('GET', k('pat-id', t[1])) == h then redis.call('DEL', k('pat-id', t[1])) end
  redis.call('ZREM', k('user-pats', t[2]), h)
  return 1
end

local function del_consent(id)
  local key = k('consent', id)
  local t = redis.call('HMGET', key, 'user_id', 'client_id')
  if not t[1] then return 0 end
  redis.call('DEL', key)
  redis.call('ZREM', k('user-consents', t[1]), id)
  redis.call('ZREM', k('client-consents', t[2]), id)
  return 1
end

-- Delete every record an index names, then the index (members whose record is gone included).
local function del_all(index, del)
  local n = 0
  for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do n = n + del(m) end
  redis.call('DEL', index)
  return n
end

-- Delete the records an index names whose `field` equals `value`.
local function del_where(index, kind, field, value, del)
  local n = 0
  for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local v = redis.call('HGET', k(kind, m), field)
    if not v then
      redis.call('ZREM', index, m)
    elseif v == value then
      n = n + del(m)
    end
  end
  return n
end

-- Delete the records an index names that are bound to the memory `value` (a record of the
-- default memory has no `memory` field, and stays).
local function del_bound(index, kind, value, del)
  local n = 0
  for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if redis.call('HGET', k(kind, m), 'memory') == value then n = n + del(m) end
  end
  return n
end

-- The user's named memories (`memories.py`): each one's record, then the name index.
local function del_user_memories(user_id)
  local index = k('user-memories', user_id)
  for _, id in ipairs(redis.call('HVALS', index)) do redis.call('DEL', k('memory', id)) end
  redis.call('DEL', index)
end

local function del_grant(grant_id)
  return del_all(k('grant-tokens', grant_id), del_token)
end

local function del_user_records(user_id)
  del_all(k('user-codes', user_id), del_code)
  del_all(k('user-tokens', user_id), del_token)
  del_all(k('user-pats', user_id), del_pat)
  del_all(k('user-logins', user_id), del_login)
  del_all(k('user-consents', user_id), del_consent)
  -- The upstream identity and what is kept of it (`link_upstream_user`).
  local link = redis.call('HMGET', k('user-upstream', user_id), 'issuer', 'subject')
  if link[1] then
    local field = link[1] .. '\\n' .. link[2]
    if redis.call('HGET', k0('upstream-links'), field) == user_id then
      redis.call('HDEL', k0('upstream-links'), field)
    end
  end
  redis.call('DEL', k('user-upstream', user_id), k('upstream-tokens', user_id))
end

local function delete_client(id)
  local existed = redis.call('DEL', k('client', id))
  redis.call('ZREM', k0('clients'), id)
  redis.call('ZREM', k0('clients-unused'), id)
  redis.call('ZREM', k0('client-use'), id)
  del_all(k('client-tokens', id), del_token)
  del_all(k('client-codes', id), del_code)
  del_all(k('client-consents', id), del_consent)
  return existed
end

-- Store the tokens ARGV[first..] (TOKEN_ARGS each, see `_token_args`) and mark their clients used.
local TOKEN_ARGS = 12
local function put_tokens(first)
  for i = first, #ARGV, TOKEN_ARGS do
    local h, grant, client, subject = ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local issued, expires, ttl = ARGV[i + 7], ARGV[i + 8], ARGV[i + 10]
    local key = k('token', h)
    redis.call('DEL', key)
    redis.call('HSET', key, 'kind', ARGV[i + 1], 'grant_id', grant, 'client_id', client, 'subject', subject,
               'scopes', ARGV[i + 5], 'resource', ARGV[i + 6], 'issued_at', issued, 'expires_at', expires)
    if ARGV[i + 9] ~= '' then redis.call('HSET', key, 'auth_time', ARGV[i + 9]) end
    if ARGV[i + 11] ~= '' then redis.call('HSET', key, 'memory', ARGV[i + 11]) end
    redis.call('PEXPIRE', key, ttl)
    index_add(k('grant-tokens', grant), h, expires, issued, ttl)
    index_add(k('user-tokens', subject), h, expires, issued, ttl)
    index_add(k('client-tokens', client), h, expires, issued, ttl)
    redis.call('ZADD', k0('client-use'), 'GT', issued, client)
    redis.call('ZREM', k0('clients-unused'), client)
  end
end
"""


def _script(body: str) -> str:
    return _LIB + body


_SAVE_CLIENT = _script("""
local id = ARGV[2]
redis.call('SET', k('client', id), ARGV[4])
redis.call('ZADD', k0('clients'), 'NX', ARGV[3], id)
if not redis.call('ZSCORE', k0('client-use'), id) then
  redis.call('ZADD', k0('clients-unused'), 'NX', ARGV[3], id)
end
""")

_DELETE_CLIENT = _script("return delete_client(ARGV[2])")

_PURGE_CLIENTS = _script("""
local now, limit = ARGV[4], tonumber(ARGV[5])
local candidates = {}
local unused = redis.call('ZRANGEBYSCORE', k0('clients-unused'), '-inf', '(' .. ARGV[2], 'WITHSCORES')
for i = 1, #unused, 2 do candidates[#candidates + 1] = {unused[i], tonumber(unused[i + 1])} end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', k0('client-use'), '-inf', '(' .. ARGV[3])) do
  local issued = redis.call('ZSCORE', k0('clients'), id)
  if issued then candidates[#candidates + 1] = {id, tonumber(issued)} end
end
table.sort(candidates, function(a, b) return a[2] < b[2] end)
local n = 0
for _, c in ipairs(candidates) do
  if n >= limit then break end
  local id = c[1]
  -- A live token or code keeps the client whatever its bookkeeping says.
  if redis.call('ZCOUNT', k('client-tokens', id), '(' .. now, '+inf') == 0
     and redis.call('ZCOUNT', k('client-codes', id), '(' .. now, '+inf') == 0 then
    delete_client(id)
    n = n + 1
  end
end
return n
""")

# ARGV: prefix, id, username, password_hash, created_at, state, first ('1': only while no account
# exists, auth.setup). -1: not the first; 0: the username is taken.
_ADD_USER = _script("""
local id, name = ARGV[2], ARGV[3]
if ARGV[7] == '1' and redis.call('HLEN', k0('usernames')) > 0 then return -1 end
if redis.call('HSETNX', k0('usernames'), name, id) == 0 then return 0 end
redis.call('HSET', k('user', id), 'username', name, 'password_hash', ARGV[4], 'created_at', ARGV[5],
           'state', ARGV[6])
return 1
""")

# ARGV: prefix, issuer, subject, id, username, password_hash, created_at, state, now. The link is a
# field "issuer\nsubject" (an issuer URL holds no newline) of one hash, so that finding it, and
# creating account and link when there is none, is one step.
_LINK_UPSTREAM_USER = _script("""
local field, id, name = ARGV[2] .. '\\n' .. ARGV[3], ARGV[4], ARGV[5]
local linked = redis.call('HGET', k0('upstream-links'), field)
if linked then
  local flat = redis.call('HGETALL', k('user', linked))
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  if t['state'] == ARGV[8] then
    flat[#flat + 1] = 'id'
    flat[#flat + 1] = linked
    return {'found', flat}
  end
  -- A link to no active account cannot outlive a removal; dropped all the same, so that it
  -- never blocks a sign-in.
  redis.call('HDEL', k0('upstream-links'), field)
  redis.call('DEL', k('user-upstream', linked))
end
if redis.call('HSETNX', k0('usernames'), name, id) == 0 then return {'taken'} end
redis.call('HSET', k('user', id), 'username', name, 'password_hash', ARGV[6], 'created_at', ARGV[7], 'state', ARGV[8])
redis.call('HSET', k0('upstream-links'), field, id)
redis.call('HSET', k('user-upstream', id), 'issuer', ARGV[2], 'subject', ARGV[3], 'created_at', ARGV[9])
return {'created'}
""")

# ARGV: prefix, user id, sealed ('' = delete), mode ('any' or 'cas'), replacing.
_SET_UPSTREAM_TOKENS = _script("""
local key = k('upstream-tokens', ARGV[2])
if ARGV[4] == 'cas' and redis.call('GET', key) ~= ARGV[5] then return 0 end
if ARGV[3] == '' then redis.call('DEL', key) else redis.call('SET', key, ARGV[3]) end
return 1
""")

_USER_BY_NAME = _script("""
local id = redis.call('HGET', k0('usernames'), ARGV[2])
if not id then return nil end
local flat = redis.call('HGETALL', k('user', id))
flat[#flat + 1] = 'id'
flat[#flat + 1] = id
return flat
""")

_SET_PASSWORD = _script("""
local key = k('user', ARGV[2])
local current = redis.call('HGET', key, 'password_hash')
if not current then return 0 end
if ARGV[4] == '1' and current ~= ARGV[5] then return 0 end
redis.call('HSET', key, 'password_hash', ARGV[3])
return 1
""")

_BEGIN_REMOVAL = _script("""
local id = redis.call('HGET', k0('usernames'), ARGV[2])
if not id then return nil end
local key = k('user', id)
local flat = redis.call('HGETALL', key)
if #flat == 0 then return nil end
redis.call('HSET', key, 'state', ARGV[3])
del_user_records(id)
flat[#flat + 1] = 'id'
flat[#flat + 1] = id
return flat
""")

_REMOVE_USER = _script("""
local id = ARGV[2]
local key = k('user', id)
local name = redis.call('HGET', key, 'username')
local existed = redis.call('DEL', key)
if name and redis.call('HGET', k0('usernames'), name) == id then redis.call('HDEL', k0('usernames'), name) end
del_user_records(id)
-- Its memories last: until now a re-run of an interrupted removal still finds their graphs by them.
del_user_memories(id)
return existed
""")

# ARGV: prefix, login_hash, code_hash, client_id, redirect_uri, code_challenge, scopes, resource,
# subject, auth_time, expires_at, nonce ('' = none), ttl_ms, memory ('' = the default one).
_SAVE_CODE = _script("""
local h, client, subject, auth_time, expires, ttl = ARGV[3], ARGV[4], ARGV[9], ARGV[10], ARGV[11], ARGV[13]
if redis.call('HGET', k('login', ARGV[2]), 'user_id') ~= subject then return 0 end
local key = k('code', h)
redis.call('DEL', key)
redis.call('HSET', key, 'client_id', client, 'redirect_uri', ARGV[5], 'code_challenge', ARGV[6],
           'scopes', ARGV[7], 'resource', ARGV[8], 'subject', subject, 'auth_time', auth_time,
           'expires_at', expires)
if ARGV[12] ~= '' then redis.call('HSET', key, 'nonce', ARGV[12]) end
if ARGV[14] ~= '' then redis.call('HSET', key, 'memory', ARGV[14]) end
redis.call('PEXPIRE', key, ttl)
index_add(k('user-codes', subject), h, expires, auth_time, ttl)
index_add(k('client-codes', client), h, expires, auth_time, ttl)
return 1
""")

_CONSUME_CODE = _script("""
local h, grant, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = k('code', h)
local code = fields(key)
if not code or tonumber(code.expires_at) <= now then return {'invalid'} end
local flat = redis.call('HGETALL', key)
if not code.grant_id then
  redis.call('HSET', key, 'grant_id', grant)
  flat[#flat + 1] = 'grant_id'
  flat[#flat + 1] = grant
  return {'redeemed', flat}
end
-- Replayed: the record goes too, so a third attempt is plainly unknown and a save_code_tokens
-- still in flight for the first redemption stores nothing.
del_code(h)
del_grant(code.grant_id)
return {'replayed', flat}
""")

_SAVE_CODE_TOKENS = _script("""
if redis.call('HGET', k('code', ARGV[2]), 'grant_id') ~= ARGV[3] then return 0 end
put_tokens(4)
return 1
""")

_SAVE_TOKENS = _script("put_tokens(2)")

# ARGV: prefix, old_hash, now, grace, successor, new refresh hash ('' = none), tokens...
_ROTATE = _script("""
local old_hash, now, grace = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local key = k('token', old_hash)
local old = fields(key)
if not old or old.kind ~= 'refresh' or tonumber(old.expires_at) <= now then return {'invalid'} end
if not old.superseded_at then
  redis.call('HSET', key, 'superseded_at', ARGV[3], 'successor', ARGV[5])
  if ARGV[6] ~= '' then redis.call('HSET', key, 'successor_hash', ARGV[6]) end
  put_tokens(7)
  return {'rotated'}
end
-- A negative age (the clock went back since the rotation) is not within grace: it says nothing
-- about how long ago the token was replaced, so it is treated as a replay.
local age = now - tonumber(old.superseded_at)
if age >= 0 and age <= grace then
  local succ = old.successor_hash and fields(k('token', old.successor_hash))
  if succ and tonumber(succ.expires_at) > now and not succ.superseded_at then
    return {'retry', old.successor}
  end
  return {'invalid'}
end
del_grant(old.grant_id)
return {'replayed'}
""")

_DELETE_TOKEN = _script("""
local flat = redis.call('HGETALL', k('token', ARGV[2]))
del_token(ARGV[2])
return flat
""")

_REVOKE_GRANT = _script("return del_grant(ARGV[2])")

_REVOKE_SUBJECT = _script("""
local subject, client = ARGV[2], ARGV[3]
if client == '' then
  return del_all(k('user-tokens', subject), del_token) + del_all(k('user-codes', subject), del_code)
       + del_all(k('user-pats', subject), del_pat)
end
return del_where(k('user-tokens', subject), 'token', 'client_id', client, del_token)
     + del_where(k('user-codes', subject), 'code', 'client_id', client, del_code)
""")

# ARGV: prefix, token_hash, id, subject, name, scopes, resource, created_at, expires_at ('' = never),
# ttl_ms ('' = never), the ACTIVE state, memory ('' = the default one). The user's index keeps no
# TTL while it holds a token that never expires (score +inf), and otherwise lives at least as long
# as its longest-lived member.
_SAVE_PAT = _script("""
local h, id, subject, created, expires, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[8], ARGV[9], ARGV[10]
if redis.call('HGET', k('user', subject), 'state') ~= ARGV[11] then return 0 end
local key, index = k('pat', h), k('user-pats', subject)
redis.call('DEL', key)
redis.call('HSET', key, 'id', id, 'subject', subject, 'name', ARGV[5], 'scopes', ARGV[6], 'resource', ARGV[7],
           'created_at', created)
if ARGV[12] ~= '' then redis.call('HSET', key, 'memory', ARGV[12]) end
if expires == '' then
  redis.call('SET', k('pat-id', id), h)
  redis.call('ZADD', index, '+inf', h)
else
  redis.call('HSET', key, 'expires_at', expires)
  redis.call('PEXPIRE', key, ttl)
  redis.call('SET', k('pat-id', id), h, 'PX', ttl)
  redis.call('ZADD', index, expires, h)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', created)
local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')[2]
if top == 'inf' then
  redis.call('PERSIST', index)
else
  local keep = math.max(tonumber(ttl), math.ceil((tonumber(top) - tonumber(created)) * 1000))
  redis.call('PEXPIRE', index, string.format('%d', keep))
end
return 1
""")

_DELETE_PAT = _script("""
local h = redis.call('GET', k('pat-id', ARGV[2]))
if not h then return nil end
local flat = redis.call('HGETALL', k('pat', h))
redis.call('DEL', k('pat-id', ARGV[2]))
if #flat == 0 then return nil end
del_pat(h)
flat[#flat + 1] = 'token_hash'
flat[#flat + 1] = h
return flat
""")

# HSET only on a record that exists: a use noted after a revocation must not recreate it.
_TOUCH_PAT = _script("""
local h = redis.call('GET', k('pat-id', ARGV[2]))
if not h then return 0 end
local key = k('pat', h)
if redis.call('EXISTS', key) == 0 then return 0 end
local last = redis.call('HGET', key, 'last_used_at')
if last and tonumber(last) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', key, 'last_used_at', ARGV[3])
return 1
""")

# ARGV: prefix, session_hash, user_id, password_hash, created_at, expires_at, ttl_ms.
_CREATE_LOGIN = _script("""
local h, user, created, expires, ttl = ARGV[2], ARGV[3], ARGV[5], ARGV[6], ARGV[7]
-- Only while the password that was verified is still the account's (see the protocol).
if redis.call('HGET', k('user', user), 'password_hash') ~= ARGV[4] then return 0 end
local key = k('login', h)
redis.call('HSET', key, 'user_id', user, 'created_at', created, 'expires_at', expires)
redis.call('PEXPIRE', key, ttl)
index_add(k('user-logins', user), h, expires, created, ttl)
return 1
""")

_DELETE_LOGIN = _script("return del_login(ARGV[2])")

_END_LOGINS = _script("return del_all(k('user-logins', ARGV[2]), del_login)")

# ARGV: prefix, consent id, user_id, client_id, redirect_uri, resource, scopes, created_at,
# expires_at, ttl_ms, memory ('' = the default one: a memory remembered before is dropped).
_REMEMBER_CONSENT = _script("""
local id, user, client, created, expires, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[8], ARGV[9], ARGV[10]
local key = k('consent', id)
redis.call('HSET', key, 'user_id', user, 'client_id', client, 'redirect_uri', ARGV[5], 'resource', ARGV[6],
           'scopes', ARGV[7], 'created_at', created, 'expires_at', expires)
if ARGV[11] ~= '' then redis.call('HSET', key, 'memory', ARGV[11]) else redis.call('HDEL', key, 'memory') end
redis.call('PEXPIRE', key, ttl)
index_add(k('user-consents', user), id, expires, created, ttl)
index_add(k('client-consents', client), id, expires, created, ttl)
""")

_WITHDRAW_CONSENTS = _script("""
local user, client = ARGV[2], ARGV[3]
local forgotten = del_where(k('user-consents', user), 'consent', 'client_id', client, del_consent)
del_where(k('user-tokens', user), 'token', 'client_id', client, del_token)
del_where(k('user-codes', user), 'code', 'client_id', client, del_code)
return forgotten
""")

_FORGET_CONSENTS = _script("return del_all(k('user-consents', ARGV[2]), del_consent)")

# Trimmed by entry id, i.e. by Redis's own clock: the id of the entry being added comes from the
# same clock, so the trim can never drop it, whatever the callers' clocks say.
_RECORD_REVOCATION = _script("""
local t = redis.call('TIME')
local oldest = (tonumber(t[1]) - tonumber(ARGV[2])) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('XADD', k0('revocations'), 'MINID', string.format('%d', oldest), '*',
                  unpack(ARGV, 3))
""")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(found: Sequence[bytes] | dict[bytes, bytes] | None) -> dict[str, str] | None:
    """A hash as str -> str: from HGETALL (a dict) or a script (a flat list); None if empty."""
    if not found:
        return None
    if isinstance(found, dict):
        return {_text(name): _text(value) for name, value in found.items()}
    values = [_text(v) for v in found]
    return dict(zip(values[::2], values[1::2], strict=True))


def _num(value: float) -> str:
    return repr(float(value))


def _opt(value: str | None) -> float | None:
    return None if value is None else float(value)


def ttl_ms(expires_at: float, since: float) -> int:
    """Milliseconds from `since` (a time no later than the caller's now) to `expires_at`, at least 1."""
    return max(1, math.ceil((expires_at - since) * 1000))


def _user(f: dict[str, str]) -> User:
    return User(id=f["id"], username=f["username"], password_hash=f["password_hash"],
                created_at=float(f["created_at"]), state=AccountState(f["state"]))


def _code(code_hash: str, f: dict[str, str]) -> AuthorizationCode:
    return AuthorizationCode(
        code_hash=code_hash, client_id=f["client_id"], redirect_uri=f["redirect_uri"],
        code_challenge=f["code_challenge"], scopes=tuple(f["scopes"].split()), resource=f["resource"],
        subject=f["subject"], auth_time=float(f["auth_time"]), expires_at=float(f["expires_at"]),
        nonce=f.get("nonce"), grant_id=f.get("grant_id"), memory=f.get("memory"),
    )


def _token(token_hash: str, f: dict[str, str]) -> Token:
    return Token(
        token_hash=token_hash, kind="refresh" if f["kind"] == "refresh" else "access", grant_id=f["grant_id"],
        client_id=f["client_id"], subject=f["subject"], scopes=tuple(f["scopes"].split()), resource=f["resource"],
        issued_at=float(f["issued_at"]), expires_at=float(f["expires_at"]), auth_time=_opt(f.get("auth_time")),
        superseded_at=_opt(f.get("superseded_at")), memory=f.get("memory"),
    )


def _personal(token_hash: str, f: dict[str, str]) -> PersonalToken:
    return PersonalToken(
        id=f["id"], token_hash=token_hash, subject=f["subject"], name=f["name"], scopes=tuple(f["scopes"].split()),
        resource=f["resource"], created_at=float(f["created_at"]), expires_at=_opt(f.get("expires_at")),
        last_used_at=_opt(f.get("last_used_at")), memory=f.get("memory"),
    )


def _live(f: dict[str, str] | None, now: float) -> bool:
    return f is not None and ("expires_at" not in f or float(f["expires_at"]) > now)


def _token_args(tokens: Sequence[Token]) -> list[str]:
    """The tokens as `put_tokens` reads them (TOKEN_ARGS strings each)."""
    args: list[str] = []
    for t in tokens:
        args += [t.token_hash, t.kind, t.grant_id, t.client_id, t.subject, " ".join(t.scopes), t.resource,
                 _num(t.issued_at), _num(t.expires_at), "" if t.auth_time is None else _num(t.auth_time),
                 str(ttl_ms(t.expires_at, t.issued_at)), t.memory or ""]
    return args


def _consent_scopes(scopes: tuple[str, ...]) -> str:
    # A set: the same scopes in another order are the same approval.
    return " ".join(sorted(set(scopes)))


def consent_id(user_id: str, client_id: str, redirect_uri: str, resource: str, scopes: tuple[str, ...]) -> str:
    """The key of an approval: everything a request must match, hashed to one fixed-length word."""
    identity = json.dumps([user_id, client_id, redirect_uri, resource, _consent_scopes(scopes)])
    return hashlib.sha256(identity.encode()).hexdigest()


def _consent(f: dict[str, str]) -> RememberedConsent:
    return RememberedConsent(
        user_id=f["user_id"], client_id=f["client_id"], redirect_uri=f["redirect_uri"], resource=f["resource"],
        scopes=tuple(f["scopes"].split()), created_at=float(f["created_at"]), expires_at=float(f["expires_at"]),
        memory=f.get("memory"),
    )


def _cursor(entry_id: bytes | str) -> int:
    ms, seq = _text(entry_id).split("-")
    return int(ms) * SEQ_SPAN + int(seq)


def _entry_id(cursor: int) -> str:
    return f"{cursor // SEQ_SPAN}-{cursor % SEQ_SPAN}"


def _after(cursor: int, entries: Any) -> tuple[int, list[Revocation]]:
    """The cursor and revocations of stream entries read after `cursor` ([(id, {field: value})])."""
    if not entries:
        return cursor, []
    found = []
    for _, raw in entries:
        f = _fields(raw) or {}
        found.append(Revocation(f.get("subject"), f.get("client_id"), f.get("grant_id"), f.get("memory")))
    return _cursor(entries[-1][0]), found


@guard_all
class RedisAuth(RedisBase):
    """Mixin implementing `auth.store.AuthStore` but `SigningKeyStore` (`RedisKeys`)."""

    # The connection `wait_revocations` blocks on (and its pool), apart from the pool every request uses.
    _follower: tuple[aioredis.ConnectionPool, Connection] | None = None

    async def _auth_script(self, source: str, *args: str) -> Any:
        scripts: dict[str, Any] = self.__dict__.setdefault("_auth_scripts", {})
        script = scripts.get(source)
        if script is None:
            script = scripts[source] = self.script(source)
        return await script(args=[self.prefix, *args])

    # Clients

    async def save_client(self, client: Client) -> None:
        # ZADD NX: re-saving a client (a re-fetched metadata document) keeps its first issue time,
        # which the unused-registration purge goes by.
        await self._auth_script(_SAVE_CLIENT, client.client_id, str(client.client_id_issued_at),
                                client.model_dump_json())

    async def get_client(self, client_id: str) -> Client | None:
        raw = await self.client.get(self.key("client", client_id))
        return None if raw is None else Client.model_validate_json(raw)

    async def list_clients(self) -> list[Client]:
        ids: Any = await self.client.zrange(self.key("clients"), 0, -1)
        if not ids:
            return []
        raws = await self.client.mget([self.key("client", _text(i)) for i in ids])
        return [Client.model_validate_json(r) for r in raws if r is not None]

    async def delete_client(self, client_id: str) -> bool:
        return bool(await self._auth_script(_DELETE_CLIENT, client_id))

    async def purge_clients(self, unused_issued_before: float, idle_before: float, now: float,
                            limit: int) -> int:
        return int(await self._auth_script(_PURGE_CLIENTS, _num(unused_issued_before), _num(idle_before), _num(now),
                                   str(limit)))

    # Users

    async def add_user(self, user: User, *, first: bool = False) -> None:
        added = await self._auth_script(_ADD_USER, user.id, user.username, user.password_hash, _num(user.created_at),
                                        str(user.state), "1" if first else "0")
        if added == -1:
            raise NotFirstUserError(user.username)
        if not added:
            raise UserExistsError(user.username)

    async def get_user(self, user_id: str) -> User | None:
        found = _fields(await self.client.hgetall(self.key("user", user_id)))  # type: ignore[arg-type]
        if found is None or found["state"] != AccountState.ACTIVE:
            return None
        return _user({**found, "id": user_id})

    async def get_user_by_name(self, username: str) -> User | None:
        found = _fields(await self._auth_script(_USER_BY_NAME, username))
        if found is None or found.get("state") != AccountState.ACTIVE:
            return None
        return _user(found)

    async def list_users(self) -> list[User]:
        ids = [_text(i) for i in await self.client.hvals(self.key("usernames"))]
        async with self.client.pipeline(transaction=True) as pipe:
            for user_id in ids:
                pipe.hgetall(self.key("user", user_id))
            rows = await pipe.execute()
        users = [_user({**found, "id": user_id}) for user_id, row in zip(ids, rows, strict=True)
                 if (found := _fields(row)) is not None]
        return sorted(users, key=lambda u: u.username)

    async def set_password_hash(self, user_id: str, password_hash: str, *, replacing: str | None = None) -> bool:
        return bool(await self._auth_script(_SET_PASSWORD, user_id, password_hash, "0" if replacing is None else "1",
                                    replacing or ""))

    # Accounts of an upstream OpenID provider

    async def link_upstream_user(self, issuer: str, subject: str, user: User, now: float) -> User:
        reply = await self._auth_script(_LINK_UPSTREAM_USER, issuer, subject, user.id, user.username,
                                        user.password_hash, _num(user.created_at), str(AccountState.ACTIVE), _num(now))
        status = _text(reply[0])
        if status == "taken":
            raise UserExistsError(user.username)
        if status == "found":
            found = _fields(reply[1])
            if found is not None:
                return _user(found)
        return user

    async def get_upstream_link(self, user_id: str) -> UpstreamLink | None:
        found = _fields(await self.client.hgetall(self.key("user-upstream", user_id)))  # type: ignore[arg-type]
        if found is None:
            return None
        return UpstreamLink(found["issuer"], found["subject"], user_id, float(found["created_at"]))

    async def get_upstream_tokens(self, user_id: str) -> str | None:
        value = await self.client.get(self.key("upstream-tokens", user_id))
        return None if value is None else _text(value)

    async def set_upstream_tokens(self, user_id: str, sealed: str | None, *, replacing: str | None = None) -> bool:
        if sealed == "" or replacing == "":
            raise ValueError("sealed upstream tokens are never empty")
        return bool(await self._auth_script(_SET_UPSTREAM_TOKENS, user_id, sealed or "",
                                            "any" if replacing is None else "cas", replacing or ""))

    async def begin_removal(self, username: str) -> User | None:
        found = _fields(await self._auth_script(_BEGIN_REMOVAL, username, str(AccountState.REMOVING)))
        return None if found is None else _user(found)

    async def remove_user(self, user_id: str) -> bool:
        return bool(await self._auth_script(_REMOVE_USER, user_id))

    # Codes and tokens

    async def save_code(self, code: AuthorizationCode, login_hash: str) -> bool:
        # The store is not told when the code is saved; `auth_time` is the latest time known to be
        # no later than that, so the TTL is at least the code's lifetime (see the module).
        return bool(await self._auth_script(
            _SAVE_CODE, login_hash, code.code_hash, code.client_id, code.redirect_uri, code.code_challenge,
            " ".join(code.scopes), code.resource, code.subject, _num(code.auth_time), _num(code.expires_at),
            code.nonce or "", str(ttl_ms(code.expires_at, code.auth_time)), code.memory or ""))

    async def consume_code(self, code_hash: str, grant_id: str, now: float) -> Redemption:
        result = await self._auth_script(_CONSUME_CODE, code_hash, grant_id, _num(now))
        status = _text(result[0])
        if status == "redeemed":
            return Redemption("redeemed", _code(code_hash, _fields(result[1]) or {}))
        if status == "replayed":
            return Redemption("replayed", _code(code_hash, _fields(result[1]) or {}))
        return Redemption("invalid")

    async def save_code_tokens(self, code_hash: str, tokens: Sequence[Token]) -> bool:
        grant_ids = {t.grant_id for t in tokens}
        if len(grant_ids) != 1:
            return False
        return bool(await self._auth_script(_SAVE_CODE_TOKENS, code_hash, grant_ids.pop(), *_token_args(tokens)))

    async def save_tokens(self, tokens: Sequence[Token]) -> None:
        if tokens:
            await self._auth_script(_SAVE_TOKENS, *_token_args(tokens))

    async def get_token(self, token_hash: str, now: float) -> Token | None:
        found = _fields(await self.client.hgetall(self.key("token", token_hash)))  # type: ignore[arg-type]
        if found is None or float(found["expires_at"]) <= now or "superseded_at" in found:
            return None
        return _token(token_hash, found)

    async def get_refresh_token(self, token_hash: str, now: float) -> Token | None:
        found = _fields(await self.client.hgetall(self.key("token", token_hash)))  # type: ignore[arg-type]
        if found is None or found["kind"] != "refresh" or float(found["expires_at"]) <= now:
            return None
        return _token(token_hash, found)

    async def rotate_refresh_token(self, old_hash: str, new_tokens: Sequence[Token], successor: str,
                                   now: float, grace: float) -> Rotation:
        new_refresh = next((t.token_hash for t in new_tokens if t.kind == "refresh"), "")
        result = await self._auth_script(_ROTATE, old_hash, _num(now), _num(grace), successor, new_refresh,
                                 *_token_args(new_tokens))
        status = _text(result[0])
        if status == "retry":
            return Rotation("retry", _text(result[1]))
        if status == "rotated":
            return Rotation("rotated")
        if status == "replayed":
            return Rotation("replayed")
        return Rotation("invalid")

    async def delete_token(self, token_hash: str) -> Token | None:
        found = _fields(await self._auth_script(_DELETE_TOKEN, token_hash))
        return None if found is None else _token(token_hash, found)

    async def revoke_grant(self, grant_id: str) -> int:
        return int(await self._auth_script(_REVOKE_GRANT, grant_id))

    async def _indexed(self, index: str, kind: str, now: float) -> list[tuple[str, dict[str, str]]]:
        """The records `kind:<hash>` an index (a sorted set of hashes by expiry) lists as unexpired
        at `now`, read in one MULTI: (hash, fields) of each still there."""
        members: Any = await self.client.zrangebyscore(index, f"({_num(now)}", "+inf")
        hashes = [_text(m) for m in members]
        async with self.client.pipeline(transaction=True) as pipe:
            for h in hashes:
                pipe.hgetall(self.key(kind, h))
            rows = await pipe.execute()
        return [(h, f) for h, row in zip(hashes, rows, strict=True) if (f := _fields(row)) is not None]

    async def list_subject_tokens(self, subject: str, now: float) -> list[Token]:
        found = [_token(h, f) for h, f in await self._indexed(self.key("user-tokens", subject), "token", now)
                 if float(f["expires_at"]) > now]
        return sorted(found, key=lambda t: (t.issued_at, t.token_hash))

    async def revoke_subject(self, subject: str, client_id: str | None = None) -> int:
        return int(await self._auth_script(_REVOKE_SUBJECT, subject, client_id or ""))

    # Personal access tokens

    async def save_personal_token(self, token: PersonalToken) -> bool:
        t = token
        expires, ttl = ("", "") if t.expires_at is None else (_num(t.expires_at),
                                                              str(ttl_ms(t.expires_at, t.created_at)))
        return bool(await self._auth_script(
            _SAVE_PAT, t.token_hash, t.id, t.subject, t.name, " ".join(t.scopes), t.resource, _num(t.created_at),
            expires, ttl, str(AccountState.ACTIVE), t.memory or ""))

    async def get_personal_token(self, token_hash: str, now: float) -> PersonalToken | None:
        found = _fields(await self.client.hgetall(self.key("pat", token_hash)))  # type: ignore[arg-type]
        if found is None or not _live(found, now):
            return None
        return _personal(token_hash, found)

    async def list_personal_tokens(self, subject: str, now: float) -> list[PersonalToken]:
        found = [_personal(h, f) for h, f in await self._indexed(self.key("user-pats", subject), "pat", now)
                 if _live(f, now)]
        return sorted(found, key=lambda t: (t.created_at, t.id))

    async def delete_personal_token(self, token_id: str) -> PersonalToken | None:
        found = _fields(await self._auth_script(_DELETE_PAT, token_id))
        return None if found is None else _personal(found["token_hash"], found)

    async def touch_personal_token(self, token_id: str, used_at: float) -> None:
        await self._auth_script(_TOUCH_PAT, token_id, _num(used_at))

    # Browser logins

    async def create_browser_session(self, session_hash: str, user_id: str, password_hash: str, created_at: float,
                                     expires_at: float) -> bool:
        return bool(await self._auth_script(_CREATE_LOGIN, session_hash, user_id, password_hash, _num(created_at),
                                    _num(expires_at), str(ttl_ms(expires_at, created_at))))

    async def get_browser_session(self, session_hash: str, now: float) -> BrowserLogin | None:
        found: Any = await self.client.hmget(self.key("login", session_hash), ["user_id", "created_at", "expires_at"])
        user_id, created_at, expires_at = found
        if user_id is None or float(expires_at) <= now:
            return None
        return BrowserLogin(_text(user_id), float(created_at))

    async def delete_browser_session(self, session_hash: str) -> None:
        await self._auth_script(_DELETE_LOGIN, session_hash)

    async def end_browser_sessions(self, user_id: str) -> int:
        return int(await self._auth_script(_END_LOGINS, user_id))

    # Remembered consents

    async def remember_consent(self, consent: RememberedConsent) -> None:
        c = consent
        await self._auth_script(_REMEMBER_CONSENT,
                                consent_id(c.user_id, c.client_id, c.redirect_uri, c.resource, c.scopes),
                        c.user_id, c.client_id, c.redirect_uri, c.resource, _consent_scopes(c.scopes),
                        _num(c.created_at), _num(c.expires_at), str(ttl_ms(c.expires_at, c.created_at)),
                        c.memory or "")

    async def find_consent(self, user_id: str, client_id: str, redirect_uri: str, resource: str,
                           scopes: tuple[str, ...], now: float) -> RememberedConsent | None:
        key = self.key("consent", consent_id(user_id, client_id, redirect_uri, resource, scopes))
        found = _fields(await self.client.hgetall(key))  # type: ignore[arg-type]
        if found is None or float(found["expires_at"]) <= now:
            return None
        # Exact strings on every field, as the key's hash stands for them.
        wanted = (user_id, client_id, redirect_uri, resource, _consent_scopes(scopes))
        if (found["user_id"], found["client_id"], found["redirect_uri"], found["resource"], found["scopes"]) != wanted:
            return None
        return _consent(found)

    async def list_consents(self, user_id: str, now: float) -> list[RememberedConsent]:
        ids: Any = await self.client.zrangebyscore(self.key("user-consents", user_id), f"({_num(now)}", "+inf")
        async with self.client.pipeline(transaction=True) as pipe:
            for member in ids:
                pipe.hgetall(self.key("consent", _text(member)))
            rows = await pipe.execute()
        found = [_consent(f) for row in rows if (f := _fields(row)) is not None and float(f["expires_at"]) > now]
        return sorted(found, key=lambda c: (c.client_id, c.created_at))

    async def withdraw_consents(self, user_id: str, client_id: str) -> int:
        return int(await self._auth_script(_WITHDRAW_CONSENTS, user_id, client_id))

    async def forget_consents(self, user_id: str) -> int:
        return int(await self._auth_script(_FORGET_CONSENTS, user_id))

    # The revocation log: a stream, entries trimmed after REVOCATION_LOG_SECONDS (`_RECORD_REVOCATION`).

    async def record_revocation(self, revocation: Revocation, now: float) -> None:
        entry = [(name, value) for name, value in (("subject", revocation.subject),
                                                   ("client_id", revocation.client_id),
                                                   ("grant_id", revocation.grant_id),
                                                   ("memory", revocation.memory)) if value is not None]
        # A stream entry needs a field: "at" (the caller's time, for the operator's eye) is always there.
        fields = ["at", _num(now), *(part for pair in entry for part in pair)]
        await self._auth_script(_RECORD_REVOCATION, str(REVOCATION_LOG_SECONDS), *fields)

    async def revocations_after(self, cursor: int | None) -> tuple[int, list[Revocation]]:
        key = self.key("revocations")
        if cursor is None:
            last: Any = await self.client.xrevrange(key, count=1)
            return (_cursor(last[0][0]) if last else 0), []
        return _after(cursor, await self.client.xrange(key, min=f"({_entry_id(cursor)}"))

    async def wait_revocations(self, cursor: int, seconds: float) -> tuple[int, list[Revocation]]:
        """`revocations_after(cursor)`, returning as soon as there is one: XREAD BLOCK on a
        connection of its own, so that no request's command waits behind it.

        It is the one Redis call the server cancels (at shutdown), so it avoids what can lose a
        cancellation: the client's retries, and redis-py's `asyncio.wait_for` around socket
        writes (on Python 3.11 a cancel landing as the write completes is swallowed). A plain
        connection without socket timeout, and this method's own deadline instead; cancelled or
        timed out mid-read, the connection is dropped and the next call opens another."""
        block = min(seconds, WAIT_MAX)
        conn = await self._follow_connection()
        try:
            async with asyncio.timeout(block + self._follow_timeout()):
                await conn.send_command("XREAD", "BLOCK", str(max(1, math.ceil(block * 1000))), "STREAMS",
                                        self.key("revocations"), _entry_id(cursor))
                found: Any = await conn.read_response()
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise redis_errors.TimeoutError("no answer to XREAD BLOCK in time") from None
        if not found:
            return cursor, []
        # RESP3 answers a map {stream: entries}, RESP2 a list [[stream, entries]].
        [entries] = found.values() if isinstance(found, dict) else [found[0][1]]
        return _after(cursor, entries)

    def _follow_timeout(self) -> float:
        timeout: float | None = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        return timeout or WAIT_MAX

    async def _follow_connection(self) -> Connection:
        if self._follower is None:
            # socket_timeout None (redis-py's default is a number): no `wait_for` around its writes.
            pool = aioredis.ConnectionPool.from_url(self.url, socket_timeout=None,
                                                    socket_connect_timeout=self._follow_timeout())
            self._follower = pool, await pool.get_connection()  # type: ignore[no-untyped-call]
        return self._follower[1]

    async def close(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            await follower[0].disconnect()
        await super().close()

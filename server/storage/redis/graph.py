"""The knowledge graph (`server.memory.graph.GraphStore`) on Redis.

Keys (the full table, with formats: docs/storage.md). Per owner, a fixed set of keys whose last
part is the owner, so that no owner's keys can be named through another's:

    graph:owner:<owner>      hash   state ("closed" once delete_graph began; absent: active),
                                    entities, observations, bytes (`Usage`), next_entity, next_relation,
                                    indexed (1 once every entity has its word record: below),
                                    version (the stamp of the last change: folds_copy.py)
    graph:names:<owner>      hash   entity name -> entity id
    graph:entities:<owner>   hash   entity id -> record: name FF type FF observation FF observation ...
    graph:folds:<owner>      hash   chunk (id // 128) -> its entities' records with every text folded
                                    (str.lower), each followed by its id as a tag (graph_view.PRELUDE)
    graph:relations:<owner>  hash   relation id -> record: from FF to FF relationType
    graph:triples:<owner>    hash   relation record -> relation id
    graph:ends:<owner>       zset   "<endpoint name> FF <relation id>", all scored 0 (a lex index)
    graph:chunks:<owner>     hash   chunk -> generation, or "-<stamp>" when stale: graph_view.py
    graph:view:<owner>       hash   chunk -> its JSON: graph_view.py
    graph:origins:<owner>    hash   "e<id>" -> provenance of the entity and of each observation:
                                    at FF by FF at FF by ... (the entity's pair, then one pair per
                                    observation, in the record's order); "r<id>" -> at FF by.
                                    `at` is the unix time as Python's repr of the float, `by` the
                                    client id; both empty where unknown
    graph:words:<owner>      hash   entity id -> word record: the words of each text (search.word_text,
                                    space separated), the texts in the record's order, FF between them
    graph:index:<owner>      zset   the word index of the version before 2026-12-04, unused: the
                                    first write drops it (a lexical index of every word of every
                                    entity, it was four times the rest of the graph)
    graph:owner:<owner>      channel "1", published by every script that changed the graph: its
                                    change feed (server/memory/changes.py, `graph_changes`)

Why it looks like this
----------------------

* Records separated by the byte FF. Valid UTF-8 never contains it, so a record splits back into
  exactly its texts whatever they hold (NUL included) in Lua (`string.find`, plain) and in Python
  (`bytes.split`, in C), and no text needs escaping. Lua never parses JSON: Redis's cjson would
  write "/" as "\\/" and an empty list as {}, and the tools return exactly what orjson writes.
* Ids are creation order: `next_entity` and `next_relation` only grow, and every listing sorts by
  id (Redis hashes have no order). Observations keep their order inside the record.
* Every mutation is one Lua script over the owner's keys (declared in KEYS): it checks the state
  (`GraphClosedError`), looks up what exists, computes what the call really adds and checks it
  against the quota before its first write, then writes, updates the usage counters and marks the
  chunks of the read_graph view it touched stale. A script runs alone on the server, so each
  mutation is all-or-nothing and atomic against every other client, in this process or another;
  the quota and the closed state are checked in the same step as the write.
* The search floor is a case-insensitive substring match with Python's `str.lower` (all of
  Unicode, as the official server's `toLowerCase`); Lua cannot fold Unicode, so Python folds every text it writes
  and the query, and the scripts store the folded records beside the records. They are kept per
  chunk of 128 entities as one string, each folded record followed by a tag that holds its id in
  bytes that UTF-8 never uses: a query (valid UTF-8, so without FF or any tag byte) can match only
  inside one text, and the search is one `string.find` pass per chunk. Redis copies every value a
  script reads into Lua, and 80 strings cost a third of 10,000 (a 10,000-entity graph: 5-7 ms
  of Redis time per search, docs/performance.md); the scripts rewrite the chunks they touch.
* search_nodes ranks (server/memory/search.py defines what it finds and in which order). Python
  cuts every text it writes into words (`search.word_text`) and passes them beside the folded
  text; the scripts keep each entity's word record, in the same script as the write.
* The search script answers from one state of the owner's keys. It needs two kinds of facts:
  where the whole query first occurs in each entity (the first match in a record is in its
  earliest text, counted by the separators before it), and for each query word the best field
  where it starts a word. They are found in this process's copy of the folds and word records
  (folds_copy.py: a version check in the script makes them the facts of the state the script
  sees), or, when the copy cannot be used (a graph larger than its budget, or a graph changing
  faster than the copy follows), by the script itself, scanning every folded chunk and every
  word record. It turns them into each hit's rank key (`search.rank_key`, line for line in Lua:
  the differential test holds the two stores to the same ranked answers), sorts, takes the page
  (`after`, `limit`) and answers its records and the relations touching them. A sorted set of
  every (word, entity) answered the word prefixes before: at 100,000 entities it was 4.5 million
  members, three quarters of the graph's Redis memory and 40% of an import's Redis time
  (docs/performance.md).
* Owners from before the word records: the owner hash's `indexed` field says every entity has
  one. `create_entities` and `import_graph` set it when the owner has no entity yet; a search of
  an owner without it gets 'unindexed' back, and Python writes them (`_index_words`: reads the
  records in batches, words them, and a script per batch stores the words of the entities whose
  records are still those read, marking their chunks changed for the copies; until every entity
  has them).
  Writes (every one: create_entities, add_observations, import_graph, the deletions) keep the
  words of new entities and of entities that have them, and leave the others to the build, so a
  batch stored stays exact while the next ones are read. Provenance and words are independent:
  every script that changes a record changes its origins list and its word record in step.
* search_nodes and open_nodes answer, in one script, the hits' records and the relations touching
  them, each kind sorted by id and joined into one string: redis-py parses two strings instead of
  tens of thousands of replies on the event loop, and Python builds each kind's JSON with one
  orjson call (graph_view.py, `entity_pieces`).
* `graph:ends` is the index of relations by endpoint name, the way "relations from or to these
  names" is found (delete_entities, search, open_nodes): every relation has one member per
  endpoint, and the members of one name are the lexical range [name FF, name FF FF], since no
  name contains FF. Relations may name entities that do not exist, as in the official server.
* Provenance lives beside the records, not inside them, so that the records, the folds and the
  view keep their formats (every reader of a record splits it into name, type, observations),
  and a record from before provenance existed is simply one without an `origins` field: unknown
  (`origins_of` pads a missing or short list with empty pairs). The scripts that change a record's
  observations change its origins list in step (appended, or filtered by the same positions).
* `delete_graph` is one script: it closes the owner (the state stays, for good: owners are never
  reused, and a write already on its way must find it closed) and UNLINKs the owner's other keys.
  UNLINK takes the keys out of the keyspace at once and frees their memory on Redis's lazy-free
  thread, so a large graph costs the server a few key deletions, not one long command; and being
  one atomic step, an interrupted removal has either happened or not, and running it again is
  harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from functools import cached_property
from typing import Any, Final

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from server.memory.changes import CHANGES_GATHER_SECONDS
from server.memory.graph import (
    DEFAULT_QUOTA,
    AddedObservations,
    Entity,
    EntityNotFoundError,
    ExportBatch,
    GraphClosedError,
    GraphJSON,
    Imported,
    ObservationAddition,
    ObservationDeletion,
    Origin,
    Piece,
    Quota,
    QuotaExceededError,
    Relation,
    StoredEntity,
    StoredRelation,
    Usage,
)
from server.memory.paging import Key, page_relations
from server.memory.search import Query, reference_key, word_text
from server.storage.redis import folds_copy
from server.storage.redis.base import RedisBase, guard_all, guarded
from server.storage.redis.graph_view import (
    END,
    PRELUDE,
    SEP,
    OwnerKeys,
    RedisGraphView,
    entity_pieces,
    new_stamp,
    relation_pieces,
    texts_of,
)

# Every graph script gets the owner's keys in this order (`OwnerKeys.all`).
_KEYS_LUA = """
local K = {owner = KEYS[1], names = KEYS[2], entities = KEYS[3], folds = KEYS[4], triples = KEYS[5],
           relations = KEYS[6], ends = KEYS[7], chunks = KEYS[8], view = KEYS[9], origins = KEYS[10],
           words = KEYS[11], index = KEYS[12]}
local MEASURES = {'entities', 'observations', 'bytes'}

local function closed()
  return redis.call('HGET', K.owner, 'state') == 'closed'
end

local function usage()
  local v = redis.call('HMGET', K.owner, 'entities', 'observations', 'bytes')
  return {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0}
end

-- As server.memory.graph.Quota.check: the first measure that grows beyond its limit, or nil.
local function refused(delta)
  local before = usage()
  for i = 1, 3 do
    local limit, old = tonumber(ARGV[i + 1]), before[i]
    local new = old + delta[i]
    if limit > 0 and new > old and new > limit then
      return {'quota', MEASURES[i], old, new, limit}
    end
  end
  return nil
end

local function account(delta)
  for i = 1, 3 do
    if delta[i] ~= 0 then redis.call('HINCRBY', K.owner, MEASURES[i], delta[i]) end
  end
end

-- Mark the view's chunks of the touched rows stale with this call's stamp (ARGV[1]: random, new
-- for every call; graph_view.py says why), make the stamp the graph's version (the search copy's
-- check: folds_copy.py), and announce the change once per call on the graph's channel (named as
-- its owner key; server/memory/changes.py): in the same atomic step as the write.
local ANNOUNCED = false
local function mark(touched)
  local marker = '-' .. ARGV[1]
  for field in pairs(touched) do redis.call('HSET', K.chunks, field, marker) end
  redis.call('HSET', K.owner, 'version', ARGV[1])
end

local function stale(touched)
  if next(touched) == nil then return end
  mark(touched)
  if not ANNOUNCED then
    -- The lexicographic word index of the version before this one (a sorted set, four times the
    -- graph's size) is not used any more: the first write drops it (the module).
    redis.call('UNLINK', K.index)
    redis.call('PUBLISH', K.owner, '1')
    ANNOUNCED = true
  end
end

local function chunk_of(kind, id)
  return kind .. math.floor(tonumber(id) / CHUNK)
end

-- How many separators a record has (its texts are one more).
local function separators(record)
  local _, count = string.gsub(record, SEP, '')
  return count
end

-- The folded records, kept per chunk of 128 entities as one string (see the module): loaded on
-- first use by a script, changed in place, the changed chunks written back by save_folds().
local FOLDS, CHANGED = {}, {}

local function folds_of(chunk)
  local folds = FOLDS[chunk]
  if folds == nil then
    folds = {}
    local blob = redis.call('HGET', K.folds, chunk)
    if blob then
      for id, fold in each_fold(blob) do folds[id] = fold end
    end
    FOLDS[chunk] = folds
  end
  return folds
end

local function get_fold(id)
  return folds_of(math.floor(tonumber(id) / CHUNK))[tonumber(id)]
end

local function set_fold(id, fold)
  local chunk = math.floor(tonumber(id) / CHUNK)
  folds_of(chunk)[tonumber(id)] = fold
  CHANGED[chunk] = true
end

local function save_folds()
  for chunk in pairs(CHANGED) do
    local folds, ids, parts = FOLDS[chunk], {}, {}
    for id in pairs(folds) do ids[#ids + 1] = id end
    table.sort(ids)
    for _, id in ipairs(ids) do
      parts[#parts + 1] = folds[id]
      parts[#parts + 1] = TAG .. tag(id) .. TAG_END
    end
    if #ids == 0 then
      redis.call('HDEL', K.folds, chunk)
    else
      redis.call('HSET', K.folds, chunk, table.concat(parts))
    end
  end
end

-- An entity's provenance as a list of 2 * count texts (count: 1 + its observations), padded with
-- empty texts (unknown) where nothing is stored.
local function origins_of(id, count)
  local stored = redis.call('HGET', K.origins, 'e' .. id)
  local list = stored and split(stored) or {}
  for i = #list + 1, 2 * count do list[i] = '' end
  return list
end

local function drop_relation(id, touched, delta)
  local triple = redis.call('HGET', K.relations, id)
  if not triple then return end
  local texts = split(triple)
  redis.call('HDEL', K.relations, id)
  redis.call('HDEL', K.origins, 'r' .. id)
  redis.call('HDEL', K.triples, triple)
  redis.call('ZREM', K.ends, texts[1] .. SEP .. id, texts[2] .. SEP .. id)
  delta[3] = delta[3] - (#triple - 2)
  touched[chunk_of('r', id)] = true
end

-- The ids of the relations from or to `name` (graph:ends members are name FF id).
local function relations_of(name)
  local ids = {}
  for _, member in ipairs(redis.call('ZRANGEBYLEX', K.ends, '[' .. name .. SEP, '[' .. name .. SEP .. SEP)) do
    ids[#ids + 1] = string.sub(member, #name + 2)
  end
  return ids
end
"""

# Every mutation's ARGV starts with its stamp (`stale`). Then here: the quota's three limits, then
# per entity (names already unique): name, record, folded record, number of observations, origins,
# word record. Returns {'ok', index of each created entity (from 0)...}.
_CREATE_ENTITIES = """
if closed() then return {'closed'} end
local new, delta = {}, {0, 0, 0}
for i = 5, #ARGV, 6 do
  if redis.call('HEXISTS', K.names, ARGV[i]) == 0 then
    local observations = tonumber(ARGV[i + 3])
    new[#new + 1] = i
    delta[1] = delta[1] + 1
    delta[2] = delta[2] + observations
    delta[3] = delta[3] + #ARGV[i + 1] - 1 - observations
  end
end
local refusal = refused(delta)
if refusal then return refusal end
local touched, created = {}, {'ok'}
-- An owner without entities has a complete word index (empty): from here on it is kept.
if #new > 0 and redis.call('HLEN', K.entities) == 0 then redis.call('HSET', K.owner, 'indexed', 1) end
for _, i in ipairs(new) do
  local id = tostring(redis.call('HINCRBY', K.owner, 'next_entity', 1))
  redis.call('HSET', K.names, ARGV[i], id)
  redis.call('HSET', K.entities, id, ARGV[i + 1])
  redis.call('HSET', K.origins, 'e' .. id, ARGV[i + 4])
  set_fold(id, ARGV[i + 2])
  redis.call('HSET', K.words, id, ARGV[i + 5])
  touched[chunk_of('e', id)] = true
  created[#created + 1] = (i - 5) / 6
end
save_folds()
stale(touched)
account(delta)
return created
"""

# ARGV: the stamp, the quota's limits, then per relation (unique): record, from, to, origin (at FF by).
# Returns as above.
_CREATE_RELATIONS = """
if closed() then return {'closed'} end
local new, delta = {}, {0, 0, 0}
for i = 5, #ARGV, 4 do
  if redis.call('HEXISTS', K.triples, ARGV[i]) == 0 then
    new[#new + 1] = i
    delta[3] = delta[3] + #ARGV[i] - 2
  end
end
local refusal = refused(delta)
if refusal then return refusal end
local touched, created = {}, {'ok'}
for _, i in ipairs(new) do
  local id = redis.call('HINCRBY', K.owner, 'next_relation', 1)
  redis.call('HSET', K.relations, id, ARGV[i])
  redis.call('HSET', K.triples, ARGV[i], id)
  redis.call('ZADD', K.ends, 0, ARGV[i + 1] .. SEP .. id, 0, ARGV[i + 2] .. SEP .. id)
  redis.call('HSET', K.origins, 'r' .. id, ARGV[i + 3])
  touched[chunk_of('r', id)] = true
  created[#created + 1] = (i - 5) / 4
end
stale(touched)
account(delta)
return created
"""

# ARGV: the stamp, the quota's limits, the origin (at, by), then per addition: entity name, k, then k
# triples (content, folded content, its words), contents unique within the addition. Returns
# {'missing', name...} (every unknown
# name, once, in order) or {'ok', {indexes of the contents added}...} (one list per addition).
_ADD_OBSERVATIONS = """
if closed() then return {'closed'} end
local ids, additions, missing, reported = {}, {}, {'missing'}, {}
local i = 7
while i <= #ARGV do
  local name, k = ARGV[i], tonumber(ARGV[i + 1])
  if ids[name] == nil then ids[name] = redis.call('HGET', K.names, name) end
  if not ids[name] and not reported[name] then
    reported[name] = true
    missing[#missing + 1] = name
  end
  additions[#additions + 1] = {ids[name], i + 2, k}
  i = i + 2 + 3 * k
end
if #missing > 1 then return missing end
local records, folds, words, origins, present, delta, result = {}, {}, {}, {}, {}, {0, 0, 0}, {'ok'}
for _, addition in ipairs(additions) do
  local id, start, k = addition[1], addition[2], addition[3]
  if records[id] == nil then
    local record = redis.call('HGET', K.entities, id)
    records[id], folds[id] = {record}, {get_fold(id)}
    -- false for an entity from before the word index (not indexed until the owner is: the module)
    words[id] = {redis.call('HGET', K.words, id)}
    local set, texts = {}, split(record)
    for j = 3, #texts do set[texts[j]] = true end
    present[id] = set
    origins[id] = origins_of(id, #texts - 1)
  end
  local added = {}
  for j = 0, k - 1 do
    local content = ARGV[start + 3 * j]
    if not present[id][content] then
      present[id][content] = true
      table.insert(records[id], content)
      table.insert(folds[id], ARGV[start + 3 * j + 1])
      table.insert(words[id], ARGV[start + 3 * j + 2])
      table.insert(origins[id], ARGV[5])
      table.insert(origins[id], ARGV[6])
      added[#added + 1] = j
      delta[2] = delta[2] + 1
      delta[3] = delta[3] + #content
    end
  end
  result[#result + 1] = added
end
local refusal = refused(delta)
if refusal then return refusal end
local touched = {}
for id, record in pairs(records) do
  if #record > 1 then
    redis.call('HSET', K.entities, id, table.concat(record, SEP))
    redis.call('HSET', K.origins, 'e' .. id, table.concat(origins[id], SEP))
    set_fold(id, table.concat(folds[id], SEP))
    if words[id][1] then
      local new = table.concat(words[id], SEP)
      redis.call('HSET', K.words, id, new)
    end
    touched[chunk_of('e', id)] = true
  end
end
save_folds()
stale(touched)
account(delta)
return result
"""

# ARGV: the stamp, entity names (unique). Relations are deleted by name, whether the entity exists
# or not.
_DELETE_ENTITIES = """
if closed() then return {'closed'} end
local touched, delta = {}, {0, 0, 0}
for i = 2, #ARGV do
  local name = ARGV[i]
  for _, id in ipairs(relations_of(name)) do drop_relation(id, touched, delta) end
  local id = redis.call('HGET', K.names, name)
  if id then
    local record = redis.call('HGET', K.entities, id)
    local seps = separators(record)
    redis.call('HDEL', K.names, name)
    redis.call('HDEL', K.entities, id)
    redis.call('HDEL', K.origins, 'e' .. id)
    set_fold(id, nil)
    redis.call('HDEL', K.words, id)
    delta[1] = delta[1] - 1
    delta[2] = delta[2] - (seps - 1)
    delta[3] = delta[3] - (#record - seps)
    touched[chunk_of('e', id)] = true
  end
end
save_folds()
stale(touched)
account(delta)
return {'ok'}
"""

# ARGV: the stamp, then per deletion: entity name, k, then k contents.
_DELETE_OBSERVATIONS = """
if closed() then return {'closed'} end
local entries, touched, delta = {}, {}, {0, 0, 0}
local i = 2
while i <= #ARGV do
  local name, k = ARGV[i], tonumber(ARGV[i + 1])
  local id = redis.call('HGET', K.names, name)
  if id then
    local entry = entries[id]
    if entry == nil then
      -- {texts, folded texts, changed, origins, word record (false: none yet, see the module), its texts' words}
      local texts, words = split(redis.call('HGET', K.entities, id)), redis.call('HGET', K.words, id)
      entry = {texts, split(get_fold(id)), false, origins_of(id, #texts - 1), words, words and split(words)}
      entries[id] = entry
    end
    local doomed = {}
    for j = i + 2, i + 1 + k do doomed[ARGV[j]] = true end
    local texts, folded, origins, worded = entry[1], entry[2], entry[4], entry[6]
    local kept, kept_folded, kept_origins = {texts[1], texts[2]}, {folded[1], folded[2]}, {origins[1], origins[2]}
    local kept_words = worded and {worded[1], worded[2]}
    for j = 3, #texts do
      if doomed[texts[j]] then
        delta[2] = delta[2] - 1
        delta[3] = delta[3] - #texts[j]
        entry[3] = true
      else
        kept[#kept + 1] = texts[j]
        kept_folded[#kept_folded + 1] = folded[j]
        kept_origins[#kept_origins + 1] = origins[2 * j - 3]
        kept_origins[#kept_origins + 1] = origins[2 * j - 2]
        if worded then kept_words[#kept_words + 1] = worded[j] end
      end
    end
    entry[1], entry[2], entry[4], entry[6] = kept, kept_folded, kept_origins, kept_words
  end
  i = i + 2 + k
end
for id, entry in pairs(entries) do
  if entry[3] then
    redis.call('HSET', K.entities, id, table.concat(entry[1], SEP))
    redis.call('HSET', K.origins, 'e' .. id, table.concat(entry[4], SEP))
    set_fold(id, table.concat(entry[2], SEP))
    if entry[5] then
      local words = table.concat(entry[6], SEP)
      redis.call('HSET', K.words, id, words)
    end
    touched[chunk_of('e', id)] = true
  end
end
save_folds()
stale(touched)
account(delta)
return {'ok'}
"""

# ARGV: the stamp, relation records.
_DELETE_RELATIONS = """
if closed() then return {'closed'} end
local touched, delta = {}, {0, 0, 0}
for i = 2, #ARGV do
  local triple = ARGV[i]
  local id = redis.call('HGET', K.triples, triple)
  if id then drop_relation(id, touched, delta) end
end
stale(touched)
account(delta)
return {'ok'}
"""

# `import_graph`. ARGV: the stamp, the quota's limits, the number of entities, then per entity: name,
# type, folded name, folded type, name's words, type's words, at, by, k, then k quintuples (content,
# folded content, its words, at, by) with contents unique within the entity; then per relation:
# record, from, to, at, by. A name may come twice (the second adds what the first did not). Returns
# {'ok', entities, observations, relations added} or a refusal.
_IMPORT = """
if closed() then return {'closed'} end
local n, i = tonumber(ARGV[5]), 6
local plans, ids, present, delta = {}, {}, {}, {0, 0, 0}
for _ = 1, n do
  local name, k = ARGV[i], tonumber(ARGV[i + 8])
  if ids[name] == nil then
    local id = redis.call('HGET', K.names, name)
    local set = {}
    if id then
      local texts = split(redis.call('HGET', K.entities, id))
      for j = 3, #texts do set[texts[j]] = true end
    else
      delta[1] = delta[1] + 1
      delta[3] = delta[3] + #name + #ARGV[i + 1]
    end
    ids[name], present[name] = id or false, set
  end
  local added = {}
  for j = 0, k - 1 do
    local at = i + 9 + 5 * j
    if not present[name][ARGV[at]] then
      present[name][ARGV[at]] = true
      added[#added + 1] = at
      delta[2] = delta[2] + 1
      delta[3] = delta[3] + #ARGV[at]
    end
  end
  plans[#plans + 1] = {name, i, added}
  i = i + 9 + 5 * k
end
local relations, seen = {}, {}
while i <= #ARGV do
  local record = ARGV[i]
  if not seen[record] and redis.call('HEXISTS', K.triples, record) == 0 then
    seen[record] = true
    relations[#relations + 1] = i
    delta[3] = delta[3] + #record - 2
  end
  i = i + 5
end
local refusal = refused(delta)
if refusal then return refusal end
-- An owner without entities has a complete word index (empty): from here on it is kept.
if delta[1] > 0 and redis.call('HLEN', K.entities) == 0 then redis.call('HSET', K.owner, 'indexed', 1) end
-- words[id]: {word record before (false: none, for a new entity or one from before the word
-- index, which the build words later: see the module), the texts' words}
local touched, records, folds, origins, words = {}, {}, {}, {}, {}
local new_entities, new_observations = 0, 0
for _, plan in ipairs(plans) do
  local name, start, added = plan[1], plan[2], plan[3]
  local id = ids[name]
  if not id then
    id = tostring(redis.call('HINCRBY', K.owner, 'next_entity', 1))
    ids[name] = id
    redis.call('HSET', K.names, name, id)
    records[id], folds[id] = {name, ARGV[start + 1]}, {ARGV[start + 2], ARGV[start + 3]}
    words[id] = {false, {ARGV[start + 4], ARGV[start + 5]}}
    origins[id] = {ARGV[start + 6], ARGV[start + 7]}
    new_entities = new_entities + 1
  elseif records[id] == nil and #added > 0 then
    records[id], folds[id] = split(redis.call('HGET', K.entities, id)), split(get_fold(id))
    local old = redis.call('HGET', K.words, id)
    words[id] = {old, old and split(old)}
    origins[id] = origins_of(id, #records[id] - 1)
  end
  for _, at in ipairs(added) do
    local record, origin, worded = records[id], origins[id], words[id][2]
    record[#record + 1] = ARGV[at]
    folds[id][#folds[id] + 1] = ARGV[at + 1]
    if worded then worded[#worded + 1] = ARGV[at + 2] end
    origin[#origin + 1] = ARGV[at + 3]
    origin[#origin + 1] = ARGV[at + 4]
    new_observations = new_observations + 1
  end
end
for id, record in pairs(records) do
  redis.call('HSET', K.entities, id, table.concat(record, SEP))
  redis.call('HSET', K.origins, 'e' .. id, table.concat(origins[id], SEP))
  set_fold(id, table.concat(folds[id], SEP))
  local old, worded = words[id][1], words[id][2]
  if worded then
    local new = table.concat(worded, SEP)
    redis.call('HSET', K.words, id, new)
  end
  touched[chunk_of('e', id)] = true
end
save_folds()
for _, j in ipairs(relations) do
  local id = redis.call('HINCRBY', K.owner, 'next_relation', 1)
  redis.call('HSET', K.relations, id, ARGV[j])
  redis.call('HSET', K.triples, ARGV[j], id)
  redis.call('ZADD', K.ends, 0, ARGV[j + 1] .. SEP .. id, 0, ARGV[j + 2] .. SEP .. id)
  redis.call('HSET', K.origins, 'r' .. id, ARGV[j + 3] .. SEP .. ARGV[j + 4])
  touched[chunk_of('r', id)] = true
end
stale(touched)
account(delta)
return {'ok', new_entities, new_observations, #relations}
"""

# Close, zero the usage, and hand the rest to the lazy-free thread (see the module). Returns the
# number of entities the graph had.
_DELETE_GRAPH = """
local count = redis.call('HLEN', K.entities)
-- A new version (ARGV[1], a stamp), never none: a copy of a graph written before versions existed
-- holds none, and must not match the emptied graph (folds_copy.py).
redis.call('HSET', K.owner, 'state', 'closed', 'entities', 0, 'observations', 0, 'bytes', 0, 'version', ARGV[1])
redis.call('HDEL', K.owner, 'next_entity', 'next_relation', 'indexed')
local had = redis.call('EXISTS', K.names, K.relations)
redis.call('UNLINK', K.names, K.entities, K.folds, K.triples, K.relations, K.ends, K.chunks, K.view, K.origins,
           K.words, K.index)
if had > 0 then redis.call('PUBLISH', K.owner, '1') end
return count
"""

# search_nodes and open_nodes answer two strings, each kind's records joined by END (FE), so that
# Python reads two replies, not tens of thousands.
_SUBGRAPH_LUA = """
local END = '\\254'

-- The records of these entity ids (sorted), fetched a chunk's worth per command.
local function records_of(ids)
  local out, batch = {}, {}
  for i, id in ipairs(ids) do
    batch[#batch + 1] = id
    if #batch == CHUNK or i == #ids then
      for _, record in ipairs(redis.call('HMGET', K.entities, unpack(batch))) do out[#out + 1] = record end
      batch = {}
    end
  end
  return out
end

-- The ids and records of the relations from or to any of these names (a set), in id order. Few
-- names: the endpoint index, one range per name; many: one pass over all the relations, cheaper
-- than thousands of commands.
local function relations_touching(names, count)
  local ids, records = {}, {}
  if count * 8 > redis.call('HLEN', K.relations) then
    local all = redis.call('HGETALL', K.relations)
    for i = 1, #all, 2 do
      local record = all[i + 1]
      local first = string.find(record, SEP, 1, true)
      local second = string.find(record, SEP, first + 1, true)
      if names[string.sub(record, 1, first - 1)] or names[string.sub(record, first + 1, second - 1)] then
        local id = tonumber(all[i])
        ids[#ids + 1] = id
        records[id] = record
      end
    end
  else
    for name in pairs(names) do
      for _, relation in ipairs(relations_of(name)) do
        local id = tonumber(relation)
        if records[id] == nil then
          ids[#ids + 1] = id
          records[id] = true
        end
      end
    end
  end
  table.sort(ids)
  local out = {}
  for _, id in ipairs(ids) do
    local record = records[id]
    if record == true then record = redis.call('HGET', K.relations, id) end
    out[#out + 1] = record
  end
  return out
end

-- The entities with these ids (in id order, or as given if `ordered`) and the relations touching
-- them in id order, each kind as one string of records joined by END.
local function subgraph(ids, ordered)
  if not ordered then table.sort(ids) end
  local entities = records_of(ids)
  local names = {}
  for _, record in ipairs(entities) do names[string.sub(record, 1, string.find(record, SEP, 1, true) - 1)] = true end
  return {table.concat(entities, END), table.concat(relations_touching(names, #entities), END)}
end
"""

# ARGV: the query lowered (the floor), the key to start after ("" or its four numbers, space
# separated), the limit ("" for none), where the facts come from ('scan': found here; 'copy': found
# in this process's copy of the folds and words, folds_copy.py), the graph's version that copy is
# of, the number n of query words, the n folded words, then (copy) n + 1 lists of facts "<entity
# id> <field> ...": where the phrase first occurs in each entity holding it, then for each word
# the best field of each entity where it starts a word. Returns {'unindexed'} for an owner whose
# word records are not all there yet (the module), {'stale'} when the copy is not of the graph's
# version, else the subgraph of the page (entities in rank order) and the key the next page starts
# after ("" if none).
_SEARCH = """
if not redis.call('HGET', K.owner, 'indexed') and redis.call('HLEN', K.entities) > 0 then return {'unindexed'} end
local copy = ARGV[4] == 'copy'
if copy and (redis.call('HGET', K.owner, 'version') or '') ~= ARGV[5] then return {'stale'} end
local phrase, n = ARGV[1], tonumber(ARGV[6])
local facts = {}  -- entity id -> {where the phrase first occurs, then where each word does} (3: nowhere)
local function facts_of(id)
  local f = facts[id]
  if f == nil then
    f = {3}
    for i = 1, n do f[i + 1] = 3 end
    facts[id] = f
  end
  return f
end
if copy then
  for i = 0, n do
    for id, field in string.gmatch(ARGV[7 + n + i], '(%d+) (%d)') do facts_of(tonumber(id))[i + 1] = tonumber(field) end
  end
else
  for _, blob in ipairs(redis.call('HVALS', K.folds)) do
    -- A match lies inside one folded text; the first in a record is in its earliest text. The next
    -- tag names the record's entity, the separators since the record's start the text; the search
    -- goes on after the tag (the first match per entity is the one that counts).
    local position, start = 1, 1
    while true do
      local found = string.find(blob, phrase, position, true)
      if found == nil then break end
      local mark = string.find(blob, TAG, found, true)
      if mark == nil then break end
      while true do
        local stop = string.find(blob, TAG_END, start, true)
        if stop == nil or stop > found then break end
        start = stop + 1
      end
      local field, at = 0, start
      while field < 2 do
        local sep = string.find(blob, SEP, at, true)
        if sep == nil or sep >= found then break end
        field, at = field + 1, sep + 1
      end
      local stop = string.find(blob, TAG_END, mark, true)
      facts_of(untag(string.sub(blob, mark + 1, stop - 1)))[1] = field
      position, start = stop + 1, stop + 1
    end
  end
  -- Each word as a prefix: with every text of a word record led by a space (as each of its words
  -- then is), the first ' ' .. word is in the best field (a record's texts are name, type, then
  -- the observations).
  if n > 0 then
    local listing = redis.call('HGETALL', K.words)
    for j = 1, #listing, 2 do
      local spaced = ' ' .. string.gsub(listing[j + 1], SEP, SEP .. ' ')
      for i = 1, n do
        local found = string.find(spaced, ' ' .. ARGV[6 + i], 1, true)
        if found then
          local field, at = 0, 1
          while field < 2 do
            local sep = string.find(spaced, SEP, at, true)
            if sep == nil or sep >= found then break end
            field, at = field + 1, sep + 1
          end
          facts_of(tonumber(listing[j]))[i + 1] = field
        end
      end
    end
  end
end
-- The rank key: server.memory.search.rank_key, line for line.
local keyed = {}
for id, f in pairs(facts) do
  local matched, total, phrase_field = 0, 0, f[1]
  for i = 1, n do
    local tier = 99
    if f[i + 1] ~= 3 then tier = 2 * f[i + 1] end
    if phrase_field ~= 3 and 2 * phrase_field + 1 < tier then tier = 2 * phrase_field + 1 end
    if tier ~= 99 then matched, total = matched + 1, total + tier end
  end
  if matched > 0 or phrase_field ~= 3 then keyed[#keyed + 1] = {-matched, total, phrase_field, id} end
end
local function before(x, y)
  for j = 1, 4 do
    if x[j] ~= y[j] then return x[j] < y[j] end
  end
  return false
end
table.sort(keyed, before)
local after = nil
if ARGV[2] ~= '' then
  after = {}
  for number in string.gmatch(ARGV[2], '[^ ]+') do after[#after + 1] = tonumber(number) end
end
local limit = tonumber(ARGV[3])
local ids, last, more = {}, nil, false
for _, key in ipairs(keyed) do
  if after == nil or before(after, key) then
    if limit ~= nil and #ids >= limit then
      more = true
      break
    end
    ids[#ids + 1] = key[4]
    last = key
  end
end
local out = subgraph(ids, true)
out[3] = (more and last) and table.concat(last, ' ') or ''
return out
"""

# Give the entities of an owner from before the word records theirs (the module). ARGV: a stamp,
# then per entity: id, record as read, word record. An entity still holding that record and
# without words yet gets them (one that has them is kept up to date by the writes already); their
# chunks are marked changed, as by a write, for the copies of the words (folds_copy.py), though
# nothing a client sees changed (no announcement). Returns 1 once every entity of the owner has
# its words, and marks the owner indexed; else 0.
_INDEX_WORDS = """
if closed() then return 1 end
local touched = {}
for i = 2, #ARGV, 3 do
  if redis.call('HGET', K.entities, ARGV[i]) == ARGV[i + 1] and redis.call('HEXISTS', K.words, ARGV[i]) == 0 then
    redis.call('HSET', K.words, ARGV[i], ARGV[i + 2])
    touched[chunk_of('e', ARGV[i])] = true
  end
end
if next(touched) ~= nil then mark(touched) end
if redis.call('HLEN', K.words) ~= redis.call('HLEN', K.entities) then return 0 end
redis.call('HSET', K.owner, 'indexed', 1)
return 1
"""

# ARGV: entity names (unique).
_OPEN_NODES = """
local ids = {}
for _, name in ipairs(ARGV) do
  local id = redis.call('HGET', K.names, name)
  if id then ids[#ids + 1] = tonumber(id) end
end
return subgraph(ids)
"""


# Pages (server/memory/paging.py says what a page holds): the page's entities, the relations
# touching them, and the result's key (the entity id) of every other endpoint those relations name,
# from which Python picks the relations the page holds. Each reply: {1 if more follow, {id, record
# ...}, {relation id, record ...}, {endpoint name, entity id ...}}.
_PAGE_LUA = """
-- ids: the result's entity ids after the page start, sorted; records: theirs, or nil (fetched
-- here); in_result(id): whether an entity belongs to the result; dangling: add the relations
-- naming no existing entity when this is the last page (read_graph).
local function page(ids, records, limit, in_result, dangling)
  local more = limit > 0 and #ids > limit
  local count = more and limit or #ids
  if records == nil then
    local wanted = {}
    for i = 1, count do wanted[i] = ids[i] end
    records = records_of(wanted)
  end
  local entities, names = {}, {}
  for i = 1, count do
    entities[#entities + 1] = ids[i]
    entities[#entities + 1] = records[i]
    names[string.sub(records[i], 1, string.find(records[i], SEP, 1, true) - 1)] = true
  end
  local found, order = {}, {}
  for name in pairs(names) do
    for _, relation in ipairs(relations_of(name)) do
      local id = tonumber(relation)
      if found[id] == nil then
        found[id] = true
        order[#order + 1] = id
      end
    end
  end
  if dangling and not more then
    local all = redis.call('HGETALL', K.relations)
    for i = 1, #all, 2 do
      local id = tonumber(all[i])
      if found[id] == nil then
        local texts = split(all[i + 1])
        if redis.call('HEXISTS', K.names, texts[1]) == 0 and redis.call('HEXISTS', K.names, texts[2]) == 0 then
          found[id] = all[i + 1]
          order[#order + 1] = id
        end
      end
    end
  end
  table.sort(order)
  local relations, ends, seen = {}, {}, {}
  for _, id in ipairs(order) do
    local record = found[id]
    if record == true then record = redis.call('HGET', K.relations, id) end
    relations[#relations + 1] = id
    relations[#relations + 1] = record
    if more then
      local texts = split(record)
      for j = 1, 2 do
        local name = texts[j]
        if not names[name] and not seen[name] then
          seen[name] = true
          local other = redis.call('HGET', K.names, name)
          if other and in_result(tonumber(other)) then
            ends[#ends + 1] = name
            ends[#ends + 1] = other
          end
        end
      end
    end
  end
  return {more and 1 or 0, entities, relations, ends}
end

local function always() return true end
"""

# ARGV: after (an entity id; 0: from the first), limit (0: none). The owner's entity ids in order
# without listing them all: the view's entity chunks ("e<n>", one per 128 ids that hold an entity,
# graph_view.py) in order, each read with one HMGET, until the page is full.
_GRAPH_PAGE = """
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local chunks = {}
for _, field in ipairs(redis.call('HKEYS', K.chunks)) do
  if string.sub(field, 1, 1) == 'e' then
    local n = tonumber(string.sub(field, 2))
    if (n + 1) * CHUNK - 1 > after then chunks[#chunks + 1] = n end
  end
end
table.sort(chunks)
local ids, records = {}, {}
local wanted = limit > 0 and limit + 1 or math.huge
for _, n in ipairs(chunks) do
  local range = {}
  for id = math.max(n * CHUNK, after + 1), (n + 1) * CHUNK - 1 do range[#range + 1] = id end
  for i, record in ipairs(redis.call('HMGET', K.entities, unpack(range))) do
    if record and #ids < wanted then
      ids[#ids + 1] = range[i]
      records[#records + 1] = record
    end
  end
  if #ids >= wanted then break end
end
return page(ids, records, limit, always, true)
"""

# ARGV: after, limit, entity names (unique).
_OPEN_PAGE = """
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids, member = {}, {}
for i = 3, #ARGV do
  local id = redis.call('HGET', K.names, ARGV[i])
  if id then
    id = tonumber(id)
    member[id] = true
    if id > after then ids[#ids + 1] = id end
  end
end
table.sort(ids)
return page(ids, nil, limit, function(id) return member[id] == true end, false)
"""


def _script_source(body: str, *parts: str) -> str:
    return PRELUDE + _KEYS_LUA + "".join(parts) + body


log = logging.getLogger(__name__)

CHANGES_WAIT_SECONDS: Final = 0.25
"""How long one wait for a change message lasts: the longest a newly watched graph waits before
its channel is subscribed."""
CHANGES_RETRY_SECONDS: Final = 1.0

_NO_LIMIT: Final = (0, 0, 0)
_COPY_ATTEMPTS: Final = 3
"""Searches on this process's copy of the folds before one scans in Redis (folds_copy.py)."""
_INDEX_BATCH: Final = 1000
"""Entities worded per script by `_index_words`."""
SLICE: Final = 1000
"""Records turned into JSON between two yields to the event loop (`_pieces`)."""


class _Scripts:
    def __init__(self, base: RedisBase) -> None:
        self.create_entities = base.script(_script_source(_CREATE_ENTITIES))
        self.create_relations = base.script(_script_source(_CREATE_RELATIONS))
        self.add_observations = base.script(_script_source(_ADD_OBSERVATIONS))
        self.delete_entities = base.script(_script_source(_DELETE_ENTITIES))
        self.delete_observations = base.script(_script_source(_DELETE_OBSERVATIONS))
        self.delete_relations = base.script(_script_source(_DELETE_RELATIONS))
        self.delete_graph = base.script(_script_source(_DELETE_GRAPH))
        self.import_graph = base.script(_script_source(_IMPORT))
        self.search = base.script(_script_source(_SEARCH, _SUBGRAPH_LUA))
        self.index_words = base.script(_script_source(_INDEX_WORDS))
        self.open_nodes = base.script(_script_source(_OPEN_NODES, _SUBGRAPH_LUA))
        self.graph_page = base.script(_script_source(_GRAPH_PAGE, _SUBGRAPH_LUA, _PAGE_LUA))
        self.open_page = base.script(_script_source(_OPEN_PAGE, _SUBGRAPH_LUA, _PAGE_LUA))


@guard_all
class RedisGraph(RedisBase):
    """`GraphStore` on Redis (see the module)."""

    def graph_keys(self, owner: str) -> OwnerKeys:
        return OwnerKeys.of(self, owner)

    @cached_property
    def _graph_scripts(self) -> _Scripts:
        return _Scripts(self)

    @cached_property
    def _view(self) -> RedisGraphView:
        return RedisGraphView(self)

    @cached_property
    def _folds(self) -> folds_copy.FoldsCopy:
        return folds_copy.FoldsCopy(self)

    # --- mutations ---------------------------------------------------------------------------

    async def create_entities(self, owner: str, entities: Sequence[Entity], quota: Quota = DEFAULT_QUOTA,
                              origin: Origin | None = None) -> list[Entity]:
        first: dict[str, Entity] = {}
        for entity in entities:
            first.setdefault(entity.name, entity)
        unique = [Entity(name=e.name, entityType=e.entityType, observations=_unique(e.observations))
                  for e in first.values()]
        args: list[bytes | int] = [*_limits(quota)]
        at, by = _origin_args(origin)
        for entity in unique:
            texts = [entity.name, entity.entityType, *entity.observations]
            args += [entity.name.encode(), _record(texts), _folded(texts), len(entity.observations),
                     SEP.join([at, by] * (1 + len(entity.observations))), _worded(texts)]
        reply = await self._mutate(self._graph_scripts.create_entities, owner, args)
        return [unique[index] for index in reply[1:]]

    async def create_relations(self, owner: str, relations: Sequence[Relation], quota: Quota = DEFAULT_QUOTA,
                               origin: Origin | None = None) -> list[Relation]:
        first: dict[bytes, Relation] = {}
        for relation in relations:
            first.setdefault(_record((relation.from_, relation.to, relation.relationType)), relation)
        unique = list(first.items())
        args: list[bytes | int] = [*_limits(quota)]
        made = SEP.join(_origin_args(origin))
        for record, relation in unique:
            args += [record, relation.from_.encode(), relation.to.encode(), made]
        reply = await self._mutate(self._graph_scripts.create_relations, owner, args)
        return [unique[index][1] for index in reply[1:]]

    async def add_observations(self, owner: str, additions: Sequence[ObservationAddition],
                               quota: Quota = DEFAULT_QUOTA, origin: Origin | None = None
                               ) -> list[AddedObservations]:
        contents = [_unique(addition.contents) for addition in additions]
        args: list[bytes | int] = [*_limits(quota), *_origin_args(origin)]
        for addition, unique in zip(additions, contents, strict=True):
            args += [addition.entityName.encode(), len(unique)]
            for content in unique:
                args += [content.encode(), content.lower().encode(), word_text(content).encode()]
        reply = await self._mutate(self._graph_scripts.add_observations, owner, args)
        if reply[0] == b"missing":
            raise EntityNotFoundError([name.decode() for name in reply[1:]])
        return [AddedObservations(entityName=addition.entityName, addedObservations=[unique[i] for i in added])
                for addition, unique, added in zip(additions, contents, reply[1:], strict=True)]

    async def import_graph(self, owner: str, entities: Sequence[StoredEntity], relations: Sequence[StoredRelation],
                           quota: Quota = DEFAULT_QUOTA, ready: Awaitable[object] | None = None) -> Imported:
        args: list[bytes | int] = [*_limits(quota), len(entities)]
        for entity in entities:
            seen: dict[str, int] = {}  # each content once, at its first position
            for index, content in enumerate(entity.observations):
                seen.setdefault(content, index)
            args += [entity.name.encode(), entity.entity_type.encode(), entity.name.lower().encode(),
                     entity.entity_type.lower().encode(), word_text(entity.name).encode(),
                     word_text(entity.entity_type).encode(), *_origin_args(entity.origin), len(seen)]
            for content, index in seen.items():
                args += [content.encode(), content.lower().encode(), word_text(content).encode(),
                         *_origin_args(entity.observation_origin(index))]
        for relation in relations:
            args += [_record((relation.from_, relation.to, relation.relation_type)), relation.from_.encode(),
                     relation.to.encode(), *_origin_args(relation.origin)]
        if ready is not None:
            await ready  # the arguments are ready: the batch before this one may still be running
        reply = await self._mutate(self._graph_scripts.import_graph, owner, args)
        return Imported(*(int(count) for count in reply[1:]))

    async def delete_entities(self, owner: str, names: Sequence[str]) -> None:
        await self._mutate(self._graph_scripts.delete_entities, owner, [name.encode() for name in _unique(names)])

    async def delete_observations(self, owner: str, deletions: Sequence[ObservationDeletion]) -> None:
        args: list[bytes | int] = []
        for deletion in deletions:
            doomed = _unique(deletion.observations)
            args += [deletion.entityName.encode(), len(doomed), *(content.encode() for content in doomed)]
        await self._mutate(self._graph_scripts.delete_observations, owner, args)

    async def delete_relations(self, owner: str, relations: Sequence[Relation]) -> None:
        args: list[bytes | int] = [_record((r.from_, r.to, r.relationType)) for r in relations]
        await self._mutate(self._graph_scripts.delete_relations, owner, args)

    async def delete_graph(self, owner: str) -> int:
        deleted = int(await self._graph_scripts.delete_graph(keys=self.graph_keys(owner).all, args=[new_stamp()]))
        self._view.forget(owner)
        self._folds.forget(owner)
        return deleted

    async def graph_changes(self, watched: Callable[[], Collection[str]],
                            nudge: asyncio.Event) -> AsyncGenerator[frozenset[str], None]:
        """`server.memory.changes.GraphChanges`: the channels of the watched graphs (each named
        as the graph's owner key; the mutation scripts publish on it), subscribed on one
        connection of this iterator's own. A change this process makes arrives through Redis
        like any other, so `nudge` is not needed (it is cleared)."""
        client = aioredis.Redis.from_url(self.url, single_connection_client=True, socket_connect_timeout=3.0,
                                         socket_timeout=CHANGES_WAIT_SECONDS + 3.0)
        pubsub: PubSub | None = None
        channels: dict[str, str] = {}  # channel -> owner
        outage = False
        try:
            while True:
                nudge.clear()
                wanted = {self.graph_keys(owner).owner: owner for owner in watched()}
                try:
                    if pubsub is None:
                        pubsub = client.pubsub(ignore_subscribe_messages=True)
                        channels = {}
                    gone = [channel for channel in channels if channel not in wanted]
                    new = [channel for channel in wanted if channel not in channels]
                    if gone:
                        await pubsub.unsubscribe(*gone)
                    if new:
                        await pubsub.subscribe(*new)
                    channels = wanted
                    if not channels:
                        await asyncio.sleep(CHANGES_WAIT_SECONDS)
                        continue
                    changed = await _gathered(pubsub, channels)
                except (redis_errors.RedisError, OSError) as exc:
                    # Pub/sub keeps nothing for a subscriber that is away: changes made until the
                    # next subscription are not reported.
                    if not outage:
                        log.warning("graph changes not followed until Redis answers again: %s: %s",
                                    type(exc).__name__, exc)
                        outage = True
                    if pubsub is not None:
                        with contextlib.suppress(redis_errors.RedisError, OSError):
                            await pubsub.aclose()
                        pubsub = None
                    await asyncio.sleep(CHANGES_RETRY_SECONDS)
                    continue
                if outage:
                    log.warning("graph changes followed again")
                    outage = False
                if changed:
                    yield changed
        finally:
            if pubsub is not None:
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    await pubsub.aclose()
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await client.aclose()

    async def _mutate(self, script: AsyncScript, owner: str, args: Sequence[bytes | int]) -> list[Any]:
        """Run a mutation; its refusals (closed graph, quota) as the errors the contract names."""
        reply: list[Any] = await script(keys=self.graph_keys(owner).all, args=[new_stamp(), *args])
        if reply[0] == b"closed":
            raise GraphClosedError()
        if reply[0] == b"quota":
            measure, usage, after, limit = reply[1:]
            raise QuotaExceededError(measure.decode(), usage, after, limit)
        return reply

    # --- queries -----------------------------------------------------------------------------

    async def usage(self, owner: str) -> Usage:
        counts = await self.client.hmget(self.graph_keys(owner).owner, ["entities", "observations", "bytes"])
        return Usage(*(int(count or 0) for count in counts))

    async def read_graph(self, owner: str, *, after: Key | None = None, limit: int | None = None) -> GraphJSON:
        if after is None and limit is None:
            return await self._view.read(owner)
        reply = await self._graph_scripts.graph_page(keys=self.graph_keys(owner).all,
                                                     args=[_after(after), limit or 0])
        return _page(reply)

    async def export_batches(self, owner: str, batch_size: int = 512) -> AsyncIterator[ExportBatch]:
        # By id range, `batch_size` ids a step (ids only grow, so every row is in one range): Redis
        # has no snapshot across commands, so each batch is one state of its rows (one MULTI),
        # not the whole export (see docs/storage.md).
        keys = self.graph_keys(owner)
        last_entity, last_relation = await self._last_ids(keys.owner)
        for start in range(1, last_entity + 1, batch_size):
            rows = await self._rows(keys.entities, keys.origins, "e",
                                    range(start, min(start + batch_size, last_entity + 1)))
            entities: list[StoredEntity] = []
            for record, made in rows:
                name, entity_type, *observations = texts_of(record)
                pairs = made.split(SEP) if made else []
                found = [parse_origin(pairs[i], pairs[i + 1]) if i + 1 < len(pairs) else None
                         for i in range(0, 2 * (1 + len(observations)), 2)]
                entities.append(StoredEntity(name, entity_type, observations, found[0], found[1:]))
            if entities:
                yield entities
        for start in range(1, last_relation + 1, batch_size):
            rows = await self._rows(keys.relations, keys.origins, "r",
                                    range(start, min(start + batch_size, last_relation + 1)))
            relations: list[StoredRelation] = []
            for record, made in rows:
                source, target, relation_type = texts_of(record)
                relations.append(StoredRelation(source, target, relation_type,
                                                parse_origin(*made.split(SEP)) if made else None))
            if relations:
                yield relations

    @guarded
    async def _last_ids(self, owner_key: str) -> tuple[int, int]:
        entity, relation = await self.client.hmget(owner_key, ["next_entity", "next_relation"])
        return int(entity or 0), int(relation or 0)

    @guarded
    async def _rows(self, records_key: str, origins_key: str, kind: str, ids: range
                    ) -> list[tuple[bytes, bytes | None]]:
        """The records with these ids that exist, with their origins (one MULTI: one state)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hmget(records_key, list(ids))
            pipe.hmget(origins_key, [f"{kind}{i}" for i in ids])
            records, origins = await pipe.execute()
        return [(record, made) for record, made in zip(records, origins, strict=True) if record is not None]

    async def search_nodes(self, owner: str, query: str, *, after: tuple[int, ...] | None = None,
                           limit: int | None = None) -> GraphJSON:
        parsed = Query.parse(query)
        keys = self.graph_keys(owner)
        args: list[bytes | str] = [parsed.phrase.encode(), " ".join(map(str, after)) if after is not None else "",
                                   "" if limit is None else str(limit)]
        words = [word.encode() for word in parsed.words]
        copy = None if self._folds.oversized(owner) else self._folds.held(owner)
        attempts = 0
        while True:
            if copy is None and attempts < _COPY_ATTEMPTS and not self._folds.oversized(owner):
                copy = await self._folds.sync(owner, (keys.owner, keys.chunks, keys.folds, keys.words))
            attempts += 1
            source: list[bytes | str] = (
                [b"scan", b"", str(len(words)), *words] if copy is None or attempts > _COPY_ATTEMPTS
                else [b"copy", copy.version, str(len(words)), *words, *await folds_copy.facts(copy, parsed)])
            reply = await self._graph_scripts.search(keys=keys.all, args=[*args, *source])
            if reply[0] == b"unindexed":
                await self._index_words(owner)
            elif reply[0] == b"stale":
                copy = None
            else:
                break
        next_key = tuple(int(number) for number in reply[2].split()) if reply[2] else None
        if after is None and limit is None:
            return await _subgraph(reply[:2])
        return await self._search_page(owner, parsed, reply[0], reply[1], next_key)

    async def _search_page(self, owner: str, query: Query, entity_records: bytes, relation_records: bytes,
                           last: Key | None) -> GraphJSON:
        """A page of search hits with the relations it holds (server/memory/paging.py): those whose
        endpoints among the hits all rank up to the page's last entity. An endpoint off the page is
        ranked here with `reference_key`, the definition the script's ranking is tested against."""
        entities = [texts_of(record) for record in entity_records.split(END)] if entity_records else []
        relations = [texts_of(record) for record in relation_records.split(END)] if relation_records else []
        on_page = {texts[0] for texts in entities}
        others = sorted({name for texts in relations for name in texts[:2]} - on_page)
        keys: dict[str, Key] = {}
        if others and last is not None:
            graph_keys = self.graph_keys(owner)
            ids = await self.client.hmget(graph_keys.names, others)
            found = [(name, int(entity_id)) for name, entity_id in zip(others, ids, strict=True) if entity_id]
            records = await self.client.hmget(graph_keys.entities, [entity_id for _, entity_id in found]
                                              ) if found else []
            for (name, entity_id), record in zip(found, records, strict=True):
                if record is not None:
                    texts = texts_of(record if isinstance(record, bytes) else record.encode())
                    key = reference_key(query, texts[0], texts[1], texts[2:], entity_id)
                    if key is not None:
                        keys[name] = key
        kept = page_relations(((texts[0], texts[1], texts) for texts in relations),
                              lambda name: None if name in on_page else keys.get(name), last)
        graph = GraphJSON.of([entity_pieces(entities)] if entities else [], [relation_pieces(kept)] if kept else [])
        return dataclasses.replace(graph, next_key=last)

    async def _index_words(self, owner: str) -> None:
        """Build the word index of an owner whose graph is from before it: read the records in
        batches (HSCAN), word them here (Lua cannot fold Unicode), and let a script store each
        batch's words for the entities whose records did not change meanwhile; again until every
        entity has its words. Batches keep each script short however large the graph."""
        keys = self.graph_keys(owner)
        while True:
            batch: list[bytes | str | int] = []
            async for entity_id, record in self.client.hscan_iter(keys.entities, count=_INDEX_BATCH):
                raw = record if isinstance(record, bytes) else record.encode()
                batch += [entity_id, raw, _worded(texts_of(raw))]
                if len(batch) >= 3 * _INDEX_BATCH:
                    await self._graph_scripts.index_words(keys=keys.all, args=[new_stamp(), *batch])
                    batch = []
            if await self._graph_scripts.index_words(keys=keys.all, args=[new_stamp(), *batch]):
                return

    async def open_nodes(self, owner: str, names: Sequence[str], *, after: Key | None = None,
                         limit: int | None = None) -> GraphJSON:
        unique = [name.encode() for name in _unique(names)]
        if after is not None or limit is not None:
            reply = await self._graph_scripts.open_page(keys=self.graph_keys(owner).all,
                                                        args=[_after(after), limit or 0, *unique])
            return _page(reply)
        reply = await self._graph_scripts.open_nodes(keys=self.graph_keys(owner).all, args=unique)
        return await _subgraph(reply)


def _origin_args(origin: Origin | None) -> tuple[bytes, bytes]:
    """An origin as the scripts store it (graph:origins): empty texts when unknown."""
    return (b"", b"") if origin is None else (repr(origin.at).encode(), origin.by.encode())


@functools.lru_cache(maxsize=1024)
def parse_origin(at: bytes, by: bytes) -> Origin | None:
    """An origin as stored (see `_origin_args`). Cached: the items one write added share it."""
    return None if not at else Origin(float(at), by.decode())


async def _gathered(pubsub: PubSub, channels: dict[str, str]) -> frozenset[str]:
    """The graphs whose channel got a message: the first waited for (up to
    CHANGES_WAIT_SECONDS), then those arriving within CHANGES_GATHER_SECONDS after it."""
    loop = asyncio.get_running_loop()
    owners: set[str] = set()
    deadline = loop.time() + CHANGES_WAIT_SECONDS
    while (wait := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
        if message is None:
            break
        if message.get("type") == "message":
            channel = message["channel"]
            owner = channels.get(channel.decode() if isinstance(channel, bytes) else str(channel))
            if owner is not None and not owners:
                deadline = loop.time() + CHANGES_GATHER_SECONDS
            if owner is not None:
                owners.add(owner)
    return frozenset(owners)


def _limits(quota: Quota | None) -> tuple[int, int, int]:
    return _NO_LIMIT if quota is None else (quota.entities, quota.observations, quota.bytes)


def _unique(items: Iterable[str]) -> list[str]:
    """First occurrence of each item, in order."""
    return list(dict.fromkeys(items))


def _record(texts: Iterable[str]) -> bytes:
    """Texts as one record (see the module). Encoding refuses lone surrogates before the store."""
    return SEP.join(text.encode() for text in texts)


def _folded(texts: Iterable[str]) -> bytes:
    return SEP.join(text.lower().encode() for text in texts)


def _worded(texts: Iterable[str]) -> bytes:
    """The word record of an entity's texts (see the module)."""
    return SEP.join(word_text(text).encode() for text in texts)


async def _subgraph(reply: list[bytes]) -> GraphJSON:
    """The JSON of a search or open_nodes script's reply: entity records, then relation records,
    each kind in id order, joined by END (see `_SUBGRAPH_LUA`)."""
    entities, relations = reply
    return GraphJSON.of(await _pieces(entities, entity_pieces), await _pieces(relations, relation_pieces))


async def _pieces(joined: bytes, build: Callable[[list[list[str]]], Piece]) -> list[Piece]:
    """The pieces of joined records, `SLICE` records each, the event loop free between two: a
    search that hits 10,000 entities is ~40 ms of Python (decoding, the JSON, its escaped text),
    which would otherwise hold every other request of the process that long."""
    if not joined:
        return []
    records = joined.split(END)
    pieces = []
    for start in range(0, len(records), SLICE):
        if start:
            await asyncio.sleep(0)
        pieces.append(build([texts_of(record) for record in records[start:start + SLICE]]))
    return pieces


def _after(after: Key | None) -> int:
    """A page's start as the scripts take it: the entity id it follows (0: the first page)."""
    return 0 if after is None else after[0]


def _page(reply: list[Any]) -> GraphJSON:
    """A page script's reply as JSON, the relations it holds picked as paging.page_relations says.
    A page is at most `MAX_PAGE_SIZE` entities: built at once, unlike `_subgraph`'s answers."""
    more, entity_items, relation_items, ends = reply
    entities = [texts_of(record) for record in entity_items[1::2]]
    ids = [int(entity_id) for entity_id in entity_items[0::2]]
    keys: dict[str, Key] = {texts[0]: (entity_id,) for texts, entity_id in zip(entities, ids, strict=True)}
    keys.update((name.decode(), (int(entity_id),)) for name, entity_id in zip(ends[0::2], ends[1::2], strict=True))
    last = (ids[-1],) if more else None
    relations = page_relations(((texts[0], texts[1], texts) for texts in map(texts_of, relation_items[1::2])),
                               keys.get, last)
    graph = GraphJSON.of([entity_pieces(entities)], [relation_pieces(relations)])
    return dataclasses.replace(graph, next_key=last)


__all__ = ["RedisGraph"]

"""Named memories from the server's side: finding a user's memory by name, and the administration
commands behind `memory-mcp memory list|create|rename|delete` (`server.cli`).

What a memory is and what is bound to it: `auth.memories` and docs/design.md ("Named memories").
The memory's id is the `GraphStore` owner key of its graph (`server.mcp_server.graph_owner`).

Deleting a memory, in steps that each leave a state the next run finishes (run again after an
interruption, it resumes, finding the memory by name until its last step):

1. its graph is closed and deleted (`GraphStore.delete_graph`): from then on every write to it is
   refused, whoever still holds a token for it;
2. its row goes, with every code, token, personal access token and remembered approval bound to it
   (one step: `MemoryDirectory.delete_memory`);
3. a revocation naming the memory is recorded, so that running servers end the MCP sessions on it
   (`server.app`), and the session records of it are deleted.
"""

from __future__ import annotations

import time

from auth import memories
from auth.memories import Memory
from auth.models import Revocation, User
from server.principals import parse_owner
from server.storage import Storage


class MemoryCommandError(Exception):
    """A memory command cannot be carried out; the message says why and what to do."""


async def _user(storage: Storage, username: str) -> User:
    user = await storage.get_user_by_name(username)
    if user is None:
        raise MemoryCommandError(f"no user {username!r}; `memory-mcp users list` shows the accounts")
    return user


async def resolve_memory(storage: Storage, username: str, name: str | None = None) -> tuple[User, Memory]:
    """The user named `username` and their memory named `name` (the default memory for None);
    `MemoryCommandError` naming what is missing. What `memory-mcp stdio --user NAME --memory M`
    and `tokens create --memory M` run on: the memory's id is `Memory.id`."""
    user = await _user(storage, username)
    wanted = memories.DEFAULT_NAME if name is None else name
    found = await memories.find_by_name(storage, user, wanted)
    if found is None:
        raise MemoryCommandError(f"user {username!r} has no memory named {wanted!r}; `memory-mcp memory list --user "
                                 f"{username}` shows theirs, `memory-mcp memory create --user {username} NAME` adds "
                                 "one")
    return user, found


async def list_memories(storage: Storage, username: str) -> list[tuple[Memory, int]]:
    """The user's memories, the default one first, each with the entities its graph holds."""
    user = await _user(storage, username)
    return [(m, (await storage.usage(m.id)).entities) for m in await memories.memories_of(storage, user)]


async def create_memory(storage: Storage, username: str, name: str, limit: int) -> Memory:
    user = await _user(storage, username)
    try:
        return await memories.create(storage, user, name, limit=limit, now=time.time())
    except memories.MemoriesError as exc:
        raise MemoryCommandError(str(exc)) from None


async def rename_memory(storage: Storage, username: str, name: str, new_name: str) -> Memory:
    user, memory = await resolve_memory(storage, username, name)
    if memory.is_default:
        raise MemoryCommandError(f"{memories.DEFAULT_NAME!r} is the default memory, which every user has: it cannot "
                                 "be renamed (create another with `memory-mcp memory create`)")
    try:
        memories.check_name(new_name)
        if not await storage.rename_memory(user.id, memory.id, new_name):
            raise MemoryCommandError(f"the memory {name!r} of {username!r} was deleted meanwhile")
    except memories.MemoriesError as exc:
        raise MemoryCommandError(str(exc)) from None
    return Memory(memory.id, memory.user_id, new_name, memory.created_at)


async def delete_memory(storage: Storage, username: str, name: str) -> tuple[Memory, int]:
    """Delete the memory, its data and everything bound to it (the module's steps); the memory
    and how many entities were deleted."""
    user, memory = await resolve_memory(storage, username, name)
    if memory.is_default:
        raise MemoryCommandError(f"{memories.DEFAULT_NAME!r} is the default memory, which every user has: it cannot "
                                 f"be deleted (`memory-mcp users remove {username}` removes the whole account)")
    entities = await storage.delete_graph(memory.id)
    await storage.delete_memory(user.id, memory.id)
    await storage.record_revocation(Revocation(user.id, None, None, memory.id), time.time())
    for record in await storage.list_sessions(user.id):
        if parse_owner(record.owner).memory == memory.id:
            await storage.delete_session(record.session_id)
    return memory, entities

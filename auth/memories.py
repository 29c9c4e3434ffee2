"""Named memories: the partitions of one user's data that a grant is bound to.

To the authorization server a memory is an opaque partition id with a display name, chosen by the
user on the consent page and bound to everything the approval makes: the authorization code, the
access and refresh tokens (every rotation keeps it), the remembered approval, and so the
`Principal` whose MCP sessions the resource server keeps apart. What a memory holds is not auth's
business (the MCP server keeps one knowledge graph per memory id); nor does the client ever name
one: it gets a grant for whichever memory the user picked.

* Every user has the memory named `default`, never stored: its id is the user id, so that the
  data of accounts made before memories existed is their default memory with nothing migrated.
  It cannot be renamed or deleted.
* Other memories are rows of the `MemoryDirectory`: a random id (`new_memory_id`, prefixed
  `mem_` so that it can never equal a user id, which is hexadecimal) that is never reused, the
  owning user, a name unique per user, renamable (what is bound to a grant is the id: renaming
  changes no grant), and when it was made.
* A user has at most `AuthSettings.max_memories_per_user` memories, the default one included
  (quotas are per memory, so the cap bounds what one account can store).

Names are labels a person types: 1 to `NAME_MAX` printable characters, no leading or trailing
space; `default` is taken by the default memory.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from auth.models import User

DEFAULT_NAME = "default"
NAME_MAX = 64
ID_PREFIX = "mem_"


class MemoriesError(Exception):
    """A memory cannot be made, named or found as asked; the message says what to do."""


class InvalidMemoryName(MemoriesError):
    """The name breaks the naming rule (`NAME_RULE`)."""


class MemoryExistsError(MemoriesError):
    """The user already has a memory of that name."""


class MemoryLimitError(MemoriesError):
    """The user has `max_memories_per_user` memories already."""


def limit_reached(count: int, limit: int) -> MemoryLimitError:
    """The error for a user who has `count` memories (the default one included), at the cap."""
    return MemoryLimitError(f"the user has {count} memories, the most max_memories_per_user ({limit}) allows: "
                            "use one of them, or have an administrator delete one (`memory-mcp memory delete`) "
                            "or raise the setting")


NAME_RULE = (f"a memory name is 1 to {NAME_MAX} printable characters without leading or trailing spaces, "
             f"and {DEFAULT_NAME!r} is the default memory's")


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    user_id: str
    name: str
    created_at: float

    @property
    def is_default(self) -> bool:
        return self.id == self.user_id


def default_memory(user: User) -> Memory:
    return Memory(id=user.id, user_id=user.id, name=DEFAULT_NAME, created_at=user.created_at)


def new_memory_id() -> str:
    return ID_PREFIX + secrets.token_urlsafe(16)


def check_name(name: str) -> str:
    """The name, if it is one a new or renamed memory may take; `InvalidMemoryName` otherwise."""
    if not name:
        raise InvalidMemoryName(f"the memory name is empty: {NAME_RULE}")
    if len(name) > NAME_MAX:
        raise InvalidMemoryName(f"the memory name is {len(name)} characters long: {NAME_RULE}")
    if name != name.strip():
        raise InvalidMemoryName(f"the memory name {name!r} starts or ends with a space: {NAME_RULE}")
    if any(not c.isprintable() for c in name):
        raise InvalidMemoryName(f"the memory name {name!r} contains a control or other unprintable character: "
                                f"{NAME_RULE}")
    if name == DEFAULT_NAME:
        raise MemoryExistsError(f"{DEFAULT_NAME!r} is the name of the default memory, which every user has")
    return name


class MemoryDirectory(Protocol):
    """The user's memories other than the default one. `UserStore.remove_user` deletes the user's
    too, in the same step (their data is deleted before: `memory-mcp users remove`)."""

    async def list_memories(self, user_id: str) -> list[Memory]:
        """The user's stored memories, oldest first (the default one is not stored)."""
        ...

    async def get_memory(self, user_id: str, memory_id: str) -> Memory | None:
        """The user's memory with that id; None if there is none (or it is another user's)."""
        ...

    async def create_memory(self, memory: Memory, limit: int) -> None:
        """Store it, in one step with checking that its user is ACTIVE, has no memory of that name
        (`MemoryExistsError`) and fewer than `limit` memories counting the default one
        (`MemoryLimitError`); a user who is not ACTIVE (being removed) raises `MemoriesError`."""
        ...

    async def rename_memory(self, user_id: str, memory_id: str, name: str) -> bool:
        """False if the user has no such memory; `MemoryExistsError` if the name is taken."""
        ...

    async def delete_memory(self, user_id: str, memory_id: str) -> bool:
        """Delete the memory's row and, in the same step, the codes, tokens, personal access tokens
        and remembered approvals bound to it. False if there was no such memory (nothing bound to
        it is left either way)."""
        ...


async def memories_of(store: MemoryDirectory, user: User) -> list[Memory]:
    """Every memory of the user: the default one first, then the others oldest first."""
    return [default_memory(user), *await store.list_memories(user.id)]


async def find_by_name(store: MemoryDirectory, user: User, name: str) -> Memory | None:
    for memory in await memories_of(store, user):
        if memory.name == name:
            return memory
    return None


async def find_by_id(store: MemoryDirectory, user: User, memory_id: str | None) -> Memory | None:
    """The user's memory with that id; None or the user id: the default memory."""
    if memory_id is None or memory_id == user.id:
        return default_memory(user)
    return await store.get_memory(user.id, memory_id)


async def create(store: MemoryDirectory, user: User, name: str, *, limit: int, now: float) -> Memory:
    """A new memory for the user; `MemoriesError` (with what to do) when it cannot be made."""
    memory = Memory(id=new_memory_id(), user_id=user.id, name=check_name(name), created_at=now)
    await store.create_memory(memory, limit)
    return memory


def stored_id(user_id: str, memory_id: str) -> str | None:
    """How a record stores the memory it is bound to: None for the default memory, so that the
    records of the default memory look exactly as they did before memories existed."""
    return None if memory_id == user_id else memory_id

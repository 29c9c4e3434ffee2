"""`memory-mcp stdio`: the memory tools over standard input and output, for a local MCP client.

A local client (Claude Desktop, Claude Code, an IDE) configured today with `npx -y
@modelcontextprotocol/server-memory` starts its memory server as a child process and speaks MCP
over the child's stdin/stdout. This module serves the same `MemoryTools(...).server()` the HTTP
transports serve, over the SDK's stdio transport, on the same store (the SQLite file in
data_dir, or Redis with redis_url), so that what a local client writes is the memory the remote
clients of `memory-mcp serve` read, and the other way round.

Who calls: there is no token on a pipe. Whoever can start this process can read the store's files
(or reach its Redis), so authentication is the operating system's: `--user NAME` names the
account, which must exist (`memory-mcp users add`), and the tools run as a fixed principal
(issuer = this server's issuer, subject = the user's id, client id "stdio") with both memory
scopes. The principal goes through `caller_from_grant` like a bearer token's grant, so the tools
pick their graph through `graph_owner(caller)` exactly as they do over HTTP, and provenance records
"stdio" as the client.

The knowledge-graph resource is subscribable here too (the process is one session): after
`resources/subscribe`, every change of the memory, made by this client or any other (the HTTP
server, another stdio process, an import), is sent as `notifications/resources/updated`, from the
store's change feed as the HTTP server does (server/memory/changes.py, server/resources.py).

Standard output is the protocol: nothing else may write there. The SDK points fd 1 at stderr while
it serves, so a stray print cannot corrupt the stream; our messages and logs go to stderr, and
never hold a secret (nor memory content: only names of files, users and counts).

Running beside `memory-mcp serve` on the same data directory is safe: SQLite in WAL mode lets a
second process read and write (each write waits up to store_busy_timeout for the lock), and this
process also holds the data directory's shared serve lock, so `memory-mcp restore` refuses to
replace the data under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.stdio import stdio_server

from auth.accounts import USERNAME_RULE, valid_username
from auth.models import AccessGrant, AccountState, Principal, User
from auth.settings import READ_SCOPE, WRITE_SCOPE
from server import memories
from server.config import Settings
from server.import_offer import Importer, OfferMarks, offer_import
from server.mcp_server import GRAPH_URI, MemoryTools, caller_from_grant
from server.resources import UPDATED
from server.storage import Storage
from transports.caller import Caller, current_caller, current_session
from transports.sdk import SessionMessage
from transports.stdio import Draining

CLIENT_ID = "stdio"
"""The OAuth client id of the stdio principal: what provenance records as `created_by`."""
SESSION_ID = "stdio"
"""The one session of the process (subscriptions are kept per session)."""
SCOPES = frozenset({READ_SCOPE, WRITE_SCOPE})
DEFAULT_MEMORY = "default"


class StdioError(Exception):
    """The stdio server cannot start; the message says why and what to do (one line, no secret)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Whose memory the process serves: the account, and the memory's name and graph owner key."""

    user: User
    memory_name: str
    memory_id: str


async def find_user(storage: Storage, username: str, store_flags: str) -> User:
    """The account named `username`, or `StdioError` saying how to create it. `store_flags`: the
    flags that point `memory-mcp users add` at this same store, for the hint."""
    if not valid_username(username):
        raise StdioError(f"--user {username!r} is not a valid user name: {USERNAME_RULE}")
    user = await storage.get_user_by_name(username)
    if user is None or user.state is not AccountState.ACTIVE:
        raise StdioError(f"no user named {username!r} in this store; create it first: memory-mcp users add "
                         f"{username}{store_flags}, or name another account with --user (`memory-mcp users list`)")
    return user


async def resolve_memory(storage: Storage, user: User, name: str) -> str:
    """The graph owner key (the memory id) of the user's memory called `name`: the one place
    where `--memory` is resolved, by `server.memories.resolve_memory` (the default memory's id is
    the user's id, so a user's existing data is their default memory)."""
    try:
        _, memory = await memories.resolve_memory(storage, user.username, name)
    except memories.MemoryCommandError as exc:
        raise StdioError(f"--memory {name!r}: {exc}") from None
    return memory.id


def stdio_caller(issuer: str, target: Target) -> Caller:
    """The fixed caller of every request on this process's stdin: the user, as client "stdio",
    with both memory scopes, on the target memory. Built as a bearer token's grant is, so that
    `graph_owner` (the principal's memory) and provenance (its client id) see what they see over HTTP."""
    principal = Principal(issuer=issuer, subject=target.user.id, client_id=CLIENT_ID, memory=target.memory_id)
    # Never expires: the grant lives as long as the process, which the user started themselves.
    grant = AccessGrant(principal=principal, scopes=SCOPES, resource=f"{issuer}/mcp", expires_at=math.inf)
    return caller_from_grant(grant)


FOLLOW_WAIT_SECONDS = 2.0
"""The longest `resources/subscribe` waits for the change feed to follow the graph."""


class Subscription:
    """The process's subscription to the resource (`MemoryTools.subscriptions`): one session,
    one resource, so a flag. `resources/subscribe` is answered once the store's change feed
    follows the graph, so that a change made right after the answer is notified: the feed asks
    `watched` before each look at the store, so its second call since the subscription means the
    first look (SQLite: reading the counter it compares with; Redis: subscribing the channel) is
    done. The first call nudges the feed, so that SQLite looks again at once (Redis looks again
    within CHANGES_WAIT_SECONDS)."""

    def __init__(self, graph: str, nudge: asyncio.Event) -> None:
        self.on = False
        self._graph = graph
        self._nudge = nudge
        self._looks = 0
        self._followed = asyncio.Event()

    def watched(self) -> set[str]:
        if not self.on:
            return set()
        self._looks += 1
        if self._looks == 1:
            self._nudge.set()
        else:
            self._followed.set()
        return {self._graph}

    async def subscribe(self, session_id: str, uri: str, subscribed: bool) -> bool:
        if subscribed and not self.on:
            self.on, self._looks, self._followed = True, 0, asyncio.Event()
            self._nudge.set()
            with contextlib.suppress(TimeoutError):
                # Not followed in time (the store slow or away): answered all the same, as the
                # HTTP server answers; the feed follows once it can.
                await asyncio.wait_for(self._followed.wait(), FOLLOW_WAIT_SECONDS)
        elif not subscribed:
            self.on = False
        return True


async def follow(storage: Storage, subscription: Subscription, nudge: asyncio.Event, write: Any) -> None:
    """Send `notifications/resources/updated` on `write` for every change of the graph while the
    client is subscribed: the store's change feed, watching the graph only then."""
    async with contextlib.aclosing(storage.graph_changes(subscription.watched, nudge)) as changes:
        async for changed in changes:
            if subscription.on and changed:
                await write.send(SessionMessage(types.JSONRPCNotification(
                    jsonrpc="2.0", method=UPDATED, params={"uri": GRAPH_URI})))


async def serve(storage: Storage, settings: Settings, target: Target) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin (or SIGTERM/SIGINT)."""
    tools = MemoryTools(storage, settings.memory_quota, settings.memory_max_result_bytes)
    subscription = Subscription(target.memory_id, tools.nudge)
    tools.subscriptions = subscription
    server = tools.server(subscribable=True)
    # Set before the transport starts its reader task: that task copies this context, and the SDK's
    # context streams hand each message's context to the handler that serves it
    # (transports/caller.py), so every tool call sees this caller and this session.
    current_caller.set(stdio_caller(settings.issuer, target))
    current_session.set(SESSION_ID)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        if task is not None:
            task.cancel()

    # A client ends its server with SIGTERM (or SIGINT): stop serving and close the store, rather
    # than die with the store's connections open.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        async with stdio_server() as (read_stream, write_stream):
            # At end of input, the requests still in flight get shutdown_timeout to be answered
            # (transports/stdio.py), as over HTTP.
            streams = Draining(read_stream, write_stream, settings.shutdown_timeout)
            follower = asyncio.create_task(follow(storage, subscription, tools.nudge, write_stream))
            try:
                await server.run(streams.read, streams.write, server.create_initialization_options())
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def say(line: str) -> None:
    """One message for the person who configured the client (clients keep a server's stderr in
    their MCP logs)."""
    print(f"memory-mcp: {line}", file=sys.stderr, flush=True)


def importer_for(storage: Storage, settings: Settings, target: Target) -> Importer:
    """The import of the official server's file into the target memory: `memory-mcp memory
    import`'s two passes (`server.memory.jsonl`: a file that cannot be read changes nothing; what is
    already there is skipped), within the memory's quota; records without provenance are marked
    as imported now."""

    async def run(path: Path) -> str:
        from server.memory import jsonl

        try:
            parsed = await asyncio.to_thread(jsonl.parse_file, path, time.time())
            imported = await jsonl.import_parsed(storage, target.memory_id, parsed, settings.memory_quota)
        except (jsonl.UnreadableFile, jsonl.ImportRefused) as exc:
            raise ValueError(str(exc)) from None
        summary = jsonl.ImportReport(parsed, imported).lines()[0]
        return summary + (f", {len(parsed.skipped)} record(s) skipped" if parsed.skipped else "")

    return run


async def run(storage: Storage, settings: Settings, username: str, memory: str, memory_file: str | None) -> None:
    """Resolve the account and memory (errors before anything is served), make the import offer
    for `memory_file` (the official server's MEMORY_FILE_PATH), then serve."""
    flags = store_flags(settings)
    user = await find_user(storage, username, flags)
    target = Target(user, memory, await resolve_memory(storage, user, memory))
    if memory_file:
        memory_flag = "" if memory == DEFAULT_MEMORY else f" --memory {shlex.quote(memory)}"
        await offer_import(memory_file, storage, target.memory_id, importer_for(storage, settings, target),
                           OfferMarks(settings.data_dir), who=f"memory {memory!r} of user {username!r}",
                           command=lambda path: import_command(username, memory_flag, path, flags), say=say)
    where = settings.data_dir if settings.redis_url is None else "Redis (redis_url)"
    say(f"serving memory {memory!r} of user {username!r} over stdio (data in {where})")
    await serve(storage, settings, target)


def import_command(username: str, memory_flag: str, path: Path, flags: str) -> str:
    """The command that imports the official server's file into the target memory."""
    return f"memory-mcp memory import --user {username}{memory_flag} {shlex.quote(str(path))}{flags}"


def store_flags(settings: Settings) -> str:
    """The flags that point another command at the store this process uses (never a password:
    Redis is named by its setting, not its URL)."""
    if settings.redis_url is not None:
        return " (with the same redis_url: --redis-url or MEMORY_MCP_REDIS_URL)"
    return f" --data-dir {shlex.quote(str(settings.data_dir))}"

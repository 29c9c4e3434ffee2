"""The authenticated caller, as the transports see it.

The transports know that every request has been authenticated and that a session belongs to one
`owner`; they do not know what an owner is made of (server/ builds it from the bearer token) nor
what the tools do with it. Tools read the caller of the request they serve from `current_caller`:
the SDK's context streams carry the sending task's context to the handler, so after a token
refresh a tool sees the new grant, not the one that opened the session (docs/sdk-pitfalls.md#P7).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Caller:
    owner: Hashable
    """What a session is bound to: requests for a session must come from the same owner."""
    user: str
    """The user the owner acts for (per-user session caps, teardown when the user's access ends)."""
    scopes: frozenset[str]
    detail: Any = None
    """Whatever server/ wants its tools to see (the verified grant)."""


current_caller: ContextVar[Caller] = ContextVar("memory_mcp_caller")

current_session: ContextVar[str | None] = ContextVar("memory_mcp_session", default=None)
"""The id of the MCP session the request being served belongs to (None: no session, the
2026-07-28 era), set beside `current_caller`: a handler that keeps something per session
(resource subscriptions) reads it here, as the SDK's connection of a legacy SSE session has no id."""

class Refusal(Exception):
    """Authentication failed; `response` (a 401 with its WWW-Authenticate challenge) says why."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


Authenticate = Callable[[web.Request, str], Awaitable[Caller]]
"""Authenticates a request for a resource path ("/mcp" or "/sse"); raises `Refusal`."""

GuardMessage = Callable[[Caller, str, Mapping[str, Any]], web.StreamResponse | None]
"""Looks at one JSON-RPC message before it reaches the SDK (for example a tools/call that needs a
scope the token lacks) and returns a response to send instead, or None to let it through."""

"""`notifications/resources/updated` for the sessions subscribed to `memory://knowledge-graph`.

One follower task per process (`ResourceFeed.run`). Which sessions it can notify: those whose
stream for server-initiated messages this process holds (`SessionRegistry.listening`: a
Streamable HTTP session's open GET stream, a legacy SSE session's stream). A session's requests
may reach any process (workers, instances), so its `resources/subscribe` may have been served
elsewhere: the subscription is kept in the session's record, and read from there when the
session's graph changes. The graphs followed are those of the listening sessions whose caller may
read them (`graph_owner(caller)`, the read scope); the store's change feed reports which of them
changed (server/memory/changes.py: SQLite polls a counter per graph, at once after a write made
here; Redis publishes from the write's script).

A notification is sent on every change, whoever made it (the session itself included, as the
spec says), but changes are coalesced: the writes a look at the store finds together (SQLite:
since the last poll, at most CHANGES_POLL_SECONDS; Redis: within CHANGES_GATHER_SECONDS) are one
notification. A client reads the resource again on a notification, so two quick writes need one.
What a subscriber costs is bounded: there is one resource, so a session has at most one
subscription, and it ends with the session's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from auth.settings import READ_SCOPE
from server.mcp_server import GRAPH_URI, graph_owner
from server.memory.changes import GraphChanges
from transports.registry import Session, SessionRegistry
from transports.store import StoreUnavailable

log = logging.getLogger(__name__)

UPDATED = "notifications/resources/updated"
NOTIFY_TIMEOUT_SECONDS = 5.0
"""How long one notification may wait for its stream (a client that reads nothing, a full
buffer) before it is dropped: the client reads the resource again on its next notification."""


class ResourceFeed:
    def __init__(self, changes: GraphChanges, registry: SessionRegistry, nudge: asyncio.Event) -> None:
        self._changes = changes
        self._registry = registry
        self._nudge = nudge

    @staticmethod
    def graph_of(session: Session) -> str | None:
        """The graph a notification for the session is about, if its caller may read it."""
        caller = session.caller
        if caller is None or READ_SCOPE not in caller.scopes:
            return None
        return graph_owner(caller)

    def watched(self) -> set[str]:
        return {graph for session in self._registry.listening() if (graph := self.graph_of(session)) is not None}

    async def run(self) -> None:
        """Follow the changes until cancelled; a store that cannot answer is retried (the change
        feed logs it once)."""
        while True:
            try:
                async with contextlib.aclosing(self._changes.graph_changes(self.watched, self._nudge)) as changes:
                    async for changed in changes:
                        await self.changed(changed)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following graph changes failed; starting again")
                await asyncio.sleep(1.0)

    async def changed(self, graphs: frozenset[str]) -> None:
        """Notify the subscribed sessions listening here whose graph is among `graphs`, all at
        once: one slow stream must not hold up the others."""
        sessions = [session for session in self._registry.listening() if self.graph_of(session) in graphs]
        await asyncio.gather(*(self._notify(session) for session in sessions))

    async def _notify(self, session: Session) -> None:
        try:
            subscribed = GRAPH_URI in await self._registry.subscriptions(session.session_id)
        except StoreUnavailable as exc:
            log.warning("MCP session %s…: a change of its graph not notified: %s", session.session_id[:8], exc)
            return
        if not subscribed:
            return
        try:
            async with asyncio.timeout(NOTIFY_TIMEOUT_SECONDS):
                await self._registry.notify(session, UPDATED, {"uri": GRAPH_URI})
        except TimeoutError:
            log.warning("MCP session %s…: a change of its graph not notified: its stream takes no more",
                        session.session_id[:8])
        except Exception:
            log.exception("MCP session %s…: notifying a change of its graph failed", session.session_id[:8])

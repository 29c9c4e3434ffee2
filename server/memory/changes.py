"""The change feed of the knowledge graphs: which graphs changed, by any process on the store.

The `memory://knowledge-graph` resource is subscribable (server/resources.py): every session
subscribed to it is told `notifications/resources/updated` whenever its graph changes, whoever
changed it (the same session, another client, another worker or instance, `memory-mcp memory
import`). So the signal comes from the store, where every write goes, and not from the tool
layer of one process. Each backend marks a change in the same step as the write itself:

* SQLite: a per-graph counter (`memory_owners.changes`) bumped in the write's own transaction;
  followed by polling the counters of the watched graphs (one indexed read for all of them),
  every `CHANGES_POLL_SECONDS`, or at once when this process wrote (`nudge`).
* Redis: the write's Lua script publishes the graph on a per-graph channel; one pub/sub connection
  per process subscribes to the channels of the watched graphs.

Both coalesce: what changed several times between two looks is reported once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Collection
from typing import Final, Protocol

CHANGES_POLL_SECONDS: Final = 0.5
"""How often SQLite's counters are read while a graph is watched: the longest a change made by
another process takes to be noticed (a change made here is noticed at once, by `nudge`). One
read of a few index entries per process per interval, and none while nothing is watched."""

CHANGES_GATHER_SECONDS: Final = 0.05
"""Redis: once a change arrives, the others arriving within this long are reported with it, so
that a burst of writes is one notification per subscriber, not one per write."""


class GraphChanges(Protocol):
    def graph_changes(self, watched: Callable[[], Collection[str]],
                      nudge: asyncio.Event) -> AsyncGenerator[frozenset[str], None]:
        """The graphs (owner keys) among `watched()` that changed, a set at a time, for as long as
        the caller iterates. `watched` is asked again before every look, so the set may change at
        any time; a graph counts as changed only for changes made after it became watched.
        `nudge`, set by this process after a write of its own, makes the next look happen at once
        (the iterator clears it). A store that cannot answer for a while is retried inside, with
        one warning when it stops and one when it answers again: the iterator does not end.
        Changes made while the store could not be followed are not reported."""
        ...

"""This process's copy of rendered `read_graph` chunks, shared by both backends' views.

Each backend's view (`server.storage.sqlite.graph_view`, `server.storage.redis.graph_view`) keeps,
per owner, the chunks it last read with their generation, so that a read fetches only the chunks
whose generation changed. What is kept, and dropped, is the same on both: within `budget` bytes,
the least recently read owner's chunks go first, and an owner larger than the budget is not kept.
Changed only on the event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence, Sized
from typing import Generic, TypeVar

K = TypeVar("K")
G = TypeVar("G")
V = TypeVar("V", bound=Sequence[Sized])


class HeldChunks(Generic[K, G, V]):
    """Owners' chunks, each with its generation (of type G) and its content (V: byte strings, by
    the views' JSON, `server.memory.graph.Piece`), keyed by K."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._held: OrderedDict[str, tuple[dict[K, tuple[G, V]], int]] = OrderedDict()
        self._size = 0

    def forget(self, owner: str) -> None:
        self._keep(owner, {})

    @property
    def held_bytes(self) -> int:
        return self._size

    def held_owners(self) -> list[str]:
        """Least recently read first."""
        return list(self._held)

    def _known(self, owner: str) -> tuple[dict[K, tuple[G, V]], list[K | G]]:
        """The chunks held for an owner, and the pairs (chunk, generation) of those that have a
        generation, as a read is told what this process holds."""
        held = self._held[owner][0] if owner in self._held else {}
        return held, [part for chunk, (generation, _) in held.items() if generation for part in (chunk, generation)]

    def _keep(self, owner: str, chunks: dict[K, tuple[G, V]]) -> None:
        if owner in self._held:
            self._size -= self._held.pop(owner)[1]
        size = sum(len(part) for _, content in chunks.values() for part in content)
        if not chunks or size > self.budget:
            return
        self._held[owner] = (chunks, size)
        self._size += size
        while self._size > self.budget:
            self._size -= self._held.popitem(last=False)[1][1]

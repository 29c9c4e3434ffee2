"""The stdio transport's end of input, made to wait for the answers still owed.

The SDK's stdio loop ends at end of input (the client closed our stdin) and cancels every request
still being handled: a client that sends its last request and closes the pipe at once (a script,
`echo ... | memory-mcp stdio`) gets "Connection closed" for it, and a write may or may not have
happened. Over HTTP, requests in flight get `shutdown_timeout` to finish; `Draining` gives the
same here: it wraps the transport's two streams, counts the requests received that are not answered
yet, and lets end of input through only once none is left (or `grace` seconds have passed).

A request the client cancels (notifications/cancelled) is never answered (MCP: the receiver MUST
NOT answer it), so it stops counting when the cancellation arrives.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import anyio
import mcp_types as types

from transports.sdk import SessionMessage


def _key(request_id: Any) -> str:
    return str(request_id)


class Draining:
    """`read` and `write`: the streams to give the server in place of the transport's own."""

    def __init__(self, read: Any, write: Any, grace: float) -> None:
        self.read = _DrainingRead(self, read)
        self.write = _CountingWrite(self, write)
        self.grace = grace
        self.open: set[str] = set()
        self._changed = anyio.Event()

    def received(self, item: object) -> None:
        message = item.message if isinstance(item, SessionMessage) else None
        if isinstance(message, types.JSONRPCRequest):
            self.open.add(_key(message.id))
        elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            request_id = (message.params or {}).get("requestId")
            self._settled(_key(request_id))

    def sent(self, item: object) -> None:
        message = item.message if isinstance(item, SessionMessage) else None
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
            self._settled(_key(message.id))

    def _settled(self, key: str) -> None:
        if key in self.open:
            self.open.discard(key)
            self._changed.set()
            self._changed = anyio.Event()

    async def drained(self) -> None:
        """Wait until every request received is answered, at most `grace` seconds."""
        with anyio.move_on_after(self.grace):
            while self.open:
                await self._changed.wait()


class _DrainingRead:
    """The read stream, whose end waits for `Draining.drained`."""

    def __init__(self, draining: Draining, inner: Any) -> None:
        self._draining = draining
        self._inner = inner

    @property
    def last_context(self) -> Any:
        # The sender's context of the last message, which the SDK hands to that message's handler
        # (transports/caller.py): passed through untouched.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            item = await self._inner.receive()
        except anyio.EndOfStream:
            await self._draining.drained()
            raise
        self._draining.received(item)
        return item

    def __aiter__(self) -> _DrainingRead:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _DrainingRead:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> bool | None:
        await self.aclose()
        return None


class _CountingWrite:
    """The write stream, telling `Draining` of each answer sent."""

    def __init__(self, draining: Draining, inner: Any) -> None:
        self._draining = draining
        self._inner = inner

    async def send(self, item: Any, /) -> None:
        await self._inner.send(item)
        self._draining.sent(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _CountingWrite:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> bool | None:
        await self.aclose()
        return None

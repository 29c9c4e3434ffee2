"""One session's event store: the SDK's `EventStore` interface over the storage's `EventLog`.

The SDK hands one store to a transport and names streams by request id ("0", "1", ...), which
repeat in every session; binding the store to a session id is what keeps replays inside it.
"""

from __future__ import annotations

import itertools

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage, jsonrpc_message_adapter

from transports.store import EventLog, StoreUnavailable


class SessionEventStore(EventStore):
    def __init__(self, log: EventLog, session_id: str) -> None:
        self._log = log
        self._session_id = session_id
        self._unstored = itertools.count()

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        text = None if message is None else message.model_dump_json(by_alias=True, exclude_unset=True)
        try:
            return await self._log.append_event(self._session_id, stream_id, text)
        except StoreUnavailable:
            # The message is still sent on the live stream; only resuming after it is lost. The SDK
            # would answer the whole request 500 instead. An id no stored event can have (event
            # ids are digits), so a reconnect that names it replays nothing.
            return f"unstored-{next(self._unstored)}"

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        found = await self._log.events_after(self._session_id, last_event_id)
        if found is None:
            return None
        stream_id, events = found
        for event_id, text in events:
            if text is not None:  # priming events carry no message
                message = jsonrpc_message_adapter.validate_json(text, by_name=False)
                await send_callback(EventMessage(message, event_id))
        return stream_id

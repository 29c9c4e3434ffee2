"""One session's event store: the SDK's `EventStore` interface over the storage's `EventLog`.

The SDK hands one store to a transport and names streams by request id ("0", "1", ...), which
repeat in every session; binding the store to a session id is what keeps replays inside it.

What resumability needs, and so what is kept (Streamable HTTP, "Resumability and Redelivery", in
the 2025-11-25 revision; 2026-07-28 has no resumption at all):

* A client that lost an SSE stream sends GET with the last event id it received; the server may
  replay the messages sent after it *on that stream only*. So what is worth keeping is, per
  stream, the messages a client may not have received yet; nothing else can ever be asked for.
* A POST's stream ends with the response to its request. Once the HTTP response carrying it was
  written to the end, on a connection still up (`DeliveryWatch`), the client has the whole stream
  and has no reason to resume it, except if the connection broke while the last bytes were still
  in the kernel's buffers; such a client notices at once and comes back within the `retry`
  interval the priming event gave it (a second). So a delivered stream's events are kept for
  `DELIVERED_KEPT_SECONDS` more, then deleted (`SessionRegistry.sweep`), not kept until the
  session ends. A stream that ended without its response (the client went away, or the server
  closed it to make the client poll) keeps its events: that is the case resumption exists for.
* The standalone GET stream never ends with a response: its events are kept, so that the id a
  client last saw stays a known point to resume from.
* Everything kept is bounded (`EventLimits`, settings `event_log_bytes_per_session` and
  `event_log_bytes_per_user`), oldest first, so that a read-only token cannot grow the database:
  it could otherwise make the server store any number of large responses by dropping each
  stream. A client resuming from an evicted event gets what the SDK gives any unknown
  `Last-Event-ID`: a stream that ends at once, with nothing replayed. Its SDK client then retries
  and finally fails the request, rather than waiting for a response that will never come. A
  message larger than a limit is not stored at all, and its stream's earlier events go with it,
  so that a replay never silently skips a message.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import MutableMapping

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCError, JSONRPCMessage, JSONRPCResponse, jsonrpc_message_adapter

from transports.asgi_bridge import ASGIApp, Message, Receive, Scope, Send
from transports.store import EventLimits, EventLog, StoreUnavailable

DELIVERED_KEPT_SECONDS = 60.0
"""How long a delivered stream's events stay, for a client whose connection broke as it ended."""
# A stream's response events whose delivery has not been confirmed, remembered at most this many:
# a client that drops every stream must not grow the process either (forgetting one only means
# its events stay until evicted).
_FINALS_KEPT = 256
# The `id:` line that starts an SSE event as sse_starlette writes it: one event per body chunk,
# its id first (pings are comment-only chunks and leave the last id as it was).
_EVENT_ID = re.compile(rb"id: ([^\r\n]*)\r?\n")


class SessionEventStore(EventStore):
    def __init__(self, log: EventLog, session_id: str, user: str, limits: EventLimits) -> None:
        self._log = log
        self._session_id = session_id
        self._user = user
        self._limits = limits
        self._finals: MutableMapping[StreamId, EventId] = {}
        """Stream -> id of its response event (the last event of a POST's stream)."""

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        text = None if message is None else message.model_dump_json(by_alias=True, exclude_unset=True)
        try:
            stored = await self._log.append_event(self._session_id, self._user, stream_id, text, self._limits)
        except StoreUnavailable:
            # The message is still sent on the live stream; only resuming after it is lost. The SDK
            # would answer the whole request 500 instead.
            stored = None
        # The SDK sends an id with every event; one that was not stored (over the bounds, or the
        # store unavailable) must still be unique in the session and must never name a stored
        # event (stored ids are digits only).
        event_id = stored if stored is not None else f"unstored-{secrets.token_hex(8)}"
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            self._finals.pop(stream_id, None)
            self._finals[stream_id] = event_id
            if len(self._finals) > _FINALS_KEPT:
                del self._finals[next(iter(self._finals))]
        return event_id

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

    def completes(self, stream_id: StreamId, last_event_id: EventId) -> bool:
        """Whether `last_event_id`, the last event an HTTP response carried, is the response that
        ends the stream (a stored one: an unstored response took the stream's events with it)."""
        if self._finals.get(stream_id) != last_event_id or not last_event_id.isdigit():
            return False
        del self._finals[stream_id]
        return True


class DeliveryWatch:
    """What one HTTP response of the SDK transport handed to the bridge: the id of its last SSE
    event, and whether the body was finished. The bridge swallows writes to a closed peer, so the
    caller also checks that the connection is still up."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.ended = False

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def watched(scope: Scope, receive: Receive, send: Send) -> None:
            async def watch(message: Message) -> None:
                await send(message)
                if message["type"] == "http.response.body":
                    found = _EVENT_ID.match(message.get("body", b""), 0, 256)
                    if found:
                        self.last_event_id = found.group(1).decode("utf-8", "replace")
                    if not message.get("more_body", False):
                        self.ended = True

            await app(scope, receive, watch)

        return watched

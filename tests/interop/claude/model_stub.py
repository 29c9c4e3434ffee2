"""A loopback stand-in for the Anthropic Messages API, scripted for one Claude Code turn.

Claude Code is the MCP client under test, and it only calls an MCP tool when its model asks it
to. This stub plays that model, deterministically and offline (Claude Code reaches it through
ANTHROPIC_BASE_URL): to `POST /v1/messages` it answers first with a `tool_use` block for our
`create_entities` tool, then, once Claude Code sent that call's `tool_result` back, with a
`read_graph` call, and finally with a plain text message (a prompt that does not ask to remember
anything gets only the `read_graph` call).

Claude Code 2.1.332 defers MCP tools: the first request offers only its `ToolSearch` tool and
names ours in a system message. The stub then does what a model does, a `ToolSearch` call with
`select:<names>`, after which the next request carries our tools' schemas.

Each tool is addressed exactly as Claude Code advertised it (the name that ends in
`__create_entities`), so the record also shows how Claude Code exposes our tools to a model.
Requests that are not the user's turn (Claude Code's side queries, which offer
no tools) get a short text answer. Answers are streamed as server-sent events when the request
says `"stream": true` (message_start, content_block_start/delta/stop, message_delta,
message_stop), and are plain JSON otherwise. Every request is appended to a JSON-lines record.

Usage: model_stub.py --record FILE [--port N]; prints `PORT <n>` on stdout once listening.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENTITY = {"name": "Ada Lovelace", "entityType": "person",
          "observations": ["wrote the first published computer program"]}
# The scripts of a turn: (tool_use id, our tool's name, input), chosen by the user's prompt. A
# prompt that asks to remember something stores it and reads the graph back; any other only
# reads. The ids are the stub's own, so it can tell which of its calls were answered.
REMEMBER_PLAN: list[tuple[str, str, dict[str, Any]]] = [
    ("toolu_memory_0", "create_entities", {"entities": [ENTITY]}),
    ("toolu_memory_1", "read_graph", {}),
]
RECALL_PLAN: list[tuple[str, str, dict[str, Any]]] = [("toolu_memory_2", "read_graph", {})]
FINAL_TEXT = "Done with the memory tools."
SIDE_TEXT = "OK"


def find_tool(tools: list[dict[str, Any]], name: str) -> str | None:
    """The name under which Claude Code offered MCP tool `name` (mcp__<server>__<tool>) with its schema."""
    for tool in tools:
        if str(tool.get("name", "")).endswith("__" + name) and "input_schema" in tool:
            return str(tool["name"])
    return None


def deferred_name(body: dict[str, Any], name: str) -> str | None:
    """The name of MCP tool `name` as listed among Claude Code's deferred tools: those it names
    in the conversation only, to be loaded with its ToolSearch tool before a call."""
    pattern = re.compile(r"\bmcp__[A-Za-z0-9_-]+?__" + re.escape(name) + r"\b")
    for text in strings(body.get("messages", [])):
        found = pattern.search(text)
        if found:
            return found.group(0)
    return None


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for item in value for s in strings(item)] if isinstance(value, list) else []


def tool_results(body: dict[str, Any]) -> dict[str, Any]:
    """tool_use_id -> the tool_result block Claude Code sent back, across the conversation."""
    found: dict[str, Any] = {}
    for message in body.get("messages", []):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    found[str(block.get("tool_use_id"))] = block
    return found


def user_texts(body: dict[str, Any]) -> list[str]:
    return [text for message in body.get("messages", [])
            if isinstance(message, dict) and message.get("role") == "user" for text in strings(message.get("content"))]


def answer_for(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The content blocks and stop reason answering one request."""
    tools = body.get("tools") or []
    if not tools:  # one of Claude Code's side queries, not the user's turn
        return [{"type": "text", "text": SIDE_TEXT}], "end_turn"
    done = tool_results(body)
    plan = REMEMBER_PLAN if any("Remember that Ada Lovelace" in text for text in user_texts(body)) else RECALL_PLAN
    for tool_use_id, tool, arguments in plan:
        if tool_use_id in done:
            continue
        name = find_tool(tools, tool)
        if name is not None:
            return [{"type": "tool_use", "id": tool_use_id, "name": name, "input": arguments}], "tool_use"
        # Not offered with a schema: load it with ToolSearch, as a model does with a deferred tool.
        wanted = [deferred_name(body, t) for _, t, _ in plan]
        search = find_tool_named(tools, "ToolSearch")
        if search_id(tool_use_id) not in done and search and all(wanted):
            query = "select:" + ",".join(n for n in wanted if n)
            return [{"type": "tool_use", "id": search_id(tool_use_id), "name": search,
                     "input": {"query": query}}], "tool_use"
        # Claude Code did not offer our tool: say so in the transcript instead of guessing a name.
        return [{"type": "text", "text": f"NO TOOL {tool} OFFERED"}], "end_turn"
    return [{"type": "text", "text": FINAL_TEXT}], "end_turn"


def find_tool_named(tools: list[dict[str, Any]], name: str) -> str | None:
    return name if any(tool.get("name") == name for tool in tools) else None


def search_id(tool_use_id: str) -> str:
    return tool_use_id.replace("toolu_memory_", "toolu_search_")


def message_for(body: dict[str, Any], step: int) -> dict[str, Any]:
    content, stop_reason = answer_for(body)
    return {"id": f"msg_stub_{step}", "type": "message", "role": "assistant", "model": body.get("model", "stub"),
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def stream_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The Messages API streaming events that deliver `message`."""
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 0}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            events += [
                {"type": "content_block_start", "index": index,
                 "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}},
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}},
            ]
        else:
            events += [
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "text_delta", "text": block["text"]}},
            ]
        events.append({"type": "content_block_stop", "index": index})
    events += [
        {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
         "usage": {"output_tokens": message["usage"]["output_tokens"]}},
        {"type": "message_stop"},
    ]
    return events


class Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, record: Path) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.record = record
        self.lock = threading.Lock()
        self.step = 0

    def log(self, entry: dict[str, Any]) -> None:
        with self.lock, self.record.open("a") as f:
            f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    server: Stub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("model-stub: " + format % args + "\n")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self, method: str) -> None:
        # Anything but the Messages API (none seen with Claude Code 2.1.332 and the settings
        # run.py uses); recorded so that a new one shows up in the record.
        self.server.log({"method": method, "path": self.path})
        body = {"type": "error", "error": {"type": "not_found_error", "message": "not in the stand-in"}}
        self._send(404, json.dumps(body).encode(), "application/json")

    def do_GET(self) -> None:
        self._not_found("GET")

    def do_HEAD(self) -> None:
        self._not_found("HEAD")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0] != "/v1/messages":
            self._not_found("POST")
            return
        body = json.loads(raw)
        with self.server.lock:
            step = self.server.step
            self.server.step += 1
        message = message_for(body, step)
        self.server.log({"method": "POST", "path": self.path, "step": step, "body": body, "answer": message,
                         "headers": {k.lower(): v for k, v in self.headers.items()
                                     if k.lower() not in ("x-api-key", "authorization")}})
        if body.get("stream"):
            stream = "".join(f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n" for ev in stream_events(message))
            self._send(200, stream.encode(), "text/event-stream")
        else:
            self._send(200, json.dumps(message).encode(), "application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    stub = Stub(args.port, args.record)
    print(f"PORT {stub.server_address[1]}", flush=True)
    stub.serve_forever()


if __name__ == "__main__":
    main()

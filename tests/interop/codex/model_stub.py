"""A loopback stand-in for an OpenAI Responses API model provider, scripted for one Codex turn.

Codex is the MCP client under test, and it only calls MCP tools when its model asks it to. This
stub plays that model, deterministically and offline: for `POST /v1/responses` it answers (as the
SSE stream Codex reads) first with a function call to our `create_entities`, then, once Codex sent
that call's output back, with a call to `read_graph`, and finally with a plain assistant message
(a prompt that does not ask to remember anything gets only the `read_graph` call).

The tool is addressed exactly as Codex advertised it in the request's `tools` array (a namespace
tool `mcp__<server>` holding our tools, or a flat function name), so the test also shows how
Codex exposes our tool list to a model. Every request is appended to a JSON-lines record file
for the test to assert on (the tool list Codex sent, the tool outputs it fed back).

Usage: model_stub.py --record FILE [--port N]; prints `PORT <n>` on stdout once listening.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENTITY = {"name": "Ada Lovelace", "entityType": "person",
          "observations": ["wrote the first published computer program"]}
# The scripts of a turn: (call id, tool, arguments), chosen by the user's prompt. A prompt that
# asks to remember something stores it and reads the graph back; any other only reads. Call ids
# are the stub's own, so it can tell which of its calls Codex already answered.
REMEMBER_PLAN: list[tuple[str, str, dict[str, Any]]] = [
    ("call_memory_0", "create_entities", {"entities": [ENTITY]}),
    ("call_memory_1", "read_graph", {}),
]
RECALL_PLAN: list[tuple[str, str, dict[str, Any]]] = [("call_memory_2", "read_graph", {})]
FINAL_TEXT = "Done with the memory tools."


def find_tool(tools: list[dict[str, Any]], name: str) -> dict[str, str] | None:
    """The `name`/`namespace` fields that address MCP tool `name` as Codex advertised it."""
    for tool in tools:
        if tool.get("type") == "namespace":
            for inner in tool.get("tools", []):
                if inner.get("name") == name:
                    return {"namespace": tool["name"], "name": name}
        elif tool.get("type") == "function" and str(tool.get("name", "")).endswith("__" + name):
            return {"name": tool["name"]}
    return None


def outputs_by_call(body: dict[str, Any]) -> dict[str, Any]:
    return {str(item.get("call_id")): item.get("output") for item in body.get("input", [])
            if isinstance(item, dict) and item.get("type") == "function_call_output"}


def user_texts(body: dict[str, Any]) -> list[str]:
    return [part.get("text", "") for item in body.get("input", [])
            if isinstance(item, dict) and item.get("type") == "message" and item.get("role") == "user"
            for part in item.get("content", []) if isinstance(part, dict)]


def events_for(body: dict[str, Any], step: int) -> list[dict[str, Any]]:
    """The SSE events answering one request: the next planned tool call, or the final message."""
    response_id = f"resp_stub_{step}"
    plan = REMEMBER_PLAN if any("Remember that" in text for text in user_texts(body)) else RECALL_PLAN
    done = outputs_by_call(body)
    pending = [entry for entry in plan if entry[0] not in done]
    item: dict[str, Any]
    if pending:
        call_id, tool, arguments = pending[0]
        address = find_tool(body.get("tools", []), tool)
        if address is None:
            # Codex did not offer our tool: say so in the transcript instead of guessing a name.
            item = {"type": "message", "role": "assistant", "id": f"msg_{step}", "status": "completed",
                    "content": [{"type": "output_text", "text": f"NO TOOL {tool} OFFERED", "annotations": []}]}
        else:
            item = {"type": "function_call", "id": f"fc_{step}", "call_id": call_id, "status": "completed",
                    "arguments": json.dumps(arguments), **address}
    else:
        item = {"type": "message", "role": "assistant", "id": f"msg_{step}", "status": "completed",
                "content": [{"type": "output_text", "text": FINAL_TEXT, "annotations": []}]}
    usage = {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 1,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 2}
    return [
        {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed",
         "response": {"id": response_id, "status": "completed", "output": [item], "usage": usage}},
    ]


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

    def do_GET(self) -> None:
        # Codex 0.171 sends none; recorded so that a new one shows up in the record.
        self.server.log({"method": "GET", "path": self.path})
        self._send(404, b"{}", "application/json")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.split("?")[0].endswith("/responses"):
            self.server.log({"method": "POST", "path": self.path})
            self._send(404, b"{}", "application/json")
            return
        body = json.loads(raw)
        with self.server.lock:
            step = self.server.step
            self.server.step += 1
        events = events_for(body, step)
        self.server.log({"method": "POST", "path": self.path, "step": step, "body": body,
                         "answer": events[-1]["response"]["output"]})
        stream = "".join(f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n" for ev in events).encode()
        self._send(200, stream, "text/event-stream")


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

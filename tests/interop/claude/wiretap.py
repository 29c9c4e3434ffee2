"""A loopback reverse proxy in front of memory-mcp that records what Claude Code sends on /mcp.

The server's access log shows `POST /mcp 200` and no more, which cannot tell the protocol eras
apart: a 2026-07-28 client sends `MCP-Protocol-Version: 2026-07-28` on every request and no
session, an older one opens with `initialize` and then carries `Mcp-Session-Id`. This tap sits
between Claude Code and the server (memory-mcp runs with `--public-url` set to the tap's origin,
as behind any reverse proxy) and writes one JSON line per request: method, path, status, the
MCP headers, and for /mcp the JSON-RPC method(s) and id(s) of the request and whether the answer
was a result or an error. Bodies of the OAuth endpoints are not recorded (they hold passwords,
codes and tokens), nor is any header value that carries a credential.

Everything else passes through untouched (Host, Origin, Accept, Authorization, bodies), and
responses are streamed chunk by chunk, so the server judges what Claude Code really sent.

Usage: wiretap.py --target http://127.0.0.1:N --record FILE [--port N]; prints `PORT <n>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade"})
# Recorded request headers (by lower-case name); Authorization only as its scheme.
MCP_HEADERS = ("mcp-protocol-version", "mcp-session-id", "mcp-method", "mcp-name", "accept", "content-type",
               "last-event-id", "user-agent")
RESPONSE_HEADERS = ("content-type", "mcp-session-id", "www-authenticate")
MAX_RECORDED_BODY = 1 << 20


def rpc_summary(raw: bytes) -> Any:
    """The JSON-RPC messages of a body, reduced to what shows the protocol in use."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    messages = message if isinstance(message, list) else [message]
    summary = []
    for item in messages:
        if not isinstance(item, dict):
            continue
        entry: dict[str, Any] = {k: item[k] for k in ("id", "method") if k in item}
        params = item.get("params")
        if isinstance(params, dict):
            if isinstance(params.get("_meta"), dict):
                entry["meta"] = params["_meta"]
            if "protocolVersion" in params:
                entry["protocolVersion"] = params["protocolVersion"]
            if "name" in params:
                entry["name"] = params["name"]
        if "result" in item:
            result = item["result"]
            entry["result_keys"] = sorted(result) if isinstance(result, dict) else type(result).__name__
            if isinstance(result, dict):
                for key in ("protocolVersion", "supportedVersions", "isError"):
                    if key in result:
                        entry[key] = result[key]
        if "error" in item:
            entry["error"] = item["error"]
        summary.append(entry)
    return summary


def sse_messages(raw: bytes) -> Any:
    """The JSON-RPC summaries of each `data:` event in an SSE body."""
    found: list[Any] = []
    for event in raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if data:
            found.extend(rpc_summary(data.encode()) or [])
    return found


class Tap:
    def __init__(self, target: str, record: Path) -> None:
        self.target = target.rstrip("/")
        self.record = record
        self.session: aiohttp.ClientSession | None = None

    def log(self, entry: dict[str, Any]) -> None:
        with self.record.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        started = time.time()
        headers = [(k, v) for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
        body = await request.read()
        is_mcp = request.path == "/mcp"
        entry: dict[str, Any] = {
            "time": round(started, 3), "method": request.method, "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items() if k.lower() in MCP_HEADERS},
            "auth": request.headers.get("Authorization", "").split(" ")[0] or None,
        }
        if is_mcp and body:
            entry["request"] = rpc_summary(body)
        received = bytearray()
        try:
            async with self.session.request(request.method, self.target + request.rel_url.raw_path_qs,
                                            headers=headers, data=body or None, allow_redirects=False) as upstream:
                entry["status"] = upstream.status
                entry["response_headers"] = {k.lower(): v for k, v in upstream.headers.items()
                                             if k.lower() in RESPONSE_HEADERS}
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if is_mcp and len(received) < MAX_RECORDED_BODY:
                        received += chunk
                    await response.write(chunk)
                await response.write_eof()
                return response
        finally:
            if is_mcp and received:
                content_type = entry.get("response_headers", {}).get("content-type", "")
                entry["response"] = (sse_messages(bytes(received)) if content_type.startswith("text/event-stream")
                                     else rpc_summary(bytes(received)))
            entry["seconds"] = round(time.time() - started, 3)
            self.log(entry)


async def serve(target: str, record: Path, port: int) -> None:
    tap = Tap(target, record)
    # No pooled keep-alive upstream, no rewritten bodies, no headers Claude Code did not send.
    tap.session = aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        connector=aiohttp.TCPConnector(force_close=True), skip_auto_headers=("Accept-Encoding", "User-Agent"))
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", tap.forward)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock).start()
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await tap.session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--target", required=True, help="memory-mcp's origin")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.target, args.record, args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()

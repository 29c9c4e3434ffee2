"""A loopback reverse proxy that adds `Authorization: Bearer <token>` to MCP requests.

Some test clients (the conformance suite's server runner) cannot send a token. Put this in front
of memory-mcp, start memory-mcp with `public_url` set to the proxy's origin (as behind any reverse
proxy), and the client sees an ordinary authenticated server. Everything else (Host, Origin,
Accept, session and protocol headers, bodies) passes through untouched, so the server still judges
what the client really sent; responses are streamed chunk by chunk so SSE keeps working.

Standalone: python -m tests.interop.bearer_proxy --target http://127.0.0.1:8000 --port 8001
(the token is read from standard input, so it is not visible in the process list).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys

import aiohttp
from aiohttp import web

# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the message.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade"})
# Only the MCP endpoints get the token: the OAuth endpoints must see what the client sent, or a
# client authenticating at /token would be confused with a bearer.
BEARER_PATHS = ("/mcp", "/sse", "/messages")


class BearerProxy:
    def __init__(self, target: str, token: str) -> None:
        self.target = target.rstrip("/")
        self.token = token
        self.url = ""
        self.requests: list[tuple[str, str, bool]] = []  # method, path, whether the token was added
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, sock: socket.socket) -> str:
        # No pooled keep-alive upstream: a stream the client dropped must not be reused, and
        # aiohttp must not rewrite bodies (auto_decompress) or add headers the client did not send.
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(force_close=True), skip_auto_headers=("Accept-Encoding", "User-Agent"))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        # handler_cancellation: when the client hangs up on an SSE stream, the upstream one is closed too.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
        add = request.path.startswith(BEARER_PATHS) and "Authorization" not in request.headers
        if add:
            headers.append(("Authorization", f"Bearer {self.token}"))
        self.requests.append((request.method, request.path_qs, add))
        body = await request.read()
        async with self._session.request(request.method, self.target + request.rel_url.raw_path_qs,
                                         headers=headers, data=body or None, allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    response.headers.add(key, value)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                # The client hung up mid-stream (an SSE reader that got what it wanted); leaving the
                # block closes the upstream stream, which is all a proxy owes the server.
                pass
            return response


async def _serve(target: str, port: int, token: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    proxy = BearerProxy(target, token)
    print(f"bearer proxy on {await proxy.start(sock)} -> {proxy.target}", file=sys.stderr)
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--target", required=True, help="memory-mcp's origin, e.g. http://127.0.0.1:8000")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    args = parser.parse_args()
    token = sys.stdin.readline().strip()
    if not token:
        parser.error("no token on standard input")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.target, args.port, token))


if __name__ == "__main__":
    main()

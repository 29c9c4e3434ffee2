"""The reverse-proxy configurations of docs/deploy.md, run for real.

Debian's nginx and Caddy run the very blocks the document shows (the site name, ports and
certificate paths swapped for the test's), with TLS on a throw-away certificate, in front of a
real server. Through each: a full OAuth login and MCP session with the SDK's client, a legacy SSE
stream whose first event arrives while the stream is still open (no buffering), the issuer
unmoved by a forged Host, and the client's address taken from the proxy's X-Forwarded-For and
not from one the client forged (`trusted_proxies`). A missing nginx or caddy fails the test with
what to install; `.ci/run` installs both.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.types import TextContent

from auth import accounts
from auth.throttle import address_key
from server.app import LIMITER
from tests.conftest import OAuthUser, RunningServer, free_socket, start_server
from tests.tls import self_signed

DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
CLIENT_ADDRESS = "127.0.0.2"  # the "internet" client: loopback, but not the proxy's address
FORGED = "203.0.113.9"


def doc_block(info: str) -> str:
    found = re.findall(rf"^```{info}\n(.*?)^```", DOC.read_text(), re.S | re.M)
    if len(found) != 1:
        raise AssertionError(f"docs/deploy.md must hold exactly one ```{info} block, found {len(found)}")
    return str(found[0])


def swap(text: str, old: str, new: str) -> str:
    """Replace, insisting that the documented text is there (a test of a block that changed
    under it must fail, not silently run something else)."""
    if old not in text:
        raise AssertionError(f"docs/deploy.md's block no longer contains {old!r}")
    return text.replace(old, new)


def binary(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                       None)
    if found is None:
        pytest.fail(f"{name} is not installed: the reverse-proxy tests run it (apt-get install {name}; .ci/run does)")
    return found


def nginx(directory: Path, port: int, upstream: int, cert: Path, key: Path) -> list[str]:
    block = doc_block("nginx")
    block = swap(block, "listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
    block = swap(block, "listen [::]:443 ssl http2;\n", "")
    block = swap(block, "server_name memory.example.com;", "server_name localhost;")
    block = swap(block, "/etc/letsencrypt/live/memory.example.com/fullchain.pem", str(cert))
    block = swap(block, "/etc/letsencrypt/live/memory.example.com/privkey.pem", str(key))
    block = swap(block, "proxy_pass http://127.0.0.1:8000;", f"proxy_pass http://127.0.0.1:{upstream};")
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the test's private files
    conf = directory / "nginx.conf"
    conf.write_text(f"{user}daemon off;\npid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} info;\n"
                    f"events {{}}\nhttp {{\n    access_log {directory / 'access.log'};\n{temp}\n{block}\n}}\n")
    return [binary("nginx"), "-p", str(directory), "-c", str(conf)]


def caddy(directory: Path, port: int, upstream: int, cert: Path, key: Path) -> list[str]:
    block = doc_block("caddyfile")
    block = swap(block, "memory.example.com {", f"https://localhost:{port} {{\n\ttls {cert} {key}")
    block = swap(block, "reverse_proxy 127.0.0.1:8000 {", f"reverse_proxy 127.0.0.1:{upstream} {{")
    conf = directory / "Caddyfile"
    # Test-only globals: no admin endpoint, no port-80 redirect listener, state in the test's directory.
    conf.write_text(f"{{\n\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust\n"
                    f"\tstorage file_system {directory / 'state'}\n}}\n\n{block}")
    return [binary("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"]


PROXIES = {"nginx": nginx, "caddy": caddy}


@dataclass
class Proxied:
    url: str
    server: RunningServer
    trust: ssl.SSLContext  # the test's certificate, and nothing else

    def http(self, **kwargs: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.trust, **kwargs),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True))

    def user(self) -> OAuthUser:
        return OAuthUser(self.url, "alice", "alice-password-1", ssl_context=self.trust)


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the proxy exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"the proxy did not listen on {port}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    files = self_signed(tmp_path)
    return files.cert, files.key


@pytest.fixture(params=sorted(PROXIES))
async def proxied(request: pytest.FixtureRequest, tmp_path: Path, cert: tuple[Path, Path]
                  ) -> AsyncIterator[Proxied]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"https://localhost:{port}"
    server = await start_server(tmp_path / "data", public_url=url, trusted_proxies="127.0.0.1")
    await accounts.add_user(server.storage, "alice", "alice-password-1")
    directory = tmp_path / request.param
    directory.mkdir()
    upstream = server.runner.addresses[0][1]  # server.url is the public URL: the proxy
    command = PROXIES[request.param](directory, port, upstream, *cert)
    log = directory / "proxy.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HOME": str(directory), "XDG_DATA_HOME": str(directory),
                                        "XDG_CONFIG_HOME": str(directory)})
    try:
        wait_port(port, process, log)
        yield Proxied(url, server, ssl.create_default_context(cafile=cert[0]))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        await server.stop()


async def test_an_mcp_client_logs_in_and_works_through_the_proxy(proxied: Proxied) -> None:
    user = proxied.user()
    async with user.client() as (client, _):
        await client.call_tool("create_entities", {"entities": [
            {"name": "Proxy", "entityType": "thing", "observations": ["seen through TLS"]}]})
        result = await client.call_tool("open_nodes", {"names": ["Proxy"]})
    text = result.content[0]
    assert isinstance(text, TextContent) and "seen through TLS" in text.text
    # The login went through the proxy's origin, which is the issuer clients were told.
    assert user.redirects and user.redirects[0].startswith(proxied.url + "/authorize?")


async def test_sse_events_are_not_buffered(proxied: Proxied) -> None:
    user = proxied.user()
    async with user.client() as (client, _):
        await client.list_tools()
    assert user.storage.tokens is not None
    headers = {"Authorization": f"Bearer {user.storage.tokens.access_token}", "Accept": "text/event-stream"}
    async with proxied.http() as http, http.get(proxied.url + "/sse", headers=headers) as resp:
        assert resp.status == 200
        # The endpoint event is the stream's first; the stream stays open after it. A buffering
        # proxy holds it until the buffer fills or the stream ends: this read would time out.
        first = await asyncio.wait_for(resp.content.readuntil(b"data:"), timeout=5)
        assert b"event: endpoint" in first
        assert not resp.content.at_eof()


async def test_the_issuer_is_the_public_url_whatever_the_host_header(proxied: Proxied) -> None:
    metadata = proxied.url + "/.well-known/oauth-authorization-server"
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http", "Forwarded": "host=evil.example"}
    async with proxied.http() as http:
        async with http.get(metadata, headers=forged) as resp:
            assert (await resp.json())["issuer"] == proxied.url
        async with http.get(metadata, headers={"Host": "evil.example", **forged}) as resp:
            # nginx serves its only server block whatever the Host; Caddy has no site for that
            # host and answers an empty page itself. Never an issuer taken from the request.
            if resp.content_type == "application/json":
                assert (await resp.json())["issuer"] == proxied.url
            else:
                assert "evil.example" not in await resp.text()


async def test_the_client_address_comes_from_the_proxy_not_the_client(proxied: Proxied) -> None:
    async with proxied.http(local_addr=(CLIENT_ADDRESS, 0)) as http:
        async with http.get(proxied.url + "/login") as resp:
            page = await resp.text()
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token is not None
        async with http.post(proxied.url + "/login", headers={"X-Forwarded-For": FORGED},
                             data={"csrf_token": token.group(1), "username": "alice",
                                   "password": "not her password"}) as resp:
            assert resp.status in (400, 401, 403)
    counted = {entry.key for entry in await proxied.server.app[LIMITER].counted()}
    assert address_key(CLIENT_ADDRESS) in counted, counted
    assert address_key(FORGED) not in counted and address_key("127.0.0.1") not in counted, counted

"""Client ID Metadata Documents: documents served over real TLS by a local aiohttp server, the
SSRF guard, the client_id equality rule, redirect validation, caching and limits."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from auth.cimd_fetch import ClientMetadataError, DocumentFetcher, cache_ttl, check_document_url, is_public_address
from tests.authflow import SQLITE, Backend, Env, approve, authorize_path, login, make_env, pkce, query_of, token_request
from tests.conftest import free_socket
from tests.tls import TLSFiles, self_signed

CALLBACK = "http://127.0.0.1/callback"
HOST = "docs.test"  # resolved by the fake DNS below to 127.0.0.1


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A self-signed certificate for docs.test, localhost and 127.0.0.1."""
    return self_signed(tmp_path_factory.mktemp("tls"), HOST)


@dataclass
class Served:
    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0
    chunked: bool = False


@dataclass
class DocServer:
    """An HTTPS server on 127.0.0.1 that serves whatever a test puts in `routes`, and records
    every request it receives."""

    port: int
    routes: dict[str, Served] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = HOST) -> str:
        return f"https://{host}:{self.port}{path}"

    def serve(self, path: str, document: dict[str, Any] | None = None, host: str = HOST, **kwargs: Any) -> str:
        """Serve a valid document for `path` (or the given one); returns its URL."""
        url = self.url(path, host)
        doc = document if document is not None else valid_document(url)
        self.routes[path] = Served(json.dumps(doc).encode(), **kwargs)
        return url


def valid_document(url: str, **overrides: Any) -> dict[str, Any]:
    return {"client_id": url, "client_name": "Claude Code", "client_uri": "https://claude.ai",
            "redirect_uris": [CALLBACK, "http://localhost/callback"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": "none", **overrides}


@pytest.fixture
async def docs(tls: TLSFiles) -> AsyncIterator[DocServer]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls.cert, tls.key)
    sock = free_socket()
    state = DocServer(sock.getsockname()[1])

    async def handler(request: web.Request) -> web.StreamResponse:
        state.requests.append(request.path_qs)
        served = state.routes.get(request.path_qs)
        if served is None:
            return web.Response(status=404)
        if served.delay:
            await asyncio.sleep(served.delay)
        if served.chunked:
            resp = web.StreamResponse(status=served.status, headers=served.headers)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(served.body), 1000):
                await resp.write(served.body[i:i + 1000])
            await resp.write_eof()
            return resp
        return web.Response(body=served.body, status=served.status, headers=served.headers)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=server_ctx).start()
    yield state
    await runner.cleanup()


@dataclass
class FakeDNS:
    answers: dict[str, list[str]] = field(default_factory=lambda: {HOST: ["127.0.0.1"]})
    queries: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.queries.append(host)
        if host not in self.answers:
            raise OSError(f"NXDOMAIN {host}")
        return self.answers[host]


@pytest.fixture
def dns() -> FakeDNS:
    return FakeDNS()


def trusting(tls: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=tls.pem.decode())
    return ctx


async def cimd_env(aiohttp_server: Any, aiohttp_client: Any, port: int, tmp_path: Path, store_backend: Backend,
                   tls: TLSFiles, dns: FakeDNS, **overrides: Any) -> Env:
    settings: dict[str, Any] = {"client_id_metadata_documents": True, "cimd_allow_private_addresses": True,
                                **overrides}
    env = await make_env(aiohttp_server, aiohttp_client, port, tmp_path, store_backend, **settings)
    env.server.cimd_fetcher = DocumentFetcher(ssl_context=trusting(tls), resolve=dns, timeout=1.0)
    return env


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path, store_backend: Backend,
              tls: TLSFiles, dns: FakeDNS) -> Env:
    return await cimd_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend, tls, dns)


@pytest.fixture
async def guarded(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
                  store_backend: Backend, tls: TLSFiles, dns: FakeDNS) -> Env:
    """CIMD on with the address guard on (the default)."""
    return await cimd_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend, tls, dns,
                          cimd_allow_private_addresses=False)


async def authorize_page(env: Env, client_id: str, redirect_uri: str | None = "http://127.0.0.1:43117/callback"
                         ) -> tuple[int, str]:
    _, challenge = pkce()
    resp = await env.client.get(authorize_path(client_id, redirect_uri, challenge), allow_redirects=False)
    return resp.status, await resp.text()


async def assert_refused(env: Env, client_id: str, reason: str) -> None:
    status, page = await authorize_page(env, client_id)
    assert status == 400, page
    assert reason in page, page
    assert await env.store.get_client(client_id) is None


# The flow

async def test_metadata_advertised_only_when_enabled(env: Env, aiohttp_server: Any, aiohttp_client: Any,
                                                     unused_tcp_port_factory: Any, tmp_path: Path) -> None:
    doc = await (await env.client.get("/.well-known/oauth-authorization-server")).json()
    assert doc["client_id_metadata_document_supported"] is True
    # A second server, on a store of its own (the discovery document does not depend on it).
    off = await make_env(aiohttp_server, aiohttp_client, unused_tcp_port_factory(), tmp_path / "off", SQLITE)
    doc = await (await off.client.get("/.well-known/oauth-authorization-server")).json()
    assert "client_id_metadata_document_supported" not in doc


async def test_login_with_a_metadata_document(env: Env, docs: DocServer, dns: FakeDNS) -> None:
    url = docs.serve("/oauth/client.json", headers={"Content-Type": "application/json; charset=utf-8",
                                                    "Cache-Control": "public, max-age=600"})
    redirect_uri = "http://127.0.0.1:43117/callback"  # the document lists it without a port
    verifier, challenge = pkce()
    location = await approve(env, authorize_path(url, redirect_uri, challenge))
    assert location.startswith(redirect_uri + "?")
    code = query_of(location)["code"]
    resp = await token_request(env, grant_type="authorization_code", code=code, code_verifier=verifier,
                               client_id=url, redirect_uri=redirect_uri)
    assert resp.status == 200, await resp.text()
    assert "refresh_token" in await resp.json()
    client = await env.store.get_client(url)
    assert client is not None
    assert client.verified_domain == HOST and client.client_name == "Claude Code"
    assert client.metadata_expires_at == pytest.approx(env.server.clock() + 600, abs=5)
    assert docs.requests == ["/oauth/client.json"]  # fetched once, then cached
    assert dns.queries == [HOST]


async def test_consent_page_shows_name_and_redirect_host(env: Env, docs: DocServer) -> None:
    url = docs.serve("/c.json")
    _, challenge = pkce()
    resp = await env.client.get(authorize_path(url, "http://localhost:5000/callback", challenge))
    resp = await login(env, await resp.text())
    assert resp.status == 200
    page = await resp.text()
    assert 'value="approve"' in page and "Claude Code" in page and "localhost:5000" in page


async def test_client_id_must_equal_url_exactly(env: Env, docs: DocServer) -> None:
    for path, claimed in (("/a.json", docs.url("/a.json") + "/"), ("/b.json", docs.url("/b.json").upper()),
                          ("/c.json", "https://claude.ai/oauth/claude-code-client-metadata"),
                          ("/d.json", None)):
        url = docs.url(path)
        document = valid_document(url, client_id=claimed)
        if claimed is None:
            del document["client_id"]
        docs.serve(path, document)
        await assert_refused(env, url, "must equal the URL")


@pytest.mark.parametrize("redirect_uri", ["http://127.0.0.2:43117/callback", "http://[::1]:43117/callback",
                                          "https://evil.example/callback", "http://127.0.0.1:1/other",
                                          "http://localhost:1/callback/../x"])
async def test_redirect_uri_must_be_in_the_document(env: Env, docs: DocServer, redirect_uri: str) -> None:
    url = docs.serve("/client.json")
    status, page = await authorize_page(env, url, redirect_uri)
    assert status == 400 and "not registered" in page


@pytest.mark.parametrize("redirect_uri", ["http://127.0.0.1:1/callback", "http://127.0.0.1/callback",
                                          "http://localhost:65535/callback", None])
async def test_loopback_redirects_match_on_any_port(env: Env, docs: DocServer, redirect_uri: str | None) -> None:
    url = docs.serve("/client.json", valid_document(docs.url("/client.json"), redirect_uris=[
        CALLBACK, "http://localhost/callback"] if redirect_uri else [CALLBACK]))
    status, page = await authorize_page(env, url, redirect_uri)
    assert status == 200 and 'name="password"' in page


HOSTILE_DOCUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"redirect_uris": ["javascript:alert(1)"]}, "redirect_uris"),
    ({"redirect_uris": ["http://evil.example/callback"]}, "redirect_uris"),
    ({"redirect_uris": ["https://evil.example/cb#f"]}, "redirect_uris"),
    ({"redirect_uris": [f"http://127.0.0.1:{i}/c" for i in range(11)]}, "redirect_uris"),
    ({"token_endpoint_auth_method": "client_secret_basic"}, "token_endpoint_auth_method"),
    ({"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "https://evil.example/jwks"},
     "token_endpoint_auth_method"),
    ({"jwks": {"keys": []}}, "jwks"),
    ({"client_secret": "s3cret"}, "client_secret"),
    ({"client_uri": "javascript:alert(1)"}, "client_uri"),
    ({"client_name": "x" * 500}, "client_name"),
    ({"grant_types": ["client_credentials"]}, "grant_types"),
]


@pytest.mark.parametrize(("overrides", "reason"), HOSTILE_DOCUMENTS)
async def test_hostile_documents_are_refused(env: Env, docs: DocServer, overrides: dict[str, Any],
                                             reason: str) -> None:
    url = docs.url("/client.json")
    docs.serve("/client.json", valid_document(url, **overrides))
    await assert_refused(env, url, reason)


@pytest.mark.parametrize(("served", "reason"), [
    (Served(b"not json"), "not valid JSON"),
    (Served(b"[1, 2]"), "JSON object"),
    (Served(b"{}", headers={"Content-Type": "text/html"}), "application/json"),
    (Served(b"{}", status=404), "HTTP 404"),
    (Served(b"{}", status=500), "HTTP 500"),
    (Served(b"{}", headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}), "compression"),
])
async def test_unusable_responses_are_refused(env: Env, docs: DocServer, served: Served, reason: str) -> None:
    docs.routes["/client.json"] = served
    await assert_refused(env, docs.url("/client.json"), reason)


async def test_redirects_are_not_followed(env: Env, docs: DocServer) -> None:
    target = docs.serve("/real.json")
    docs.routes["/client.json"] = Served(b"", status=302, headers={"Location": target})
    await assert_refused(env, docs.url("/client.json"), "redirects are not")
    assert docs.requests == ["/client.json"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_size_limit(env: Env, docs: DocServer, chunked: bool) -> None:
    url = docs.url("/big.json")
    docs.serve("/big.json", valid_document(url, x_padding="p" * 6000), chunked=chunked)
    await assert_refused(env, url, "exceeds 5120 bytes")
    # Just under the limit is fine.
    docs.serve("/big.json", valid_document(url, x_padding="p" * 4000), chunked=chunked)
    status, _ = await authorize_page(env, url)
    assert status == 200


async def test_time_limit(env: Env, docs: DocServer) -> None:
    url = docs.serve("/slow.json", delay=3.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await assert_refused(env, url, "timed out")
    assert loop.time() - started < 2.5


async def test_cache_honours_max_age_within_bounds(env: Env, docs: DocServer) -> None:
    now = [1_800_000_000.0]
    env.server.clock = lambda: now[0]
    url = docs.serve("/client.json", headers={"Content-Type": "application/json", "Cache-Control": "max-age=600"})
    for _ in range(3):
        assert (await authorize_page(env, url))[0] == 200
    assert len(docs.requests) == 1
    now[0] += 601
    # The document changed meanwhile: the re-fetch sees it.
    docs.serve("/client.json", valid_document(url, client_name="Renamed"))
    assert (await authorize_page(env, url))[0] == 200
    assert len(docs.requests) == 2
    client = await env.store.get_client(url)
    assert client is not None and client.client_name == "Renamed"
    assert client.metadata_expires_at == now[0] + 300  # no Cache-Control: the default


def test_cache_ttl_bounds() -> None:
    assert cache_ttl([]) == 300
    assert cache_ttl(["max-age=600"]) == 600
    assert cache_ttl(["public", "max-age=999999999"]) == 86400
    assert cache_ttl(["max-age=0"]) == 60
    assert cache_ttl(["no-store"]) == 60
    assert cache_ttl(['max-age="120"']) == 120
    assert cache_ttl(["max-age=-5"]) == 300


async def test_token_endpoint_uses_stored_document_when_refetch_fails_transiently(env: Env,
                                                                                  docs: DocServer) -> None:
    now = [1_800_000_000.0]
    env.server.clock = lambda: now[0]
    url = docs.serve("/client.json")
    redirect_uri = "http://127.0.0.1:43117/callback"
    verifier, challenge = pkce()
    location = await approve(env, authorize_path(url, redirect_uri, challenge))
    resp = await token_request(env, grant_type="authorization_code", code=query_of(location)["code"],
                               code_verifier=verifier, client_id=url, redirect_uri=redirect_uri)
    tokens = await resp.json()
    now[0] += 3600
    docs.routes["/client.json"] = Served(b"", status=503)
    resp = await token_request(env, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=url)
    assert resp.status == 200, await resp.text()
    # A definitive answer (the document is gone) ends the client.
    now[0] += 3600
    docs.routes["/client.json"] = Served(b"", status=404)
    resp = await token_request(env, grant_type="refresh_token", refresh_token=(await resp.json())["refresh_token"],
                               client_id=url)
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_client"
    # /authorize always wants a current document.
    docs.routes["/client.json"] = Served(b"", status=503)
    status, page = await authorize_page(env, url)
    assert status == 400 and "HTTP 503" in page


async def test_fetches_count_against_the_registration_budget(aiohttp_server: Any, aiohttp_client: Any,
                                                             unused_tcp_port: int, tmp_path: Path,
                                                             store_backend: Backend, tls: TLSFiles, dns: FakeDNS,
                                                             docs: DocServer) -> None:
    env = await cimd_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend, tls, dns,
                         registration_rate_limit=2)
    for i in range(2):
        assert (await authorize_page(env, docs.serve(f"/c{i}.json")))[0] == 200
    await assert_refused(env, docs.serve("/c2.json"), "too many")
    assert len(docs.requests) == 2
    # Cached documents are served without fetching, so they need no budget.
    assert (await authorize_page(env, docs.url("/c0.json")))[0] == 200


# The SSRF guard (on by default)

@pytest.mark.parametrize(("host", "answers"), [
    ("127.0.0.1", None), ("[::1]", None), ("10.1.2.3", None), ("169.254.169.254", None), ("[::ffff:127.0.0.1]", None),
    ("localhost", None),
    (HOST, ["127.0.0.1"]), (HOST, ["10.0.0.7"]), (HOST, ["169.254.169.254"]), (HOST, ["100.64.1.1"]),
    (HOST, ["192.168.1.1"]), (HOST, ["::1"]), (HOST, ["fd00::1"]), (HOST, ["fe80::1"]), (HOST, ["224.0.0.1"]),
    (HOST, ["64:ff9b::a9fe:a9fe"]), (HOST, ["93.184.216.34", "127.0.0.1"]),
])
async def test_guard_refuses_non_public_addresses_without_connecting(guarded: Env, docs: DocServer, dns: FakeDNS,
                                                                     host: str, answers: list[str] | None) -> None:
    if answers is not None:
        dns.answers[HOST] = answers
    if host == "localhost":
        dns.answers["localhost"] = ["127.0.0.1", "::1"]
    url = docs.serve("/client.json", host=host)
    await assert_refused(guarded, url, "public addresses only")
    assert docs.requests == []


async def test_guard_pins_the_vetted_address(docs: DocServer, tls: TLSFiles) -> None:
    """The address that passed the check is the one connected to: the resolver is asked once, and
    a second, different answer (DNS rebinding) is never consulted."""
    answers = [["127.0.0.1"], ["10.0.0.1"]]
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[len(asked) - 1]

    url = docs.serve("/client.json")
    fetcher = DocumentFetcher(ssl_context=trusting(tls), resolve=rebinding)
    document = await fetcher.fetch(url, allow_private=True)
    assert document.body["client_id"] == url and asked == [HOST] and docs.requests == ["/client.json"]


async def test_tls_is_verified(docs: DocServer) -> None:
    url = docs.serve("/client.json")
    fetcher = DocumentFetcher(resolve=FakeDNS())  # the system trust store does not know our certificate
    with pytest.raises(ClientMetadataError, match="could not be fetched"):
        await fetcher.fetch(url, allow_private=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1",
                                     "192.0.2.1", "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
                                     "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2001:db8::1",
                                     "2001:0:4136:e378:8000:63bf:3fff:fdd2"])
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1",
                                     "64:ff9b::101:101"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(("url", "reason"), [
    ("http://docs.test/client.json", "https"),
    ("https://docs.test", "path"),
    ("https://docs.test/", "path"),
    ("https://docs.test/a/../client.json", ". or .."),
    ("https://docs.test/./client.json", ". or .."),
    ("https://user@docs.test/client.json", "user information"),
    ("https://docs.test/client.json#frag", "fragment"),
    ("https://docs.test/client json", "whitespace"),
    ("https://docs_test.example/client.json", "valid host"),
    ("https://docs.test:99999/client.json", "not a valid URL"),
    ("https://docs.test/" + "a" * 2000, "longer than"),
])
def test_client_id_url_rules(url: str, reason: str) -> None:
    with pytest.raises(ClientMetadataError, match=reason):
        check_document_url(url)


async def test_invalid_url_client_ids_are_refused_without_fetching(env: Env, docs: DocServer, dns: FakeDNS) -> None:
    await assert_refused(env, f"http://{HOST}:{docs.port}/client.json", "https")
    await assert_refused(env, f"https://{HOST}:{docs.port}/client.json#x", "fragment")
    assert docs.requests == [] and dns.queries == []


async def test_disabled_by_default(aiohttp_server: Any, aiohttp_client: Any, unused_tcp_port: int, tmp_path: Path,
                                   docs: DocServer, store_backend: Backend) -> None:
    env = await make_env(aiohttp_server, aiohttp_client, unused_tcp_port, tmp_path, store_backend)
    url = docs.serve("/client.json")
    await assert_refused(env, url, "not enabled")
    resp = await token_request(env, grant_type="authorization_code", code="x", code_verifier="v" * 43, client_id=url)
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_client"
    assert docs.requests == []

"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document; MCP 2025-11-25).

With `AuthSettings.client_id_metadata_documents` on, a client may skip registration and use an
https URL as its `client_id`; the document at that URL is its registration. Codex uses
`https://chatgpt.com/oauth/codex/client.json`, Claude Code
`https://claude.ai/oauth/claude-code-client-metadata` (docs/protocol.md#D). Off by default:
advertising it switches those clients over, and it needs outbound HTTPS.

Fetching a URL that anyone can name is a server-side request forgery risk, so the fetch is fenced:

* The URL must be https with a path, no user info, fragment or dot segments.
* We resolve the host ourselves and refuse if *any* address is not public (loopback, private,
  link-local incl. 169.254.169.254, CGNAT, multicast, reserved, and IPv6 forms that embed one of
  those: mapped, 6to4, NAT64). The connection then goes to exactly the vetted addresses (a
  resolver pinned to them), so DNS cannot answer differently between check and connect
  (rebinding). TLS still verifies the certificate against the URL's host name.
  `cimd_allow_private_addresses` lifts the address check, for tests and closed networks.
* No redirects, no proxies from the environment, no compression (a small body cannot inflate),
  at most `MAX_DOCUMENT_BYTES` (5 KiB, as Cloudflare) within `FETCH_TIMEOUT` seconds in all,
  DNS included. Fetches count against the per-address registration budget: each one may create
  a client record.

The document must be a JSON object whose `client_id` equals the URL exactly, carry no secret, and
pass the same field rules as a registration (`auth.rfc7591`), which also means
`token_endpoint_auth_method` "none". Redirect URIs are then matched as for any client
(`auth.rfc8252`: exact, port-agnostic on loopback, which Claude's portless
`http://localhost/callback` needs).

The result is stored as a `Client` whose id is the URL, with `verified_domain` (the host that
serves the document, for the consent page) and `metadata_expires_at` from Cache-Control max-age,
clamped to [`MIN_TTL`, `MAX_TTL`] (`DEFAULT_TTL` when absent). Storing rather than an in-process
cache means every instance and the consent step see the same record, and it is garbage-collected
like a registration. `/authorize` always uses a current document; `/token` and `/revoke` fall back
to the stored one when a re-fetch fails for a transient reason (network, 5xx, rate limit), so a
refresh does not fail, and make the client drop its tokens, because the document host blinked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from auth.http import parse_json
from auth.models import Client
from auth.rfc7591 import RegistrationError, over_rate_limit, purge_clients, validate_metadata
from auth.rfc8252 import has_unsafe_characters, valid_host

if TYPE_CHECKING:
    from auth.server import AuthorizationServer

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 5 * 1024
FETCH_TIMEOUT = 5.0
MAX_URL_LENGTH = 2000
DEFAULT_TTL = 300.0
# A floor even for no-store / max-age=0: it bounds how often one client id makes us fetch.
MIN_TTL = 60.0
MAX_TTL = 24 * 3600.0
USER_AGENT = "memory-mcp (Client ID Metadata Document fetch)"
_SECRET_FIELDS = ("client_secret", "client_secret_expires_at")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]


class ClientMetadataError(Exception):
    """The client id's document cannot be used. `transient`: the fetch failed in a way that may
    pass (network, timeout, 5xx, rate limit), as opposed to an answer that says no."""

    def __init__(self, description: str, *, transient: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.transient = transient


def is_document_url(client_id: str) -> bool:
    """Registered client ids are base64url and never contain "://"; anything that does is meant
    as a metadata document URL (and refused if it is not a valid one)."""
    return "://" in client_id


def check_document_url(url: str) -> SplitResult:
    """The URL rules of the draft (section 3), plus sane length and characters."""
    if len(url) > MAX_URL_LENGTH:
        raise ClientMetadataError(f"the client_id URL is longer than {MAX_URL_LENGTH} characters")
    if has_unsafe_characters(url):
        raise ClientMetadataError("the client_id URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ClientMetadataError("the client_id is not a valid URL") from exc
    if parts.scheme != "https":
        raise ClientMetadataError("a client_id URL must use https")
    if not parts.hostname or not valid_host(parts.hostname):
        raise ClientMetadataError("the client_id URL has no valid host")
    if "@" in parts.netloc:
        raise ClientMetadataError("a client_id URL must not contain user information")
    if "#" in url:
        raise ClientMetadataError("a client_id URL must not contain a fragment")
    if not parts.path or parts.path == "/":
        raise ClientMetadataError("a client_id URL must have a path")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise ClientMetadataError("a client_id URL must not contain . or .. path segments")
    return parts


def is_public_address(ip: IPAddress) -> bool:
    """Globally routable unicast. IPv6 forms that carry an IPv4 address are judged by it: a NAT64
    or 6to4 gateway would otherwise carry us to 169.254.169.254 or 10/8."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_public_address(ip.sixtofour)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.teredo is not None:
            return False
    # `is_global` alone lets multicast through (224/4 is not in Python's private list).
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback
                                 or ip.is_link_local or ip.is_unspecified)


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PinnedResolver(AbstractResolver):
    """Answers for the one vetted host with the vetted addresses, and for nothing else."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        self._host = host.lower()
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host.lower() != self._host:
            raise OSError(f"refusing to resolve {host!r}: only {self._host!r} was vetted")
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)
                for address in self._addresses]

    async def close(self) -> None:
        return None


def cache_ttl(cache_control: list[str]) -> float:
    directives: dict[str, str] = {}
    for header in cache_control:
        for part in header.split(","):
            name, _, value = part.partition("=")
            directives[name.strip().lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return MIN_TTL
    max_age = directives.get("max-age")
    if max_age is None or not max_age.isdigit():
        return DEFAULT_TTL
    return min(MAX_TTL, max(MIN_TTL, float(max_age)))


@dataclass(frozen=True, slots=True)
class Document:
    body: dict[str, object]
    ttl: float


class DocumentFetcher:
    """The guarded HTTPS GET. `ssl_context` and `resolve` exist for tests (a local CA, a fake DNS
    answer); production uses the system's trust store and resolver."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, resolve: Resolve = system_resolve,
                 timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_DOCUMENT_BYTES) -> None:
        self.ssl_context = ssl_context
        self.resolve = resolve
        self.timeout = timeout
        self.max_bytes = max_bytes

    async def fetch(self, url: str, *, allow_private: bool) -> Document:
        parts = check_document_url(url)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url, parts, allow_private)
        except TimeoutError:
            raise ClientMetadataError(f"fetching the client metadata document timed out after {self.timeout:g} s",
                                      transient=True) from None
        except aiohttp.ClientError as exc:
            raise ClientMetadataError(f"the client metadata document could not be fetched ({type(exc).__name__})",
                                      transient=True) from exc

    async def _vetted_addresses(self, host: str, port: int, allow_private: bool) -> list[str]:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = await self.resolve(host, port)
            except OSError as exc:
                raise ClientMetadataError(f"the client_id host {host!r} could not be resolved",
                                          transient=True) from exc
        if not addresses:
            raise ClientMetadataError(f"the client_id host {host!r} has no address", transient=True)
        if not allow_private:
            for address in addresses:
                if not is_public_address(ipaddress.ip_address(address)):
                    raise ClientMetadataError(f"the client_id host {host!r} resolves to a non-public address; "
                                              "metadata documents are fetched from public addresses only")
        return addresses

    async def _fetch(self, url: str, parts: SplitResult, allow_private: bool) -> Document:
        assert parts.hostname is not None  # checked by check_document_url
        addresses = await self._vetted_addresses(parts.hostname, parts.port or 443, allow_private)
        connector = aiohttp.TCPConnector(resolver=_PinnedResolver(parts.hostname, addresses), use_dns_cache=False,
                                         ssl=self.ssl_context or True, force_close=True, limit=1)
        async with aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            headers = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    raise ClientMetadataError("the client metadata document URL redirects; redirects are not "
                                              "followed (the URL must serve the document itself)")
                if resp.status != 200:
                    raise ClientMetadataError(f"the client metadata document URL answered HTTP {resp.status}",
                                              transient=resp.status >= 500 or resp.status == 429)
                if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                    raise ClientMetadataError("the client metadata document must be sent without compression")
                content_type = resp.content_type.lower()
                if content_type != "application/json" and not content_type.endswith("+json"):
                    raise ClientMetadataError("the client metadata document must be served as application/json")
                if resp.content_length is not None and resp.content_length > self.max_bytes:
                    raise ClientMetadataError(f"the client metadata document exceeds {self.max_bytes} bytes")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(4096):
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise ClientMetadataError(f"the client metadata document exceeds {self.max_bytes} bytes")
                ttl = cache_ttl(resp.headers.getall("Cache-Control", []))
        try:
            body = parse_json(bytes(data))
        except (ValueError, RecursionError) as exc:
            raise ClientMetadataError("the client metadata document is not valid JSON") from exc
        if not isinstance(body, dict):
            raise ClientMetadataError("the client metadata document must be a JSON object")
        return Document(body, ttl)


DEFAULT_FETCHER = DocumentFetcher()


def client_from_document(url: str, document: Document, now: float, issued_at: int) -> Client:
    body = document.body
    if body.get("client_id") != url:
        raise ClientMetadataError("the document's client_id must equal the URL it was fetched from, exactly")
    for field in _SECRET_FIELDS:
        if field in body:
            raise ClientMetadataError(f"a client metadata document must not contain {field}")
    try:
        meta = validate_metadata(body)
    except RegistrationError as exc:
        raise ClientMetadataError(f"the client metadata document is invalid: {exc.description}") from exc
    return meta.client(url, issued_at, verified_domain=urlsplit(url).hostname,
                       metadata_expires_at=now + document.ttl)


async def lookup_client(server: AuthorizationServer, client_id: str, address: str, *,
                        allow_stale: bool = False) -> Client | None:
    """The client for `client_id`: a registered one from the store, or one described by its
    metadata document (fetched when not cached or expired). None for an unknown registered id;
    `ClientMetadataError` when a document URL cannot be used. `address` is the caller's, for the
    fetch budget. `allow_stale` (token and revocation endpoints) falls back to the stored document
    when a re-fetch fails transiently."""
    if not is_document_url(client_id):
        return await server.store.get_client(client_id)
    if not server.settings.client_id_metadata_documents:
        raise ClientMetadataError("this server does not accept URL client ids (Client ID Metadata Documents are "
                                  "not enabled); the application must register")
    now = server.clock()
    stored = await server.store.get_client(client_id)
    if stored is not None and stored.metadata_expires_at is not None and stored.metadata_expires_at > now:
        return stored
    try:
        if await over_rate_limit(server, address) is not None:
            raise ClientMetadataError("too many client registrations from this address; retry later", transient=True)
        fetcher = server.cimd_fetcher or DEFAULT_FETCHER
        document = await fetcher.fetch(client_id, allow_private=server.settings.cimd_allow_private_addresses)
        client = client_from_document(client_id, document, now,
                                      stored.client_id_issued_at if stored is not None else int(now))
    except ClientMetadataError as exc:
        if allow_stale and exc.transient and stored is not None:
            log.warning("using the stored metadata document of %s: %s", client_id, exc.description)
            return stored
        log.info("refused client metadata document %s: %s", client_id, exc.description)
        raise
    if stored is None:
        await purge_clients(server)
    await server.store.save_client(client)
    return client

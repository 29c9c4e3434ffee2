"""The guarded fetch of Client ID Metadata Documents (`auth.cimd` turns a document into a client).

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

This module knows nothing of clients, registration or the authorization server, so that
`auth.server` can hold a `DocumentFetcher` without importing the modules that use the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from auth.http import parse_json
from auth.rfc8252 import URLError, split_url, valid_host

MAX_DOCUMENT_BYTES = 5 * 1024
FETCH_TIMEOUT = 5.0
MAX_URL_LENGTH = 2000
DEFAULT_TTL = 300.0
# A floor even for no-store / max-age=0: it bounds how often one client id makes us fetch.
MIN_TTL = 60.0
MAX_TTL = 24 * 3600.0
USER_AGENT = "memory-mcp (Client ID Metadata Document fetch)"
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


class DocumentURL(NamedTuple):
    """A URL that passed `check_document_url`: the host is known to be there."""
    host: str
    port: int


def check_document_url(url: str) -> DocumentURL:
    """The URL rules of the draft (section 3), plus sane length and characters."""
    if len(url) > MAX_URL_LENGTH:
        raise ClientMetadataError(f"the client_id URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = split_url(url)
    except URLError as exc:
        raise ClientMetadataError("the client_id URL contains whitespace or control characters" if exc.unsafe
                                  else "the client_id is not a valid URL") from None
    if parts.scheme != "https":
        raise ClientMetadataError("a client_id URL must use https")
    host = parts.hostname
    if not host or not valid_host(host):
        raise ClientMetadataError("the client_id URL has no valid host")
    if "@" in parts.netloc:
        raise ClientMetadataError("a client_id URL must not contain user information")
    if "#" in url:
        raise ClientMetadataError("a client_id URL must not contain a fragment")
    if not parts.path or parts.path == "/":
        raise ClientMetadataError("a client_id URL must have a path")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise ClientMetadataError("a client_id URL must not contain . or .. path segments")
    return DocumentURL(host, parts.port or 443)


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
        target = check_document_url(url)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url, target, allow_private)
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

    async def _fetch(self, url: str, target: DocumentURL, allow_private: bool) -> Document:
        addresses = await self._vetted_addresses(target.host, target.port, allow_private)
        connector = aiohttp.TCPConnector(resolver=_PinnedResolver(target.host, addresses), use_dns_cache=False,
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

"""Redirect URI rules: what may be registered, and how a requested URI matches a registered one.

Registration (MCP "localhost or HTTPS"; RFC 8252 section 7.3 and 8.3): `https` anywhere, `http`
only on a loopback host. No fragment (RFC 6749 section 3.1.2), no userinfo (phishing-looking
URLs), no whitespace or control characters. Other schemes (`javascript:`, `data:`, `file:`,
private-use schemes) are refused.

Matching: exact string match, except that for loopback hosts the port is ignored, because native
clients bind an ephemeral port at every login (RFC 8252 section 7.3). Scheme, host, path and query
must still match: `127.0.0.1` and `localhost` are different hosts (an attacker able to bind a port
on one is not necessarily able to on the other, and clients are consistent about which they use).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_REDIRECT_URI_LENGTH = 2000
# DNS names in ASCII (IDNs as punycode). Besides sanity, this keeps the host safe to copy into the
# consent page's CSP header: a host like "x.com;frame-ancestors *" would otherwise add directives.
_DNS_NAME = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.?")


class RedirectURIError(ValueError):
    pass


def has_unsafe_characters(uri: str) -> bool:
    """Whitespace (Unicode's, not only ASCII's) or a C0/DEL control character. `urlsplit` removes
    TAB, CR and LF anywhere and strips leading controls and spaces, so a URI carrying them would
    be parsed, compared and used as a different URI than the string received; every URI we parse
    is refused with this rule before `urlsplit` sees it."""
    return any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in uri)


def valid_host(host: str) -> bool:
    """A DNS name in ASCII or an IPv6 literal (as `urlsplit().hostname` gives them; IPv4 literals
    are DNS-name shaped)."""
    if ":" in host:
        if "%" in host:  # zone ids are meaningful only on the client's machine
            return False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and _DNS_NAME.fullmatch(host) is not None


class URLError(ValueError):
    """Why `split_url` refused a string: `unsafe` when it holds whitespace or control
    characters, else it is malformed (a bad port, an unbalanced IPv6 bracket)."""

    def __init__(self, unsafe: bool) -> None:
        super().__init__("contains whitespace or control characters" if unsafe else "is not a valid URL")
        self.unsafe = unsafe


def split_url(url: str) -> SplitResult:
    """`urlsplit` of exactly the string received: `URLError` for whitespace or control characters
    (`has_unsafe_characters`) or a malformed URL, which `urlsplit` alone lets through or only
    reports when `.port` is read. Every URL this server parses from outside goes through here."""
    if has_unsafe_characters(url):
        raise URLError(unsafe=True)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise URLError(unsafe=False) from None
    return parts


def _split(uri: str) -> SplitResult:
    try:
        return split_url(uri)
    except URLError as exc:
        if exc.unsafe:
            raise RedirectURIError("redirect URIs may not contain whitespace or control characters") from None
        raise RedirectURIError(f"{uri!r} is not a valid URI") from None


def check_registrable(uri: str) -> None:
    """Raise `RedirectURIError` naming the rule when `uri` may not be registered."""
    if len(uri) > MAX_REDIRECT_URI_LENGTH:
        raise RedirectURIError(f"redirect URIs are limited to {MAX_REDIRECT_URI_LENGTH} characters")
    if "#" in uri:
        raise RedirectURIError("redirect URIs may not contain a fragment")
    parts = _split(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise RedirectURIError(f"{uri!r}: only https, or http on a loopback host, is allowed")
    if not parts.hostname:
        raise RedirectURIError(f"{uri!r} has no host")
    if not valid_host(parts.hostname):
        raise RedirectURIError(f"{uri!r}: the host must be a DNS name or an IP address")
    if "@" in parts.netloc:
        raise RedirectURIError("redirect URIs may not contain user information")
    if scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise RedirectURIError(f"{uri!r}: http is only allowed on 127.0.0.1, [::1] or localhost")


def is_loopback(uri: str) -> bool:
    try:
        parts = _split(uri)
    except RedirectURIError:
        return False
    return parts.scheme.lower() == "http" and parts.hostname in LOOPBACK_HOSTS


def _without_port(parts: SplitResult) -> tuple[str, str | None, str, str]:
    return parts.scheme.lower(), parts.hostname, parts.path, parts.query


def matches(requested: str, registered: tuple[str, ...]) -> bool:
    """Whether `requested`, exactly as received, names a registered URI. Callers refuse unsafe
    characters first (`has_unsafe_characters`) to say so; here they never match, even a record
    registered before the rule existed."""
    if has_unsafe_characters(requested):
        return False
    if requested in registered:
        return True
    if not is_loopback(requested):
        return False
    parts = _split(requested)
    if parts.fragment or "#" in requested or parts.username is not None or parts.password is not None:
        # RFC 6749 3.1.2: no fragment; user info is refused at registration and must not slip in
        # through the port-agnostic comparison below, which looks at scheme, host, path and query.
        return False
    wanted = _without_port(parts)
    return any(is_loopback(r) and _without_port(_split(r)) == wanted for r in registered)


def origin(uri: str) -> str | None:
    """`scheme://host[:port]` of a valid redirect URI, as a CSP source expression; None for IPv6
    literals, which CSP host-source grammar cannot express."""
    parts = _split(uri)
    if parts.hostname is None or ":" in parts.hostname or not valid_host(parts.hostname):
        return None
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme.lower()}://{parts.hostname}{port}"

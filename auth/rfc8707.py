"""RFC 8707 resource indicators: the canonical form we compare audiences in.

Clients disagree on spelling: mcp-remote appends a slash to origin-only resources, some send an
uppercase host or an explicit default port (docs/protocol.md#G7). All of them mean the same
resource, so every comparison goes through `normalize_resource`.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from auth.rfc8252 import has_unsafe_characters

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_resource(value: str) -> str | None:
    """The canonical form of an absolute http(s) URI, or None when it cannot be a resource
    (relative, other scheme, fragment, userinfo, bad port)."""
    if not value or has_unsafe_characters(value) or "#" in value:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # already lowercased
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def is_our_resource(value: str, resources: tuple[str, ...]) -> bool:
    canonical = normalize_resource(value)
    return canonical is not None and canonical in {normalize_resource(r) for r in resources}

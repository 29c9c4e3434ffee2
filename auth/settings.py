"""What the authorization server needs to know about its deployment."""

from __future__ import annotations

from dataclasses import dataclass, field

READ_SCOPE = "memory:read"
WRITE_SCOPE = "memory:write"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """`issuer` is the configured public origin (scheme://host[:port], no path, no trailing slash).

    It is never derived from request headers: behind a proxy that leaks internal origins into
    redirects and metadata, and clients compare it byte for byte (protocol-checklist G4).
    """

    issuer: str
    # Paths of the protected resources on this origin; each gets its own RFC 9728 document.
    resource_paths: tuple[str, ...] = ("/mcp", "/sse")
    scopes_supported: tuple[str, ...] = (READ_SCOPE, WRITE_SCOPE)
    default_scopes: tuple[str, ...] = (READ_SCOPE, WRITE_SCOPE)
    access_token_ttl: int = 3600 * 2
    refresh_token_ttl: int = 3600 * 24 * 60
    code_ttl: int = 300
    login_ttl: int = 3600 * 12
    resource_name: str = "memory-mcp"
    extra_resource_aliases: tuple[str, ...] = field(default=())

    @property
    def secure_cookies(self) -> bool:
        return self.issuer.startswith("https://")

    def url(self, path: str) -> str:
        return self.issuer + path

    @property
    def resources(self) -> tuple[str, ...]:
        """Every resource identifier a token may be bound to (RFC 8707), canonical form."""
        return (self.issuer, *(self.issuer + p for p in self.resource_paths), *self.extra_resource_aliases)

"""What the authorization server needs to know about its deployment."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

READ_SCOPE = "memory:read"
WRITE_SCOPE = "memory:write"
OPENID_SCOPE = "openid"
PROFILE_SCOPE = "profile"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """`issuer` is the configured public origin (scheme://host[:port], no path, no trailing slash).

    It is never derived from request headers: behind a proxy that leaks internal origins into
    redirects and metadata, and clients compare it byte for byte (docs/protocol.md#G4).
    """

    issuer: str
    # Paths of the protected resources on this origin; each gets its own RFC 9728 document.
    resource_paths: tuple[str, ...] = ("/mcp", "/sse")
    # The protected resource's scopes: what RFC 9728 documents and WWW-Authenticate challenges
    # name, so what MCP clients request.
    scopes_supported: tuple[str, ...] = (READ_SCOPE, WRITE_SCOPE)
    default_scopes: tuple[str, ...] = (READ_SCOPE, WRITE_SCOPE)
    # OpenID Connect scopes: granted when asked for, listed only in the authorization server's
    # documents. Not in the resource's: Codex requests the union of what the resource advertises,
    # and the MCP resource has no use for an ID token.
    oidc_scopes: tuple[str, ...] = (OPENID_SCOPE, PROFILE_SCOPE)
    # Lifetimes (seconds). Access tokens last at least an hour (Claude Code refreshes 5 minutes
    # before expiry). A refresh token lives `refresh_token_ttl` from its last rotation (sliding),
    # but nothing of a grant outlives `refresh_token_max_lifetime` after the user authenticated.
    access_token_ttl: int = 3600 * 2
    refresh_token_ttl: int = 3600 * 24 * 60
    refresh_token_max_lifetime: int = 3600 * 24 * 365
    # A superseded refresh token presented again within this many seconds gets the pair it was
    # rotated to (lost responses, concurrent refreshes); later it revokes its whole grant.
    refresh_grace_seconds: int = 60
    id_token_ttl: int = 3600
    code_ttl: int = 300
    login_ttl: int = 3600 * 12
    # How long a remembered approval (auth.consent) replaces the consent page.
    consent_ttl: int = 3600 * 24 * 30
    resource_name: str = "memory-mcp"
    # Named memories (auth.memories) one user may have, the default one included: the storage
    # quotas are per memory, so this bounds what one account can hold.
    max_memories_per_user: int = 20
    # Client registration (auth.rfc7591, auth.cimd). Registrations (and metadata document
    # fetches, which create a client record too) per source address per hour; 0 = no limit.
    registration_rate_limit: int = 20
    # A registered client that obtained no token within this many seconds is deleted: Codex and
    # Claude register on every login, and anyone may register, so unused records would pile up.
    unused_client_ttl: int = 3600 * 24
    # A client that obtained tokens is deleted once none is live and its last token is this old.
    idle_client_ttl: int = 3600 * 24 * 365
    # Client ID Metadata Documents (MCP 2025-11-25): an https client_id is fetched. Off by
    # default: advertising it switches Codex and Claude Code to it (docs/protocol.md#G14).
    client_id_metadata_documents: bool = False
    # Lets metadata documents be fetched from private and loopback addresses: for tests and
    # closed networks only; it turns the fetch into a way to probe the server's own network.
    cimd_allow_private_addresses: bool = False
    extra_resource_aliases: tuple[str, ...] = field(default=())
    # Reverse proxies whose forwarding header is believed (auth.http.forwarded_client), and which
    # header they write: "X-Forwarded-For" or "Forwarded" (RFC 7239). Only the one the proxy
    # writes may be read: the other passes through from the client untouched.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    proxy_header: str = "X-Forwarded-For"

    @property
    def secure_cookies(self) -> bool:
        return self.issuer.startswith("https://")

    def url(self, path: str) -> str:
        return self.issuer + path

    @property
    def resources(self) -> tuple[str, ...]:
        """Every resource identifier a token may be bound to (RFC 8707), canonical form."""
        return (self.issuer, *(self.issuer + p for p in self.resource_paths), *self.extra_resource_aliases)

    @property
    def as_scopes_supported(self) -> tuple[str, ...]:
        """What the authorization server grants: the resource's scopes, then OpenID Connect's."""
        return (*self.scopes_supported, *(s for s in self.oidc_scopes if s not in self.scopes_supported))

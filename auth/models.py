"""Records the authorization server keeps, and the identity it hands to resource servers.

Every secret (authorization code, access token, refresh token) is represented here only by its
SHA-256 hash (`auth.crypto.hash_secret`): a leaked store reveals no usable credential, and
revocation is a delete. The storage schema that holds these records is documented next to each
backend (`server/storage/`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and on which of the user's memories: an MCP session is bound to exactly
    these (docs/decisions.md#4).

    A refreshed token of the same principal keeps its sessions; another user's or another client's
    token, or a token of the same client for another memory, on the same session id is treated as
    an unknown session. `memory` is the id of the memory the grant was approved for
    (`auth.memories`); left empty it is the user's default memory, whose id is the subject.
    """

    issuer: str
    subject: str
    client_id: str
    memory: str = ""

    def __post_init__(self) -> None:
        if not self.memory:
            # Frozen: the one place the default memory's id is filled in, so that a principal
            # built with or without it compares equal.
            object.__setattr__(self, "memory", self.subject)


class AccountState(StrEnum):
    """ACTIVE -> REMOVING -> (the row is deleted). REMOVING is set by the first step of a removal
    and lasts until its last step: such an account cannot sign in or be used, and a removal that
    was interrupted is found again by its name and finished."""

    ACTIVE = "active"
    REMOVING = "removing"


@dataclass(frozen=True, slots=True)
class User:
    """A local account. `id` is the OAuth subject: random and never reused, so a removed and
    re-created username does not inherit the old account's memory or tokens."""

    id: str
    username: str
    password_hash: str
    created_at: float
    state: AccountState = AccountState.ACTIVE


class Client(BaseModel):
    """A registered OAuth client (RFC 7591 section 3.2.1 response fields).

    `metadata` keeps every field the client registered, unknown ones included, so that the
    registration response can echo them back exactly.
    """

    model_config = ConfigDict(frozen=True)

    client_id: str
    client_id_issued_at: int
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: Literal["none"] = "none"  # noqa: S105 - a method name
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    response_types: tuple[str, ...] = ("code",)
    client_name: str | None = None
    scope: str | None = None
    metadata: dict[str, object] = {}
    # Set for a client known by its Client ID Metadata Document (auth.cimd), never for a DCR one.
    # `verified_domain` is the host that serves the document and so vouches for the name and
    # redirect URIs: the consent page shows it (a DCR client's name is only self-asserted).
    # `metadata_expires_at` is when the cached document must be fetched again.
    verified_domain: str | None = None
    metadata_expires_at: float | None = None

    def registration_response(self) -> dict[str, object]:
        body: dict[str, object] = dict(self.metadata)
        body.update(
            client_id=self.client_id,
            client_id_issued_at=self.client_id_issued_at,
            redirect_uris=list(self.redirect_uris),
            token_endpoint_auth_method=self.token_endpoint_auth_method,
            grant_types=list(self.grant_types),
            response_types=list(self.response_types),
        )
        if self.client_name is not None:
            body["client_name"] = self.client_name
        if self.scope is not None:
            body["scope"] = self.scope
        return body


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    """A pending code grant. Everything the token endpoint must re-check is bound here."""

    code_hash: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str
    subject: str
    auth_time: float
    expires_at: float
    # OpenID Connect: the /authorize `nonce`, echoed in the ID token.
    nonce: str | None = None
    # The memory the user chose on the consent page (`auth.memories`); None: the default memory.
    memory: str | None = None
    # Set when the code is redeemed: the grant its tokens belong to. The redeemed record is kept
    # until the code would have expired, so a replay can revoke that grant (RFC 9700 4.2.1).
    grant_id: str | None = None


@dataclass(frozen=True, slots=True)
class Redemption:
    """What `GrantStore.consume_code` did.

    "redeemed": this call redeemed the code (`code`, with `grant_id` set). "replayed": the code
    had been redeemed before; its grant's tokens were just deleted (`code` says whose they were).
    "invalid": unknown or expired.
    """

    status: Literal["redeemed", "replayed", "invalid"]
    code: AuthorizationCode | None = None


TokenKind = Literal["access", "refresh"]


@dataclass(frozen=True, slots=True)
class Token:
    """An issued access or refresh token.

    `grant_id` names the token family: every token descending from one authorization code shares
    it, so a whole family can be revoked at once (RFC 9700 4.14.2 refresh token replay).
    """

    token_hash: str
    kind: TokenKind
    grant_id: str
    client_id: str
    subject: str
    scopes: tuple[str, ...]
    resource: str
    issued_at: float
    expires_at: float
    # When the user authenticated for this grant: the ID token's `auth_time`, and where the
    # absolute lifetime cap of the grant counts from. None only for tokens made outside the flows.
    auth_time: float | None = None
    # Refresh tokens only: when it was rotated. A superseded token is not live (`get_token` skips
    # it); it is kept until it would have expired, to tell a retry from a replay.
    superseded_at: float | None = None
    # The memory the grant is bound to (kept by every rotation); None: the default memory.
    memory: str | None = None


@dataclass(frozen=True, slots=True)
class Rotation:
    """What `GrantStore.rotate_refresh_token` did.

    "rotated": the new tokens were stored. "retry": the old token had been rotated within the
    grace window and its successor is still live; `successor` is the sealed response of that
    rotation (only the old token's holder can open it). "replayed": rotated before the window;
    the whole grant was just deleted. "invalid": unknown or expired, or a retry whose successor
    has itself been rotated already (refused without revoking: still inside the window).
    """

    status: Literal["rotated", "retry", "replayed", "invalid"]
    successor: str | None = None


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key that signs ID tokens (`auth.rfc7517`). The private JWK is stored encrypted; the
    public one in the clear for the JWKS. A retired key signs nothing more but stays published
    until `published_until`, so that tokens it signed still verify."""

    kid: str
    alg: str
    public_jwk: str
    private_jwk: str
    created_at: float
    retired_at: float | None = None
    published_until: float | None = None


@dataclass(frozen=True, slots=True)
class PersonalToken:
    """A personal access token (`auth.personal`): one user's credential for the MCP endpoints,
    made by that user (or an administrator) rather than by an OAuth flow. `id` is public (lists,
    revocation, the session owner `auth.personal.client_id`); the secret is kept only as
    `token_hash`. `expires_at` None: never expires, which is only ever set when asked for."""

    id: str
    token_hash: str
    subject: str
    name: str
    scopes: tuple[str, ...]
    resource: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None = None
    # The memory its sessions work on (`tokens create --memory`); None: the default memory.
    memory: str | None = None


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What a resource server learns from a valid bearer token."""

    principal: Principal
    scopes: frozenset[str]
    resource: str
    expires_at: float
    grant_id: str = field(default="")


@dataclass(frozen=True, slots=True)
class BrowserLogin:
    """A browser login as the server records it (`auth.browser`). `authenticated_at` is when the
    user typed the password: the OpenID Connect `auth_time` of every grant approved under it."""

    user_id: str
    authenticated_at: float


@dataclass(frozen=True, slots=True)
class UpstreamLink:
    """A local account created by a sign-in through an upstream OpenID provider (`auth.upstream`),
    and the upstream identity it belongs to: the provider's `issuer` and the value of the
    configured identity claim (`sub` by default). The link is made on the first sign-in and
    followed on every later one; it is never made or followed by email or name."""

    issuer: str
    subject: str
    user_id: str
    created_at: float


@dataclass(frozen=True, slots=True)
class RememberedConsent:
    """An approval the user asked to remember (`auth.consent`). It stands in for the consent page
    only for a request whose user, client, redirect URI, resource and scope set are all equal to
    these: plain identifiers, no secret, so it is stored as is."""

    user_id: str
    client_id: str
    redirect_uri: str
    resource: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float
    # The memory that was chosen with it, which the skipped page would have asked for (None: the
    # default memory). Not part of what a request must match: one remembered approval per
    # client, address, resource and scopes, the latest choice replacing an earlier one.
    memory: str | None = None


@dataclass(frozen=True, slots=True)
class Revocation:
    """Credentials that stopped being valid, so that resource servers can drop live sessions.

    `client_id`/`grant_id` None mean "every client" / "every grant" of that subject; `subject`
    None means every user of that client (the client was removed). A revoked
    access token reports its grant although the grant's refresh token may still be alive: the
    client is expected to refresh, and a listener closing the sessions of that grant is what
    makes the revocation take effect immediately.
    """

    subject: str | None
    client_id: str | None
    grant_id: str | None
    # Only the sessions on this memory (a deleted memory); None: whatever their memory.
    memory: str | None = None

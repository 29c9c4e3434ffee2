"""Records the authorization server keeps, and the identity it hands to resource servers.

Every secret (authorization code, access token, refresh token) is represented here only by its
SHA-256 hash (`auth.crypto.hash_secret`): a leaked store reveals no usable credential, and
revocation is a delete. The storage schema that holds these records is documented next to each
backend (`server/storage/`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an MCP session is bound to exactly this triple (DECISIONS.md #4).

    A refreshed token of the same principal keeps its sessions; another user's or another client's
    token on the same session id is treated as an unknown session.
    """

    issuer: str
    subject: str
    client_id: str


@dataclass(frozen=True, slots=True)
class User:
    """A local account. `id` is the OAuth subject: random and never reused, so a removed and
    re-created username does not inherit the old account's memory or tokens."""

    id: str
    username: str
    password_hash: str
    created_at: float


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


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What a resource server learns from a valid bearer token."""

    principal: Principal
    scopes: frozenset[str]
    resource: str
    expires_at: float
    grant_id: str = field(default="")


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

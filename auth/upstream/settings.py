"""What the upstream sign-in needs to know: the provider, this server's client there, and who may
sign in. Built from the `upstream_*` settings (`server.config.Settings.upstream_settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CALLBACK_PATH = "/login/upstream/callback"
DEFAULT_SCOPES = ("openid", "profile", "email")
# Parameters of the upstream authorization request that this server sets itself.
RESERVED_PARAMS = frozenset({"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                             "code_challenge", "code_challenge_method", "response_mode", "request",
                             "request_uri"})

UpstreamCheck = Literal["off", "refresh"]


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """Who of the provider's users may sign in here (`auth.upstream.admission`). `domains` and
    `users` are alternatives (matching one of them admits); `required_claim` (name, value) must
    hold as well. Nothing configured admits everyone the provider signs in."""

    domains: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    required_claim: tuple[str, str] | None = None

    @property
    def open(self) -> bool:
        return not (self.domains or self.users or self.required_claim)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """`issuer` exactly as configured (discovery must confirm it, `auth.upstream.discovery`).
    `client_secret` None: a public client at the provider (PKCE only). `token_keys`: AES-256
    keys for the kept upstream tokens, the first one encrypting (`auth.upstream.kept`)."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    authorize_params: tuple[tuple[str, str], ...] = ()
    identity_claim: str = "sub"
    policy: AdmissionPolicy = AdmissionPolicy()
    check: UpstreamCheck = "off"
    token_keys: tuple[bytes, ...] = field(default=(), repr=False)

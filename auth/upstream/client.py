"""This server as an OpenID Connect relying party of the upstream provider: the authorization
request, the code exchange and refresh (RFC 6749 sections 4.1.3 and 6, PKCE RFC 7636), UserInfo
(OpenID Connect Core section 5.3), the start-up check, and the account's claims.

Client authentication at the token endpoint: `client_secret_basic` or `client_secret_post` with a
secret, `none` without one (a public client: PKCE alone). Which of the first two the provider
accepts for this client is not in its discovery document (Auth0 takes only the one chosen in the
application's settings), so the start-up check finds out: it sends a code exchange with a code
that cannot exist. A provider answers `invalid_grant` once the client is authenticated, and
`invalid_client` (or 401) when not: the method that gets past client authentication is used
from then on, and none getting past is the "bad secret" start-up error. When the provider cannot
be reached at start-up, the first sign-in runs the same check.

Claims: the ID token's, validated (`auth.upstream.id_token`). When it lacks a claim this server
needs (the identity claim, the admission policy's, a name for the account) and the provider has
a UserInfo endpoint, UserInfo fills them in (several providers put profile claims only there);
its `sub` must be the ID token's (section 5.3.2).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from auth.crypto import new_secret
from auth.upstream import discovery, id_token
from auth.upstream.admission import refusal
from auth.upstream.discovery import Keys, Metadata
from auth.upstream.http import HTTP, BadResponse, Misconfigured, Refused, Response, Unavailable
from auth.upstream.settings import UpstreamSettings

log = logging.getLogger(__name__)

# What a refresh-time or sign-in refusal of the provider looks like (RFC 6749 section 5.2 and
# the errors providers use for a blocked user); 401 is the client's own authentication.
REFUSALS = frozenset({"invalid_grant", "access_denied", "unauthorized", "login_required", "consent_required",
                      "interaction_required"})
NAME_CLAIMS = ("preferred_username", "email", "nickname", "name")


@dataclass(frozen=True, slots=True)
class Tokens:
    """A token response of the provider. Never logged, never sent anywhere but back to it."""

    access_token: str = field(repr=False)
    id_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)


def challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class UpstreamClient:
    def __init__(self, settings: UpstreamSettings, redirect_uri: str, *, clock: Callable[[], float] = time.time,
                 http: HTTP | None = None) -> None:
        self.settings = settings
        self.redirect_uri = redirect_uri
        self.clock = clock
        self.http = http or HTTP()
        self.keys = Keys(self.http)
        self._metadata: Metadata | None = None
        self._fetched_at = 0.0
        self._auth_method: str | None = None
        self._lock = asyncio.Lock()

    # Discovery and the start-up check

    async def metadata(self) -> Metadata:
        """The discovery document, fetched on first use and again after an hour (the last good
        one is kept while the provider cannot be reached)."""
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._fetched_at > discovery.METADATA_TTL:
                try:
                    self._metadata, warnings = await discovery.fetch(self.http, self.settings.issuer)
                except Unavailable:
                    if self._metadata is None:
                        raise
                    log.warning("the upstream provider's discovery document cannot be fetched again; "
                                "using the one fetched before")
                else:
                    self._fetched_at = time.monotonic()
                    for warning in warnings:
                        log.warning("upstream provider %s: %s", self.settings.issuer, warning)
            return self._metadata

    async def check(self) -> list[str]:
        """Fetch and validate the discovery document and the keys, and find how the provider
        authenticates this client. Warnings for the start-up log; raises `Misconfigured` (the
        operator must act) or `Unavailable` (the provider could not be reached now)."""
        metadata, warnings = await discovery.fetch(self.http, self.settings.issuer)
        self._metadata, self._fetched_at = metadata, time.monotonic()
        await self._client_auth(metadata)
        await self.keys.key(metadata.jwks_uri, None, metadata.id_token_algs[0])
        if self.settings.check == "refresh" and metadata.userinfo_endpoint is None and not self.settings.policy.open:
            warnings.append("the provider has no UserInfo endpoint: at refresh, the admission policy is checked "
                            "only against the claims of refreshed ID tokens")
        return warnings

    async def _client_auth(self, metadata: Metadata) -> str:
        if self._auth_method is not None:
            return self._auth_method
        if self.settings.client_secret is None:
            candidates = ["none"]
        else:
            candidates = [m for m in metadata.token_auth_methods if m in ("client_secret_basic", "client_secret_post")]
            if not candidates:
                offered = list(metadata.token_auth_methods)
                raise Misconfigured(f"the provider authenticates clients only with {offered}; this server uses "
                                    "client_secret_basic or client_secret_post")
        probe = {"grant_type": "authorization_code", "code": "memory-mcp-start-up-check-" + new_secret(8),
                 "redirect_uri": self.redirect_uri, "code_verifier": new_secret(48)}
        for method in candidates:
            response = await self._post_token(metadata, probe, method)
            if response.error == "unauthorized_client":
                raise Misconfigured("the provider does not allow this client the authorization code grant: enable "
                                    "it for upstream_client_id in the provider's application settings")
            if response.status != 401 and response.error != "invalid_client":
                self._auth_method = method
                return method
        if self.settings.client_secret is None:
            raise Misconfigured("the provider refused upstream_client_id as a public client (invalid_client): set "
                                "upstream_client_secret, or check upstream_client_id")
        raise Misconfigured("the provider refused this server's client credentials (invalid_client): check "
                            "upstream_client_id and upstream_client_secret (or upstream_client_secret_file)")

    # Requests

    async def _post_token(self, metadata: Metadata, form: dict[str, str], method: str) -> Response:
        data, headers = dict(form), {}
        client_id, secret = self.settings.client_id, self.settings.client_secret or ""
        if method == "client_secret_basic":
            # RFC 6749 section 2.3.1: each part form-encoded before the Basic encoding.
            pair = f"{urlencode({'': client_id})[1:]}:{urlencode({'': secret})[1:]}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            data["client_id"] = client_id
            if method == "client_secret_post":
                data["client_secret"] = secret
        return await self.http.request("POST", metadata.token_endpoint, "the provider's token endpoint",
                                       data=data, headers=headers)

    async def _token(self, form: dict[str, str]) -> tuple[Response, Tokens | None]:
        metadata = await self.metadata()
        response = await self._post_token(metadata, form, await self._client_auth(metadata))
        if response.status == 401 or response.error in ("invalid_client", "unauthorized_client"):
            raise Misconfigured(f"the provider's token endpoint refused this server as a client ({response.error}): "
                                "check upstream_client_id and upstream_client_secret")
        if response.status != 200:
            return response, None
        access, token_type = response.field("access_token"), response.field("token_type")
        if not access or not token_type or token_type.lower() != "bearer":
            raise BadResponse("the provider's token response has no Bearer access_token")
        return response, Tokens(access, response.field("id_token"), response.field("refresh_token"))

    def authorization_url(self, metadata: Metadata, *, state: str, nonce: str, verifier: str,
                          prompt_login: bool = False, max_age: int | None = None) -> str:
        params = dict(self.settings.authorize_params)
        params.update(response_type="code", client_id=self.settings.client_id, redirect_uri=self.redirect_uri,
                      scope=" ".join(self.settings.scopes), state=state, nonce=nonce,
                      code_challenge=challenge(verifier), code_challenge_method="S256")
        if prompt_login:
            params["prompt"] = " ".join(dict.fromkeys([*params.get("prompt", "").split(), "login"]))
        if max_age is not None:
            params["max_age"] = str(max_age)
        endpoint = metadata.authorization_endpoint
        return endpoint + ("&" if urlsplit(endpoint).query else "?") + urlencode(params)

    async def exchange(self, code: str, verifier: str) -> Tokens:
        response, tokens = await self._token({"grant_type": "authorization_code", "code": code,
                                               "redirect_uri": self.redirect_uri, "code_verifier": verifier})
        if tokens is None:
            if response.error in REFUSALS:
                raise Refused(f"the provider refused the sign-in code ({response.error}): it was already used or "
                              "has expired")
            raise BadResponse(f"the provider's token endpoint answered {response.error}")
        if not tokens.id_token:
            raise BadResponse("the provider returned no ID token: upstream_scopes must include openid")
        return tokens

    async def refresh(self, refresh_token: str) -> Tokens:
        response, tokens = await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})
        if tokens is None:
            if response.error in REFUSALS and response.status in (400, 403):
                raise Refused(f"the provider refused the refresh token ({response.error})")
            raise BadResponse(f"the provider's token endpoint answered {response.error} to a refresh")
        return tokens

    async def userinfo(self, metadata: Metadata, access_token: str) -> dict[str, object]:
        if metadata.userinfo_endpoint is None:
            return {}
        response = await self.http.request("GET", metadata.userinfo_endpoint, "the provider's UserInfo endpoint",
                                           headers={"Authorization": f"Bearer {access_token}"})
        if response.status in (401, 403):
            raise Refused(f"the provider's UserInfo endpoint refused the access token (HTTP {response.status})")
        if response.status != 200 or response.body is None:
            raise BadResponse(f"the provider's UserInfo endpoint answered HTTP {response.status} without a JSON object")
        return response.body

    # Claims

    def policy_claims(self) -> set[str]:
        """The claims the admission policy reads."""
        policy = self.settings.policy
        needed = set()
        if policy.domains or policy.users:
            needed |= {"email", "email_verified"}
        if policy.required_claim is not None:
            needed.add(policy.required_claim[0])
        return needed

    async def claims(self, tokens: Tokens, *, nonce: str | None, max_age: int | None = None) -> dict[str, object]:
        """The account's claims from a token response (`nonce` None: from a refresh, with or without
        an ID token), ID token validated, completed from UserInfo when needed."""
        metadata = await self.metadata()
        claims: dict[str, object] = {}
        if tokens.id_token is not None:
            claims = await id_token.validate(tokens.id_token, metadata=metadata, keys=self.keys,
                                             client_id=self.settings.client_id, now=self.clock(), nonce=nonce,
                                             access_token=tokens.access_token, max_age=max_age)
        elif nonce is not None:
            raise BadResponse("the provider returned no ID token")
        missing = {self.settings.identity_claim, *self.policy_claims()} - set(claims)
        if nonce is not None and not any(name in claims for name in NAME_CLAIMS):
            missing.add("preferred_username")
        if missing and metadata.userinfo_endpoint is not None:
            info = await self.userinfo(metadata, tokens.access_token)
            if "sub" in claims and info.get("sub") != claims["sub"]:
                raise BadResponse("the provider's UserInfo describes another user than its ID token (sub)")
            claims = {**info, **claims}
        return claims

    def identity(self, claims: dict[str, object]) -> str:
        name = self.settings.identity_claim
        value = claims.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise BadResponse(f"the provider gave no {name!r} claim, which upstream_identity_claim names")
        return value

    def refusal(self, identity: str, claims: dict[str, object]) -> str | None:
        return refusal(self.settings.policy, identity, claims)

    async def end_session_url(self, post_logout_redirect_uri: str) -> str | None:
        """RP-Initiated Logout 1.0, with `client_id` instead of an ID token hint (none is kept)."""
        try:
            metadata = await self.metadata()
        except (Unavailable, Misconfigured, BadResponse):
            return None
        if metadata.end_session_endpoint is None:
            return None
        query = urlencode({"client_id": self.settings.client_id, "post_logout_redirect_uri": post_logout_redirect_uri})
        endpoint = metadata.end_session_endpoint
        return endpoint + ("&" if urlsplit(endpoint).query else "?") + query

    async def close(self) -> None:
        await self.http.close()

"""OpenID Connect Discovery 1.0 of the upstream provider, and its signing keys (RFC 7517 JWKS).

The document comes from `<issuer>/.well-known/openid-configuration` (section 4). Its `issuer`
must be the configured one (section 4.3): a trailing slash is the only difference tolerated,
since Auth0's issuers end with one and people leave it out; from then on the document's issuer
is *the* issuer, compared byte for byte with every ID token's `iss` (the mix-up defence).

Refused at start-up (`Misconfigured`): no authorization, token or JWKS endpoint; no `code`
response type; endpoints that are not https (plain http only for a loopback issuer, for tests);
PKCE methods advertised without S256. A provider that advertises no PKCE method at all (Entra ID
does not, although it supports S256) gets PKCE anyway, with a warning: RFC 7636 servers that do
not support it ignore the parameters, and the nonce still binds the code to this browser.

Keys: fetched on first use and kept; an ID token whose `kid` is not among them makes one refetch
(a rotation at the provider), at most once per `REFETCH_INTERVAL` seconds so that no stream of
unknown kids turns into a stream of fetches. Keys are imported with their own `alg`/`use` when
they state them, and only public keys are accepted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from auth.upstream.http import HTTP, BadResponse, Misconfigured

log = logging.getLogger(__name__)

PATH = "/.well-known/openid-configuration"
# Asymmetric algorithms only: `none` and the HMAC ones (HS*) are never accepted for ID tokens (a
# provider's public key used as an HMAC secret is the classic forgery).
ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
REFETCH_INTERVAL = 30.0
# How long a fetched discovery document is used before it is fetched again.
METADATA_TTL = 3600.0

PublicKey = RSAKey | ECKey | OKPKey


@dataclass(frozen=True, slots=True)
class Metadata:
    """What this server uses of the provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    id_token_algs: tuple[str, ...]
    token_auth_methods: tuple[str, ...]
    pkce_advertised: bool
    iss_parameter: bool


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str, *, plain_http: bool) -> str:
    """An endpoint or issuer URL: https (http only for loopback when `plain_http`), no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise Misconfigured(f"{what} {url!r} is not a valid URL") from None
    if parts.fragment or not host or parts.username or parts.password:
        raise Misconfigured(f"{what} {url!r} must be an absolute URL without user info or fragment")
    if parts.scheme != "https" and not (parts.scheme == "http" and plain_http and is_loopback(host)):
        raise Misconfigured(f"{what} {url!r} must be https (plain http only on loopback, for tests)")
    return url


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + PATH


def parse(configured_issuer: str, doc: dict[str, object]) -> tuple[Metadata, list[str]]:
    """The metadata, and warnings for the start-up log; `Misconfigured` for a document this server
    cannot sign in with (the message names what and the setting to change)."""
    plain = urlsplit(configured_issuer).scheme == "http"

    def text(name: str, required: bool = True) -> str | None:
        value = doc.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise Misconfigured(f"the provider's discovery document has no {name}")
        return check_url(value, f"the provider's {name}", plain_http=plain)

    def names(name: str) -> tuple[str, ...] | None:
        value = doc.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Misconfigured(f"the provider's discovery document has a malformed {name}")
        return tuple(value)

    issuer = doc.get("issuer")
    if not isinstance(issuer, str) or issuer.rstrip("/") != configured_issuer.rstrip("/"):
        raise Misconfigured(f"the discovery document at {discovery_url(configured_issuer)} names the issuer "
                            f"{issuer!r}, not {configured_issuer!r}: set upstream_issuer to the provider's exact "
                            "issuer")
    warnings = []
    responses = names("response_types_supported") or ()
    if "code" not in responses:
        raise Misconfigured("the provider does not offer the authorization code flow (no 'code' in "
                            "response_types_supported)")
    pkce = names("code_challenge_methods_supported")
    if pkce is not None and "S256" not in pkce:
        raise Misconfigured(f"the provider does not support PKCE with S256 (code_challenge_methods_supported: "
                            f"{list(pkce)}); this server signs in only with PKCE")
    if pkce is None:
        warnings.append("the provider's discovery document does not say whether it supports PKCE; PKCE (S256) "
                        "is sent anyway")
    algs = names("id_token_signing_alg_values_supported") or ("RS256",)
    usable = tuple(a for a in algs if a in ASYMMETRIC_ALGS)
    if not usable:
        raise Misconfigured(f"the provider signs ID tokens only with {list(algs)}; this server accepts "
                            f"{', '.join(ASYMMETRIC_ALGS)} (never none or HS*)")
    methods = names("token_endpoint_auth_methods_supported") or ("client_secret_basic",)
    metadata = Metadata(
        issuer=issuer, authorization_endpoint=text("authorization_endpoint") or "",
        token_endpoint=text("token_endpoint") or "", jwks_uri=text("jwks_uri") or "",
        userinfo_endpoint=text("userinfo_endpoint", required=False),
        end_session_endpoint=text("end_session_endpoint", required=False),
        id_token_algs=usable, token_auth_methods=methods, pkce_advertised=pkce is not None,
        iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True,
    )
    return metadata, warnings


async def fetch(http: HTTP, configured_issuer: str) -> tuple[Metadata, list[str]]:
    url = discovery_url(configured_issuer)
    response = await http.request("GET", url, "the provider's discovery document")
    if response.status != 200 or response.body is None:
        raise Misconfigured(f"{url} answered HTTP {response.status}" + ("" if response.status != 200 else
                            " without a JSON object") + ": check upstream_issuer")
    return parse(configured_issuer, response.body)


class Keys:
    """The provider's signing keys, with rotation: an unknown `kid` refetches (rate-limited)."""

    def __init__(self, http: HTTP, clock: Callable[[], float] = time.monotonic,
                 refetch_interval: float = REFETCH_INTERVAL) -> None:
        self.http = http
        self.clock = clock
        self.refetch_interval = refetch_interval
        self._keys: list[PublicKey] = []
        self._fetched_for: str | None = None
        self._last_refetch: float | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self, jwks_uri: str) -> None:
        response = await self.http.request("GET", jwks_uri, "the provider's JWKS")
        keys = (response.body or {}).get("keys")
        if response.status != 200 or not isinstance(keys, list):
            raise BadResponse(f"the provider's JWKS ({jwks_uri}) answered HTTP {response.status} without keys")
        imported: list[PublicKey] = []
        for entry in keys:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = KeySet.import_key_set({"keys": [entry]}).keys[0]
            except (JoseError, ValueError, TypeError, KeyError):
                continue  # a key type or curve we do not use; others may still verify
            if isinstance(key, RSAKey | ECKey | OKPKey) and not key.is_private:
                imported.append(key)
        self._keys = imported
        self._fetched_for = jwks_uri

    def _find(self, kid: str | None, alg: str) -> PublicKey | None:
        fits = [k for k in self._keys if k.get("alg") in (None, alg) and _kind_fits(k, alg)]
        if kid is None:
            return fits[0] if len(fits) == 1 else None
        return next((k for k in fits if k.kid == kid), None)

    async def key(self, jwks_uri: str, kid: str | None, alg: str) -> PublicKey | None:
        """The key that should have signed a token with this header, or None when there is none
        even after the one refetch allowed now."""
        async with self._lock:
            if self._fetched_for != jwks_uri:
                await self._fetch(jwks_uri)
            found = self._find(kid, alg)
            if found is not None:
                return found
            now = self.clock()
            if self._last_refetch is not None and now - self._last_refetch < self.refetch_interval:
                return None
            self._last_refetch = now
            log.info("ID token signed with an unknown key (kid %r): fetching the provider's JWKS again", kid)
            await self._fetch(jwks_uri)
            return self._find(kid, alg)


def _kind_fits(key: PublicKey, alg: str) -> bool:
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAKey)
    if alg.startswith("ES"):
        return isinstance(key, ECKey)
    return isinstance(key, OKPKey)

"""ID Token validation (OpenID Connect Core 1.0 section 3.1.3.7), with joserfc for the signature.

In order, each failure a `BadResponse` naming the check (and never the token):

1. the header's `alg` is one the provider advertises *and* asymmetric (never `none`, never
   HS*: with HS256 a provider's public key would be an HMAC secret anyone has), no `crit`;
2. the signature verifies with the provider's key named by `kid` (`auth.upstream.discovery.Keys`:
   an unknown `kid` refetches the JWKS once, which is how a rotation at the provider is followed);
3. `iss` is exactly the discovered issuer (mix-up defence: a token of another provider, or of
   another tenant of the same one, fails here);
4. `aud` contains our client id; with several audiences `azp` must be present, and whenever `azp`
   is present it must be our client id;
5. `exp` is not past and `iat` not in the future, with `LEEWAY` seconds of clock skew;
6. `nonce` equals the one this browser's sign-in sent (constant-time), at sign-in; ID tokens
   from a refresh carry none to compare (section 12.2);
7. `sub` is a non-empty string; `at_hash`, when present, matches the access token;
8. when the sign-in asked for `max_age`, `auth_time` is present and recent enough.
"""

from __future__ import annotations

import base64
import hashlib
import json
import numbers

from joserfc import jws
from joserfc.errors import JoseError

from auth.crypto import same
from auth.upstream.discovery import Keys, Metadata
from auth.upstream.http import BadResponse

LEEWAY = 120


def _header(token: str) -> dict[str, object]:
    try:
        segment = token.split(".")[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, IndexError):
        raise BadResponse("the provider's ID token is not a signed JWT") from None
    if not isinstance(header, dict) or token.count(".") != 2:
        raise BadResponse("the provider's ID token is not a signed JWT (JWS compact form)")
    return header


def _number(claims: dict[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadResponse(f"the provider's ID token has a malformed {name}")
    return float(value)


def _at_hash(alg: str, access_token: str) -> str:
    bits = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
    digest = bits.get(alg[-3:], hashlib.sha512)(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


async def validate(token: str, *, metadata: Metadata, keys: Keys, client_id: str, now: float,
                   nonce: str | None, access_token: str | None = None, max_age: int | None = None) -> dict[str, object]:
    """The ID token's claims once every check above passed. `nonce` None: a token from a refresh."""
    header = _header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in metadata.id_token_algs:
        raise BadResponse(f"the provider's ID token is signed with {alg!r}; accepted: "
                          f"{', '.join(metadata.id_token_algs)}")
    if "crit" in header:
        raise BadResponse("the provider's ID token has critical header parameters this server does not know")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise BadResponse("the provider's ID token has a malformed kid")
    key = await keys.key(metadata.jwks_uri, kid, alg)
    if key is None:
        raise BadResponse(f"the provider's ID token is signed with a key its JWKS does not publish (kid {kid!r})")
    try:
        verified = jws.deserialize_compact(token, key, algorithms=[alg])
        claims = json.loads(verified.payload)
    except (JoseError, ValueError):
        raise BadResponse("the provider's ID token signature does not verify") from None
    if not isinstance(claims, dict):
        raise BadResponse("the provider's ID token payload is not a JSON object")
    if claims.get("iss") != metadata.issuer:
        raise BadResponse(f"the ID token was issued by {claims.get('iss')!r}, not by {metadata.issuer!r}")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or client_id not in audiences:
        raise BadResponse("the ID token is not meant for this server (aud does not name upstream_client_id)")
    azp = claims.get("azp")
    if (len(audiences) > 1 and azp is None) or (azp is not None and azp != client_id):
        raise BadResponse("the ID token was issued to another client (azp)")
    expires, issued = _number(claims, "exp"), _number(claims, "iat")
    if expires is None or issued is None:
        raise BadResponse("the ID token has no exp or iat")
    if now > expires + LEEWAY:
        raise BadResponse("the ID token has expired (check this server's clock if this repeats)")
    if issued > now + LEEWAY:
        raise BadResponse("the ID token was issued in the future (check this server's clock)")
    if nonce is not None:
        got = claims.get("nonce")
        if not isinstance(got, str) or not same(got, nonce):
            raise BadResponse("the ID token's nonce is not the one this sign-in sent")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise BadResponse("the ID token has no sub")
    expected_hash = claims.get("at_hash")
    if expected_hash is not None and access_token is not None and (
            not isinstance(expected_hash, str) or not same(expected_hash, _at_hash(alg, access_token))):
        raise BadResponse("the ID token's at_hash does not match the access token")
    if max_age is not None:
        auth_time = _number(claims, "auth_time")
        if auth_time is None or now - auth_time > max_age + LEEWAY:
            raise BadResponse("the provider did not sign the user in as recently as the application asked (max_age)")
    return claims

"""RFC 7517 JSON Web Keys: the keys that sign ID tokens, kept in the store, and the JWKS endpoint.

Keys are RSA 2048 for RS256, the algorithm OpenID Connect makes mandatory (every relying-party
library verifies it). A key's `kid` is its RFC 7638 thumbprint, so a `kid` names one key
material everywhere: two processes cannot disagree about it, and decrypted keys can be cached by
it. The private JWK is stored encrypted (Fernet, under a key derived from the server's key file
with its own HKDF purpose): the database alone cannot sign a token.

Rotation (`rotate_signing_key`, also `memory-mcp keys rotate`) makes a new key current at once.
The previous key signs nothing more but stays in the JWKS until every ID token it signed has
expired (`id_token_ttl` plus `KEY_OVERLAP` for clock skew), so tokens already issued keep
verifying. Relying parties that cached the JWKS refetch it on an unknown `kid` (and the document
may be cached for `JWKS_MAX_AGE` only).

The first key is generated when first needed. If the current key cannot be decrypted (the key
file was replaced), a new one replaces it: its public half stays published, the old tokens verify.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken
from joserfc.jwk import KeySet, RSAKey

from auth import browser
from auth.models import SigningKey
from auth.server import AUTH_SERVER, AuthorizationServer
from auth.store import SigningKeyStore

log = logging.getLogger(__name__)

PATH = "/.well-known/jwks.json"
ALG = "RS256"
KEY_BITS = 2048
KEY_OVERLAP = 300
JWKS_MAX_AGE = 300

# Decrypted private keys by kid (a thumbprint, so an entry can never be stale).
_private_keys: dict[str, RSAKey] = {}
_CACHE_LIMIT = 16


def private_key_cipher(cookie_key: bytes) -> Fernet:
    """The cipher of private keys at rest, derived from the server's key file (a purpose of its own,
    so nothing sealed for the browser can be read as a key or the reverse)."""
    return browser.derive_fernet(cookie_key, "signing keys")


def new_signing_key(key_sealer: Fernet, now: float) -> SigningKey:
    key = RSAKey.generate_key(KEY_BITS, parameters={"use": "sig", "alg": ALG}, private=True)
    kid = key.thumbprint()
    private = json.dumps({**key.as_dict(private=True), "kid": kid})
    public = json.dumps({**key.as_dict(private=False), "kid": kid})
    return SigningKey(kid=kid, alg=ALG, public_jwk=public, private_jwk=key_sealer.encrypt(private.encode()).decode(),
                      created_at=now)


async def rotate_signing_key(store: SigningKeyStore, key_sealer: Fernet, now: float, id_token_ttl: float) -> str:
    """Make a new key current; the previous one stays published until the ID tokens it signed
    have expired. Returns the new `kid`. Safe while servers run: they read keys from the store."""
    key = await asyncio.to_thread(new_signing_key, key_sealer, now)
    await store.add_signing_key(key, now, now + id_token_ttl + KEY_OVERLAP, replace=True)
    return key.kid


def _decrypt(key_sealer: Fernet, stored: SigningKey) -> RSAKey:
    cached = _private_keys.get(stored.kid)
    if cached is None:
        cached = RSAKey.import_key(json.loads(key_sealer.decrypt(stored.private_jwk.encode())))
        if len(_private_keys) >= _CACHE_LIMIT:
            _private_keys.clear()
        _private_keys[stored.kid] = cached
    return cached


async def current_key(server: AuthorizationServer) -> tuple[str, RSAKey]:
    """The key to sign with now, creating the first one when there is none."""
    now = server.clock()
    keys = await server.store.signing_keys(now)
    if not keys or keys[0].retired_at is not None:
        key = await asyncio.to_thread(new_signing_key, server.key_sealer, now)
        # replace=False: of two processes creating a first key at once, one key is kept.
        await server.store.add_signing_key(key, now, now, replace=False)
        keys = await server.store.signing_keys(now)
    current = keys[0]
    try:
        return current.kid, _decrypt(server.key_sealer, current)
    except InvalidToken:
        log.warning("the ID-token signing key %s cannot be decrypted with this server's key file; "
                    "replacing it (its public key stays published)", current.kid)
        kid = await rotate_signing_key(server.store, server.key_sealer, now, server.settings.id_token_ttl)
        keys = await server.store.signing_keys(now)
        return kid, _decrypt(server.key_sealer, keys[0])


async def public_keys(server: AuthorizationServer) -> KeySet:
    """Every published key (current and retired-but-not-expired), public halves only."""
    await current_key(server)
    keys = await server.store.signing_keys(server.clock())
    return KeySet([RSAKey.import_key(json.loads(k.public_jwk)) for k in keys])


async def handle(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    keys = await public_keys(server)
    return web.json_response(keys.as_dict(private=False),
                             headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})

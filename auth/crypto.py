"""Random secrets, their stored form, and constant-time comparison."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret(nbytes: int = 32) -> str:
    """An unguessable URL-safe string (256 bits by default)."""
    return secrets.token_urlsafe(nbytes)


def hash_secret(secret: str) -> str:
    """The only form in which a bearer secret is stored.

    A plain SHA-256 is enough here (unlike for passwords): the secrets are 256-bit random strings,
    so there is nothing to brute-force, and the hash must be cheap because it runs on every request.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())

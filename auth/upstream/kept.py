"""The upstream refresh token kept for `upstream_check=refresh`, and the check it serves.

Kept only in that mode, and only the refresh token (an access token or ID token is never kept).
At rest it is sealed with AES-256-GCM under the first of the configured `upstream_token_keys`
(each key named in the sealed string by the start of its SHA-256, so every configured key still
opens what it sealed: rotation is "add the new key first, remove the old one once every user has
refreshed"), with the user id as associated data, so a sealed value moved to another account does
not open. It never leaves the server: it is sent to the provider's token endpoint only.

The check runs at each refresh of one of our grants of an upstream account (`auth.token`):

* the provider refreshes the token: the account is still allowed (and the admission policy is
  applied again to the claims that come back); a rotated refresh token replaces the kept one;
* the provider refuses (`invalid_grant`, a blocked or deleted user, a policy that no longer
  admits): the account is not allowed any more; the caller signs it out everywhere;
* the provider cannot answer: `Unavailable`, which the caller turns into a retryable 503 and
  never into a sign-out. An upstream access token that expired plays no part at all: our grants
  live by our own lifetimes.

Two refreshes of one user at once (two clients, two server processes) must not both use the
refresh token: providers that rotate it treat the second use as theft and revoke everything. So
a check first *claims* the kept value with a compare-and-set in the store (the claim is part of
the sealed record, and expires after `CLAIM_SECONDS` if its process dies); a check that finds a
claim waits for the result, and one that finds a result younger than `FRESH_SECONDS` uses it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from auth.store import AuthStore
from auth.upstream.client import UpstreamClient
from auth.upstream.http import BadResponse, Misconfigured, Refused, Unavailable

log = logging.getLogger(__name__)

CLAIM_SECONDS = 30.0
FRESH_SECONDS = 2.0
POLL_SECONDS = 0.2
_AAD = b"memory-mcp upstream tokens\x00"


@dataclass(frozen=True, slots=True)
class Kept:
    refresh_token: str
    # When the provider last confirmed the account (0: never since the sign-in), and until when a
    # check in progress holds the record.
    checked_at: float = 0.0
    claimed_until: float = 0.0


class TokenCipher:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("no key for the kept upstream tokens")
        self._keys = {self.key_id(key): AESGCM(key) for key in keys}
        self._current = self.key_id(keys[0])

    @staticmethod
    def key_id(key: bytes) -> str:
        return hashlib.sha256(key).hexdigest()[:8]

    def seal(self, kept: Kept, user_id: str) -> str:
        nonce = os.urandom(12)
        plain = json.dumps({"rt": kept.refresh_token, "checked": kept.checked_at, "claim": kept.claimed_until})
        sealed = self._keys[self._current].encrypt(nonce, plain.encode(), _AAD + user_id.encode())
        return f"{self._current}.{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"

    def open(self, sealed: str, user_id: str) -> Kept | None:
        """None when no configured key opens it (its key was removed) or it belongs to another user."""
        key_id, _, data = sealed.partition(".")
        cipher = self._keys.get(key_id)
        if cipher is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(data.encode("ascii"))
            plain = json.loads(cipher.decrypt(raw[:12], raw[12:], _AAD + user_id.encode()))
            return Kept(str(plain["rt"]), float(plain["checked"]), float(plain["claim"]))
        except (InvalidTag, ValueError, KeyError, TypeError, binascii.Error):
            return None


class AccountCheck:
    """Is this upstream account still allowed? (module docstring)."""

    def __init__(self, client: UpstreamClient, store: AuthStore, cipher: TokenCipher,
                 clock: Callable[[], float]) -> None:
        self.client = client
        self.store = store
        self.cipher = cipher
        self.clock = clock

    async def keep(self, user_id: str, refresh_token: str) -> None:
        """After a sign-in: the refresh token to check with from now on."""
        await self.store.set_upstream_tokens(user_id, self.cipher.seal(Kept(refresh_token), user_id))

    async def still_allowed(self, user_id: str, identity: str) -> bool:
        """True or False as the provider says; `Unavailable` when it cannot say now."""
        claimed = await self._claim(user_id)
        if claimed is None:
            return False
        if isinstance(claimed, bool):
            return claimed
        kept, sealed = claimed
        try:
            tokens = await self.client.refresh(kept.refresh_token)
            claims = await self.client.claims(tokens, nonce=None)
            if claims and self.client.settings.identity_claim in claims and self.client.identity(claims) != identity:
                raise Refused("the provider's refreshed tokens name another user")
            # The policy is applied to what came back only when it holds every claim the policy
            # reads: a refresh answer without them says nothing against the account.
            refused = (self.client.refusal(identity, claims)
                       if claims and self.client.policy_claims() <= set(claims) else None)
            if refused:
                raise Refused(refused)
        except Refused as exc:
            log.warning("upstream account of user %s is no longer allowed: %s", user_id, exc)
            await self.store.set_upstream_tokens(user_id, None)
            return False
        except (Unavailable, BadResponse, Misconfigured) as exc:
            if not isinstance(exc, Unavailable):
                log.error("checking the upstream account of user %s failed: %s", user_id, exc)
            await self.store.set_upstream_tokens(user_id, self.cipher.seal(replace(kept, claimed_until=0.0), user_id),
                                                 replacing=sealed)
            raise Unavailable(str(exc)) from None
        fresh = Kept(tokens.refresh_token or kept.refresh_token, checked_at=self.clock())
        await self.store.set_upstream_tokens(user_id, self.cipher.seal(fresh, user_id), replacing=sealed)
        return True

    async def _claim(self, user_id: str) -> tuple[Kept, str] | bool | None:
        """The kept record, claimed for this check (with the sealed claim to release it by); True
        when another check confirmed the account a moment ago; None when nothing usable is kept."""
        deadline = self.clock() + CLAIM_SECONDS
        while True:
            sealed = await self.store.get_upstream_tokens(user_id)
            if sealed is None:
                log.warning("no upstream token kept for user %s (signed in before upstream_check=refresh, or "
                            "signed out): the client must sign in again", user_id)
                return None
            kept = self.cipher.open(sealed, user_id)
            if kept is None:
                log.warning("the upstream token kept for user %s opens with none of upstream_token_keys: the "
                            "client must sign in again", user_id)
                return None
            now = self.clock()
            if 0 <= now - kept.checked_at < FRESH_SECONDS:
                return True
            if kept.claimed_until > now:
                if now > deadline:
                    raise Unavailable("another check of this account is still waiting for the provider")
                await asyncio.sleep(POLL_SECONDS)
                continue
            claim = self.cipher.seal(replace(kept, claimed_until=now + CLAIM_SECONDS), user_id)
            if await self.store.set_upstream_tokens(user_id, claim, replacing=sealed):
                return kept, claim

"""RFC 6750 bearer tokens, from the resource server's side: who is calling `/mcp` and `/sse`.

Every 401 carries a `WWW-Authenticate: Bearer` challenge pointing at the protected resource
metadata of the path that was called, with the scopes needed for normal use: Codex only refreshes
on a 401 that has it, and all clients start discovery from it (docs/protocol.md#B2, #G2).
`error="invalid_token"` is added only when a token was actually presented (RFC 6750 section 3.1).

A personal access token (`auth.personal`, told apart by its prefix) is accepted here exactly like
an OAuth access token: the same audience check and the same scopes, with a principal of its own
(`auth.personal.client_id`). Its last use is written to the store at most once a minute per token,
in a task of its own: the request never waits for that write.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from auth import personal
from auth.crypto import hash_secret
from auth.errors import OAuth2Error
from auth.models import AccessGrant, PersonalToken, Principal
from auth.rfc8707 import normalize_resource
from auth.rfc9728 import metadata_url
from auth.scopes import join
from auth.settings import AuthSettings
from auth.store import AuthStore

# A verified token is remembered this long, so that a busy session costs one store lookup a
# second instead of one per request. Revocations in this process clear it at once (`forget`);
# one made by another process takes effect here within this time, the same bound as the
# revocation log that ends live sessions.
VERIFIED_CACHE_SECONDS = 1.0
VERIFIED_CACHE_SIZE = 10_000

log = logging.getLogger(__name__)

# RFC 6750 section 2.1 b64token; anything else cannot be one of our tokens, so no lookup is spent.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{1,512}=*")


class BearerError(OAuth2Error):
    """A refused request with its RFC 6750 challenge. Raised inside this server's endpoints it is
    translated by `auth.errors.middleware`; a resource server elsewhere (server/app.py) sends
    `response()` itself. `reason`, for counting refusals, is one of `missing`, `malformed`,
    `invalid_or_expired` (the store keeps no expired token, so the two look alike), `wrong_resource`
    and `insufficient_scope`."""

    def __init__(self, status: int, challenge: str, error: str, description: str, reason: str) -> None:
        super().__init__(error, description, status, {"WWW-Authenticate": challenge})
        self.reason = reason

    @property
    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def response(self, page: bool = False) -> web.Response:
        # Not cached, as section 5.3 asks; no Pragma here, unlike the token endpoint's errors.
        return web.json_response(self.body, status=self.status,
                                 headers={**self.headers, "Cache-Control": "no-store"})


class BearerVerifier:
    def __init__(self, settings: AuthSettings, store: AuthStore, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._resources = frozenset(r for r in map(normalize_resource, settings.resources) if r)
        self._verified: OrderedDict[str, tuple[AccessGrant, float]] = OrderedDict()
        # Personal access token id -> when this process last wrote its use.
        self._noted: OrderedDict[str, float] = OrderedDict()
        self._writes: set[asyncio.Task[None]] = set()

    def forget(self) -> None:
        """Drop every remembered verification: call on any revocation, so that it takes effect
        in this process at once."""
        self._verified.clear()

    def _unauthorized(self, resource_path: str, error: str | None, description: str, reason: str) -> BearerError:
        challenge = (f'Bearer resource_metadata="{metadata_url(self.settings, resource_path)}", '
                     f'scope="{join(self.settings.scopes_supported)}"')
        if error is not None:
            challenge += f', error="{error}", error_description="{description}"'
        return BearerError(401, challenge, error or "invalid_request", description, reason)

    def insufficient_scope(self, resource_path: str, scope: str) -> BearerError:
        """403 asking for `scope` (the full set needed, already granted scopes included: clients
        re-authorize with exactly what the challenge names)."""
        challenge = (f'Bearer error="insufficient_scope", scope="{scope}", '
                     f'resource_metadata="{metadata_url(self.settings, resource_path)}"')
        return BearerError(403, challenge, "insufficient_scope", f"this request needs the scope {scope!r}",
                           "insufficient_scope")

    async def verify(self, authorization: str | None, resource_path: str) -> AccessGrant:
        if not authorization:
            raise self._unauthorized(resource_path, None, "an access token is required", "missing")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            # Another scheme is not a presented bearer token: a plain challenge (section 3.1).
            raise self._unauthorized(resource_path, None, "use the Bearer authentication scheme", "missing")
        token = token.strip()
        if _B64TOKEN.fullmatch(token) is None:
            raise self._unauthorized(resource_path, "invalid_token", "the access token is malformed", "malformed")
        now = self.clock()
        token_hash = hash_secret(token)
        remembered = self._verified.get(token_hash)
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        if personal.is_personal(token):
            grant = await self._personal(token, token_hash, resource_path, now)
        else:
            record = await self.store.get_token(token_hash, now)
            if record is None or record.kind != "access" or record.expires_at <= now:
                raise self._unauthorized(resource_path, "invalid_token", "the access token is invalid or expired",
                                         "invalid_or_expired")
            self._check_resource(record.resource, resource_path)
            grant = AccessGrant(
                principal=Principal(self.settings.issuer, record.subject, record.client_id, record.memory or ""),
                scopes=frozenset(record.scopes),
                resource=record.resource,
                expires_at=record.expires_at,
                grant_id=record.grant_id,
            )
        self._verified[token_hash] = (grant, min(now + VERIFIED_CACHE_SECONDS, grant.expires_at))
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return grant

    def _check_resource(self, resource: str, resource_path: str) -> None:
        if normalize_resource(resource) not in self._resources:
            # Audience check (RFC 8707, MCP "token passthrough"): a token minted for another
            # resource is not ours to honour, even if this store happens to know it.
            raise self._unauthorized(resource_path, "invalid_token", "the access token is for another resource",
                                     "wrong_resource")

    async def _personal(self, token: str, token_hash: str, resource_path: str, now: float) -> AccessGrant:
        # A look-alike (wrong length, alphabet or checksum) costs no store lookup.
        record = await self.store.get_personal_token(token_hash, now) if personal.well_formed(token) else None
        if record is None:
            raise self._unauthorized(resource_path, "invalid_token",
                                     "the personal access token is invalid, expired or revoked", "invalid_or_expired")
        self._check_resource(record.resource, resource_path)
        self._note_use(record, now)
        owner = personal.client_id(record.id)
        return AccessGrant(
            principal=Principal(self.settings.issuer, record.subject, owner, record.memory or ""),
            scopes=frozenset(record.scopes),
            resource=record.resource,
            expires_at=math.inf if record.expires_at is None else record.expires_at,
            grant_id=owner,
        )

    def _note_use(self, record: PersonalToken, now: float) -> None:
        last = self._noted.get(record.id, record.last_used_at)
        if last is not None and 0 <= now - last < personal.LAST_USE_INTERVAL:
            return
        self._noted[record.id] = now
        self._noted.move_to_end(record.id)
        if len(self._noted) > VERIFIED_CACHE_SIZE:
            self._noted.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._write_use(record.id, now))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_use(self, token_id: str, now: float) -> None:
        try:
            await self.store.touch_personal_token(token_id, now)
        except Exception as exc:  # a lost "last used" is not worth failing anything for
            log.warning("could not record the use of personal access token %s: %s", token_id, exc)

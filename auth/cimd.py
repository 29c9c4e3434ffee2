"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document; MCP 2025-11-25).

With `AuthSettings.client_id_metadata_documents` on, a client may skip registration and use an
https URL as its `client_id`; the document at that URL is its registration. Codex uses
`https://chatgpt.com/oauth/codex/client.json`, Claude Code
`https://claude.ai/oauth/claude-code-client-metadata` (docs/protocol.md#D). Off by default:
advertising it switches those clients over, and it needs outbound HTTPS.

The fetch itself, fenced against server-side request forgery, is `auth.cimd_fetch`.

The document must be a JSON object whose `client_id` equals the URL exactly, carry no secret, and
pass the same field rules as a registration (`auth.rfc7591`), which also means
`token_endpoint_auth_method` "none". Redirect URIs are then matched as for any client
(`auth.rfc8252`: exact, port-agnostic on loopback, which Claude's portless
`http://localhost/callback` needs).

The result is stored as a `Client` whose id is the URL, with `verified_domain` (the host that
serves the document, for the consent page) and `metadata_expires_at` from Cache-Control max-age,
clamped to `auth.cimd_fetch`'s [`MIN_TTL`, `MAX_TTL`] (`DEFAULT_TTL` when absent). Storing rather than an in-process
cache means every instance and the consent step see the same record, and it is garbage-collected
like a registration. `/authorize` always uses a current document; `/token` and `/revoke` fall back
to the stored one when a re-fetch fails for a transient reason (network, 5xx, rate limit), so a
refresh does not fail, and make the client drop its tokens, because the document host blinked.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from auth.cimd_fetch import DEFAULT_FETCHER, ClientMetadataError, Document, is_document_url
from auth.errors import OAuth2Error
from auth.models import Client
from auth.rfc7591 import over_rate_limit, purge_clients, validate_metadata
from auth.server import AuthorizationServer

log = logging.getLogger(__name__)

_SECRET_FIELDS = ("client_secret", "client_secret_expires_at")


def client_from_document(url: str, document: Document, now: float, issued_at: int) -> Client:
    body = document.body
    if body.get("client_id") != url:
        raise ClientMetadataError("the document's client_id must equal the URL it was fetched from, exactly")
    for field in _SECRET_FIELDS:
        if field in body:
            raise ClientMetadataError(f"a client metadata document must not contain {field}")
    try:
        meta = validate_metadata(body)
    except OAuth2Error as exc:
        raise ClientMetadataError(f"the client metadata document is invalid: {exc.description}") from exc
    return meta.client(url, issued_at, verified_domain=urlsplit(url).hostname,
                       metadata_expires_at=now + document.ttl)


async def lookup_client(server: AuthorizationServer, client_id: str, address: str, *,
                        allow_stale: bool = False) -> Client | None:
    """The client for `client_id`: a registered one from the store, or one described by its
    metadata document (fetched when not cached or expired). None for an unknown registered id;
    `ClientMetadataError` when a document URL cannot be used. `address` is the caller's, for the
    fetch budget. `allow_stale` (token and revocation endpoints) falls back to the stored document
    when a re-fetch fails transiently."""
    if not is_document_url(client_id):
        return await server.store.get_client(client_id)
    if not server.settings.client_id_metadata_documents:
        raise ClientMetadataError("this server does not accept URL client ids (Client ID Metadata Documents are "
                                  "not enabled); the application must register")
    now = server.clock()
    stored = await server.store.get_client(client_id)
    if stored is not None and stored.metadata_expires_at is not None and stored.metadata_expires_at > now:
        return stored
    try:
        if await over_rate_limit(server, address) is not None:
            raise ClientMetadataError("too many client registrations from this address; retry later", transient=True)
        fetcher = server.cimd_fetcher or DEFAULT_FETCHER
        document = await fetcher.fetch(client_id, allow_private=server.settings.cimd_allow_private_addresses)
        client = client_from_document(client_id, document, now,
                                      stored.client_id_issued_at if stored is not None else int(now))
    except ClientMetadataError as exc:
        if allow_stale and exc.transient and stored is not None:
            log.warning("using the stored metadata document of %s: %s", client_id, exc.description)
            return stored
        log.info("refused client metadata document %s: %s", client_id, exc.description)
        raise
    if stored is None:
        await purge_clients(server)
    await server.store.save_client(client)
    return client

"""RFC 7591 dynamic client registration: open, public clients only, every field validated.

Open because every MCP client registers itself, most of them on every login
(docs/protocol.md#C1, #C4): an initial access token would lock them all out. Public only because
we issue no client secrets: a client that asks for a secret-based method, or brings keys for `private_key_jwt`
(`jwks`, `jwks_uri`), is told so plainly instead of getting a registration it cannot use (the
Python SDK refuses one with a method but no secret).

Anyone can call this endpoint, so what it accepts is bounded and checked field by field
(RFC 7591 section 2, OAuth 2.1, MCP "localhost or HTTPS"): redirect URIs by `auth.rfc8252`, at
most `MAX_REDIRECT_URIS`; grant and response types consistent with the code flow; strings typed,
length-capped and free of control and bidirectional-override characters (the name is shown on the
consent page, where U+202E could make "evil.com" read as something else); informational URIs
https only, so a `javascript:` client_uri can never become a link; unknown fields kept and echoed,
as the RFC asks, within `MAX_EXTRA_FIELDS` / `MAX_EXTRA_BYTES`. A refusal is the RFC 7591 error
JSON with a description naming the field and the rule, and stores nothing.

Two more bounds on what the endpoint can make us keep: registrations per source address per hour
(`AuthSettings.registration_rate_limit`; a 429 with Retry-After), and registrations that never
obtained a token are deleted after `AuthSettings.unused_client_ttl`, a bounded batch at each
registration (`purge_clients`).

The same validation serves Client ID Metadata Documents (`auth.cimd`), whose documents carry the
same fields.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from aiohttp import web

from auth.crypto import new_secret
from auth.errors import OAuth2Error
from auth.http import client_address, read_json_object
from auth.models import Client
from auth.rfc8252 import RedirectURIError, URLError, check_registrable, split_url
from auth.server import AUTH_SERVER, AuthorizationServer
from auth.store import StoreUnavailable

log = logging.getLogger(__name__)

MAX_REDIRECT_URIS = 10
SUPPORTED_GRANT_TYPES = ("authorization_code", "refresh_token")
MAX_NAME_LENGTH = 200  # client_name, software_id, software_version
MAX_URI_LENGTH = 2000  # client_uri, logo_uri, tos_uri, policy_uri (as redirect URIs)
MAX_SCOPE_LENGTH = 1000
MAX_CONTACTS = 10
MAX_CONTACT_LENGTH = 320  # the longest valid e-mail address
# Unknown fields are echoed, so they are stored: bounded in number and in JSON size.
MAX_EXTRA_FIELDS = 32
MAX_EXTRA_NAME_LENGTH = 100
MAX_EXTRA_BYTES = 8 * 1024
# Registrations purged per request: more than can be created per request, so the backlog shrinks,
# and few enough to stay a millisecond of work.
PURGE_BATCH = 100
RATE_WINDOW = 3600.0
REGISTER_PREFIX = "register:"

# Fields the server assigns; a client cannot choose them. A software statement is dropped as
# well: we do not verify it, and echoing it would suggest that we had (RFC 7591 section 3.1.1).
_SERVER_ASSIGNED = frozenset({"client_id", "client_secret", "client_id_issued_at", "client_secret_expires_at",
                              "registration_access_token", "registration_client_uri", "software_statement"})
_URI_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")
_SHORT_STRING_FIELDS = ("software_id", "software_version")
_KNOWN = frozenset({"redirect_uris", "token_endpoint_auth_method", "grant_types", "response_types", "client_name",
                    "scope", "contacts", "application_type", "jwks", "jwks_uri", *_URI_FIELDS,
                    *_SHORT_STRING_FIELDS})
# C0 and C1 controls, and the bidirectional formatting characters that reorder displayed text.
_UNSAFE_CHARS = frozenset([*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u061c", "\u200e", "\u200f",
                           *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))])


def _invalid(field: str, rule: str) -> OAuth2Error:
    return OAuth2Error("invalid_client_metadata", f"{field}: {rule}")


@dataclass(frozen=True, slots=True)
class ClientMetadata:
    """Validated registration metadata. `echoed` holds the optional fields that were given (known
    and unknown) in the form they are stored and echoed."""

    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    client_name: str | None
    scope: str | None
    echoed: dict[str, object]

    def client(self, client_id: str, issued_at: int, *, verified_domain: str | None = None,
               metadata_expires_at: float | None = None) -> Client:
        """The public client these metadata describe (registered, or read from a metadata document)."""
        return Client(
            client_id=client_id,
            client_id_issued_at=issued_at,
            redirect_uris=self.redirect_uris,
            token_endpoint_auth_method="none",  # noqa: S106
            grant_types=self.grant_types,
            response_types=("code",),
            client_name=self.client_name,
            scope=self.scope,
            metadata=self.echoed,
            verified_domain=verified_domain,
            metadata_expires_at=metadata_expires_at,
        )


def _string(body: dict[str, object], field: str, max_length: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(field, "must be a string")
    if len(value) > max_length:
        raise _invalid(field, f"must be at most {max_length} characters")
    if any(c in _UNSAFE_CHARS for c in value):
        raise _invalid(field, "must not contain control or bidirectional formatting characters")
    return value


def _string_list(body: dict[str, object], field: str, max_items: int) -> list[str] | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(field, "must be an array of strings")
    if not value:
        raise _invalid(field, "must not be empty")
    if len(value) > max_items:
        raise _invalid(field, f"must have at most {max_items} entries")
    return list(dict.fromkeys(value))


def _https_uri(field: str, value: str) -> str:
    """Informational URIs (RFC 7591 client_uri, logo_uri, tos_uri, policy_uri). https only: they
    are meant to be shown or followed, and any other scheme (javascript:, data:, file:, plain
    http) is either an attack on whoever renders it or an invitation to a downgrade."""
    try:
        parts = split_url(value)
    except URLError as exc:
        raise _invalid(field, "must not contain whitespace or control characters" if exc.unsafe
                       else "is not a valid URI") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise _invalid(field, "must be an absolute https:// URI")
    if "@" in parts.netloc:
        raise _invalid(field, "must not contain user information")
    return value


def _redirect_uris(body: dict[str, object]) -> tuple[str, ...]:
    value = body.get("redirect_uris")
    if value is None:
        raise OAuth2Error("invalid_redirect_uri", "redirect_uris: is required")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OAuth2Error("invalid_redirect_uri", "redirect_uris: must be an array of strings")
    if not value:
        raise OAuth2Error("invalid_redirect_uri", "redirect_uris: must not be empty")
    if len(value) > MAX_REDIRECT_URIS:
        raise OAuth2Error("invalid_redirect_uri", f"redirect_uris: at most {MAX_REDIRECT_URIS} are allowed")
    for uri in value:
        try:
            check_registrable(uri)
        except RedirectURIError as exc:
            raise OAuth2Error("invalid_redirect_uri", f"redirect_uris: {exc}") from exc
    return tuple(dict.fromkeys(value))


def _scope(body: dict[str, object]) -> str | None:
    scope = _string(body, "scope", MAX_SCOPE_LENGTH)
    # RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), space-separated.
    if scope is not None and any(not (c == " " or (0x21 <= ord(c) <= 0x7E and c not in '"\\')) for c in scope):
        raise _invalid("scope", "must be space-separated scope tokens of printable ASCII without \" or \\")
    return scope


def _extras(body: dict[str, object]) -> dict[str, object]:
    extra = {k: v for k, v in body.items() if k not in _KNOWN and k not in _SERVER_ASSIGNED}
    if len(extra) > MAX_EXTRA_FIELDS:
        raise _invalid("body", f"at most {MAX_EXTRA_FIELDS} fields beyond those of RFC 7591 are accepted")
    for name in extra:
        if len(name) > MAX_EXTRA_NAME_LENGTH or any(c in _UNSAFE_CHARS for c in name):
            raise _invalid("body", f"field names must be at most {MAX_EXTRA_NAME_LENGTH} printable characters")
    if len(json.dumps(extra, ensure_ascii=False)) > MAX_EXTRA_BYTES:
        raise _invalid("body", f"fields beyond those of RFC 7591 are limited to {MAX_EXTRA_BYTES} bytes in all")
    return extra


def _encodable(field: str, value: object) -> None:
    """JSON lets a string carry a lone UTF-16 surrogate (`"\\ud800"`), which no UTF-8 encoder
    accepts: refuse it here rather than fail when the registration is stored or echoed."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            code = "invalid_redirect_uri" if field == "redirect_uris" else "invalid_client_metadata"
            raise OAuth2Error(code, f"{field}: contains an invalid character (a lone surrogate)") from None
    elif isinstance(value, list):
        for item in value:
            _encodable(field, item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _encodable(field, key)
            _encodable(field, item)


def validate_metadata(body: dict[str, object]) -> ClientMetadata:
    """Check every field of a registration request or metadata document; raise
    `OAuth2Error` naming the first field that breaks a rule. `null` means absent."""
    for field, value in body.items():
        _encodable(field, value)
    redirect_uris = _redirect_uris(body)
    method = body.get("token_endpoint_auth_method")
    # Absent means "none" here, not RFC 7591's client_secret_basic: the Python SDK omits it for
    # its public clients (docs/protocol.md#C2), and we have no secret to give anyway.
    if method is not None and method != "none":
        raise _invalid("token_endpoint_auth_method", 'only "none" is supported: this server registers public '
                       "clients (PKCE, no client secret)")
    for field in ("jwks", "jwks_uri"):
        if body.get(field) is not None:
            raise _invalid(field, 'is not accepted: this server supports only token_endpoint_auth_method "none"')
    grant_types = _string_list(body, "grant_types", 10) or list(SUPPORTED_GRANT_TYPES)
    unknown = [g for g in grant_types if g not in SUPPORTED_GRANT_TYPES]
    if unknown:
        raise _invalid("grant_types", f"{unknown[0]!r} is not supported; only authorization_code and "
                       "refresh_token are")
    if "authorization_code" not in grant_types:
        # RFC 7591 section 2.1: response type "code" requires the authorization_code grant.
        raise _invalid("grant_types", "must include authorization_code (the only flow this server offers)")
    response_types = _string_list(body, "response_types", 10) or ["code"]
    if response_types != ["code"]:
        raise _invalid("response_types", 'must be ["code"]')
    echoed: dict[str, object] = {}
    for field in _URI_FIELDS:
        uri = _string(body, field, MAX_URI_LENGTH)
        if uri is not None:
            echoed[field] = _https_uri(field, uri)
    for field in _SHORT_STRING_FIELDS:
        text = _string(body, field, MAX_NAME_LENGTH)
        if text is not None:
            echoed[field] = text
    contacts = _string_list(body, "contacts", MAX_CONTACTS)
    if contacts is not None:
        for contact in contacts:
            if len(contact) > MAX_CONTACT_LENGTH or any(c in _UNSAFE_CHARS for c in contact):
                raise _invalid("contacts", f"entries must be at most {MAX_CONTACT_LENGTH} printable characters")
        echoed["contacts"] = contacts
    application_type = body.get("application_type")
    if application_type is not None:
        if application_type not in ("native", "web"):
            raise _invalid("application_type", 'must be "native" or "web"')
        echoed["application_type"] = application_type
    echoed.update(_extras(body))
    return ClientMetadata(
        redirect_uris=redirect_uris,
        grant_types=tuple(grant_types),
        client_name=_string(body, "client_name", MAX_NAME_LENGTH),
        scope=_scope(body),
        echoed=echoed,
    )


def build_client(body: dict[str, object], issued_at: int) -> Client:
    return validate_metadata(body).client(new_secret(24), issued_at)


async def over_rate_limit(server: AuthorizationServer, address: str) -> float | None:
    """Count one client creation (a registration or a metadata document fetch) for `address`;
    the seconds to wait when over `registration_rate_limit` per hour, else None."""
    limit = server.settings.registration_rate_limit
    if limit <= 0:
        return None
    return await server.limiter.hit(registration_key(address), limit, RATE_WINDOW)


def registration_key(address: str) -> str:
    return REGISTER_PREFIX + address


async def purge_clients(server: AuthorizationServer) -> None:
    """Delete a batch of registrations that were never used (or long idle). Inline and bounded
    rather than a background job: it runs exactly when registrations are being created, and a
    failure must not fail the registration that triggered it."""
    settings, now = server.settings, server.clock()
    try:
        purged = await server.store.purge_clients(now - settings.unused_client_ttl, now - settings.idle_client_ttl,
                                                  now, PURGE_BATCH)
    except StoreUnavailable:
        raise  # the registration cannot be stored either: refuse it now (503), not after a second wait
    except Exception:
        log.exception("purging unused client registrations failed")
        return
    if purged:
        log.info("deleted %d unused client registration(s)", purged)


def too_many(retry_after: float, what: str) -> OAuth2Error:
    return OAuth2Error("temporarily_unavailable", f"too many {what} from this address; retry later", 429,
                       {"Retry-After": str(max(1, math.ceil(retry_after)))})


async def handle(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    # Counted before the body is read: a refused or malformed attempt costs the budget too, so
    # the limit also bounds the parsing work anyone can make us do.
    retry_after = await over_rate_limit(server, client_address(request))
    if retry_after is not None:
        raise too_many(retry_after, "client registrations")
    # RFC 7591 section 3.2.2 has no invalid_request: a body that is not a JSON object is
    # invalid client metadata.
    body = await read_json_object(request, error="invalid_client_metadata")
    client = build_client(body, int(server.clock()))
    await purge_clients(server)
    await server.store.save_client(client)
    return web.json_response(client.registration_response(), status=201,
                             headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

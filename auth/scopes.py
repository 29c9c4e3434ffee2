"""Scope strings (RFC 6749 section 3.3): space-delimited, order irrelevant, kept in a stable order."""

from __future__ import annotations

from auth.settings import AuthSettings


def parse(scope: str | None) -> tuple[str, ...]:
    """Distinct scope tokens in first-seen order."""
    return tuple(dict.fromkeys((scope or "").split()))


def granted(requested: str | None, settings: AuthSettings) -> tuple[str, ...]:
    """What /authorize grants: the supported scopes that were asked for, in the server's order.

    Unknown scopes are ignored rather than refused (docs/protocol.md#C6): mcp-remote falls back
    to "openid email profile", Codex and Claude send whatever the client registered ("mcp:tools").
    When nothing usable remains the client gets the default set, which is what it needs to work.
    OpenID Connect scopes asked for are added on top and never count as "usable": mcp-remote's
    "openid email profile" must still yield the resource's scopes, plus an ID token.
    """
    wanted = set(parse(requested))
    chosen = tuple(s for s in settings.scopes_supported if s in wanted) or settings.default_scopes
    oidc = tuple(s for s in settings.oidc_scopes if s in wanted and s not in chosen)
    return chosen + oidc


def join(scopes: tuple[str, ...] | frozenset[str]) -> str:
    return " ".join(scopes)

"""What is connected to the account: the applications the user approved, and their live MCP sessions.

An application is connected while it holds an unexpired token of the user (`list_subject_tokens`),
a remembered approval (it can come back without asking), or a live MCP session. "First used" is
the earliest time the user approved it among what is still stored (the grant's `auth_time`);
"last used" the latest of its token issues (a refresh) and its sessions' last activity.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from urllib.parse import urlsplit

from auth import pages, personal
from auth.models import RememberedConsent, Token
from auth.rfc8252 import is_loopback
from server.account.html import plain, post_form, when
from server.principals import parse_owner, parse_owner_label
from server.storage import Storage
from transports.store import SessionRecord


@dataclass(frozen=True, slots=True)
class Application:
    client_id: str
    name: str | None
    verified_domain: str | None
    returns_to: tuple[str, ...]
    scopes: tuple[str, ...]
    since: float | None
    last_used: float | None
    remembered_until: float | None
    sessions: int
    memories: tuple[str, ...] = ()
    """The names of the memories its grants, approvals and sessions are bound to."""


def session_client(record: SessionRecord) -> str:
    return parse_owner_label(record.owner)[1]


def _where(uri: str) -> str:
    """Where a redirect URI sends the authorization, as the consent page says it."""
    if is_loopback(uri):
        return "an application on this computer"
    parts = urlsplit(uri)
    return parts.netloc or f"{parts.scheme}: (an application's own address)"


async def connected(storage: Storage, user_id: str, now: float,
                    records: list[SessionRecord], names: dict[str, str] | None = None) -> list[Application]:
    """`names`: memory id -> name (`auth.memories`), to say which memory each application is on."""
    names = names or {}
    tokens: dict[str, list[Token]] = {}
    for token in await storage.list_subject_tokens(user_id, now):
        tokens.setdefault(token.client_id, []).append(token)
    consents: dict[str, list[RememberedConsent]] = {}
    for consent in await storage.list_consents(user_id, now):
        consents.setdefault(consent.client_id, []).append(consent)
    sessions: dict[str, list[SessionRecord]] = {}
    for record in records:
        # Opened with a personal access token: not an application (server.account.tokens).
        if personal.token_id_of(session_client(record)) is None:
            sessions.setdefault(session_client(record), []).append(record)
    found = []
    for client_id in {*tokens, *consents, *sessions}:
        client = await storage.get_client(client_id)
        held, remembered, live = tokens.get(client_id, []), consents.get(client_id, []), sessions.get(client_id, [])
        current = [t for t in held if t.superseded_at is None]
        scopes = {s for t in current for s in t.scopes} or {s for c in remembered for s in c.scopes}
        starts = [t.auth_time if t.auth_time is not None else t.issued_at for t in held]
        starts += [c.created_at for c in remembered] + [r.created_at for r in live]
        uses = [t.issued_at for t in held] + [r.last_seen_at for r in live]
        uris = client.redirect_uris if client else tuple(c.redirect_uri for c in remembered)
        bound = [t.memory or user_id for t in current] + [c.memory or user_id for c in remembered]
        bound += [parse_owner(r.owner).memory for r in live]
        on = tuple(dict.fromkeys(names.get(m, "(deleted memory)") for m in bound))
        found.append(Application(
            client_id=client_id, name=client.client_name if client else None,
            verified_domain=client.verified_domain if client else None,
            returns_to=tuple(dict.fromkeys(_where(u) for u in uris)), scopes=tuple(sorted(scopes)),
            since=min(starts, default=None), last_used=max(uses, default=None),
            remembered_until=max((c.expires_at for c in remembered), default=None), sessions=len(live),
            memories=on))
    return sorted(found, key=lambda a: (a.since or 0.0, a.client_id))


def _name(name: str | None) -> str:
    return escape(name) if name else "An unnamed application"


def applications_section(csrf_token: str, apps: list[Application]) -> str:
    head = '<h2 id="applications">Connected applications</h2>'
    if not apps:
        return head + ("<p>No application is connected to your account. An MCP client connects when you "
                       "approve it on the consent page.</p>")
    cards = []
    for app in apps:
        scopes = "".join(f"<li>{escape(pages.SCOPE_DESCRIPTIONS.get(s, s))} <code>{escape(s)}</code></li>"
                         for s in app.scopes) or "<li>none</li>"
        verified = (f"<dt>Published by</dt><dd>{escape(app.verified_domain)}</dd>" if app.verified_domain else "")
        remembered = (f"<dt>Approval remembered until</dt><dd>{when(app.remembered_until)}</dd>"
                      if app.remembered_until else "")
        cards.append(
            f"<li><h3>{_name(app.name)}</h3><dl>"
            f"<dt>Returns to</dt><dd>{escape(', '.join(app.returns_to)) or 'unknown'}</dd>{verified}"
            f'<dt>Access</dt><dd><ul class="items">{scopes}</ul></dd>'
            f"<dt>First used</dt><dd>{when(app.since)}</dd><dt>Last used</dt><dd>{when(app.last_used)}</dd>"
            f"{remembered}<dt>Memory</dt><dd>{escape(', '.join(app.memories)) or 'default'}</dd>"
            f"<dt>Live sessions</dt><dd>{app.sessions}</dd>"
            f"<dt>Client id</dt><dd><code>{escape(app.client_id)}</code></dd></dl>"
            + post_form("/account/disconnect", csrf_token, {"client_id": app.client_id}, "Disconnect",
                        what=app.name or app.client_id, danger=True)
            + "</li>")
    return (head + "<p>Disconnecting an application revokes its access at once, ends its live sessions and "
            "forgets any remembered approval: it has to ask for your approval again.</p>"
            f'<ul class="cards">{"".join(cards)}</ul>')


_TRANSPORTS = {"streamable-http": "Streamable HTTP", "sse": "HTTP+SSE (2024-11-05)"}


def sessions_section(csrf_token: str, records: list[SessionRecord], names: dict[str, str | None]) -> str:
    head = '<h2 id="sessions">Live MCP sessions</h2>'
    if not records:
        return head + "<p>No application has an MCP session open.</p>"
    cards = []
    for record in records:
        name = names.get(session_client(record))
        cards.append(
            f"<li><h3>{_name(name)}</h3><dl>"
            f"<dt>Transport</dt><dd>{escape(_TRANSPORTS.get(record.transport, record.transport))}</dd>"
            f"<dt>Protocol</dt><dd>{escape(record.protocol_version or 'not yet negotiated')}</dd>"
            f"<dt>Started</dt><dd>{when(record.created_at)}</dd>"
            f"<dt>Last active</dt><dd>{when(record.last_seen_at)}</dd></dl>"
            + post_form("/account/sessions/end", csrf_token, {"session_id": record.session_id}, "End session",
                        what=f"of {name or 'an unnamed application'} started {plain(record.created_at)}")
            + "</li>")
    return (head + "<p>Ending a session closes it; the application may open a new one while it stays "
            "connected (disconnect it above to stop it).</p>"
            f'<ul class="cards">{"".join(cards)}</ul>')

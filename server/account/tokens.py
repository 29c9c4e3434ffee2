"""The personal access tokens part of the account page (`auth.personal`): the user's live tokens,
a form that creates one, and revocation.

Created here as by `memory-mcp tokens create`: `auth.personal.create`, with the same checks of
the name, scopes and lifetime. The secret is shown once, on the page that answers the creating
POST (never a redirect: it must not travel in a URL, and the page is `no-store`); the store keeps
its hash. Revoking deletes the token and records the revocation, which ends the MCP sessions
opened with it, here at once and on other processes within a second.

A token is bound to one of the user's memories, chosen on the form (`memory`: a name; the default
one preselected), as `tokens create --memory` does; an unknown name is refused with nothing made.

A session opened with a personal token is owned by the client id `pat:<id>`
(`auth.personal.client_id`): it is listed among the live sessions under the token's name, never
as a connected application.
"""

from __future__ import annotations

from html import escape

from auth import csrf, memories, pages, personal
from auth.models import PersonalToken
from auth.settings import AuthSettings
from server.account.html import hidden, post_form, when

EXPIRY_CHOICES = (("30", "30 days"), ("90", "90 days"), ("365", "1 year"),
                  (personal.NEVER, "Never (revoke it yourself)"))


def form_problem(name: str, scopes: str, expires: str) -> str | None:
    """What is wrong with the creation form's values, in the form's own words; None if nothing."""
    if len(name.strip()) > personal.NAME_MAX or any(not c.isprintable() for c in name.strip()):
        return f"The name must be at most {personal.NAME_MAX} printable characters."
    if not scopes:
        return "Choose at least one kind of access for the token."
    if expires not in {value for value, _ in EXPIRY_CHOICES}:
        return "Choose when the token expires from the list."
    return None


def session_name(token: PersonalToken | None) -> str:
    if token is None:
        return "A revoked personal access token"
    return f"Personal access token “{token.name}”" if token.name else f"Personal access token {token.id}"


def _create_form(csrf_token: str, settings: AuthSettings, names: list[str]) -> str:
    scopes = "".join(
        f'<label class="check"><input type="checkbox" name="scope {escape(s)}" value="1" checked>'
        f"<span>{escape(pages.SCOPE_DESCRIPTIONS.get(s, s))} <code>{escape(s)}</code></span></label>"
        for s in settings.scopes_supported)
    default = str(personal.DEFAULT_DAYS)
    expiry = "".join(f'<option value="{value}"{" selected" if value == default else ""}>{label}</option>'
                     for value, label in EXPIRY_CHOICES)
    choices = "".join(f'<option value="{escape(name)}"{" selected" if name == memories.DEFAULT_NAME else ""}>'
                      f"{escape(name)}</option>" for name in names)
    return ('<h3 id="new-token">Create a token</h3>'
            f'<form method="post" action="/account/tokens">{hidden(csrf.FIELD, csrf_token)}'
            f'<label for="token-name">Name (what it is for)</label>'
            f'<input type="text" id="token-name" name="name" maxlength="{personal.NAME_MAX}" required>'
            f'<fieldset><legend>Access</legend>{scopes}</fieldset>'
            f'<label for="token-expiry">Expires after</label><select id="token-expiry" name="expires">{expiry}</select>'
            f'<label for="token-memory">Memory</label><select id="token-memory" name="memory">{choices}</select>'
            '<button type="submit" class="primary">Create token</button></form>')


def section(csrf_token: str, tokens: list[PersonalToken], settings: AuthSettings, user_id: str,
            names: dict[str, str]) -> str:
    """`names`: the user's memories, id -> name, the default one first."""
    head = ('<h2 id="tokens">Personal access tokens</h2><p>For agents that cannot sign in with a browser: '
            "they send the token as <code>Authorization: Bearer …</code>. Each token carries its own access "
            "and expiry; revoking it ends the sessions that used it.</p>")
    cards = []
    for token in tokens:
        cards.append(
            f"<li><h3>{escape(token.name) if token.name else 'Unnamed token'}</h3><dl>"
            f"<dt>Access</dt><dd>{escape(' '.join(token.scopes))}</dd>"
            f"<dt>Memory</dt><dd>{escape(names.get(token.memory or user_id, '(deleted)'))}</dd>"
            f"<dt>Created</dt><dd>{when(token.created_at)}</dd>"
            f"<dt>Last used</dt><dd>{when(token.last_used_at)}</dd>"
            f"<dt>Expires</dt><dd>{when(token.expires_at) if token.expires_at else 'never'}</dd>"
            f"<dt>Id</dt><dd><code>{escape(token.id)}</code></dd></dl>"
            + post_form("/account/tokens/revoke", csrf_token, {"token_id": token.id}, "Revoke",
                        what=token.name or token.id, danger=True)
            + "</li>")
    listing = f'<ul class="cards">{"".join(cards)}</ul>' if cards else "<p>You have no personal access tokens.</p>"
    return head + listing + _create_form(csrf_token, settings, list(names.values()))


def created_body(secret: str, token: PersonalToken) -> str:
    expires = "never" if token.expires_at is None else when(token.expires_at)
    return (f"<p>Your new token <strong>{escape(token.name or token.id)}</strong> "
            f"(<code>{escape(' '.join(token.scopes))}</code>, expires {expires}):</p>"
            f'<label for="secret">Token</label>'
            f'<input type="text" id="secret" readonly value="{escape(secret)}" autocomplete="off" spellcheck="false">'
            "<p><strong>Copy it now: it is shown only this once</strong> and kept by the server only as a hash. "
            "Keep it in a secret store, and revoke it on your account page when it is no longer needed.</p>"
            '<p><a href="/account#tokens">Back to your account</a></p>')

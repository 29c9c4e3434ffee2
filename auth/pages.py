"""The HTML the authorization server shows: login, consent, remembered approvals, logout, errors.

Self-contained (inline CSS, no scripts, no third-party resources) and locked down by headers:
CSP `default-src 'none'`, no framing (clickjacking a consent button is the classic attack), no
Referer (the authorize URL carries `state` and the code challenge), never cached. Every value that
comes from a client or a user is escaped.

CSP `form-action` and the consent redirect: after the consent POST the server answers 303 to the
client's redirect URI, and Chromium applies `form-action` to redirects that follow a form
submission. The consent page therefore lists the redirect URI's origin next to `'self'`. CSP
source expressions cannot name an IPv6 literal (`http://[::1]:port`), so for such a redirect URI
the consent page omits `form-action` altogether; the page has no scripts and posts only to itself.
Every other page says `form-action 'self'`, so no other form may be answered with a redirect off
our origin: the login POST answers with the consent page or `continue_to` (auth.authorize).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from aiohttp import web

from auth import csrf

_STYLE = """body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}form{margin-top:1.5rem}label{display:block;margin:.8rem 0 .2rem}
input,button,select{font:inherit}select{padding:.4rem;min-width:50%}input[type=text],input[type=password]{width:100%;padding:.5rem;box-sizing:border-box}
button{padding:.5rem 1.2rem;margin:1rem .5rem 0 0;border:1px solid #888;border-radius:4px;background:#f3f3f3}
button.primary{background:#1a56db;border-color:#1a56db;color:#fff}label.check{display:flex;gap:.5rem;align-items:baseline}
.error{color:#b00020}.muted{color:#666;font-size:.9rem}code{background:#f3f3f3;padding:0 .2rem}"""

CSRF_FAILED = ("The form was not submitted from this browser session (CSRF check failed). "
               "Make sure cookies are enabled and try again.")
OTHER_BROWSER = ("This authorization was started in another browser (or its cookie expired). "
                 "Start again from your application, in the browser you want to use.")

RETURN_FIELD = "return_to"

SCOPE_DESCRIPTIONS = {
    "memory:read": "Read your memory (entities, relations, observations)",
    "memory:write": "Change your memory (create, update and delete)",
}


def _csp(form_action: tuple[str, ...] | None) -> str:
    directives = ["default-src 'none'", "style-src 'unsafe-inline'"]
    if form_action is not None:
        directives.append("form-action " + " ".join(("'self'", *form_action)))
    directives += ["frame-ancestors 'none'", "base-uri 'none'"]
    return "; ".join(directives)


def render(title: str, body: str, status: int = 200, *, form_action: tuple[str, ...] | None = (),
           head: str = "", style: str = "") -> web.Response:
    """`form_action=None` leaves the directive out (see the module docstring). `style`: CSS after
    the pages' own, for a page that needs more (the account pages, wider)."""
    document = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width,initial-scale=1">{head}'
                f"<title>{escape(title)}</title><style>{_STYLE}{style}</style></head>"
                f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>")
    return web.Response(
        text=document, status=status, content_type="text/html", charset="utf-8",
        headers={
            "Content-Security-Policy": _csp(form_action),
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
        },
    )


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'


LOGIN_AGAIN = "Go back to your application and start the login again."


def error(message: str, status: int = 400, title: str = "Authorization failed", *,
          hint: str = LOGIN_AGAIN, hint_html: str = "") -> web.Response:
    """`hint`: what to do next (text); `hint_html` replaces it with markup of ours (a link)."""
    return render(title, f'<p class="error">{escape(message)}</p>'
                         f'<p class="muted">{hint_html or escape(hint)}</p>', status)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    return f"{-(-seconds // 60)} minutes"


def password_form(csrf_token: str, request_seal: str | None, *, username: str = "", failed: bool = False,
                  retry_after: int | None = None, again: bool = False, busy: bool = False,
                  return_to: str = "") -> tuple[str, int]:
    """The password sign-in (`auth.login`) as a section of the sign-in page, and the page's status.
    `retry_after`: throttled (auth.throttle), a 429; the message names no account, so it reads
    the same for a user who does not exist. With `busy`, the server had no capacity to check the
    password (auth.passwords): a 503. `again`: the user is signed in, but the application asked
    for a fresh sign-in (OpenID Connect `prompt=login`, `max_age`). `return_to`: the page of ours
    to show after signing in (`auth.signin.RETURN_PATHS`)."""
    status = 401 if failed else 200
    message = '<p class="error">Invalid username or password.</p>' if failed else ""
    if again and not failed:
        message = '<p>The application asks you to enter your password again.</p>'
    if retry_after is not None and busy:
        status = 503
        message = (f'<p class="error">The server is busy checking other sign-ins. Try again in '
                   f"{_duration(retry_after)}.</p>")
    elif retry_after is not None:
        status = 429
        message = (f'<p class="error">Too many failed sign-in attempts. Try again in '
                   f"{_duration(retry_after)}.</p>")
    fields = (_hidden(csrf.FIELD, csrf_token) + (_hidden("request", request_seal) if request_seal else "")
              + (_hidden(RETURN_FIELD, return_to) if return_to else ""))
    body = (f'{message}<form method="post" action="/login">{fields}'
            f'<label for="username">Username</label>'
            f'<input type="text" id="username" name="username" value="{escape(username)}" '
            f'autocomplete="username" autocapitalize="none" required{"" if username else " autofocus"}>'
            f'<label for="password">Password</label>'
            f'<input type="password" id="password" name="password" autocomplete="current-password" required'
            f'{" autofocus" if username else ""}>'
            f'<button type="submit" class="primary">Sign in</button></form>')
    return body, status


def sign_in(sections: Sequence[str], *, status: int = 200, retry_after: int | None = None) -> web.Response:
    """The sign-in page: one section per way of signing in (`auth.signin`). Its forms post to our
    own origin only (`form-action 'self'`): it may hold a password."""
    body = '<p class="muted">or</p>'.join(sections) if sections else (
        '<p class="error">No way of signing in is configured on this server.</p>')
    response = render("Sign in to memory-mcp", body, status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def login(csrf_token: str, request_seal: str | None, *, username: str = "", failed: bool = False,
          status: int = 200, retry_after: int | None = None, again: bool = False,
          busy: bool = False) -> web.Response:
    """The sign-in page with the password form alone."""
    body, form_status = password_form(csrf_token, request_seal, username=username, failed=failed,
                                      retry_after=retry_after, again=again, busy=busy)
    return sign_in([body], status=form_status if form_status != 200 else status, retry_after=retry_after)


def upstream_section(csrf_token: str, request_seal: str | None, *, provider: str, client_name: str | None = None,
                     client_id: str = "", redirect_host: str = "", loopback: bool = False,
                     scopes: tuple[str, ...] = (), resource: str = "", again: bool = False) -> str:
    """Sign-in through the upstream provider (`auth.upstream.flow`). With a pending authorization
    it is the consent, taken before the browser goes to the provider (the approval then needs no
    second page): what the application asks, and "Approve and sign in"."""
    fields = _hidden(csrf.FIELD, csrf_token) + (_hidden("request", request_seal) if request_seal else "")
    who = escape(provider)
    if request_seal is None:
        return (f'<form method="post" action="/login/upstream">{fields}'
                f'<button type="submit" class="primary">Sign in with {who}</button></form>')
    name = escape(client_name) if client_name else "An unnamed application"
    where = "an application on this computer" if loopback else f"<strong>{escape(redirect_host)}</strong>"
    scope_items = "".join(f"<li>{escape(SCOPE_DESCRIPTIONS.get(s, s))} <code>{escape(s)}</code></li>" for s in scopes)
    again_note = "<p>The application asks you to sign in again.</p>" if again else ""
    return (f"{again_note}<p><strong>{name}</strong> wants to access your memory. Sign in with {who} to approve.</p>"
            f"<p>It will receive the authorization at {where} (<code>{escape(redirect_host)}</code>).</p>"
            f"<ul>{scope_items}</ul>"
            f'<p class="muted">Resource: <code>{escape(resource)}</code><br>Client id: <code>{escape(client_id)}</code>'
            "<br>Only approve if you started this login yourself.</p>"
            f'<form method="post" action="/login/upstream">{fields}'
            '<label class="check"><input type="checkbox" name="remember" value="1"><span>Remember this approval: '
            'do not ask again for this application, address and access</span></label>'
            f'<button type="submit" name="decision" value="approve" class="primary">Approve and sign in with {who}'
            '</button><button type="submit" name="decision" value="deny">Deny</button></form>')


def _memory_choice(names: Sequence[str], chosen: str, new_memory: str, error: str | None) -> str:
    """Which memory the application gets (`auth.memories`): one of the user's, `chosen` selected
    (`default` unless the page is shown again), or a new one by name."""
    options = "".join(f'<option value="{escape(n)}"{" selected" if n == chosen else ""}>{escape(n)}</option>'
                      for n in names)
    problem = (f'<p class="error" id="memory-error" role="alert">{escape(error)}</p>' if error else "")
    described = ' aria-describedby="memory-error" aria-invalid="true"' if error else ""
    return (f'{problem}<label for="memory">Memory it works on</label>'
            f'<select id="memory" name="memory">{options}</select>'
            '<label for="new_memory">Or create a new memory named</label>'
            f'<input type="text" id="new_memory" name="new_memory" value="{escape(new_memory)}" maxlength="200" '
            f'autocomplete="off"{described}>'
            '<p class="muted">The application only ever sees the memory chosen here.</p>')


def consent(csrf_token: str, request_seal: str, *, username: str, client_name: str | None, client_id: str,
            redirect_host: str, loopback: bool, scopes: tuple[str, ...], resource: str,
            form_action: tuple[str, ...] | None, verified_host: str | None = None,
            memories: Sequence[str] = ("default",), chosen: str = "default", new_memory: str = "",
            error: str | None = None) -> web.Response:
    """`verified_host`: the host a Client ID Metadata Document was fetched from, the one name on
    this page a client cannot choose freely. The "remember" box is off by default (auth.consent).
    `memories`: the user's memory names, to choose from (`chosen` selected); `error`: why the
    memory asked for in the previous submission could not be used (the page is shown again)."""
    name = escape(client_name) if client_name else "An unnamed application"
    verified = (f"<p>Its description is published by <strong>{escape(verified_host)}</strong> "
                "(client metadata document).</p>" if verified_host else "")
    scope_items = "".join(f"<li>{escape(SCOPE_DESCRIPTIONS.get(s, s))} <code>{escape(s)}</code></li>" for s in scopes)
    where = ("an application on this computer" if loopback else f"<strong>{escape(redirect_host)}</strong>")
    body = (f"<p><strong>{name}</strong> wants to access your memory as <strong>{escape(username)}</strong>.</p>"
            f"{verified}<p>It will receive the authorization at {where} "
            f'(<code>{escape(redirect_host)}</code>).</p>'
            f"<ul>{scope_items}</ul>"
            f'<p class="muted">Resource: <code>{escape(resource)}</code><br>Client id: <code>{escape(client_id)}</code>'
            "<br>Only approve if you started this login yourself.</p>"
            f'<form method="post" action="/consent">{_hidden(csrf.FIELD, csrf_token)}{_hidden("request", request_seal)}'
            f"{_memory_choice(memories, chosen, new_memory, error)}"
            '<label class="check"><input type="checkbox" name="remember" value="1"><span>Remember this approval: '
            'do not ask again for this application, address and access, and keep it on this memory (you can '
            'withdraw it on the <a href="/consents">remembered approvals</a> page)</span></label>'
            '<button type="submit" name="decision" value="approve" class="primary">Approve</button>'
            '<button type="submit" name="decision" value="deny">Deny</button></form>'
            '<form method="get" action="/logout"><button type="submit">Not you? Sign out</button></form>')
    return render("Authorize access", body, form_action=form_action)


def continue_to(location: str, *, provider: str | None = None) -> web.Response:
    """Leave for the client's redirect URI after a form POST (auth.authorize: a redirect there
    would be blocked by `form-action 'self'`), or with `provider` for the upstream provider's
    sign-in page. A refresh is a navigation, not a form submission; the link is for browsers
    that ask before opening an application's own URL scheme."""
    target = escape(location)
    if provider is not None:
        return render(f"Signing in with {provider}",
                      f'<p><a href="{target}">Continue to {escape(provider)}</a></p>',
                      head=f'<meta http-equiv="refresh" content="0;url={target}">')
    return render("Returning to your application",
                  f'<p>You can close this page once your application says it is connected.</p>'
                  f'<p><a href="{target}">Continue to the application</a></p>',
                  head=f'<meta http-equiv="refresh" content="0;url={target}">')


def signed_in(csrf_token: str, username: str) -> web.Response:
    return render("Signed in", f"<p>You are signed in as <strong>{escape(username)}</strong>.</p>"
                              '<p><a href="/account">Your account</a></p>'
                              + logout_form(csrf_token))


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    """One remembered approval, as the /consents page lists it."""

    client_id: str
    client_name: str | None
    redirect_uri: str
    resource: str
    scopes: tuple[str, ...]
    expires_at: float
    memory: str = "default"
    """The name of the memory the approval is for."""


def consents(csrf_token: str, username: str, entries: Sequence[ConsentEntry]) -> web.Response:
    """Remembered approvals grouped by client, one "forget and disconnect" form per client."""
    if not entries:
        body = (f"<p>No remembered approvals for <strong>{escape(username)}</strong>: every application "
                "asks for your approval when it connects.</p>")
        return render("Remembered approvals", body + logout_form(csrf_token))
    by_client: dict[str, list[ConsentEntry]] = {}
    for entry in entries:
        by_client.setdefault(entry.client_id, []).append(entry)
    sections = []
    for client_id, items in by_client.items():
        name = items[0].client_name
        title = escape(name) if name else "An unnamed application"
        rows = "".join(
            f"<li>to <code>{escape(e.redirect_uri)}</code> for <code>{escape(' '.join(e.scopes))}</code> "
            f"on <code>{escape(e.resource)}</code>, memory <strong>{escape(e.memory)}</strong>, until "
            f"{escape(time.strftime('%Y-%m-%d', time.gmtime(e.expires_at)))}</li>" for e in items)
        sections.append(
            f"<h2>{title}</h2><p class=\"muted\">Client id: <code>{escape(client_id)}</code></p><ul>{rows}</ul>"
            f'<form method="post" action="/consents">{_hidden(csrf.FIELD, csrf_token)}{_hidden("client_id", client_id)}'
            '<button type="submit">Forget and disconnect</button></form>')
    body = (f"<p>Applications that connect as <strong>{escape(username)}</strong> without asking. Forgetting "
            "one also disconnects it: it will ask for your approval next time.</p>" + "".join(sections))
    return render("Remembered approvals", body)


def logout_form(csrf_token: str) -> str:
    return (f'<form method="post" action="/logout">{_hidden(csrf.FIELD, csrf_token)}'
            '<button type="submit">Sign out</button></form>')


def logout_confirm(csrf_token: str, username: str | None) -> web.Response:
    if username is None:
        return render("Signed out", "<p>You are not signed in.</p>")
    return render("Sign out", f"<p>Sign out <strong>{escape(username)}</strong> everywhere? This signs you "
                              "out in every browser, forgets your remembered approvals, disconnects every "
                              "application you approved (each will ask you to sign in again) and revokes your "
                              "personal access tokens.</p>"
                              + logout_form(csrf_token))


def signed_out(extra: str = "") -> web.Response:
    """`extra`: what the sign-in methods add (`auth.signin.SignInMethod.signed_out`)."""
    return render("Signed out", "<p>You are signed out in every browser, the applications you had "
                                "approved are disconnected, and your personal access tokens are revoked.</p>" + extra)


def upstream_sign_out(url: str, provider: str) -> str:
    """RP-initiated logout at the upstream provider, offered as a link: a navigation, which no
    `form-action` applies to, and which the user may decline (their provider session may serve
    other applications)."""
    return (f"<p>You signed in with {escape(provider)}, where you may still be signed in.</p>"
            f'<p><a href="{escape(url)}">Sign out of {escape(provider)} too</a></p>')

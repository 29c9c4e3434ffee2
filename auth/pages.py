"""The HTML the authorization server shows: login, consent, logout and error pages.

Self-contained (inline CSS, no scripts, no third-party resources) and locked down by headers:
CSP `default-src 'none'`, no framing (clickjacking a consent button is the classic attack), no
Referer (the authorize URL carries `state` and the code challenge), never cached. Every value that
comes from a client or a user is escaped.

CSP `form-action` and the consent redirect: after the consent POST the server answers 303 to the
client's redirect URI, and Chromium applies `form-action` to redirects that follow a form
submission. The consent page therefore lists the redirect URI's origin next to `'self'`. CSP
source expressions cannot name an IPv6 literal (`http://[::1]:port`), so for such a redirect URI
the consent page omits `form-action` altogether; the page has no scripts and posts only to itself.
"""

from __future__ import annotations

from html import escape

from aiohttp import web

from auth import csrf

_STYLE = """body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}form{margin-top:1.5rem}label{display:block;margin:.8rem 0 .2rem}
input[type=text],input[type=password]{width:100%;padding:.5rem;box-sizing:border-box}
button{padding:.5rem 1.2rem;margin:1rem .5rem 0 0}.error{color:#b00020}.muted{color:#666;font-size:.9rem}
code{background:#f3f3f3;padding:0 .2rem}"""

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


def render(title: str, body: str, status: int = 200, *, form_action: tuple[str, ...] | None = ()) -> web.Response:
    """`form_action=None` leaves the directive out (see the module docstring)."""
    document = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width,initial-scale=1">'
                f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
                f"<body><h1>{escape(title)}</h1>{body}</body></html>")
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


def error(message: str, status: int = 400, title: str = "Authorization failed") -> web.Response:
    return render(title, f'<p class="error">{escape(message)}</p>'
                         '<p class="muted">Go back to your application and start the login again.</p>', status)


def login(csrf_token: str, request_seal: str | None, *, username: str = "", failed: bool = False,
          status: int = 200) -> web.Response:
    message = '<p class="error">Invalid username or password.</p>' if failed else ""
    fields = _hidden(csrf.FIELD, csrf_token) + (_hidden("request", request_seal) if request_seal else "")
    body = (f'{message}<form method="post" action="/login">{fields}'
            f'<label for="username">Username</label>'
            f'<input type="text" id="username" name="username" value="{escape(username)}" '
            f'autocomplete="username" autocapitalize="none" required autofocus>'
            f'<label for="password">Password</label>'
            f'<input type="password" id="password" name="password" autocomplete="current-password" required>'
            f'<button type="submit">Sign in</button></form>')
    return render("Sign in to memory-mcp", body, status)


def consent(csrf_token: str, request_seal: str, *, username: str, client_name: str | None, client_id: str,
            redirect_host: str, loopback: bool, scopes: tuple[str, ...], resource: str,
            form_action: tuple[str, ...] | None) -> web.Response:
    name = escape(client_name) if client_name else "An unnamed application"
    scope_items = "".join(f"<li>{escape(SCOPE_DESCRIPTIONS.get(s, s))} <code>{escape(s)}</code></li>" for s in scopes)
    where = ("an application on this computer" if loopback else f"<strong>{escape(redirect_host)}</strong>")
    body = (f"<p><strong>{name}</strong> wants to access your memory as <strong>{escape(username)}</strong>.</p>"
            f"<p>It will receive the authorization at {where} "
            f'(<code>{escape(redirect_host)}</code>).</p>'
            f"<ul>{scope_items}</ul>"
            f'<p class="muted">Resource: <code>{escape(resource)}</code><br>Client id: <code>{escape(client_id)}</code>'
            "<br>Only approve if you started this login yourself.</p>"
            f'<form method="post" action="/consent">{_hidden(csrf.FIELD, csrf_token)}{_hidden("request", request_seal)}'
            '<button type="submit" name="decision" value="approve">Approve</button>'
            '<button type="submit" name="decision" value="deny">Deny</button></form>'
            '<form method="get" action="/logout"><button type="submit">Not you? Sign out</button></form>')
    return render("Authorize access", body, form_action=form_action)


def signed_in(csrf_token: str, username: str) -> web.Response:
    return render("Signed in", f"<p>You are signed in as <strong>{escape(username)}</strong>.</p>"
                              + logout_form(csrf_token))


def logout_form(csrf_token: str) -> str:
    return (f'<form method="post" action="/logout">{_hidden(csrf.FIELD, csrf_token)}'
            '<button type="submit">Sign out</button></form>')


def logout_confirm(csrf_token: str, username: str | None) -> web.Response:
    if username is None:
        return render("Signed out", "<p>You are not signed in.</p>")
    return render("Sign out", f"<p>Sign out <strong>{escape(username)}</strong> everywhere? This also "
                              "disconnects every application you approved; each will ask you to sign in "
                              "again.</p>" + logout_form(csrf_token))


def signed_out() -> web.Response:
    return render("Signed out", "<p>You are signed out, and the applications you had approved are "
                                "disconnected.</p>")

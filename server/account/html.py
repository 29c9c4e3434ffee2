"""The pieces the account pages are made of: their CSS, times, forms, the navigation.

Every value that comes from a user, a client or the memory is escaped here or by the caller
(`html.escape`); the pages are rendered by `auth.pages.render`, so they carry its headers (CSP
`default-src 'none'` with inline styles only, no framing, no Referer, never cached).
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from aiohttp import web

from auth import csrf, pages

# Wider than the sign-in pages (lists of applications, a memory), one column on a phone. Colours
# keep a contrast of at least 4.5:1 on white; focus is always visible.
STYLE = """body{max-width:48rem}
nav ul{list-style:none;display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;padding:0;margin:0 0 1rem}
a{color:#1a56db}a:focus-visible,button:focus-visible,input:focus-visible{outline:3px solid #1a56db;outline-offset:2px}
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc;padding-bottom:.3rem}
h3{font-size:1.05rem;margin:0 0 .5rem;overflow-wrap:anywhere}
.cards{list-style:none;padding:0;margin:0}
.cards>li{border:1px solid #bbb;border-radius:6px;padding:.8rem 1rem;margin:.8rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}dt{color:#555}
dd{margin:0;overflow-wrap:anywhere}
form.act{margin:.6rem 0 0}form.act button{margin:0}
ul.items{padding-left:1.2rem;margin:.3rem 0}ul.items li{margin:.3rem 0;overflow-wrap:anywhere}
ul.items form{display:inline;margin:0}ul.items button{margin:0 0 0 .5rem;padding:.1rem .6rem;font-size:.9rem}
button.danger{border-color:#b00020;color:#b00020;background:#fff}
.search{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-top:1rem}
.search label{margin:0;width:100%}.search input{flex:1 1 12rem;padding:.5rem;min-width:0}
.search button{margin:0}.paging{display:flex;gap:1rem;align-items:center;flex-wrap:wrap;margin:1rem 0}
select{font:inherit;padding:.4rem}fieldset{border:1px solid #bbb;border-radius:6px;margin:1rem 0 0}
.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
blockquote{margin:.5rem 0;padding:.5rem 1rem;border-left:4px solid #bbb;overflow-wrap:anywhere}
@media (max-width:32rem){dl{grid-template-columns:1fr}dt{margin-top:.3rem}}"""


def plain(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    moment = datetime.fromtimestamp(timestamp, UTC)
    return (f'<time datetime="{moment.strftime("%Y-%m-%dT%H:%M:%SZ")}">'
            f'{moment.strftime("%Y-%m-%d %H:%M")} UTC</time>')


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'


def post_form(action: str, csrf_token: str, fields: dict[str, str], label: str, *, what: str = "",
              css: str = "act", danger: bool = False) -> str:
    """A form of one button that posts `fields` with the CSRF token. `what` names the item the
    button acts on, for screen readers (every "Disconnect" on a page is then told apart)."""
    inputs = hidden(csrf.FIELD, csrf_token) + "".join(hidden(k, v) for k, v in fields.items())
    named = f'<span class="vh"> {escape(what)}</span>' if what else ""
    kind = ' class="danger"' if danger else ""
    return (f'<form class="{css}" method="post" action="{escape(action)}">{inputs}'
            f'<button type="submit"{kind}>{escape(label)}{named}</button></form>')


def nav(current: str) -> str:
    links = (("/account", "Account"), ("/account/memory", "Memory"), ("/logout", "Sign out"))
    mark = ' aria-current="page"'
    items = "".join(f'<li><a href="{href}"{mark if href == current else ""}>{name}</a></li>' for href, name in links)
    return f'<nav aria-label="Account pages"><ul>{items}</ul></nav>'


def page(title: str, current: str, body: str, status: int = 200) -> web.Response:
    return pages.render(title, nav(current) + body, status, style=STYLE)

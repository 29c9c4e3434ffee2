"""`/setup`: the first account, created in the browser from a one-time link.

A server with no users prints a link when it starts (`setup_link`):
`http://127.0.0.1:<port>/setup?code=<code>`. The code is a Fernet token under a key of its own
derived from the server's cookie key (`auth.browser.derive_fernet`): authenticated, random,
timestamped. So every process of the deployment (workers, instances sharing the key) accepts it,
and nothing about it is stored. The rules, in the order they are checked:

1. only from this machine: the request's address (the forwarded one behind `trusted_proxies`)
   and the socket peer must both be loopback; anything else is answered 404, as if `/setup` did
   not exist;
2. a code that does not verify: 404;
3. any account at all (created with the CLI, or with this link): 404. This is what makes the link
   usable once: the account is created by `UserStore.add_user(first=True)`, which refuses in the
   same store transaction (SQLite) or script (Redis) when any account exists, so two submissions
   racing with one link create one account;
4. older than `SETUP_TTL` (30 minutes): 410, with what to do (restart the server for a new link,
   or use the CLI).

The form carries the code in a hidden field and nothing else authorizes the POST: the code is the
form's CSRF token (unguessable, tied to this link), and no cookie is involved, so a browser on the
loopback origin needs none of the public origin's cookies. The code appears in the URL once, as
the operator received it: the access log never writes query strings, the page sends no Referer
and loads nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from html import escape

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from auth import accounts, browser, pages
from auth.errors import BadRequest, PageError
from auth.http import client_address, read_form
from auth.server import AUTH_SERVER
from auth.store import NotFirstUserError

log = logging.getLogger(__name__)

PATH = "/setup"
SETUP_TTL = 30 * 60
_PURPOSE = "setup link"
_PAYLOAD = b"memory-mcp first account"
FIELDS = ("username", "password", "password_again")


def setup_key(cookie_key: bytes) -> Fernet:
    return browser.derive_fernet(cookie_key, _PURPOSE)


def new_code(cookie_key: bytes, now: float | None = None) -> str:
    key = setup_key(cookie_key)
    return key.encrypt_at_time(_PAYLOAD, int(time.time() if now is None else now)).decode()


def setup_link(base: str, cookie_key: bytes) -> str:
    """The link to print: `base` is a loopback origin of this server (`http://127.0.0.1:8000`)."""
    return f"{base}{PATH}?code={new_code(cookie_key)}"


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class SetupPage:
    """GET and POST /setup (module docstring)."""

    def __init__(self, cookie_key: bytes) -> None:
        self._key = setup_key(cookie_key)
        self.routes = (("GET", PATH, self.handle_page), ("POST", PATH, self.handle_create))

    async def _check(self, request: web.Request, code: str | None) -> str:
        """The valid code, or the refusal (module docstring, rules 1-4)."""
        if not (_loopback(request.remote) and _loopback(client_address(request))) or not code:
            raise web.HTTPNotFound()
        try:
            issued = self._key.extract_timestamp(code.encode())  # verifies the MAC
            ours = self._key.decrypt(code.encode()) == _PAYLOAD
        except (InvalidToken, ValueError, UnicodeError):
            ours = False
        if not ours:
            raise web.HTTPNotFound()
        if await request.app[AUTH_SERVER].store.list_users():
            raise web.HTTPNotFound()
        if time.time() - issued > SETUP_TTL:
            raise PageError(f"This setup link is older than {SETUP_TTL // 60} minutes. Restart memory-mcp for a new "
                            "one, or create the account on the command line: memory-mcp users add <name>",
                            410, "Setup link expired")
        return code

    async def handle_page(self, request: web.Request) -> web.Response:
        code = await self._check(request, request.query.get("code"))
        return _form(code)

    async def handle_create(self, request: web.Request) -> web.Response:
        try:
            form = await read_form(request)
        except BadRequest as exc:
            raise PageError(exc.description, exc.status, "Account not created") from exc
        code = await self._check(request, form.get("code"))
        username, password = form.get("username", ""), form.get("password", "")
        problem = None
        if password != form.get("password_again", ""):
            problem = "The two passwords differ. Type the same password twice."
        else:
            try:
                accounts.check_username(username)
                accounts.check_password(password)
            except accounts.AccountError as exc:
                problem = str(exc).capitalize() + "."
        if problem is not None:
            return _form(code, username=username, problem=problem)
        try:
            user = await accounts.add_user(request.app[AUTH_SERVER].store, username, password, first=True)
        except NotFirstUserError:
            raise web.HTTPNotFound() from None
        log.info("first account %r created through the setup link", user.username)
        issuer = request.app[AUTH_SERVER].settings.issuer
        return pages.render("Account created", (
            f"<p>The account <strong>{escape(user.username)}</strong> is ready, and this setup link no longer "
            "works.</p><p>Add this server to your MCP client with the address "
            f"<code>{escape(issuer)}/mcp</code>; it will open a browser page where you sign in as "
            f"<strong>{escape(user.username)}</strong>.</p>"
            '<p class="muted">More accounts: <code>memory-mcp users add &lt;name&gt;</code></p>'))


def _form(code: str, *, username: str = "", problem: str | None = None) -> web.Response:
    message = f'<p class="error" role="alert">{escape(problem)}</p>' if problem else ""
    body = (f"{message}<p>This server has no accounts yet. Choose the username and password of the first one; "
            "you will sign in with them when an MCP client connects.</p>"
            f'<form method="post" action="{PATH}"><input type="hidden" name="code" value="{escape(code)}">'
            '<label for="username">Username</label>'
            f'<input type="text" id="username" name="username" value="{escape(username)}" autocomplete="username" '
            f'autocapitalize="none" required{"" if username else " autofocus"} aria-describedby="username-rule">'
            f'<p class="muted" id="username-rule">{escape(accounts.USERNAME_RULE.capitalize())}.</p>'
            '<label for="password">Password</label>'
            '<input type="password" id="password" name="password" autocomplete="new-password" required '
            f'minlength="{accounts.PASSWORD_MIN}"{" autofocus" if username else ""} aria-describedby="password-rule">'
            f'<p class="muted" id="password-rule">At least {accounts.PASSWORD_MIN} characters.</p>'
            '<label for="password_again">Password again</label>'
            '<input type="password" id="password_again" name="password_again" autocomplete="new-password" required>'
            '<button type="submit" class="primary">Create account</button></form>')
    return pages.render("Create the first account", body, 400 if problem else 200)

"""A scripted browser: follows the authorization server's redirects and submits its login and
consent forms over plain HTTP, standing in for the person at the keyboard."""

from __future__ import annotations

import html
import re
import ssl
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: dict[str, list[str]] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.by_id: dict[str, Form] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
            if a.get("id"):
                self.by_id[a["id"]] = self.forms[-1]
        elif tag in ("input", "button") and a.get("name"):
            # A control belongs to the form it names (`form="id"`, the provider's logout page), else
            # to the form it is in.
            form = self.by_id.get(a["form"]) if a.get("form") else (self.forms[-1] if self.forms else None)
            if form is None:
                return
            kind = a.get("type", "text" if tag == "input" else "submit")
            if kind in ("checkbox", "radio") and "checked" not in a:
                return  # an unticked box is not submitted (the consent page's "remember" is off)
            if kind == "submit":
                form.buttons.setdefault(a["name"], []).append(a.get("value", ""))
            else:
                form.fields[a["name"]] = a.get("value", "")


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


@dataclass
class Redirect:
    """Where the authorization server finally sent the browser (the client's redirect URI)."""

    url: str

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}


class Browser:
    def __init__(self, username: str, password: str, *, decision: str = "approve",
                 ssl_context: ssl.SSLContext | None = None, provider: str | None = None,
                 memory: str | None = None, new_memory: str | None = None, remember: bool = False) -> None:
        """`ssl_context`: what to trust for https (a test's own certificate); default the system's.
        `provider`: the origin of an upstream OpenID provider to sign in through (the sign-in
        page's "sign in with" button, then the provider's own login form, where `username` is
        typed as the login) instead of the password form. `memory`: the memory to choose on the
        consent page, by name (the page's preselected `default` otherwise); `new_memory`: a name
        to type into its "create a new memory" field; `remember`: tick "remember this approval"."""
        self.memory = memory
        self.new_memory = new_memory
        self.remember = remember
        self.username = username
        self.password = password
        self.decision = decision
        self.provider = provider
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             connector=aiohttp.TCPConnector(ssl=ssl_context or True))
        self.pages: list[str] = []
        # The last page seen, and its status (an error page ends `authorize` with AssertionError).
        self.last_status = 0
        self.last_page = ""
        self.visited: list[str] = []

    def _within(self, url: str, origin: str) -> bool:
        return url.startswith(origin + "/") or (self.provider is not None and url.startswith(self.provider + "/"))

    def _form(self, forms: list[Form]) -> Form:
        """The form a person would use: the upstream sign-in when a provider is given, else the
        first one (the password form, a consent, the provider's own forms)."""
        for form in forms:
            if form.action.endswith("/login/upstream") if self.provider is not None else "password" in form.fields:
                return form
        return forms[0]

    async def close(self) -> None:
        await self.session.close()

    async def authorize(self, url: str, origin: str, *, stop_at: str | None = None) -> Redirect:
        """Visit `url` and click through until the server redirects off its own origin (and the
        provider's), or to a URL starting with `stop_at` (not visited)."""
        method, data = "GET", None
        for _ in range(20):
            self.visited.append(url)
            async with self.session.request(method, url, data=data, allow_redirects=False) as resp:
                body = await resp.text()
                self.last_status, self.last_page = resp.status, body
                if resp.status in (301, 302, 303, 307):
                    target = urljoin(url, resp.headers["Location"])
                    if not self._within(target, origin) or (stop_at and target.startswith(stop_at)):
                        return Redirect(target)
                    method, url, data = "GET", target, None
                    continue
                if resp.status != 200:
                    raise AssertionError(f"{resp.status} from {url}: {body[:500]}")
            self.pages.append(body)
            refresh = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]*)">', body)
            if refresh:
                # pages.continue_to: a navigation, which a browser makes without a click.
                target = urljoin(url, html.unescape(refresh.group(1)))
                if not self._within(target, origin):
                    return Redirect(target)
                method, url, data = "GET", target, None
                continue
            forms = parse_forms(body)
            assert forms, f"no form on {url}: {body[:500]}"
            form = self._form(forms)
            data = dict(form.fields)
            if "username" in data or "password" in data:
                data.update(username=self.username, password=self.password)
            if "login" in data:  # the provider's own sign-in form
                data.update(login=self.username, password=self.password)
            elif "decision" in form.buttons:
                data["decision"] = self.decision
                # The select's preselected option is `default`: a person who changes nothing sends it.
                if form.action.endswith("/consent"):
                    data["memory"] = self.memory or "default"
                    if self.new_memory is not None:
                        data["new_memory"] = self.new_memory
                    if self.remember:
                        data["remember"] = "1"
            elif form.buttons:  # a click on the form's (first) named button submits its value
                name, values = next(iter(form.buttons.items()))
                data[name] = values[0]
            method, url = form.method.upper(), urljoin(url, form.action or url)
        raise AssertionError("too many steps in the authorization flow")

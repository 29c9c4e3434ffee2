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

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag in ("input", "button") and self.forms and a.get("name"):
            kind = a.get("type", "text" if tag == "input" else "submit")
            if kind in ("checkbox", "radio") and "checked" not in a:
                return  # an unticked box is not submitted (the consent page's "remember" is off)
            if kind == "submit":
                self.forms[-1].buttons.setdefault(a["name"], []).append(a.get("value", ""))
            else:
                self.forms[-1].fields[a["name"]] = a.get("value", "")


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
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context`: what to trust for https (a test's own certificate); default the system's."""
        self.username = username
        self.password = password
        self.decision = decision
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             connector=aiohttp.TCPConnector(ssl=ssl_context or True))
        self.pages: list[str] = []

    async def close(self) -> None:
        await self.session.close()

    async def authorize(self, url: str, origin: str) -> Redirect:
        """Visit `url` and click through until the server redirects off its own origin."""
        method, data = "GET", None
        for _ in range(10):
            async with self.session.request(method, url, data=data, allow_redirects=False) as resp:
                body = await resp.text()
                if resp.status in (301, 302, 303, 307):
                    target = urljoin(url, resp.headers["Location"])
                    if not target.startswith(origin + "/"):
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
                if not target.startswith(origin + "/"):
                    return Redirect(target)
                method, url, data = "GET", target, None
                continue
            forms = parse_forms(body)
            assert forms, f"no form on {url}: {body[:500]}"
            form = forms[0]
            data = dict(form.fields)
            if "username" in data or "password" in data:
                data.update(username=self.username, password=self.password)
            elif "decision" in form.buttons:
                data["decision"] = self.decision
            method, url = form.method.upper(), urljoin(url, form.action or url)
        raise AssertionError("too many steps in the authorization flow")

"""What a person or a crawler finds at the server's address: the home page, HEAD on every page."""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import httpx2
from aiohttp import hdrs

from tests.conftest import RunningServer


async def test_the_root_says_what_this_is_and_links_to_the_pages_a_person_uses(
        http: httpx2.AsyncClient, server: RunningServer) -> None:
    home = await http.get(server.url + "/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert f"<code>{server.url}/mcp</code>" in home.text and "memory" in home.text.lower()
    for link in ('href="/login"', 'href="/account"'):
        assert link in home.text
    # The other pages' protections: no framing, no scripts, no referrer, not cached.
    csp = home.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert home.headers["x-frame-options"] == "DENY" and home.headers["referrer-policy"] == "no-referrer"
    assert home.headers["x-content-type-options"] == "nosniff" and home.headers["cache-control"] == "no-store"
    for path in ("/login", "/account", "/account/memory"):
        assert (await http.get(server.url + path)).status_code == 200
    # The remembered approvals are part of the account page now; the old address leads there.
    consents = await http.get(server.url + "/consents")
    assert consents.status_code == 303 and consents.headers["location"] == server.url + "/account#applications"


async def test_head_works_on_every_get_endpoint(http: httpx2.AsyncClient, server: RunningServer) -> None:
    """Every route that answers GET (found in the router, so a new page cannot be missed) answers
    HEAD with the same status and headers and no body; the MCP endpoints are not pages."""
    paths = sorted({info["path"] for route in server.app.router.routes() if route.method == hdrs.METH_GET
                    and "path" in (info := route.resource.get_info() if route.resource else {})})
    assert {"/", "/healthz", "/.well-known/oauth-authorization-server", "/.well-known/jwks.json",
            "/.well-known/openid-configuration", "/.well-known/oauth-protected-resource/mcp", "/login",
            "/consents", "/authorize", "/userinfo", "/account", "/account/memory"} <= set(paths), paths
    for path in paths:
        get = await http.get(server.url + path)
        head = await http.head(server.url + path)
        assert head.status_code == get.status_code != 405, (path, head.status_code, get.status_code)
        assert head.content == b""
        assert head.headers.get("content-type") == get.headers.get("content-type"), path


async def test_the_home_page_renders_in_a_real_browser(server: RunningServer) -> None:
    """Chromium (Debian's `chromium`, headless) loads `/` under its own CSP and shows the links."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None, "the browser tests need Debian's chromium"
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
            "--dump-dom", server.url + "/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        dom, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = dom.decode()
    assert "<h1>memory-mcp</h1>" in text, text[:500]
    assert 'href="/login"' in text and 'href="/account"' in text and f"{server.url}/mcp" in text

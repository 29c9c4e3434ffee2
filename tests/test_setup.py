"""The first run: `memory-mcp serve` with no users prints a one-time setup link (auth/setup.py),
which creates the first account in the browser; with users there is no link and /setup is 404.

Real processes and a real browser: the CLI's output is what a newcomer reads, and the form is
filled in Debian's Chromium (tests/test_pages_browser.py says how it is found)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from playwright.async_api import async_playwright

from auth import accounts
from auth.setup import SETUP_TTL, new_code
from tests.conftest import BACKENDS, RunningServer, start_server
from tests.test_account_browser import axe_source, axe_violations
from tests.test_pages_browser import chromium_path

CLI = [sys.executable, "-m", "server"]
PASSWORD = "first-password-1"


async def serve(data_dir: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`memory-mcp serve` on a free port: the process, its URL, the file holding its output."""
    log_path = data_dir.parent / f"serve-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([*CLI, "serve", "--port", "0", "--data-dir", str(data_dir), *flags],
                                   stdout=log, stderr=subprocess.STDOUT)
    for _ in range(400):
        found = re.search(r"serving MCP at (\S+)/mcp", log_path.read_text())
        if found:
            return process, found.group(1), log_path
        assert process.poll() is None, log_path.read_text()
        await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError(log_path.read_text())


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(30)


def link_in(output: str) -> str:
    found = re.findall(r"http://127\.0\.0\.1:\d+/setup\?code=\S+", output)
    assert len(found) == 1, output
    return str(found[0])


def form(code: str, username: str = "alice", password: str = PASSWORD, again: str | None = None) -> dict[str, str]:
    return {"code": code, "username": username, "password": password,
            "password_again": password if again is None else again}


@pytest.fixture(params=BACKENDS)
def store_flags(request: pytest.FixtureRequest) -> list[str]:
    return [f"--redis-url={request.getfixturevalue('redis_url')}"] if request.param == "redis" else []


async def test_the_first_run_link_creates_one_account_once(tmp_path: Path, store_flags: list[str]) -> None:
    data_dir = tmp_path / "data"
    process, url, log_path = await serve(data_dir, *store_flags)
    try:
        output = log_path.read_text()
        assert "No users yet. Create the first account in a browser on this machine" in output
        assert "users add <name> --password-stdin" in output  # the CLI path stays
        link = link_in(output)
        assert link.startswith(url + "/setup?code=")
        code = parse_qs(urlsplit(link).query)["code"][0]
        async with httpx2.AsyncClient(timeout=10) as http:
            page = await http.get(link)
            assert page.status_code == 200 and "Create the first account" in page.text
            assert page.headers["Referrer-Policy"] == "no-referrer"
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
            for field in ("username", "password", "password_again"):
                assert f'name="{field}"' in page.text

            differ = await http.post(url + "/setup", data=form(code, again=PASSWORD + "x"))
            assert differ.status_code == 400 and "The two passwords differ" in differ.text
            short = await http.post(url + "/setup", data=form(code, password="short"))
            assert short.status_code == 400 and "at least 8 characters" in short.text
            bad_name = await http.post(url + "/setup", data=form(code, username="no spaces"))
            assert bad_name.status_code == 400 and "Usernames are 1-64 characters" in bad_name.text

            created = await http.post(url + "/setup", data=form(code))
            assert created.status_code == 200, created.text
            assert "The account <strong>alice</strong> is ready" in created.text
            assert f"<code>{url}/mcp</code>" in created.text
            # Used once: the same link, and the same form again, are gone.
            assert (await http.get(link)).status_code == 404
            assert (await http.post(url + "/setup", data=form(code, username="mallory"))).status_code == 404
        users = subprocess.run([*CLI, "users", "list", "--data-dir", str(data_dir), *store_flags],
                               capture_output=True, text=True, timeout=60)
        assert users.returncode == 0 and users.stdout.split() [:1] == ["alice"], users
        assert code not in log_path.read_text().replace(link, ""), "the code was logged"
    finally:
        stop(process)

    # With a user, no link is printed, and /setup is 404 whatever the code.
    process, url, log_path = await serve(data_dir, *store_flags)
    try:
        assert "No users yet" not in log_path.read_text() and "/setup" not in log_path.read_text()
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await http.get(url + "/setup")).status_code == 404
            assert (await http.get(url + "/setup", params={"code": code})).status_code == 404
    finally:
        stop(process)


async def test_the_account_is_made_in_a_real_browser(tmp_path: Path) -> None:
    process, _, log_path = await serve(tmp_path / "data")
    try:
        link = link_in(log_path.read_text())
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium_path())
            try:
                for width in (1280, 400):
                    context = await browser.new_context(viewport={"width": width, "height": 900})
                    page = await context.new_page()
                    await page.goto(link)
                    assert await page.title() == "Create the first account"
                    await page.screenshot(path=str(tmp_path / f"setup-{width}.png"), full_page=True)
                    # Nothing wider than the window: readable on a phone without scrolling sideways.
                    assert await page.evaluate("document.documentElement.scrollWidth") <= width
                    await context.close()
                # The setup page under axe-core (in a context of its own that lets the script in).
                context = await browser.new_context(bypass_csp=True)
                page = await context.new_page()
                await page.goto(link)
                found = await axe_violations(page, axe_source())
                assert found == [], found
                await context.close()
                context = await browser.new_context()
                page = await context.new_page()
                await page.goto(link)
                # Labels name the fields (accessibility): fill them by their labels.
                await page.get_by_label("Username").fill("alice")
                await page.get_by_label("Password", exact=True).fill(PASSWORD)
                await page.get_by_label("Password again").fill(PASSWORD + "!")
                await page.get_by_role("button", name="Create account").click()
                await page.wait_for_selector("text=The two passwords differ")
                assert await page.get_by_label("Username").input_value() == "alice"
                await page.get_by_label("Password", exact=True).fill(PASSWORD)
                await page.get_by_label("Password again").fill(PASSWORD)
                await page.get_by_role("button", name="Create account").click()
                await page.wait_for_selector("text=is ready")
                assert await page.title() == "Account created"
                # The new account's own page, signed in from it.
                await page.goto(link.split("/setup")[0] + "/account")
                await page.get_by_label("Username").fill("alice")
                await page.get_by_label("Password").fill(PASSWORD)
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_selector("h1:has-text('Your account')")
                await page.screenshot(path=str(tmp_path / "setup-then-account.png"), full_page=True)
                await context.close()
            finally:
                await browser.close()
    finally:
        stop(process)
    users = subprocess.run([*CLI, "users", "list", "--data-dir", str(tmp_path / "data")],
                           capture_output=True, text=True, timeout=60)
    assert users.stdout.split()[:1] == ["alice"], users


@pytest.fixture
async def empty_server(data_dir: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(data_dir, trusted_proxies=["127.0.0.1/32"])
    yield running
    await running.stop()


async def test_refused_links(empty_server: RunningServer, http: httpx2.AsyncClient) -> None:
    url, key = empty_server.url, await empty_server.storage.cookie_key()
    code = new_code(key)
    # Not a code of ours: nothing says /setup exists.
    for bad in ("", "gAAAAAB-not-a-token", new_code(b"\x00" * 32), code[:-4] + "AAAA"):
        assert (await http.get(url + "/setup", params={"code": bad})).status_code == 404, bad
    assert (await http.get(url + "/setup")).status_code == 404
    # From another machine (through the trusted proxy, the client's address is the forwarded one).
    remote = await http.get(url + "/setup", params={"code": code}, headers={"X-Forwarded-For": "203.0.113.7"})
    assert remote.status_code == 404
    posted = await http.post(url + "/setup", data=form(code), headers={"X-Forwarded-For": "203.0.113.7"})
    assert posted.status_code == 404
    # Expired: a clear page that says what to do.
    old = new_code(key, time.time() - SETUP_TTL - 5)
    expired = await http.get(url + "/setup", params={"code": old})
    assert expired.status_code == 410 and "Restart memory-mcp for a new one" in expired.text
    assert (await http.post(url + "/setup", data=form(old))).status_code == 410
    assert await accounts.list_users(empty_server.storage) == []
    # Still usable: none of the above spent it.
    assert (await http.get(url + "/setup", params={"code": code})).status_code == 200


async def test_racing_submissions_create_one_account(empty_server: RunningServer, http: httpx2.AsyncClient) -> None:
    code = new_code(await empty_server.storage.cookie_key())
    answers = await asyncio.gather(*(http.post(empty_server.url + "/setup", data=form(code, username=f"user{i}"))
                                     for i in range(6)))
    assert sorted(a.status_code for a in answers) == [200] + [404] * 5, [a.status_code for a in answers]
    assert len(await accounts.list_users(empty_server.storage)) == 1

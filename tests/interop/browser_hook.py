"""What a client CLI (Codex, Claude Code) runs as `$BROWSER URL` during its login: the person at the keyboard.

It opens the authorization URL with the scripted browser of tests/browser.py (log in as the
configured user, approve the consent), then delivers the final redirect to the client's loopback
callback listener, as a real browser following that redirect would. What it saw goes to a
JSON-lines log so the test can assert on the authorization request the client built and on the
page its callback served.

Clients may wait for the browser command to exit before they go on, so the work runs in a
forked child and the command itself returns at once, as `xdg-open` does.

Usage: browser_hook.py --config FILE URL (FILE: JSON with username, password, origin, log, and
`provider`, the origin of an upstream OpenID provider to sign in through, for a driver's
`--upstream` run, and `memory`, the memory to choose on the consent page, for a `--memory` run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.browser import Browser  # noqa: E402 - needs the repository on sys.path first


def log(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


async def authorize(config: dict[str, Any], url: str) -> tuple[str, list[str]]:
    """Log in and consent at `url`; the redirect (to the client's callback) the server answered
    with, and the pages visited on the way (without their queries)."""
    browser = Browser(config["username"], config["password"], provider=config.get("provider"),
                      memory=config.get("memory"))
    try:
        return (await browser.authorize(url, config["origin"])).url, [u.split("?")[0] for u in browser.visited]
    finally:
        await browser.close()


def run(config: dict[str, Any], url: str) -> None:
    record = Path(config["log"])
    log(record, {"event": "open", "url": url})
    try:
        callback, visited = asyncio.run(authorize(config, url))
        log(record, {"event": "redirect", "url": callback, "visited": visited})
        # The callback is the client's own loopback listener; no proxy may sit in between.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(callback, timeout=30) as resp:
            page = resp.read(200_000).decode("utf-8", "replace")
            log(record, {"event": "callback", "status": resp.status, "body": page})
    except Exception as exc:
        log(record, {"event": "error", "error": repr(exc), "traceback": traceback.format_exc()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("url")
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    # The child stays in the client's process group (no setsid), so the driver's clean-up of that
    # group reaches it; its stdio is detached so the client never waits on a pipe (or the
    # terminal) the child holds open.
    if os.fork() == 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            run(config, args.url)
        finally:
            os._exit(0)


if __name__ == "__main__":
    main()

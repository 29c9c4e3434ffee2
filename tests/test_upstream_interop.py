"""Real Codex and Claude Code logins through an upstream OpenID provider (issue 12).

The same drivers as tests/test_interop_codex.py and tests/test_interop_claude.py (real CLIs from
npm, loopback only, in their own network and PID namespaces, stand-in models), run with
`--upstream`: the server signs users in only through oidc-provider (tests/upstream.py), and the
scripted browser signs in there as the provider's account `alice`. Each CLI must end up holding
this server's tokens, for the account the server created and linked to that upstream identity,
and use them for the memory tools; the provider's tokens reach neither the CLI nor the server's log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from auth.crypto import hash_secret
from server.storage.sqlite import SQLiteStorage
from tests.interop.harness import drive, namespace_argv
from tests.test_interop_claude import CLAUDE, CLAUDE_DIR, ClaudeRun
from tests.test_interop_codex import ADA, CODEX, CODEX_DIR, CodexRun, tool_output_json
from tests.upstream import INSTALLED, OIDC_DIR

RUN_TIMEOUT = 200


def run_driver(driver: Path, work: Path, *args: str) -> dict[str, Any]:
    assert INSTALLED.exists(), f"oidc-provider not installed: run `bash {OIDC_DIR / 'install.sh'}`"
    argv = [*namespace_argv(), sys.executable, str(driver), "--work", str(work), "--upstream", *args]
    return drive(argv, work, RUN_TIMEOUT, driver.parent.name, "*.err")


@pytest.fixture(scope="module")
def codex_upstream(tmp_path_factory: pytest.TempPathFactory) -> CodexRun:
    assert CODEX.exists(), f"Codex CLI not installed: run `bash {CODEX_DIR / 'install.sh'}`"
    work = tmp_path_factory.mktemp("codex-upstream")
    return CodexRun(work, run_driver(CODEX_DIR / "run.py", work, "--codex", str(CODEX)))


@pytest.fixture(scope="module")
def claude_upstream(tmp_path_factory: pytest.TempPathFactory) -> ClaudeRun:
    assert CLAUDE.exists(), f"Claude Code not installed: run `bash {CLAUDE_DIR / 'install.sh'}`"
    work = tmp_path_factory.mktemp("claude-upstream")
    return ClaudeRun(work, run_driver(CLAUDE_DIR / "run.py", work, "--claude", str(CLAUDE)))


async def linked_alice(data_dir: str, provider: str) -> tuple[SQLiteStorage, str]:
    storage = SQLiteStorage(Path(data_dir) / "memory.sqlite3")
    [account] = await storage.list_users()
    link = await storage.get_upstream_link(account.id)
    assert link is not None and (link.issuer, link.subject) == (provider, "alice")
    assert account.username == "alice"
    return storage, account.id


def signed_in_upstream(browser_log: list[dict[str, Any]], provider: str, logins: int) -> None:
    visits = [e["visited"] for e in browser_log if e["event"] == "redirect"]
    assert len(visits) == logins
    for urls in visits:
        assert any(u.startswith(provider + "/interaction/") for u in urls), urls  # the provider's sign-in
        assert any(u.endswith("/login/upstream/callback") for u in urls), urls  # back through our callback
    assert not [e for e in browser_log if e["event"] == "error"]


async def test_codex_signs_in_through_the_provider(codex_upstream: CodexRun) -> None:
    run = codex_upstream
    assert "Successfully logged in" in run.text("codex-mcp-add.out")
    signed_in_upstream(run.jsonl("browser.jsonl"), run.result["provider"], 2)
    storage, alice = await linked_alice(run.result["data_dir"], run.result["provider"])
    try:
        for step in ("codex-mcp-add", "codex-mcp-login"):
            creds = run.credentials(step)
            assert creds["issuer"] == run.result["origin"]  # our issuer, not the provider's
            for kind in ("access", "refresh"):
                token = await storage.get_token(hash_secret(creds[f"{kind}_token"]), now=0)
                assert token is not None and token.subject == alice
        graph = (await storage.read_graph(alice)).model()
        assert [e.model_dump() for e in graph.entities] == [ADA]
    finally:
        await storage.close()
    calls = [e["item"] for e in run.jsonl("codex-exec-recall.out")
             if e["type"] == "item.completed" and e["item"]["type"] == "mcp_tool_call"]
    assert calls[0]["result"]["structured_content"] == {"entities": [ADA], "relations": []}
    outputs = {item["call_id"]: item["output"] for entry in run.jsonl("model-requests.jsonl")
               for item in entry.get("body", {}).get("input", []) if item.get("type") == "function_call_output"}
    assert tool_output_json(outputs["call_memory_0"]) == {"entities": [ADA]}


async def test_claude_code_signs_in_through_the_provider(claude_upstream: ClaudeRun) -> None:
    run = claude_upstream
    browser_log = run.jsonl("browser.jsonl")
    # `claude mcp login` through $BROWSER; the pasted `--no-browser` login drives the same browser.
    signed_in_upstream(browser_log, run.result["provider"], 1)
    assert [e["event"] for e in browser_log if e["event"] in ("printed", "pasted")] == ["printed", "pasted"]
    storage, alice = await linked_alice(run.result["data_dir"], run.result["provider"])
    try:
        creds = run.credentials("claude-p-recall")
        token = await storage.get_token(hash_secret(creds["accessToken"]), now=0)
        assert token is not None and token.subject == alice
        graph = (await storage.read_graph(alice)).model()
        assert [e.model_dump() for e in graph.entities] == [ADA]
    finally:
        await storage.close()
    recalled = [m for m in run.stream("claude-p-recall") if m.get("type") == "user"]
    assert any("Ada Lovelace" in json.dumps(m) for m in recalled)
    assert "aiohttp.access" in run.text("server.log")

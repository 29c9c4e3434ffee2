"""Interoperability with a real MCP client: the OpenAI Codex CLI, pinned in tests/interop/codex.

One run of tests/interop/codex/run.py, inside its own network and PID namespaces, does what a user
does: `memory-mcp users add` and `serve`; `codex mcp add` (which logs in through our OAuth server,
the scripted browser standing in for the person); `codex exec`, where a loopback stand-in model
makes Codex call `create_entities` then `read_graph`; `codex mcp logout` and `codex mcp login`;
a second `codex exec` that reads the memory back. The tests below check each part of that run
against Codex's own files, the model stand-in's record, the server's access log and its store. The
run is made twice: with the server on SQLite, and on a private Redis (the same tests, one more run).

The same driver with `--personal-token` is the headless setup instead: a personal access token
from `memory-mcp tokens create` in an environment variable (`codex mcp add --bearer-token-env-var`),
no browser, no OAuth.

Codex must be installed (`bash tests/interop/codex/install.sh`): without it these tests fail.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from auth import memories
from auth.crypto import hash_secret
from server.storage import Storage
from tests.interop.harness import drive, namespace_argv, store_after

CODEX_DIR = Path(__file__).parent / "interop" / "codex"
CODEX = CODEX_DIR / "node_modules" / ".bin" / "codex"
CODEX_VERSION = json.loads((CODEX_DIR / "package.json").read_text())["dependencies"]["@openai/codex"]
DRIVER = CODEX_DIR / "run.py"
# A healthy run takes about 10 s. The driver gives up by itself after 150 s (run.RUN_DEADLINE);
# this outer bound only catches a driver that hangs.
RUN_TIMEOUT = 200
TOOL_NAMES = {"create_entities", "create_relations", "add_observations", "delete_entities",
              "delete_observations", "delete_relations", "read_graph", "search_nodes", "open_nodes"}
ADA = {"name": "Ada Lovelace", "entityType": "person", "observations": ["wrote the first published computer program"]}


@dataclass
class CodexRun:
    work: Path
    result: dict[str, Any]

    def step(self, name: str) -> dict[str, Any]:
        steps: list[dict[str, Any]] = [s for s in self.result["steps"] if s["name"] == name]
        [step] = steps
        return step

    def text(self, name: str) -> str:
        return (self.work / name).read_text()

    def jsonl(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text(name).splitlines() if line.strip()]

    def credentials(self, after: str) -> dict[str, Any]:
        """Codex's stored OAuth credentials for our server, as they were after step `after`."""
        stored = json.loads(self.text(f"credentials-after-{after}.json"))
        entries: list[dict[str, Any]] = list(stored.values())
        [entry] = entries  # one server, one entry
        return entry

    def requests(self, step: str) -> list[tuple[str, str, int]]:
        """(method, path without query, status) of each access-log line the step caused."""
        seen = []
        for line in self.step(step)["server_log_lines"]:
            if "aiohttp.access" not in line:
                continue
            request, status = line.split('"')[1], line.split('"')[2].split()[0]
            method, target, _ = request.split()
            seen.append((method, target.split("?")[0], int(status)))
        return seen


def drive_codex(work: Path, *flags: str) -> CodexRun:
    """One run of the driver (run.py) in its namespaces, checked to have completed every step."""
    assert CODEX.exists(), f"Codex CLI not installed: run `bash {CODEX_DIR / 'install.sh'}`"
    argv = [*namespace_argv(), sys.executable, str(DRIVER), "--work", str(work), "--codex", str(CODEX), *flags]
    return CodexRun(work, drive(argv, work, RUN_TIMEOUT, "Codex", "*.err"))


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def codex_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> CodexRun:
    # The Redis run also works on a named memory chosen at consent (auth.memories).
    return drive_codex(tmp_path_factory.mktemp("codex"),
                       *(["--redis", "--memory", "Codex work"] if request.param == "redis" else []))


@pytest.fixture(scope="module")
def codex_token_run(tmp_path_factory: pytest.TempPathFactory) -> CodexRun:
    """The headless setup: a personal access token in an environment variable, no sign-in."""
    return drive_codex(tmp_path_factory.mktemp("codex-token"), "--personal-token")


@pytest.fixture
async def storage(codex_run: CodexRun) -> AsyncIterator[Storage]:
    """The server's store after the run (the server has stopped; its Redis is started again on the
    data it kept)."""
    async with store_after(codex_run.result) as opened:
        yield opened


def test_pinned_codex_ran(codex_run: CodexRun) -> None:
    assert codex_run.text("codex-version.out").strip() == f"codex-cli {CODEX_VERSION}"


def test_mcp_add_logs_in_through_our_authorization_server(codex_run: CodexRun) -> None:
    assert "Successfully logged in" in codex_run.text("codex-mcp-add.out")
    # The wire sequence of an MCP OAuth login (each request once, or discovery twice, in order).
    assert_in_order(codex_run.requests("codex-mcp-add"), [
        ("GET", "/mcp", 401),
        ("GET", "/.well-known/oauth-protected-resource/mcp", 200),
        ("GET", "/.well-known/oauth-authorization-server", 200),
        ("POST", "/register", 201),
        ("GET", "/authorize", 200),   # the login form
        ("POST", "/login", 200),      # answered with the consent form itself
        ("POST", "/consent", 303),    # to Codex's loopback callback
        ("POST", "/token", 200),
    ])
    opened = [e for e in codex_run.jsonl("browser.jsonl") if e["event"] == "open"]
    assert len(opened) == 2  # mcp add, then mcp login
    for entry in opened:
        query = {k: v[0] for k, v in parse_qs(urlsplit(entry["url"]).query).items()}
        assert query["code_challenge_method"] == "S256"
        assert query["resource"] == codex_run.result["mcp_url"]
        assert set(query["scope"].split()) == {"memory:read", "memory:write"}
        callback = urlsplit(query["redirect_uri"])
        assert (callback.scheme, callback.hostname) == ("http", "127.0.0.1") and callback.path.startswith("/callback")
    callbacks = [e for e in codex_run.jsonl("browser.jsonl") if e["event"] == "callback"]
    assert [e["status"] for e in callbacks] == [200, 200]
    assert not [e for e in codex_run.jsonl("browser.jsonl") if e["event"] == "error"]


async def test_codex_holds_tokens_our_server_issued_to_alice(codex_run: CodexRun, storage: Storage) -> None:
    alice = await storage.get_user_by_name("alice")
    assert alice is not None
    first, second = codex_run.credentials("codex-mcp-add"), codex_run.credentials("codex-mcp-login")
    # Codex registers a fresh public client on every login.
    assert first["client_id"] != second["client_id"]
    for creds in (first, second):
        assert creds["server_url"] == codex_run.result["mcp_url"]
        assert creds["issuer"] == codex_run.result["origin"]
        client = await storage.get_client(creds["client_id"])
        assert client is not None and client.token_endpoint_auth_method == "none"
        assert all(urlsplit(uri).hostname == "127.0.0.1" for uri in client.redirect_uris)
        for kind in ("access", "refresh"):
            token = await storage.get_token(hash_secret(creds[f"{kind}_token"]), now=0)
            assert token is not None, f"{kind} token in Codex's file is unknown to the server"
            assert (token.kind, token.subject, token.client_id) == (kind, alice.id, creds["client_id"])
            assert token.resource == codex_run.result["mcp_url"]
    # `mcp list` reports the server as OAuth-authenticated; `mcp logout` forgot the credentials.
    [listed] = json.loads(codex_run.text("codex-mcp-list.out"))
    assert listed["name"] == "memory" and listed["auth_status"] == "o_auth"
    assert listed["transport"] == {**listed["transport"], "type": "streamable_http", "url": codex_run.result["mcp_url"]}
    assert not (codex_run.work / "credentials-after-codex-mcp-logout.json").exists()


def test_codex_offers_our_tools_to_the_model(codex_run: CodexRun) -> None:
    records = codex_run.jsonl("model-requests.jsonl")
    # Two turns: remember (call, call, answer) and recall (call, answer); nothing else was asked.
    assert [(r["method"], r["path"]) for r in records] == [("POST", "/v1/responses")] * 5
    first = records[0]["body"]
    [memory] = [t for t in first["tools"] if t.get("type") == "namespace" and t["name"] == "mcp__memory"]
    assert {t["name"] for t in memory["tools"]} == TOOL_NAMES
    assert memory["description"]  # our server's instructions reach the model


def test_exec_calls_create_entities_then_read_graph(codex_run: CodexRun) -> None:
    # What Codex fed back to the model: the results our server returned.
    outputs = {}
    for entry in codex_run.jsonl("model-requests.jsonl"):
        for item in entry.get("body", {}).get("input", []):
            if item.get("type") == "function_call_output":
                outputs[item["call_id"]] = item["output"]
    created = tool_output_json(outputs["call_memory_0"])
    assert created == {"entities": [ADA]}
    assert tool_output_json(outputs["call_memory_1"]) == {"entities": [ADA], "relations": []}
    # Codex's own account of the turn.
    calls = [e["item"] for e in codex_run.jsonl("codex-exec-remember.out")
             if e["type"] == "item.completed" and e["item"]["type"] == "mcp_tool_call"]
    assert [(c["server"], c["tool"], c["status"]) for c in calls] == [
        ("memory", "create_entities", "completed"), ("memory", "read_graph", "completed")]
    # On the wire: no 401 once Codex had a session, every MCP POST accepted, the session ended.
    requests = codex_run.requests("codex-exec-remember")
    posts = [r for r in requests if r[:2] == ("POST", "/mcp")]
    assert len(posts) >= 4 and all(status in (200, 202) for _, _, status in posts)  # init, list, 2 calls
    assert ("DELETE", "/mcp", 200) in requests
    assert [r for r in requests[requests.index(posts[0]):] if r[2] == 401] == []


def test_second_login_reads_the_same_memory(codex_run: CodexRun) -> None:
    calls = [e["item"] for e in codex_run.jsonl("codex-exec-recall.out")
             if e["type"] == "item.completed" and e["item"]["type"] == "mcp_tool_call"]
    assert [(c["tool"], c["status"]) for c in calls] == [("read_graph", "completed")]
    assert calls[0]["result"]["structured_content"] == {"entities": [ADA], "relations": []}


async def test_entity_is_in_alices_graph(codex_run: CodexRun, storage: Storage) -> None:
    """In the memory chosen on the consent page: the Redis run picks a named one (`--memory`),
    and nothing lands in the default memory then."""
    alice = await storage.get_user_by_name("alice")
    assert alice is not None
    chosen = codex_run.result["memory"]
    assert (chosen is not None) == bool(codex_run.result.get("redis_dir"))  # the Redis run picks one
    memory = alice.id if chosen is None else (await memories.find_by_name(storage, alice, chosen)).id  # type: ignore[union-attr]
    graph = (await storage.read_graph(memory)).model()
    assert [e.model_dump() for e in graph.entities] == [ADA]
    assert graph.relations == []
    if chosen is not None:
        assert memory != alice.id and (await storage.read_graph(alice.id)).model().entities == []


# A personal access token (auth.personal) instead of an OAuth sign-in


def test_personal_token_mcp_add_needs_no_sign_in(codex_token_run: CodexRun) -> None:
    run = codex_token_run
    # Nothing of OAuth on the wire: no discovery, registration, authorization or token request.
    for step in ("codex-mcp-add", "codex-exec-remember", "codex-exec-recall"):
        paths = {path for _, path, _ in run.requests(step)}
        assert paths <= {"/mcp"}, (step, paths)
    [listed] = json.loads(run.text("codex-mcp-list.out"))
    assert listed["auth_status"] == "bearer_token"
    assert listed["transport"]["bearer_token_env_var"] == "MEMORY_TOKEN"
    # Codex keeps the variable's name, never the token.
    secret = run.text("tokens-create.out").splitlines()[-1]
    home = Path(run.result["codex_home"])
    assert not (home / ".credentials.json").exists()
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_personal_token_calls_the_tools_with_no_401(codex_token_run: CodexRun) -> None:
    run = codex_token_run
    calls = [e["item"] for e in run.jsonl("codex-exec-remember.out")
             if e["type"] == "item.completed" and e["item"]["type"] == "mcp_tool_call"]
    assert [(c["tool"], c["status"]) for c in calls] == [("create_entities", "completed"), ("read_graph", "completed")]
    recalled = [e["item"] for e in run.jsonl("codex-exec-recall.out")
                if e["type"] == "item.completed" and e["item"]["type"] == "mcp_tool_call"]
    assert [(c["tool"], c["status"]) for c in recalled] == [("read_graph", "completed")]
    assert recalled[0]["result"]["structured_content"] == {"entities": [ADA], "relations": []}
    for step in ("codex-exec-remember", "codex-exec-recall"):
        statuses = [status for _, _, status in run.requests(step)]
        assert statuses and all(status in (200, 202) for status in statuses), (step, statuses)


async def test_personal_token_reaches_alices_memory_and_records_its_use(codex_token_run: CodexRun) -> None:
    async with store_after(codex_token_run.result) as db:
        alice = await db.get_user_by_name("alice")
        assert alice is not None
        graph = (await db.read_graph(alice.id)).model()
        assert [e.model_dump() for e in graph.entities] == [ADA]
        [token] = await db.list_personal_tokens(alice.id, 0)
        assert token.id == codex_token_run.result["token_id"] and token.name == "codex"
        assert token.last_used_at is not None and token.last_used_at >= token.created_at
    listed = codex_token_run.text("tokens-list.out")
    assert codex_token_run.result["token_id"] in listed and "mmcp_pat_" not in listed


def tool_output_json(output: str) -> Any:
    """Codex prefixes an MCP tool's text for the model ("Wall time: ...\\nOutput:\\n<text>")."""
    return json.loads(output.split("Output:\n", 1)[1] if "Output:\n" in output else output)


def assert_in_order(seen: list[tuple[str, str, int]], expected: list[tuple[str, str, int]]) -> None:
    rest = iter(seen)
    missing = [step for step in expected if step not in rest]
    assert not missing, f"{missing} not seen in order in {seen}"

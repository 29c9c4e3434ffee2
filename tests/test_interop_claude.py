"""Interoperability with a real MCP client: Anthropic's Claude Code CLI, pinned in tests/interop/claude.

One run of tests/interop/claude/run.py, inside its own network and PID namespaces, does what a
user does: `memory-mcp users add` and `serve`; `claude mcp add --transport http`; `claude mcp
login` in a terminal (the scripted browser, as $BROWSER, standing in for the person); `claude mcp
list`; `claude -p`, where a loopback stand-in for the Messages API makes Claude Code load our
tools with its ToolSearch and call `create_entities` then `read_graph`; `claude mcp logout`;
`claude mcp login --no-browser` with the redirect URL pasted back at its prompt; then, its access
token marked expired, a second `claude -p` that refreshes it and reads the memory back. A
recording proxy in front of the server (wiretap.py) keeps the protocol version and JSON-RPC
method of every /mcp request. The tests below check each part of that run against Claude Code's
own files, the stand-in's record, the tap's record, the server's access log and its store. The run
is made twice: with the server on SQLite, and on a private Redis (the same tests, one more run).

Claude Code must be installed (`bash tests/interop/claude/install.sh`): without it these tests fail.
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

CLAUDE_DIR = Path(__file__).parent / "interop" / "claude"
CLAUDE = CLAUDE_DIR / "node_modules" / ".bin" / "claude"
CLAUDE_VERSION = json.loads((CLAUDE_DIR / "package.json").read_text())["dependencies"]["@anthropic-ai/claude-code"]
DRIVER = CLAUDE_DIR / "run.py"
# A healthy run takes about 15 s. The driver gives up by itself after 100 s (run.RUN_DEADLINE);
# this outer bound only catches a driver that hangs.
RUN_TIMEOUT = 115
MODERN = "2026-07-28"
TOOL_NAMES = {"create_entities", "create_relations", "add_observations", "delete_entities",
              "delete_observations", "delete_relations", "read_graph", "search_nodes", "open_nodes"}
ADA = {"name": "Ada Lovelace", "entityType": "person", "observations": ["wrote the first published computer program"]}
LOGIN_WIRE = [
    ("GET", "/.well-known/oauth-protected-resource/mcp", 200),
    ("GET", "/.well-known/oauth-authorization-server", 200),
    ("POST", "/register", 201),
    ("GET", "/authorize", 200),   # the login form
    ("POST", "/login", 200),      # answered with the consent form itself
    ("POST", "/consent", 303),    # to Claude Code's loopback callback
    ("POST", "/token", 200),
]


@dataclass
class ClaudeRun:
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
        """Claude Code's stored OAuth credentials for our server, as they were after step `after`."""
        stored = json.loads(self.text(f"credentials-after-{after}.json"))
        entries: list[dict[str, Any]] = list(stored["mcpOAuth"].values())
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

    def wire(self, step: str) -> list[dict[str, Any]]:
        """The tap's record of each request the step caused."""
        records: list[dict[str, Any]] = self.step(step)["wire"]
        return records

    def mcp_methods(self, step: str) -> list[str]:
        return [message["method"] for record in self.wire(step) if record["path"] == "/mcp"
                for message in record.get("request") or [] if "method" in message]

    def tool_methods(self, step: str) -> list[str]:
        """`mcp_methods` without the one resources/list a `claude -p` turn sends beside its tool list
        (the server offers memory://knowledge-graph), in whichever order the two go."""
        methods = self.mcp_methods(step)
        assert methods.count("resources/list") == 1, methods
        return [method for method in methods if method != "resources/list"]

    def stream(self, step: str) -> list[dict[str, Any]]:
        """Claude Code's stream-json account of a `claude -p` turn."""
        return self.jsonl(f"{step}.out")


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def claude_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> ClaudeRun:
    assert CLAUDE.exists(), f"Claude Code not installed: run `bash {CLAUDE_DIR / 'install.sh'}`"
    work = tmp_path_factory.mktemp("claude")
    argv = [*namespace_argv(), sys.executable, str(DRIVER), "--work", str(work), "--claude", str(CLAUDE)]
    if request.param == "redis":
        # The Redis run also works on a named memory chosen at consent (auth.memories).
        argv += ["--redis", "--memory", "Claude work"]
    result = drive(argv, work, RUN_TIMEOUT, "Claude Code", "*.out")
    return ClaudeRun(work, result)


@pytest.fixture
async def storage(claude_run: ClaudeRun) -> AsyncIterator[Storage]:
    """The server's store after the run (the server has stopped; its Redis is started again on the
    data it kept)."""
    async with store_after(claude_run.result) as opened:
        yield opened


def test_pinned_claude_code_ran(claude_run: ClaudeRun) -> None:
    assert claude_run.text("claude-version.out").strip() == f"{CLAUDE_VERSION} (Claude Code)"


def test_mcp_add_then_login_through_our_authorization_server(claude_run: ClaudeRun) -> None:
    assert "Added HTTP MCP server memory" in claude_run.text("claude-mcp-add.out")
    assert claude_run.requests("claude-mcp-add") == []  # `mcp add` only writes the config
    for step in ("claude-mcp-login", "claude-mcp-login-paste"):
        assert 'Authenticated with "memory"' in claude_run.text(f"{step}.out")
        assert_in_order(claude_run.requests(step), LOGIN_WIRE)
        # The tap saw the same (it forwards every request the server logs).
        assert_in_order([(r["method"], r["path"], r["status"]) for r in claude_run.wire(step)], LOGIN_WIRE)
    events = claude_run.jsonl("browser.jsonl")
    # First login: Claude Code ran $BROWSER; second: it printed the URL (--no-browser) and took the
    # redirect URL typed at its prompt.
    assert [e["event"] for e in events] == ["open", "redirect", "callback", "printed", "pasted"]
    for entry in (events[0], events[3]):
        query = {k: v[0] for k, v in parse_qs(urlsplit(entry["url"]).query).items()}
        assert query["code_challenge_method"] == "S256"
        assert query["resource"] == claude_run.result["mcp_url"]
        assert set(query["scope"].split()) == {"memory:read", "memory:write"}
        callback = urlsplit(query["redirect_uri"])
        assert (callback.scheme, callback.hostname, callback.path) == ("http", "localhost", "/callback")
    callback = events[2]
    assert callback["status"] == 200 and "Claude Code" in callback["body"]
    for redirect in (events[1], events[4]):
        params = {k: v[0] for k, v in parse_qs(urlsplit(redirect["url"]).query).items()}
        assert params["iss"] == claude_run.result["origin"] and params["code"] and params["state"]


async def test_claude_code_holds_tokens_our_server_issued_to_alice(claude_run: ClaudeRun,
                                                                   storage: Storage) -> None:
    alice = await storage.get_user_by_name("alice")
    assert alice is not None
    first, second = claude_run.credentials("claude-mcp-login"), claude_run.credentials("claude-mcp-login-paste")
    assert first["clientId"] != second["clientId"]  # a fresh registration on every login
    for creds in (first, second):
        assert creds["serverName"] == "memory"
        assert creds["serverUrl"] == claude_run.result["mcp_url"]
        assert creds["issuer"] == claude_run.result["origin"]
        assert set(creds["scope"].split()) == {"memory:read", "memory:write"}
        client = await storage.get_client(creds["clientId"])
        assert client is not None and client.token_endpoint_auth_method == "none"
        assert client.redirect_uris == (creds["redirectUri"],)
    # The tokens Claude Code holds at the end (the second login's, refreshed) are live at the
    # server, alice's, for our /mcp resource.
    final = claude_run.credentials("claude-p-recall")
    assert final["clientId"] == second["clientId"]
    for kind, field in (("access", "accessToken"), ("refresh", "refreshToken")):
        token = await storage.get_token(hash_secret(final[field]), now=0)
        assert token is not None, f"{kind} token in Claude Code's file is unknown to the server"
        assert (token.kind, token.subject, token.client_id) == (kind, alice.id, second["clientId"])
        assert token.resource == claude_run.result["mcp_url"]
        # `claude mcp logout` revoked the first login's tokens at our server (RFC 7009) ...
        assert await storage.get_token(hash_secret(first[field]), now=0) is None
    assert [r for r in claude_run.requests("claude-mcp-logout") if r[1] == "/revoke"] == [("POST", "/revoke", 200)] * 2
    # ... and forgot them.
    assert json.loads(claude_run.text("credentials-after-claude-mcp-logout.json")) == {"mcpOAuth": {}}


async def test_expired_access_token_is_refreshed_with_rotation(claude_run: ClaudeRun, storage: Storage) -> None:
    expired = json.loads(claude_run.text("credentials-expired.json"))["mcpOAuth"]
    [before] = list(expired.values())
    after = claude_run.credentials("claude-p-recall")
    # Claude Code refreshed before its first /mcp request, and did not log in again.
    wire = [(r["method"], r["path"], r["status"]) for r in claude_run.wire("claude-p-recall")]
    assert wire[:2] == [("GET", "/.well-known/oauth-authorization-server", 200), ("POST", "/token", 200)]
    assert "/register" not in {path for _, path, _ in wire} and "/authorize" not in {path for _, path, _ in wire}
    assert after["accessToken"] != before["accessToken"] and after["refreshToken"] != before["refreshToken"]
    assert after["expiresAt"] > before["expiresAt"]
    # Rotation: the refresh token Claude Code spent is gone at the server.
    assert await storage.get_token(hash_secret(before["refreshToken"]), now=0) is None


def test_mcp_list_health_check_connects(claude_run: ClaudeRun) -> None:
    url = claude_run.result["mcp_url"]
    assert f"memory: {url} (HTTP) - ✔ Connected" in claude_run.text("claude-mcp-list.out")
    assert claude_run.mcp_methods("claude-mcp-list") == ["server/discover", "tools/list"]


def test_claude_code_speaks_the_2026_07_28_protocol(claude_run: ClaudeRun) -> None:
    """Every /mcp request of every step: stateless 2026-07-28, no initialize, no session."""
    steps = ("claude-mcp-list", "claude-p-remember", "claude-p-recall")
    for step in steps:
        records = [r for r in claude_run.wire(step) if r["path"] == "/mcp"]
        assert records and all(r["method"] == "POST" and r["status"] == 200 for r in records)
        for record in records:
            assert record["headers"]["mcp-protocol-version"] == MODERN
            assert "mcp-session-id" not in record["headers"] and "mcp-session-id" not in record["response_headers"]
            assert record["auth"] == "Bearer"
            [message] = record["request"]
            assert message["meta"]["io.modelcontextprotocol/protocolVersion"] == MODERN
            assert message["meta"]["io.modelcontextprotocol/clientInfo"]["name"] == "claude-code"
            assert record["headers"]["mcp-method"] == message["method"]
            [answer] = record["response"]
            assert "error" not in answer and answer["id"] == message["id"]
        # The first request of each process is the discovery probe, which our server answers.
        [probe] = records[0]["response"]
        assert records[0]["request"][0]["method"] == "server/discover"
        assert MODERN in probe["supportedVersions"] and "capabilities" in probe["result_keys"]
        assert "initialize" not in claude_run.mcp_methods(step)
    # Claude Code's own account of the connection.
    debug = claude_run.text("claude-p-remember.debug")
    assert '"protocolEra":"modern"' in debug and f'"negotiatedProtocolVersion":"{MODERN}"' in debug


def test_claude_code_offers_our_tools_to_the_model(claude_run: ClaudeRun) -> None:
    records = claude_run.jsonl("model-requests.jsonl")
    # Nothing but the Messages API was asked: remember (search, call, call, answer), recall
    # (search, call, answer).
    assert [(r["method"], r["path"].split("?")[0]) for r in records] == [("POST", "/v1/messages")] * 7
    first = records[0]["body"]
    # Claude Code 2.1.332 defers MCP tools: named in the conversation, loaded through ToolSearch.
    assert "ToolSearch" in {t["name"] for t in first["tools"]}
    assert not [t for t in first["tools"] if t["name"].startswith("mcp__")]
    listed = json.dumps(first["messages"])
    assert all(f"mcp__memory__{name}" in listed for name in TOOL_NAMES)
    assert records[0]["answer"]["content"][0]["name"] == "ToolSearch"
    loaded = {t["name"]: t for t in records[1]["body"]["tools"] if t["name"].startswith("mcp__memory__")}
    assert set(loaded) == {"mcp__memory__create_entities", "mcp__memory__read_graph"}
    schema = loaded["mcp__memory__create_entities"]["input_schema"]
    assert schema["type"] == "object" and "entities" in schema["properties"]
    assert loaded["mcp__memory__create_entities"]["description"]


def test_print_mode_calls_create_entities_then_read_graph(claude_run: ClaudeRun) -> None:
    # What Claude Code fed back to the model: the results our server returned.
    results: dict[str, Any] = {}
    for entry in claude_run.jsonl("model-requests.jsonl"):
        for message in entry["body"]["messages"]:
            if isinstance(message["content"], list):
                for block in message["content"]:
                    if block.get("type") == "tool_result":
                        results[block["tool_use_id"]] = block["content"]
    assert json.loads(results["toolu_memory_0"]) == {"entities": [ADA]}
    assert json.loads(results["toolu_memory_1"]) == {"entities": [ADA], "relations": []}
    # Claude Code's own account of the turn.
    stream = claude_run.stream("claude-p-remember")
    calls = [block for event in stream if event["type"] == "assistant"
             for block in event["message"]["content"] if block["type"] == "tool_use"]
    assert [c["name"] for c in calls] == ["ToolSearch", "mcp__memory__create_entities", "mcp__memory__read_graph"]
    tool_results = [block for event in stream if event["type"] == "user"
                    for block in event["message"]["content"] if block.get("type") == "tool_result"]
    assert not [r for r in tool_results if r.get("is_error")]
    [final] = [event for event in stream if event["type"] == "result"]
    assert final["subtype"] == "success" and final["result"] == "Done with the memory tools."
    assert final["permission_denials"] == []
    # On the wire: discovery, the tool list, then our two calls.
    assert claude_run.tool_methods("claude-p-remember") == ["server/discover", "tools/list", "tools/call", "tools/call"]
    calls_on_wire = [m["name"] for r in claude_run.wire("claude-p-remember") for m in r.get("request") or []
                     if m.get("method") == "tools/call"]
    assert calls_on_wire == ["create_entities", "read_graph"]
    # Discovery, the tool list, the resource list and the two calls.
    assert [status for _, path, status in claude_run.requests("claude-p-remember") if path == "/mcp"] == [200] * 5


def test_second_login_reads_the_same_memory(claude_run: ClaudeRun) -> None:
    stream = claude_run.stream("claude-p-recall")
    results = [block for event in stream if event["type"] == "user"
               for block in event["message"]["content"] if block.get("type") == "tool_result"
               and block["tool_use_id"] == "toolu_memory_2"]
    assert [json.loads(r["content"]) for r in results] == [{"entities": [ADA], "relations": []}]
    assert claude_run.tool_methods("claude-p-recall") == ["server/discover", "tools/list", "tools/call"]


async def test_entity_is_in_alices_graph(claude_run: ClaudeRun, storage: Storage) -> None:
    """In the memory chosen on the consent page: the Redis run picks a named one (`--memory`),
    and nothing lands in the default memory then."""
    alice = await storage.get_user_by_name("alice")
    assert alice is not None
    chosen = claude_run.result["memory"]
    assert (chosen is not None) == bool(claude_run.result.get("redis_dir"))  # the Redis run picks one
    memory = alice.id if chosen is None else (await memories.find_by_name(storage, alice, chosen)).id  # type: ignore[union-attr]
    graph = (await storage.read_graph(memory)).model()
    assert [e.model_dump() for e in graph.entities] == [ADA]
    assert graph.relations == []
    if chosen is not None:
        assert memory != alice.id and (await storage.read_graph(alice.id)).model().entities == []


def assert_in_order(seen: list[tuple[str, str, int]], expected: list[tuple[str, str, int]]) -> None:
    rest = iter(seen)
    missing = [step for step in expected if step not in rest]
    assert not missing, f"{missing} not seen in order in {seen}"

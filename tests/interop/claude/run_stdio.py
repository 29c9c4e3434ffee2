"""Drive the real Claude Code CLI against `memory-mcp stdio`, as a local MCP server, all offline.

The configuration a user has today, `claude mcp add memory -- npx -y
@modelcontextprotocol/server-memory` (with MEMORY_FILE_PATH in its environment), becomes `claude mcp
add memory --env MEMORY_FILE_PATH=... -- memory-mcp stdio --user alice`. Run like run.py (inside
fresh network and PID namespaces, tests/test_interop_claude_stdio.py does that), the steps are:

1. `memory-mcp users add alice --password-stdin` and `memory-mcp serve` on the same store (the
   SQLite data directory, or a private Redis with --redis): the HTTP server runs throughout, as it
   does for a user who also reaches the memory remotely;
2. the Messages API stand-in (model_stub.py), reached through ANTHROPIC_BASE_URL;
3. `claude mcp add --transport stdio memory --env MEMORY_FILE_PATH=WORK/official.jsonl --env
   PYTHONPATH=<repository> -- <venv>/bin/memory-mcp stdio --user alice <store flags>`
   (PYTHONPATH points the console script at the tree under test; a user needs none);
4. `claude mcp list`: Claude Code starts the server and checks it; at this first start the server
   imports the official server's file (MEMORY_FILE_PATH) into alice's memory, which is empty;
5. `claude -p` with a prompt that makes the stand-in model call create_entities, then read_graph.

Like run.py it asserts nothing: artifacts under --work, a summary in WORK/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from tests.interop.claude.run import (  # noqa: E402 - needs the repository on sys.path first
    ALLOWED_TOOLS,
    REMEMBER_PROMPT,
    SERVER_NAME,
    USERNAME,
    claude_env,
    default_claude,
    run_step,
    wait_port_line,
)
from tests.interop.harness import free_port, loopback_up, processes, run_store, wait_http  # noqa: E402

RUN_DEADLINE = 80.0
# The official server's file, as a user's old configuration names it.
OFFICIAL_FILE = [{"type": "entity", "name": "Charles Babbage", "entityType": "person",
                  "observations": ["designed the Analytical Engine"]}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="an empty directory for every artifact")
    parser.add_argument("--claude", type=Path, default=default_claude())
    parser.add_argument("--python", default=sys.executable, help="the interpreter with memory-mcp installed")
    parser.add_argument("--redis", action="store_true", help="keep the data in a private Redis (WORK/redis)")
    args = parser.parse_args()
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"steps": [], "deadline": time.monotonic() + RUN_DEADLINE}
    try:
        drive(work, args.claude, args.python, results, args.redis)
    except Exception as exc:
        results["error"] = repr(exc)
        results["traceback"] = traceback.format_exc()
    del results["deadline"]
    (work / "result.json").write_text(json.dumps(results, indent=2))
    return 0 if "error" not in results else 1


def drive(work: Path, claude: Path, python: str, results: dict[str, Any], redis: bool) -> None:
    loopback_up()
    memory_mcp = str(Path(python).parent / "memory-mcp")
    if not Path(memory_mcp).exists():
        raise RuntimeError(f"{memory_mcp} missing: install the project (pip install -e .) into that venv")
    if not claude.exists():
        raise RuntimeError(f"{claude} missing: run tests/interop/claude/install.sh")
    data_dir, home = work / "data", work / "home"
    (work / "project").mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    official = work / "official.jsonl"
    official.write_text("".join(json.dumps(record) + "\n" for record in OFFICIAL_FILE))
    server_port = free_port()
    results.update(data_dir=str(data_dir), claude_config_dir=str(home / ".claude"), official_file=str(official),
                   server_origin=f"http://127.0.0.1:{server_port}")
    # The tree under test, for every memory-mcp process (the venv's editable install may point elsewhere).
    base_env = {**{k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}, "PYTHONPATH": str(REPO)}
    with run_store(work, redis) as store_flags, processes() as procs:
        results["redis_dir"] = str(work / "redis") if redis else None
        added = run_step("users-add", [memory_mcp, "users", "add", USERNAME, "--password-stdin", "--data-dir",
                                       str(data_dir), *store_flags], work, base_env, 60, results,
                         stdin="alice-password-1\n")
        if added.returncode != 0:
            raise RuntimeError(f"users add failed: {added.stderr}")
        server = procs.start([memory_mcp, "serve", "--port", str(server_port), "--data-dir", str(data_dir),
                              *store_flags], work / "server.log", env=base_env)
        wait_http(results["server_origin"] + "/healthz", 30, server)
        stub = procs.start([python, str(HERE / "model_stub.py"), "--record", str(work / "model-requests.jsonl")],
                           work / "model-stub.log", env=base_env)
        stub_port = wait_port_line(work / "model-stub.log", stub)
        # Claude Code connects MCP servers in the background and, in print mode, sends its first
        # model request after a short wait, with or without them: a Python server starting on a
        # loaded machine (a second or more to import the SDK) can miss that turn. The person (or
        # script) who needs the tools in the first turn says to wait for them.
        env = {**claude_env(work, home, stub_port, work / "no-browser"), "MCP_CONNECTION_NONBLOCKING": "false"}
        claude_bin = str(claude)
        command = [memory_mcp, "stdio", "--user", USERNAME, "--data-dir", str(data_dir), *store_flags]
        results["stdio_command"] = command
        run_step("claude-version", [claude_bin, "--version"], work, env, 30, results)
        run_step("claude-mcp-add", [claude_bin, "mcp", "add", "--transport", "stdio", SERVER_NAME,
                                    "--env", f"MEMORY_FILE_PATH={official}", "--env", f"PYTHONPATH={REPO}",
                                    "--", *command], work, env, 30, results)
        run_step("claude-mcp-list", [claude_bin, "mcp", "list"], work, env, 45, results)
        print_argv = ["-p", "--output-format", "stream-json", "--verbose", "--allowedTools", *ALLOWED_TOOLS]
        run_step("claude-p-remember", [claude_bin, *print_argv, "--debug-file", str(work / "claude-p-remember.debug"),
                                       "--", REMEMBER_PROMPT], work, env, 60, results)


if __name__ == "__main__":
    sys.exit(main())

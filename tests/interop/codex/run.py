"""Drive the real OpenAI Codex CLI against a real `memory-mcp serve`, all on loopback.

Meant to run as `unshare --net --pid --fork --kill-child -- python run.py --work DIR`
(tests/test_interop_codex.py does that): inside a fresh network namespace only loopback exists, so
nothing Codex tries at start-up can leave the machine, and every port is free; in a fresh PID
namespace the kernel kills whatever is left when this driver, its PID 1, ends. The steps are what
a user does:

1. `memory-mcp users add alice --password-stdin` and `memory-mcp serve` (access log kept);
2. the model stand-in (model_stub.py) on loopback, configured as Codex's model provider;
3. `codex mcp add memory --url .../mcp`: Codex discovers our authorization server, registers a
   client, opens the authorization URL with $BROWSER (browser_hook.py logs in and consents),
   receives the code on its loopback callback and stores the tokens in $CODEX_HOME;
4. `codex exec` with a prompt; the stand-in model makes Codex call create_entities, then
   read_graph, on our server with the stored token; then the final message ends the turn;
5. `codex mcp logout`, `codex mcp login` (a second login), and a second `codex exec` that only
   reads the graph, with the new tokens.

With `--personal-token` it is a headless agent's setup instead: no browser, no OAuth; after
step 1, `memory-mcp tokens create` makes a personal access token (auth.personal), which Codex
reads from an environment variable (`codex mcp add ... --bearer-token-env-var`); then both
`codex exec` turns, and `memory-mcp tokens list` to show its last use.

The driver asserts nothing: it leaves every artifact under --work (server log, Codex output,
stub and browser records, CODEX_HOME, the SQLite data directory) and writes a summary to
WORK/result.json; the test asserts on those. Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from tests.interop.harness import free_port, loopback_up, processes, run_store, start_upstream, wait_http  # noqa: E402 - needs the repository on sys.path first

# Bounds the whole run (about 10 s when healthy); each step also has its own, shorter timeout.
RUN_DEADLINE = 150.0
SERVER_NAME = "memory"
USERNAME = "alice"
PASSWORD = "alice-password-1"  # a throwaway account in a temporary data directory
# model_stub.py picks its script by "Remember that" in the prompt.
REMEMBER_PROMPT = "Remember that Ada Lovelace wrote the first published computer program."
RECALL_PROMPT = "What do you know about Ada Lovelace?"


def default_codex() -> Path:
    return HERE / "node_modules" / ".bin" / "codex"


def run_step(name: str, argv: list[str], work: Path, env: dict[str, str], timeout: float,
             results: dict[str, Any], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one command to completion, its output kept in WORK/<name>.out/.err and the summary."""
    started = time.monotonic()
    timeout = max(1.0, min(timeout, results["deadline"] - started))
    # A new session: if the command times out, its whole group (Codex and its helpers) is killed.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work,
                            start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[run.py] timed out after {timeout}s\n"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers it left behind (e.g. the browser hook)
        except ProcessLookupError:
            pass
    (work / f"{name}.out").write_text(out)
    (work / f"{name}.err").write_text(err)
    results["steps"].append({"name": name, "argv": argv, "returncode": proc.returncode,
                             "seconds": round(time.monotonic() - started, 2)})
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def write_codex_config(codex_home: Path, stub_port: int) -> None:
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(f"""\
# The model is the loopback stand-in; Codex needs no OpenAI account for it.
model = "stub-model"
model_provider = "stub"
# Tokens in $CODEX_HOME/.credentials.json rather than the OS keyring (none in CI).
mcp_oauth_credentials_store = "file"
check_for_update_on_startup = false

[model_providers.stub]
name = "loopback stand-in"
base_url = "http://127.0.0.1:{stub_port}/v1"
wire_api = "responses"
requires_openai_auth = false
request_max_retries = 0
stream_max_retries = 0

# Start-up features that reach the internet; off, as the namespace has none anyway.
[features]
plugins = false
apps = false
remote_plugin = false
in_app_updates = false

# Telemetry: by default Codex exports metrics to OpenAI at exit, and in the namespace that waits
# ~5 s for a connection that cannot happen.
[otel]
metrics_exporter = "none"

[analytics]
enabled = false
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="an empty directory for every artifact")
    parser.add_argument("--codex", type=Path, default=default_codex())
    parser.add_argument("--python", default=sys.executable, help="the interpreter with memory-mcp installed")
    parser.add_argument("--redis", action="store_true", help="keep the server's data in a private Redis (WORK/redis) "
                        "instead of SQLite")
    parser.add_argument("--upstream", action="store_true", help="sign in through an upstream OpenID provider "
                        "(tests/upstream.py) instead of a local password")
    parser.add_argument("--memory", help="create this named memory for the user (`memory-mcp memory create`) and "
                        "choose it on the consent page, instead of the default memory")
    parser.add_argument("--personal-token", action="store_true", help="no sign-in: give Codex a personal access "
                        "token in an environment variable")
    args = parser.parse_args()
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"steps": [], "deadline": time.monotonic() + RUN_DEADLINE}
    try:
        if args.personal_token:
            drive_personal_token(work, args.codex, args.python, results)
        else:
            drive(work, args.codex, args.python, results, args.upstream, args.redis, args.memory)
    except Exception as exc:
        results["error"] = repr(exc)
        results["traceback"] = traceback.format_exc()
    del results["deadline"]
    (work / "result.json").write_text(json.dumps(results, indent=2))
    return 0 if "error" not in results else 1


@dataclass
class Run:
    """What both ways of driving Codex share: where things are, the server's port, the environment."""

    work: Path
    codex: Path
    python: str
    results: dict[str, Any]
    memory_mcp: str
    data_dir: Path
    codex_home: Path
    cwd: Path
    port: int
    env: dict[str, str]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_model_stub(self, procs: Any) -> None:
        stub = procs.start([self.python, str(HERE / "model_stub.py"), "--record",
                            str(self.work / "model-requests.jsonl")], self.work / "model-stub.log", env=self.env)
        stub_port = wait_stub_port(self.work / "model-stub.log", stub)
        self.results["stub_port"] = stub_port
        write_codex_config(self.codex_home, stub_port)

    def codex_step(self, name: str, argv: list[str], timeout: float, *, keep_credentials: bool = False) -> None:
        """One Codex command; the server's access-log lines it caused and (if asked) the
        credentials after it."""
        server_log = self.work / "server.log"
        first = len(server_log.read_text().splitlines())
        run_step(name, [str(self.codex), *argv], self.work, self.env, timeout, self.results)
        time.sleep(0.2)  # the access log is written after the response is sent
        self.results["steps"][-1]["server_log_lines"] = server_log.read_text().splitlines()[first:]
        credentials = self.codex_home / ".credentials.json"
        if keep_credentials and credentials.exists():
            shutil.copy(credentials, self.work / f"credentials-after-{name}.json")


def prepare(work: Path, codex: Path, python: str, results: dict[str, Any]) -> Run:
    loopback_up()
    # The console script, as a user runs it (scripts/test installs the project into the venv).
    memory_mcp = str(Path(python).parent / "memory-mcp")
    if not Path(memory_mcp).exists():
        raise RuntimeError(f"{memory_mcp} missing: install the project (pip install -e .) into that venv")
    if not codex.exists():
        raise RuntimeError(f"{codex} missing: run tests/interop/codex/install.sh")
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    run = Run(work, codex, python, results, memory_mcp, work / "data", work / "codex-home", work / "project",
              free_port(), env)
    run.cwd.mkdir(exist_ok=True)
    results.update(origin=run.origin, mcp_url=run.origin + "/mcp", data_dir=str(run.data_dir),
                   codex_home=str(run.codex_home))
    env.update(CODEX_HOME=str(run.codex_home), NO_COLOR="1", RUST_LOG=env.get("RUST_LOG", "warn"))
    return run


def drive(work: Path, codex: Path, python: str, results: dict[str, Any], upstream: bool = False,
          redis: bool = False, memory: str | None = None) -> None:
    run = prepare(work, codex, python, results)
    memory_mcp, data_dir, cwd, port, origin, env = (run.memory_mcp, run.data_dir, run.cwd, run.port, run.origin,
                                                    run.env)

    provider, issuer, upstream_flags = start_upstream(work, origin) if upstream else (None, None, [])
    results["provider"] = issuer
    results["memory"] = memory
    with run_store(work, redis) as store_flags, processes() as procs:
        results["redis_dir"] = str(work / "redis") if redis else None
        if not upstream:
            added = run_step("users-add", [memory_mcp, "users", "add", USERNAME, "--password-stdin", "--data-dir",
                                           str(data_dir), *store_flags], work, env, 60, results, stdin=PASSWORD + "\n")
            if added.returncode != 0:
                raise RuntimeError(f"users add failed: {added.stderr}")
        if memory is not None:
            made = run_step("memory-create", [memory_mcp, "memory", "create", "--user", USERNAME, memory, "--data-dir",
                                              str(data_dir), *store_flags], work, env, 60, results)
            if made.returncode != 0:
                raise RuntimeError(f"memory create failed: {made.stderr}")
        server = procs.start([memory_mcp, "serve", "--port", str(port), "--data-dir", str(data_dir),
                              *store_flags, *upstream_flags], work / "server.log", env=env)
        wait_http(origin + "/healthz", 30, server)
        run.start_model_stub(procs)

        # $BROWSER: a one-line script, since Codex runs it with the URL as its only argument.
        hook_config = work / "browser-hook.json"
        hook_config.write_text(json.dumps({"username": USERNAME, "password": PASSWORD, "origin": origin,
                                           "provider": issuer, "memory": memory,
                                           "log": str(work / "browser.jsonl")}))
        browser = work / "browser.sh"
        browser.write_text(f"#!/bin/sh\nexec {shlex.quote(python)} {shlex.quote(str(HERE.parent / 'browser_hook.py'))} "
                           f"--config {shlex.quote(str(hook_config))} \"$@\"\n")
        browser.chmod(0o755)
        env["BROWSER"] = str(browser)

        def codex_step(name: str, argv: list[str], timeout: float) -> None:
            run.codex_step(name, argv, timeout, keep_credentials=True)

        codex_step("codex-version", ["--version"], 30)
        # `mcp add` notices the server wants OAuth and logs in right away (browser_hook.py).
        codex_step("codex-mcp-add", ["mcp", "add", SERVER_NAME, "--url", origin + "/mcp",
                                     "--oauth-client-registration", "dcr"], 60)
        codex_step("codex-mcp-list", ["mcp", "list", "--json"], 30)
        exec_argv = ["exec", "--skip-git-repo-check", "--json", "--cd", str(cwd),
                     # Without this Codex asks for approval of every MCP tool call, and exec has no one to ask.
                     "-c", f'mcp_servers.{SERVER_NAME}.default_tools_approval_mode="approve"']
        codex_step("codex-exec-remember", [*exec_argv, REMEMBER_PROMPT], 60)
        # Log out and in again with `codex mcp login`: a new client registration, new tokens, and a
        # new process that must reach the same user's memory with them.
        codex_step("codex-mcp-logout", ["mcp", "logout", SERVER_NAME], 30)
        codex_step("codex-mcp-login", ["mcp", "login", SERVER_NAME, "--oauth-client-registration", "dcr"], 60)
        codex_step("codex-exec-recall", [*exec_argv, RECALL_PROMPT], 60)
    if provider is not None:
        provider.stop()
    results["server_log"] = str(work / "server.log")


# The variable Codex reads the bearer token from (`codex mcp add --bearer-token-env-var`). Not
# MEMORY_MCP_*: memory-mcp reads those as its settings, and refuses one it does not know.
TOKEN_VARIABLE = "MEMORY_TOKEN"


def drive_personal_token(work: Path, codex: Path, python: str, results: dict[str, Any]) -> None:
    run = prepare(work, codex, python, results)
    memory_mcp, data_dir, cwd, port, origin, env = (run.memory_mcp, run.data_dir, run.cwd, run.port, run.origin,
                                                    run.env)
    # No browser: a sign-in attempt would show up as this failing.
    env["BROWSER"] = "/bin/false"
    store = ["--data-dir", str(data_dir)]
    added = run_step("users-add", [memory_mcp, "users", "add", USERNAME, "--password-stdin", *store], work, env, 60,
                     results, stdin=PASSWORD + "\n")
    if added.returncode != 0:
        raise RuntimeError(f"users add failed: {added.stderr}")

    with processes() as procs:
        server = procs.start([memory_mcp, "serve", "--port", str(port), *store], work / "server.log", env=env)
        wait_http(origin + "/healthz", 30, server)
        run.start_model_stub(procs)

        made = run_step("tokens-create", [memory_mcp, "tokens", "create", "--user", USERNAME, "--name", "codex",
                                          "--public-url", origin, *store], work, env, 60, results)
        if made.returncode != 0:
            raise RuntimeError(f"tokens create failed: {made.stderr}")
        env[TOKEN_VARIABLE] = made.stdout.splitlines()[-1]
        results["token_id"] = made.stdout.split()[4]

        codex_step = run.codex_step
        codex_step("codex-mcp-add", ["mcp", "add", SERVER_NAME, "--url", origin + "/mcp",
                                     "--bearer-token-env-var", TOKEN_VARIABLE], 60)
        codex_step("codex-mcp-list", ["mcp", "list", "--json"], 30)
        exec_argv = ["exec", "--skip-git-repo-check", "--json", "--cd", str(cwd),
                     "-c", f'mcp_servers.{SERVER_NAME}.default_tools_approval_mode="approve"']
        codex_step("codex-exec-remember", [*exec_argv, REMEMBER_PROMPT], 60)
        codex_step("codex-exec-recall", [*exec_argv, RECALL_PROMPT], 60)
        # Last use is written off the request path, at most once a minute: the first use is.
        time.sleep(0.5)
        run_step("tokens-list", [memory_mcp, "tokens", "list", "--user", USERNAME, *store], work, env, 60, results)
    results["server_log"] = str(work / "server.log")


def wait_stub_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("PORT "):
                return int(line.split()[1])
        if proc.poll() is not None:
            raise RuntimeError(f"model stub exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError("model stub did not report its port")


if __name__ == "__main__":
    sys.exit(main())



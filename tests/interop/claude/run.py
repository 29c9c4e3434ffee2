"""Drive the real Claude Code CLI against a real `memory-mcp serve`, all on loopback.

Meant to run as `unshare --net --pid --fork --kill-child -- python run.py --work DIR`
(tests/test_interop_claude.py does that): inside a fresh network namespace only loopback exists,
so nothing Claude Code tries (telemetry, updates, its own API) can leave the machine, and every
port is free; in a fresh PID namespace the kernel kills whatever is left when this driver, its
PID 1, ends. The steps are what a user does:

1. `memory-mcp users add alice --password-stdin` and `memory-mcp serve` (access log kept), behind
   wiretap.py, a recording reverse proxy (the server's `--public-url` is the tap's origin), so the
   protocol version and JSON-RPC method of every /mcp request are on record;
2. the Messages API stand-in (model_stub.py) on loopback, reached through ANTHROPIC_BASE_URL;
3. `claude mcp add --transport http memory <url>/mcp`, in a temporary HOME/CLAUDE_CONFIG_DIR;
4. `claude mcp login memory` in a pseudo-terminal (it refuses to run without one): Claude Code
   discovers our authorization server, registers a client, opens the authorization URL with
   $BROWSER (browser_hook.py logs in as alice and consents), receives the code on its
   `http://localhost:<port>/callback` listener and stores the tokens in .credentials.json;
5. `claude mcp list` (its health check);
6. `claude -p` with a prompt: the stand-in model loads our tools with Claude Code's ToolSearch,
   calls create_entities, then read_graph, then ends the turn;
7. `claude mcp logout memory`, then `claude mcp login memory --no-browser`, the path for a person
   without a browser on that machine: Claude Code prints the URL, the scripted browser visits it,
   and the redirect URL is typed back at Claude Code's prompt;
8. the stored access token is marked expired (as if an hour had passed), and a second `claude -p`
   refreshes it at our /token and reads the memory back with the new tokens.

The driver asserts nothing: it leaves every artifact under --work (server log, tap record, Claude
Code output and debug logs, stub and browser records, the Claude config directory, the SQLite
data directory) and writes a summary to WORK/result.json; the test asserts on those. Every
process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from tests.browser import Browser  # noqa: E402 - needs the repository on sys.path first
from tests.interop.harness import free_port, kill_group, loopback_up, processes, run_store, start_upstream, wait_http  # noqa: E402

# Bounds the whole run (about 15 s when healthy); each step also has its own, shorter timeout.
RUN_DEADLINE = 100.0
SERVER_NAME = "memory"
USERNAME = "alice"
PASSWORD = "alice-password-1"  # a throwaway account in a temporary data directory
# model_stub.py picks its script by "Remember that Ada Lovelace" in the prompt.
REMEMBER_PROMPT = "Remember that Ada Lovelace wrote the first published computer program."
RECALL_PROMPT = "What do you know about Ada Lovelace?"
# Claude Code asks before it runs a tool; -p has no one to ask, so the user allows ours up front.
ALLOWED_TOOLS = [f"mcp__{SERVER_NAME}__create_entities", f"mcp__{SERVER_NAME}__read_graph"]
ANSI = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
HYPERLINK = re.compile(r"\x1b\]8;[^;]*;([^\x07\x1b]+)(?:\x07|\x1b\\)")


def default_claude() -> Path:
    return HERE / "node_modules" / ".bin" / "claude"


def wait_port_line(log: Path, proc: subprocess.Popen[bytes]) -> int:
    """The port a helper (stub, tap) printed as `PORT <n>` once listening."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("PORT "):
                return int(line.split()[1])
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not report its port")


def step_timeout(timeout: float, results: dict[str, Any]) -> float:
    deadline: float = results["deadline"]
    return max(1.0, min(timeout, deadline - time.monotonic()))


def run_step(name: str, argv: list[str], work: Path, env: dict[str, str], timeout: float,
             results: dict[str, Any], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one command to completion, its output kept in WORK/<name>.out/.err and the summary."""
    started = time.monotonic()
    timeout = step_timeout(timeout, results)
    # A new session: if the command times out, its whole group (Claude Code and its helpers) is killed.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work / "project",
                            start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        err += f"\n[run.py] timed out after {timeout}s\n"
    finally:
        kill_group(proc)
    (work / f"{name}.out").write_text(out)
    (work / f"{name}.err").write_text(err)
    results["steps"].append({"name": name, "argv": argv, "returncode": proc.returncode,
                             "seconds": round(time.monotonic() - started, 2)})
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_tty_step(name: str, argv: list[str], work: Path, env: dict[str, str], timeout: float,
                 results: dict[str, Any], respond: Callable[[str], str | None] | None = None) -> str:
    """Run one command in a pseudo-terminal, as a person in a terminal does. `respond` sees the
    screen output so far (raw, escapes included) and may return text to type, once.

    WORK/<name>.out keeps the output without terminal escapes, WORK/<name>.raw as it was."""
    started = time.monotonic()
    timeout = step_timeout(timeout, results)
    controller, terminal = os.openpty()
    # A wide screen, so that no URL is wrapped across lines.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 1000, 0, 0))
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env={**env, "TERM": "xterm"},
                            cwd=work / "project", start_new_session=True)
    os.close(terminal)
    raw = bytearray()
    answered = respond is None
    note = ""
    try:
        deadline = started + timeout
        while True:
            if time.monotonic() > deadline:
                note = f"\n[run.py] timed out after {timeout}s\n"
                break
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: every process holding the terminal closed it
                    chunk = b""
                if not chunk:
                    break
                raw += chunk
                if not answered and respond is not None:
                    typed = respond(raw.decode("utf-8", "replace"))
                    if typed is not None:
                        os.write(controller, typed.encode())
                        answered = True
            elif proc.poll() is not None:
                break
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            note = note or "\n[run.py] still running after its terminal closed\n"
    finally:
        kill_group(proc)
        proc.wait()
        os.close(controller)
    text = raw.decode("utf-8", "replace")
    (work / f"{name}.raw").write_text(text)
    (work / f"{name}.out").write_text(ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n") + note)
    results["steps"].append({"name": name, "argv": argv, "returncode": proc.returncode, "tty": True,
                             "seconds": round(time.monotonic() - started, 2)})
    return text


def paste_login(work: Path, origin: str, provider: str | None = None,
                memory: str | None = None) -> Callable[[str], str | None]:
    """The person at `claude mcp login --no-browser`: once Claude Code asks for the redirect URL,
    open the URL it printed in the scripted browser, log in, consent, and type back the address
    the browser was sent to (which no listener need receive). `memory`: the one to choose at
    consent, as the first login did (a `--memory` run)."""
    record = work / "browser.jsonl"

    def respond(screen: str) -> str | None:
        if "paste the redirect URL" not in ANSI.sub("", screen):
            return None
        urls = [u for u in HYPERLINK.findall(screen) if "/authorize?" in u]
        if not urls:
            urls = re.findall(r"https?://\S+/authorize\?\S+", ANSI.sub("", screen))
        url = urls[-1]
        with record.open("a") as f:
            f.write(json.dumps({"event": "printed", "url": url}) + "\n")

        async def authorize() -> str:
            browser = Browser(USERNAME, PASSWORD, provider=provider, memory=memory)
            try:
                return (await browser.authorize(url, origin)).url
            finally:
                await browser.close()

        redirect = asyncio.run(authorize())
        with record.open("a") as f:
            f.write(json.dumps({"event": "pasted", "url": redirect}) + "\n")
        return redirect + "\r"

    return respond


def expire_access_token(credentials: Path, copy: Path) -> None:
    """Mark every stored access token as expired a minute ago, as if that much time had passed.
    The server still accepts the token; only the client's idea of its lifetime changes."""
    stored = json.loads(credentials.read_text())
    for entry in stored["mcpOAuth"].values():
        entry["expiresAt"] = int((time.time() - 60) * 1000)
    credentials.write_text(json.dumps(stored))
    shutil.copy(credentials, copy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="an empty directory for every artifact")
    parser.add_argument("--claude", type=Path, default=default_claude())
    parser.add_argument("--python", default=sys.executable, help="the interpreter with memory-mcp installed")
    parser.add_argument("--redis", action="store_true", help="keep the server's data in a private Redis (WORK/redis) "
                        "instead of SQLite")
    parser.add_argument("--upstream", action="store_true", help="sign in through an upstream OpenID provider "
                        "(tests/upstream.py) instead of a local password")
    parser.add_argument("--memory", help="create this named memory for the user (`memory-mcp memory create`) and "
                        "choose it on the consent page, instead of the default memory")
    args = parser.parse_args()
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"steps": [], "deadline": time.monotonic() + RUN_DEADLINE}
    try:
        drive(work, args.claude, args.python, results, args.upstream, args.redis, args.memory)
    except Exception as exc:
        results["error"] = repr(exc)
        results["traceback"] = traceback.format_exc()
    del results["deadline"]
    (work / "result.json").write_text(json.dumps(results, indent=2))
    return 0 if "error" not in results else 1


def claude_env(work: Path, home: Path, stub_port: int, browser: Path) -> dict[str, str]:
    """Only what Claude Code needs, nothing of the caller's (which may be another Claude Code)."""
    tmp = work / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "TMPDIR": str(tmp),
        "CLAUDE_CODE_TMPDIR": str(tmp),
        "XDG_RUNTIME_DIR": str(tmp),
        "NO_COLOR": "1",
        # The model: the loopback stand-in, with a key it does not check.
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{stub_port}",
        "ANTHROPIC_API_KEY": "sk-ant-loopback-stand-in",
        # Traffic to the internet: none is possible in the namespace, and none is wanted.
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "BROWSER": str(browser),
    }


def drive(work: Path, claude: Path, python: str, results: dict[str, Any], upstream: bool = False,
          redis: bool = False, memory: str | None = None) -> None:
    loopback_up()
    # The console script, as a user runs it (scripts/test installs the project into the venv).
    memory_mcp = str(Path(python).parent / "memory-mcp")
    if not Path(memory_mcp).exists():
        raise RuntimeError(f"{memory_mcp} missing: install the project (pip install -e .) into that venv")
    if not claude.exists():
        raise RuntimeError(f"{claude} missing: run tests/interop/claude/install.sh")
    data_dir, home = work / "data", work / "home"
    (work / "project").mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    server_port, tap_port = free_port(), free_port()
    while tap_port == server_port:
        tap_port = free_port()
    origin = f"http://127.0.0.1:{tap_port}"  # what Claude Code sees: the tap in front of the server
    results.update(origin=origin, mcp_url=origin + "/mcp", server_origin=f"http://127.0.0.1:{server_port}",
                   data_dir=str(data_dir), claude_config_dir=str(home / ".claude"))

    base_env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    provider, issuer, upstream_flags = start_upstream(work, origin) if upstream else (None, None, [])
    results["provider"] = issuer
    results["memory"] = memory
    with run_store(work, redis) as store_flags, processes() as procs:
        results["redis_dir"] = str(work / "redis") if redis else None
        if not upstream:
            added = run_step("users-add", [memory_mcp, "users", "add", USERNAME, "--password-stdin", "--data-dir",
                                           str(data_dir), *store_flags], work, base_env, 60, results,
                             stdin=PASSWORD + "\n")
            if added.returncode != 0:
                raise RuntimeError(f"users add failed: {added.stderr}")
        if memory is not None:
            made = run_step("memory-create", [memory_mcp, "memory", "create", "--user", USERNAME, memory, "--data-dir",
                                              str(data_dir), *store_flags], work, base_env, 60, results)
            if made.returncode != 0:
                raise RuntimeError(f"memory create failed: {made.stderr}")
        server = procs.start([memory_mcp, "serve", "--port", str(server_port), "--data-dir", str(data_dir),
                              "--public-url", origin, *store_flags, *upstream_flags], work / "server.log",
                             env=base_env)
        wait_http(results["server_origin"] + "/healthz", 30, server)
        tap = procs.start([python, str(HERE / "wiretap.py"), "--target", results["server_origin"], "--port",
                           str(tap_port), "--record", str(work / "wire.jsonl")], work / "wiretap.log", env=base_env)
        wait_port_line(work / "wiretap.log", tap)
        stub = procs.start([python, str(HERE / "model_stub.py"), "--record", str(work / "model-requests.jsonl")],
                           work / "model-stub.log", env=base_env)
        stub_port = wait_port_line(work / "model-stub.log", stub)
        results["stub_port"] = stub_port

        # $BROWSER: a one-line script, since Claude Code runs it with the URL as its only argument.
        hook_config = work / "browser-hook.json"
        hook_config.write_text(json.dumps({"username": USERNAME, "password": PASSWORD, "origin": origin,
                                           "provider": issuer, "memory": memory,
                                           "log": str(work / "browser.jsonl")}))
        browser = work / "browser.sh"
        browser.write_text(f"#!/bin/sh\nexec {shlex.quote(python)} {shlex.quote(str(HERE.parent / 'browser_hook.py'))} "
                           f"--config {shlex.quote(str(hook_config))} \"$@\"\n")
        browser.chmod(0o755)
        env = claude_env(work, home, stub_port, browser)
        claude_bin = str(claude)
        server_log, wire = work / "server.log", work / "wire.jsonl"
        credentials = home / ".claude" / ".credentials.json"

        def claude_step(name: str, argv: list[str], timeout: float, tty: bool = False,
                        respond: Callable[[str], str | None] | None = None) -> None:
            """One Claude Code command; the access-log lines and tap records it caused, and the
            credentials file after it."""
            first_log = len(server_log.read_text().splitlines())
            first_wire = len(wire.read_text().splitlines()) if wire.exists() else 0
            if tty:
                run_tty_step(name, [claude_bin, *argv], work, env, timeout, results, respond)
            else:
                run_step(name, [claude_bin, *argv], work, env, timeout, results)
            time.sleep(0.3)  # the access log is written after the response is sent
            step = results["steps"][-1]
            step["server_log_lines"] = server_log.read_text().splitlines()[first_log:]
            step["wire"] = [json.loads(line) for line in
                            (wire.read_text().splitlines() if wire.exists() else [])[first_wire:]]
            if credentials.exists():
                shutil.copy(credentials, work / f"credentials-after-{name}.json")

        claude_step("claude-version", ["--version"], 30)
        claude_step("claude-mcp-add", ["mcp", "add", "--transport", "http", SERVER_NAME, origin + "/mcp"], 30)
        # Needs a terminal; opens $BROWSER and waits for the redirect on its loopback callback.
        claude_step("claude-mcp-login", ["mcp", "login", SERVER_NAME], 45, tty=True)
        claude_step("claude-mcp-list", ["mcp", "list"], 30)
        print_argv = ["-p", "--output-format", "stream-json", "--verbose", "--allowedTools", *ALLOWED_TOOLS]
        claude_step("claude-p-remember", [*print_argv, "--debug-file", str(work / "claude-p-remember.debug"),
                                          "--", REMEMBER_PROMPT], 60)
        claude_step("claude-mcp-logout", ["mcp", "logout", SERVER_NAME], 30)
        claude_step("claude-mcp-login-paste", ["mcp", "login", SERVER_NAME, "--no-browser"], 45, tty=True,
                    respond=paste_login(work, origin, issuer, memory))
        # Time passes: the access token of the second login expires (Claude Code reads the
        # expiry it stored, `expiresAt` in ms), so the next command must refresh it first.
        expire_access_token(credentials, work / "credentials-expired.json")
        claude_step("claude-p-recall", [*print_argv, "--debug-file", str(work / "claude-p-recall.debug"),
                                        "--", RECALL_PROMPT], 60)
    if provider is not None:
        provider.stop()
    results["server_log"] = str(work / "server.log")


if __name__ == "__main__":
    sys.exit(main())

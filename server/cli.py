"""`memory-mcp`: run the server, manage local accounts."""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import importlib.metadata
import logging
import os
import shlex
import shutil
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from auth import accounts, personal
from auth.setup import SETUP_TTL, setup_link
from auth.store import StoreUnavailable
from auth.upstream.client import UpstreamClient
from auth.upstream.http import BadResponse, Misconfigured, Unavailable
from auth.upstream.settings import CALLBACK_PATH, UpstreamSettings
from server import admin, backup
from server.config import ConfigError, Settings, load
from server.keyfile import KEY_FILE
from server.memories import MemoryCommandError
from server.storage import Limiter, Storage
from server.storage.backends import open_backend
from server.storage.redis.base import redacted
from server.supervisor import INHERITED_FLAG, read_brief

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("memory_mcp")

# The session id the service watchdog looks up to see that the store answers: none is ever issued
# (real ids are 43 or 32 characters of another alphabet).
WATCHDOG_PROBE = "watchdog-probe"


# The settings every administration command takes: where the store is.
STORE_SETTINGS = ("data_dir", "redis_url")


def _add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        field = Settings.model_fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                            help=f"{field.description} (env MEMORY_MCP_{name.upper()})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memory-mcp", description=__doc__)
    parser.add_argument("--version", action="version",
                        version=f"memory-mcp {importlib.metadata.version('memory-mcp')}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", default=argparse.SUPPRESS, help="TOML file with settings (env MEMORY_MCP_CONFIG)")
    _add_settings_flags(serve, list(Settings.model_fields))
    # How the supervisor of `--workers N` starts a worker (server/supervisor.py); not for people.
    serve.add_argument(INHERITED_FLAG, dest="inherited_sockets", default=None, help=argparse.SUPPRESS)

    stdio = commands.add_parser(
        "stdio", help="serve one user's memory over standard input and output, for a local MCP client (in place "
        "of npx -y @modelcontextprotocol/server-memory); with MEMORY_FILE_PATH set, offers to import that file",
        description="Serve the memory tools over stdin/stdout to the local client that started this process, as "
        "the user --user (created with `memory-mcp users add`), on the same store as `memory-mcp serve`. Messages "
        "go to stderr. With MEMORY_FILE_PATH set (the official server's file), an empty memory gets that file "
        "imported at the first start; a memory with data gets the import command printed once (docs/local.md).")
    stdio.add_argument("--user", required=True, help="the account whose memory is served")
    stdio.add_argument("--memory", default="default", help="which of the user's memories (default: default)")
    stdio.add_argument("--config", default=argparse.SUPPRESS, help="TOML file with settings (env MEMORY_MCP_CONFIG)")
    _add_settings_flags(stdio, [*STORE_SETTINGS, "log_level"])

    def group(name: str, text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        parser = commands.add_parser(name, help=text)
        parser.add_argument("--config", default=argparse.SUPPRESS,
                            help="TOML file with settings (env MEMORY_MCP_CONFIG)")
        _add_settings_flags(parser, STORE_SETTINGS)
        return parser.add_subparsers(dest="action", required=True)

    def action(actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str,
               *args: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=text, description=text)
        for arg in args:
            sub.add_argument(arg)
        _add_settings_flags(sub, STORE_SETTINGS)
        return sub

    users = group("users", "manage local accounts")
    for name, text in (("add", "create an account"),
                       ("passwd", "change a password and sign the user out everywhere (browser logins, remembered "
                        "approvals, tokens, MCP sessions)")):
        action(users, name, text, "username").add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input instead of prompting")
    action(users, "remove", "delete an account, its browser logins, tokens, sessions and memory (run it again "
           "to finish a removal that was interrupted)", "username")
    action(users, "list", "list accounts")

    clients = group("clients", "registered OAuth clients")
    action(clients, "list", "list registered clients")
    action(clients, "remove", "delete a client and revoke its tokens", "client_id")

    sessions = group("sessions", "live MCP sessions")
    action(sessions, "list", "list MCP sessions").add_argument("--user", help="only this user's")
    revoke = action(sessions, "revoke", "end a session (revoking its client's tokens for that user; browser "
                    "logins stay), or with --user sign the user out everywhere as `tokens revoke --user` does")
    revoke.add_argument("session_id", nargs="?")
    revoke.add_argument("--user")

    keys = group("keys", "ID-token signing keys")
    action(keys, "rotate", "start signing with a new key (the old one stays published while its tokens live)")

    tokens = group("tokens", "personal access tokens, and signing users out everywhere")
    create = action(tokens, "create", "create a personal access token for an agent that cannot sign in with a "
                    "browser; the token is printed once, alone on the last line")
    create.add_argument("--user", required=True, help="whose token it is")
    create.add_argument("--name", help="a label to recognize it by in `tokens list`")
    create.add_argument("--memory", help="the user's memory it works on, by name (default: the default memory; "
                        "`memory list` shows them)")
    create.add_argument("--scope", help='space-separated scopes (default "memory:read memory:write")')
    create.add_argument("--expires-in", metavar="DAYS", help=f"days until it expires (default "
                        f"{personal.DEFAULT_DAYS}), or {personal.NEVER!r} for a token that does not expire")
    _add_settings_flags(create, ["public_url"])
    action(tokens, "list", "list a user's personal access tokens (never their secrets)").add_argument(
        "--user", required=True)
    revoke_token = action(tokens, "revoke", "revoke one personal access token (--id), ending the MCP sessions that "
                          "used it; or with --user sign the user out everywhere: end their browser logins, forget "
                          "their remembered approvals, revoke their tokens (personal ones too) and end their MCP "
                          "sessions (the password stays)")
    revoke_token.add_argument("--id", dest="token_id", help="a personal access token id, from `tokens list`")
    revoke_token.add_argument("--user")
    # The `memory` group: one user's named memories (list, create, rename, delete) and their files in
    # the official memory server's format (export, import). A new action adds its parser here and
    # its handler to `MEMORY_ACTIONS` (or a branch of its own in `_administer`).
    memory = group("memory", "a user's named memories (each its own knowledge graph; applications are bound to "
                   "the one chosen on the consent page), and their files in the official memory server's format "
                   "(JSON Lines); also while the server runs")
    for name, text, args in (
            ("list", "list the user's memories: name, id, entities, created", ()),
            ("create", "create a memory for the user", ("memory",)),
            ("rename", "rename one of the user's memories (applications approved for it stay on it)",
             ("memory", "new_name")),
            ("delete", "delete one of the user's memories with all its data, revoking the grants, personal access "
             "tokens and remembered approvals bound to it and ending its MCP sessions", ("memory",))):
        action(memory, name, text, *args).add_argument("--user", required=True, help="whose memories")
    exported = action(memory, "export", "write a user's memory in the official memory server's format, with when "
                      "and by which client each item was created: to FILE (written whole, then renamed into place) "
                      "or standard output")
    imported = action(memory, "import", "add a file in the official memory server's format (memory.jsonl, or the "
                      "older memory.json) to a user's memory: what is already there is skipped, so importing twice "
                      "adds nothing; prints what was imported and what was skipped (by line)")
    for sub in (exported, imported):
        sub.add_argument("--user", required=True, help="whose memory")
        sub.add_argument("--memory", help='which of the user\'s memories (default: "default")')
    exported.add_argument("file", nargs="?", type=Path, help="where to write (default: standard output)")
    imported.add_argument("file", type=Path, help="the file to import")
    imported.add_argument("--ignore-quota", action="store_true", help="import even beyond the memory_max_* limits")
    _add_settings_flags(imported, ["memory_max_entities", "memory_max_observations", "memory_max_bytes"])
    saved = commands.add_parser("backup", help="copy the data (memory and accounts) and the server key into a new "
                                "directory, while the server runs (SQLite, or Redis when redis_url is set)")
    saved.add_argument("--to", required=True, type=Path, help="a new (or empty) directory")
    back = commands.add_parser("restore", help="put a backup back into the data directory (the server must be "
                               "stopped), or with redis_url set into a Redis without memory-mcp data")
    back.add_argument("--from", dest="source", required=True, type=Path, help="a directory made by `memory-mcp backup`")
    back.add_argument("--replace", action="store_true", help="move the data directory's current files aside "
                      "(into before-restore-<time>/) instead of refusing (SQLite only)")
    moved = commands.add_parser("migrate", help="copy a SQLite data directory into a Redis without memory-mcp data "
                                "(the server must be stopped); then set redis_url to it")
    moved.add_argument("--to", dest="target", required=True, metavar="REDIS_URL",
                       help="redis://, rediss:// or unix:// URL of the target (a password in it is never printed)")
    for sub in (saved, back, moved):
        sub.add_argument("--config", default=argparse.SUPPRESS, help="TOML file with settings (env MEMORY_MCP_CONFIG)")
        _add_settings_flags(sub, STORE_SETTINGS if sub is not moved else ["data_dir"])
    limits = group("throttle", "login throttles and registration limits (also of a running server)")
    action(limits, "list", "list the addresses and user names with attempts counted, and what is refused")
    clear = action(limits, "clear", "lift the throttle of an address or a user name, or every throttle")
    clear.add_argument("--address", help="a client address (for IPv6, its whole /64)")
    clear.add_argument("--user", help="a user name, as typed at the sign-in page")
    clear.add_argument("--all", action="store_true", help="every throttle")
    return parser


def _read_password(from_stdin: bool) -> str:
    # At a terminal, --password-stdin would read the password with echo on and no prompt: the
    # terminal is exactly what getpass is for, so prompt there whatever the flag says.
    if from_stdin and not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise accounts.AccountError("no terminal to prompt for a password: pass --password-stdin and pipe it in")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise accounts.AccountError("the two passwords differ")
    return first


class DataDirError(Exception):
    """The data directory or a file in it cannot be used; the message names it and what to do."""


def _data_dir_problem(settings: Settings) -> tuple[str, bool] | None:
    """Why this process cannot read and write the data directory (and whether permissions are
    the cause), or None. Checked by doing (creating, opening), not with os.access: root, ACLs and
    read-only mounts make permission bits lie, and the error must come before anything half-starts."""
    data_dir, database = settings.data_dir, settings.database_path.name
    try:
        is_file = data_dir.exists() and not data_dir.is_dir()
    except OSError as exc:  # a parent this user cannot search
        return f"cannot reach the data directory {data_dir}: {_reason(exc)}", True
    if is_file:
        return f"the data directory {data_dir} is not a directory", False
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the data directory {data_dir}: {_reason(exc)}", True
    try:
        fd, probe = tempfile.mkstemp(dir=data_dir, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in the data directory {data_dir}: {_reason(exc)}", True
    for name in (database, f"{database}-wal", f"{database}-shm", KEY_FILE):
        path = data_dir / name
        if not path.exists() and not path.is_symlink():
            continue
        if not path.is_file():
            return f"{path} in the data directory is not a regular file", False
        try:
            with open(path, "r+b"):
                pass
        except OSError as exc:
            return f"cannot read and write {path}: {_reason(exc)}", True
    return None


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if exc.errno != errno.EROFS else "read-only file system"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        return f"uid {os.getuid()}"


class StoreUnreachable(Exception):
    """The configured Redis does not answer at start-up; the message names it (without its
    password) and what to do."""


async def _open_backend(settings: Settings) -> tuple[Storage, Limiter]:
    """The storage and rate limiter, ready (the cookie key read or created), or `DataDirError` /
    `StoreUnreachable` with one line a user can act on (never a traceback)."""
    fix = (f"make it readable and writable by user {_user()}, or choose another directory with "
           "--data-dir (env MEMORY_MCP_DATA_DIR)")
    if settings.redis_url is None:
        found = _data_dir_problem(settings)
        if found is not None:
            problem, permissions = found
            raise DataDirError(f"{problem}; " + (fix if permissions else "move it away, or choose another "
                                                 "directory with --data-dir (env MEMORY_MCP_DATA_DIR)"))
    try:
        storage, limiter = open_backend(settings)
    except (OSError, ValueError) as exc:
        raise DataDirError(f"{exc}; {fix}") from None
    except sqlite3.Error as exc:
        raise DataDirError(f"cannot open the database {settings.database_path}: {exc}; if it is damaged, restore "
                           f"it from a backup; otherwise {fix}") from None
    try:
        # The first call on the store: on Redis it also proves that the server answers.
        await storage.cookie_key()
    except BaseException as exc:
        await limiter.close()
        await storage.close()
        if isinstance(exc, StoreUnavailable) and settings.redis_url is not None:
            raise StoreUnreachable(
                f"cannot use Redis at {redacted(settings.redis_url)} (redis_url): {exc}; start it, or correct "
                "redis_url (--redis-url, env MEMORY_MCP_REDIS_URL, or the config file)") from None
        if isinstance(exc, OSError | ValueError):
            raise DataDirError(f"{exc}; {fix}") from None
        raise
    return storage, limiter


async def _administer(args: argparse.Namespace, settings: Settings) -> int:
    storage, limiter = await _open_backend(settings)
    try:
        if (args.command, args.action) == ("keys", "rotate"):
            print(await admin.keys_rotate(storage, settings.auth_settings()))
        elif (args.command, args.action) == ("tokens", "create"):
            if "public_url" not in settings.model_fields_set:
                # The token is bound to the resource: made with a guessed URL, the server refuses it.
                print(f"memory-mcp: warning: public_url is not set, so the token is bound to {settings.issuer}/mcp, "
                      "which only a server reached at that address accepts; pass the server's --public-url (or "
                      "set MEMORY_MCP_PUBLIC_URL or public_url in the config file) if clients use another URL",
                      file=sys.stderr)
            print(await admin.tokens_create(storage, settings.auth_settings(), args.user, name=args.name,
                                            scope=args.scope, expires_in=args.expires_in, memory=args.memory))
        elif args.command == "throttle":
            print(await _throttle(args, settings, storage, limiter))
        elif (args.command, args.action) == ("memory", "export"):
            # The summary goes to standard error when the memory itself goes to standard output.
            print(await admin.memory_export(storage, args.user, args.memory, args.file),
                  file=sys.stderr if args.file is None else sys.stdout)
        elif (args.command, args.action) == ("memory", "import"):
            print(await admin.memory_import(storage, args.user, args.memory, args.file,
                                            None if args.ignore_quota else settings.memory_quota))
        elif args.command == "memory":
            print(await MEMORY_ACTIONS[args.action](storage, settings, args))
        else:
            print(await _run_command(storage, args.command, args.action, args))
    finally:
        await limiter.close()
        await storage.close()
    return 0


MemoryAction = Callable[[Storage, Settings, argparse.Namespace], Awaitable[str]]

MEMORY_ACTIONS: dict[str, MemoryAction] = {
    "list": lambda storage, _settings, args: admin.memory_list(storage, args.user),
    "create": lambda storage, settings, args: admin.memory_create(storage, args.user, args.memory,
                                                                  settings.max_memories_per_user),
    "rename": lambda storage, _settings, args: admin.memory_rename(storage, args.user, args.memory, args.new_name),
    "delete": lambda storage, _settings, args: admin.memory_delete(storage, args.user, args.memory),
}
"""What `memory-mcp memory ACTION` runs, by action."""


async def _throttle(args: argparse.Namespace, settings: Settings, storage: Storage, limiter: Limiter) -> str:
    if args.action == "list":
        return await admin.throttle_list(limiter, storage, settings.registration_rate_limit)
    return await admin.throttle_clear(limiter, address=args.address, username=args.user, everything=args.all)


async def _run_command(storage: Storage, command: str, action: str, args: argparse.Namespace) -> str:
    match command, action:
        case "users", "add":
            user = await accounts.add_user(storage, args.username, _read_password(args.password_stdin))
            return f"added user {user.username}"
        case "users", "passwd":
            return await admin.users_passwd(storage, args.username, _read_password(args.password_stdin))
        case "users", "remove":
            return await admin.users_remove(storage, args.username)
        case "users", "list":
            return await admin.users_list(storage)
        case "clients", "list":
            return await admin.clients_list(storage)
        case "clients", "remove":
            return await admin.clients_remove(storage, args.client_id)
        case "sessions", "list":
            return await admin.sessions_list(storage, args.user)
        case "sessions", "revoke":
            return await admin.sessions_revoke(storage, args.session_id, args.user)
        case "tokens", "list":
            return await admin.tokens_list(storage, args.user)
        case "tokens", "revoke":
            if (args.token_id is None) == (args.user is None):
                raise admin.AdminError("name either --id ID (one personal access token) or --user NAME (sign the "
                                       "user out everywhere)")
            if args.token_id is not None:
                return await admin.token_revoke(storage, args.token_id)
            return await admin.tokens_revoke(storage, args.user)
    raise AssertionError(f"unhandled command {command} {action}")


def _stdio(settings: Settings, username: str, memory: str) -> int:
    """`memory-mcp stdio` (server/stdio.py): the store opened and the account checked before
    anything is served, every message on stderr."""
    from server import logs, stdio

    logs.configure(settings.log_level, settings.log_format)
    loop = _event_loop()  # one loop from the first call on the store to the last (see _serve)
    try:
        storage, limiter = loop.run_until_complete(_open_backend(settings))
        try:
            if settings.redis_url is None:
                backup.hold_serve_lock(settings.data_dir)  # `memory-mcp restore` waits for this process too
            loop.run_until_complete(stdio.run(storage, settings, username, memory, os.environ.get("MEMORY_FILE_PATH")))
        except stdio.StdioError as exc:
            print(f"memory-mcp: {exc}", file=sys.stderr)
            return 1
        finally:
            loop.run_until_complete(limiter.close())
            loop.run_until_complete(storage.close())
    finally:
        loop.close()
    return 0


def _serve(settings: Settings) -> int:
    # Imported here: the MCP SDK takes a second to import, which `users` and a configuration error
    # should not pay.
    from server import limits, logs, metrics, supervisor
    from server.app import build_app
    from server.malloc import keep_freed_memory

    logs.configure(settings.log_level, settings.log_format, several_processes=settings.workers > 1)
    open_files = limits.raise_open_files_limit()
    if settings.max_connections is not None and settings.max_connections > open_files - limits.RESERVED_FDS:
        print(f"memory-mcp: max_connections={settings.max_connections} needs about "
              f"{settings.max_connections + limits.RESERVED_FDS} open files, but the limit is {open_files}: raise "
              "it (ulimit -n) or lower max_connections", file=sys.stderr)
        return 2
    # One event loop from the first call on the store to the last: a Redis connection belongs to
    # the loop that opened it.
    loop = _event_loop()
    try:
        backend = loop.run_until_complete(_open_backend(settings))
    except BaseException:
        loop.close()
        raise
    storage, limiter = backend
    try:
        if settings.redis_url is None:
            backup.hold_serve_lock(settings.data_dir)  # `memory-mcp restore` waits for no server (server/backup.py)
        passed = _passed_sockets()
        if passed:
            sockets = passed
            settings = _with_address(settings, sockets[0])
        else:
            sockets = _listen(settings.host, settings.port)
            settings = _with_port(settings, sockets[0].getsockname()[1])
        upstream = settings.upstream_settings()
        if upstream is not None:
            try:
                for line in loop.run_until_complete(_check_upstream(upstream, settings.issuer)):
                    print(f"memory-mcp: {line}", file=sys.stderr)
            except Misconfigured as exc:
                for sock in sockets:
                    sock.close()
                print(f"memory-mcp: upstream_issuer={upstream.issuer}: {exc}", file=sys.stderr)
                loop.run_until_complete(limiter.close())
                loop.run_until_complete(storage.close())
                loop.close()
                return 2
        users = loop.run_until_complete(accounts.list_users(storage))
        setup_link = None if users else _setup_link(settings, sockets, loop.run_until_complete(storage.cookie_key()))
        # With workers, the supervisor serves nothing: it opened the store to check it (and to
        # create or migrate it once, before the workers start together), and closes it.
        metrics_socket = None
        try:
            if settings.workers > 1 and settings.metrics_enabled and settings.metrics_address is not None:
                # Bound here, passed to every worker: one listener whichever worker answers.
                metrics_socket = metrics.listen(settings.metrics_address, protected=settings.metrics_bearer is not None)
            app = None if settings.workers > 1 else loop.run_until_complete(build_app(settings, backend))
        except metrics.MetricsListenError as exc:
            raise ListenError(str(exc)) from None
    except BaseException:
        loop.run_until_complete(limiter.close())
        loop.run_until_complete(storage.close())
        loop.close()
        raise
    if app is None:
        loop.run_until_complete(limiter.close())
        loop.run_until_complete(storage.close())
        loop.close()
    if not users:
        # Under systemd the data belongs to the service's user: scripts/install-systemd.sh's
        # memory-mcp-admin runs the command as that user, which plain `memory-mcp` as root must not.
        store = ("--data-dir " + shlex.quote(str(settings.data_dir)) if settings.redis_url is None
                 else "  (with the same redis_url: --redis-url or MEMORY_MCP_REDIS_URL)")
        add = ("memory-mcp-admin users add <name> --password-stdin"
               if "INVOCATION_ID" in os.environ and shutil.which("memory-mcp-admin") else
               f"{_command()} users add <name> --password-stdin {store}")
        if setup_link is not None:
            port = settings.port
            print(f"No users yet. Create the first account in a browser on this machine (the link works once, for "
                  f"{SETUP_TTL // 60} minutes; from another machine: ssh -L {port}:localhost:{port} <this host>, then "
                  f"open it there):\n  {setup_link}\nor on the command line (the password is read from standard "
                  f"input, or prompted for at a terminal):\n  {add}", file=sys.stderr)
        else:
            print(f"No users yet. Add one (the password is read from standard input, or prompted for at a "
                  f"terminal):\n  {add}", file=sys.stderr)
    where = ", ".join(_address(sock) for sock in sockets) + (", passed by the service manager" if passed else "")
    data = settings.data_dir if settings.redis_url is None else f"Redis at {redacted(settings.redis_url)}"
    if app is None:
        print(f"memory-mcp: serving MCP at {settings.issuer}/mcp (listening on {where}; data in {data}; "
              f"{settings.workers} workers)", file=sys.stderr)
        return supervisor.run(settings, sockets, metrics_socket)
    keep_freed_memory()
    print(f"memory-mcp: serving MCP at {settings.issuer}/mcp (listening on {where}; data in {data})",
          file=sys.stderr)
    return _run(settings, app, backend[0], sockets, loop, worker=False)


def _setup_link(settings: Settings, sockets: Sequence[socket.socket], cookie_key: bytes) -> str | None:
    """The first account's one-time link (auth/setup.py), on a loopback address this server listens
    on; None where there is none, where passwords do not sign in, or under a service manager,
    whose journal is a log that others may read (the link is a credential): there the CLI path."""
    if not settings.local_login or "INVOCATION_ID" in os.environ or "NOTIFY_SOCKET" in os.environ:
        return None
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        if sock.family == socket.AF_INET and (host == "0.0.0.0" or host.startswith("127.")):  # noqa: S104
            return setup_link(f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}", cookie_key)  # noqa: S104
        if sock.family == socket.AF_INET6 and host in ("::", "::1"):
            return setup_link(f"http://[::1]:{port}", cookie_key)
    return None


def _run(settings: Settings, app: web.Application, storage: Storage, sockets: Sequence[socket.socket],
         loop: asyncio.AbstractEventLoop, *, worker: bool) -> int:
    """Serve until SIGTERM, telling the service manager (a worker's is its supervisor,
    server/supervisor.py) when it is ready, alive and stopping."""
    from server import limits, logs, systemd

    # On SIGTERM: no new connections; requests in flight get shutdown_timeout to finish and send
    # their responses, each session ends once its requests are answered (its open streams with it),
    # then the store closes (server/limits.py LimitedRunner, server/app.py on_shutdown). A write
    # committed just before SIGTERM is answered.
    service = systemd.Notifier.from_environ()

    def ready() -> None:
        service.ready(f"serving MCP at {settings.issuer}/mcp")
        service.start_watchdog(lambda: storage.get_session(WATCHDOG_PROBE))

    def stopping() -> None:
        service.stopping(f"draining: requests in flight get up to {settings.shutdown_timeout:g} s")

    try:
        limits.run_app(app, sockets=sockets, shutdown_timeout=settings.shutdown_timeout, loop=loop,
                       access_log_class=logs.AccessLogger, on_ready=ready, on_stopping=stopping, worker=worker)
    finally:
        service.close()
    return 0


async def _check_upstream(upstream: UpstreamSettings, issuer: str) -> list[str]:
    """The upstream provider's discovery, keys and client credentials, checked before serving
    (`auth.upstream.client.UpstreamClient.check`): lines for the operator. Raises `Misconfigured`,
    which stops the server; a provider that cannot be reached now does not (sign-ins then fail
    with an error page until it can, while every issued token keeps working)."""
    client = UpstreamClient(upstream, issuer + CALLBACK_PATH)
    lines = [f"signing users in through {upstream.issuer}"]
    try:
        lines += [f"warning: upstream_issuer={upstream.issuer}: {w}" for w in await client.check()]
    except (Unavailable, BadResponse) as exc:
        lines.append(f"warning: upstream_issuer={upstream.issuer}: {exc}; serving anyway, sign-ins through it fail "
                     "until it answers")
    finally:
        await client.close()
    if upstream.policy.open:
        lines.append(f"warning: no admission policy: anyone who can sign in at {upstream.issuer} gets an account "
                     "here (set upstream_allowed_domains, upstream_allowed_users or upstream_required_claim)")
    return lines


def _serve_worker(fds: str) -> int:
    """One worker of `serve --workers N` (server/supervisor.py): the supervisor's settings from
    standard input, its listening sockets inherited, no start-up message."""
    from server import limits, logs
    from server.app import build_app
    from server.malloc import keep_freed_memory
    from server.metrics import Workers

    brief = read_brief()
    settings = brief.settings
    logs.configure(settings.log_level, settings.log_format, several_processes=True)
    limits.raise_open_files_limit()
    sockets = [socket.socket(fileno=int(fd)) for fd in fds.split(",")]
    loop = _event_loop()  # the one loop of this process's Redis connections (see _serve)
    backend = loop.run_until_complete(_open_backend(settings))
    if settings.redis_url is None:
        # Each worker, not only the supervisor: a worker still draining after its supervisor was
        # killed keeps `memory-mcp restore` away too.
        backup.hold_serve_lock(settings.data_dir)
    workers = Workers(brief.slot, brief.count, brief.directory)
    metrics_socket = None if brief.metrics_fd is None else socket.socket(fileno=brief.metrics_fd)
    app = loop.run_until_complete(build_app(settings, backend, workers=workers, metrics_socket=metrics_socket))
    keep_freed_memory()
    return _run(settings, app, backend[0], sockets, loop, worker=True)


class ListenError(Exception):
    """The server cannot listen where it was told to; the message says where and what to do."""


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host`, bound here rather than by aiohttp so that
    the real port is known before the issuer is fixed (`--port 0`), and a busy port is reported
    before anything says "serving"."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on host {host!r}: {exc.strerror}; set --host to an address or name "
                          "of this machine") from None
    addresses = list(dict.fromkeys((family, address) for family, *_, address in infos))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            if sockets:  # --port 0: every address on the port the first one got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        fixes = {errno.EADDRINUSE: "another process is using this port: stop it, or choose another with --port",
                 errno.EACCES: "ports below 1024 need privileges: choose another with --port",
                 errno.EADDRNOTAVAIL: "this machine has no such address: set --host to one of its addresses"}
        fix = fixes.get(exc.errno or 0, "check --host and --port")
        raise ListenError(f"cannot listen on {_where(host, port)}: {(exc.strerror or str(exc)).lower()}; {fix}") \
            from None
    return sockets


def _passed_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed (scripts/memory-mcp.socket), checked: TCP, listening.
    host and port then say nothing about where the server listens; the socket unit does."""
    from server import systemd

    try:
        sockets = systemd.listen_fds()
    except (ValueError, OSError) as exc:
        raise ListenError(f"cannot use the sockets passed by the service manager: {exc}") from None
    for sock in sockets:
        if (sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            raise ListenError(f"the service manager passed descriptor {sock.fileno()}, which is not a listening TCP "
                              "socket: use ListenStream=ADDRESS:PORT in the socket unit (memory-mcp.socket)")
        sock.setblocking(False)
    return sockets


def _with_address(settings: Settings, sock: socket.socket) -> Settings:
    """The settings for a socket passed by the service manager: host and port are the socket's, so
    that the default public URL (the issuer) names where the server really listens."""
    host, port = sock.getsockname()[:2]
    given = {name: getattr(settings, name) for name in settings.model_fields_set}
    try:
        return Settings(**{**given, "host": host, "port": port})
    except ValidationError:
        raise ListenError(f"the socket passed by the service manager listens on every address ({_where(host, port)}), "
                          "so the public URL cannot be guessed: set MEMORY_MCP_PUBLIC_URL (e.g. in "
                          "/etc/memory-mcp/env)") from None


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return _where(host, port)


def _with_port(settings: Settings, port: int) -> Settings:
    """The settings for the port actually bound: with `--port 0` the default public URL (the
    issuer, which clients compare byte for byte) must name the port clients can reach, not 0."""
    if port == settings.port:
        return settings
    given = {name: getattr(settings, name) for name in settings.model_fields_set}
    return Settings(**{**given, "port": port})


def _command() -> str:
    """This program as the user can run it again from any directory: plain `memory-mcp` only
    when that name on PATH is this very program (after the quick start it is `.venv/bin/memory-mcp`,
    and `.venv/bin` is not on PATH)."""
    script = Path(sys.argv[0])
    if script.name == "__main__.py":
        return f"{shlex.quote(sys.executable)} -m server"
    on_path = shutil.which("memory-mcp")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "memory-mcp"
    return shlex.quote(str(script.absolute()))


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it is a dependency on every platform it supports): the same
    server answers 20-30% more requests on it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    worker = args.command == "serve" and args.inherited_sockets is not None
    settings: Settings | None = None
    if not worker:  # a worker takes its settings from its supervisor, already checked
        flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields or k == "config"}
        try:
            settings = load(dict(flags))
        except ConfigError as exc:
            print(f"memory-mcp: {exc}", file=sys.stderr)
            return 2
    try:
        if settings is None:
            return _serve_worker(args.inherited_sockets)
        if args.command == "serve":
            return _serve(settings)
        if args.command == "stdio":
            return _stdio(settings, args.user, args.memory)
        if args.command == "backup":
            print(backup.backup(settings, args.to))
            return 0
        if args.command == "restore":
            print(backup.restore(settings, args.source, replace=args.replace))
            return 0
        if args.command == "migrate":
            try:
                target = load({**flags, "redis_url": args.target})
            except ConfigError as exc:
                print(f"memory-mcp: --to: {exc}", file=sys.stderr)
                return 2
            print(backup.migrate(settings, target))
            return 0
        return asyncio.run(_administer(args, settings))
    except StoreUnreachable as exc:
        # A configuration error like those above: the store named cannot be used.
        print(f"memory-mcp: {exc}", file=sys.stderr)
        return 2
    except (accounts.AccountError, admin.AdminError, MemoryCommandError, StoreUnavailable, DataDirError, ListenError,
            backup.BackupError) as exc:
        print(f"memory-mcp: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"memory-mcp: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from auth import accounts
from auth.models import AccountState
from auth.store import StoreUnavailable
from server import admin
from server.config import ConfigError, Settings, load
from server.keyfile import KEY_FILE, cookie_key
from server.storage import Limiter, Storage, open_backend

log = logging.getLogger("memory_mcp")


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

    def group(name: str, text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        parser = commands.add_parser(name, help=text)
        parser.add_argument("--config", default=argparse.SUPPRESS,
                            help="TOML file with settings (env MEMORY_MCP_CONFIG)")
        _add_settings_flags(parser, ["data_dir"])
        return parser.add_subparsers(dest="action", required=True)

    def action(actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str,
               *args: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=text, description=text)
        for arg in args:
            sub.add_argument(arg)
        _add_settings_flags(sub, ["data_dir"])
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

    tokens = group("tokens", "issued tokens")
    action(tokens, "revoke", "sign a user out everywhere: end their browser logins, forget their remembered "
           "approvals, revoke their tokens and end their MCP sessions (the password stays)").add_argument(
        "--user", required=True)
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


def _open_backend(settings: Settings) -> tuple[Storage, Limiter]:
    """The storage and rate limiter, or `DataDirError` with one line a user can act on (never a
    traceback)."""
    fix = (f"make it readable and writable by user {_user()}, or choose another directory with "
           "--data-dir (env MEMORY_MCP_DATA_DIR)")
    found = _data_dir_problem(settings)
    if found is not None:
        problem, permissions = found
        raise DataDirError(f"{problem}; " + (fix if permissions else "move it away, or choose another directory "
                                             "with --data-dir (env MEMORY_MCP_DATA_DIR)"))
    try:
        cookie_key(settings.data_dir)
        return open_backend(settings)
    except (OSError, ValueError) as exc:
        raise DataDirError(f"{exc}; {fix}") from None
    except sqlite3.Error as exc:
        raise DataDirError(f"cannot open the database {settings.database_path}: {exc}; if it is damaged, restore "
                           f"it from a backup; otherwise {fix}") from None


async def _administer(args: argparse.Namespace, settings: Settings) -> int:
    storage, limiter = _open_backend(settings)
    try:
        if (args.command, args.action) == ("keys", "rotate"):
            print(await admin.keys_rotate(storage, settings.data_dir, settings.auth_settings()))
        elif args.command == "throttle":
            print(await _throttle(args, settings, storage, limiter))
        else:
            print(await _run_command(storage, args.command, args.action, args))
    finally:
        await limiter.close()
        await storage.close()
    return 0


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
            return "\n".join(user.username if user.state is AccountState.ACTIVE else
                             f"{user.username} (being removed: run `memory-mcp users remove {user.username}` to finish)"
                             for user in await accounts.list_users(storage))
        case "clients", "list":
            return await admin.clients_list(storage)
        case "clients", "remove":
            return await admin.clients_remove(storage, args.client_id)
        case "sessions", "list":
            return await admin.sessions_list(storage, args.user)
        case "sessions", "revoke":
            return await admin.sessions_revoke(storage, args.session_id, args.user)
        case "tokens", "revoke":
            return await admin.tokens_revoke(storage, args.user)
    raise AssertionError(f"unhandled command {command} {action}")


def _serve(settings: Settings) -> int:
    # Imported here: the MCP SDK takes a second to import, which `users` and a configuration
    # error should not pay.
    from server import limits, logs
    from server.app import build_app
    from server.malloc import keep_freed_memory
    from server.metrics import MetricsListenError

    logs.configure(settings.log_level, settings.log_format)
    open_files = limits.raise_open_files_limit()
    if settings.max_connections is not None and settings.max_connections > open_files - limits.RESERVED_FDS:
        print(f"memory-mcp: max_connections={settings.max_connections} needs about "
              f"{settings.max_connections + limits.RESERVED_FDS} open files, but the limit is {open_files}: raise "
              "it (ulimit -n) or lower max_connections", file=sys.stderr)
        return 2
    backend = _open_backend(settings)
    storage = backend[0]
    sockets = _listen(settings.host, settings.port)
    settings = _with_port(settings, sockets[0].getsockname()[1])
    users = asyncio.run(accounts.list_users(storage))
    if not users:
        print("No users yet. Add one (the password is read from standard input, or prompted for at a terminal):\n"
              f"  {_command()} users add <name> --password-stdin --data-dir {shlex.quote(str(settings.data_dir))}",
              file=sys.stderr)
    try:
        app = build_app(settings, backend)
    except MetricsListenError as exc:
        raise ListenError(str(exc)) from None
    keep_freed_memory()
    where = ", ".join(_address(sock) for sock in sockets)
    print(f"memory-mcp: serving MCP at {settings.issuer}/mcp (listening on {where}; data in {settings.data_dir})",
          file=sys.stderr)
    # Sessions are ended in on_shutdown (open SSE streams never finish by themselves); requests in
    # flight then get shutdown_timeout to finish and send their responses (aiohttp waits that long,
    # then cancels and waits that long again). A write committed just before SIGTERM is answered.
    limits.run_app(app, sockets=sockets, shutdown_timeout=settings.shutdown_timeout, loop=_event_loop(),
                   access_log_class=logs.AccessLogger)
    return 0


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
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields or k == "config"}
    try:
        settings = load(flags)
    except ConfigError as exc:
        print(f"memory-mcp: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            return _serve(settings)
        return asyncio.run(_administer(args, settings))
    except (accounts.AccountError, admin.AdminError, StoreUnavailable, DataDirError, ListenError) as exc:
        print(f"memory-mcp: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"memory-mcp: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

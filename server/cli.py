"""`memory-mcp`: run the server, manage local accounts."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Sequence
from typing import Any

from auth import accounts
from auth.models import AccountState
from auth.settings import AuthSettings
from auth.store import StoreUnavailable
from server import admin
from server.config import ConfigError, Settings, load
from server.storage.sqlite import SQLiteStorage
from server.storage.sqlite.ratelimit import FILENAME as THROTTLE_FILE
from server.storage.sqlite.ratelimit import SQLiteRateLimiter

log = logging.getLogger("memory_mcp")


def _add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        field = Settings.model_fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                            help=f"{field.description} (env MEMORY_MCP_{name.upper()})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memory-mcp", description=__doc__)
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
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise accounts.AccountError("no terminal to prompt for a password: pass --password-stdin and pipe it in")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise accounts.AccountError("the two passwords differ")
    return first


async def _administer(args: argparse.Namespace, settings: Settings) -> int:
    storage = SQLiteStorage(settings.database_path, settings.store_busy_timeout)
    try:
        if (args.command, args.action) == ("keys", "rotate"):
            print(await admin.keys_rotate(storage, settings.data_dir, AuthSettings(issuer=settings.issuer)))
        elif args.command == "throttle":
            print(await _throttle(args, settings, storage))
        else:
            print(await _run_command(storage, args.command, args.action, args))
    finally:
        await storage.close()
    return 0


async def _throttle(args: argparse.Namespace, settings: Settings, storage: SQLiteStorage) -> str:
    limiter = SQLiteRateLimiter(settings.data_dir / THROTTLE_FILE)
    try:
        if args.action == "list":
            return await admin.throttle_list(limiter, storage, settings.registration_rate_limit)
        return await admin.throttle_clear(limiter, address=args.address, username=args.user, everything=args.all)
    finally:
        await limiter.close()


async def _run_command(storage: SQLiteStorage, command: str, action: str, args: argparse.Namespace) -> str:
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

    logs.configure(settings.log_level)
    open_files = limits.raise_open_files_limit()
    if settings.max_connections is not None and settings.max_connections > open_files - limits.RESERVED_FDS:
        print(f"memory-mcp: max_connections={settings.max_connections} needs about "
              f"{settings.max_connections + limits.RESERVED_FDS} open files, but the limit is {open_files}: raise "
              "it (ulimit -n) or lower max_connections", file=sys.stderr)
        return 2
    storage = SQLiteStorage(settings.database_path, settings.store_busy_timeout)
    users = asyncio.run(accounts.list_users(storage))
    if not users:
        print("No users yet. Add one (the password is read from standard input):\n"
              f"  memory-mcp users add <name> --password-stdin --data-dir {settings.data_dir}", file=sys.stderr)
    app = build_app(settings, storage)
    keep_freed_memory()
    print(f"memory-mcp: serving MCP at {settings.issuer}/mcp (data in {settings.data_dir})", file=sys.stderr)
    # A short shutdown timeout: sessions are ended in on_shutdown, so nothing is left to wait for
    # but in-flight tool calls.
    limits.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=2.0, loop=_event_loop(),
                   access_log_class=logs.AccessLogger)
    return 0


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
    except (accounts.AccountError, admin.AdminError, StoreUnavailable) as exc:
        print(f"memory-mcp: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"memory-mcp: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""`memory-mcp`: run the server, manage local accounts."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from auth import accounts
from auth.models import Revocation
from server.config import ConfigError, Settings, load
from server.storage.sqlite import SQLiteStorage

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

    users = commands.add_parser("users", help="manage local accounts")
    users.add_argument("--config", default=argparse.SUPPRESS,
                       help="TOML file with settings (env MEMORY_MCP_CONFIG)")
    _add_settings_flags(users, ["data_dir"])
    actions = users.add_subparsers(dest="action", required=True)
    for action, text in (("add", "create an account"), ("passwd", "change a password")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("username")
        sub.add_argument("--password-stdin", action="store_true",
                         help="read the password from standard input instead of prompting")
        _add_settings_flags(sub, ["data_dir"])
    sub = actions.add_parser("remove", help="delete an account, its tokens, sessions and memory")
    sub.add_argument("username")
    _add_settings_flags(sub, ["data_dir"])
    sub = actions.add_parser("list", help="list accounts")
    _add_settings_flags(sub, ["data_dir"])
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


async def _users(args: argparse.Namespace, settings: Settings) -> int:
    storage = SQLiteStorage(settings.database_path)
    try:
        if args.action == "add":
            user = await accounts.add_user(storage, args.username, _read_password(args.password_stdin))
            print(f"added user {user.username}")
        elif args.action == "passwd":
            await accounts.set_password(storage, args.username, _read_password(args.password_stdin))
            print(f"changed the password of {args.username}")
        elif args.action == "remove":
            user = await accounts.remove_user(storage, args.username)
            # A running server reads this and ends the user's live sessions within a second.
            await storage.record_revocation(Revocation(user.id, None, None), time.time())
            graph_gone = await storage.delete_graph(user.id)
            print(f"removed user {user.username} with their tokens, sessions and memory "
                  f"({graph_gone} entities)")
        else:
            for user in await accounts.list_users(storage):
                print(user.username)
    finally:
        await storage.close()
    return 0


def _serve(settings: Settings) -> int:
    # Imported here: the MCP SDK takes a second to import, which `users` and a configuration
    # error should not pay.
    from aiohttp import web

    from server.app import build_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    storage = SQLiteStorage(settings.database_path)
    users = asyncio.run(accounts.list_users(storage))
    if not users:
        print("No users yet. Add one (the password is read from standard input):\n"
              f"  memory-mcp users add <name> --password-stdin --data-dir {settings.data_dir}", file=sys.stderr)
    app = build_app(settings, storage)
    print(f"memory-mcp: serving MCP at {settings.issuer}/mcp (data in {settings.data_dir})", file=sys.stderr)
    # A short shutdown timeout: sessions are ended in on_shutdown, so nothing is left to wait for
    # but in-flight tool calls.
    web.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=2.0, print=None,
                access_log_format='%a "%r" %s %b %Tfs')
    return 0


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
        return asyncio.run(_users(args, settings))
    except accounts.AccountError as exc:
        print(f"memory-mcp: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"memory-mcp: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

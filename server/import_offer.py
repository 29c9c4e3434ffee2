"""The offer to import the official memory server's file, made by `memory-mcp stdio` at start.

A client configuration moved from `npx -y @modelcontextprotocol/server-memory` to `memory-mcp
stdio` often keeps the official server's `MEMORY_FILE_PATH` (the JSON-lines file that server kept
the graph in). When it does, the person moving wants that memory here; nothing of it may be lost,
and nothing here may be overwritten or brought back against their will.

The choice (docs/local.md says it for users):

- stdin is the protocol, so there is no terminal to ask on. MCP elicitation (`elicitation/create`)
  could ask through the client, but only inside a request the client sent (a tool call), only
  when the client declared the capability, and never in a non-interactive run (`claude -p`); an
  offer that depends on which client and which mode is not one a person can rely on.
- So the decision is made by what cannot lose anything: when the target memory is empty, the file
  is imported (the file is only read, the import is idempotent), and stderr says so with the
  counts. When the memory already holds something, an automatic merge could bring back what was
  deliberately deleted here, so nothing is imported: stderr names the exact `memory-mcp memory
  import` command that would do it.
- Either way the offer is remembered for that memory, file path and version of the file (size and
  modification time), in `import-offers.json` in the data directory, so it is not repeated at every
  start; a file changed since (the official server still in use by another client) is offered again.
  A failed import is not remembered: its message comes back until the file is fixed or the
  variable removed. The server serves in every case: a client shows a server that fails to start
  as broken, hiding the message that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from server.memory.graph import GraphStore

Importer = Callable[[Path], Awaitable[str]]
"""Imports a file of the official server into the target memory (idempotently) and returns its
report, one line of counts for a person; raises ValueError or OSError with a message naming what
is wrong with the file."""

MARKS_FILE = "import-offers.json"


class OfferMarks:
    """The offers made, one per (memory, file): a small JSON object in the data directory,
    replaced atomically. Losing it costs only one repeated message, so any trouble reading or
    writing it is reported and otherwise ignored."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / MARKS_FILE

    def _read(self) -> dict[str, str]:
        try:
            marks = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in marks.items() if isinstance(v, str)} if isinstance(marks, dict) else {}

    def made(self, key: str, version: str) -> bool:
        return self._read().get(key) == version

    def record(self, key: str, version: str) -> str | None:
        """Remember the offer; None, or why it could not be remembered."""
        marks = self._read()
        marks[key] = version
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{MARKS_FILE}.")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(marks, out, indent=1, sort_keys=True)
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            return f"cannot remember the offer in {self.path} ({(exc.strerror or str(exc)).lower()}), so it is " \
                "made again at the next start"
        return None


def file_version(path: Path) -> str:
    """Size and modification time: changes when the official server writes the file again."""
    status = path.stat()
    return f"{status.st_size}:{status.st_mtime_ns}"


def examine(value: str) -> tuple[Path, str] | str:
    """The file MEMORY_FILE_PATH names and its version, or why there is nothing to import."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        # The official server resolves a relative path against its own install directory (in the
        # npx cache), which cannot be found from here: only the working directory is tried.
        path = Path.cwd() / path
        if not path.is_file():
            return (f"MEMORY_FILE_PATH={value!r} is relative, and there is no such file in {Path.cwd()}: the official "
                    "server read it from its own install directory; set MEMORY_FILE_PATH to the file's absolute path "
                    "to import it")
    try:
        version = file_version(path)
    except OSError as exc:
        return (f"MEMORY_FILE_PATH={str(path)!r}: {(exc.strerror or str(exc)).lower()}; nothing imported (unset "
                "MEMORY_FILE_PATH if there is nothing to import)")
    if not path.is_file():
        return f"MEMORY_FILE_PATH={str(path)!r} is not a file; nothing imported"
    return path.resolve(), version


async def offer_import(value: str, graph: GraphStore, owner: str, importer: Importer, marks: OfferMarks, *,
                       who: str, command: Callable[[Path], str], say: Callable[[str], None]) -> None:
    """Make the offer for `value` (MEMORY_FILE_PATH as set) and the memory `owner` (named `who`
    for the person), saying what happened through `say`. Files are looked at on a thread: nothing
    blocks the event loop."""
    found = await asyncio.to_thread(examine, value)
    if isinstance(found, str):
        say(found)
        return
    path, version = found
    key = f"{owner} {path}"
    if await asyncio.to_thread(marks.made, key, version):
        return  # offered (or imported) before, and the file has not changed since
    usage = await graph.usage(owner)
    if usage.entities == 0 and usage.bytes == 0:
        try:
            report = await importer(path)
        except (ValueError, OSError) as exc:
            say(f"MEMORY_FILE_PATH={str(path)!r} could not be imported: {exc}; the {who} is unchanged, and the import "
                f"is tried again at the next start (to run it by hand: {command(path)})")
            return
        say(f"imported {path} (MEMORY_FILE_PATH, the official memory server's file) into the {who}, which was "
            f"empty: {report}; the file itself is unchanged (importing it again adds nothing and lists any record "
            f"skipped: {command(path)})")
    else:
        say(f"MEMORY_FILE_PATH names {path} (the official memory server's file), but the {who} already holds "
            f"{usage.entities} entities, so it is not imported automatically (a merge could bring back what was "
            f"deleted here); to import it anyway (what is already here is skipped, nothing is duplicated): "
            f"{command(path)}")
    problem = await asyncio.to_thread(marks.record, key, version)
    if problem is not None:
        say(problem)

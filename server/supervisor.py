"""`memory-mcp serve --workers N`: one supervisor process, N worker processes on the same port.

The supervisor binds the listening sockets (`server.cli._listen`), prints the start-up messages,
then starts each worker as a new program, `python -m server serve --inherited-sockets FD,...`,
with the listening sockets passed as open file descriptors (`pass_fds`) and its settings as one
line of JSON on its standard input (`Brief`). Every worker accepts connections from the same sockets: one
accept queue, so a connection waits in it for whichever worker is free, and nothing queued is lost
when a worker dies. Why not SO_REUSEPORT (each worker binding the port itself): the kernel spreads
connections over one queue per worker by a hash, so the connections waiting in a dead worker's
queue are reset, a busy worker's queue fills while another idles, `--port 0` would need the port
first anyway, and any other process of the same user could bind the port too and take a share of
the traffic. Why a new program and not `fork`: the supervisor has opened the store (threads) to
check the data directory and the accounts, and a forked child would inherit that state half-made.

The workers are the same server as `--workers 1`, with three differences (`server.limits.run_app`,
`server.cli`): they print no start-up message, they stop on the first SIGTERM and ignore later
ones and SIGINT (a service manager signals the whole group and the supervisor forwards its own
signal: a second one must not cut the drain short), and they also stop when their standard input
closes, that is when the supervisor is gone, whatever killed it.

The supervisor:
* replaces a worker that exits while it is not stopping, at once the first time; a worker that
  dies again within `STARTUP_SECONDS` of its start is failing at start-up, and is restarted after
  a delay doubling from `FIRST_DELAY` to `MAX_DELAY`, with one log line each time that says so;
* on SIGTERM or SIGINT sends SIGTERM to every worker, once, waits until all have exited (each
  drains as a single server does: `shutdown_timeout`), and exits 0 if they all did; a second
  signal kills the workers at once, as a second Ctrl-C ends a single server;
* is the service manager of its workers (server/systemd.py): each worker notifies a datagram
  socket of its own (`NOTIFY_SOCKET`), which the supervisor reads. Under systemd the supervisor,
  the unit's main process, says READY once every worker has, STOPPING when it stops, and pings
  the watchdog itself; it gives its workers the same watchdog period, and kills a worker that
  stops pinging (its store or event loop stuck) so that it is replaced, as systemd would restart a
  single server.

Several workers share one data directory as several instances do: SQLite in WAL mode serialises
their writes, the throttle database likewise, and the key file is created atomically
(`server.keyfile`). Sessions move between workers as between instances (docs/decisions.md#10).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pydantic import SecretStr

from server import systemd
from server.config import Settings

log = logging.getLogger(__name__)

INHERITED_FLAG = "--inherited-sockets"
STARTUP_SECONDS = 10.0
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
POLL_SECONDS = 0.1
"""How often the supervisor looks at its workers: how soon a dead one is replaced."""


@dataclass
class Worker:
    slot: int
    process: subprocess.Popen[bytes]
    started: float
    ready: bool = False
    pinged: float | None = None


def worker_command(fds: Sequence[int]) -> list[str]:
    return [sys.executable, "-m", "server", "serve", INHERITED_FLAG, ",".join(map(str, fds))]


@dataclass(frozen=True, slots=True)
class Brief:
    """What a worker is told at its start: the settings it serves with, exactly the supervisor's
    (the port actually bound included; never read again from the environment or a file that may
    have changed since), its slot among `count` workers, the supervisor's private directory (where
    the workers reach each other's metrics: server/metrics.py), and the descriptor of the
    `metrics_address` listener when the supervisor bound one."""

    settings: Settings
    slot: int
    count: int
    directory: str
    metrics_fd: int | None

    def line(self) -> bytes:
        settings = self.settings.model_dump(mode="json")
        # Pydantic writes a secret as stars; the worker needs it itself (through a pipe only it reads).
        settings.update({name: value.get_secret_value() for name, value in self.settings
                         if isinstance(value, SecretStr)})
        return json.dumps({"settings": settings, "slot": self.slot, "count": self.count,
                           "directory": self.directory, "metrics_fd": self.metrics_fd}).encode() + b"\n"


def read_brief(fd: int = 0) -> Brief:
    """The worker's side of `Brief.line`, read byte by byte so that nothing after the line is
    consumed: the same pipe then tells the worker when the supervisor is gone."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise RuntimeError("the supervisor closed the settings pipe before sending the settings")
        line += chunk
    sent = json.loads(line)
    return Brief(Settings.model_validate(sent["settings"]), sent["slot"], sent["count"], sent["directory"],
                 sent["metrics_fd"])


class Supervisor:
    def __init__(self, settings: Settings, sockets: Sequence[socket.socket],
                 metrics_socket: socket.socket | None = None) -> None:
        self._settings = settings
        self._fds = [sock.fileno() for sock in sockets]
        self._metrics_fd = None if metrics_socket is None else metrics_socket.fileno()
        self._workers: dict[int, Worker | None] = dict.fromkeys(range(1, settings.workers + 1))
        self._failures = dict.fromkeys(self._workers, 0)
        self._not_before = dict.fromkeys(self._workers, 0.0)
        self._signals: list[int] = []
        self._stopping = False
        self._exit_codes: list[int] = []
        self._service = systemd.Notifier.from_environ()
        self._announced = False
        self._pinged = 0.0
        self._channels_dir = Path(tempfile.mkdtemp(prefix="memory-mcp-"))
        self._channels: dict[int, socket.socket] = {}
        for slot in self._workers:
            channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            channel.bind(str(self._channels_dir / f"worker-{slot}"))
            self._channels[slot] = channel

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                self._handle_signals()
                now = time.monotonic()
                for slot in self._workers:
                    self._read_channel(slot, now)
                    self._check(slot, now)
                self._tell_service(now)
                if self._stopping and not any(self._workers.values()):
                    break
                time.sleep(POLL_SECONDS)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for worker in self._workers.values():  # only on an unexpected error in this loop
                if worker is not None and worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait()
            for channel in self._channels.values():
                channel.close()
            shutil.rmtree(self._channels_dir, ignore_errors=True)
            self._service.close()
        # Killed by the SIGTERM sent to it: a worker still starting, before it handles the signal.
        failed = [code for code in self._exit_codes if code not in (0, -signal.SIGTERM)]
        log.info("all workers stopped" + (f"; {len(failed)} exited with an error" if failed else ""))
        return 1 if failed else 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            name = signal.Signals(self._signals.pop(0)).name
            if self._stopping:
                log.warning("%s again: killing the workers without waiting for their requests", name)
                for worker in self._workers.values():
                    if worker is not None and worker.process.poll() is None:
                        worker.process.kill()
                continue
            self._stopping = True
            self._service.stopping(f"draining: requests in flight get up to {self._settings.shutdown_timeout:g} s")
            log.info("%s: stopping %d worker(s)", name, sum(1 for w in self._workers.values() if w))
            for worker in self._workers.values():
                if worker is not None and worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)

    def _read_channel(self, slot: int, now: float) -> None:
        """What the slot's worker told its service manager: READY, WATCHDOG pings."""
        while True:
            try:
                datagram = self._channels[slot].recv(4096)
            except BlockingIOError:
                return
            worker = self._workers[slot]
            if worker is None:
                continue
            lines = datagram.decode(errors="replace").splitlines()
            if "READY=1" in lines and not worker.ready:
                worker.ready = True
                log.info("worker %d (pid %d) is ready", slot, worker.process.pid)
            if "WATCHDOG=1" in lines:
                worker.pinged = now

    def _tell_service(self, now: float) -> None:
        """READY once every worker is; the watchdog pinged while this loop runs; a worker whose
        pings stopped for the watchdog period killed, to be replaced."""
        everyone_ready = all(w is not None and w.ready for w in self._workers.values())
        if everyone_ready and not self._announced and not self._stopping:
            self._announced = True
            self._service.ready(f"serving MCP at {self._settings.issuer}/mcp with {len(self._workers)} workers")
        interval = self._service.watchdog_interval
        if interval is None:
            return
        if now - self._pinged >= interval:
            self._pinged = now
            self._service.notify("WATCHDOG=1")
        for worker in self._workers.values():
            if (worker is not None and not self._stopping and worker.ready
                    and now - (worker.pinged or worker.started) > 2 * interval and worker.process.poll() is None):
                log.error("worker %d (pid %d) sent no watchdog ping for %g s (its store or event loop is stuck): "
                          "killing it", worker.slot, worker.process.pid, 2 * interval)
                worker.process.kill()

    def _check(self, slot: int, now: float) -> None:
        worker = self._workers[slot]
        if worker is not None:
            code = worker.process.poll()
            if code is None:
                return
            self._workers[slot] = None
            if worker.process.stdin is not None:
                worker.process.stdin.close()
            if self._stopping:
                self._exit_codes.append(code)
                return
            self._replace_later(worker, code, now)
        if not self._stopping and now >= self._not_before[slot]:
            self._start(slot)

    def _replace_later(self, worker: Worker, code: int, now: float) -> None:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        lived = now - worker.started
        if lived < STARTUP_SECONDS:
            self._failures[worker.slot] += 1
            delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (self._failures[worker.slot] - 1))
            log.error("worker %d (pid %d) %s %.1f s after it started (%d time(s) in a row); starting another in "
                      "%g s: if it keeps failing, its log lines above say why", worker.slot, worker.process.pid, how,
                      lived, self._failures[worker.slot], delay)
        else:
            self._failures[worker.slot] = 0
            delay = 0.0
            log.error("worker %d (pid %d) %s; starting another", worker.slot, worker.process.pid, how)
        self._not_before[worker.slot] = now + delay

    def _worker_environment(self, slot: int) -> dict[str, str]:
        """This process's environment, but with the worker's own service manager: this supervisor."""
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = str(self._channels_dir / f"worker-{slot}")
        if self._service.watchdog_interval is not None:
            env["WATCHDOG_USEC"] = str(int(self._service.watchdog_interval * 2_000_000))
        return env

    def _start(self, slot: int) -> None:
        try:
            # This program with a fixed argument list: nothing in it comes from a client.
            passed = self._fds if self._metrics_fd is None else [*self._fds, self._metrics_fd]
            process = subprocess.Popen(worker_command(self._fds), stdin=subprocess.PIPE,  # noqa: S603
                                       pass_fds=passed, env=self._worker_environment(slot))
        except OSError as exc:
            self._failures[slot] += 1
            delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (self._failures[slot] - 1))
            log.error("cannot start worker %d: %s; trying again in %g s", slot, exc, delay)
            self._not_before[slot] = time.monotonic() + delay
            return
        if process.stdin is not None:
            try:
                process.stdin.write(Brief(self._settings, slot, len(self._workers), str(self._channels_dir),
                                          self._metrics_fd).line())
                process.stdin.flush()
            except BrokenPipeError:
                pass  # it died at once: the next round sees it and says so
        self._workers[slot] = Worker(slot, process, time.monotonic())
        log.info("worker %d started (pid %d)", slot, process.pid)


def run(settings: Settings, sockets: Sequence[socket.socket], metrics_socket: socket.socket | None = None) -> int:
    return Supervisor(settings, sockets, metrics_socket).run()

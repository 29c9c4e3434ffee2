"""The service manager's protocols, written here: notification (sd_notify: one datagram) and
socket activation (sd_listen_fds: descriptors from 3 on).

Under systemd with `Type=notify` the server says when it is ready (`READY=1`, once it listens and
its store is open), when it starts draining (`STOPPING=1`), and, with `WatchdogSec=`, that it is
alive (`WATCHDOG=1` every half watchdog period, sent from the event loop: a stuck loop stops
sending and systemd restarts the service). Outside systemd (`NOTIFY_SOCKET` unset) nothing here
does anything.

With a socket unit (scripts/memory-mcp.socket) systemd holds the listening socket and passes it
(`listen_fds`): connections that arrive while the server restarts wait in its queue instead of
being refused.

Every send is a non-blocking `sendto` on an AF_UNIX datagram socket: when the manager's queue is
full the message is dropped rather than waiting on the event loop (a missed watchdog ping is made
good by the next one; the manager reads READY and STOPPING at once).

The watchdog asks the store too: a ping goes out only when a read of the store completed (with a
result or a refusal such as `StorageUnavailable`) within the ping interval. A store that is down
answers at once with a refusal and keeps the process pinging, because restarting does not bring
Redis back; a store whose every call hangs (a wedged SQLite thread) stops the pings, and a restart
is the cure. A read still running is never started again, so a hung store costs one pending call,
not one per interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from server.storage import StorageUnavailable

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]
LISTEN_FDS_START = 3


def _address(value: str) -> str | None:
    """The socket address `NOTIFY_SOCKET` names: a path, or `@name` in the abstract namespace."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between pings (half of `WATCHDOG_USEC`), or None when no watchdog is asked of this
    process: unset, not a positive number, or meant for another process (`WATCHDOG_PID`)."""
    usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a whole number of microseconds", usec)
        return None
    return value / 2_000_000 if value > 0 else None


@dataclass(eq=False)
class Notifier:
    """Messages to the service manager; every method does nothing when there is none."""

    address: str | None
    watchdog_interval: float | None = None
    _sock: socket.socket | None = None
    _watchdog: asyncio.Task[None] | None = None
    _dropped: int = field(default=0)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        if not raw:
            return cls(None)
        address = _address(raw)
        if address is None:
            log.warning("ignoring NOTIFY_SOCKET=%r: only a socket path or an @abstract name is understood", raw)
            return cls(None)
        return cls(address, _watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; whether it was sent."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            # A full queue (EAGAIN) or a manager gone away: dropped, never waited for.
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 100 == 0:
                log.warning("could not notify the service manager (%d message(s) dropped so far): %s",
                            self._dropped, exc.strerror or exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self, probe: Probe) -> None:
        """Ping every `watchdog_interval` seconds while the store answers `probe`; call it on the
        running event loop."""
        if self.address is None or self.watchdog_interval is None or self._watchdog is not None:
            return
        self._watchdog = asyncio.get_running_loop().create_task(
            self._pet(self.watchdog_interval, probe), name="systemd-watchdog")

    async def _pet(self, interval: float, probe: Probe) -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[object] | None = None
        stuck = failing = False
        while True:
            began = loop.time()
            if pending is None:
                pending = asyncio.ensure_future(probe())
            # Waited for, never cancelled: a store call on a thread cannot be taken back, and a
            # second one behind it would only queue.
            await asyncio.wait({pending}, timeout=interval)
            if pending.done():
                failure = pending.exception() if not pending.cancelled() else None
                pending = None
                # Any answer shows the store's machinery alive; a failure other than a refusal is
                # a bug worth one log line (until the check passes again), not a restart.
                if failure is not None and not isinstance(failure, StorageUnavailable) and not failing:
                    log.warning("the watchdog's store check failed: %r", failure)
                failing = failure is not None
                if stuck:
                    log.warning("the store answers again; watchdog pings resume")
                stuck = False
                self.notify("WATCHDOG=1")
            elif not stuck:
                stuck = True
                log.error("the store has not answered for %.1f s: watchdog pings stop, and the service manager "
                          "restarts the server if it stays so", interval)
            await asyncio.sleep(max(0.0, interval - (loop.time() - began)))

    def close(self) -> None:
        """Stop pinging (the task ends when its loop next runs, or with it) and close the socket."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None



def listen_fds(environ: dict[str, str] | os._Environ[str] | None = None) -> list[socket.socket]:
    """The sockets the service manager passed to this process (`LISTEN_FDS` of them from
    descriptor 3, when `LISTEN_PID` names this process), or [] when none were. The variables are
    removed, so that nothing this process starts takes the sockets for its own."""
    env = os.environ if environ is None else environ
    count, pid = env.get("LISTEN_FDS"), env.get("LISTEN_PID")
    if not count or pid != str(os.getpid()):
        return []
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not count.isdigit():
        raise ValueError(f"LISTEN_FDS={count!r} from the service manager is not a number of sockets")
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets

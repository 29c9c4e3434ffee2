"""Running under systemd: the notification protocol spoken by a real `memory-mcp serve` process
to a socket this test owns (as systemd's would be), the watchdog, and the unit file as
`systemd-analyze verify` reads it."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from server.storage import StorageUnavailable
from server.systemd import Notifier

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "scripts" / "memory-mcp.service"
INSTALLED_AT = "/opt/memory-mcp/venv/bin/memory-mcp"


@dataclass
class Datagram:
    at: float
    fields: dict[str, str]


class ManagerSocket:
    """The service manager's end: an AF_UNIX datagram socket, at a path or an abstract name, whose
    datagrams are stamped with the time they arrive (read by the event loop as they come)."""

    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.setblocking(False)
        self.received: list[Datagram] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.received.append(Datagram(time.monotonic(), fields))

    def drain(self) -> list[Datagram]:
        """Everything received so far (the loop has read all that arrived before this call)."""
        self._read()
        return self.received

    async def wait_for(self, key: str, within: float) -> Datagram:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for datagram in self.drain():
                if key in datagram.fields:
                    return datagram
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {key} within {within}s; received {[d.fields for d in self.received]}")

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
async def manager(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ManagerSocket]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        if len(path) >= 100:  # sun_path holds 108 bytes
            path = str(Path(tempfile.mkdtemp(prefix="notify-")) / "notify")
        sock = ManagerSocket(path, path)
    else:
        name = f"memory-mcp-test-{os.getpid()}-{time.monotonic_ns()}"
        sock = ManagerSocket("@" + name, "\0" + name)
    yield sock
    sock.close()
    if request.param == "path":
        Path(sock.address).unlink(missing_ok=True)


def stop_timeout() -> float:
    found = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert found, "the unit sets TimeoutStopSec"
    return float(found.group(1))


def serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", "0", "--data-dir",
                                 str(tmp_path / "data")], stdout=out, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **env})
    return proc, log


async def test_ready_watchdog_and_stopping_reach_the_manager(tmp_path: Path, manager: ManagerSocket) -> None:
    """READY=1 once the port answers, WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1 at SIGTERM,
    then exit 0 within the unit's stop timeout."""
    proc, log = serve(tmp_path, {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"})
    try:
        ready = await manager.wait_for("READY", 60)
        # The status names where it serves; the port answers the moment READY is out.
        found = re.fullmatch(r"serving MCP at (\S+)/mcp", ready.fields.get("STATUS", ""))
        assert found, ready.fields
        async with httpx2.AsyncClient() as http:
            assert (await http.get(found.group(1) + "/healthz")).status_code == 200
        # Pings only once ready (the watchdog starts with READY), then every 0.1 s.
        await asyncio.sleep(1.5)
        pings = [d.at for d in manager.drain() if "WATCHDOG" in d.fields]
        assert all(at >= ready.at for at in pings)
        gaps = sorted(b - a for a, b in itertools.pairwise(pings))
        # 15 expected; the median gap is the rate, whatever a busy machine does to a few of them.
        assert 6 <= len(pings) <= 22, f"{len(pings)} pings in 1.5 s"
        assert 0.07 <= gaps[len(gaps) // 2] <= 0.15, f"median gap {gaps[len(gaps) // 2]:.3f}s"
        assert all(d.fields["WATCHDOG"] == "1" for d in manager.received if "WATCHDOG" in d.fields)

        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stopping = await manager.wait_for("STOPPING", 10)
        assert stopping.fields["STOPPING"] == "1" and stopping.fields.get("STATUS", "").startswith("draining")
        code = await asyncio.to_thread(proc.wait, stop_timeout())
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()
    assert took < stop_timeout()
    assert "Traceback" not in log.read_text()


async def test_a_watchdog_meant_for_another_process_is_not_petted(tmp_path: Path, manager: ManagerSocket) -> None:
    """WATCHDOG_PID names the process systemd watches; another process (a child that inherited the
    environment) must not ping in its place. READY still goes out."""
    proc, log = serve(tmp_path, {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000",
                                 "WATCHDOG_PID": str(os.getpid())})
    try:
        await manager.wait_for("READY", 60)
        await asyncio.sleep(0.6)
        assert not [d for d in manager.drain() if "WATCHDOG" in d.fields]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, stop_timeout())
    assert code == 0, log.read_text()


async def test_the_watchdog_pings_only_while_the_store_answers(manager: ManagerSocket) -> None:
    """The store check: an answer, even a refusal (Redis down: a restart would not help), keeps
    the pings going; a check that hangs stops them, without piling up more checks; when it
    answers again they resume."""
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "100000"})
    answering = asyncio.Event()
    answering.set()
    checks = 0
    refuse = False

    async def probe() -> None:
        nonlocal checks
        checks += 1
        await answering.wait()
        if refuse:
            raise StorageUnavailable("down", "test", 1)

    notifier.start_watchdog(probe)
    try:
        await asyncio.sleep(0.4)
        assert len([d for d in manager.drain() if "WATCHDOG" in d.fields]) >= 4
        refuse = True
        mark = len(manager.drain())
        await asyncio.sleep(0.4)
        assert len([d for d in manager.drain()[mark:] if "WATCHDOG" in d.fields]) >= 4
        refuse = False
        answering.clear()
        await asyncio.sleep(0.1)  # the check in progress may still answer
        mark, checks_then = len(manager.drain()), checks
        await asyncio.sleep(0.5)
        assert not [d for d in manager.drain()[mark:] if "WATCHDOG" in d.fields]
        assert checks == checks_then, "a hung check is waited for, not started again"
        answering.set()
        mark = len(manager.drain())
        await asyncio.sleep(0.3)
        assert len([d for d in manager.drain()[mark:] if "WATCHDOG" in d.fields]) >= 2
    finally:
        notifier.close()
    await asyncio.sleep(0)  # the cancelled task ends
    mark = len(manager.drain())
    await asyncio.sleep(0.15)
    assert not manager.drain()[mark:], "no ping after close"


def test_nothing_is_sent_without_a_manager() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "200000"})
    assert not notifier.enabled and not notifier.notify("READY=1")
    assert Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"}).address is None


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: install Debian's systemd package (.ci/run does)"
    return found


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit as installed, with ExecStart pointing at this checkout's memory-mcp (verify checks
    that the program exists and is executable)."""
    program = Path(sys.executable).parent / "memory-mcp"
    assert program.exists(), "the project is installed with its console script"
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_AT} serve" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_AT, str(program)))
    result = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"systemd-analyze verify {UNIT.name} complains:\n{result.stdout}{result.stderr}")


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt value and a missing program are reported."""
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("Type=notify", "Type=notfy"))
    result = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert "notfy" in result.stderr and INSTALLED_AT in result.stderr, result.stderr


def test_the_stop_timeout_covers_the_drain() -> None:
    """The drain takes at most about 2 x shutdown_timeout (server/limits.py LimitedRunner); the
    unit must give it that before SIGKILL."""
    from server.config import Settings

    default = Settings.model_fields["shutdown_timeout"].default
    assert stop_timeout() >= 2 * default + 5


async def test_a_socket_passed_by_systemd_is_served(tmp_path: Path, manager: ManagerSocket) -> None:
    """Socket activation, by systemd's own `systemd-socket-activate`: it listens, and on the first
    connection starts `serve` with the socket as descriptor 3 (LISTEN_FDS, LISTEN_PID). That
    connection, made before the server existed, is answered: what makes a restart refuse nobody."""
    tool = shutil.which("systemd-socket-activate")
    assert tool, "systemd-socket-activate is missing: install Debian's systemd package (.ci/run does)"
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        # It passes on only the environment it is given with -E.
        proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", "-E", f"NOTIFY_SOCKET={manager.address}",
                                 sys.executable, "-m", "server", "serve", "--data-dir", str(tmp_path / "data")],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        for _ in range(100):
            if "Listening on" in log.read_text():
                break
            await asyncio.sleep(0.05)
        async with httpx2.AsyncClient(timeout=60) as http:
            first = await http.get(f"http://127.0.0.1:{port}/healthz")
            assert first.status_code == 200
            ready = await manager.wait_for("READY", 10)
            assert ready.fields["STATUS"] == f"serving MCP at http://127.0.0.1:{port}/mcp"
            metadata = (await http.get(f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server")).json()
            assert metadata["issuer"] == f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        await manager.wait_for("STOPPING", 10)
        code = await asyncio.to_thread(proc.wait, stop_timeout())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert f"listening on 127.0.0.1:{port}, passed by the service manager" in text, text


def test_the_socket_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    program = Path(sys.executable).parent / "memory-mcp"
    for name in ("memory-mcp.service", "memory-mcp.socket"):
        text = (REPO / "scripts" / name).read_text()
        (tmp_path / name).write_text(text.replace(INSTALLED_AT, str(program)))
    result = subprocess.run([systemd_analyze(), "verify", str(tmp_path / "memory-mcp.socket"),
                             str(tmp_path / "memory-mcp.service")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"systemd-analyze verify memory-mcp.socket complains:\n{result.stdout}{result.stderr}")

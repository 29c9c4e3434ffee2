"""What the client interop drivers (tests/interop/*/run.py) share: a loopback-only network
namespace brought up, child processes started and always stopped, a server waited for."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2: a new network namespace's only interface is
    loopback, and it starts down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)  # struct ifreq: name, then flags in the union
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def free_port() -> int:
    # A fresh network namespace has no other listeners, so the port stays free until used.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """Every long-running child, stopped (TERM, then KILL) in reverse order on exit."""

    def __init__(self) -> None:
        self.running: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
        self.running.append((proc, out))
        return proc

    def stop_all(self) -> None:
        for proc, out in reversed(self.running):
            stop(proc)
            out.close()
        self.running.clear()


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # helpers it left behind (e.g. the browser hook)
    except ProcessLookupError:
        pass


@contextmanager
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            with opener.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def start_upstream(work: Path, server_origin: str) -> tuple[Any, str, list[str]]:
    """For a driver's `--upstream` run: the OpenID provider of tests/upstream.py on its own loopback
    port (`localhost`, another site than the server's 127.0.0.1), with the server as its client.
    Returns the provider (stop it at the end), its issuer, and the `memory-mcp serve` flags that
    make the server sign users in through it (and only through it)."""
    from tests.upstream import client_for, start_provider

    port = free_port()
    issuer = f"http://localhost:{port}"
    secret = "provider-secret-of-memory-mcp"
    provider = start_provider(work / "provider", issuer, [client_for(server_origin, secret=secret)], port=port)
    flags = ["--upstream-issuer", issuer, "--upstream-client-id", "memory-mcp", "--upstream-client-secret", secret,
             "--local-login", "false"]
    return provider, issuer, flags


@contextmanager
def run_store(work: Path, redis: bool) -> Iterator[list[str]]:
    """For a driver's `--redis` run: a private redis-server (tests/redis_server.py) inside the
    run's namespace, its data kept in WORK/redis with AOF, so that the test can start it again to
    look inside once the run is over. Yields the flags that put `memory-mcp` on it (none: SQLite
    in the data directory)."""
    if not redis:
        yield []
        return
    from tests.redis_server import RedisServer

    server = RedisServer(work / "redis", appendonly=True)
    server.start()
    try:
        yield ["--redis-url", server.url]
    finally:
        server.stop()


@asynccontextmanager
async def store_after(result: dict[str, Any]) -> AsyncIterator[Any]:
    """The store of a finished run (its result.json): the SQLite file, or its Redis started again
    on the data it kept (`run_store`)."""
    if result.get("redis_dir"):
        from server.storage.redis import RedisStorage
        from tests.redis_server import RedisServer

        server = RedisServer(Path(result["redis_dir"]), appendonly=True)
        server.start()
        redis = RedisStorage(server.url)
        try:
            yield redis
        finally:
            await redis.close()
            server.stop()
        return
    from server.storage.sqlite import SQLiteStorage

    sqlite = SQLiteStorage(Path(result["data_dir"]) / "memory.sqlite3")
    try:
        yield sqlite
    finally:
        await sqlite.close()


def namespace_argv() -> list[str]:
    """A private network (only loopback) and PID namespace: nothing can leave the machine, and
    when the driver (PID 1 there) ends, the kernel kills whatever it left running."""
    argv = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        argv.insert(1, "--map-root-user")  # an unprivileged user namespace grants what root would
    return argv


def drive(argv: list[str], work: Path, timeout: float, client: str, logs: str) -> dict[str, Any]:
    """Run a client's driver (in its namespaces: `namespace_argv` first in `argv`) and return its
    result.json, checked to have completed every step; on a failure the test fails with the
    driver's output and the tails of its logs (`logs`: a glob in `work`)."""
    import pytest  # here: the drivers import this module too, and run without pytest's machinery

    # Its own process group: on a timeout everything it started goes too.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the {client} run took over {timeout}s; artifacts in {work}\n{output}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    result_file = work / "result.json"
    assert result_file.exists(), f"driver exited {proc.returncode} without a result:\n{output}"
    result: dict[str, Any] = json.loads(result_file.read_text())
    failed = [s["name"] for s in result["steps"] if s["returncode"] != 0]
    assert "error" not in result and not failed, (
        f"{result.get('error')} / failed steps {failed}; artifacts in {work}\n"
        + "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(work.glob(logs)) if p.stat().st_size))
    return result

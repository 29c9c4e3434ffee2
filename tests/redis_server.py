"""A private `redis-server` for the tests.

Tests never touch a Redis they did not start (not the one a developer's machine may run on
6379): each `RedisServer` runs on a free loopback port with its own directory, and is stopped,
killed or restarted by the test that owns it. `redis-server` comes from Debian's package
(`.ci/run` installs it where it is missing); without it the Redis tests fail, they are not
skipped.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.tls import TLSFiles

START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process. `appendonly`: AOF with `appendfsync always`, so that every
    acknowledged write survives a kill (the persistence docs/storage.md tells operators to use).
    It also listens on a Unix socket (`socket`), and `replica_of` starts it as a replica of another."""

    def __init__(self, directory: Path, *, appendonly: bool = False, replica_of: RedisServer | None = None,
                 tls: TLSFiles | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: the Redis backend's tests need it "
                               "(apt-get install redis-server; .ci/run does this)")
        self.binary = binary
        self.directory = directory
        self.appendonly = appendonly
        self.replica_of = replica_of
        self.port = _free_port()
        # With `tls`, it also speaks TLS on a port of its own (`tls_url`); the plain port stays for
        # the helpers below.
        self.tls = tls
        self.tls_port = _free_port() if tls is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this test Redis was started without TLS")
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
                "--appendonly", "yes" if self.appendonly else "no",
                "--repl-diskless-sync-delay", "0"]  # a replica starts at once, not 5 s later
        if self.appendonly:
            args += ["--appendfsync", "always"]
        if len(str(self.socket)) < 100:  # the limit of a Unix socket's path
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.tls is not None:
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls.cert), "--tls-key-file",
                     str(self.tls.key), "--tls-ca-cert-file", str(self.tls.cert), "--tls-auth-clients", "no"]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):
            if self.process.poll() is not None:
                log = (self.directory / "redis.log")
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: "
                                   f"{log.read_text()[-2000:] if log.exists() else 'no log'}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM and wait: Redis writes its AOF (if on) and exits."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: what an acknowledged write must survive with AOF on."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def flush(self) -> None:
        if not self.command("FLUSHALL").startswith(b"+OK"):
            raise RuntimeError("FLUSHALL failed on the test Redis")

    def command(self, *words: str) -> bytes:
        """Send one command; the first line of the answer (enough for +OK, an error, a count)."""
        request = f"*{len(words)}\r\n".encode() + b"".join(
            f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return answer.split(b"\r\n", 1)[0]

    def role(self) -> str:
        """"master" or "slave", as Redis says it (INFO replication)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"INFO replication\r\n")
            answer = b""
            while b"role:" not in answer or not answer.split(b"role:", 1)[1].count(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return answer.split(b"role:", 1)[1].split(b"\r\n", 1)[0].decode()

"""What `redis_url` may say, each against a real test Redis: TLS (`rediss://`) with a certificate
of a private CA, trusted through the URL (`ssl_ca_certs`, redis-py's URL option) or refused by the
system's trust store; a password and a database number. Whatever fails stops `serve` with one line
that says so, never the password. (unix:// is in tests/test_redis_outage.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis.asyncio as aioredis

from auth import accounts
from server.memory.graph import Entity, Quota
from tests.conftest import start_server
from tests.redis_server import RedisServer
from tests.tls import self_signed


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis", tls=self_signed(tmp_path / "tls"))
    redis.start()
    yield redis
    redis.stop()


async def test_a_server_on_rediss_with_a_trusted_ca(tls_redis: RedisServer, tmp_path: Path,
                                                    http: httpx2.AsyncClient) -> None:
    assert tls_redis.tls is not None
    url = f"{tls_redis.tls_url}?ssl_ca_certs={tls_redis.tls.cert}"
    running = await start_server(tmp_path / "data", redis_url=url)
    try:
        await accounts.add_user(running.storage, "alice", "alice-password-1")
        await running.storage.create_entities("owner", [Entity(name="a", entityType="t", observations=["o"])],
                                              Quota(entities=10, observations=10, bytes=10_000))
        assert b'"name":"a"' in (await running.storage.read_graph("owner")).json
        assert (await http.get(running.url + "/readyz")).status_code == 200
    finally:
        await running.stop()
    # What went over TLS is in that Redis (read back on its plain port).
    assert tls_redis.command("EXISTS", "memory-mcp:cookie-key") == b":1"


def test_an_untrusted_certificate_stops_serve_with_one_clear_line(tls_redis: RedisServer, tmp_path: Path) -> None:
    url = tls_redis.tls_url.replace("rediss://", "rediss://:hunter2-secret@")
    result = subprocess.run([sys.executable, "-m", "server", "serve", "--port", "0", "--data-dir",
                             str(tmp_path / "data")], env={"PATH": "/usr/bin:/bin", "MEMORY_MCP_REDIS_URL": url},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"cannot use Redis at rediss://:***@127.0.0.1:{tls_redis.tls_port}/0 (redis_url)" in result.stderr
    assert "certificate verify failed" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr


async def test_a_password_and_a_database_number(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        assert redis.command("CONFIG", "SET", "requirepass", "s3cret-pw-9") == b"+OK"
        url = f"redis://:s3cret-pw-9@127.0.0.1:{redis.port}/3"
        running = await start_server(tmp_path / "data", redis_url=url)
        try:
            await accounts.add_user(running.storage, "alice", "alice-password-1")
        finally:
            await running.stop()
        for database, expected in ((3, 1), (0, 0)):
            client = aioredis.Redis.from_url(f"redis://:s3cret-pw-9@127.0.0.1:{redis.port}/{database}")
            try:
                assert await client.exists("memory-mcp:cookie-key", "memory-mcp:usernames") == 2 * expected
            finally:
                await client.aclose()

        wrong = url.replace("s3cret-pw-9", "not-the-pw-7")
        result = subprocess.run([sys.executable, "-m", "server", "serve", "--port", "0", "--data-dir",
                                 str(tmp_path / "other")], env={"PATH": "/usr/bin:/bin", "MEMORY_MCP_REDIS_URL": wrong},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert f"cannot use Redis at redis://:***@127.0.0.1:{redis.port}/3 (redis_url)" in result.stderr, result.stderr
        assert "not-the-pw" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    finally:
        redis.kill()  # its plain helpers would need the password now


"""Shared fixtures: a real server on a loopback socket, real SQLite, real MCP SDK clients."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from auth import accounts
from server.app import REGISTRY, SETTINGS, STORAGE, build_app
from server.config import Settings
from server.limits import LimitedRunner
from server.storage import Storage
from server.storage.sqlite import SQLiteStorage
from tests.authflow import Backend
from tests.browser import Browser

# The graph tests' `backend` (SQLite and Redis) and `store` fixtures, shared by every graph test module.
from tests.graph_backends import backend, store  # noqa: F401
from tests.redis_server import RedisServer


@dataclass
class RunningServer:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def storage(self) -> Storage:
        return self.app[STORAGE]

    @property
    def sqlite(self) -> SQLiteStorage:
        """The storage, for a test that looks inside the SQLite file (it runs on that backend only)."""
        storage = self.app[STORAGE]
        if not isinstance(storage, SQLiteStorage):
            raise TypeError(f"this test needs the SQLite backend, the server runs on {type(storage).__name__}")
        return storage

    @property
    def registry(self) -> Any:
        return self.app[REGISTRY]

    @property
    def settings(self) -> Settings:
        return self.app[SETTINGS]

    def store_args(self) -> list[str]:
        """The flags that point an administration command (`memory-mcp users ...`) at this server's store."""
        args = ["--data-dir", str(self.settings.data_dir)]
        if self.settings.redis_url is not None:
            args += ["--redis-url", self.settings.redis_url]
        return args

    async def stop(self) -> None:
        await self.runner.cleanup()


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def start_server(data_dir: Path, port: int | None = None, **overrides: Any) -> RunningServer:
    """Start the real app on 127.0.0.1 as `memory-mcp serve` would (no handler cancellation)."""
    sock = free_socket() if port is None else None
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    settings = Settings(host="127.0.0.1", port=port, data_dir=data_dir, **overrides)
    app = await build_app(settings)
    runner = LimitedRunner(app, shutdown_timeout=2.0, handler_cancellation=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return RunningServer(settings.issuer, app, runner)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the whole run (tests/redis_server.py)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private Redis, emptied for this test."""
    if redis_server.process is None:  # a test before this one stopped it
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    """A plain HTTP client for raw requests (test files that need a longer timeout override it)."""
    async with httpx2.AsyncClient(timeout=10) as client:
        yield client


# A test module whose tests that take `server` (or `store_settings`, for a test that starts its own
# server) must run on both backends says so with `SERVER_BACKENDS = BACKENDS` (pytest_generate_tests
# below).
BACKENDS = ["sqlite", "redis"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "SERVER_BACKENDS", None)
    for name in ("server", "store_settings"):
        # A test that looks inside the SQLite file says `@pytest.mark.parametrize("server", ["sqlite"],
        # indirect=True)` itself.
        chosen = any(name in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
        if backends and name in metafunc.fixturenames and not chosen:
            metafunc.parametrize(name, backends, indirect=True)
            return


def on_both_backends(fixture: str = "server") -> pytest.MarkDecorator:
    """For one test of a module that runs on SQLite only (its other tests are not about storage, or
    cost too much twice): run this one on both backends, through `server` or `store_settings`."""
    return pytest.mark.parametrize(fixture, BACKENDS, indirect=True)


@pytest.fixture
def store_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings that put a test's own server (`start_server(data_dir, **store_settings)`) on
    the chosen backend: SQLite in its data_dir unless the module parametrises it (above)."""
    if getattr(request, "param", "sqlite") == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {}


@pytest.fixture
async def server(data_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """The real server with alice and bob; on SQLite unless the module parametrises it (above)."""
    chosen = getattr(request, "param", "sqlite")
    overrides = {"redis_url": request.getfixturevalue("redis_url")} if chosen == "redis" else {}
    running = await start_server(data_dir, **overrides)
    await accounts.add_user(running.storage, "alice", "alice-password-1")
    await accounts.add_user(running.storage, "bob", "bob-password-22")
    yield running
    await running.stop()


class MemoryTokenStorage:
    """The client's token store (what Codex keeps in .credentials.json)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class OAuthUser:
    """One person with one MCP client: the SDK's OAuthClientProvider, a browser for the login."""

    base_url: str
    username: str
    password: str
    storage: MemoryTokenStorage = field(default_factory=MemoryTokenStorage)
    redirects: list[str] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None  # for a server behind a test's TLS proxy
    upstream: str | None = None  # sign in through this upstream OpenID provider (tests/browser.py)
    memory: str | None = None  # the memory to choose on the consent page, by name (tests/browser.py)
    new_memory: str | None = None  # a memory to create there
    _pending: asyncio.Future[AuthorizationCodeResult] | None = None

    def provider(self, path: str = "/mcp") -> OAuthClientProvider:
        async def redirect_handler(url: str) -> None:
            self.redirects.append(url)
            browser = Browser(self.username, self.password, ssl_context=self.ssl_context, provider=self.upstream,
                              memory=self.memory, new_memory=self.new_memory)
            try:
                result = await browser.authorize(url, self.base_url)
            finally:
                await browser.close()
            params = result.params
            self._pending = asyncio.get_running_loop().create_future()
            self._pending.set_result(AuthorizationCodeResult(
                code=params["code"], state=params.get("state"), iss=params.get("iss")))

        async def callback_handler() -> AuthorizationCodeResult:
            assert self._pending is not None
            return await self._pending

        metadata = OAuthClientMetadata(
            client_name=f"pytest client of {self.username}",
            redirect_uris=[AnyUrl("http://127.0.0.1:33418/callback")],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        )
        return OAuthClientProvider(self.base_url + path, metadata, self.storage,
                                   redirect_handler=redirect_handler, callback_handler=callback_handler)

    def client(self, mode: str = "legacy", provider: OAuthClientProvider | None = None
               ) -> AbstractAsyncContextManager[tuple[Client, OAuthClientProvider]]:
        oauth = provider or self.provider()

        @asynccontextmanager
        async def connect() -> AsyncIterator[tuple[Client, OAuthClientProvider]]:
            async with httpx2.AsyncClient(auth=oauth, timeout=30, verify=self.ssl_context or True) as http:
                transport = streamable_http_client(self.base_url + "/mcp", http_client=http)
                async with Client(transport, mode=mode) as client:
                    yield client, oauth

        return connect()


@pytest.fixture
def oauth_user(server: RunningServer) -> Callable[[str, str], OAuthUser]:
    def make(username: str, password: str) -> OAuthUser:
        return OAuthUser(server.url, username, password)

    return make


Check = Callable[[], Awaitable[None]]


async def access_token(server: RunningServer, username: str, password: str) -> str:
    """Log in through the real flow and return the access token the client got."""
    user = OAuthUser(server.url, username, password)
    async with user.client() as (client, _):
        await client.list_tools()
    assert user.storage.tokens is not None
    return user.storage.tokens.access_token


async def tokens_by_hand(server: RunningServer, username: str, password: str, scope: str,
                         browser: Browser | None = None, memory: str | None = None,
                         client_id: str | None = None) -> dict[str, Any]:
    """The authorization code flow step by step (register, authorize, token), for a chosen scope.
    Pass a `browser` to keep its login (cookies) for later steps; `memory` chooses the memory on
    the consent page; `client_id` reuses a registered client instead of registering one."""
    import base64
    import hashlib
    import secrets
    from urllib.parse import urlencode

    redirect_uri = "http://127.0.0.1:9/callback"
    async with httpx2.AsyncClient() as http:
        client = {"client_id": client_id} if client_id is not None else (await http.post(
            server.url + "/register", json={"client_name": "by hand", "redirect_uris": [redirect_uri]})).json()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urlencode({"response_type": "code", "client_id": client["client_id"], "redirect_uri": redirect_uri,
                           "code_challenge": challenge, "code_challenge_method": "S256", "scope": scope,
                           "state": "s", "resource": server.url + "/mcp"})
        own = browser is None
        browser = browser or Browser(username, password, memory=memory)
        try:
            redirect = await browser.authorize(f"{server.url}/authorize?{query}", server.url)
        finally:
            if own:
                await browser.close()
        resp = await http.post(server.url + "/token", data={
            "grant_type": "authorization_code", "code": redirect.params["code"], "code_verifier": verifier,
            "client_id": client["client_id"], "redirect_uri": redirect_uri, "resource": server.url + "/mcp"})
        assert resp.status_code == 200, resp.text
        tokens: dict[str, Any] = resp.json()
        tokens["client_id"] = client["client_id"]
        return tokens


@pytest.fixture(params=["sqlite", "redis"])
def store_backend(request: pytest.FixtureRequest) -> Backend:
    """The storage backend of an auth test's store: every test that takes it runs on both (the
    Redis one starts the private redis-server, tests/redis_server.py, only when needed)."""
    if request.param == "redis":
        return Backend("redis", request.getfixturevalue("redis_url"))
    return Backend("sqlite")

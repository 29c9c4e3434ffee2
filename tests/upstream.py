"""A real OpenID provider for the upstream sign-in tests: oidc-provider (tests/interop/oidc, pinned,
OpenID Certified) run with node, its users, its keys, and the server under test as its client.

The pytest tests put a gateway (`Gateway`) between everything and the provider: it forwards
every request unchanged (the browser's Host header included, so the provider's URLs name the
gateway), and on demand stops (the provider is down), or rewrites the token endpoint's answer
(an ID token re-signed with the provider's own key but a wrong nonce, audience or lifetime, or
with a key the provider does not publish). The interop drivers (tests/interop/*/run.py) start
the provider without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import RSAKey

OIDC_DIR = Path(__file__).parent / "interop" / "oidc"
SCRIPT = OIDC_DIR / "provider.mjs"
INSTALLED = OIDC_DIR / "node_modules" / "oidc-provider" / "package.json"
# The provider's accounts: the login typed at its sign-in form is the account id (its `sub`).
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.com", "email_verified": True, "preferred_username": "alice",
              "name": "Alice Example", "groups": ["memory-users"]},
    "bob": {"email": "bob@example.com", "email_verified": True, "preferred_username": "bob", "groups": []},
    "mallory": {"email": "mallory@elsewhere.test", "email_verified": True, "preferred_username": "mallory",
                "groups": []},
    "eve": {"email": "eve@example.com", "email_verified": False, "preferred_username": "eve"},
}
CLIENT_SECRET_METHOD = "client_secret_post"  # as Auth0's default: the start-up check must find it


def new_key(kid: str | None = None) -> RSAKey:
    key = RSAKey.generate_key(2048, private=True)
    return RSAKey.import_key({**key.as_dict(private=True), "kid": kid or key.thumbprint(), "alg": "RS256",
                              "use": "sig"})


def require_installed() -> None:
    if not INSTALLED.exists():
        raise AssertionError(f"oidc-provider is not installed: run `bash {OIDC_DIR / 'install.sh'}`")


@dataclass
class Provider:
    """A running oidc-provider process."""

    process: subprocess.Popen[str]
    port: int
    control: int
    keys: list[RSAKey]
    workdir: Path

    def disable(self, account: str, disabled: bool = True) -> None:
        action = "disable" if disabled else "enable"
        request = urllib.request.Request(f"http://127.0.0.1:{self.control}/accounts/{account}/{action}", method="POST")
        _opener().open(request, timeout=10).close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def client_for(server_origin: str, client_id: str = "memory-mcp", secret: str = "provider-secret-of-memory-mcp",
               method: str = CLIENT_SECRET_METHOD) -> dict[str, Any]:
    """The server under test as a client of the provider: its fixed callback and logout return."""
    return {"client_id": client_id, "client_secret": secret, "token_endpoint_auth_method": method,
            "redirect_uris": [server_origin + "/login/upstream/callback"],
            "post_logout_redirect_uris": [server_origin + "/logout"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}


def start_provider(workdir: Path, issuer: str, clients: list[dict[str, Any]], *, port: int = 0,
                   keys: list[RSAKey] | None = None, access_token_ttl: int = 3600, node: str = "node") -> Provider:
    """Start the provider for `issuer` (the URL clients and browsers use for it: the gateway's, or
    its own `port`), with `keys` (the first one signs) and `clients` (static: they survive a
    restart of the provider, as registrations at a real one do)."""
    require_installed()
    keys = keys or [new_key()]
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"provider-{time.monotonic_ns()}.json"
    config.write_text(json.dumps({"issuer": issuer, "port": port, "accounts": ACCOUNTS, "clients": clients,
                                  "access_token_ttl": access_token_ttl,
                                  "jwks": {"keys": [k.as_dict(private=True) for k in keys]}}))
    process = subprocess.Popen([node, str(SCRIPT), str(config)], stdout=subprocess.PIPE,
                               stderr=(workdir / "provider.log").open("ab"), stdin=subprocess.DEVNULL, text=True,
                               env={**os.environ, "NODE_ENV": "development"})
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while len(ports) < 2:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError(f"oidc-provider did not start: {(workdir / 'provider.log').read_text()[-2000:]}")
        line = process.stdout.readline() if process.stdout else ""
        name, _, value = line.strip().partition(" ")
        if name in ("PORT", "CONTROL"):
            ports[name] = int(value)
    return Provider(process, ports["PORT"], ports["CONTROL"], keys, workdir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Forged ID tokens: what a compromised network path or a confused provider could hand back.

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims_of(id_token: str) -> dict[str, Any]:
    payload = id_token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def resign(id_token: str, key: RSAKey, change: Callable[[dict[str, Any]], None]) -> str:
    claims = claims_of(id_token)
    change(claims)
    return jws.serialize_compact({"alg": "RS256", "typ": "JWT", "kid": key.kid}, json.dumps(claims), key)


def unsigned(id_token: str) -> str:
    """`alg: none`."""
    return f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{id_token.split('.')[1]}."


def hmac_with_public_key(id_token: str, key: RSAKey) -> str:
    """HS256 keyed with the provider's *public* key: verifiable by anyone who confuses the two."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    signing_input = f"{header}.{id_token.split('.')[1]}".encode()
    public = json.dumps(key.as_dict(private=False), sort_keys=True).encode()
    return f"{signing_input.decode()}.{_b64(hmac.new(public, signing_input, hashlib.sha256).digest())}"


@dataclass
class Recorded:
    method: str
    path: str
    status: int
    form: dict[str, str] = field(default_factory=dict)


class Gateway:
    """The provider's public face on loopback (module docstring): forwards, records, fails on demand."""

    HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
                            "upgrade", "te", "trailer", "proxy-authorization", "proxy-authenticate"})

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.requests: list[Recorded] = []
        # Rewrites the token endpoint's JSON answer (a forged ID token); None forwards it as is.
        self.tamper_token: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.tamper_discovery: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._runner: Any = None
        self._client: Any = None

    async def start(self) -> None:
        import aiohttp
        from aiohttp import web

        self._client = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        """The provider is down: nothing listens on its address any more."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _forward(self, request: Any) -> Any:
        from aiohttp import web
        from multidict import CIMultiDict

        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP_BY_HOP}
        headers["Accept-Encoding"] = "identity"
        url = f"http://127.0.0.1:{self.target_port}{request.rel_url}"
        async with self._client.request(request.method, url, data=body, headers=headers,
                                        allow_redirects=False) as resp:
            data = await resp.read()
            out = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in self.HOP_BY_HOP)
            status = resp.status
        form = {}
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            from urllib.parse import parse_qsl
            form = dict(parse_qsl(body.decode()))
        self.requests.append(Recorded(request.method, request.path, status, form))
        if request.path == "/token" and status == 200 and self.tamper_token is not None:
            data = json.dumps(self.tamper_token(json.loads(data))).encode()
        if request.path.endswith("/openid-configuration") and status == 200 and self.tamper_discovery is not None:
            data = json.dumps(self.tamper_discovery(json.loads(data))).encode()
        return web.Response(body=data, status=status, headers=out)

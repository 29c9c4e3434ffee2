"""HTTP to the upstream provider (aiohttp, on the event loop, never blocking it), and what can go wrong.

Every request has a deadline (`TIMEOUT` for the whole exchange) and a size bound on the answer;
redirects are not followed (every URL comes from the provider's own discovery document, which
names the exact endpoints). Proxies from the environment (`HTTPS_PROXY`, `NO_PROXY`) are honoured:
the provider is an address the operator chose, unlike a client's metadata document (auth.cimd_fetch).

The errors say what the caller should do, never carry a token, and their messages are safe for
logs and error pages:

* `Unavailable`: the provider could not answer now (unreachable, timed out, 5xx, 429). Retryable:
  at our refresh a 503 with Retry-After, never a sign-out.
* `Refused`: the provider answered, and said no (an expired or revoked refresh token, a user
  disabled upstream): at our refresh the grant is revoked.
* `Misconfigured`: the provider refused this server as a client, or its documents contradict the
  settings: the operator must act (named settings in the message).
* `BadResponse`: the answer breaks the protocol (an ID token that does not verify, a missing
  field): nothing is issued.
"""

from __future__ import annotations

import json
import logging

import aiohttp

log = logging.getLogger(__name__)

TIMEOUT = 10.0
MAX_BYTES = 1024 * 1024
USER_AGENT = "memory-mcp (OpenID Connect relying party)"


class UpstreamError(Exception):
    """A sign-in or check through the upstream provider failed; the message says why."""


class Unavailable(UpstreamError):
    pass


class Refused(UpstreamError):
    pass


class Misconfigured(UpstreamError):
    pass


class BadResponse(UpstreamError):
    pass


class Response:
    """A status and the JSON object the provider answered (None when the body was not one)."""

    def __init__(self, status: int, body: dict[str, object] | None) -> None:
        self.status = status
        self.body = body

    def field(self, name: str) -> str | None:
        value = (self.body or {}).get(name)
        return value if isinstance(value, str) else None

    @property
    def error(self) -> str:
        """The RFC 6749 section 5.2 error code, or the HTTP status when there is none."""
        return self.field("error") or f"HTTP {self.status}"


class HTTP:
    """One aiohttp session for every request to the provider, made on first use in the running
    loop (the server's), closed with the app."""

    def __init__(self, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=True,
                cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": USER_AGENT})
        return self._session

    async def request(self, method: str, url: str, what: str, *, data: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None) -> Response:
        """`what` names the request in errors ("the token endpoint"). Raises `Unavailable` when
        there is no usable answer; any answer, error statuses included, is returned."""
        try:
            async with self._client().request(method, url, data=data, allow_redirects=False,
                                              headers={"Accept": "application/json", **(headers or {})}) as resp:
                raw = await resp.content.read(self.max_bytes + 1)
                status = resp.status
        except TimeoutError:
            raise Unavailable(f"{what} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{what} cannot be reached ({type(exc).__name__})") from None
        if len(raw) > self.max_bytes:
            raise BadResponse(f"{what} answered more than {self.max_bytes} bytes")
        if status >= 500 or status == 429:
            raise Unavailable(f"{what} answered HTTP {status}")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return Response(status, body if isinstance(body, dict) else None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

"""The server's configuration: one typed object, validated at start-up.

Sources, later ones winning: defaults < TOML file (`--config` / `MEMORY_MCP_CONFIG`) < environment
(`MEMORY_MCP_<NAME>`) < command-line flags (`--<name>`). A bad value stops the server with a
message naming the setting, where it came from, and what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from auth.rfc8252 import URLError, has_unsafe_characters, split_url
from auth.settings import AuthSettings
from auth.upstream.discovery import check_url
from auth.upstream.http import Misconfigured
from auth.upstream.settings import DEFAULT_SCOPES, RESERVED_PARAMS, AdmissionPolicy, UpstreamSettings
from server.memory.graph import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTITIES, DEFAULT_MAX_OBSERVATIONS, Quota
from server.memory.paging import DEFAULT_MAX_RESULT_BYTES, MIN_MAX_RESULT_BYTES

ENV_PREFIX = "MEMORY_MCP_"
# The authorization server's policy defaults live in AuthSettings; the settings below that share
# a name with one of its fields take their default from there and are passed on by name.
_AUTH: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(AuthSettings)
                         if f.default is not dataclasses.MISSING}


def default_data_dir() -> Path:
    # Not the working directory: the official memory server lost users' data by resolving its
    # file relative to wherever it happened to run.
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "memory-mcp"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one)")
    public_url: str | None = Field(
        None, description="origin clients use to reach the server (issuer and resource); "
        "default http://<host>:<port>; required when host is a wildcard address")
    data_dir: Path = Field(default_factory=default_data_dir, description="where the SQLite file and keys live")
    redis_url: str | None = Field(
        None, description="store everything in this Redis instead of the SQLite file in data_dir: "
        "redis://[[user]:password@]host[:port][/db], rediss:// (TLS) or unix:///path/to/socket[?db=N]; "
        "shared by every instance and worker that uses it")
    allowed_origins: tuple[str, ...] = Field(
        (), description="browser origins allowed to call /mcp and /sse besides the public URL (comma-separated)")
    session_idle_timeout: float = Field(1800, gt=0, description="seconds before an idle MCP session ends")
    max_sessions: int = Field(10_000, gt=0, description="MCP sessions the server holds at most")
    max_sessions_per_user: int = Field(
        100, gt=0, description="MCP sessions one user holds at most; at the cap, a new session ends the user's "
        "least recently used idle session (the same client's first), and is refused only when none is idle")
    event_log_bytes_per_session: int = Field(
        16 * 1024 * 1024, ge=0, description="bytes of undelivered SSE events one MCP session keeps for resumption "
        "(Last-Event-ID), oldest evicted first; 0 keeps none")
    event_log_bytes_per_user: int = Field(
        64 * 1024 * 1024, ge=0, description="bytes of undelivered SSE events all MCP sessions of one user keep, "
        "oldest evicted first")
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="largest accepted MCP request body")
    max_connections: int | None = Field(
        None, gt=0, description="client connections held at most; default: as many as the open-files limit "
        "(ulimit -n) allows, keeping 128 for the server itself, at most 10000")
    header_read_timeout: float = Field(
        15, gt=0, description="seconds a client has to send a request's headers, and that an idle keep-alive "
        "connection stays open")
    body_read_timeout: float = Field(
        30, gt=0, description="seconds a client has to send a request body once its headers arrived (408 beyond)")
    access_token_ttl: int = Field(_AUTH["access_token_ttl"], ge=3600,
                                  description="access-token lifetime in seconds (>= 1 hour)")
    refresh_token_ttl: int = Field(_AUTH["refresh_token_ttl"], ge=3600,
                                   description="refresh-token lifetime in seconds, renewed by each refresh (sliding)")
    refresh_token_max_lifetime: int = Field(
        _AUTH["refresh_token_max_lifetime"], ge=3600,
        description="seconds after a login beyond which its tokens cannot be refreshed "
        "(absolute cap; the user logs in again)")
    registration_rate_limit: int = Field(
        _AUTH["registration_rate_limit"], ge=0,
        description="client registrations (and metadata document fetches) per source address per hour; "
        "0 = unlimited. Behind a reverse proxy every client shares the proxy's address")
    client_id_metadata_documents: bool = Field(
        _AUTH["client_id_metadata_documents"],
        description="accept https URLs as client_id and fetch their Client ID Metadata Documents "
        "(needs outbound HTTPS; Codex and Claude Code switch to it when advertised)")
    memory_max_entities: int = Field(
        DEFAULT_MAX_ENTITIES, ge=0, description="entities one user may store at most; 0 = unlimited")
    memory_max_observations: int = Field(
        DEFAULT_MAX_OBSERVATIONS, ge=0, description="observations one user may store at most; 0 = unlimited")
    memory_max_bytes: int = Field(
        DEFAULT_MAX_BYTES, ge=0, description="bytes of text (UTF-8 of names, types, observations and relations) "
        "one user may store at most; 0 = unlimited")
    memory_max_result_bytes: int = Field(
        DEFAULT_MAX_RESULT_BYTES, ge=0, description="bytes of graph JSON one read_graph, search_nodes or open_nodes "
        "result carries at most; a larger answer is cut at an entity boundary and says so, with a nextCursor to page "
        f"through the rest. 0 = no cap (the official server's behaviour); else at least {MIN_MAX_RESULT_BYTES}")
    max_memories_per_user: int = Field(
        _AUTH["max_memories_per_user"], ge=1, le=1000,
        description="named memories one user may have, the default one included (each has the memory_max_* "
        "quotas, so this bounds one account's storage); creating one more is refused with this setting's name")
    store_busy_timeout: float = Field(
        3.0, gt=0, le=60, description="seconds a write waits for the database lock held by another process "
        "(an admin command, a backup tool) before it is refused with a retryable error (503, Retry-After)")
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = Field(
        (), description="reverse proxies (addresses or networks, comma-separated) whose forwarding header gives "
        "the client's address for login throttling, rate limits and logs; empty = use the socket peer")
    proxy_header: str = Field(
        "X-Forwarded-For", description="the header the trusted proxies write: X-Forwarded-For or Forwarded "
        "(RFC 7239); the other one is ignored")
    local_login: bool = Field(
        True, description="sign-in with a memory-mcp password (accounts of `memory-mcp users add`); false leaves "
        "only the upstream provider")
    upstream_issuer: str | None = Field(
        None, description="sign users in through this OpenID provider (Auth0, Keycloak, Okta, Google, Entra ID ...): "
        "its issuer URL, exactly as its discovery document names it; this server stays the authorization server")
    upstream_client_id: str | None = Field(None, description="this server's client id at the upstream provider")
    upstream_client_secret: str | None = Field(
        None, repr=False, description="this server's client secret at the upstream provider (none: a public client)")
    upstream_client_secret_file: Path | None = Field(
        None, description="a file holding upstream_client_secret (its first line), instead of the value itself")
    upstream_scopes: tuple[str, ...] = Field(
        DEFAULT_SCOPES, description="scopes asked of the upstream provider (space- or comma-separated; openid needed)")
    upstream_authorize_params: dict[str, str] = Field(
        default_factory=dict, description="extra parameters of the upstream authorization request, name=value "
        "comma-separated (Auth0: audience=https://api.example.com; Google: access_type=offline)")
    upstream_identity_claim: str = Field(
        "sub", description="the claim that identifies a user upstream, and links them to their account here")
    upstream_allowed_domains: tuple[str, ...] = Field(
        (), description="admit only users whose verified email is in one of these domains (comma-separated)")
    upstream_allowed_users: tuple[str, ...] = Field(
        (), description="admit only these users: values of the identity claim, or verified emails (comma-separated)")
    upstream_required_claim: str | None = Field(
        None, description="admit only users with this claim, name=value (a list claim must contain the value, "
        "e.g. groups=memory-users)")
    upstream_check: Literal["off", "refresh"] = Field(
        "off", description="refresh: at each token refresh, ask the provider whether the account is still allowed "
        "(keeps its refresh token, encrypted with upstream_token_keys)")
    upstream_token_keys: tuple[str, ...] = Field(
        (), repr=False, description="keys encrypting the kept upstream tokens: 32 random bytes each, base64 "
        "(openssl rand -base64 32), comma-separated; the first encrypts, all decrypt")
    workers: int = Field(
        1, ge=1, le=64, description="server processes accepting connections on the same port: above 1, a "
        "supervisor binds the port and starts that many workers, replacing any that dies")
    log_level: str = Field("info", description="debug, info, warning or error")
    log_format: Literal["text", "json"] = Field(
        "text", description="text (one readable line per record) or json (one JSON object per line), for every "
        "log line, access log included")
    metrics_token: SecretStr | None = Field(
        None, description="serve Prometheus metrics at /metrics to requests that send this bearer token "
        "(Authorization: Bearer ...; at least 16 characters); prefer metrics_token_file")
    metrics_token_file: Path | None = Field(
        None, description="file holding the metrics bearer token (as metrics_token; surrounding whitespace "
        "ignored), so that it need not sit in the environment or on the command line")
    metrics_address: str | None = Field(
        None, description="host:port of a separate listener that serves only /metrics (e.g. 127.0.0.1:9464); "
        "the main port then does not serve it. Without this, metrics_token or metrics_token_file, there are "
        "no metrics")
    # Read from metrics_token_file at validation, so that a missing or bad file stops the start.
    _metrics_bearer: str | None = PrivateAttr(None)
    shutdown_timeout: float = Field(
        10, gt=0, le=40, description="seconds requests in flight at SIGTERM get to finish before their sessions end; "
        "shutdown takes at most about twice this: keep 2 x this under the service manager's stop timeout "
        "(TimeoutStopSec in scripts/memory-mcp.service)")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @field_validator("memory_max_result_bytes")
    @classmethod
    def _result_cap(cls, value: int) -> int:
        if 0 < value < MIN_MAX_RESULT_BYTES:
            raise ValueError(f"must be 0 (no cap) or at least {MIN_MAX_RESULT_BYTES} bytes: a smaller page would be "
                             "mostly its cursor and note")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        # Parsed here rather than by pydantic, for messages that say how to write the value.
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            return value
        networks = []
        for entry in value:
            if not isinstance(entry, str):
                raise ValueError(f"{entry!r} is not an IP address or network written as a string")
            try:
                networks.append(ipaddress.ip_network(entry))
            except ValueError:
                try:
                    network = ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or network (e.g. 10.0.0.1, 10.0.0.0/8, "
                                     "fd00::/8)") from None
                raise ValueError(f"{entry!r} has host bits set; write the network as {network}") from None
        return tuple(networks)

    @field_validator("upstream_scopes", "upstream_allowed_domains", "upstream_allowed_users",
                     "upstream_token_keys", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v for v in value.replace(",", " ").split() if v)
        return value

    @field_validator("upstream_authorize_params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        params = {}
        for pair in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, given = pair.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{pair!r} is not name=value (e.g. audience=https://api.example.com)")
            params[name.strip()] = given.strip()
        return params

    @field_validator("upstream_authorize_params")
    @classmethod
    def _own_params(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(set(value) & RESERVED_PARAMS)
        if reserved:
            raise ValueError(f"{', '.join(reserved)} are set by this server itself (scopes: upstream_scopes)")
        return value

    @field_validator("upstream_issuer")
    @classmethod
    def _issuer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            check_url(value.strip(), "the upstream issuer", plain_http=True)
        except Misconfigured as exc:
            raise ValueError(str(exc).removeprefix("the upstream issuer ")) from None
        if "?" in value:
            raise ValueError("must not have a query")
        return value.strip()

    @field_validator("upstream_required_claim")
    @classmethod
    def _claim(cls, value: str | None) -> str | None:
        if value is not None and (not value.partition("=")[0].strip() or "=" not in value):
            raise ValueError("must be name=value, e.g. groups=memory-users")
        return value

    @field_validator("upstream_token_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for number, key in enumerate(value, 1):
            if len(_key_bytes(key) or b"") != 32:
                # Never the value: it is a secret.
                raise ValueError(f"key {number} is not 32 bytes in base64 (make one with `openssl rand -base64 32`)")
        return value

    @model_validator(mode="after")
    def _upstream(self) -> Settings:
        given = [name for name in type(self).model_fields
                 if name.startswith("upstream_") and name != "upstream_issuer"
                 and getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True)]
        if self.upstream_issuer is None:
            if given:
                raise ValueError(f"{', '.join(given)} need upstream_issuer (the provider to sign in through)")
            if not self.local_login:
                raise ValueError("local_login is off and no upstream_issuer is set: nobody could sign in")
            return self
        if not self.upstream_client_id:
            raise ValueError("upstream_issuer needs upstream_client_id (this server's client id at the provider)")
        if self.upstream_client_secret is not None and self.upstream_client_secret_file is not None:
            raise ValueError("set upstream_client_secret or upstream_client_secret_file, not both")
        self._client_secret()  # a file that cannot be read stops the server now, not at the first sign-in
        if "openid" not in self.upstream_scopes:
            raise ValueError("upstream_scopes must include openid (the ID token says who the user is)")
        if self.upstream_check == "refresh" and not self.upstream_token_keys:
            raise ValueError("upstream_check=refresh keeps the provider's refresh tokens encrypted: set "
                             "upstream_token_keys (one key: `openssl rand -base64 32`)")
        return self

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else SecretStr(valid_metrics_token(value.get_secret_value()))

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, port = split_address(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @model_validator(mode="after")
    def _metrics_secret(self) -> Settings:
        if self.metrics_token is not None and self.metrics_token_file is not None:
            raise ValueError("set metrics_token or metrics_token_file, not both")
        if self.metrics_token_file is not None:
            path = self.metrics_token_file
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise ValueError(f"metrics_token_file {path} cannot be read: {reason.lower()}; make it readable "
                                 "by the server's user") from None
            self._metrics_bearer = valid_metrics_token(text.strip(), f"the token in metrics_token_file {path} ")
        return self

    @field_validator("proxy_header")
    @classmethod
    def _proxy_header(cls, value: str) -> str:
        for header in ("X-Forwarded-For", "Forwarded"):
            if value.lower() == header.lower():
                return header
        raise ValueError("must be X-Forwarded-For or Forwarded, whichever the trusted proxies set")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(canonical_origin(v, "an allowed origin") for v in value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        example = "e.g. redis://127.0.0.1:6379/0, rediss://:password@redis.example:6380/0 or unix:///run/redis.sock"
        try:
            parts = split_url(value)
        except URLError as exc:
            raise ValueError(f"{exc} ({example})") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"must start with redis://, rediss:// or unix:// ({example})")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"a unix:// URL needs the socket's path ({example})")
        elif not parts.hostname:
            raise ValueError(f"needs a host ({example})")
        elif parts.path not in ("", "/") and not parts.path[1:].isdigit():
            raise ValueError(f"the path must be a database number, like /0 ({example})")
        return value

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        return None if value is None else canonical_origin(value, "the public URL")

    @model_validator(mode="after")
    def _lifetimes(self) -> Settings:
        if self.refresh_token_max_lifetime < self.refresh_token_ttl:
            raise ValueError(f"refresh_token_max_lifetime ({self.refresh_token_max_lifetime}) must be at least "
                             f"refresh_token_ttl ({self.refresh_token_ttl})")
        return self

    @model_validator(mode="after")
    def _event_log(self) -> Settings:
        if self.event_log_bytes_per_user < self.event_log_bytes_per_session:
            raise ValueError(f"event_log_bytes_per_user ({self.event_log_bytes_per_user}) must be at least "
                             f"event_log_bytes_per_session ({self.event_log_bytes_per_session}): one session "
                             "could otherwise never use its own allowance")
        return self

    @model_validator(mode="after")
    def _default_public(self) -> Settings:
        if self.public_url is None:
            if _is_wildcard(self.host):
                raise ValueError(f"host {self.host!r} listens on every address, so the public URL cannot be "
                                 "guessed: set public_url (e.g. --public-url https://memory.example.com)")
            host = f"[{self.host}]" if ":" in self.host else self.host
            object.__setattr__(self, "public_url", canonical_origin(f"http://{host}:{self.port}", "the public URL"))
        return self

    @property
    def issuer(self) -> str:
        # The model validator above fills public_url in; only a Settings built around validation
        # (model_construct) can lack it, and that is a programming error worth naming.
        if self.public_url is None:
            raise ValueError("Settings.public_url is unset: build Settings through validation (load() or "
                             "Settings(...)), which derives it from host and port")
        return self.public_url

    @property
    def metrics_bearer(self) -> str | None:
        """The token /metrics requires (from metrics_token or metrics_token_file), or None."""
        if self.metrics_token is not None:
            return self.metrics_token.get_secret_value()
        return self._metrics_bearer

    @property
    def metrics_enabled(self) -> bool:
        """Metrics exist only when asked for: a token, or a listener of their own."""
        return self.metrics_bearer is not None or self.metrics_address is not None

    @property
    def memory_quota(self) -> Quota:
        return Quota(entities=self.memory_max_entities, observations=self.memory_max_observations,
                     bytes=self.memory_max_bytes)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "memory.sqlite3"

    def _client_secret(self) -> str | None:
        path = self.upstream_client_secret_file
        if path is None:
            return self.upstream_client_secret
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"upstream_client_secret_file {path} cannot be read: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        if not lines or not lines[0].strip():
            raise ValueError(f"upstream_client_secret_file {path} is empty")
        return lines[0].strip()

    def upstream_settings(self) -> UpstreamSettings | None:
        """The upstream sign-in's settings (`auth.upstream`), None without an upstream provider."""
        if self.upstream_issuer is None or self.upstream_client_id is None:
            return None
        claim = None
        if self.upstream_required_claim is not None:
            name, _, value = self.upstream_required_claim.partition("=")
            claim = (name.strip(), value.strip())
        return UpstreamSettings(
            issuer=self.upstream_issuer, client_id=self.upstream_client_id,
            client_secret=self._client_secret(), scopes=self.upstream_scopes,
            authorize_params=tuple(self.upstream_authorize_params.items()),
            identity_claim=self.upstream_identity_claim,
            policy=AdmissionPolicy(domains=self.upstream_allowed_domains, users=self.upstream_allowed_users,
                                   required_claim=claim),
            check=self.upstream_check, token_keys=tuple(_key_bytes(k) or b"" for k in self.upstream_token_keys))

    def auth_settings(self) -> AuthSettings:
        """The authorization server's settings: every field of AuthSettings that is also a
        setting here, by name (so a new shared setting needs no wiring), the rest its defaults."""
        shared = {f.name for f in dataclasses.fields(AuthSettings)} & set(type(self).model_fields)
        return AuthSettings(issuer=self.issuer, **{name: getattr(self, name) for name in shared})


def _key_bytes(key: str) -> bytes | None:
    """A key written in base64, standard or URL-safe, padded or not."""
    try:
        return base64.b64decode(key.replace("-", "+").replace("_", "/") + "=" * (-len(key) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


METRICS_TOKEN_MIN = 16
_TOKEN_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def valid_metrics_token(token: str, where: str = "") -> str:
    """A bearer token as RFC 6750 writes one, long enough not to be guessed. The message never
    contains the token."""
    if len(token) < METRICS_TOKEN_MIN:
        raise ValueError(f"{where}must be at least {METRICS_TOKEN_MIN} characters (e.g. the output of "
                         "`openssl rand -hex 32`)")
    if not set(token) <= _TOKEN_CHARACTERS:
        raise ValueError(f"{where}may contain only letters, digits and -._~+/= (e.g. the output of "
                         "`openssl rand -hex 32`)")
    return token


def split_address(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` as (host, port); ValueError with what to write otherwise."""
    example = "write host:port, e.g. 127.0.0.1:9464 or [::1]:9464"
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(example)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address; {example}") from None
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets; {example}")
    if has_unsafe_characters(host):
        raise ValueError(example)
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0-65535); {example}")
    return host, port


def canonical_origin(url: str, what: str) -> str:
    """scheme://host[:port] in the form clients compare byte for byte: lowercase scheme and host,
    no default port, no path, no trailing slash (docs/protocol.md#A2)."""
    url = url.strip()
    try:
        parts = split_url(url)
    except URLError as exc:
        raise ValueError(f"{what} {url!r} must not contain whitespace or control characters" if exc.unsafe
                         else f"{what} {url!r} is not a valid URL (check the port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {url!r} must look like https://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{what} {url!r} must be an origin only (no path, query, fragment or user info)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, Settings.model_fields, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"not a setting of memory-mcp; {hint}`memory-mcp serve --help` lists them all"


# Settings whose values may hold a secret: an error names them, never their value.
_SECRET_SETTINGS = frozenset({"redis_url", "upstream_client_secret", "upstream_token_keys", "metrics_token"})


class ConfigError(Exception):
    """A setting is invalid; the message says which, where it came from and what to do."""


def load(flags: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Merge file, environment and flags (flags given as field name -> value, None = not given)."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    config_path = flags.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_path} is not valid TOML: {exc}") from exc
        for key, value in data.items():
            values[key.replace("-", "_")] = value
            origin[key.replace("-", "_")] = f"config file {config_path}"
    for env_name, value in environ.items():
        if env_name.startswith(ENV_PREFIX) and env_name != ENV_PREFIX + "CONFIG":
            # Unknown names go in too, so that a misspelled variable is refused like a misspelled
            # config key instead of being silently ignored.
            name = env_name.removeprefix(ENV_PREFIX).lower()
            values[name] = value
            origin[name] = f"environment variable {env_name}"
    for name, value in flags.items():
        if value is not None:
            values[name] = value
            origin[name] = f"flag --{name.replace('_', '-')}"
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            source = origin.get(field.split(".")[0], "the defaults")
            # Never echoed: a Redis URL may carry its password.
            given = f"={values[field]!r}" if field in values and field not in _SECRET_SETTINGS else ""
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                # No value: a misspelled name may hold a secret.
                given, message = "", _unknown(field)
            problems.append(f"{field}{given} (from {source}): {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None

"""Prometheus metrics at `/metrics`: the one module that knows `prometheus_client`.

Off unless asked for (`metrics_token`, `metrics_token_file` or `metrics_address`): then
`build_app` creates one `Metrics` and wires it here, and nothing is measured otherwise.

* Where it is served: with `metrics_address`, on a listener of its own that serves nothing else
  (the main port answers 404 for /metrics); else on the main port. Either way, with a token set,
  only to requests that send it (`Authorization: Bearer ...`, compared in constant time); 401
  otherwise.
* What is measured, and where:
  - HTTP requests and their latency by endpoint (the route as declared, never the path as sent),
    method and status: `request_observer`, which the request middleware (`server.logs.request_ids`)
    calls once per request.
  - Live MCP sessions by transport, state and protocol version, counted from the session registry
    at each scrape (`SessionsCollector`): nothing on the request path. MCP requests by the
    protocol version they announce (`MCP-Protocol-Version`; the 2026-07-28 era has no sessions
    to count).
  - Refused authentication (`auth_failures`): bearer tokens (counted in server/app.py where the
    MCP endpoints authenticate), logins and token-endpoint errors (from the authorization server's
    `AuthEvent`s, `observe_auth`); tokens issued, refreshed and revoked; replays detected.
  - Store calls: latency by operation and `StorageUnavailable` by reason, measured by wrapping
    the storage object's methods once where it is created (`instrument`), whatever the backend.
  - The process (CPU, memory, open files) and Python's garbage collector.
* Cardinality: every label value comes from a fixed set (routes, methods, status codes, protocol
  versions, error codes, operation names, reasons); never a user, client, session, token or path.

With several workers (`serve --workers N`, server/supervisor.py) each worker counts its own and a
scrape, which reaches one of them, must still see them all: each worker also serves its own
metrics on a Unix socket in the supervisor's private directory (`Workers`), and the worker that
is scraped asks the others there and answers with every worker's series, each labelled
`worker="<slot>"` (a replaced worker's counters start again from zero under the same slot, which
Prometheus reads as a counter reset). A worker that does not answer within `PEER_TIMEOUT` (being
replaced) is left out of that scrape, and `memory_mcp_workers_scraped` says how many answered.

The request middleware is on the path of every tools/call: one perf_counter pair, a dict lookup
for the label child (made once per route, method and status) and one histogram observation (its
`_count` is the request count: no separate counter), plus a counter on /mcp; about 2.5 µs in all
(the figures are in docs/performance.md, "Operations overhead").
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
import ipaddress
import logging
import socket
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from itertools import accumulate
from typing import ParamSpec, TypeVar

import aiohttp
import prometheus_client
from aiohttp import web
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from auth.server import AuthEvent
from server.config import split_address
from server.storage import StorageUnavailable
from transports.registry import Session

log = logging.getLogger(__name__)

PREFIX = "memory_mcp_"
PATH = "/metrics"
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 3.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
VERSIONS = frozenset({*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS})
VERSION_HEADER = "MCP-Protocol-Version"
MCP_PATHS = frozenset({"/mcp", "/mcp/"})
PEER_TIMEOUT = 2.0
"""How long a scraped worker waits for each other worker's metrics."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
P = ParamSpec("P")
T = TypeVar("T")


def _version(value: str | None) -> str:
    if value is None:
        return "none"
    return value if value in VERSIONS else "unsupported"


class SessionsCollector(Collector):
    """`memory_mcp_sessions`: the live sessions, counted when scraped."""

    def __init__(self, sessions: Callable[[], Iterable[Session]]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(PREFIX + "sessions", "Live MCP sessions, by transport, state and negotiated "
                                   "protocol version", labels=("transport", "state", "protocol_version"))
        tally = Tally((s.kind, s.state.value, _version(s.protocol_version)) for s in self._sessions())
        for labels, count in sorted(tally.items()):
            family.add_metric(labels, count)
        yield family


class Counter:
    """A counter family: label values -> count. Only ever changed on the event loop, so a plain
    dict; `prometheus_client`'s own instruments take a lock for every increment, which on the
    request path costs several times what is counted here."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + 1

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, count in sorted(self.values.items()):
            family.add_metric(labels, count)
        return family


class Histogram:
    """A histogram family. `child(labels)` is the list one series counts into: one slot per
    bucket (not cumulative; the last is +Inf), then the sum; `observe` is a bisection and two
    additions."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels, self.bounds = name, documentation, labels, buckets
        self.series: dict[tuple[str, ...], list[float]] = {}

    def child(self, *labels: str) -> list[float]:
        found = self.series.get(labels)
        if found is None:
            found = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        return found

    def observe(self, child: list[float], value: float) -> None:
        child[bisect_left(self.bounds, value)] += 1
        child[-1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]  # type: ignore[no-untyped-call]
        for labels, child in sorted(self.series.items()):
            family.add_metric(labels, list(zip(edges, accumulate(child[:-1]), strict=True)), child[-1])
        return family


@dataclass(frozen=True, slots=True)
class Workers:
    """Where this worker stands among its supervisor's: its slot (1..count) and the private
    directory (0700, the supervisor's) holding each worker's metrics socket."""

    slot: int
    count: int
    directory: str

    def socket_path(self, slot: int) -> str:
        return f"{self.directory}/metrics-{slot}.sock"


class _Families(Collector):
    """Families already collected, for the exposition code."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _labelled(families: Iterable[Metric], worker: str, into: dict[str, Metric]) -> None:
    """Add every sample of `families` to `into` (one family per name), labelled with `worker`."""
    for family in families:
        merged = into.get(family.name)
        if merged is None:
            merged = into[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        merged.samples.extend(sample._replace(labels={**sample.labels, "worker": worker})
                              for sample in family.samples)


class Metrics(Collector):
    """Every instrument, in a registry of this app's own (several apps may share a process:
    tests, benchmarks). The instruments are read when scraped (`collect`)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        self.http_duration = Histogram(
            PREFIX + "http_request_duration_seconds", "Time to answer an HTTP request (a stream: its whole life), "
            "by endpoint (route), method and status; its _count is the number of requests",
            ("endpoint", "method", "status"), HTTP_BUCKETS)
        self.mcp_requests = Counter(
            PREFIX + "mcp_requests", "Requests to /mcp by the protocol version they announce "
            "(MCP-Protocol-Version; none before a session's first answer)", ("protocol_version",))
        self.auth_failures = Counter(
            PREFIX + "auth_failures", "Refused authentication: kind bearer (reason missing, malformed, "
            "invalid_or_expired, wrong_resource, insufficient_scope), login (failed, throttled, busy), token "
            "(the OAuth error code)", ("kind", "reason"))
        self.tokens = Counter(
            PREFIX + "tokens", "Token events: issued (authorization code), refreshed, revoked (at /revoke)",
            ("event",))
        self.replays = Counter(
            PREFIX + "token_replays", "A used authorization code or a superseded refresh token presented again "
            "(its grant is revoked)", ("grant_type",))
        self.store_duration = Histogram(
            PREFIX + "store_call_duration_seconds", "Time of a storage call, by operation", ("operation",),
            STORE_BUCKETS)
        self.store_unavailable = Counter(
            PREFIX + "store_unavailable", "Storage calls refused as unavailable (retryable), by reason", ("reason",))
        self._instruments: list[Counter | Histogram] = [
            self.http_duration, self.mcp_requests, self.auth_failures, self.tokens, self.replays,
            self.store_duration, self.store_unavailable]
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for instrument in self._instruments:
            yield instrument.family()

    def watch_sessions(self, sessions: Callable[[], Iterable[Session]]) -> None:
        self.registry.register(SessionsCollector(sessions))

    # -- HTTP ----------------------------------------------------------------------------------

    def request_observer(self) -> Callable[[web.Request, int, float], None]:
        """What the request middleware (`server.logs.request_ids`) calls once a request is
        answered: its status and seconds."""
        children: dict[tuple[object, str, int], tuple[list[float], bool]] = {}
        duration, mcp_requests = self.http_duration, self.mcp_requests

        def observe(request: web.Request, status: int, seconds: float) -> None:
            # Keyed by the route's resource object itself: the label values are worked out once.
            resource = request.match_info.route.resource
            method = request.method if request.method in METHODS else "other"
            key = (resource, method, status)
            found = children.get(key)
            if found is None:
                endpoint = resource.canonical if resource is not None else "unmatched"
                found = children[key] = (duration.child(endpoint, method, str(status)), endpoint in MCP_PATHS)
            duration.observe(found[0], seconds)
            if found[1]:
                mcp_requests.inc(_version(request.headers.get(VERSION_HEADER)))

        return observe

    # -- auth ----------------------------------------------------------------------------------

    def bearer_refused(self, reason: str) -> None:
        self.auth_failures.inc("bearer", reason)

    def observe_auth(self, event: AuthEvent, detail: str) -> None:
        if event is AuthEvent.LOGIN_REFUSED:
            self.auth_failures.inc("login", detail)
        elif event is AuthEvent.TOKEN_ERROR:
            self.auth_failures.inc("token", detail)
        elif event is AuthEvent.TOKEN_ISSUED:
            self.tokens.inc("refreshed" if detail == "refresh_token" else "issued")
        elif event is AuthEvent.TOKEN_REVOKED:
            self.tokens.inc("revoked")
        elif event is AuthEvent.REPLAY_DETECTED:
            self.replays.inc(detail)

    # -- storage -------------------------------------------------------------------------------

    def instrument(self, store: object, protocol: type, prefix: str = "") -> None:
        """Time every coroutine method that `protocol` declares (`close` aside) on this `store`
        object, whatever its class: each is replaced on the instance by a timed one, so that every
        caller, holding the object from before or after, is measured."""
        names = {name for cls in protocol.__mro__ for name, value in vars(cls).items()
                 if inspect.iscoroutinefunction(value) and not name.startswith("_") and name != "close"}
        for name in sorted(names):
            setattr(store, name, self._timed(prefix + name, getattr(store, name)))

    def _timed(self, operation: str, method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        durations, unavailable = self.store_duration, self.store_unavailable
        observe = durations.observe
        clock = time.perf_counter
        # The series is made at the first call: an operation never used shows none.
        series: list[list[float]] = []

        @functools.wraps(method)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            start = clock()
            try:
                return await method(*args, **kwargs)
            except StorageUnavailable as exc:
                unavailable.inc(exc.reason)
                raise
            finally:
                if not series:
                    series.append(durations.child(operation))
                observe(series[0], clock() - start)

        return timed

    # -- exposition ----------------------------------------------------------------------------

    def handler(self, token: str | None, workers: Workers | None = None) -> Handler:
        """/metrics; with a `token`, only for requests that send it as their bearer token; with
        `workers`, every worker's series (the module's docstring says how)."""
        expose = make_aiohttp_handler(self.registry) if workers is None else self._gathering(workers)
        if token is None:
            return expose
        wanted = sha256(token.encode()).digest()

        async def guarded(request: web.Request) -> web.StreamResponse:
            scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
            # Hashes of equal length, compared in constant time: neither the token nor its length
            # leaks through timing.
            if scheme.lower() != "bearer" or not hmac.compare_digest(sha256(sent.strip().encode()).digest(), wanted):
                return web.json_response({"error": "invalid_token", "error_description":
                                          "/metrics needs the metrics token (Authorization: Bearer ...)"},
                                         status=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"',
                                                              "Cache-Control": "no-store"})
            return await expose(request)

        return guarded


    def _gathering(self, workers: Workers) -> Handler:
        async def fetch(slot: int) -> str | None:
            connector = aiohttp.UnixConnector(path=workers.socket_path(slot))
            try:
                async with aiohttp.ClientSession(connector=connector,
                                                 timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT)) as client:
                    async with client.get("http://worker" + PATH) as response:
                        if response.status == 200:
                            return await response.text()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("no metrics from worker %d: %s", slot, exc)
            return None

        async def gather(request: web.Request) -> web.StreamResponse:
            others = [slot for slot in range(1, workers.count + 1) if slot != workers.slot]
            texts = await asyncio.gather(*(fetch(slot) for slot in others))
            families: dict[str, Metric] = {}
            _labelled(self.registry.collect(), str(workers.slot), families)
            answered = 1
            for slot, text in zip(others, texts, strict=True):
                if text is None:
                    continue
                try:
                    _labelled(text_string_to_metric_families(text), str(slot), families)
                except ValueError as exc:  # a worker of another version, mid-upgrade
                    log.warning("worker %d's metrics cannot be read: %s", slot, exc)
                    continue
                answered += 1
            scraped = GaugeMetricFamily(PREFIX + "workers_scraped", "Workers whose metrics this scrape holds "
                                        "(of the workers setting: the others did not answer in time)")
            scraped.add_metric((), answered)
            return await make_aiohttp_handler(_Families([*families.values(), scraped]))(request)

        return gather


def worker_app(metrics: Metrics) -> web.Application:
    """What a worker serves on its own Unix socket for the others: its own metrics, unlabelled."""
    app = web.Application()
    app.router.add_get(PATH, make_aiohttp_handler(metrics.registry))
    return app


async def serve_worker(app: web.Application, path: str) -> Callable[[], Awaitable[None]]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # A socket left by the worker this one replaces is removed first (asyncio does it).
    await web.UnixSite(runner, path).start()
    return runner.cleanup


class MetricsListenError(Exception):
    """`metrics_address` cannot be listened on; the message says why and what to do."""


def listen(address: str, *, protected: bool) -> socket.socket:
    """The listening socket of `metrics_address`, bound now so that a busy port stops the start
    with a clear message (before anything says "serving"). `protected`: a token is required."""
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, *_, where = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, IndexError) as exc:
        raise MetricsListenError(f"cannot listen on metrics_address {address}: {exc}; set it to an address of "
                                 "this machine, e.g. 127.0.0.1:9464") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(where)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise MetricsListenError(f"cannot listen on metrics_address {address}: {(exc.strerror or str(exc)).lower()}; "
                                 "choose another port or address (metrics_address)") from None
    if not protected and not _loopback(sock.getsockname()[0]):
        log.warning("metrics are served on %s, which is not a loopback address: keep that port away from the "
                    "internet, or set metrics_token too", address)
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_app(metrics: Metrics, token: str | None, workers: Workers | None = None) -> web.Application:
    """The metrics listener's own app: /metrics and nothing else."""
    app = web.Application()
    app.router.add_get(PATH, metrics.handler(token, workers))
    return app


async def serve(app: web.Application, sock: socket.socket) -> Callable[[], Awaitable[None]]:
    """Start serving `app` on `sock`; returns how to stop."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner.cleanup

"""Login throttling: exponential backoff per account, a failure budget per source address.

Per account (the username as submitted, whether or not it exists): failures form a run until a
pause of `QUIET` seconds without one. The first `FREE_FAILURES` of a run cost nothing; after that
each attempt must wait `BASE_DELAY * 2 ** (run - FREE_FAILURES)` seconds after the last failure:
30 s, 1, 2, 4, 8 minutes, then `MAX_DELAY` (15 minutes) for as long as the run goes on. A run, not
a sliding window: with a 15-minute window the early failures would age out while the attacker
waits, and the backoff would fall back to free guesses instead of staying at its cap. `QUIET`
exceeds `MAX_DELAY`, so only a real pause (or a success) starts over. A refused attempt is neither
verified nor counted, so hammering an account cannot stretch the wait: the worst a legitimate
user meets is the current backoff (15 minutes at most), never an open-ended lockout. A successful
login clears the account's failures.

Per address: `ADDRESS_FAILURES` failures within `WINDOW`, then refused until the oldest ages out.
Successes do not clear it (whoever owns an account could otherwise reset their budget between
guesses at other accounts). IPv6 addresses count per /64, what one subscriber usually gets.

No enumeration: the key is the submitted name, so an unknown user is throttled exactly like a
known one, and the refusal is decided before any lookup or argon2 work, so it is equally fast.

Races: the account attempt is counted *before* the password is verified (and cleared again on
success), so concurrent guesses cannot all slip through one check while argon2 runs. The address
failure is counted after verification: counting successes too would eat the budget of a busy NAT,
so a burst of concurrent attempts can overshoot it by the executor's width, once per window.
"""

from __future__ import annotations

import ipaddress
import math

from auth.crypto import hash_secret
from auth.ratelimit import RateLimiter

WINDOW = 15 * 60
FREE_FAILURES = 5
BASE_DELAY = 30
MAX_DELAY = 15 * 60
QUIET = 2 * MAX_DELAY
# How long the limiter keeps an account's failures; bounds the list, which the backoff keeps short.
MEMORY = 24 * 3600
ADDRESS_FAILURES = 20
# More than enough to reach MAX_DELAY; `hit` needs a limit, and the backoff is decided here.
_UNLIMITED = 1_000_000


def _account_key(username: str) -> str:
    # Hashed: the key stays short and holds no attacker-chosen characters.
    return "login-user:" + hash_secret(username)


def _address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "login-addr:" + address[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return "login-addr:" + str(ipaddress.IPv6Network((ip, 64), strict=False))
    return "login-addr:" + str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)


def run_length(ages: list[float]) -> int:
    """Failures in the current run: newest first, until a gap longer than `QUIET`."""
    run, previous = 0, 0.0
    for age in ages:
        if age - previous > QUIET:
            break
        run, previous = run + 1, age
    return run


def backoff(failures: int) -> float:
    """Seconds an account must wait after its last failure, given its failures in the window."""
    if failures < FREE_FAILURES:
        return 0.0
    return float(min(MAX_DELAY, BASE_DELAY * 2 ** min(failures - FREE_FAILURES, 16)))


async def begin(limiter: RateLimiter, username: str, address: str) -> int | None:
    """Check both limits before a login attempt. None: go ahead (the attempt is now counted
    against the account); otherwise the whole seconds to wait, for `Retry-After`."""
    waits: list[float] = []
    account = await limiter.recent(_account_key(username), MEMORY)
    if account:
        waits.append(backoff(run_length(account)) - account[0])
    by_address = await limiter.recent(_address_key(address), WINDOW)
    if len(by_address) >= ADDRESS_FAILURES:
        waits.append(WINDOW - by_address[ADDRESS_FAILURES - 1])
    wait = max(waits, default=0.0)
    if wait > 0:
        return max(1, math.ceil(wait))
    await limiter.hit(_account_key(username), _UNLIMITED, MEMORY)
    return None


async def failed(limiter: RateLimiter, address: str) -> None:
    """The attempt `begin` let through failed (its account count stays)."""
    await limiter.hit(_address_key(address), _UNLIMITED, WINDOW)


async def succeeded(limiter: RateLimiter, username: str) -> None:
    await limiter.reset(_account_key(username))

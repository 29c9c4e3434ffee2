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

Races: both counts are taken before the password is verified, in one atomic step with the check
(`RateLimiter.admit`), so concurrent guesses cannot all slip through one check while argon2 runs:
at most `ADDRESS_FAILURES` attempts per address are ever verified per window. A success then
clears the account and gives the address its attempt back (counting successes would eat the
budget of a busy NAT); so does an attempt that was never verified (the hashing queue was full).

The address is the client's as `auth.http.client_address` resolves it (behind a trusted reverse
proxy, the forwarded one). `memory-mcp throttle list|clear` shows and lifts these limits.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from auth.crypto import hash_secret
from auth.ratelimit import Ages, RateLimiter

WINDOW = 15 * 60
FREE_FAILURES = 5
BASE_DELAY = 30
MAX_DELAY = 15 * 60
QUIET = 2 * MAX_DELAY
# How long the limiter keeps an account's failures; bounds the list, which the backoff keeps short.
MEMORY = 24 * 3600
ADDRESS_FAILURES = 20

ACCOUNT_PREFIX = "login-user:"
ADDRESS_PREFIX = "login-addr:"


def account_key(username: str) -> str:
    # Hashed: the key stays short and holds no attacker-chosen characters (nor a password typed
    # into the username field by mistake).
    return ACCOUNT_PREFIX + hash_secret(username)


def address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ADDRESS_PREFIX + address[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return ADDRESS_PREFIX + str(ipaddress.IPv6Network((ip, 64), strict=False))
    return ADDRESS_PREFIX + str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)


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


def account_wait(ages: Ages) -> float:
    """Seconds an account must still wait, given its counted attempts (newest first)."""
    return backoff(run_length(ages)) - ages[0] if ages else 0.0


def address_wait(ages: Ages) -> float:
    return WINDOW - ages[ADDRESS_FAILURES - 1] if len(ages) >= ADDRESS_FAILURES else 0.0


def _policy(found: Sequence[Ages]) -> float:
    account, by_address = found
    return max(account_wait(account), address_wait(by_address))


async def begin(limiter: RateLimiter, username: str, address: str) -> int | None:
    """Check both limits before a login attempt. None: go ahead (the attempt is now counted
    against the account and the address); otherwise the whole seconds to wait, for `Retry-After`."""
    return await limiter.admit([(account_key(username), MEMORY), (address_key(address), WINDOW)], _policy)


async def succeeded(limiter: RateLimiter, username: str, address: str) -> None:
    await limiter.reset(account_key(username))
    await limiter.forget_latest(address_key(address))


async def not_attempted(limiter: RateLimiter, username: str, address: str) -> None:
    """The attempt `begin` let through was not verified after all (no capacity to hash it)."""
    await limiter.forget_latest(account_key(username))
    await limiter.forget_latest(address_key(address))

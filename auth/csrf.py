"""CSRF tokens for every form that changes state (synchronizer token pattern): login, consent,
logout, and withdrawing a remembered approval on /consents. The GET forms (the consent page's
"Not you? Sign out") only lead to a page that asks again with a POST.

The token lives in the encrypted session cookie and in the form; a POST must carry both, equal.
A fresh login starts a new session and so a new token. SameSite=Lax on the cookie already keeps
cross-site POSTs from carrying it; the token covers same-site attackers and old browsers. Login
is protected too: a forged login would connect the victim's MCP client to the attacker's memory.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from auth.crypto import new_secret, same

FIELD = "csrf_token"
_KEY = "csrf"


def token(session: MutableMapping[str, Any]) -> str:
    value = session.get(_KEY)
    if not isinstance(value, str):
        value = new_secret()
        session[_KEY] = value
    return value


def valid(session: MutableMapping[str, Any], submitted: str | None) -> bool:
    expected = session.get(_KEY)
    return isinstance(expected, str) and bool(submitted) and same(expected, submitted or "")

"""How a session owner (an `auth.models.Principal`) is written into session records.

The label is "<subject> <client_id>" for a session on the user's default memory (exactly what it
was before named memories existed, so that stored sessions keep matching their owners) and
"<subject> <client_id> <memory id>" for one on another memory (`auth.memories`). None of the three
contains a space: subjects and memory ids are random tokens, a client id is random (dynamic
registration), "pat:<id>" or an https URL.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple

from auth.models import Principal


class Owner(NamedTuple):
    subject: str
    client_id: str
    memory: str
    """The memory id; the subject for the default memory."""


def owner_label(owner: Hashable) -> str:
    """Subject, client id and (unless it is the default one) memory id; the issuer is this
    server's, the same for every session, so it need not be stored."""
    # The registry is generic over its owner type; this server only ever gives it Principals.
    if not isinstance(owner, Principal):
        raise TypeError(f"a session owner must be an auth.models.Principal, not {type(owner).__name__}")
    if owner.memory == owner.subject:
        return f"{owner.subject} {owner.client_id}"
    return f"{owner.subject} {owner.client_id} {owner.memory}"


def parse_owner(label: str) -> Owner:
    """Subject, client id and memory id of a stored owner label (one without a memory, written
    before named memories existed or for the default memory, is on the default memory)."""
    subject, _, rest = label.partition(" ")
    client_id, _, memory = rest.partition(" ")
    return Owner(subject, client_id, memory or subject)


def parse_owner_label(label: str) -> tuple[str, str]:
    """(subject, client_id) of a stored owner label."""
    owner = parse_owner(label)
    return owner.subject, owner.client_id

"""How a session owner (an `auth.models.Principal`) is written into session records."""

from __future__ import annotations

from collections.abc import Hashable

from auth.models import Principal


def owner_label(owner: Hashable) -> str:
    """Subject and client id: neither contains a space, and the issuer is this server's, the
    same for every session, so it need not be stored."""
    # The registry is generic over its owner type; this server only ever gives it Principals.
    if not isinstance(owner, Principal):
        raise TypeError(f"a session owner must be an auth.models.Principal, not {type(owner).__name__}")
    return f"{owner.subject} {owner.client_id}"


def parse_owner_label(label: str) -> tuple[str, str]:
    """(subject, client_id) of a stored owner label."""
    subject, _, client_id = label.partition(" ")
    return subject, client_id

"""The server's own secret: one key file in the data directory.

It encrypts the browser-session cookie, the sealed pending authorizations, and the ID-token
signing keys at rest (each under a key derived for that purpose). Generated on first start, so
nobody has to invent a secret to run the server; kept across restarts, so logins survive them.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

KEY_FILE = "session.key"


def cookie_key(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = _create(path)
    if len(key) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes; delete it to generate a new one "
                         "(browser logins will end)")
    return key


def _create(path: Path) -> bytes:
    """A new key, written whole under another name and then linked into place: several processes
    starting at once on a new data directory (workers, instances) all end up with the one key that
    was linked first, and none reads a file still being written."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{KEY_FILE}-")
    try:
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes()
        return key
    finally:
        os.unlink(temporary)

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
        key = _create(data_dir, path)
    if len(key) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes; delete it to generate a new one "
                         "(browser logins will end)")
    return key


def _create(data_dir: Path, path: Path) -> bytes:
    """A new key, written whole under a temporary name and then linked into place: of several
    processes starting at once one wins and the others read its key, and none ever reads a file
    still being written."""
    key = secrets.token_bytes(32)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=f".{KEY_FILE}-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes()
    finally:
        os.unlink(temporary)
    return key

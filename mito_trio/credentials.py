"""The cached user-token file (PROTOCOL.md §3.1): `username:token` lines.

Better than the original: the file is replaced atomically and is only ever readable by its
owner (0600, in a 0700 directory when we create it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import attrs


@attrs.frozen(repr=False)
class Credential:
    """A cached user token."""

    username: str
    token: str

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, token=<hidden>)"


def _entries(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def read_credential(path: Path, user: str | None) -> Credential | None:
    """The cached token for `user`, or for the file's first entry when no user is given."""
    for line in _entries(path):
        if user is not None and not line.startswith(f"{user}:"):
            continue
        username, sep, token = line.partition(":")
        if not sep:
            return None
        return Credential(username, token)
    return None


def store_credential(path: Path, credential: Credential) -> None:
    """Replace (or add) the entry of `credential.username`, atomically, with mode 0600."""
    entry = f"{credential.username}:{credential.token}"
    lines = _entries(path)
    prefix = f"{credential.username}:"
    if any(line.startswith(prefix) for line in lines):
        lines = [entry if line.startswith(prefix) else line for line in lines]
    else:
        lines.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600 already; chmod again in case of an odd umask policy.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write("\n".join(lines))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise

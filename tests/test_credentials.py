"""The cached user-token file (PROTOCOL.md §3.1; §13.19 for what we do better)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mito_trio import credentials
from mito_trio.credentials import Credential, read_credential, store_credential


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- reading ------------------------------------------------------------------------------


def test_missing_file_means_no_credential(tmp_path: Path) -> None:
    assert read_credential(tmp_path / "nope", "alice") is None
    assert read_credential(tmp_path / "nope", None) is None


def test_first_line_starting_with_the_user(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("bob:tb\nalice:ta1\nalice:ta2")
    assert read_credential(path, "alice") == Credential("alice", "ta1")
    assert read_credential(path, "bob") == Credential("bob", "tb")


def test_user_prefix_must_end_at_the_colon(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("alice2:other\nal:short")
    assert read_credential(path, "alice") is None
    assert read_credential(path, "al") == Credential("al", "short")


def test_first_line_when_no_user(tmp_path: Path) -> None:
    """As in the original (§3.1): without a configured user, whatever user line 1 names."""
    path = tmp_path / "credentials"
    path.write_text("bob:tb\nalice:ta")
    assert read_credential(path, None) == Credential("bob", "tb")


def test_token_split_at_the_first_colon(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("alice:abc:def")
    assert read_credential(path, "alice") == Credential("alice", "abc:def")


def test_line_without_colon_means_no_credential(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("garbage\nalice:ta")
    assert read_credential(path, None) is None


def test_no_matching_line(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("bob:tb")
    assert read_credential(path, "alice") is None


def test_unreadable_bytes_mean_no_credential(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_bytes(b"alice:\xff\xfe")
    assert read_credential(path, "alice") is None


def test_repr_hides_the_token() -> None:
    assert "s3cret" not in repr(Credential("alice", "s3cret"))


# --- storing ------------------------------------------------------------------------------


def test_store_creates_file_and_parents_owner_only(tmp_path: Path) -> None:
    """Better than the original (§13.19): 0600 file, 0700 directory we create."""
    path = tmp_path / "a" / "b" / "credentials"
    store_credential(path, Credential("alice", "t1"))
    assert path.read_text() == "alice:t1"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


def test_store_replaces_every_line_of_the_user_and_keeps_others(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("bob:tb\nalice:old1\ncarol:tc\nalice:old2")
    store_credential(path, Credential("alice", "new"))
    # Lines joined by \n, no trailing newline, order kept (§3.1).
    assert path.read_text() == "bob:tb\nalice:new\ncarol:tc\nalice:new"
    assert read_credential(path, "alice") == Credential("alice", "new")


def test_store_appends_when_user_absent(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("bob:tb")
    store_credential(path, Credential("alice", "ta"))
    assert path.read_text() == "bob:tb\nalice:ta"


def test_store_does_not_touch_a_user_sharing_the_prefix(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("alice2:keep")
    store_credential(path, Credential("alice", "ta"))
    assert path.read_text() == "alice2:keep\nalice:ta"


def test_store_tightens_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("bob:tb")
    path.chmod(0o644)
    store_credential(path, Credential("alice", "ta"))
    assert mode(path) == 0o600


def test_store_replaces_the_file_atomically(tmp_path: Path) -> None:
    """A new inode is renamed over the old one: readers see the old or the new file."""
    path = tmp_path / "credentials"
    path.write_text("bob:tb")
    before = path.stat().st_ino
    store_credential(path, Credential("alice", "ta"))
    assert path.stat().st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials"]


def test_failed_store_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials"
    path.write_text("bob:tb")

    def broken_replace(src: str, dst: os.PathLike[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(credentials.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store_credential(path, Credential("alice", "ta"))
    assert path.read_text() == "bob:tb"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials"]


def test_store_then_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    store_credential(path, Credential("alice", "ta"))
    store_credential(path, Credential("bob", "tb"))
    assert read_credential(path, None) == Credential("alice", "ta")
    assert read_credential(path, "bob") == Credential("bob", "tb")

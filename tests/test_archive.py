"""Artifact archives: layout, safety against hostile trees, and cancellation."""

from __future__ import annotations

import gzip
import logging
import os
import socket
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trio

from mito_trio import archive
from mito_trio.archive import (
    CHUNK_SIZE,
    ArchiveCancelled,
    build_dir_archive,
    build_std_archive,
    dir_has_entries,
    write_dir_archive,
    write_std_archive,
)

SECRET = b"TOP-SECRET-7f3a9c-do-not-upload"


def read_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getmembers()


def read_contents(path: Path) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                contents[member.name] = extracted.read()
    return contents


def make_tree(root: Path) -> None:
    root.mkdir()
    (root / "b.txt").write_bytes(b"bee\n")
    (root / "a.txt").write_bytes(b"ay\n")
    (root / "sub").mkdir()
    (root / "sub" / "deep.bin").write_bytes(bytes(range(256)) * 10)
    (root / "sub" / "empty").mkdir()
    (root / "z-link").symlink_to("a.txt")


class HookedWriter:
    """Wraps the real gzip writer and calls `on_write` with every piece written."""

    def __init__(self, inner: BinaryIO, on_write: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._on_write = on_write

    def write(self, data: bytes) -> int:
        self._on_write(bytes(data))
        return self._inner.write(data)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> HookedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hook_writes(monkeypatch: pytest.MonkeyPatch, on_write: Callable[[bytes], None]) -> None:
    real = archive.open_gzip_writer

    def opener(path: Path, level: int) -> Any:
        return HookedWriter(real(path, level), on_write)

    monkeypatch.setattr(archive, "open_gzip_writer", opener)


def run_bounded_in_thread(fn: Callable[[], int]) -> Any:
    """Run a possibly blocking call in a thread with a time bound (a hang fails the test)."""

    async def runner() -> int:
        with trio.fail_after(20):
            return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)

    return runner()


# --- dir_has_entries ---------------------------------------------------------------------


def test_dir_has_entries(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not dir_has_entries(empty)
    assert not dir_has_entries(tmp_path / "missing")
    afile = tmp_path / "file"
    afile.write_text("x")
    assert not dir_has_entries(afile)
    with_link = tmp_path / "with-link"
    with_link.mkdir()
    (with_link / "dangling").symlink_to("nowhere")
    assert dir_has_entries(with_link)
    assert dir_has_entries(tmp_path)


def test_dir_has_entries_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "locked"
    target.mkdir()
    (target / "x").write_text("x")
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert not dir_has_entries(target)


# --- layout ------------------------------------------------------------------------------


def test_members_metadata_and_contents(tmp_path: Path) -> None:
    src = tmp_path / "result"
    make_tree(src)
    os.chmod(src / "a.txt", 0o640)
    os.utime(src / "a.txt", (1_600_000_000, 1_600_000_000))
    dest = tmp_path / "result.tar.gz"

    size = write_dir_archive(src, dest, "result", level=6)

    assert size == dest.stat().st_size > 0
    members = read_members(dest)
    assert [m.name for m in members] == [
        "result",
        "result/a.txt",
        "result/b.txt",
        "result/sub",
        "result/sub/deep.bin",
        "result/sub/empty",
        "result/z-link",
    ]
    by_name = {m.name: m for m in members}
    assert by_name["result"].isdir()
    assert by_name["result/sub/empty"].isdir()
    a = by_name["result/a.txt"]
    assert a.isfile()
    assert a.mode == 0o640
    assert a.mtime == 1_600_000_000
    st = (src / "a.txt").stat()
    assert (a.uid, a.gid) == (st.st_uid, st.st_gid)
    assert by_name["result"].mode == stat.S_IMODE(src.stat().st_mode)
    assert by_name["result/z-link"].issym()
    assert by_name["result/z-link"].linkname == "a.txt"
    assert read_contents(dest) == {
        "result/a.txt": b"ay\n",
        "result/b.txt": b"bee\n",
        "result/sub/deep.bin": bytes(range(256)) * 10,
    }


def test_output_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "exec"
    make_tree(src)
    first = tmp_path / "one.tar.gz"
    second = tmp_path / "two.tar.gz"
    write_dir_archive(src, first, "exec-log", level=6)
    write_dir_archive(src, second, "exec-log", level=6)
    assert first.read_bytes() == second.read_bytes()


async def test_tar_command_lists_and_extracts(tmp_path: Path) -> None:
    src = tmp_path / "exec"
    make_tree(src)
    dest = tmp_path / "exec-log.tar.gz"
    await build_dir_archive(src, dest, "exec-log", level=1)

    listing = await trio.run_process(["tar", "tzf", str(dest)], capture_stdout=True)
    assert listing.stdout.decode().splitlines() == [
        "exec-log/",
        "exec-log/a.txt",
        "exec-log/b.txt",
        "exec-log/sub/",
        "exec-log/sub/deep.bin",
        "exec-log/sub/empty/",
        "exec-log/z-link",
    ]
    out = tmp_path / "out"
    out.mkdir()
    await trio.run_process(["tar", "xzf", str(dest), "-C", str(out)])
    assert (out / "exec-log" / "b.txt").read_bytes() == b"bee\n"
    assert (out / "exec-log" / "sub" / "deep.bin").read_bytes() == bytes(range(256)) * 10
    assert os.readlink(out / "exec-log" / "z-link") == "a.txt"


def test_large_file_is_streamed_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "result"
    src.mkdir()
    size = 5 * CHUNK_SIZE + 123
    make_sparse(src / "big", size)
    largest_read = 0
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        nonlocal largest_read
        largest_read = max(largest_read, n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    dest = tmp_path / "r.tar.gz"
    write_dir_archive(src, dest, "result", level=1)
    monkeypatch.undo()

    assert 0 < largest_read <= CHUNK_SIZE
    assert read_contents(dest)["result/big"] == bytes(size)


# --- hostile trees -----------------------------------------------------------------------


def test_symlinks_to_secrets_are_stored_as_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "credentials"
    secret.write_bytes(SECRET)
    src = tmp_path / "result"
    src.mkdir()
    (src / "abs-link").symlink_to(secret)
    (src / "rel-link").symlink_to("../outside/credentials")
    (src / "dir-link").symlink_to(outside, target_is_directory=True)
    dest = tmp_path / "result.tar.gz"

    write_dir_archive(src, dest, "result", level=6)

    by_name = {m.name: m for m in read_members(dest)}
    assert set(by_name) == {"result", "result/abs-link", "result/dir-link", "result/rel-link"}
    assert by_name["result/abs-link"].issym()
    assert by_name["result/abs-link"].linkname == str(secret)
    assert by_name["result/rel-link"].linkname == "../outside/credentials"
    assert by_name["result/dir-link"].issym()
    assert by_name["result/dir-link"].linkname == str(outside)
    assert SECRET not in gzip.decompress(dest.read_bytes())


async def test_symlink_cycles_do_not_hang(tmp_path: Path) -> None:
    src = tmp_path / "result"
    (src / "sub").mkdir(parents=True)
    (src / "self").symlink_to(".")
    (src / "sub" / "parent").symlink_to("..")
    (src / "a").symlink_to("b")
    (src / "b").symlink_to("a")
    dest = tmp_path / "r.tar.gz"

    await run_bounded_in_thread(lambda: write_dir_archive(src, dest, "result", level=1))

    names = [m.name for m in read_members(dest)]
    assert names == [
        "result",
        "result/a",
        "result/b",
        "result/self",
        "result/sub",
        "result/sub/parent",
    ]


async def test_fifo_and_socket_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "res"
    src.mkdir()
    (src / "keep.txt").write_text("kept")
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(src / "sock"))
    dest = tmp_path / "r.tar.gz"
    caplog.set_level(logging.WARNING, logger="mito_trio.archive")
    try:
        # A FIFO opened for reading would block until a writer shows up: bound the call.
        await run_bounded_in_thread(lambda: write_dir_archive(src, dest, "result", level=1))
    finally:
        sock.close()

    assert [m.name for m in read_members(dest)] == ["result", "result/keep.txt"]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "result/fifo: a FIFO" in messages
    assert "result/sock: a socket" in messages


def test_device_files_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "res"
    src.mkdir()
    try:
        os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    dest = tmp_path / "r.tar.gz"
    write_dir_archive(src, dest, "result", level=1)
    assert [m.name for m in read_members(dest)] == ["result"]


def deny(monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
    """Make opening `names` fail with EACCES, as chmod 000 does for a non-root user.

    Tests run as root, whom chmod 000 does not stop, so the refusal is simulated as well.
    """
    real_open = os.open

    def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if os.path.basename(os.fspath(path)) in names:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)


def test_unreadable_entries_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "result"
    src.mkdir()
    (src / "locked.txt").write_text("no")
    (src / "locked-dir").mkdir()
    (src / "locked-dir" / "inside").write_text("no")
    (src / "ok.txt").write_text("yes")
    os.chmod(src / "locked.txt", 0)
    os.chmod(src / "locked-dir", 0)
    if os.geteuid() == 0:
        deny(monkeypatch, {"locked.txt", "locked-dir"})
    caplog.set_level(logging.WARNING, logger="mito_trio.archive")
    dest = tmp_path / "r.tar.gz"
    try:
        write_dir_archive(src, dest, "result", level=1)
    finally:
        monkeypatch.undo()
        os.chmod(src / "locked-dir", 0o755)

    assert [m.name for m in read_members(dest)] == ["result", "result/ok.txt"]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "result/locked.txt" in messages
    assert "result/locked-dir" in messages


def test_file_that_shrinks_is_zero_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "result"
    src.mkdir()
    victim = src / "log.txt"
    victim.write_bytes(b"0123456789")

    def on_write(data: bytes) -> None:
        if data.startswith(b"result/log.txt\0"):  # its header: the size is fixed by now
            os.truncate(victim, 4)

    hook_writes(monkeypatch, on_write)
    caplog.set_level(logging.WARNING, logger="mito_trio.archive")
    dest = tmp_path / "r.tar.gz"
    write_dir_archive(src, dest, "result", level=1)

    assert read_contents(dest) == {"result/log.txt": b"0123" + bytes(6)}
    assert "shrank" in caplog.text


def test_file_that_grows_is_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "result"
    src.mkdir()
    victim = src / "log.txt"
    victim.write_bytes(b"0123456789")
    (src / "next.txt").write_bytes(b"next")

    def on_write(data: bytes) -> None:
        if data.startswith(b"result/log.txt\0"):
            with open(victim, "ab") as f:
                f.write(b"more and more")

    hook_writes(monkeypatch, on_write)
    caplog.set_level(logging.WARNING, logger="mito_trio.archive")
    dest = tmp_path / "r.tar.gz"
    write_dir_archive(src, dest, "result", level=1)

    assert read_contents(dest) == {"result/log.txt": b"0123456789", "result/next.txt": b"next"}
    assert "grew" in caplog.text


def test_too_deep_directories_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(archive, "MAX_DEPTH", 3)
    src = tmp_path / "result"
    (src / "a" / "b" / "c" / "d").mkdir(parents=True)
    (src / "a" / "b" / "f").write_text("f")
    caplog.set_level(logging.WARNING, logger="mito_trio.archive")
    dest = tmp_path / "r.tar.gz"
    write_dir_archive(src, dest, "result", level=1)
    names = [m.name for m in read_members(dest)]
    assert names == ["result", "result/a", "result/a/b", "result/a/b/f"]
    assert "levels deep" in caplog.text


def test_symlink_at_dest_is_replaced_not_followed(tmp_path: Path) -> None:
    src = tmp_path / "result"
    make_tree(src)
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    dest = tmp_path / "result.tar.gz"
    dest.symlink_to(victim)
    write_dir_archive(src, dest, "result", level=1)
    assert victim.read_bytes() == b"untouched"
    assert not dest.is_symlink()
    assert len(read_members(dest)) == 7


# --- std-log -----------------------------------------------------------------------------


def test_std_archive_headers(tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    out.write_bytes(b"hello out\n")
    err = tmp_path / "stderr"
    err.write_bytes(b"oops\n" * 1000)
    os.utime(out, (1_700_000_000, 1_700_000_000))
    dest = tmp_path / "std-log.tar.gz"

    size = write_std_archive(out, err, dest, level=6)

    assert size == dest.stat().st_size
    members = read_members(dest)
    assert [m.name for m in members] == ["std-log/stdout.log", "std-log/stderr.log"]
    for member in members:
        assert member.type == tarfile.REGTYPE
        assert member.mode == 0o664
        assert member.mtime == 0
        assert (member.uid, member.gid) == (0, 0)
        assert (member.uname, member.gname) == ("", "")
    assert read_contents(dest) == {
        "std-log/stdout.log": b"hello out\n",
        "std-log/stderr.log": b"oops\n" * 1000,
    }
    raw = gzip.decompress(dest.read_bytes())
    first = raw[:512]
    assert first[257:265] == b"ustar  \0"  # GNU magic and version
    assert first[100:108] == b"0000664\0"
    assert first[136:148] == b"00000000000\0"
    assert first[265:329] == bytes(64)  # empty uname and gname


def test_std_archive_missing_streams_are_empty(tmp_path: Path) -> None:
    dest = tmp_path / "std-log.tar.gz"
    write_std_archive(None, tmp_path / "never-written", dest, level=6)
    members = read_members(dest)
    assert [(m.name, m.size) for m in members] == [
        ("std-log/stdout.log", 0),
        ("std-log/stderr.log", 0),
    ]


def test_std_archive_does_not_follow_symlinks(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    out = tmp_path / "stdout"
    out.symlink_to(secret)
    dest = tmp_path / "std-log.tar.gz"
    write_std_archive(out, None, dest, level=6)
    assert read_contents(dest) == {"std-log/stdout.log": b"", "std-log/stderr.log": b""}
    assert SECRET not in gzip.decompress(dest.read_bytes())


# --- stopping and failures ---------------------------------------------------------------


def test_stop_event_deletes_partial_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "result"
    make_tree(src)
    stop = threading.Event()
    hook_writes(monkeypatch, lambda data: stop.set())
    dest = tmp_path / "r.tar.gz"
    with pytest.raises(ArchiveCancelled):
        write_dir_archive(src, dest, "result", level=1, stop=stop)
    assert not dest.exists()


def test_stop_event_in_std_archive(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    dest = tmp_path / "std.tar.gz"
    with pytest.raises(ArchiveCancelled):
        write_std_archive(None, None, dest, level=1, stop=stop)
    assert not dest.exists()


def test_write_failure_deletes_partial_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "result"
    make_tree(src)
    writes = 0

    def on_write(data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:
            raise OSError(28, "No space left on device")

    hook_writes(monkeypatch, on_write)
    dest = tmp_path / "r.tar.gz"
    with pytest.raises(OSError, match="No space left"):
        write_dir_archive(src, dest, "result", level=1)
    assert not dest.exists()


async def test_build_errors_are_plain_exceptions(tmp_path: Path) -> None:
    dest = tmp_path / "r.tar.gz"
    with pytest.raises(FileNotFoundError):
        await build_dir_archive(tmp_path / "missing", dest, "result", level=1)
    assert not dest.exists()


async def test_build_std_archive(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"x" * 100)
    dest = tmp_path / "std-log.tar.gz"
    size = await build_std_archive(out, None, dest, level=1)
    assert size == dest.stat().st_size
    assert read_contents(dest)["std-log/stdout.log"] == b"x" * 100


async def wait_until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll observable state until `predicate()` holds, failing after `seconds`."""
    with trio.fail_after(seconds):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


def make_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Slow every write down (so archiving takes minutes); the event is set at the first."""
    started = threading.Event()

    def on_write(data: bytes) -> None:
        started.set()
        time.sleep(0.005)

    hook_writes(monkeypatch, on_write)
    yield started


async def test_cancel_build_dir_archive(tmp_path: Path, slow_writes: threading.Event) -> None:
    await trio.to_thread.run_sync(lambda: None)  # let Trio's thread cache hold its thread
    baseline = threading.active_count()
    src = tmp_path / "result"
    src.mkdir()
    make_sparse(src / "huge", 1 << 30)
    dest = tmp_path / "result.tar.gz"
    reached_end = False
    cancelled_seen = False

    async def archive_it() -> None:
        nonlocal reached_end, cancelled_seen
        try:
            await build_dir_archive(src, dest, "result", level=1)
            reached_end = True
        except trio.Cancelled:
            cancelled_seen = True
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(archive_it)
        await wait_until(slow_writes.is_set)
        assert dest.exists()
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    stopped_after = trio.current_time() - cancelled_at

    assert cancelled_seen
    assert not reached_end
    assert stopped_after < 5
    assert not dest.exists()
    await wait_until(lambda: threading.active_count() <= baseline)


async def test_cancel_build_std_archive(tmp_path: Path, slow_writes: threading.Event) -> None:
    out = tmp_path / "out"
    make_sparse(out, 1 << 30)
    dest = tmp_path / "std-log.tar.gz"
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(build_std_archive, out, None, dest, level=1))
            await wait_until(slow_writes.is_set)
            cancelled_at = trio.current_time()
            scope.cancel()
    assert scope.cancelled_caught
    assert trio.current_time() - cancelled_at < 5
    assert not dest.exists()

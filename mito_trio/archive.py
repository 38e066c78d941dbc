"""Artifact archives: gzip-compressed tar files that any `tar xzf` can read.

Unlike the original worker, archiving never follows symlinks (they are stored as links),
never opens special files, and treats an unreadable entry as a warning rather than a reason
to stop the worker (PROTOCOL.md §13.2).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

import trio
from isal import igzip

logger = logging.getLogger(__name__)

#: Bytes read from a file (and handed to the compressor) at a time.
CHUNK_SIZE = 256 * 1024
#: Deeper directories are skipped: every level holds one open descriptor during the walk.
MAX_DEPTH = 128

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: should a FIFO or device replace a file between lstat and open, the open must not
# block; fstat then tells us what was really opened.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

#: `artifact_compression` levels served by ISA-L; 0 (store) and 4-9 use zlib.
ISAL_LEVELS = (1, 3)

_StopCheck = Callable[[], None]
_Fill = Callable[[tarfile.TarFile, _StopCheck], None]


class ArchiveCancelled(Exception):
    """Archiving was stopped through its `stop` event; the partial archive has been deleted."""


def dir_has_entries(path: Path) -> bool:
    """Whether `path` holds at least one entry; a missing or unreadable directory is empty."""
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


class _GzipWriter(gzip.GzipFile):
    """A stdlib gzip stream that also closes the file it writes to (levels 0 and 4-9)."""

    def __init__(self, raw: BinaryIO, level: int) -> None:
        # mtime=0 and no file name in the header: the same tree gives the same bytes.
        super().__init__(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0)
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


class _IsalGzipWriter(igzip.IGzipFile):
    """An ISA-L gzip stream (levels 1-3) that also closes the file it writes to.

    ISA-L level 1 compresses several times faster than zlib's level 1 at a similar ratio
    (bench/compression.py), and the output is plain gzip that any `tar xzf` reads.
    """

    def __init__(self, raw: BinaryIO, level: int) -> None:
        super().__init__(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0)  # type: ignore[no-untyped-call]
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def _gzip_stream(raw: BinaryIO, level: int) -> BinaryIO:
    if ISAL_LEVELS[0] <= level <= ISAL_LEVELS[1]:
        return cast(BinaryIO, _IsalGzipWriter(raw, level))
    return cast(BinaryIO, _GzipWriter(raw, level))


def open_gzip_writer(path: Path, level: int) -> BinaryIO:
    """Create `path` afresh (mode 0600) and return a gzip stream writing to it.

    Whatever was at `path` is unlinked first and the new file is created exclusively, so a
    symlink planted there by a task cannot redirect the write.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    raw = os.fdopen(os.open(path, flags, 0o600), "wb")
    try:
        return _gzip_stream(raw, level)
    except BaseException:
        raw.close()
        raise


def write_dir_archive(
    src: Path, dest: Path, prefix: str, *, level: int, stop: threading.Event | None = None
) -> int:
    """Write the tree `src` to the .tar.gz `dest` and return the compressed size in bytes.

    Members are `<prefix>` (the directory itself) and `<prefix>/<relative path>`, in sorted
    depth-first order, with mode, mtime and uid/gid from the filesystem. Symlinks are stored
    as links, special files and unreadable entries are skipped with a warning. Setting `stop`
    raises `ArchiveCancelled`; on any failure `dest` is deleted. An `OSError` is raised only
    when `src` itself cannot be opened or `dest` cannot be written.
    """

    def fill(tar: tarfile.TarFile, check_stop: _StopCheck) -> None:
        _TreeWriter(tar, check_stop).add_tree(src, prefix)

    return _write_archive(dest, level, stop, fill)


def write_std_archive(
    stdout: Path | None,
    stderr: Path | None,
    dest: Path,
    *,
    level: int,
    stop: threading.Event | None = None,
) -> int:
    """Write the std-log archive `dest` and return the compressed size in bytes.

    It holds exactly `std-log/stdout.log` and `std-log/stderr.log` (GNU headers, mode 0664,
    mtime 0, uid/gid 0, no owner names, no directory entry); a missing file gives an empty
    member. Setting `stop` raises `ArchiveCancelled`; on any failure `dest` is deleted.
    """

    def fill(tar: tarfile.TarFile, check_stop: _StopCheck) -> None:
        for name, path in (("stdout.log", stdout), ("stderr.log", stderr)):
            check_stop()
            _add_std_member(tar, f"std-log/{name}", path, check_stop)

    return _write_archive(dest, level, stop, fill)


async def build_dir_archive(src: Path, dest: Path, prefix: str, *, level: int) -> int:
    """`write_dir_archive` in a worker thread; cancelling the caller stops it promptly."""

    def work(stop: threading.Event) -> int:
        return write_dir_archive(src, dest, prefix, level=level, stop=stop)

    return await _run_stoppable(work, dest)


async def build_std_archive(
    stdout: Path | None, stderr: Path | None, dest: Path, *, level: int
) -> int:
    """`write_std_archive` in a worker thread; cancelling the caller stops it promptly."""

    def work(stop: threading.Event) -> int:
        return write_std_archive(stdout, stderr, dest, level=level, stop=stop)

    return await _run_stoppable(work, dest)


async def _run_stoppable(work: Callable[[threading.Event], int], dest: Path) -> int:
    """Run `work(stop)` in a thread; a cancelled caller sets `stop` and waits for the thread.

    The thread is never abandoned, so no archiving outlives the call and the partial archive
    is gone when `Cancelled` reaches the caller.
    """
    stop = threading.Event()

    async def set_stop_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(set_stop_when_cancelled)
            try:
                return await trio.to_thread.run_sync(work, stop)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The thread may have finished just as the caller was cancelled.
        _remove(dest)
        raise _main_error(group) from None


def _main_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception the caller should see from the helper nursery of `_run_stoppable`.

    Only the thread can fail; the helper task only ever adds a `Cancelled`. A real error wins,
    then `Cancelled` (which caused any `ArchiveCancelled`).
    """
    leaves = list(_leaves(group))
    errors = [e for e in leaves if not isinstance(e, trio.Cancelled | ArchiveCancelled)]
    if len(errors) > 1:
        return group
    if errors:
        return errors[0]
    cancelled = [e for e in leaves if isinstance(e, trio.Cancelled)]
    return cancelled[0] if cancelled else leaves[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_archive(dest: Path, level: int, stop: threading.Event | None, fill: _Fill) -> int:
    def check_stop() -> None:
        if stop is not None and stop.is_set():
            raise ArchiveCancelled(f"archiving to {dest} was stopped")

    try:
        check_stop()
        with (
            open_gzip_writer(dest, level) as gz,
            tarfile.TarFile(
                fileobj=gz, mode="w", format=tarfile.GNU_FORMAT, copybufsize=CHUNK_SIZE
            ) as tar,
        ):
            fill(tar, check_stop)
        # A stop that came during the last write still wins: the caller has given up on it.
        check_stop()
        return os.stat(dest).st_size
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(dest)
        raise


class _TreeWriter:
    """Adds a directory tree to a tar file through directory descriptors.

    Every name is resolved relative to its parent's descriptor with O_NOFOLLOW, so a symlink
    swapped in for a directory while we walk cannot lead the walk outside the tree.
    """

    def __init__(self, tar: tarfile.TarFile, check_stop: _StopCheck) -> None:
        self._tar = tar
        self._check_stop = check_stop

    def add_tree(self, src: Path, prefix: str) -> None:
        fd, names = self._open_dir(os.fspath(src), None)
        # One (descriptor, member name, names left) per directory being walked.
        stack = [(fd, prefix, iter(names))]
        try:
            self._add_header(prefix, tarfile.DIRTYPE, os.fstat(fd))
            while stack:
                fd, arcdir, pending = stack[-1]
                name = next(pending, None)
                if name is None:
                    stack.pop()
                    os.close(fd)
                    continue
                self._check_stop()
                arcname = f"{arcdir}/{name}"
                opened = self._add_entry(fd, name, arcname, len(stack))
                if opened is not None:
                    stack.append((opened[0], arcname, iter(opened[1])))
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    def _add_entry(
        self, parent: int, name: str, arcname: str, depth: int
    ) -> tuple[int, list[str]] | None:
        """Add one entry; for a directory, return its descriptor and names to walk next."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            logger.warning("archive: skipping %s: %s", arcname, exc)
            return None
        if stat.S_ISDIR(st.st_mode):
            return self._add_dir(parent, name, arcname, depth)
        if stat.S_ISLNK(st.st_mode):
            self._add_symlink(parent, name, arcname, st)
        elif stat.S_ISREG(st.st_mode):
            self._add_file(parent, name, arcname)
        else:
            logger.warning("archive: skipping %s: %s", arcname, _kind(st.st_mode))
        return None

    def _add_dir(
        self, parent: int, name: str, arcname: str, depth: int
    ) -> tuple[int, list[str]] | None:
        if depth >= MAX_DEPTH:
            logger.warning("archive: skipping %s: more than %d levels deep", arcname, MAX_DEPTH)
            return None
        try:
            fd, names = self._open_dir(name, parent)
        except OSError as exc:
            logger.warning("archive: skipping directory %s: %s", arcname, exc)
            return None
        try:
            self._add_header(arcname, tarfile.DIRTYPE, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd, names

    @staticmethod
    def _open_dir(path: str, parent: int | None) -> tuple[int, list[str]]:
        fd = os.open(path, _DIR_FLAGS, dir_fd=parent)
        try:
            return fd, sorted(os.listdir(fd))
        except BaseException:
            os.close(fd)
            raise

    def _add_symlink(self, parent: int, name: str, arcname: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(name, dir_fd=parent)
        except OSError as exc:
            logger.warning("archive: skipping symlink %s: %s", arcname, exc)
            return
        self._add_header(arcname, tarfile.SYMTYPE, st, linkname=target)

    def _add_file(self, parent: int, name: str, arcname: str) -> None:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            logger.warning("archive: skipping unreadable file %s: %s", arcname, exc)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                logger.warning("archive: skipping %s: became %s", arcname, _kind(st.st_mode))
                return
            info = _tar_info(arcname, tarfile.REGTYPE, st)
            info.size = st.st_size
            reader = _ExactReader(fd, st.st_size, self._check_stop)
            self._tar.addfile(info, reader)
            reader.warn_if_changed(arcname)
        finally:
            os.close(fd)

    def _add_header(
        self, arcname: str, kind: bytes, st: os.stat_result, *, linkname: str = ""
    ) -> None:
        info = _tar_info(arcname, kind, st)
        info.linkname = linkname
        self._tar.addfile(info)


def _tar_info(arcname: str, kind: bytes, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid = st.st_uid
    info.gid = st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"


class _ExactReader:
    """Exactly `size` bytes of an open file, read in chunks.

    The tar header already holds `size`, so a file that shrinks (or fails to read) is padded
    with zeros and a file that grows is cut, keeping the archive well-formed.
    """

    def __init__(self, fd: int, size: int, check_stop: _StopCheck) -> None:
        self._fd = fd
        self._left = size
        self._check_stop = check_stop
        self._padded = 0
        self._error: OSError | None = None

    def read(self, n: int = -1) -> bytes:
        self._check_stop()
        want = self._left if n < 0 else min(n, self._left)
        parts: list[bytes] = []
        got = 0
        while got < want and not self._padded and self._error is None:
            try:
                data = os.read(self._fd, want - got)
            except OSError as exc:
                self._error = exc
                break
            if not data:
                break
            parts.append(data)
            got += len(data)
        if got < want:
            parts.append(bytes(want - got))
            self._padded += want - got
        self._left -= want
        return b"".join(parts)

    def warn_if_changed(self, arcname: str) -> None:
        if self._error is not None:
            logger.warning(
                "archive: read error in %s, %d bytes zero-filled: %s",
                arcname,
                self._padded,
                self._error,
            )
        elif self._padded:
            logger.warning(
                "archive: %s shrank while archived, %d bytes zero-filled", arcname, self._padded
            )
        else:
            try:
                grew = bool(os.read(self._fd, 1))
            except OSError:
                grew = False
            if grew:
                logger.warning("archive: %s grew while archived, extra bytes left out", arcname)


def _add_std_member(
    tar: tarfile.TarFile, arcname: str, path: Path | None, check_stop: _StopCheck
) -> None:
    info = tarfile.TarInfo(arcname)
    info.mode = 0o664
    fd = _open_std_log(path)
    if fd is None:
        tar.addfile(info)
        return
    try:
        info.size = os.fstat(fd).st_size
        reader = _ExactReader(fd, info.size, check_stop)
        tar.addfile(info, reader)
        reader.warn_if_changed(arcname)
    finally:
        os.close(fd)


def _open_std_log(path: Path | None) -> int | None:
    """A descriptor on the regular file `path`, or None for an empty member."""
    if path is None:
        return None
    try:
        fd = os.open(path, _FILE_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("archive: %s unreadable, stored empty: %s", path, exc)
        return None
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        logger.warning("archive: %s is %s, stored empty", path, _kind(mode))
        return None
    return fd

"""Unpack untrusted zip and tar.gz archives into a private directory, or refuse them.

Every entry is checked before a byte of it is written: its path must stay
inside the archive (no absolute paths, no ``..``, no backslashes or NULs), it
must be a regular file or a directory (no symbolic or hard links, no devices,
no fifos), and the archive as a whole must stay within the operator's entry
count, unpacked size and compression ratio (decompression bombs). Sizes in
headers are only a first filter: bytes are counted again while they stream,
so a header that lies gets the archive refused all the same.

Files are created with ``O_EXCL | O_NOFOLLOW`` under a directory this module
creates and has just checked, so a duplicate entry cannot overwrite another
and no path can be redirected through a link. On any refusal the destination
directory is removed: nothing half-unpacked is left behind.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Protocol

from compress.errors import UnsafeArchive

if TYPE_CHECKING:
    from collections.abc import Iterator

    from compress.limits import IntakeLimits

_CHUNK = 1024 * 1024
_CORRUPT = "the archive is truncated or corrupt"
_UNIX = 3  # ZipInfo.create_system for archives made on Unix: mode bits are meaningful
# A tar entry costs a 512-byte header plus up to 511 bytes of padding; the
# archive ends with two zero blocks, padded to a 10 KiB record.
_TAR_OVERHEAD_PER_ENTRY = 1024
_TAR_OVERHEAD = 20 * 1024


class _Budget:
    """Counts entries and unpacked bytes against the limits as an archive is read."""

    def __init__(self, limits: IntakeLimits, *, archive_bytes: int) -> None:
        self._limits = limits
        self._archive_bytes = max(archive_bytes, 1)
        self.entries = 0
        self.unpacked = 0

    def add_entry(self) -> None:
        self.entries += 1
        if self.entries > self._limits.max_entries:
            raise UnsafeArchive(
                f"the archive has more than {self._limits.max_entries} entries",
            )

    def expect(self, count: int) -> None:
        """Refuse now if ``count`` more bytes would break a limit (a header's claim)."""
        total = self.unpacked + count
        limits = self._limits
        if total > limits.max_unpacked_bytes:
            raise UnsafeArchive(
                f"the archive unpacks to more than {limits.max_unpacked_bytes} bytes",
            )
        if total > limits.ratio_floor_bytes and total / self._archive_bytes > limits.max_ratio:
            raise UnsafeArchive(
                f"the archive expands more than {limits.max_ratio:g} times (a decompression bomb?)",
            )

    def add_bytes(self, count: int) -> None:
        """Count ``count`` bytes actually unpacked, refusing past a limit."""
        self.expect(count)
        self.unpacked += count


def member_path(name: str) -> PurePosixPath | None:
    """Return the safe relative path of an archive entry, or ``None`` for the root itself.

    Refuses anything that could land outside the destination once joined to
    it: absolute paths, drive letters, ``..`` components, backslashes (a path
    separator on Windows, a trap for tools that convert) and NUL bytes.
    """
    if "\\" in name or "\x00" in name:
        raise UnsafeArchive("an archive entry name contains a backslash or NUL byte")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive("an archive entry has an absolute path")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if ".." in parts:
        raise UnsafeArchive("an archive entry path leaves the archive ('..')")
    return PurePosixPath(*parts) if parts else None


def _zip_entry_kind(info: zipfile.ZipInfo) -> str:
    """Classify a zip entry as 'file' or 'dir', refusing links and special files."""
    if info.flag_bits & 0x1:
        raise UnsafeArchive("encrypted archive entries are not accepted")
    # Many writers (numpy, Keras) store permission bits only: no type bits means a file.
    file_type = stat.S_IFMT(info.external_attr >> 16) if info.create_system == _UNIX else 0
    if file_type == stat.S_IFLNK:
        raise UnsafeArchive("the archive contains a symbolic link")
    if file_type not in {0, stat.S_IFREG, stat.S_IFDIR}:
        raise UnsafeArchive("the archive contains a device file, fifo or socket")
    return "dir" if info.is_dir() else "file"


def screen_zip(
    archive: zipfile.ZipFile, *, limits: IntakeLimits, archive_bytes: int
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every entry of an open zip and return the files with their safe paths.

    Uses only the central directory, so a bomb is refused before anything is
    decompressed. The declared sizes are checked against the limits here and
    the real sizes again by whoever reads the data.
    """
    budget = _Budget(limits, archive_bytes=archive_bytes)
    files: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    seen: set[PurePosixPath] = set()
    for info in archive.infolist():
        budget.add_entry()
        path = member_path(info.filename)
        kind = _zip_entry_kind(info)
        if path is None or kind == "dir":
            continue
        if path in seen:
            raise UnsafeArchive("the archive contains the same file twice")
        seen.add(path)
        budget.add_bytes(info.file_size)
        files.append((info, path))
    return files


def _copy(stream: IO[bytes], target: Path, *, budget: _Budget, declared: int | None = None) -> None:
    """Stream one entry into a new file, counting the bytes actually produced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(target, flags, 0o600)
    written = 0
    with os.fdopen(descriptor, "wb") as out:
        while chunk := stream.read(_CHUNK):
            written += len(chunk)
            if declared is not None and written > declared:
                raise UnsafeArchive("an archive entry is larger than its header says")
            budget.add_bytes(len(chunk))
            out.write(chunk)


def _refusal_for(exc: BaseException) -> UnsafeArchive | None:
    """Translate what the zip, tar and gzip readers raise on bad input into a refusal."""
    if isinstance(exc, (FileExistsError, NotADirectoryError, IsADirectoryError)):
        return UnsafeArchive("the archive has entries that collide", detail=repr(exc))
    if isinstance(exc, NotImplementedError):
        return UnsafeArchive("the archive uses an unsupported compression method")
    if isinstance(exc, (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile)):
        return UnsafeArchive(_CORRUPT, detail=repr(exc))
    if isinstance(exc, (EOFError, zlib.error)):
        return UnsafeArchive(_CORRUPT, detail=repr(exc))
    return None


@contextmanager
def _refusing(destination: Path) -> Iterator[None]:
    """Create ``destination``; on any error remove it, turning reader errors into refusals.

    ``mkdir`` fails if the directory exists: unpacking never merges into, or
    through, anything that was already there.
    """
    destination.mkdir(mode=0o700)
    try:
        yield
    except BaseException as exc:
        shutil.rmtree(destination, ignore_errors=True)
        refusal = _refusal_for(exc)
        if refusal is None:
            raise
        raise refusal from exc


def unpack_zip(source: Path, *, destination: Path, limits: IntakeLimits) -> Path:
    """Unpack a zip into ``destination`` (which must not exist yet), or refuse it.

    Returns ``destination``. On refusal it is removed and ``UnsafeArchive`` is
    raised with a message naming the rule that was broken.
    """
    archive_bytes = source.stat().st_size
    with _refusing(destination), zipfile.ZipFile(source) as archive:
        files = screen_zip(archive, limits=limits, archive_bytes=archive_bytes)
        budget = _Budget(limits, archive_bytes=archive_bytes)
        for info, path in files:
            with archive.open(info) as stream:
                _copy(stream, destination / path, budget=budget, declared=info.file_size)
    return destination


def _tar_entry_kind(member: tarfile.TarInfo) -> str:
    """Classify a tar entry as 'file' or 'dir', refusing links and special files."""
    if member.issym():
        raise UnsafeArchive("the archive contains a symbolic link")
    if member.islnk():
        raise UnsafeArchive("the archive contains a hard link")
    if member.ischr() or member.isblk():
        raise UnsafeArchive("the archive contains a device file")
    if member.isfifo():
        raise UnsafeArchive("the archive contains a fifo")
    if member.issparse():
        raise UnsafeArchive("the archive contains a sparse file")
    if member.isdir():
        return "dir"
    if member.isreg():
        return "file"
    raise UnsafeArchive("the archive contains an entry that is not a file or a directory")


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _BoundedStream:
    """The decompressed bytes of a tar.gz, counted as tarfile reads them.

    tarfile reads some headers whole (a pax header of any declared size goes
    into memory at once), so member checks alone cannot stop a bomb hidden in
    a header. Every byte tarfile asks for passes through here and counts
    against the archive's limits, headers included.
    """

    def __init__(self, stream: _Readable, *, budget: _Budget) -> None:
        self._stream = stream
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(iter(lambda: self.read(_CHUNK), b""))
        data = self._stream.read(size)
        self._budget.add_bytes(len(data))
        return data


def _tar_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    # Stream mode: headers are read in order and never revisited, so a bomb is
    # stopped at the first entry past the limits rather than after a full scan.
    while (member := archive.next()) is not None:
        yield member


def unpack_tar_gz(source: Path, *, destination: Path, limits: IntakeLimits) -> Path:
    """Unpack a gzip-compressed tar into ``destination`` (which must not exist), or refuse it.

    Same rules and same cleanup as ``unpack_zip``. The archive is read as a
    stream in one pass: each entry is checked when its header arrives and
    written (or the whole archive refused) before the next one is read. The
    decompressed stream as a whole is bounded too (``_BoundedStream``), with
    room for the headers and padding of ``max_entries`` entries.
    """
    archive_bytes = source.stat().st_size
    budget = _Budget(limits, archive_bytes=archive_bytes)
    headroom = _TAR_OVERHEAD_PER_ENTRY * limits.max_entries + _TAR_OVERHEAD
    stream_limits = replace(limits, max_unpacked_bytes=limits.max_unpacked_bytes + headroom)
    stream_budget = _Budget(stream_limits, archive_bytes=archive_bytes)
    seen: set[PurePosixPath] = set()
    with (
        _refusing(destination),
        source.open("rb") as handle,
        gzip.GzipFile(fileobj=handle, mode="rb") as decompressed,
        # tarfile only calls read() on a stream-mode fileobj; its stub wants a full file.
        tarfile.open(  # type: ignore[call-overload]
            fileobj=_BoundedStream(decompressed, budget=stream_budget), mode="r|"
        ) as archive,
    ):
        for member in _tar_members(archive):
            budget.add_entry()
            path = member_path(member.name)
            if _tar_entry_kind(member) == "dir" or path is None:
                continue
            if path in seen:
                raise UnsafeArchive("the archive contains the same file twice")
            seen.add(path)
            budget.expect(member.size)
            stream = archive.extractfile(member)
            if stream is None:  # pragma: no cover - regular members always have data
                raise UnsafeArchive(_CORRUPT)
            with stream:
                _copy(stream, destination / path, budget=budget, declared=member.size)
    return destination

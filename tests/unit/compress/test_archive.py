import io
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from compress.archive import member_path, unpack_tar_gz, unpack_zip
from compress.errors import UnsafeArchive
from compress.limits import IntakeLimits
from tests.unit.compress.conftest import contents

LIMITS = IntakeLimits()


def make_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    """Write a deflated zip of (name or ZipInfo, data) entries."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def unix_info(name: str, mode: int) -> zipfile.ZipInfo:
    """A zip entry made on Unix with the given st_mode (type and permission bits)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """Write a tar.gz of (TarInfo, data or None) members."""
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    """A tar header of any type, crafted without touching the file system."""
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def assert_refused_cleanly(tmp_path: Path, source: Path, staging: Path) -> None:
    """After a refusal, only the source and an empty staging directory exist."""
    assert contents(tmp_path) == {source.relative_to(tmp_path), staging.relative_to(tmp_path)}


def test_zip_unpacks_files_and_directories(tmp_path, staging):
    """A well-formed zip is unpacked with its nested layout and exact bytes."""
    source = make_zip(
        tmp_path / "ok.zip",
        [("saved_model.pb", b"graph"), ("variables/variables.index", b"index"), ("assets/", b"")],
    )
    destination = unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert (destination / "saved_model.pb").read_bytes() == b"graph"
    assert (destination / "variables" / "variables.index").read_bytes() == b"index"


def test_tar_gz_unpacks_files_and_directories(tmp_path, staging):
    """A well-formed tar.gz is unpacked with its nested layout and exact bytes."""
    source = make_tar(
        tmp_path / "ok.tar.gz",
        [
            (tar_info("model", tarfile.DIRTYPE), None),
            (tar_info("model/saved_model.pb"), b"graph"),
            (tar_info("./model/variables/variables.index"), b"index"),
        ],
    )
    destination = unpack_tar_gz(source, destination=staging / "out", limits=LIMITS)
    assert (destination / "model" / "saved_model.pb").read_bytes() == b"graph"
    assert (destination / "model" / "variables" / "variables.index").read_bytes() == b"index"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.txt", "leaves the archive"),
        ("variables/../../evil.txt", "leaves the archive"),
        ("/etc/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("..\\evil.txt", "backslash"),
    ],
)
def test_zip_entries_leaving_the_archive_are_refused(tmp_path, staging, name, message):
    """Traversal, absolute and backslash paths are refused and nothing is written."""
    source = make_zip(tmp_path / "bad.zip", [("fine.txt", b"ok"), (name, b"evil")])
    with pytest.raises(UnsafeArchive, match=message):
        unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFCHR | 0o600, "device file"),
        (stat.S_IFIFO | 0o600, "device file, fifo"),
    ],
)
def test_zip_links_and_special_files_are_refused(tmp_path, staging, mode, message):
    """Zip entries marked as links, devices or fifos are refused before extraction."""
    source = make_zip(tmp_path / "bad.zip", [(unix_info("link", mode), b"/etc/passwd")])
    with pytest.raises(UnsafeArchive, match=message):
        unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_zip_permission_only_modes_are_regular_files(tmp_path, staging):
    """NumPy and Keras write modes without type bits; those entries are plain files."""
    source = make_zip(tmp_path / "ok.zip", [(unix_info("x.npy", 0o600), b"data")])
    destination = unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert (destination / "x.npy").read_bytes() == b"data"


def test_zip_bomb_is_refused_before_extraction(tmp_path, staging):
    """A zip expanding a thousandfold is refused from its central directory alone."""
    source = make_zip(tmp_path / "bomb.zip", [("zeros.bin", bytes(20 * 1024 * 1024))])
    assert source.stat().st_size < 100_000
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_zip_with_too_many_entries_is_refused(tmp_path, staging):
    """More entries than the limit are refused."""
    source = make_zip(tmp_path / "many.zip", [(f"f{i}", b"x") for i in range(6)])
    with pytest.raises(UnsafeArchive, match="more than 5 entries"):
        unpack_zip(source, destination=staging / "out", limits=IntakeLimits(max_entries=5))
    assert_refused_cleanly(tmp_path, source, staging)


def test_zip_over_the_unpacked_size_limit_is_refused(tmp_path, staging):
    """An archive unpacking to more than the limit is refused."""
    source = make_zip(tmp_path / "big.zip", [("a", b"x" * 600), ("b", b"y" * 600)])
    with pytest.raises(UnsafeArchive, match="more than 1000 bytes"):
        unpack_zip(
            source, destination=staging / "out", limits=IntakeLimits(max_unpacked_bytes=1000)
        )
    assert_refused_cleanly(tmp_path, source, staging)


def test_truncated_zip_is_refused(tmp_path, staging):
    """A zip cut short (no central directory) is refused as truncated or corrupt."""
    whole = make_zip(tmp_path / "whole.zip", [("a", bytes(range(256)) * 100)])
    source = tmp_path / "cut.zip"
    source.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    with pytest.raises(UnsafeArchive, match="truncated or corrupt"):
        unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_zip_with_corrupted_data_is_refused_and_cleaned_up(tmp_path, staging):
    """A flipped byte in an entry's data fails its check and leaves nothing behind."""
    payload = bytes(range(256)) * 40
    with zipfile.ZipFile(tmp_path / "good.zip", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("first", b"fine")
        archive.writestr("second", payload)
    raw = bytearray((tmp_path / "good.zip").read_bytes())
    offset = raw.find(payload[1000:1032])
    raw[offset] ^= 0xFF
    source = tmp_path / "corrupt.zip"
    source.write_bytes(bytes(raw))
    (tmp_path / "good.zip").unlink()
    with pytest.raises(UnsafeArchive, match="truncated or corrupt"):
        unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_zip_with_duplicate_entries_is_refused(tmp_path, staging):
    """Two entries with one name cannot overwrite each other: the archive is refused."""
    with pytest.warns(UserWarning, match="Duplicate name"):
        source = make_zip(tmp_path / "dup.zip", [("a", b"first"), ("a", b"second")])
    with pytest.raises(UnsafeArchive, match="same file twice"):
        unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_encrypted_zip_entries_are_refused(tmp_path, staging):
    """Entries flagged as encrypted are refused rather than half-read."""
    raw = bytearray(make_zip(tmp_path / "plain.zip", [("secret", b"data")]).read_bytes())
    # zipfile never writes the flag itself: set bit 0 in the local and central headers.
    raw[raw.find(b"PK\x03\x04") + 6] |= 0x1
    raw[raw.find(b"PK\x01\x02") + 8] |= 0x1
    (tmp_path / "plain.zip").unlink()
    source = tmp_path / "enc.zip"
    source.write_bytes(bytes(raw))
    with pytest.raises(UnsafeArchive, match="encrypted"):
        unpack_zip(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (tar_info("link", tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (tar_info("hard", tarfile.LNKTYPE, linkname="model/saved_model.pb"), "hard link"),
        (tar_info("tty", tarfile.CHRTYPE, devmajor=5, devminor=0), "device file"),
        (tar_info("disk", tarfile.BLKTYPE, devmajor=8, devminor=0), "device file"),
        (tar_info("pipe", tarfile.FIFOTYPE), "fifo"),
    ],
)
def test_tar_links_devices_and_fifos_are_refused(tmp_path, staging, info, message):
    """Tar links, device files and fifos are refused, and files before them removed."""
    source = make_tar(
        tmp_path / "bad.tar.gz", [(tar_info("model/saved_model.pb"), b"g"), (info, None)]
    )
    with pytest.raises(UnsafeArchive, match=message):
        unpack_tar_gz(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/cron.d/evil", "a/../../evil"])
def test_tar_entries_leaving_the_archive_are_refused(tmp_path, staging, name):
    """Tar traversal and absolute paths are refused and nothing is written."""
    source = make_tar(tmp_path / "bad.tar.gz", [(tar_info(name), b"evil")])
    with pytest.raises(UnsafeArchive, match=r"leaves the archive|absolute path"):
        unpack_tar_gz(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_truncated_tar_gz_is_refused(tmp_path, staging):
    """A tar.gz cut short is refused as truncated or corrupt, partial files removed."""
    whole = make_tar(tmp_path / "whole.tar.gz", [(tar_info("a"), bytes(range(256)) * 400)])
    source = tmp_path / "cut.tar.gz"
    source.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    with pytest.raises(UnsafeArchive, match="truncated or corrupt"):
        unpack_tar_gz(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_not_a_gzip_is_refused_as_corrupt(tmp_path, staging):
    """Bytes that are not gzip at all are refused as a corrupt archive."""
    source = tmp_path / "plain.tar.gz"
    source.write_bytes(b"\x1f\x8b but not really gzip data")
    with pytest.raises(UnsafeArchive, match="truncated or corrupt"):
        unpack_tar_gz(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_tar_gz_bomb_is_refused_from_its_header(tmp_path, staging):
    """A tar member of 20 MiB of zeros is refused on its header, before it is read."""
    source = make_tar(tmp_path / "bomb.tar.gz", [(tar_info("zeros"), bytes(20 * 1024 * 1024))])
    assert source.stat().st_size < 100_000
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        unpack_tar_gz(source, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, source, staging)


def test_tar_with_too_many_entries_is_refused(tmp_path, staging):
    """A tar with more entries than the limit is refused."""
    source = make_tar(tmp_path / "many.tar.gz", [(tar_info(f"f{i}"), b"x") for i in range(4)])
    with pytest.raises(UnsafeArchive, match="more than 3 entries"):
        unpack_tar_gz(source, destination=staging / "out", limits=IntakeLimits(max_entries=3))
    assert_refused_cleanly(tmp_path, source, staging)


def test_existing_destination_is_never_merged_into(tmp_path, staging):
    """Unpacking refuses to write into a directory that already exists, and leaves it alone."""
    source = make_zip(tmp_path / "ok.zip", [("a", b"new")])
    existing = staging / "out"
    existing.mkdir()
    (existing / "a").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        unpack_zip(source, destination=existing, limits=LIMITS)
    assert (existing / "a").read_bytes() == b"old"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a/b", PurePosixPath("a/b")), ("./a/./b", PurePosixPath("a/b")), (".", None), ("./", None)],
)
def test_member_path_normalises_safe_names(name, expected):
    """Safe names are normalised; the archive root itself maps to None."""
    assert member_path(name) == expected


def test_tar_gz_bomb_in_a_pax_header_is_refused(tmp_path, staging):
    """A 20 MiB pax header (read whole by tarfile) is stopped as it streams, not after."""
    path = tmp_path / "pax.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        info = tar_info("model/saved_model.pb", pax_headers={"comment": "A" * (20 * 1024 * 1024)})
        info.size = 5
        archive.addfile(info, io.BytesIO(b"graph"))
    assert path.stat().st_size < 100_000
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        unpack_tar_gz(path, destination=staging / "out", limits=LIMITS)
    assert_refused_cleanly(tmp_path, path, staging)

"""Worker TLS files are read again when they change, and only taken when they are usable."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from server.pool.remote import TlsFiles, TlsFilesError
from tests.tls import Authority

if TYPE_CHECKING:
    from pathlib import Path

    from tests.tls import Issued


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    """A fresh CA."""
    return Authority.create(tmp_path / "ca")


def _installed(issued: Issued, directory: Path) -> tuple[Path, Path, Path]:
    """Copies of ``issued``'s files at fixed paths, as a deployment would mount them."""
    directory.mkdir(exist_ok=True)
    files = (directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    for source, target in zip((issued.cert, issued.key, issued.ca), files, strict=True):
        shutil.copyfile(source, target)
    return files


def test_unchanged_files_are_not_read_again(authority: Authority, tmp_path: Path) -> None:
    """No change on disk: the same material, and no new reading."""
    files = TlsFiles(_installed(authority.issue("w1", server=True), tmp_path / "live"))
    first = files.material
    assert files.current() == (first, False)
    assert files.current()[0] is first


def test_a_renewed_pair_is_taken_once_both_files_are_written(
    authority: Authority, tmp_path: Path
) -> None:
    """Certificate then key, as a renewal writes them: the pair is taken once it matches."""
    paths = _installed(authority.issue("w1", server=True), tmp_path / "live")
    files = TlsFiles(paths)
    old = files.material
    renewed = authority.issue("w2", server=True)
    # A renewal writes the certificate first: until the key follows, the pair does not match.
    shutil.copyfile(renewed.cert, paths[0])
    with capture_logs() as logs:
        assert files.current() == (old, False)
        assert files.current() == (old, False)  # the same change is reported once
    (warning,) = logs
    assert "is not for the private key" in warning["reason"]
    assert "PRIVATE KEY" not in str(logs)
    shutil.copyfile(renewed.key, paths[1])
    material, changed = files.current()
    assert changed
    assert material.certificate == renewed.cert.read_bytes()
    assert files.current() == (material, False)


def test_a_missing_or_broken_file_keeps_the_previous_material(
    authority: Authority, tmp_path: Path
) -> None:
    """A file gone or unreadable mid-renewal: connections keep using what worked."""
    paths = _installed(authority.issue("w1", server=True), tmp_path / "live")
    files = TlsFiles(paths)
    old = files.material
    paths[2].unlink()
    assert files.current() == (old, False)
    paths[2].write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert files.current() == (old, False)
    shutil.copyfile(authority.ca_file, paths[2])
    assert files.current() == (old, False)  # the same bytes as before: nothing to take


def test_bad_files_at_start_name_the_problem(authority: Authority, tmp_path: Path) -> None:
    """At start there is nothing to fall back on: the error names the file."""
    one = authority.issue("w1", server=True)
    other = authority.issue("w2", server=True)
    with pytest.raises(TlsFilesError, match=r"certificate .*w1\.pem is not for the private key"):
        TlsFiles((one.cert, other.key, one.ca))
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TlsFilesError, match=r"garbage\.key is not an unencrypted private key"):
        TlsFiles((one.cert, garbage, one.ca))

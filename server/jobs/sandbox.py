"""Confine the job process with Landlock: its own directory to write, the Python install to read.

The job process runs as the gateway's user, so without more it could read
what that user can: the master key file, the SQLite database, other jobs'
uploads. Landlock (Linux 5.13+, unprivileged) lets a process give those
rights up for good, for itself and its children, before it touches the
upload: after ``confine`` it reads only the Python installation, our two
packages, system libraries and a few kernel files, writes only its job
directory, and (Landlock ABI 4+) opens no TCP connection and binds no port;
(ABI 6+) it cannot signal processes outside itself either.

Where the kernel lacks Landlock, ``confine`` returns 0 and changes nothing:
the supervisor logs it, and the job still has no key in memory or environment.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights, by the ABI version that introduced them.
_EXECUTE = 1 << 0
_WRITE_FILE = 1 << 1
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute .. make_sym
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3
_IOCTL_DEV = 1 << 15  # ABI 5
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_NET_TCP = (1 << 0) | (1 << 1)  # bind, connect (ABI 4)
_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals (ABI 6)

_READ = _EXECUTE | _READ_FILE | _READ_DIR
# Files and directories every Python process with numpy and TensorFlow reads.
_SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/proc",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/dev/urandom",
    "/dev/random",
)
_SYSTEM_WRITE = ("/dev/null",)


class SandboxError(OSError):
    """The kernel has Landlock but refused the ruleset."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise SandboxError(errno, f"landlock {what}: {os.strerror(errno)}")
    return result


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc().syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(0, int(version))


def _handled_fs(abi: int) -> int:
    rights = _FS_ABI1
    if abi >= 2:  # noqa: PLR2004 - Landlock ABI versions
        rights |= _REFER
    if abi >= 3:  # noqa: PLR2004
        rights |= _TRUNCATE
    if abi >= 5:  # noqa: PLR2004
        rights |= _IOCTL_DEV
    return rights


def _ruleset(abi: int) -> bytes:
    """``struct landlock_ruleset_attr``, as long as this ABI knows it."""
    fs = _handled_fs(abi)
    if abi >= 6:  # noqa: PLR2004
        return struct.pack("=QQQ", fs, _NET_TCP, _SCOPE_ALL)
    if abi >= 4:  # noqa: PLR2004
        return struct.pack("=QQ", fs, _NET_TCP)
    return struct.pack("=Q", fs)


def _allow(libc: ctypes.CDLL, ruleset: int, path: Path, rights: int, handled: int) -> None:
    try:
        descriptor = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent on this system: nothing to allow
    try:
        if not path.is_dir():
            rights &= _FILE_RIGHTS  # directory rights on a file are an error
        rule = struct.pack("=Qi", rights & handled, descriptor)
        buffer = ctypes.create_string_buffer(rule, len(rule))
        _check(libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, buffer, 0), "add_rule")
    finally:
        os.close(descriptor)


def default_read_paths() -> list[Path]:
    """The Python installation and the two packages the job imports (not the repository)."""
    import compress  # noqa: PLC0415 - only to find where it lives
    import server  # noqa: PLC0415

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    paths |= {Path(path) for path in sys.path if path and "site-packages" in path}
    paths |= {Path(compress.__file__).parent, Path(server.__file__).parent}
    paths |= {Path(sys.executable).resolve().parent}
    return sorted(paths)


def confine(*, writable: Path, readable: list[Path]) -> int:
    """Restrict this process for good; returns the Landlock ABI used (0: not available).

    ``writable`` is the one tree the process may change; ``readable`` (plus
    the system files above) the trees it may read and execute from.
    """
    abi = abi_version()
    if abi == 0:
        return 0
    libc = _libc()
    attr = _ruleset(abi)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(libc.syscall(_SYS_CREATE_RULESET, buffer, len(attr), 0), "create_ruleset")
    try:
        handled = _handled_fs(abi)
        for path in (*readable, *(Path(p) for p in _SYSTEM_READ)):
            _allow(libc, ruleset, path, _READ, handled)
        for path in (writable, *(Path(p) for p in _SYSTEM_WRITE)):
            _allow(libc, ruleset, path, handled, handled)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _check(libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0), "restrict_self")
    finally:
        os.close(ruleset)
    return abi

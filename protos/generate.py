"""Regenerate the committed gRPC stubs from ``protos/*.proto``.

Usage (from anywhere; paths are resolved from this file)::

    python -m protos.generate          # rewrite stale stubs in place
    python -m protos.generate --check  # exit 1 naming stale stubs, write nothing

Why the stubs are committed: the gateway and the workers import them at run
time, and ``grpcio-tools`` is a development dependency only. Why ``--check``:
CI regenerates and fails on any difference, so a ``.proto`` edit can never
ship without its stubs (the MLServer ``make generate`` practice).

Invariants:

- protoc sees the repository root as its only include root for our files
  (the same as ``-I .`` run from the root), so every ``.proto`` is named
  ``protos/<name>.proto`` in its descriptor and the generated code imports
  its siblings as ``from protos import <name>_pb2``.
- Output is byte-for-byte a function of the ``.proto`` files and the
  installed ``grpcio-tools`` version; a different ``grpcio-tools`` produces
  a different header, which ``--check`` reports as stale on purpose.
- Only files that end in the generated suffixes are ever written or deleted.
"""

from __future__ import annotations

import argparse
import importlib.resources
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOS_DIR.parent

# What protoc writes for each ``<name>.proto``: messages, type stubs, services.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class GenerationError(RuntimeError):
    """protoc refused the ``.proto`` files (its messages went to stderr)."""


def proto_sources() -> list[Path]:
    """Return our ``.proto`` files, sorted so protoc's input order is stable."""
    return sorted(PROTOS_DIR.glob("*.proto"))


def generate(out_dir: Path) -> dict[str, bytes]:
    """Run protoc into ``out_dir`` and return ``{file name: contents}``.

    ``out_dir`` plays the part of the repository root: files land in
    ``out_dir/protos/``. Raises ``GenerationError`` if protoc fails.
    """
    try:
        import grpc_tools  # noqa: F401, PLC0415 - dev-only dependency
    except ImportError as exc:  # pragma: no cover - depends on the install
        msg = "grpcio-tools is not installed; run `make install-test`"
        raise GenerationError(msg) from exc

    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    sources = proto_sources()
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(path) for path in sources),
    ]
    # protoc runs in its own process: loaded in-process beside other native
    # protobuf users (TensorFlow in the test session) it can crash the interpreter.
    done = subprocess.run(  # noqa: S603 - the venv's own interpreter and protoc module
        [sys.executable, "-m", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise GenerationError(f"protoc failed: {done.stderr.strip()}")
    generated = out_dir / PROTOS_DIR.name
    return {path.name: path.read_bytes() for path in sorted(generated.iterdir())}


def committed_stubs() -> dict[str, bytes]:
    """Return the generated files currently in ``protos/``."""
    return {
        path.name: path.read_bytes()
        for path in sorted(PROTOS_DIR.iterdir())
        if path.name.endswith(GENERATED_SUFFIXES)
    }


def stale_files(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Name every stub that differs, is missing, or has no ``.proto`` left."""
    names = expected.keys() | actual.keys()
    return sorted(name for name in names if expected.get(name) != actual.get(name))


def check() -> list[str]:
    """Regenerate into a temporary directory; return the stale file names.

    Writes nothing under the repository. An empty list means the committed
    stubs are exactly what the current ``.proto`` files produce.
    """
    with tempfile.TemporaryDirectory(prefix="sealserve-protos-") as tmp:
        expected = generate(Path(tmp))
    return stale_files(expected, committed_stubs())


def write() -> list[str]:
    """Bring ``protos/`` up to date; return the names of files changed.

    Unchanged files are not rewritten (their mtimes stay put), and stubs
    whose ``.proto`` was removed are deleted.
    """
    with tempfile.TemporaryDirectory(prefix="sealserve-protos-") as tmp:
        expected = generate(Path(tmp))
    actual = committed_stubs()
    changed = stale_files(expected, actual)
    for name in changed:
        target = PROTOS_DIR / name
        if name in expected:
            target.write_bytes(expected[name])
        else:
            target.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="only report stale stubs (exit status 1 if any); write nothing",
    )
    options = parser.parse_args(argv)
    try:
        names = check() if options.check else write()
    except GenerationError as exc:
        sys.stderr.write(f"protos: {exc}\n")
        return 2
    rel = PROTOS_DIR.relative_to(REPO_ROOT)
    if options.check:
        if names:
            sys.stderr.write("protos: stale generated stubs (run `make protos`):\n")
            sys.stderr.writelines(f"  {rel / name}\n" for name in names)
            return 1
        sys.stdout.write("protos: generated stubs are current\n")
        return 0
    sys.stdout.writelines(f"protos: updated {rel / name}\n" for name in names)
    if not names:
        sys.stdout.write("protos: generated stubs already current\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

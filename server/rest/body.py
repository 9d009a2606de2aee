"""Reading request bodies under a size limit, enforced while they stream."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from server.service.errors import PayloadTooLarge

if TYPE_CHECKING:
    from fastapi import Request


def _declared_too_large(request: Request, limit: int) -> bool:
    declared = request.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes."""
    if _declared_too_large(request, limit):
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def spool_body(request: Request, limit: int, directory: Path) -> Path:
    """Stream the body into a private temporary file under ``directory`` (deleted on error)."""
    if _declared_too_large(request, limit):
        raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix="upload-", delete=False)  # noqa: SIM115
    path = Path(handle.name)
    try:
        size = 0
        with handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")  # noqa: TRY301
                handle.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path

"""Reading request bodies under size limits, enforced while they stream.

Raw bodies are read into memory or spooled to one file; ``multipart/form-data``
uploads are parsed as they arrive (python-multipart's streaming parser), each
file part written straight to disk, so no part is ever held whole in memory.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from server.service.errors import InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:
    from fastapi import Request
    from python_multipart.multipart import MultipartCallbacks


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


class FormPlan(Protocol):
    """What a form may hold: a rule per part, and the name a file part is stored under."""

    def part(self, name: str) -> PartRule:
        """The rule of part ``name``; raises for a part the form does not take."""
        ...

    def staged_name(self, part: str, filename: str | None) -> str:
        """The file name (no directory) a file part is written to; raises if refused."""
        ...


class PartRule(Protocol):
    """A part's size limit, and whether it is a file (else kept in memory as text)."""

    @property
    def limit(self) -> int:
        """Most bytes the part may hold."""
        ...

    @property
    def file(self) -> bool:
        """Whether the part is spooled to disk."""
        ...


@dataclass
class Form:
    """A parsed upload form: file parts (with the client's file name) and text fields."""

    files: dict[str, str | None] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


class _FormWriter:
    """Callbacks of the streaming multipart parser: each part straight to its own file."""

    def __init__(self, plan: FormPlan, directory: Path) -> None:
        self.plan = plan
        self.directory = directory
        self.form = Form()
        self.ended = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._name = ""
        self._rule: PartRule | None = None
        self._size = 0
        self._handle: BinaryIO | None = None
        self._text = bytearray()
        self._open_parts = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._size = 0
        self._text = bytearray()
        self._open_parts += 1

    def _header_end(self) -> None:
        key = self._field.decode("latin-1").strip().lower()
        self._headers[key] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or not name:
            raise InvalidRequest("every form part needs Content-Disposition: form-data; name=...")
        if name in self.form.files or name in self.form.fields:
            raise InvalidRequest(f"form part {name!r} was sent twice")
        self._name, self._rule = name, self.plan.part(name)
        if self._rule.file:
            raw = params.get(b"filename")
            filename = None if raw is None else raw.decode("utf-8", "replace")
            # Our name, in our directory: the client's file name only tells the format.
            target = self.directory / self.plan.staged_name(name, filename)
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._handle = os.fdopen(descriptor, "wb")
            self.form.files[name] = filename

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._rule is None:
            raise InvalidRequest("the multipart body is malformed")
        self._size += end - start
        if self._size > self._rule.limit:
            raise PayloadTooLarge(
                f"form part {self._name!r} exceeds the limit of {self._rule.limit} bytes"
            )
        if self._handle is not None:
            self._handle.write(data[start:end])
        else:
            self._text.extend(data[start:end])

    def _part_end(self) -> None:
        if self._rule is None:
            raise InvalidRequest("the multipart body is malformed")
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        else:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"form part {self._name!r} is not UTF-8 text") from None
        self._rule = None
        self._open_parts -= 1

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    @property
    def complete(self) -> bool:
        return self.ended and self._open_parts == 0


async def spool_form(request: Request, *, plan: FormPlan, directory: Path, limit: int) -> Form:
    """Stream a ``multipart/form-data`` body into ``directory``, part by part, under the limits.

    Each file part goes straight to its own file (named by ``plan``, created
    exclusively, mode 0600); text parts stay in memory. A part over its limit,
    a body over ``limit``, an unknown or repeated part, and a body cut short
    are all refused while streaming. The caller removes ``directory`` on error.
    """
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("the multipart/form-data Content-Type needs a boundary")
    if _declared_too_large(request, limit):
        raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
    writer = _FormWriter(plan, directory)
    try:
        parser = MultipartParser(boundary, callbacks=writer.callbacks())
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequest("the multipart body is malformed", detail=str(exc)) from None
    finally:
        writer.close()
    if not writer.complete:
        raise InvalidRequest("the multipart body is incomplete (cut short?)")
    return writer.form

"""JSON responses rendered with orjson (fast, and no per-field model validation)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(
    data: Any, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``data`` as an ``application/json`` response."""
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )

"""Check an uploaded ``.tflite`` in a child process before it is sealed.

Parsing an untrusted flatbuffer and loading it in LiteRT happens in a
short-lived process, so a model crafted to crash the C++ loader takes down
that process only, never the gateway. The child answers with JSON on stdout:
the signature to store, or the problems that make the model unservable.

    python -m server.tflite_check FILE
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server import affinity
from server.service.errors import InvalidRequest
from server.spawn import module_command

if TYPE_CHECKING:
    from pathlib import Path

TFLITE_MAGIC = b"TFL3"
CHECK_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class TFLiteCheck:
    """What the child found: the signature to store with the version."""

    signature: dict[str, Any]


def check_tflite(path: Path) -> TFLiteCheck:
    """Validate ``path`` as a servable TFLite model, or raise ``InvalidRequest`` saying why."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_MAGIC:  # noqa: PLR2004 - flatbuffer header
        msg = "the upload is not a TFLite model (no TFL3 identifier); upload a .tflite file"
        raise InvalidRequest(msg)
    with subprocess.Popen(  # noqa: S603 - our own module, a file path we created
        module_command("server.tflite_check", str(path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        affinity.release(child.pid)  # not on a pinned gateway's CPUs
        try:
            stdout, stderr = child.communicate(timeout=CHECK_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise InvalidRequest("the TFLite model took too long to load") from None
    if child.returncode != 0 or not stdout.strip():
        raise InvalidRequest(
            "the TFLite model does not load in LiteRT",
            detail=f"checker exited {child.returncode}: {stderr[-500:]}",
        )
    answer = json.loads(stdout)
    if answer.get("problems"):
        raise InvalidRequest("the model cannot be served: " + "; ".join(answer["problems"]))
    return TFLiteCheck(signature=answer["signature"])


def _child(path: str) -> dict[str, Any]:
    from compress.errors import CompressionError  # noqa: PLC0415 - child process only
    from compress.signature import extract_signature  # noqa: PLC0415
    from compress.tflite_model import read_tflite  # noqa: PLC0415

    with open(path, "rb") as handle:  # noqa: PTH123 - a path string from argv
        content = handle.read()
    try:
        problems = read_tflite(content).problems()
        if problems:
            return {"problems": problems}
        return {"signature": extract_signature(content)}
    except CompressionError as exc:
        return {"problems": [exc.message]}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_child(sys.argv[1])))

"""The gRPC guard serves only what it can guard."""

from __future__ import annotations

from typing import Any

import grpc

from server.grpc.guard import GatewayGuard, GuardedHandlers


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _unary(request: Any, context: Any) -> bytes:
    return b""


async def _client_stream(requests: Any, context: Any) -> bytes:
    return b""


def test_a_method_the_guard_cannot_wrap_is_not_served() -> None:
    """A client-streaming method would run unguarded: it is UNIMPLEMENTED (None) instead."""
    handlers = grpc.method_handlers_generic_handler(
        "test.Service",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Upload": grpc.stream_unary_rpc_method_handler(_client_stream),
        },
    )
    guarded = GuardedHandlers([handlers], GatewayGuard(access=None))  # type: ignore[arg-type]
    unary = guarded.service(_Details("/test.Service/Unary"))
    assert unary is not None
    assert unary.unary_unary is not _unary  # the guard's wrapper, not the servicer itself
    assert guarded.service(_Details("/test.Service/Unary")) is unary  # wrapped once
    assert guarded.service(_Details("/test.Service/Upload")) is None
    assert guarded.service(_Details("/test.Service/Nothing")) is None

"""Who is acting in the current call, for the audit log.

The transports bind ``request_id`` and ``client_addr`` into structlog's
context variables for each call; services combine them with the principal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from storage.audit import Actor

if TYPE_CHECKING:
    from auth import Principal

OPERATOR = "operator"


def current_actor(principal: Principal | None) -> Actor:
    """The actor of the current call; ``None`` is the operator at the command line."""
    if principal is None:
        return named_actor(OPERATOR)
    return named_actor(principal.subject, client_id=principal.client_id)


def named_actor(subject: str | None, *, client_id: str | None = None) -> Actor:
    """An actor known by name only (e.g. a client still authenticating)."""
    context = structlog.contextvars.get_contextvars()
    return Actor(
        subject=subject,
        client_id=client_id,
        request_id=context.get("request_id"),
        client_addr=context.get("client_addr"),
    )

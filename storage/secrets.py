"""Named server-wide secrets (pepper, audit signing key), wrapped by the master key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.crypto.envelope import associated_data, unwrap_key_bytes, wrap_key
from storage.models import ServerSecret

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm import Session

    from storage.crypto.master import MasterKeyRing


def server_secret(
    session: Session, master_keys: MasterKeyRing, name: str, *, create: Callable[[], bytes]
) -> bytes:
    """The secret called ``name``, created by ``create`` and stored wrapped on first use."""
    row = session.get(ServerSecret, name)
    if row is None:
        master = master_keys.primary
        value = create()
        session.add(
            ServerSecret(
                name=name,
                master_key_id=master.key_id,
                wrapped_value=wrap_key(
                    master.key, value, aad=associated_data("server-secret", name, master.key_id)
                ),
            )
        )
        session.flush()
        return value
    master = master_keys.get(row.master_key_id)
    return unwrap_key_bytes(
        master.key,
        row.wrapped_value,
        aad=associated_data("server-secret", name, row.master_key_id),
        what=name,
    )

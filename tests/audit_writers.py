"""A writer process for the concurrent-audit test: N admin actions on its own tenant."""

from __future__ import annotations

import sys

from storage import MasterKey, MasterKeyRing, Registry, make_engine, make_session_factory
from storage.audit import Actor


def main(url: str, key_hex: str, tenant: str, actions: int) -> None:
    """Suspend and resume ``tenant`` ``actions`` times: one audited admin action each."""
    engine = make_engine(url)
    registry = Registry(
        session_factory=make_session_factory(engine),
        master_keys=MasterKeyRing(MasterKey.from_bytes(bytes.fromhex(key_hex))),
    )
    actor = Actor(subject=f"writer-{tenant}")
    for n in range(actions):
        registry.set_tenant_state(tenant, "suspended" if n % 2 == 0 else "active", actor=actor)
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

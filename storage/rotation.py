"""Key rotation: tenant keys and the master key, online, in small resumable transactions.

Only keys are re-wrapped; model segments are never re-encrypted. Every step
is its own short transaction and every update is conditional on the key that
wrapped the row before, so a rotation killed at any point leaves each row
wrapped either by the old key or by the new one, both still present, and the
next run carries on where it stopped. Readers pick keys by the id each
wrapped key names, so they never notice.

Tenant key rotation, for one tenant:

1. *begin*: a new tenant key version becomes the active one (new uploads wrap
   under it) and the older versions are marked ``retired``;
2. *re-wrap*: batches of data keys still under a retired version are
   unwrapped and wrapped by the new version;
3. *destroy*: with the retired versions locked, any data key an upload wrapped
   under them meanwhile is re-wrapped too, then they are deleted. Destruction
   is the last step, so no reader ever finds a data key whose tenant key is
   gone.

Master key rotation re-wraps every row the master key wraps (tenant keys,
server secrets such as the client-secret pepper and the audit checkpoint
key, token signing keys) under a new master key. Processes that unwrap them
need the new key in their key source first; see the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from storage.audit import Actor, AuditLog
from storage.crypto.envelope import unwrap_key_bytes, wrap_key
from storage.db import unit_of_work
from storage.errors import Conflict, KeyUnavailable, NotFound
from storage.keys import KeyHierarchy, server_secret_aad, signing_key_aad
from storage.models import DataKey, ModelVersion, ServerSecret, SigningKey, Tenant, TenantKey

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy.orm import Session, sessionmaker

    from storage.crypto.master import MasterKey, MasterKeyRing

BATCH_SIZE = 100


@dataclass(frozen=True)
class TenantKeyRotation:
    """What one ``rotate_tenant`` run did."""

    tenant: str
    tenant_id: str
    version: int
    """The tenant key version that is now current."""
    destroyed: tuple[int, ...]
    """Versions destroyed by this run (empty if it stopped before the end)."""
    rewrapped: int
    """Data keys re-wrapped by this run."""
    remaining: int
    """Data keys still wrapped by a retired version (a run stopped by ``limit``)."""
    resumed: bool
    """This run finished a rotation an earlier run had begun."""

    @property
    def complete(self) -> bool:
        """Whether no retired version is left (the rotation is over)."""
        return self.remaining == 0


@dataclass(frozen=True)
class MasterKeyRotation:
    """What one ``rotate_master`` run did."""

    key_id: str
    """The master key every row is (being) re-wrapped by."""
    previous: tuple[str, ...]
    """Master key ids rows were wrapped by before this run."""
    rewrapped: dict[str, int] = field(default_factory=dict)
    """Rows re-wrapped by this run, per kind."""
    remaining: int = 0
    """Rows still wrapped by another master key (a run stopped by ``limit``)."""

    @property
    def complete(self) -> bool:
        """Whether every row is wrapped by ``key_id``."""
        return self.remaining == 0


def _notify(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


class KeyRotation:
    """Rotates tenant keys and the master key (operator commands; see the module docstring)."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        master_keys: MasterKeyRing,
        audit: AuditLog,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            msg = "batch_size must be at least 1"
            raise ValueError(msg)
        self._sessions = session_factory
        self._master_keys = master_keys
        self._keys = KeyHierarchy(master_keys)
        self._audit = audit
        self._batch = batch_size

    # --- tenant keys -------------------------------------------------------------------
    def rotate_tenant(
        self,
        name: str,
        *,
        actor: Actor | None = None,
        limit: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> TenantKeyRotation:
        """Give tenant ``name`` a new key version, re-wrap its data keys, destroy the old ones.

        A tenant with retired versions left by an interrupted run has that
        rotation finished instead of a new one begun. ``limit`` stops after
        that many data keys (the rotation stays in progress, every model
        readable); ``progress(done, total)`` is called after each batch.
        """
        try:
            tenant_id, target, retired, resumed = self._begin_tenant(name, actor)
        except IntegrityError:
            msg = f"tenant '{name}' is being rotated by another run; try again"
            raise Conflict(msg) from None
        total = self._count_data_keys(tenant_id, retired)
        done = 0
        _notify(progress, done, total)
        while limit is None or done < limit:
            size = self._batch if limit is None else min(self._batch, limit - done)
            selected, updated = self._rewrap_batch(tenant_id, retired, target, size)
            if not selected:
                break
            done += updated
            _notify(progress, done, total)
        remaining = self._count_data_keys(tenant_id, retired)
        if remaining:
            self._record(
                actor,
                "keys.rotate-tenant",
                f"tenant:{name}",
                tenant_id,
                {"phase": "paused", "version": target, "rewrapped": done, "remaining": remaining},
            )
            return TenantKeyRotation(name, tenant_id, target, (), done, remaining, resumed)
        done += self._destroy_retired(name, tenant_id, target, actor, rewrapped=done)
        return TenantKeyRotation(name, tenant_id, target, retired, done, 0, resumed)

    def _begin_tenant(
        self, name: str, actor: Actor | None
    ) -> tuple[str, int, tuple[int, ...], bool]:
        with unit_of_work(self._sessions, write=True) as session:
            tenant = session.scalar(select(Tenant).where(Tenant.name == name))
            if tenant is None:
                msg = f"tenant '{name}' not found"
                raise NotFound(msg)
            # Locking every version waits for uploads still sealing under the
            # active one (they share-lock it), and for a concurrent rotation.
            rows = session.scalars(
                select(TenantKey)
                .where(TenantKey.tenant_id == tenant.id)
                .order_by(TenantKey.version)
                .with_for_update()
            ).all()
            retired = tuple(r.version for r in rows if r.state == "retired")
            active = [r.version for r in rows if r.state == "active"]
            if retired and active:
                return tenant.id, max(active), retired, True
            target = max((r.version for r in rows), default=0) + 1
            session.add(self._keys.new_tenant_key(tenant_id=tenant.id, version=target))
            old = tuple(r.version for r in rows)
            session.execute(
                update(TenantKey)
                .where(TenantKey.tenant_id == tenant.id, TenantKey.version.in_(old))
                .values(state="retired")
                .execution_options(synchronize_session=False)
            )
            self._audit.append_action(
                session,
                actor,
                "keys.rotate-tenant",
                f"tenant:{name}",
                tenant.id,
                details={"phase": "begun", "version": target, "retiring": list(old)},
            )
            return tenant.id, target, old, False

    def _count_data_keys(self, tenant_id: str, versions: Sequence[int]) -> int:
        with unit_of_work(self._sessions) as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(DataKey)
                    .where(DataKey.tenant_id == tenant_id, DataKey.tenant_key_version.in_(versions))
                )
                or 0
            )

    def _rewrap_batch(
        self, tenant_id: str, retired: Sequence[int], target: int, size: int
    ) -> tuple[int, int]:
        """Re-wrap up to ``size`` data keys in one transaction; ``(selected, updated)``."""
        with unit_of_work(self._sessions, write=True) as session:
            return self._rewrap(session, tenant_id, retired, target, size)

    def _rewrap(
        self,
        session: Session,
        tenant_id: str,
        retired: Sequence[int],
        target: int,
        size: int | None,
    ) -> tuple[int, int]:
        query = (
            select(DataKey, ModelVersion)
            .join(ModelVersion, ModelVersion.id == DataKey.model_version_id)
            .where(DataKey.tenant_id == tenant_id, DataKey.tenant_key_version.in_(retired))
            .order_by(DataKey.id)
        )
        rows = session.execute(query if size is None else query.limit(size)).all()
        if not rows:
            return 0, 0
        tenant_keys = {
            row.version: self._keys.tenant_key(row)
            for row in session.scalars(
                select(TenantKey).where(
                    TenantKey.tenant_id == tenant_id,
                    TenantKey.version.in_([*retired, target]),
                )
            )
        }
        if target not in tenant_keys:
            msg = "the tenant's new key version is missing; the tenant may have been deleted"
            raise KeyUnavailable(msg)
        updated = 0
        for data_key, version in rows:
            old = tenant_keys.get(data_key.tenant_key_version)
            if old is None:
                msg = "a retired tenant key version is missing; its models cannot be re-wrapped"
                raise KeyUnavailable(msg, detail=f"tenant key v{data_key.tenant_key_version}")
            wrapped = KeyHierarchy.rewrap_data_key(
                version, data_key, old=old, new=tenant_keys[target], new_version=target
            )
            result = session.execute(
                update(DataKey)
                .where(
                    DataKey.id == data_key.id,
                    DataKey.tenant_key_version == data_key.tenant_key_version,
                )
                .values(tenant_key_version=target, wrapped_key=wrapped)
                .execution_options(synchronize_session=False)
            )
            updated += _rowcount(result)
        return len(rows), updated

    def _destroy_retired(
        self, name: str, tenant_id: str, target: int, actor: Actor | None, *, rewrapped: int
    ) -> int:
        """Delete the retired versions; returns data keys caught up on the way."""
        with unit_of_work(self._sessions, write=True) as session:
            # FOR UPDATE waits for any upload still sealing under a retired
            # version; once it has committed, its data key is re-wrapped here.
            retired = tuple(
                session.scalars(
                    select(TenantKey.version)
                    .where(TenantKey.tenant_id == tenant_id, TenantKey.state == "retired")
                    .with_for_update()
                )
            )
            if not retired:
                return 0
            _, caught_up = self._rewrap(session, tenant_id, retired, target, None)
            session.execute(
                delete(TenantKey).where(
                    TenantKey.tenant_id == tenant_id, TenantKey.version.in_(retired)
                )
            )
            self._audit.append_action(
                session,
                actor,
                "keys.rotate-tenant",
                f"tenant:{name}",
                tenant_id,
                details={
                    "phase": "completed",
                    "version": target,
                    "destroyed": list(retired),
                    "rewrapped": rewrapped + caught_up,
                },
            )
            return caught_up

    # --- the master key ----------------------------------------------------------------
    def master_key_usage(self) -> dict[str, int]:
        """How many rows each master key id wraps (tenant keys, secrets, signing keys)."""
        usage: dict[str, int] = {}
        with unit_of_work(self._sessions) as session:
            for column in (
                TenantKey.master_key_id,
                ServerSecret.master_key_id,
                SigningKey.master_key_id,
            ):
                for key_id, count in session.execute(select(column, func.count()).group_by(column)):
                    usage[key_id] = usage.get(key_id, 0) + int(count)
        return usage

    def rotate_master(
        self,
        target: MasterKey,
        *,
        actor: Actor | None = None,
        limit: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> MasterKeyRotation:
        """Re-wrap every master-wrapped row under ``target``; idempotent, resumable.

        Rows wrapped by any key of this ring (or by ``target`` itself, left
        alone) are handled; a row naming a master key the ring lacks stops the
        run with ``KeyUnavailable`` naming that key id.
        """
        ring = self._master_keys.with_primary(target)
        audit = AuditLog(session_factory=self._sessions, master_keys=ring)
        usage = self.master_key_usage()
        previous = tuple(sorted(k for k in usage if k != target.key_id))
        total = sum(n for k, n in usage.items() if k != target.key_id)
        for key_id in previous:
            try:
                ring.get(key_id)
            except KeyUnavailable:
                msg = (
                    f"rows are wrapped by master key {key_id}, which is not in the configured "
                    "key source; add it (one key per line) to re-wrap them"
                )
                raise KeyUnavailable(msg) from None
        self._record(
            actor,
            "keys.rotate-master",
            "master-key",
            None,
            {"phase": "begun", "to": target.key_id, "from": list(previous), "rows": total},
            audit=audit,
        )
        done = 0
        counts = {"tenant_keys": 0, "server_secrets": 0, "signing_keys": 0}
        _notify(progress, done, total)
        for kind, step in (
            ("tenant_keys", self._rewrap_tenant_keys),
            ("server_secrets", self._rewrap_server_secrets),
            ("signing_keys", self._rewrap_signing_keys),
        ):
            while limit is None or done < limit:
                size = self._batch if limit is None else min(self._batch, limit - done)
                with unit_of_work(self._sessions, write=True) as session:
                    selected, updated = step(session, ring, target, size)
                if not selected:
                    break
                counts[kind] += updated
                done += updated
                _notify(progress, done, total)
        remaining = sum(n for k, n in self.master_key_usage().items() if k != target.key_id)
        self._record(
            actor,
            "keys.rotate-master",
            "master-key",
            None,
            {
                "phase": "completed" if remaining == 0 else "paused",
                "to": target.key_id,
                "rewrapped": counts,
                "remaining": remaining,
            },
            audit=audit,
        )
        return MasterKeyRotation(target.key_id, previous, counts, remaining)

    def _rewrap_tenant_keys(
        self, session: Session, ring: MasterKeyRing, target: MasterKey, size: int
    ) -> tuple[int, int]:
        rows = session.scalars(
            select(TenantKey)
            .where(TenantKey.master_key_id != target.key_id)
            .order_by(TenantKey.id)
            .limit(size)
        ).all()
        keys = KeyHierarchy(ring)
        updated = 0
        for row in rows:
            result = session.execute(
                update(TenantKey)
                .where(TenantKey.id == row.id, TenantKey.master_key_id == row.master_key_id)
                .values(
                    master_key_id=target.key_id, wrapped_key=keys.rewrap_tenant_key(row, target)
                )
                .execution_options(synchronize_session=False)
            )
            updated += _rowcount(result)
        return len(rows), updated

    @staticmethod
    def _rewrap_server_secrets(
        session: Session, ring: MasterKeyRing, target: MasterKey, size: int
    ) -> tuple[int, int]:
        rows = session.scalars(
            select(ServerSecret)
            .where(ServerSecret.master_key_id != target.key_id)
            .order_by(ServerSecret.name)
            .limit(size)
        ).all()
        updated = 0
        for row in rows:
            value = unwrap_key_bytes(
                ring.get(row.master_key_id).key,
                row.wrapped_value,
                aad=server_secret_aad(row.name, row.master_key_id),
                what=row.name,
            )
            wrapped = wrap_key(target.key, value, aad=server_secret_aad(row.name, target.key_id))
            result = session.execute(
                update(ServerSecret)
                .where(
                    ServerSecret.name == row.name,
                    ServerSecret.master_key_id == row.master_key_id,
                )
                .values(master_key_id=target.key_id, wrapped_value=wrapped)
                .execution_options(synchronize_session=False)
            )
            updated += _rowcount(result)
        return len(rows), updated

    @staticmethod
    def _rewrap_signing_keys(
        session: Session, ring: MasterKeyRing, target: MasterKey, size: int
    ) -> tuple[int, int]:
        rows = session.scalars(
            select(SigningKey)
            .where(SigningKey.master_key_id != target.key_id)
            .order_by(SigningKey.kid)
            .limit(size)
        ).all()
        updated = 0
        for row in rows:
            private = unwrap_key_bytes(
                ring.get(row.master_key_id).key,
                row.wrapped_private_key,
                aad=signing_key_aad(row.kid, row.master_key_id),
                what="signing key",
            )
            wrapped = wrap_key(target.key, private, aad=signing_key_aad(row.kid, target.key_id))
            result = session.execute(
                update(SigningKey)
                .where(SigningKey.kid == row.kid, SigningKey.master_key_id == row.master_key_id)
                .values(master_key_id=target.key_id, wrapped_private_key=wrapped)
                .execution_options(synchronize_session=False)
            )
            updated += _rowcount(result)
        return len(rows), updated

    # --- audit -------------------------------------------------------------------------
    def _record(
        self,
        actor: Actor | None,
        action: str,
        resource: str,
        tenant_id: str | None,
        details: dict[str, Any],
        *,
        audit: AuditLog | None = None,
    ) -> None:
        """One audit entry in its own transaction (ids and counts only, never key material)."""
        with unit_of_work(self._sessions, write=True) as session:
            (audit or self._audit).append_action(
                session, actor, action, resource, tenant_id, details=details
            )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)

"""The registry: the Python API every use case goes through.

Each public method is one unit of work. Tenant-owned data is reached only
through a ``TenantRepository`` built for the caller's tenant; tenants
themselves are the one table read without a tenant filter, because they are
the scope.
"""

from __future__ import annotations

import re
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.exc import IntegrityError

from storage.audit import Actor, AuditLog
from storage.crypto.envelope import open_segments, seal_segments
from storage.db import unit_of_work
from storage.errors import Conflict, InvalidInput, NotFound
from storage.keys import KeyHierarchy, segment_aad_fields
from storage.models import ModelVersion, SealedSegment, Tenant, TenantKey
from storage.records import (
    ModelInfo,
    ModelVersionInfo,
    TenantInfo,
    batching_of,
    store_batching,
    tenant_info,
    version_info,
)
from storage.repositories import VERSION_NOT_FOUND, TenantRepository
from storage.streams import COMPRESSIONS, HashingReader, decoded_chunks, plaintext_chunks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy.orm import Session, sessionmaker

    from storage.batching import BatchSettings
    from storage.crypto.master import MasterKeyRing
    from storage.models import Model

SEGMENT_SIZE = 1 << 20
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LABEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
TENANT_NOT_FOUND = "tenant '{name}' not found"


def _check(pattern: re.Pattern[str], value: str, what: str) -> None:
    if not pattern.fullmatch(value):
        msg = f"invalid {what} {value!r}: expected {pattern.pattern}"
        raise InvalidInput(msg)


class Registry:
    """Tenants, models and sealed model versions, stored in one database."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        master_keys: MasterKeyRing,
        segment_size: int = SEGMENT_SIZE,
        compression: str = "zstd",
        audit: AuditLog | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            msg = f"unknown compression {compression!r}"
            raise InvalidInput(msg)
        self._sessions = session_factory
        self._keys = KeyHierarchy(master_keys)
        self._segment_size = segment_size
        self._compression = compression
        self.audit = audit or AuditLog(session_factory=session_factory, master_keys=master_keys)

    # --- tenants ----------------------------------------------------------
    def create_tenant(self, name: str, *, actor: Actor | None = None) -> TenantInfo:
        """Create a tenant with its first key (version 1)."""
        _check(TENANT_NAME, name, "tenant name")
        try:
            with unit_of_work(self._sessions, write=True) as session:
                tenant = Tenant(name=name)
                session.add(tenant)
                session.flush()
                session.add(self._keys.new_tenant_key(tenant_id=tenant.id, version=1))
                self.audit.append_action(
                    session, actor, "tenant.create", f"tenant:{name}", tenant.id
                )
                return tenant_info(tenant)
        except IntegrityError:
            msg = f"tenant '{name}' already exists"
            raise Conflict(msg) from None

    def get_tenant(self, name: str) -> TenantInfo:
        """A tenant by name."""
        with unit_of_work(self._sessions) as session:
            return tenant_info(self._tenant_by_name(session, name))

    def get_tenant_by_id(self, tenant_id: str) -> TenantInfo:
        """A tenant by id (what tokens carry)."""
        with unit_of_work(self._sessions) as session:
            row = session.get(Tenant, tenant_id)
            if row is None:
                raise NotFound(TENANT_NOT_FOUND.format(name=tenant_id))
            return tenant_info(row)

    def list_tenants(self) -> list[TenantInfo]:
        """Every tenant, by name."""
        with unit_of_work(self._sessions) as session:
            rows = session.scalars(select(Tenant).order_by(Tenant.name))
            return [tenant_info(row) for row in rows]

    def set_tenant_state(self, name: str, state: str, *, actor: Actor | None = None) -> TenantInfo:
        """Suspend (``suspended``) or reinstate (``active``) a tenant."""
        if state not in ("active", "suspended"):
            msg = f"invalid tenant state {state!r}"
            raise InvalidInput(msg)
        with unit_of_work(self._sessions, write=True) as session:
            row = self._tenant_by_name(session, name)
            row.state = state
            action = "tenant.suspend" if state == "suspended" else "tenant.resume"
            self.audit.append_action(session, actor, action, f"tenant:{name}", row.id)
            return tenant_info(row)

    def delete_tenant(self, name: str, *, actor: Actor | None = None) -> None:
        """Delete a tenant: its keys first, then every row it owns.

        Destroying the tenant keys is what makes copies of its sealed rows
        unreadable (crypto-shredding); the cascade removes the rest.
        """
        with unit_of_work(self._sessions, write=True) as session:
            row = self._tenant_by_name(session, name)
            session.execute(delete(TenantKey).where(TenantKey.tenant_id == row.id))
            session.execute(delete(Tenant).where(Tenant.id == row.id))
            self.audit.append_action(
                session,
                actor,
                "tenant.delete",
                f"tenant:{name}",
                row.id,
                details={"keys": "destroyed"},
            )

    @staticmethod
    def _tenant_by_name(session: Session, name: str) -> Tenant:
        row = session.scalar(select(Tenant).where(Tenant.name == name))
        if row is None:
            raise NotFound(TENANT_NOT_FOUND.format(name=name))
        return row

    # --- models and versions ------------------------------------------------
    def put_version(
        self,
        *,
        tenant_id: str,
        model_name: str,
        source: IO[bytes],
        format: str,  # noqa: A002 - the registry's own word for it
        signature: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
        state: str = "ready",
        max_bytes: int | None = None,
        batching: BatchSettings | None = None,
        actor: Actor | None = None,
        first: Callable[[Session], None] | None = None,
        then: Callable[[Session, ModelVersionInfo], None] | None = None,
    ) -> ModelVersionInfo:
        """Seal the bytes read from ``source`` as the next version of ``model_name``.

        Streams: memory stays bounded by a few segments whatever the model's
        size. The whole version (row, data key, segments) commits in one
        transaction, so a failure part-way leaves nothing behind.
        ``batching`` is the version's own batching settings (``None``: the
        server's defaults). ``first`` runs in that same transaction before
        anything is written (to lock what ``then`` will change, in the order
        other writers lock it), ``then`` once the version is written (what
        else must commit with it, such as the job that made it); whatever
        either raises rolls the version back too.
        """
        _check(MODEL_NAME, model_name, "model name")
        try:
            with unit_of_work(self._sessions, write=True) as session:
                if first is not None:
                    first(session)
                repo = TenantRepository(session, tenant_id)
                model = repo.find_model(model_name) or repo.add_model(model_name)
                version = ModelVersion(
                    tenant_id=tenant_id,
                    model_id=model.id,
                    version=repo.next_version_number(model),
                    state=state,
                    format=format,
                    signature=signature or {},
                    report=report,
                    size_plain=0,
                    size_stored=0,
                    sha256="",
                    compression=self._compression,
                    segment_size=self._segment_size,
                    segment_count=0,
                )
                store_batching(version, batching)
                session.add(version)
                session.flush()
                key, key_row = self._keys.new_data_key(repo, version)
                session.add(key_row)
                self._write_segments(session, version, key, HashingReader(source, limit=max_bytes))
                self.audit.append_action(
                    session,
                    actor,
                    "model.upload",
                    f"model:{model_name}@{version.version}",
                    tenant_id,
                    details={
                        "format": format,
                        "size": version.size_plain,
                        "sha256": version.sha256,
                        "state": state,
                        **({"batching": batching.to_dict()} if batching else {}),
                    },
                )
                info = version_info(version, model, {})
                if then is not None:
                    then(session, info)
                return info
        except IntegrityError:
            msg = f"model '{model_name}' changed during the upload; try again"
            raise Conflict(msg) from None

    def _write_segments(
        self, session: Session, version: ModelVersion, key: bytes, reader: HashingReader
    ) -> None:
        chunks = plaintext_chunks(reader, compression=self._compression, size=self._segment_size)
        table = SealedSegment.__table__
        assert isinstance(table, Table)  # noqa: S101 - narrows the type for mypy
        count = stored = 0
        for index, nonce, ciphertext in seal_segments(
            key, chunks, aad_fields=segment_aad_fields(version)
        ):
            # Core inserts: ORM objects would keep every segment in the identity map.
            session.execute(
                insert(table),
                [
                    {
                        "model_version_id": version.id,
                        "idx": index,
                        "tenant_id": version.tenant_id,
                        "nonce": nonce,
                        "ciphertext": ciphertext,
                    }
                ],
            )
            count += 1
            stored += len(ciphertext)
        version.segment_count = count
        version.size_stored = stored
        version.size_plain = reader.size
        version.sha256 = reader.sha256.hexdigest()

    def list_models(self, tenant_id: str) -> list[ModelInfo]:
        """The tenant's models with their versions and labels."""
        with unit_of_work(self._sessions) as session:
            repo = TenantRepository(session, tenant_id)
            return [self._model_info(repo, model) for model in repo.list_models()]

    def get_model(self, tenant_id: str, model_name: str) -> ModelInfo:
        """One model of the tenant with its versions and labels."""
        with unit_of_work(self._sessions) as session:
            repo = TenantRepository(session, tenant_id)
            return self._model_info(repo, repo.get_model(model_name))

    @staticmethod
    def _model_info(repo: TenantRepository, model: Model) -> ModelInfo:
        labels = repo.labels_of(model)
        versions = tuple(version_info(v, model, labels) for v in repo.list_versions(model))
        return ModelInfo(
            id=model.id,
            name=model.name,
            created_at=model.created_at,
            versions=versions,
            labels=labels,
        )

    def resolve(
        self, tenant_id: str, model_name: str, ref: int | str | None = None
    ) -> ModelVersionInfo:
        """Find a version by number, by label, or (``None``) the latest ready one."""
        with unit_of_work(self._sessions) as session:
            repo = TenantRepository(session, tenant_id)
            model = repo.get_model(model_name)
            row = self._resolve_row(repo, model, ref)
            return version_info(row, model, repo.labels_of(model))

    @staticmethod
    def _resolve_row(repo: TenantRepository, model: Model, ref: int | str | None) -> ModelVersion:
        if ref is None:
            return repo.latest_ready_version(model)
        if isinstance(ref, int) or ref.isdigit():
            return repo.get_version(model, int(ref))
        label = repo.find_label(model, ref)
        if label is None:
            raise NotFound(VERSION_NOT_FOUND.format(name=model.name, ref=ref))
        return repo.get_version(model, label.version)

    def set_label(
        self,
        tenant_id: str,
        model_name: str,
        label: str,
        version: int,
        *,
        actor: Actor | None = None,
    ) -> None:
        """Point ``label`` at an existing version of the model."""
        _check(LABEL_NAME, label, "label")
        with unit_of_work(self._sessions, write=True) as session:
            repo = TenantRepository(session, tenant_id)
            model = repo.get_model(model_name)
            repo.get_version(model, version)
            repo.set_label(model, label, version)
            self.audit.append_action(
                session,
                actor,
                "model.label",
                f"model:{model_name}:{label}",
                tenant_id,
                details={"version": version},
            )

    def delete_label(
        self, tenant_id: str, model_name: str, label: str, *, actor: Actor | None = None
    ) -> None:
        """Remove a label from a model."""
        with unit_of_work(self._sessions, write=True) as session:
            repo = TenantRepository(session, tenant_id)
            repo.delete_label(repo.get_model(model_name), label)
            self.audit.append_action(
                session, actor, "model.unlabel", f"model:{model_name}:{label}", tenant_id
            )

    def set_batching(
        self,
        tenant_id: str,
        model_name: str,
        version: int,
        batching: BatchSettings | None,
        *,
        actor: Actor | None = None,
    ) -> ModelVersionInfo:
        """Replace a version's batching settings (``None``: back to the server's defaults).

        Workers read them when they load the version, so a change reaches a
        worker that already holds it at the latest when it next loads it.
        """
        with unit_of_work(self._sessions, write=True) as session:
            repo = TenantRepository(session, tenant_id)
            model = repo.get_model(model_name)
            row = repo.get_version(model, version)
            before = batching_of(row)
            store_batching(row, batching)
            after = batching_of(row)
            self.audit.append_action(
                session,
                actor,
                "model.batching",
                f"model:{model_name}@{version}",
                tenant_id,
                details={
                    "before": before.to_dict() if before else None,
                    "after": after.to_dict() if after else None,
                },
            )
            session.flush()
            return version_info(row, model, repo.labels_of(model))

    def version_batching(self, tenant_id: str, version_id: str) -> BatchSettings | None:
        """A version's batching settings by its id, inside one tenant (what a worker reads)."""
        with unit_of_work(self._sessions) as session:
            return batching_of(TenantRepository(session, tenant_id).get_version_by_id(version_id))

    def delete_version(
        self, tenant_id: str, model_name: str, version: int, *, actor: Actor | None = None
    ) -> None:
        """Delete one version (its key, segments and labels); the last one takes the model."""
        with unit_of_work(self._sessions, write=True) as session:
            repo = TenantRepository(session, tenant_id)
            model = repo.get_model(model_name)
            repo.delete_version(repo.get_version(model, version))
            if not repo.list_versions(model):
                repo.delete_model(model)
            self.audit.append_action(
                session, actor, "model.delete", f"model:{model_name}@{version}", tenant_id
            )

    def delete_model(self, tenant_id: str, model_name: str, *, actor: Actor | None = None) -> None:
        """Delete a model with every version."""
        with unit_of_work(self._sessions, write=True) as session:
            repo = TenantRepository(session, tenant_id)
            repo.delete_model(repo.get_model(model_name))
            self.audit.append_action(
                session, actor, "model.delete", f"model:{model_name}", tenant_id
            )

    def open_version(self, tenant_id: str, version_id: str) -> bytes:
        """The verified plaintext of a version, by its id, inside one tenant."""
        return b"".join(self.iter_version(tenant_id, version_id))

    def iter_version(self, tenant_id: str, version_id: str) -> Iterator[bytes]:
        """Stream the plaintext of a version; raises at the end if it fails to verify.

        Each chunk is authenticated by AES-GCM before it is yielded; the
        size and SHA-256 of the whole are checked after the last one.
        """
        with unit_of_work(self._sessions) as session:
            repo = TenantRepository(session, tenant_id)
            version, key_row, tenant_key_row = repo.sealed_header(version_id)
            key = self._keys.data_key(version, key_row, tenant_key_row)
            rows = session.execute(
                select(SealedSegment.idx, SealedSegment.nonce, SealedSegment.ciphertext)
                .where(
                    SealedSegment.tenant_id == tenant_id,
                    SealedSegment.model_version_id == version.id,
                )
                .order_by(SealedSegment.idx)
                .execution_options(yield_per=4)
            )
            try:
                segments = ((int(i), bytes(n), bytes(c)) for i, n, c in rows)
                plain = open_segments(
                    key,
                    segments,
                    count=version.segment_count,
                    aad_fields=segment_aad_fields(version),
                )
                yield from decoded_chunks(
                    plain,
                    compression=version.compression,
                    sha256=version.sha256,
                    size=version.size_plain,
                )
            finally:
                # A server-side cursor (PostgreSQL) must be closed even when
                # verification stops the stream early.
                rows.close()

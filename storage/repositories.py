"""Tenant-scoped data access.

A ``TenantRepository`` is built for exactly one tenant and adds that tenant to
every query it runs. There is no method that reads tenant data without it, so
a missed ``WHERE tenant_id = ...`` cannot happen in the layers above. It
never commits: the unit of work around it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import and_, delete, func, select

from storage.errors import NotFound
from storage.models import DataKey, Model, ModelLabel, ModelVersion, TenantKey

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# One text for "missing" and for "someone else's": callers cannot tell them apart.
MODEL_NOT_FOUND = "model '{name}' not found"
VERSION_NOT_FOUND = "model '{name}' has no version '{ref}'"


class TenantRepository:
    """Queries over one tenant's models, versions, labels and keys."""

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    # --- models -----------------------------------------------------------
    def find_model(self, name: str) -> Model | None:
        """The tenant's model called ``name``, if any."""
        return self.session.scalar(
            select(Model).where(Model.tenant_id == self.tenant_id, Model.name == name)
        )

    def get_model(self, name: str) -> Model:
        """The tenant's model called ``name``, or ``NotFound``."""
        model = self.find_model(name)
        if model is None:
            raise NotFound(MODEL_NOT_FOUND.format(name=name))
        return model

    def add_model(self, name: str) -> Model:
        """Create a model row in this tenant."""
        model = Model(tenant_id=self.tenant_id, name=name)
        self.session.add(model)
        self.session.flush()
        return model

    def list_models(self) -> list[Model]:
        """Every model of the tenant, by name."""
        return list(
            self.session.scalars(
                select(Model).where(Model.tenant_id == self.tenant_id).order_by(Model.name)
            )
        )

    def delete_model(self, model: Model) -> None:
        """Delete a model and (by cascade) its versions, keys and segments."""
        self.session.execute(
            delete(Model).where(Model.tenant_id == self.tenant_id, Model.id == model.id)
        )

    # --- versions ---------------------------------------------------------
    def next_version_number(self, model: Model) -> int:
        """One more than the highest version the model ever had in the table."""
        highest = self.session.scalar(
            select(func.max(ModelVersion.version)).where(
                ModelVersion.tenant_id == self.tenant_id, ModelVersion.model_id == model.id
            )
        )
        return (highest or 0) + 1

    def list_versions(self, model: Model) -> list[ModelVersion]:
        """Every version of ``model``, oldest first."""
        return list(
            self.session.scalars(
                select(ModelVersion)
                .where(ModelVersion.tenant_id == self.tenant_id, ModelVersion.model_id == model.id)
                .order_by(ModelVersion.version)
            )
        )

    def get_version(self, model: Model, version: int) -> ModelVersion:
        """Version ``version`` of ``model``, or ``NotFound``."""
        row = self.session.scalar(
            select(ModelVersion).where(
                ModelVersion.tenant_id == self.tenant_id,
                ModelVersion.model_id == model.id,
                ModelVersion.version == version,
            )
        )
        if row is None:
            raise NotFound(VERSION_NOT_FOUND.format(name=model.name, ref=version))
        return row

    def get_version_by_id(self, version_id: str) -> ModelVersion:
        """A version of any of the tenant's models by its id, or ``NotFound``."""
        row = self.session.scalar(
            select(ModelVersion).where(
                ModelVersion.tenant_id == self.tenant_id, ModelVersion.id == version_id
            )
        )
        if row is None:
            raise NotFound("model version not found")
        return row

    def latest_ready_version(self, model: Model) -> ModelVersion:
        """The newest ready version: what a call without a version gets."""
        row = self.session.scalar(
            select(ModelVersion)
            .where(
                ModelVersion.tenant_id == self.tenant_id,
                ModelVersion.model_id == model.id,
                ModelVersion.state == "ready",
            )
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound(VERSION_NOT_FOUND.format(name=model.name, ref="latest"))
        return row

    def delete_version(self, version: ModelVersion) -> None:
        """Delete one version; its data key, segments and labels go with it."""
        self.session.execute(
            delete(ModelVersion).where(
                ModelVersion.tenant_id == self.tenant_id, ModelVersion.id == version.id
            )
        )

    # --- labels -----------------------------------------------------------
    def labels_of(self, model: Model) -> dict[str, int]:
        """``{label: version}`` for ``model``."""
        rows = self.session.execute(
            select(ModelLabel.label, ModelLabel.version).where(
                ModelLabel.tenant_id == self.tenant_id, ModelLabel.model_id == model.id
            )
        )
        return {str(label): int(version) for label, version in rows}

    def find_label(self, model: Model, label: str) -> ModelLabel | None:
        """The label row, if the model has that label."""
        return self.session.scalar(
            select(ModelLabel).where(
                ModelLabel.tenant_id == self.tenant_id,
                ModelLabel.model_id == model.id,
                ModelLabel.label == label,
            )
        )

    def set_label(self, model: Model, label: str, version: int) -> None:
        """Point ``label`` at ``version``, creating or moving it."""
        row = self.find_label(model, label)
        if row is None:
            self.session.add(
                ModelLabel(
                    tenant_id=self.tenant_id, model_id=model.id, label=label, version=version
                )
            )
        else:
            row.version = version
        self.session.flush()

    def delete_label(self, model: Model, label: str) -> None:
        """Remove ``label``; ``NotFound`` when the model has no such label."""
        row = self.find_label(model, label)
        if row is None:
            raise NotFound(VERSION_NOT_FOUND.format(name=model.name, ref=label))
        self.session.delete(row)

    # --- keys ---------------------------------------------------------------
    def active_tenant_key(self) -> TenantKey:
        """The tenant key that wraps new data keys (the highest active version)."""
        row = self.session.scalar(
            select(TenantKey)
            .where(TenantKey.tenant_id == self.tenant_id, TenantKey.state == "active")
            .order_by(TenantKey.version.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound("tenant has no active key")
        return row

    def sealed_header(
        self, version_id: str
    ) -> tuple[ModelVersion, DataKey | None, TenantKey | None]:
        """A version with the data key and tenant key version it names, in one query.

        Unsealing is on the model-load path of every worker, so the three rows
        come back in one round trip; missing keys come back as ``None``.
        """
        row = self.session.execute(
            select(ModelVersion, DataKey, TenantKey)
            .outerjoin(
                DataKey,
                and_(
                    DataKey.model_version_id == ModelVersion.id,
                    DataKey.tenant_id == self.tenant_id,
                ),
            )
            .outerjoin(
                TenantKey,
                and_(
                    TenantKey.tenant_id == self.tenant_id,
                    TenantKey.version == DataKey.tenant_key_version,
                ),
            )
            .where(ModelVersion.tenant_id == self.tenant_id, ModelVersion.id == version_id)
        ).one_or_none()
        if row is None:
            raise NotFound("model version not found")
        return row[0], row[1], row[2]

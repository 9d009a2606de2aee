"""Dynamic batching settings per model version (NULL: the server's default).

Three nullable columns, so every existing version keeps following the
server's settings. SQLite cannot add a table constraint to an existing
table without rebuilding it (and rebuilding model_versions would cascade
into its keys and segments), so there each range check rides on its column
as a named column constraint; PostgreSQL gets the same named checks as table
constraints.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (
    ("batch_enabled", "BOOLEAN", sa.Boolean(), "false: batching off for this version", None),
    (
        "batch_max_size",
        "INTEGER",
        sa.Integer(),
        "most rows per invocation",
        "batch_max_size BETWEEN 1 AND 1024",
    ),
    (
        "batch_max_delay_ms",
        "FLOAT",
        sa.Float(),
        "longest a call waits to fill a batch",
        "batch_max_delay_ms BETWEEN 0 AND 1000",
    ),
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for name, sql_type, column_type, comment, check in COLUMNS:
        if sqlite:
            constraint = f" CONSTRAINT ck_model_versions_{name} CHECK ({check})" if check else ""
            op.execute(f"ALTER TABLE model_versions ADD COLUMN {name} {sql_type}{constraint}")
            continue
        op.add_column(
            "model_versions", sa.Column(name, column_type, nullable=True, comment=comment)
        )
        if check:
            op.create_check_constraint(op.f(f"ck_model_versions_{name}"), "model_versions", check)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for name, _, _, _, check in reversed(COLUMNS):
        if sqlite:
            # SQLite (3.35+) drops a column together with its own column constraint.
            op.execute(f"ALTER TABLE model_versions DROP COLUMN {name}")
            continue
        if check:
            op.drop_constraint(op.f(f"ck_model_versions_{name}"), "model_versions", type_="check")
        op.drop_column("model_versions", name)

"""Alembic environment and revisions for the sealserve schema."""

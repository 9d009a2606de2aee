"""Alembic environment and revisions for the sealserve schema."""

HEAD = "0005"
"""The newest revision. Every CLI command and server start checks the database
against it; reading it here rather than from the revision files spares them
importing Alembic (0.2 s). A test holds it equal to Alembic's own head."""

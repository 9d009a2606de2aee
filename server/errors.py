"""Errors the server itself raises (configuration and start-up)."""

from __future__ import annotations


class StartupError(Exception):
    """The server cannot start as configured; the message says what to do."""

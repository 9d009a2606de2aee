"""Envelope encryption: master key → tenant keys → data keys → model segments."""

"""The sealserve gateway, workers and CLI: everything that composes the siblings."""

"""The REST adapter (FastAPI): HTTP in, service calls, HTTP out."""

"""REST routers, one module per area."""

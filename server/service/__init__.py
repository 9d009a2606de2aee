"""Framework-free use cases shared by the REST and gRPC adapters."""

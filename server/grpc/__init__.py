"""The gRPC adapter (grpc.aio): protobuf in, service calls, protobuf out."""

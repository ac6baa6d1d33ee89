"""The gRPC service: server, job store, worker supervisor, CLI client."""

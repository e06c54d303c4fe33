"""Source: what the model repository holds. Knows nothing of sessions or gRPC."""

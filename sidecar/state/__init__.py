"""State store: the persisted serving state, pins and quarantine, and the
append-only event log. Knows nothing of gRPC or sessions."""

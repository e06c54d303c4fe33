"""Manager: per-version state machine, the serving state, handles and drain.

Knows nothing of protobuf. Everything that moves a version between the sets
"on disk", "loaded" and "serving" goes through `ModelManager`.
"""

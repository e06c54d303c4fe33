"""Guard: per-version outcome windows, and the rules that roll a version back,
promote a canary or reject a shadow. Knows nothing of gRPC or files."""

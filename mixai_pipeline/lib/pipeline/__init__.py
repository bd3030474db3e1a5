"""Per-job work of the audio pipeline stages, on the object store and plain data (no Dagster, no SQL)."""

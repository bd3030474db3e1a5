"""Storage the science writes to: the object store and the application database (no Dagster)."""

"""The upload contract: manifests, the inbox layout, audio probing and registration."""

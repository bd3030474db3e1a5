"""mixai_pipeline: the Dagster code location of the MIXAI music-AI data and ML platform."""

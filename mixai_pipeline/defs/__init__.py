"""Dagster definitions by domain; each domain folder is picked up by ``load_from_defs_folder``."""

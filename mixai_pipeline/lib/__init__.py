"""Pure logic of the platform: no Dagster imports here, so everything is testable on its own."""

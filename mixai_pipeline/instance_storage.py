"""Dagster's instance storage (runs, event logs, schedules and sensor cursors) on PostgreSQL.

``dagster.yaml`` names this class so that every Dagster process (webserver, daemon, run workers, and
``dg check defs`` run bare in the checkout) lands on the same database: ``MIXAI_DAGSTER_PG_URL`` when
set, else database ``dagster`` next to the app database, else the embedded server, started on demand.
"""

from dagster_postgres import DagsterPostgresStorage


class MixaiPostgresStorage(DagsterPostgresStorage):
    @classmethod
    def config_type(cls):
        return {}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        from mixai_pipeline.runtime import dagster_database_url

        return cls(postgres_url=dagster_database_url(), inst_data=inst_data)

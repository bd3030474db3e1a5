"""The code location loads, and `dg check defs` is clean, as the UI and the daemon will see it."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from mixai_pipeline.definitions import defs
from mixai_pipeline.resources.embedded_postgres import stop_embedded_postgres
from mixai_pipeline.settings import PROJECT_ROOT


def test_definitions_hold_the_ingestion_slice():
    definitions = defs()
    assert definitions.resolve_assets_def("uploads").partitions_def.timezone == "Asia/Tokyo"
    assert definitions.resolve_sensor_def("new_uploads_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert definitions.resolve_job_def("ingest_uploads_job") is not None
    assert {"database", "object_store", "tracking"} <= set(definitions.resources)
    [checks] = [c for c in definitions.asset_checks if "uploads_registered_whole" in str(c.check_keys)]
    assert next(iter(checks.check_specs)).blocking


def test_dg_check_defs_is_clean(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MIXAI_DATABASE_URL", "MIXAI_DAGSTER_PG_URL", "DAGSTER_HOME")}
    env["MIXAI_HOME"] = str(tmp_path)  # its instance storage starts an embedded server of its own here
    try:
        result = subprocess.run([str(Path(sys.executable).with_name("dg")), "check", "defs"], cwd=PROJECT_ROOT,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "All definitions loaded successfully" in result.stdout + result.stderr
    finally:
        stop_embedded_postgres(tmp_path / "pg")

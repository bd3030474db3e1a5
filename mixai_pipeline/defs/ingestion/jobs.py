"""Jobs of the ingestion domain."""

import dagster as dg

from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.defs.partitions import daily_upload_partitions

uploads_job = dg.define_asset_job(
    "ingest_uploads_job", selection=[uploads], partitions_def=daily_upload_partitions,
    description="Register one day's uploads (what new_uploads_sensor launches).")

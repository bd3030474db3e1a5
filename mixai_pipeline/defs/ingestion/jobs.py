"""Jobs of the ingestion domain."""

import dagster as dg

from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.defs.partitions import daily_upload_partitions

# The main job: a day's uploads registered, then everything the audio pipeline derives from them.
uploads_job = dg.define_asset_job(
    "ingest_uploads_job", selection=dg.AssetSelection.assets(uploads).downstream(),
    partitions_def=daily_upload_partitions,
    description="Register one day's uploads and run them through the audio pipeline "
                "(what new_uploads_sensor launches).")

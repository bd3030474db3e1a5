"""Every Sunday 04:00 Asia/Tokyo: the week that just ended is trained."""

import dagster as dg

from mixai_pipeline.defs.training.assets import training_set
from mixai_pipeline.defs.training.partitions import weekly_training_partitions

weekly_training_job = dg.define_asset_job(
    "weekly_training_job", selection=dg.AssetSelection.assets(training_set).downstream(),
    partitions_def=weekly_training_partitions,
    description="The week's consented training set and everything trained from it.")

# A schedule built from the partitioned job fires when each partition ends: Sunday 04:00 in Tokyo.
weekly_training_schedule = dg.build_schedule_from_partitioned_job(
    weekly_training_job, default_status=dg.DefaultScheduleStatus.RUNNING)

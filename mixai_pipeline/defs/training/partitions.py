"""Training runs weekly: a partition is the week ending Sunday 04:00 Asia/Tokyo (seed 000 §10)."""

import dagster as dg

from mixai_pipeline.settings import BUSINESS_TIMEZONE

weekly_training_partitions = dg.WeeklyPartitionsDefinition(
    start_date="2025-01-05", timezone=BUSINESS_TIMEZONE, day_offset=0, hour_offset=4)

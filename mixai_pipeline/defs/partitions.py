"""Partitions shared across domains: every upload-derived asset is partitioned by Asia/Tokyo day."""

import dagster as dg

from mixai_pipeline.settings import BUSINESS_TIMEZONE

# end_offset=1: today's partition exists while today's uploads arrive.
daily_upload_partitions = dg.DailyPartitionsDefinition(
    start_date="2025-01-01", timezone=BUSINESS_TIMEZONE, end_offset=1)

"""Every day at 03:30 Asia/Tokyo: the retention purge of the day that just ended."""

from datetime import timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from mixai_pipeline.defs.governance.jobs import retention_purge_job
from mixai_pipeline.settings import BUSINESS_TIMEZONE


@dg.schedule(job=retention_purge_job, cron_schedule="30 3 * * *", execution_timezone=BUSINESS_TIMEZONE,
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Purges yesterday's expiries (Tokyo days) and anything left from before (a released "
                         "legal hold): items expiring late in a day are caught the next morning, never early.")
def retention_purge_schedule(context: dg.ScheduleEvaluationContext):
    day = context.scheduled_execution_time.astimezone(ZoneInfo(BUSINESS_TIMEZONE)).date() - timedelta(days=1)
    return dg.RunRequest(partition_key=day.isoformat(), run_key=f"retention:{day.isoformat()}",
                         run_config={"ops": {"retention_purge": {"config": {"catch_up": True}}}})

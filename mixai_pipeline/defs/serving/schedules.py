"""Hourly: the online metrics of every served model, so that the UI's plots have a point per hour."""

import dagster as dg

model_metrics_job = dg.define_asset_job("model_metrics_job", selection=dg.AssetSelection.assets("model_metrics"),
                                        description="Online metrics of the served models (model_metrics).")

model_metrics_schedule = dg.ScheduleDefinition(
    name="model_metrics_schedule", job=model_metrics_job, cron_schedule="5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="model_metrics every hour at :05 (1h, 1d, 7d and 30d windows ending then).")

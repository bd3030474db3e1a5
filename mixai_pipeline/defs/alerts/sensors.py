"""``run_failure_alert_sensor``: every failed run of the code location becomes a critical alert in
#mixai-ops-alerts (job, run id, partition, failed steps, the error), so nobody has to watch the Dagster UI.

It must never fail itself because the webhook does: ``Alerts.send`` only queues (``lib/serving/alerts.py``),
and gathering the details is best-effort — whatever cannot be read, the alert still goes out with the rest.
"""

from __future__ import annotations

import dagster as dg

from mixai_pipeline.lib.serving.alerts import Alert
from mixai_pipeline.resources.alerts import Alerts

MAX_MESSAGE_CHARS = 500
PARTITION_TAG = "dagster/partition"


def _root_cause(error) -> str | None:
    """The innermost error of a ``SerializableErrorInfo`` chain: the user's exception, not Dagster's wrapper."""
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip() if error is not None and error.message else None


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_failure_alert(context: dg.RunFailureSensorContext) -> Alert:
    """The alert for the failed run of ``context``; never raises for a detail it cannot read."""
    run = context.dagster_run
    fields = {"job": run.job_name, "run id": run.run_id, "partition": run.tags.get(PARTITION_TAG) or "none"}
    message = "run failed"
    try:
        event = context.failure_event
        message = event.message or message
        cause = _root_cause(getattr(event.event_specific_data, "error", None))
        steps = [e.step_key for e in context.get_step_failure_events() if e.step_key]
        if steps:
            fields["failed steps"] = ", ".join(steps)
        if cause:
            message = f"{message}\n{cause}"
    except Exception as exc:  # the run's events are unreadable: say so, still alert
        context.log.warning(f"run_failure_alert_sensor: could not read the failure details of {run.run_id}: {exc}")
    if run.tags.get("dagster/failure_reason"):
        fields["reason"] = run.tags["dagster/failure_reason"]
    return Alert(kind="run_failed", title=f"Run failed: {run.job_name}", text=_clip(message), fields=fields,
                 severity="critical")


@dg.run_failure_sensor(name="run_failure_alert_sensor", default_status=dg.DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=60,
                       description="Any failed run of this code location → a critical alert in #mixai-ops-alerts.")
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alerts: Alerts) -> None:
    alerts.send(run_failure_alert(context))

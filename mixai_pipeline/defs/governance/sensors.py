"""``consent_changes_sensor``: the app's consent-change events (``consent/<user_id>/<timestamp>.json``) become
one ``consent_changes_job`` run per tick. ``deletion_requests_sensor``: users whose withdrawal left data to
delete become one ``user_data_purge_job`` run (well inside the 24 h deadline: it ticks every minute)."""

import hashlib
import json

import dagster as dg

from mixai_pipeline.defs.governance.jobs import CONSENT_PREFIX, consent_changes_job, user_data_purge_job
from mixai_pipeline.resources import Clock, Database, ObjectStoreResource

MAX_EVENTS_PER_RUN = 1000
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


@dg.sensor(job=consent_changes_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="New consent-change events under consent/ in the object store → one run applying them.")
def consent_changes_sensor(context: dg.SensorEvaluationContext, object_store: ObjectStoreResource):
    # Cursor: the newest last-modified time handed to a run, and the keys written at exactly that time (an
    # event landing in the same instant as the last one seen is not lost). Applying is idempotent anyway.
    cursor = json.loads(context.cursor) if context.cursor else {"at": "", "keys": []}
    fresh = sorted((info for info in object_store.get_store().list(CONSENT_PREFIX)
                    if info.key.endswith(".json") and (info.last_modified.isoformat() > cursor["at"] or (
                        info.last_modified.isoformat() == cursor["at"] and info.key not in cursor["keys"]))),
                   key=lambda info: (info.last_modified, info.key))[:MAX_EVENTS_PER_RUN]
    if not fresh:
        return dg.SkipReason("no new consent events")
    newest = fresh[-1].last_modified.isoformat()
    at_newest = [i.key for i in fresh if i.last_modified.isoformat() == newest]
    keys = [info.key for info in fresh]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            run_key="consent:" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16],
            run_config={"ops": {"apply_consent_changes": {"config": {"keys": keys}}}},
            tags={"mixai/consent_events": str(len(keys))})],
        cursor=json.dumps({"at": newest, "keys": at_newest + (cursor["keys"] if newest == cursor["at"] else [])}))


@dg.sensor(job=user_data_purge_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Users with a withdrawal's data still to delete → one purge run for all of them.")
def deletion_requests_sensor(context: dg.SensorEvaluationContext, database: Database, clock: Clock):
    from mixai_pipeline.lib.governance.purge import users_due_for_purge

    if context.instance.get_runs(filters=dg.RunsFilter(job_name=user_data_purge_job.name, statuses=IN_FLIGHT),
                                 limit=1):
        return dg.SkipReason("a user_data_purge_job run is still going")
    with database.get_engine().connect() as conn:
        users = users_due_for_purge(conn)
    if not users:
        return dg.SkipReason("no deletion due")
    # The hour in the key lets a failed run be retried an hour later instead of never (same users, same key).
    hour = clock.now().strftime("%Y%m%dT%H")
    return dg.RunRequest(run_key=f"purge:{hour}:" + hashlib.sha256("\n".join(users).encode()).hexdigest()[:16],
                         run_config={"ops": {"purge_withdrawn_users": {"config": {"user_ids": users}}}},
                         tags={"mixai/users": str(len(users))})

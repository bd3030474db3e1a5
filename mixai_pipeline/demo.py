"""``make demo``: the ingestion slice end to end, the way a deployment runs it.

Writes the demo inbox, starts ``dagster-daemon`` against the project's instance (PostgreSQL storage),
lets ``new_uploads_sensor`` tick and launch its runs, waits for them, stops the daemon and prints
what the runs produced. The runs stay in the instance: ``make dev`` shows them in the UI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

from mixai_pipeline import settings

SENSOR_NAME = "new_uploads_sensor"


def _sensor_ticks_after(instance, started: float) -> list:
    from dagster._core.scheduler.instigation import InstigatorType as Kind

    ticks = []
    for state in instance.all_instigator_state(instigator_type=Kind.SENSOR):
        if state.instigator_name == SENSOR_NAME:
            ticks += instance.get_ticks(state.instigator_origin_id, state.selector_id, after=started)
    return [t for t in ticks if t.is_completed]


def run_sensor_tick_and_wait(started: float, timeout_s: float, log=print) -> list:
    """Wait for the daemon's first completed tick of the sensor after ``started``, then for its runs."""
    from dagster import DagsterInstance
    from dagster._core.storage.dagster_run import DagsterRunStatus

    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    deadline = time.monotonic() + timeout_s
    with DagsterInstance.get() as instance:
        ticks: list = []
        while not ticks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{SENSOR_NAME} did not tick within {timeout_s:.0f} s")
            time.sleep(2)
            ticks = _sensor_ticks_after(instance, started)
        tick = ticks[0]
        run_ids = list(tick.run_ids)
        if tick.skip_reason:
            log(f"  sensor tick: skipped ({tick.skip_reason}); nothing new to register")
        else:
            log(f"  sensor tick: {len(run_ids)} run(s) requested (one per day partition)")
        last = None
        while True:
            runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
            states = [r.status for r in runs if r]
            summary = ", ".join(f"{s.value.lower()}: {states.count(s)}" for s in sorted(set(states), key=str))
            if summary != last:
                log(f"  runs: {summary or 'none'}")
                last = summary
            if all(s in finished for s in states) and len(states) == len(run_ids):
                return runs
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still going after {timeout_s:.0f} s: {summary}")
            time.sleep(2)


def start_daemon(log_path: Path) -> subprocess.Popen:
    daemon = Path(sys.executable).with_name("dagster-daemon")
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([str(daemon), "run", "-w", str(settings.PROJECT_ROOT / "workspace.yaml")],
                                cwd=settings.PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_daemon(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def print_summary(engine, runs: list, log=print) -> None:
    with engine.connect() as conn:
        by_day = conn.execute(text(
            """SELECT partition_date, count(*) FILTER (WHERE status <> 'rejected') AS accepted,
                      count(*) FILTER (WHERE status = 'rejected') AS rejected
               FROM jobs GROUP BY partition_date ORDER BY partition_date""")).all()
        stems = conn.execute(text(
            """SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(duration_s), 0)
               FROM vault_items WHERE kind IN ('inst', 'vocal') AND deleted_at IS NULL""")).one()
        rejects = conn.execute(text(
            "SELECT job_id, reject_code, reject_reason FROM jobs WHERE status = 'rejected' ORDER BY reject_code")).all()
        consent = conn.execute(text(
            "SELECT count(*) FILTER (WHERE training), count(*) FILTER (WHERE qa), count(*) FROM ml_consent")).one()
        audits = conn.execute(text("SELECT action, count(*) FROM audit_logs GROUP BY action ORDER BY action")).all()
        per_job = conn.execute(text(
            """SELECT j.job_id, j.status, a.offset_ms, a.method, a.confidence, m.preset,
                      ms.lufs_in, ms.lufs_out, ms.true_peak_dbtp, j.failure_reason
               FROM jobs j LEFT JOIN alignments a USING (job_id) LEFT JOIN mixes m USING (job_id)
               LEFT JOIN masters ms USING (job_id)
               WHERE j.status <> 'rejected' ORDER BY j.job_id""")).all()
    log("")
    log("== What the runs produced (PostgreSQL, database mixai) ==")
    for run in runs:
        tags = run.tags
        log(f"  run {run.run_id[:8]}  partition {tags.get('dagster/partition')}  {run.status.value.lower()}  "
            f"new uploads {tags.get('mixai/new_uploads')}")
    for row in by_day:
        log(f"  uploads {row.partition_date}: {row.accepted} accepted, {row.rejected} rejected")
    log(f"  vault_items: {stems[0]} stems, {stems[1] / 2**20:.1f} MiB, {stems[2] / 60:.1f} min of audio")
    log(f"  ml_consent: {consent[2]} users ({consent[0]} allow training, {consent[1]} allow QA)")
    log("  rejected uploads:")
    for row in rejects:
        log(f"    {row.job_id}  {row.reject_code}: {row.reject_reason}")
    log("  audit_logs: " + ", ".join(f"{a} × {n}" for a, n in audits))
    log("")
    log("== Audio pipeline, per job ==")
    log(f"  {'job':8}  {'offset ms':>9}  {'method':19}  {'conf':>4}  {'preset':13}  {'LUFS in':>7}  "
        f"{'LUFS out':>8}  {'TP dBTP':>7}")
    for r in per_job:
        if r.status == "failed":
            log(f"  {str(r.job_id)[:8]}  failed: {r.failure_reason}")
            continue

        def num(v, fmt):
            return format(v, fmt) if v is not None else "-"
        log(f"  {str(r.job_id)[:8]}  {num(r.offset_ms, '9.1f')}  {r.method or '-':19}  "
            f"{num(r.confidence, '4.2f')}  {r.preset or '-':13}  {num(r.lufs_in, '7.1f')}  "
            f"{num(r.lufs_out, '8.1f')}  {num(r.true_peak_dbtp, '7.2f')}")
    log("")
    log("Open the Dagster UI with `make dev` → http://127.0.0.1:3000 (asset 'uploads', sensor "
        f"'{SENSOR_NAME}', the runs above).")


def run_demo(timeout_s: float = 900.0, count: int | None = None, log=print) -> int:
    from mixai_pipeline.definitions import object_store_resource
    from mixai_pipeline.lib.demo.uploads import write_demo_inbox
    from mixai_pipeline.resources.database import engine_for
    from mixai_pipeline.runtime import prepare_environment

    env = prepare_environment()
    where = "embedded (pgserver, .mixai/pg)" if env.embedded_postgres else "MIXAI_DATABASE_URL"
    log(f"== Environment ==\n  PostgreSQL: {where}; "
        f"migrations applied now: {', '.join(env.applied_migrations) or 'none (up to date)'}")
    store = object_store_resource().get_store()
    log(f"  object store: {type(store).__name__} {getattr(store, 'root', '')}")
    log(f"  Dagster instance: DAGSTER_HOME={env.dagster_home} (storage in PostgreSQL, database dagster)")
    log("== Demo inbox (Bach chorales rendered with FluidR3 GM; plus deliberately bad uploads) ==")
    write_demo_inbox(store, count=count, log=log)

    log("== dagster-daemon: new_uploads_sensor tick → runs ==")
    daemon_log = settings.state_dir() / "dagster-daemon.log"
    started = time.time()
    daemon = start_daemon(daemon_log)
    try:
        runs = run_sensor_tick_and_wait(started, timeout_s, log)
    finally:
        stop_daemon(daemon)
    failed = [r for r in runs if r.status.value != "SUCCESS"]
    print_summary(engine_for(env.database_url), runs, log)
    if failed:
        log(f"{len(failed)} run(s) failed: see `make dev` or {daemon_log}")
        return 1
    return 0

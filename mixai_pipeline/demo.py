"""``make demo``: the platform end to end, the way a deployment runs it.

Writes the demo inbox (rendered uploads) and imports the Groove MIDI pack (when the shared data is
there), starts ``dagster-daemon`` against the project's instance (PostgreSQL storage), lets
``new_uploads_sensor`` and ``new_midi_packs_sensor`` tick and launch their runs, waits for them, stops
the daemon and prints what the runs produced. The runs stay in the instance: ``make dev`` shows them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from sqlalchemy import text

from mixai_pipeline import settings

SENSOR_NAME = "new_uploads_sensor"
DEMO_COHORT_UPLOADS = 400     # synthetic uploads added for training: 8 real ones cannot fill grouped 5-fold CV
DEMO_COHORT_SEED = 20251121
# Many users with a few songs each: the models' output references (what drift is measured against in the serving
# demo) are taken on these rows, and 400 rows of a few dozen users' near-duplicates are too lumpy a reference.
DEMO_COHORT_SHAPE = {"songs_per_user": (1, 3), "uploads_per_song": (1, 1)}
DEMO_MIN_SAMPLES = 100        # the seed's minimum is 1,000; the demo lowers it and says so
# The cohort's jobs carry a day before the first upload partition: no day's assets or checks ever see them.
DEMO_COHORT_DAY = date(2024, 12, 31)
# not the synthetic training cohort, not the serving loop's simulated uploads
REAL_JOBS_SQL = "upload_prefix NOT LIKE ALL (ARRAY['synthetic/%', 'simulated/%'])"
# Calls per rollout stage (the default is 200 and an hour per stage). PSI on n calls carries a noise of about
# 9 / n against its reference: 300 keeps a healthy model's max PSI over four outputs clear of the 0.2 limit.
DEMO_ROLLOUT_MIN_N = 300
DEMO_TRAFFIC_SEED = 20261122  # the same simulated uploads every run: the demo's outcome does not depend on luck
MIDI_SENSOR_NAME = "new_midi_packs_sensor"
DEMO_PACK = "groove-midi"


def _sensor_ticks_after(instance, started: float, sensor: str) -> list:
    from dagster._core.scheduler.instigation import InstigatorType as Kind

    ticks = []
    for state in instance.all_instigator_state(instigator_type=Kind.SENSOR):
        if state.instigator_name == sensor:
            ticks += instance.get_ticks(state.instigator_origin_id, state.selector_id, after=started)
    return [t for t in ticks if t.is_completed]


def run_sensor_tick_and_wait(started: float, timeout_s: float, log=print,
                             sensors: tuple[str, ...] = (SENSOR_NAME,)) -> list:
    """Wait for the daemon's first completed tick of each sensor after ``started``, then for their runs."""
    from dagster import DagsterInstance
    from dagster._core.storage.dagster_run import DagsterRunStatus

    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    deadline = time.monotonic() + timeout_s
    with DagsterInstance.get() as instance:
        run_ids: list[str] = []
        for sensor in sensors:
            ticks: list = []
            while not ticks:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{sensor} did not tick within {timeout_s:.0f} s")
                time.sleep(2)
                ticks = _sensor_ticks_after(instance, started, sensor)
            tick = ticks[0]
            run_ids += list(tick.run_ids)
            if tick.skip_reason:
                log(f"  {sensor} tick: skipped ({tick.skip_reason})")
            else:
                log(f"  {sensor} tick: {len(tick.run_ids)} run(s) requested")
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
            f"""SELECT partition_date, count(*) FILTER (WHERE status <> 'rejected') AS accepted,
                      count(*) FILTER (WHERE status = 'rejected') AS rejected
               FROM jobs WHERE {REAL_JOBS_SQL} GROUP BY partition_date ORDER BY partition_date""")).all()
        stems = conn.execute(text(
            """SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(duration_s), 0)
               FROM vault_items WHERE kind IN ('inst', 'vocal') AND deleted_at IS NULL
                     AND purge_started_at IS NULL""")).one()
        rejects = conn.execute(text(
            "SELECT job_id, reject_code, reject_reason FROM jobs WHERE status = 'rejected' ORDER BY reject_code")).all()
        consent = conn.execute(text(
            "SELECT count(*) FILTER (WHERE training), count(*) FILTER (WHERE qa), count(*) FROM ml_consent "
            "WHERE source IS DISTINCT FROM 'synthetic'")).one()
        audits = conn.execute(text("SELECT action, count(*) FROM audit_logs GROUP BY action ORDER BY action")).all()
        per_job = conn.execute(text(
            f"""SELECT j.job_id, j.status, a.offset_ms, a.method, a.confidence, m.preset,
                      ms.lufs_in, ms.lufs_out, ms.true_peak_dbtp, j.failure_reason
               FROM jobs j LEFT JOIN alignments a USING (job_id) LEFT JOIN mixes m USING (job_id)
               LEFT JOIN masters ms USING (job_id)
               WHERE j.status <> 'rejected' AND j.{REAL_JOBS_SQL} ORDER BY j.job_id""")).all()
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
    log("Open the Dagster UI with `make dev` → http://127.0.0.1:3000 (assets 'uploads' and 'midi_packs', "
        f"sensors '{SENSOR_NAME}' and '{MIDI_SENSOR_NAME}', the runs above).")


def import_demo_pack(store, log=print) -> bool:
    """Import the Groove MIDI pack from the shared data (once: an unchanged pack is left as it is)."""
    from mixai_pipeline.lib.midi.packs import import_pack, list_packs

    folder = settings.groove_midi_dir()
    if not (folder / "info.csv").exists():
        log(f"  Groove MIDI not found at {folder} (set {settings.ENV_SHARED_DATA}): the MIDI part is skipped")
        return False
    if DEMO_PACK in list_packs(store) and list_packs(store)[DEMO_PACK].complete:
        log(f"  pack {DEMO_PACK!r} already imported ({len(list_packs(store)[DEMO_PACK].files)} files)")
        return True
    report = import_pack(store, folder, DEMO_PACK)
    log(f"  imported pack {DEMO_PACK!r}: {report['files']} MIDI files ({report['bytes'] / 1e6:.1f} MB), "
        f"{report['metadata_rows']} metadata rows")
    return True


def print_midi_summary(store, engine, pack_id: str = DEMO_PACK, log=print) -> None:
    """Loop counts per stage, the dedupe result, score distributions and a few labelled loops with their
    nearest neighbours, from the pack's working tables and published dataset."""
    import json

    from mixai_pipeline.lib.midi import pipeline

    try:
        report = json.loads(store.get_bytes(pipeline.derived_key(pack_id, "stage1_report.json")))
        scores, labels = pipeline.load_scores(store, pack_id), pipeline.load_labels(store, pack_id)
        metrics, pairs = pipeline.load_metrics(store, pack_id), pipeline.load_pairs(store, pack_id)
    except Exception as err:  # the run failed or has not produced them: say so, the audio part stands
        log(f"  MIDI outputs not readable ({type(err).__name__}: {err})")
        return
    with engine.connect() as conn:
        verdicts = conn.execute(text("SELECT status, count(*) FROM midi_files WHERE pack_id = :p GROUP BY status"),
                                {"p": pack_id}).all()
    counts = report["counts"]
    log("")
    log(f"== MIDI loop pack {pack_id!r} ==")
    log("  files: " + ", ".join(f"{status} {n}" for status, n in verdicts))
    log(f"  Stage 1: {report['files_in']} files → {report['windows_sliced']} bar windows "
        f"({', '.join(str(b) for b in report['settings']['bars'])} bars) → {report['loops_out']} loops")
    excluded = {k: v for k, v in counts.items() if v and k not in ("near_duplicate_loops",)}
    log(f"    excluded: {', '.join(f'{k} {v}' for k, v in sorted(excluded.items()))}")
    log(f"    dedupe: {counts.get('exact_duplicate', 0)} exact duplicates dropped; "
        f"{len(report['near_duplicate_clusters'])} near-duplicate clusters (cosine ≥ "
        f"{report['settings']['near_duplicate_threshold']}) holding {counts.get('near_duplicate_loops', 0)} "
        "loops, kept")
    log(f"  Stage 2: {len(scores)} loops scored, {int(scores['passed'].sum())} pass (threshold "
        f"{scores['threshold'].iloc[0]:g}, weights {scores['weights'].iloc[0]})")
    log(f"    {'axis':15} {'min':>6} {'p50':>6} {'p90':>6} {'mean':>6} {'max':>6}")
    for axis, d in pipeline.score_distributions(scores).items():
        log(f"    {axis:15} " + " ".join(f"{v:6.1f}" for v in d.values()))
    log("    median swing ratio by genre: " + ", ".join(
        f"{g} {v:.2f}" for g, v in metrics["swing_ratio"].groupby(labels["genre"]).median().dropna()
        .sort_values(ascending=False).head(6).items()))
    log("  a few labelled loops and their nearest neighbours:")
    shown = labels[labels.index.isin(pairs["loop_id"])].groupby("genre", group_keys=False).head(1).head(4)
    for loop_id, row in shown.iterrows():
        log(f"    {loop_id}  {row['genre']}/{row['sub_genre']}, {row['tempo_bucket']}, {row['meter']}, "
            f"{row['swing_phase']}, tags [{row['style_tags']}], {row['emotion']} (valence "
            f"{row['emotion_valence']:+.2f}, arousal {row['emotion_arousal']:.2f}), score "
            f"{scores.at[loop_id, 'total']:.1f}")
        for near in pairs[pairs["loop_id"] == loop_id].head(3).itertuples():
            other = labels.loc[near.other_id]
            log(f"        ~ {near.other_id}  sim {near.similarity:.2f}  {other['genre']}/{other['sub_genre']}")


def feature_distributions(engine, jobs_sql: str) -> dict | None:
    """The inst/vocal feature distributions of the jobs ``jobs_sql`` selects (None with fewer than 3)."""
    import numpy as np

    from mixai_pipeline.lib.training import synthetic

    with engine.connect() as conn:
        vectors = {clip: np.asarray([list(v) for v in conn.execute(text(
            f"""SELECT f.vec FROM features_store f JOIN jobs j USING (job_id)
                WHERE f.clip_kind = :c AND f.feature_version = 'v1' AND j.{jobs_sql}"""), {"c": clip}).scalars()])
            for clip in ("inst", "vocal")}
    if not all(len(v) >= 3 for v in vectors.values()):
        return None
    return {clip: synthetic.fit_distribution(v) for clip, v in vectors.items()}


def train_demo_models(engine, log=print) -> bool:
    """Train all three tasks now (``train_now_job``, as ``mixai train`` does) on the demo's real uploads plus
    a synthetic cohort whose features are drawn from the real uploads' feature distribution; print each
    task's CV metrics beside the baselines, and the registered versions with their MLflow runs."""
    from datetime import datetime, timedelta, timezone

    from mixai_pipeline.lib.storage.database import write_audit
    from mixai_pipeline.lib.training import synthetic
    from mixai_pipeline.runtime import run_operator_job

    with engine.connect() as conn:
        real_rows = conn.execute(text(f"SELECT count(*) FROM labels JOIN jobs j USING (job_id) WHERE j.{REAL_JOBS_SQL}"
                                      )).scalar()
        existing = conn.execute(text("SELECT count(*) FROM jobs WHERE upload_prefix LIKE 'synthetic/%'")).scalar()
    if existing:  # an earlier demo run wrote it (from the real uploads of then): kept as it is
        log(f"  real uploads: {real_rows} labels; the synthetic cohort of an earlier demo run: {existing} uploads")
    else:
        dists = feature_distributions(engine, REAL_JOBS_SQL)  # the synthetic cohort looks like the real uploads
        fitted = dists is not None
        with engine.begin() as conn:
            cohort = synthetic.insert_synthetic_cohort(
                conn, DEMO_COHORT_UPLOADS, seed=DEMO_COHORT_SEED, distributions=dists, **DEMO_COHORT_SHAPE,
                received_at=datetime.now(timezone.utc) - timedelta(minutes=5), partition_date=DEMO_COHORT_DAY)
            write_audit(conn, actor="demo", action="demo.synthetic_cohort", target_type="jobs",
                        target_id=cohort["cohort"], details=cohort)
        log(f"  real uploads: {real_rows} labels; synthetic cohort {cohort['cohort']}: {cohort['jobs']} uploads of "
            f"{cohort['users']} synthetic users (jobs.upload_prefix 'synthetic/…'), features drawn from "
            + ("the real uploads' inst/vocal feature distribution" if fitted
               else "the default distribution (too few real uploads)"))
    log(f"  min_samples lowered to {DEMO_MIN_SAMPLES} for the demo (the seed's 1,000 applies to the weekly run)")
    ok, output = run_operator_job("train_now_job", "train_now", {
        "min_samples": DEMO_MIN_SAMPLES, "actor": "demo", "reason": "make demo"})
    if not ok:
        log(f"  train_now_job failed: {output}")
        return False
    log(f"  {'task':10}  {'rows':>5}  {'metric':8}  {'chosen (CV mean)':24}  {'baselines (CV mean)':34}  result")
    for s in output:
        chosen = f"{s['chosen']} {s['cv']:.4f}" if s.get("cv") is not None else "—"
        baselines = ", ".join(f"{n} {v:.4f}" for n, v in s["baselines"].items()) or "—"
        result = (f"{s['version']}  MLflow run {s['mlflow_run_id']}" if s.get("version")
                  else f"{s['status']}: {s['reason']}")
        log(f"  {s['task']:10}  {s['rows']:>5}  {s['metric']:8}  {chosen:24}  {baselines:34}  {result}")
    log(f"  MLflow: {os.environ.get(settings.ENV_MLFLOW_TRACKING_URI)} (experiment mixai-weekly-training); "
        "`mixai models list` shows the registry")
    return True


def serving_demo(engine, store, database_url: str, log=print) -> bool:
    """The serving loop on simulated traffic (``lib/serving/simulator.py``): an operator turns the model flags
    on; the week's trained master_reg model walks 5 → 25 → 100 % → active under the rollout controller; a
    deliberately broken model (it answers NaN) is rolled back within one evaluation; model_metrics is
    materialized; the alerts a local Slack-compatible receiver got are printed."""
    from mixai_pipeline.lib.demo.webhook import LocalWebhookReceiver

    with LocalWebhookReceiver() as receiver:
        os.environ[settings.ENV_ALERT_WEBHOOK_URL] = receiver.url  # the operator jobs' Alerts resource posts here
        try:
            ok = _serving_demo(engine, store, database_url, receiver.url, log)
        finally:
            os.environ.pop(settings.ENV_ALERT_WEBHOOK_URL, None)
        receiver.wait_for(1, timeout_s=5)
        log(f"  alerts received by the local Slack-compatible webhook ({len(receiver.received)}):")
        for body in receiver.received:
            log(f"    {body.get('channel', '')}  {body['text']}")
    return ok


def _serving_demo(engine, store, database_url: str, webhook_url: str, log) -> bool:
    import time as time_
    from datetime import datetime, timezone

    from mixai_pipeline.defs.serving.sensors import evaluate_and_apply
    from mixai_pipeline.lib.governance import access
    from mixai_pipeline.lib.serving import rollout, simulator
    from mixai_pipeline.lib.training.registry import model_object_key
    from mixai_pipeline.lib.training.serving import ServingClient
    from mixai_pipeline.resources import Alerts, Clock, Database, RolloutPolicyResource
    from mixai_pipeline.runtime import run_operator_job

    now = datetime.now(timezone.utc)
    with engine.connect() as conn:
        has_operators = conn.execute(text("SELECT EXISTS (SELECT 1 FROM operators)")).scalar()
    if not has_operators:
        access.add_operator(engine, "demo-admin", "admin", by="demo", now=now)
    access.add_operator(engine, "demo-ops", "ops", by="demo-admin", now=now)
    for key in ("enable_cpu_ml", "enable_master_regression", "enable_preset_recommendation"):
        done, output = run_operator_job("set_feature_flag_job", "set_feature_flag", {
            "key": key, "enabled": True, "rollout_percent": 100, "actor": "demo-ops", "reason": "make demo"})
        if not done:
            log(f"  set_feature_flag_job failed: {output}")
            return False
    log("  demo-ops turned on enable_cpu_ml, enable_master_regression, enable_preset_recommendation (100 %; "
        "audited); `mixai flags list` shows them")

    resources = {"database": Database(url=database_url), "alerts": Alerts(webhook_url=webhook_url), "clock": Clock(),
                 "rollout_policy": RolloutPolicyResource(min_n=DEMO_ROLLOUT_MIN_N, min_stage_minutes=0.0)}
    log(f"  rollout controller policy for the demo: {DEMO_ROLLOUT_MIN_N} calls and no minimum time per stage "
        "(defaults: 200 calls and 1 h); SLOs as in production (mean < 50 ms, errors < 1 %, PSI < 0.2, "
        "outcome test at α 0.01)")
    # Traffic like the models' training rows (real uploads and the synthetic cohort), whatever was withdrawn
    # since: drawn from anything else, the controller would rightly see drift.
    distributions = feature_distributions(engine, "upload_prefix NOT LIKE 'simulated/%'")
    seed = DEMO_TRAFFIC_SEED
    client = ServingClient(engine, store, resolve_ttl_s=0.0)

    def evaluate() -> list:
        decisions = evaluate_and_apply(**resources)
        for d in decisions:
            if d.task == "master_reg" or d.changes:
                log(f"    controller: {d.task}/{d.version}: {d.action} {d.from_percent} → {d.to_percent} %  "
                    f"({d.reason})")
        return decisions

    def traffic(n: int, label: str) -> None:
        nonlocal seed
        seed += 1
        jobs = simulator.simulated_jobs(n, seed=seed, distributions=distributions)
        summary = simulator.replay(engine, client, jobs, seed=seed, received_at=datetime.now(timezone.utc))
        served = ", ".join(f"{k} {v}" for k, v in sorted(summary.variants.items()) if k.startswith("master_reg"))
        log(f"    traffic: {n} simulated uploads {label} in {summary.seconds:.1f} s ({served})")

    try:
        log("  -- the week's trained master_reg model on simulated traffic --")
        evaluate()
        for _ in range(6):
            with engine.connect() as conn:
                candidate = rollout.model_in_rollout(conn, "master_reg")
            if candidate is None:
                break
            percent = candidate["rollout_percent"]
            traffic(int(DEMO_ROLLOUT_MIN_N * 100 / percent * 1.3), f"at {percent} %")
            evaluate()
        with engine.connect() as conn:
            active = rollout.active_model(conn, "master_reg")
        if active is None:
            log("  no master_reg model became active (see the controller's reasons above)")
            return False
        log(f"  active master_reg model: {active['version']} (id {active['id']})")

        log("  -- a deliberately broken model: the active one, altered to answer NaN --")
        broken = simulator.nan_master_model(store.get_bytes(model_object_key("master_reg", active["version"])))
        registered = simulator.register(engine, store, broken, label=f"broken-nan-{int(time_.time())}",
                                        reference_inputs=None, actor="demo")
        log(f"    registered {registered['version']} (id {registered['model_id']}) as a candidate")
        evaluate()
        traffic(1200, "at 5 %")  # ~60 calls of the broken model: more than the 20 errors are judged on
        decisions = evaluate()
        rolled_back = any(d.model_id == registered["model_id"] and d.action == "rollback" for d in decisions)
        with engine.connect() as conn:
            serving = rollout.active_model(conn, "master_reg")
        log(f"    {'rolled back within one evaluation' if rolled_back else 'NOT rolled back'}; "
            f"master_reg served by {serving['version'] if serving else 'the rules'}")
    finally:
        client.close()
        resources["alerts"].get_sender().flush(timeout_s=10)

    done, _ = run_operator_job("model_metrics_job", None)
    if done:
        with engine.connect() as conn:
            rows = conn.execute(text(
                """SELECT r.name, r.version, r.status, mm.n, mm.latency_ms, mm.latency_p95_ms, mm.err_rate,
                          mm.fallback_rate, mm.drift
                   FROM model_metrics mm JOIN model_registry r ON r.id = mm.model_id
                   WHERE mm."window" = '1h' AND mm.window_end = (SELECT max(window_end) FROM model_metrics)
                   ORDER BY r.name, r.id""")).all()
        log("  model_metrics (1 h window; the Dagster UI plots the asset's metadata over materializations):")
        for r in rows:
            psi = max(r.drift.values()) if r.drift else None
            log(f"    {r.name}/{r.version:28} {r.status:11} n {r.n:>5}  mean {r.latency_ms or 0:6.2f} ms  "
                f"p95 {r.latency_p95_ms or 0:6.2f} ms  errors {r.err_rate or 0:6.1%}  "
                f"fallbacks {r.fallback_rate or 0:6.1%}  max PSI {'' if psi is None else f'{psi:.3f}'}")
    return bool(rolled_back) and done


def governance_demo(engine, store, log=print) -> bool:
    """A withdrawal (consent event → consent_changes_job → user_data_purge_job, the time it took) and the
    retention purge of the month-old upload (retention_purge for the days its items expired), each with the
    audit entries it wrote."""
    from datetime import datetime, timezone

    from mixai_pipeline.lib.demo.uploads import AGED_USER, DEMO_USERS
    from mixai_pipeline.runtime import run_operator_job

    started = datetime.now(timezone.utc)
    ok = True
    user = DEMO_USERS[1]
    with engine.connect() as conn:
        consenting = conn.execute(text("SELECT training FROM ml_consent WHERE user_id = :u"), {"u": user}).scalar()
    if consenting:
        key = f"consent/{user}/{started:%Y%m%dT%H%M%S}Z.json"
        store.put_bytes(key, json.dumps({"user_id": str(user), "at": started.isoformat(), "training": False}).encode(),
                        "application/json")
        log(f"  user {user} withdraws training consent (the app writes {key})")
        ok &= _report(log, "consent_changes_job", *run_operator_job(
            "consent_changes_job", "apply_consent_changes", {"keys": [key]}))
        done, reports = run_operator_job("user_data_purge_job", "purge_withdrawn_users", {"user_ids": [str(user)]})
        ok &= _report(log, "user_data_purge_job", done, reports)
        for r in reports if done else []:
            log(f"    {r['status']}: {r['objects_deleted']} objects, rows {r['rows_deleted']}; withdrawal → deletion "
                + ", ".join(f"{s:.1f} s" for s in r["withdrawal_to_deletion_s"].values()) + " (deadline 24 h)")
        _print_audit(engine, log, started, "user", str(user))
    else:
        log(f"  user {user} has already withdrawn (an earlier demo run): no new withdrawal")

    with engine.connect() as conn:
        days = conn.execute(text(
            """SELECT DISTINCT (v.expires_at AT TIME ZONE 'Asia/Tokyo')::date FROM vault_items v
               JOIN jobs j USING (job_id)
               WHERE j.user_id = :u AND v.deleted_at IS NULL AND v.expires_at <= now() ORDER BY 1"""),
            {"u": AGED_USER}).scalars().all()
    if not days:
        log("  the month-old upload has nothing left to purge (an earlier demo run did it)")
    for day in days:
        log(f"  retention_purge partition {day}: what expired that day (the 03:30 schedule runs it the next morning)")
        ok &= _report(log, "retention_purge_job", *run_operator_job("retention_purge_job", None,
                                                                    partition_key=day.isoformat()))
    with engine.connect() as conn:
        kinds = conn.execute(text(
            """SELECT v.kind, count(*) FILTER (WHERE v.deleted_at IS NOT NULL), count(*) FROM vault_items v
               JOIN jobs j USING (job_id) WHERE j.user_id = :u GROUP BY v.kind ORDER BY v.kind"""),
            {"u": AGED_USER}).all()
    log("  month-old upload now: " + ", ".join(f"{kind} {gone}/{total} deleted" for kind, gone, total in kinds))
    _print_audit(engine, log, started, "retention", None)
    return ok


def _report(log, job: str, ok: bool, output) -> bool:
    log(f"    {job}: {'succeeded' if ok else 'FAILED: ' + str(output)}")
    return ok


def _print_audit(engine, log, since, what: str, user_id: str | None) -> None:
    """The audit entries written since ``since``: a user's (consent, withdrawal, deletions of their jobs), or
    the retention purge's deletions."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            """SELECT at, actor, action, target_type, target_id, details FROM audit_logs
               WHERE at >= :since AND (
                   (:what = 'user' AND (target_id = :user OR details ->> 'user_id' = :user))
                   OR (:what = 'retention' AND action LIKE 'vault_item.%' AND details ->> 'cause' = 'retention'))
               ORDER BY id"""), {"since": since, "what": what, "user": user_id}).all()
    log(f"    audit_logs ({len(rows)} entries):")
    for r in rows[:12]:
        details = r.details or {}
        items = details.get("items")
        what = (", ".join(sorted({i["kind"] for i in items})) + f" ({len(items)} objects, {details.get('cause')})"
                if items else json.dumps({k: v for k, v in details.items() if k in ("after", "status", "reason")},
                                         default=str)[:80])
        log(f"      {r.at:%H:%M:%S}  {r.actor[:30]:30} {r.action:26} {r.target_type}:{str(r.target_id)[:8]}  {what}")


def run_demo(timeout_s: float = 900.0, count: int | None = None, midi: bool = True, log=print) -> int:
    from mixai_pipeline.definitions import object_store_resource
    from mixai_pipeline.lib.demo.uploads import write_demo_inbox
    from mixai_pipeline.lib.storage.database import engine_for
    from mixai_pipeline.runtime import prepare_environment

    env = prepare_environment()
    where = "embedded (pgserver, .mixai/pg)" if env.embedded_postgres else "MIXAI_DATABASE_URL"
    log(f"== Environment ==\n  PostgreSQL: {where}; "
        f"migrations applied now: {', '.join(env.applied_migrations) or 'none (up to date)'}")
    store = object_store_resource().get_store()
    log(f"  object store: {type(store).__name__} {getattr(store, 'root', '')}")
    log(f"  Dagster instance: DAGSTER_HOME={env.dagster_home} (storage in PostgreSQL, database dagster)")
    log("== Demo inbox (Bach chorales rendered with FluidR3 GM; plus deliberately bad uploads) ==")
    write_demo_inbox(store, count=count, aged=True, log=log)
    log("== MIDI loop pack (Groove MIDI Dataset, shared data) ==")
    with_midi = import_demo_pack(store, log) if midi else False

    sensors = (SENSOR_NAME, MIDI_SENSOR_NAME) if with_midi else (SENSOR_NAME,)
    log(f"== dagster-daemon: {' + '.join(sensors)} ticks → runs ==")
    daemon_log = settings.state_dir() / "dagster-daemon.log"
    started = time.time()
    daemon = start_daemon(daemon_log)
    try:
        runs = run_sensor_tick_and_wait(started, timeout_s, log, sensors)
    finally:
        stop_daemon(daemon)
    failed = [r for r in runs if r.status.value != "SUCCESS"]
    engine = engine_for(env.database_url)
    print_summary(engine, [r for r in runs if r.job_name != "midi_pack_job"], log)
    if with_midi:
        print_midi_summary(store, engine, log=log)
    log("")
    log("== Training: all three tasks now (train_now_job), registered as candidates ==")
    trained = train_demo_models(engine, log)
    log("")
    log("== Serving: flags, 5 → 25 → 100 % rollout, a rollback, model_metrics, alerts ==")
    served = serving_demo(engine, store, env.database_url, log) if trained else False
    log("")
    log("== Governance: a withdrawal and a retention purge ==")
    governed = governance_demo(engine, store, log)
    if failed:
        log(f"{len(failed)} run(s) failed: see `make dev` or {daemon_log}")
        return 1
    return 0 if trained and served and governed else 1

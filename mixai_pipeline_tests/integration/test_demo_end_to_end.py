"""The deployment path, as `make demo` runs it: rendered demo uploads → dagster-daemon → sensor tick →
runs on the Dagster instance (PostgreSQL storage) → rows in the app database. Twice: nothing added twice."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from mixai_pipeline import settings
from mixai_pipeline.lib.storage.database import engine_for
from mixai_pipeline.resources.embedded_postgres import (
    start_embedded_postgres,
    stop_embedded_postgres,
    with_database,
)

pytestmark = pytest.mark.slow
WITH_MIDI = (settings.groove_midi_dir() / "info.csv").exists()  # the demo leaves the MIDI part out, saying so
# the demo adds a synthetic cohort for training and simulated uploads for the serving loop
REAL = "upload_prefix NOT LIKE ALL (ARRAY['synthetic/%', 'simulated/%'])"
# what every demo run does again on purpose: train now, turn the flags on, roll the new models out
NOT_TRAINING = ("action NOT IN ('operator.train_now', 'model.registered', 'demo.synthetic_cohort', "
                "'feature_flag.set', 'model.rollout', 'model.activated', 'model.rolled_back')")


def run_demo(home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MIXAI_DATABASE_URL", "MIXAI_DAGSTER_PG_URL", "DAGSTER_HOME", "MLFLOW_TRACKING_URI")}
    env["MIXAI_HOME"] = str(home)
    mixai = Path(sys.executable).with_name("mixai")
    return subprocess.run([str(mixai), "demo", "--count", "2", "--timeout", "600"], env=env,
                          capture_output=True, text=True, timeout=900)


def test_demo_runs_through_the_daemon_and_is_idempotent(tmp_path):
    home = tmp_path / "state"
    try:
        first = run_demo(home)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        # today's uploads, and the month-old one (its own day partition)
        assert "new_uploads_sensor tick: 2 run(s) requested" in first.stdout
        assert "2 accepted, 7 rejected" in first.stdout and "1 accepted, 0 rejected" in first.stdout

        engine = engine_for(with_database(start_embedded_postgres(home / "pg"), "mixai", "psycopg"))
        with engine.connect() as conn:
            jobs = conn.execute(text(f"SELECT status, reject_code FROM jobs WHERE {REAL}")).all()
            stems = conn.execute(text("SELECT kind, codec, duration_s, deleted_at IS NOT NULL AS deleted "
                                      "FROM vault_items WHERE kind IN ('inst', 'vocal')")).all()
            audits = conn.execute(text(f"SELECT count(*) FROM audit_logs WHERE {NOT_TRAINING}")).scalar_one()
        assert sorted(code for status, code in jobs if status == "rejected") == sorted(
            ["manifest_unreadable", "unknown_plan", "stem_missing", "audio_corrupt", "audio_empty",
             "unsupported_format", "hostile_name"])
        assert len(stems) == 6 and all(s.duration_s > 30 for s in stems)  # real, rendered chorales
        # governance: the withdrawn user's stems and the month-old upload's (past 7 days) are deleted
        assert sum(s.deleted for s in stems) == 4
        truth = sorted((home / "objects" / "groundtruth").glob("*.json"))
        assert len(truth) == 3

        with engine.connect() as conn:
            masters = conn.execute(text("SELECT lufs_out, true_peak_dbtp, params FROM masters")).all()
            requests = conn.execute(text("SELECT status, duration_s FROM deletion_requests")).all()
            retention = conn.execute(text(
                "SELECT count(*) FROM audit_logs WHERE action = 'vault_item.deleted' "
                "AND details ->> 'cause' = 'retention'")).scalar_one()
            labelled = conn.execute(text(f"SELECT count(DISTINCT job_id) FROM labels JOIN jobs USING (job_id) "
                                         f"WHERE {REAL}")).scalar_one()
            features = conn.execute(text(f"SELECT count(*) FROM features_store JOIN jobs USING (job_id) "
                                         f"WHERE {REAL}")).scalar_one()
            models = conn.execute(text("SELECT name, status, mlflow_run_id, framework FROM model_registry")).all()
            served = conn.execute(text("SELECT source, count(*) FROM master_params GROUP BY source")).all()
        # the whole audio pipeline ran for the three uploads; the withdrawn user's rows are gone since
        assert len(masters) == 2 and labelled == 2 and features == 6
        assert [r.status for r in requests] == ["completed"] and requests[0].duration_s < 24 * 3600
        assert retention >= 1 and "== Governance: a withdrawal and a retention purge ==" in first.stdout
        assert all(tp <= -1.0 + 1e-6 and abs(lufs - params[3]) <= 0.5 for lufs, tp, params in masters)
        assert "== Audio pipeline, per job ==" in first.stdout
        # training: the three tasks on the real uploads + the synthetic cohort, registered with their MLflow runs
        assert "== Training: all three tasks now (train_now_job)" in first.stdout
        trained = [m for m in models if m.framework != "onnx/operator-upload"]
        assert sorted(m.name for m in trained) == ["align_conf", "master_reg", "preset_cls"]
        assert all(m.mlflow_run_id in first.stdout for m in trained)
        # serving: the trained master_reg model walked 5 → 25 → 100 % to active on simulated traffic; the broken
        # one (answers NaN) was rolled back within one evaluation; the alerts reached the local webhook
        assert [m.status for m in trained if m.name == "master_reg"] == ["active"]
        assert [m.status for m in models if m.framework == "onnx/operator-upload"] == ["rolled_back"]
        assert "rollout 5 → 25 %" in first.stdout and "rollout 25 → 100 %" in first.stdout
        assert "rolled back within one evaluation" in first.stdout
        assert "alerts received by the local Slack-compatible webhook" in first.stdout
        assert dict(served)["model"] > 0 and "model_metrics (1 h window" in first.stdout

        dagster = engine_for(with_database(start_embedded_postgres(home / "pg"), "dagster", "psycopg"))
        with dagster.connect() as conn:
            statuses = conn.execute(text("SELECT status FROM runs")).scalars().all()
        # the runs live in the instance, the UI shows them: uploads, (MIDI pack,) train now
        assert set(statuses) == {"SUCCESS"}
        if WITH_MIDI:
            assert "new_midi_packs_sensor tick: 1 run(s) requested" in first.stdout
            assert "== MIDI loop pack 'groove-midi' ==" in first.stdout and "Stage 2:" in first.stdout
            with engine.connect() as conn:
                parsed = conn.execute(text("SELECT count(*) FROM midi_files WHERE status = 'parsed'")).scalar_one()
            assert parsed > 1000  # the whole Groove MIDI pack

        second = run_demo(home)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "skipped (no new uploads in the inbox)" in second.stdout
        assert not WITH_MIDI or "new_midi_packs_sensor tick: skipped" in second.stdout
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM jobs WHERE {REAL}")).scalar_one() == len(jobs)
            # nothing ingested twice; training ran again (an operator action: new candidates, audited)
            assert conn.execute(text(f"SELECT count(*) FROM audit_logs WHERE {NOT_TRAINING}")).scalar_one() == audits
        engine.dispose()
        dagster.dispose()
    finally:
        stop_embedded_postgres(home / "pg")

"""Migrations and the constraints of the schema, on a real PostgreSQL."""

import shutil
import uuid

import pytest
from sqlalchemy import exc, text

from mixai_pipeline import settings
from mixai_pipeline.lib.storage.database import engine_for, write_audit
from mixai_pipeline.resources import migrations

REQUIRED_TABLES = {
    "jobs", "vault_items", "retention_policies", "features_store", "labels", "model_registry", "model_metrics",
    "training_jobs", "ml_consent", "ml_exclusions", "ab_test_assignments", "ab_test_metrics", "feature_flags",
    "audit_logs", "approval_requests", "plans", "operators", "feature_layouts", "schema_migrations",
}


def tables(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())


def test_migrations_apply_once_and_twice_is_a_no_op(blank_db_url):
    engine = engine_for(blank_db_url)
    first = migrations.upgrade(engine, settings.SQL_DIR)
    assert [m.path.name for m in first] == [p.name for p in sorted(settings.SQL_DIR.glob("*.sql"))]
    assert tables(engine) >= REQUIRED_TABLES
    assert migrations.upgrade(engine, settings.SQL_DIR) == []
    assert migrations.applied_versions(engine) == [m.version for m in first]


def test_edited_migration_is_refused(blank_db_url, tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(settings.SQL_DIR, sql_dir)
    engine = engine_for(blank_db_url)
    migrations.upgrade(engine, sql_dir)
    first = sorted(sql_dir.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        migrations.upgrade(engine, sql_dir)


def test_failing_migration_leaves_nothing_behind(blank_db_url, tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(settings.SQL_DIR, sql_dir)
    (sql_dir / "9999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELEC oops;\n")
    engine = engine_for(blank_db_url)
    with pytest.raises(migrations.MigrationError, match='9999_broken.sql failed.*"SELEC"'):
        migrations.upgrade(engine, sql_dir)
    assert tables(engine) == set()  # the whole upgrade rolled back, 0001 included
    (sql_dir / "9999_broken.sql").unlink()
    (sql_dir / "bad name.sql").write_text("")
    with pytest.raises(migrations.MigrationError, match="NNNN_lower_snake"):
        migrations.upgrade(engine, sql_dir)


def test_audit_log_is_append_only(engine):
    with engine.begin() as conn:
        write_audit(conn, actor="test", action="thing.done", target_type="thing", target_id="1", details={"a": 1})
    for statement in ("UPDATE audit_logs SET actor = 'mallory'", "DELETE FROM audit_logs", "TRUNCATE audit_logs"):
        with pytest.raises(exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT actor, details->>'a' FROM audit_logs")).all() == [("test", "1")]


def test_retention_policies_follow_the_seed(engine):
    with engine.connect() as conn:
        days = {(p, k): d for p, k, d in conn.execute(text("SELECT plan, kind, days FROM retention_policies"))}
    for plan in ("lite", "standard", "creator"):
        assert [days[(plan, k)] for k in ("inst", "vocal", "master", "preview")] == [7, 7, 15, 30]
    assert [days[("freetrial", k)] for k in ("inst", "vocal", "master", "preview")] == [3, 3, 7, 14]


@pytest.mark.parametrize(
    "statement",
    [
        # a rejected job must say why; an accepted one must have an owner
        "INSERT INTO jobs (job_id, upload_prefix, status, partition_date, received_at) "
        "VALUES (gen_random_uuid(), 'uploads/x/', 'rejected', '2026-01-01', now())",
        "INSERT INTO jobs (job_id, upload_prefix, status, partition_date, received_at) "
        "VALUES (gen_random_uuid(), 'uploads/y/', 'registered', '2026-01-01', now())",
        "INSERT INTO jobs (job_id, upload_prefix, user_id, plan, status, partition_date, received_at, "
        "consent_qa, consent_training) VALUES (gen_random_uuid(), 'uploads/z/', gen_random_uuid(), 'gold', "
        "'registered', '2026-01-01', now(), true, true)",
        # labels: the target must match the task
        "INSERT INTO labels (job_id, task, y_cls) VALUES (gen_random_uuid(), 'align_conf', 'maybe')",
        # 4-eyes: the approver is not the requester
        "INSERT INTO approval_requests (kind, target, reason, requested_by, status, decided_by) "
        "VALUES ('legal_hold', '{}', 'r', 'alice', 'approved', 'alice')",
        "INSERT INTO feature_flags (key, rollout_percent) VALUES ('x', 101)",
        "INSERT INTO model_metrics (model_id, \"window\", window_end, n) VALUES (1, '2h', now(), 1)",
        "INSERT INTO ab_test_assignments (experiment, user_id, bucket, variant) "
        "VALUES ('e', gen_random_uuid(), 100, 'a')",
    ],
)
def test_constraints_refuse_what_the_seeds_forbid(engine, statement):
    with pytest.raises(exc.IntegrityError), engine.begin() as conn:
        conn.execute(text(statement))


def test_one_active_model_per_task(engine):
    insert = ("INSERT INTO model_registry (name, version, uri, framework, input_dim, output_dim, metrics, status) "
              "VALUES ('master_reg', :v, 'u', 'skl2onnx', 160, 4, '{}', 'active')")
    with engine.begin() as conn:
        conn.execute(text(insert), {"v": "v1"})
    with pytest.raises(exc.IntegrityError), engine.begin() as conn:
        conn.execute(text(insert), {"v": "v2"})


def test_features_store_dimensions_must_match(engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO feature_layouts (feature_version, n_dim, dim_names) VALUES ('v1', 2, '{a,b}')"))
        job = uuid.uuid4()
        conn.execute(text("INSERT INTO jobs (job_id, upload_prefix, user_id, plan, status, partition_date, received_at,"
                          " consent_qa, consent_training) VALUES (:j, 'uploads/j/', :u, 'lite', 'registered',"
                          " '2026-01-01', now(), true, true)"), {"j": job, "u": uuid.uuid4()})
    with pytest.raises(exc.IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO features_store (job_id, user_id, clip_kind, feature_version, n_dim, vec)"
                          " VALUES (:j, gen_random_uuid(), 'mix', 'v1', 2, '{1,2,3}')"), {"j": job})

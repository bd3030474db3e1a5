"""The synthetic cohort in the application database (lib/training/synthetic.py): written next to a real
upload, the training-set loader returns exactly the in-memory synthetic set; re-inserting writes nothing;
deleting removes every synthetic row and nothing else; fitted distributions; training on the loaded cohort."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import text

from mixai_pipeline.lib.features.extract import DIM_NAMES, extract_features
from mixai_pipeline.lib.training import dataset, models, synthetic
from mixai_pipeline_tests.unit.test_training_dataset import T0, add_job, add_user

N_JOBS, SEED = 300, 21
RECEIVED = T0 + timedelta(days=3)
DAY = date(2025, 9, 4)
COHORT_TABLES = ("jobs", "ml_consent", "features_store", "alignments", "labels", "ml_exclusions", "vault_items")


def table_counts(conn) -> dict[str, int]:
    """Rows of every table of the application schema."""
    tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).scalars()
    return {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}


def insert(engine, n_jobs: int = N_JOBS, **kwargs) -> dict:
    with engine.begin() as conn:
        return synthetic.insert_synthetic_cohort(conn, n_jobs, seed=SEED, received_at=RECEIVED,
                                                 partition_date=DAY, **kwargs)


def load(engine):
    with engine.connect() as conn:
        return dataset.load_training_set(conn)


@pytest.fixture
def real_job(engine) -> str:
    """One real (non-synthetic) upload, labelled, with its own inst vault item."""
    with engine.begin() as conn:
        return add_job(conn, add_user(conn, training=True, granted=T0), bpm=128.0, quality="human")


@pytest.fixture(scope="module")
def expected():
    return synthetic.synthetic_training_set(N_JOBS, seed=SEED)


def assert_same_rows(loaded, expected) -> None:
    """Row for row: key, owner, group, plan, quality, weight, the input vector bit for bit, the labels.
    Master params are equal as float32: labels.y_reg is real[], read back as the float32's shortest decimal
    (e.g. 1.9852698), which is that float32 but not the float64 it was rounded from."""
    loaded, expected = loaded.reset_index(drop=True), expected.reset_index(drop=True)
    assert loaded[["job_id", "task"]].values.tolist() == expected[["job_id", "task"]].values.tolist()
    for column in ("user_id", "group", "plan", "quality", "weight"):
        assert loaded[column].tolist() == expected[column].tolist(), column
    for got, want in zip(loaded["x"], expected["x"], strict=True):
        assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)
    assert loaded["y_cls"].tolist() == expected["y_cls"].tolist()
    reg = list(dataset.MASTER_PARAMS)
    np.testing.assert_array_equal(loaded[reg].to_numpy(dtype=np.float32), expected[reg].to_numpy(dtype=np.float32))
    assert dataset.digest(loaded) == dataset.digest(expected)  # the digest hashes labels as float32


def test_the_loader_returns_exactly_the_synthetic_set_next_to_a_real_job(engine, real_job, expected):
    real_rows = load(engine)
    summary = insert(engine)
    assert summary["jobs"] == summary["jobs_written"] == N_JOBS
    assert summary["labels"] == dict.fromkeys(dataset.TASKS, N_JOBS)
    assert summary["users"] == expected["user_id"].nunique()

    loaded = load(engine)
    synthetic_rows = loaded[loaded["job_id"] != real_job]
    assert_same_rows(synthetic_rows, expected)
    # the real upload's rows are as before, and no group spans both
    assert_same_rows(loaded[loaded["job_id"] == real_job], real_rows)
    assert not set(real_rows["group"]) & set(synthetic_rows["group"])
    # groups are users: a song's uploads (one user) never straddle two groups
    assert (synthetic_rows["group"] == "u:" + synthetic_rows["user_id"]).all()

    with engine.connect() as conn:
        jobs = conn.execute(text(
            """SELECT count(*) FILTER (WHERE manifest = CAST(:marker AS jsonb)
                                       AND upload_prefix = 'synthetic/' || job_id || '/'
                                       AND status = 'done' AND partition_date = :day AND received_at = :at),
                      count(*) FROM jobs WHERE manifest->>'source' = 'synthetic'"""),
            {"marker": f'{{"source": "synthetic", "seed": {SEED}, "cohort": "{summary["cohort"]}"}}',
             "day": DAY, "at": RECEIVED}).one()
        assert tuple(jobs) == (N_JOBS, N_JOBS)
        layout = conn.execute(text("SELECT dim_names FROM feature_layouts WHERE feature_version = 'v1'")).scalar_one()
        assert tuple(layout) == DIM_NAMES
        # no audio, so no vault items: the stages that work on stored stems pass the synthetic jobs by
        assert conn.execute(text("SELECT count(*) FROM vault_items")).scalar_one() == 1


def test_reinserting_writes_nothing_and_a_different_cohort_under_the_same_ids_is_refused(engine):
    insert(engine)
    with engine.connect() as conn:
        before = table_counts(conn)
    again = insert(engine)
    assert again["jobs_written"] == 0 and again["jobs"] == N_JOBS
    with engine.connect() as conn:
        assert table_counts(conn) == before
    # the same seed with another parameter draws the same job ids with other content
    with pytest.raises(ValueError, match="delete_synthetic_cohort first"):
        insert(engine, label_noise=0.2)
    with pytest.raises(ValueError, match="timezone-aware"), engine.begin() as conn:
        synthetic.insert_synthetic_cohort(conn, 10, seed=SEED, received_at=datetime(2025, 9, 4), partition_date=DAY)
    with pytest.raises(TypeError):
        insert(engine, label_nosie=0.2)


def test_delete_removes_every_synthetic_row_and_leaves_the_real_job(engine, real_job, expected):
    with engine.connect() as conn:
        before = table_counts(conn)
    real_rows = load(engine)
    insert(engine)
    with engine.begin() as conn:
        one_job, one_user = conn.execute(text(
            "SELECT job_id, user_id FROM jobs WHERE upload_prefix LIKE 'synthetic/%' ORDER BY job_id LIMIT 1")).one()
        # an operator's exclusions of synthetic rows: honoured by the loader, removed with the cohort
        conn.execute(text("INSERT INTO ml_exclusions (job_id, reason, created_by) VALUES (:j, 'quality', 'test')"),
                     {"j": one_job})
        conn.execute(text("INSERT INTO ml_exclusions (user_id, reason, created_by) VALUES (:u, 'manual', 'test')"),
                     {"u": one_user})
    assert str(one_user) not in set(load(engine)["user_id"])
    with engine.connect() as conn:
        during = table_counts(conn)
    assert {t: during[t] - before[t] for t in COHORT_TABLES if during[t] != before[t]} == {
        "jobs": N_JOBS, "ml_consent": expected["user_id"].nunique(),
        "features_store": 3 * N_JOBS, "alignments": N_JOBS, "labels": 3 * N_JOBS, "ml_exclusions": 2}

    with engine.begin() as conn:
        assert synthetic.delete_synthetic_cohort(conn) == N_JOBS
    with engine.connect() as conn:
        assert table_counts(conn) == before
    assert_same_rows(load(engine), real_rows)
    with engine.begin() as conn:
        assert synthetic.delete_synthetic_cohort(conn) == 0


def _music(rng: np.random.Generator, seconds: float = 6.0, sr: int = 44100) -> np.ndarray:
    """A few seconds of stereo music-like audio: a decaying harmonic tone per beat over noise hits."""
    t = np.arange(int(seconds * sr)) / sr
    bpm = rng.uniform(80, 150)
    beat = (t * bpm / 60) % 1.0
    pitch = 110 * 2 ** (rng.integers(0, 24, size=int(seconds * bpm / 60) + 1) / 12)[(t * bpm / 60).astype(int)]
    tone = sum(np.sin(2 * np.pi * k * pitch * t) / k ** rng.uniform(1, 2.5) for k in range(1, 6))
    hits = rng.normal(size=t.size) * np.exp(-beat * rng.uniform(20, 60))
    mono = rng.uniform(0.05, 0.3) * tone * np.exp(-beat * 3) + rng.uniform(0.02, 0.2) * hits
    return np.stack([mono, mono * rng.uniform(0.7, 1.0)], axis=1).astype(np.float32)


def test_a_distribution_fitted_to_real_vectors_drives_the_cohort(engine):
    rng = np.random.default_rng(0)
    real = np.stack([extract_features(_music(rng), 44100)[0] for _ in range(6)])
    fitted = synthetic.fit_distribution(real)
    distributions = {"inst": fitted, "vocal": fitted}
    summary = insert(engine, 60, distributions=distributions)
    assert summary["jobs_written"] == 60
    expected = synthetic.synthetic_training_set(60, seed=SEED, distributions=distributions)
    assert_same_rows(load(engine), expected)
    with engine.connect() as conn:
        inst = np.array(conn.execute(text("SELECT vec FROM features_store WHERE clip_kind = 'inst'")).scalars().all())
    lufs = DIM_NAMES.index("integrated_loudness_lufs")
    # as loud as the real clips (about -24 LUFS here), not as the documented default (-15 LUFS)
    assert abs(inst[:, lufs].mean() - real[:, lufs].mean()) < 2.5
    with pytest.raises(ValueError, match="delete_synthetic_cohort first"):
        insert(engine, 60)  # the same seed and size without the fitted distributions


def test_each_task_chooses_a_model_on_the_loaded_cohort(engine):
    insert(engine)
    frame = load(engine)
    chosen = {task: models.train_from_frame(frame, task, min_samples=100) for task in dataset.TASKS}
    assert {task: result.skipped_reason for task, result in chosen.items()} == dict.fromkeys(dataset.TASKS)
    assert all(result.chosen for result in chosen.values()), {t: r.selection for t, r in chosen.items()}

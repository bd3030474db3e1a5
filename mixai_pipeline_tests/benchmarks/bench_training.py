"""Weekly training benchmark: 20,000 synthetic-but-realistic uploads, every task end to end — grouped 5-fold CV
of every candidate and baseline, the refit, ONNX export, the parity check, the MLflow run and registered model
version, the object store and the ``model_registry`` row (``runs.train_and_register``, what the weekly assets
call) — on a real PostgreSQL (embedded), a local object store and MLflow on sqlite.

Rows: ``synthetic.synthetic_training_set`` with the inst and vocal feature distributions fitted to the demo
corpus (the eight demo chorales rendered as in ``make demo``, ``CLIP_SECONDS`` each, features by
``extract_features``). Side by side in the same run: the same training with folds one after another
(``n_jobs=1``, the baseline) and two at a time (``n_jobs=2``, what the assets use on this 2-core machine).
One repeat per configuration by default (``MIXAI_BENCH_TRAINING_REPEATS``): a repeat is a minute or more, and
the median is quoted.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

N_UPLOADS = int(os.environ.get("MIXAI_BENCH_TRAINING_ROWS", "20000"))
REPEATS = int(os.environ.get("MIXAI_BENCH_TRAINING_REPEATS", "1"))
CLIP_SECONDS = 30.0
SEED = 20250909


def demo_corpus_vectors(workdir: Path) -> dict[str, np.ndarray]:
    """inst and vocal feature vectors of the demo uploads' chorales (rendered like ``make demo`` does)."""
    from mixai_pipeline.lib.demo import render
    from mixai_pipeline.lib.demo.uploads import GOOD_UPLOADS
    from mixai_pipeline.lib.features.extract import extract_features

    vectors: dict[str, list] = {"inst": [], "vocal": []}
    for corpus_path, patch, bpm, repeats, *_ in GOOD_UPLOADS:
        score = render.load_chorale(corpus_path)
        parts = {"vocal": ([0], render.PROGRAMS["choir"]),
                 "inst": (list(range(1, len(score.parts))), render.PROGRAMS[patch])}
        for clip, (indices, program) in parts.items():
            stem = workdir / f"{corpus_path.replace('/', '_')}-{clip}"
            render.write_midi(score, indices, program, bpm, repeats, stem.with_suffix(".mid"))
            render.synthesize(stem.with_suffix(".mid"), stem.with_suffix(".wav"))
            x, sr = sf.read(stem.with_suffix(".wav"), always_2d=True)
            vectors[clip].append(extract_features(x[: int(CLIP_SECONDS * sr)], sr)[0])
    return {clip: np.asarray(v, dtype=np.float64) for clip, v in vectors.items()}


def _train_all(frame, n_jobs: int, *, engine, store, tracking, label: str) -> dict:
    from mixai_pipeline.lib.training import dataset, runs

    digest = dataset.digest(frame)
    started = time.perf_counter()
    outcomes = [runs.train_and_register(frame, task, store=store, engine=engine, tracking=tracking,
                                        version_label=label, training_set_digest=digest, actor="benchmark",
                                        min_samples=1000, n_jobs=n_jobs) for task in dataset.TASKS]
    total = time.perf_counter() - started
    return {"total_s": total, "tasks": {o.task: o.summary() for o in outcomes}}


def run() -> dict:
    from mixai_pipeline.lib.features.extract import DIM_NAMES, FEATURE_VERSION
    from mixai_pipeline.lib.pipeline.records import ensure_feature_layout
    from mixai_pipeline.lib.storage.database import engine_for
    from mixai_pipeline.lib.storage.object_store import LocalObjectStore
    from mixai_pipeline.lib.training import dataset, synthetic
    from mixai_pipeline.resources import Tracking
    from mixai_pipeline_tests.benchmarks.common import embedded_postgres, fresh_database

    with tempfile.TemporaryDirectory(prefix="mixai-bench-training-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        vectors = demo_corpus_vectors(root)
        dists = {clip: synthetic.fit_distribution(v) for clip, v in vectors.items()}
        frame = synthetic.synthetic_training_set(N_UPLOADS, seed=SEED, distributions=dists)
        prepare_s = time.perf_counter() - t0
        with embedded_postgres(root / "pg") as admin_uri:
            engine = engine_for(fresh_database(admin_uri))
            with engine.begin() as conn:  # as the audio pipeline leaves it
                ensure_feature_layout(conn, FEATURE_VERSION, DIM_NAMES)
            store = LocalObjectStore(root / "objects")
            tracking = Tracking(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                artifact_root=(root / "mlartifacts").as_uri())
            runs_by_config: dict[str, list[dict]] = {"sequential_folds": [], "parallel_folds": []}
            for repeat in range(REPEATS):  # alternate, so that machine load hits both alike
                for name, n_jobs in (("sequential_folds", 1), ("parallel_folds", 2)):
                    runs_by_config[name].append(_train_all(frame, n_jobs, engine=engine, store=store,
                                                           tracking=tracking, label=f"bench-{name}-{repeat}"))
            engine.dispose()

    def median_total(name: str) -> float:
        return statistics.median(r["total_s"] for r in runs_by_config[name])

    fast = runs_by_config["parallel_folds"][-1]
    return {
        "rows_per_task": dataset.task_counts(frame), "repeats": REPEATS,
        "features": "synthetic, inst/vocal distributions fitted to the 8 demo chorales",
        "prepare_s": round(prepare_s, 1),
        "end_to_end_s": {"parallel_folds_n_jobs_2": round(median_total("parallel_folds"), 1),
                         "baseline_sequential_folds_n_jobs_1": round(median_total("sequential_folds"), 1)},
        "speedup": round(median_total("sequential_folds") / median_total("parallel_folds"), 2),
        "target_s": 60,
        "per_task_parallel": {task: {k: s[k] for k in ("status", "chosen", "metric", "cv", "baselines", "seconds")
                                     if k in s} for task, s in fast["tasks"].items()},
        "per_task_sequential_s": {task: s["seconds"] for task, s in
                                  runs_by_config["sequential_folds"][-1]["tasks"].items()},
    }

"""Serving-loop benchmark, on an embedded PostgreSQL with real ONNX models (``lib/serving/simulator.py``):

- ``master_params``: jobs decided per second with the flags on and an active model (one onnxruntime call per
  job and task, logged) against the same jobs with the flags off (the rules only), side by side, batches
  interleaved; the served calls' latency p50/p99 as ``model_predictions`` recorded it;
- ``controller``: one rollout-controller evaluation (metrics of the stage window, PSI, outcome test) over
  a candidate with 20,000 logged calls, median of 5;
- ``buckets``: 100,000 users bucketed by ``bucketing.bucket`` against the seed's Java ``String.hashCode``
  (reimplemented) — time, and how far the 5 % and 25 % splits land from their targets.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import text

from mixai_pipeline.lib.governance.access import add_operator
from mixai_pipeline.lib.serving import bucketing, master_params, rollout, simulator
from mixai_pipeline.lib.serving.flags import FLAGS, set_flag
from mixai_pipeline.lib.storage.database import engine_for
from mixai_pipeline.lib.storage.object_store import LocalObjectStore
from mixai_pipeline.lib.training.serving import ServingClient
from mixai_pipeline_tests.benchmarks.common import embedded_postgres, fresh_database, median_time

JOBS_PER_BATCH = 300
BATCHES = 3
USERS = 100_000


def _java_string_hashcode_bucket(value: str) -> int:
    h = 0
    for ch in value:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    signed = h - (1 << 32) if h >= 1 << 31 else h
    return abs(signed) % 100          # Math.abs(hashCode()) % 100, as the seed product did


def _flags(engine, enabled: bool) -> None:
    with engine.begin() as conn:
        for key in FLAGS:
            set_flag(conn, key, enabled=enabled, rollout_percent=100, actor="bench", reason="benchmark")


def _buckets() -> dict:
    users = [str(uuid.UUID(int=int(x), version=4)) for x in np.random.default_rng(7).integers(0, 2**63, USERS)]
    out = {}
    for name, fn in (("blake2b_salted", lambda u: bucketing.bucket("master_reg:v1", u)),
                     ("java_string_hashcode", _java_string_hashcode_bucket)):
        start = time.perf_counter()
        buckets = np.asarray([fn(u) for u in users])
        seconds = time.perf_counter() - start
        counts = np.bincount(buckets, minlength=100)
        out[name] = {"seconds": round(seconds, 3),
                     "share_below_5_pct": round(float((buckets < 5).mean() * 100), 3),
                     "share_below_25_pct": round(float((buckets < 25).mean() * 100), 3),
                     "bucket_count_min_max": [int(counts.min()), int(counts.max())]}
    return out


def run() -> dict:
    out: dict = {"jobs_per_batch": JOBS_PER_BATCH, "batches": BATCHES}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, embedded_postgres(Path(tmp) / "pg") as admin:
        engine = engine_for(fresh_database(admin))
        store = LocalObjectStore(Path(tmp) / "objects")
        now = datetime.now(timezone.utc)
        add_operator(engine, "bench", "admin", by="bench", now=now)
        healthy, reference = simulator.healthy_master_model(seed=3)
        model = simulator.register(engine, store, healthy, label="bench", reference_inputs=reference)
        with engine.begin() as conn:
            conn.execute(text("UPDATE model_registry SET status = 'active', rollout_percent = 100, "
                              "activated_at = now(), rollout_updated_at = now() WHERE id = :id"),
                         {"id": model["model_id"]})
        batches = [simulator.simulated_jobs(JOBS_PER_BATCH, seed=100 + i) for i in range(BATCHES)]
        with engine.begin() as conn:
            for jobs in batches:
                simulator.insert_jobs(conn, jobs, received_at=now)
        rates: dict[str, list[float]] = {"rules": [], "model": []}
        with ServingClient(engine, store) as client:
            client.warm(["master_reg"])
            for jobs in batches:
                for mode in ("rules", "model"):
                    _flags(engine, mode == "model")
                    start = time.perf_counter()
                    master_params.decide_jobs(engine, client, jobs)
                    rates[mode].append(len(jobs) / (time.perf_counter() - start))
            client.flush()
        with engine.connect() as conn:
            latencies = conn.execute(text("SELECT latency_ms FROM model_predictions WHERE source = 'model'")
                                     ).scalars().all()
        out["master_params"] = {
            "jobs_per_s_median": {mode: round(statistics.median(v), 1) for mode, v in rates.items()},
            "model_call_latency_ms": {"n": len(latencies), "p50": round(float(np.percentile(latencies, 50)), 3),
                                      "p99": round(float(np.percentile(latencies, 99)), 3)},
        }

        # the controller over a candidate with 20,000 calls in its stage
        candidate = simulator.register(engine, store, simulator.healthy_master_model(seed=4)[0], label="bench-cand",
                                       reference_inputs=reference)
        start_at = now - timedelta(hours=2)
        with engine.begin() as conn:
            conn.execute(text("UPDATE model_registry SET rollout_percent = 25, rollout_updated_at = :t WHERE id = :id"),
                         {"t": start_at, "id": candidate["model_id"]})
            rng = np.random.default_rng(5)
            conn.execute(text(
                """INSERT INTO model_predictions (task, model_id, model_version, n_rows, latency_ms, source, created_at,
                                                  output)
                   VALUES ('master_reg', :id, :v, 1, :lat, 'model', :at, CAST(:out AS jsonb))"""),
                [{"id": candidate["model_id"], "v": candidate["version"], "lat": float(rng.gamma(2, 0.5)),
                  "at": start_at + timedelta(seconds=i * 0.3), "out": f"[[{rng.normal():.4f}, {rng.normal():.4f}, "
                  f"{abs(rng.normal()):.4f}, -14.0]]"} for i in range(20_000)])
        policy = rollout.RolloutPolicy()

        def evaluate():
            with engine.connect() as conn:
                return rollout.evaluate(conn, policy, datetime.now(timezone.utc))

        out["controller"] = {"calls_in_stage": 20_000, "evaluation_s_median": round(median_time(evaluate, 5), 4),
                             "decisions": [f"{d.task} {d.action}" for d in evaluate()]}
        engine.dispose()
    out["buckets"] = _buckets()
    return out

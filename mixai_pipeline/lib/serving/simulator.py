"""A traffic simulator for the serving loop (tests, the benchmark and the demo): simulated uploads replayed
through ``master_params`` with real models, so that the rollout controller has real calls to judge.

- ``simulated_jobs``: uploads as ``master_params.day_inputs`` rows (owner, plan, bpm, inst/vocal/mix feature
  vectors) from the synthetic generator (``training.synthetic``), optionally with **drifted inputs**: every
  mix and vocal dimension moved by ``drift`` × its typical spread (then kept physical);
- ``insert_jobs``: their ``jobs`` (upload prefix ``simulated/``, status ``done``, no audio, no labels, so no
  stage and no training set picks them up) and ``features_store`` rows;
- ``replay``: ``master_params.decide_jobs`` over them through a real ``ServingClient`` (calls logged in
  ``model_predictions``), then an outcome per served job in ``ab_test_metrics`` (re-processed with the
  variant's probability: an **outcome regression** is a higher treatment rate);
- models, all real ONNX run by onnxruntime: ``healthy_master_model`` (Ridge on synthetic rows, with its
  reference rows), ``slow_master_model`` (the healthy model plus an input-dependent matrix product sized
  until a call takes longer than the latency SLO: **injected latency**), ``nan_master_model`` (answers NaN:
  every call is a ``bad_output`` **error**), and a **model that fails to load**: any registered model whose
  stored bytes are then replaced (``corrupt_stored_model``; the sha256 check refuses it).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
from sqlalchemy import Connection, Engine, text

from mixai_pipeline.lib.serving import master_params
from mixai_pipeline.lib.serving.online_metrics import record_outcome
from mixai_pipeline.lib.training import synthetic
from mixai_pipeline.lib.training.dataset import INPUT_DIMS, MASTER_PARAMS

SIMULATED_PREFIX = "simulated/"
SIMULATED_SOURCE = "simulated"
SIMULATED_DAY = date(2024, 12, 30)   # no real day partition: the audio assets never see these jobs


def _uploads(n: int, seed: int, distributions=None) -> list[synthetic.SyntheticUpload]:
    # Many users with a song or two each: the rollout splits users, and clustered near-duplicate uploads would
    # make a 5 % sample of calls (or a reference) far less varied than the population it stands for.
    return synthetic.synthetic_uploads(n, tasks=("master_reg",), seed=seed, songs_per_user=(1, 2),
                                       uploads_per_song=(1, 1), distributions=distributions)


def simulated_jobs(n: int, *, seed: int, drift: float = 0.0, distributions=None) -> list[dict]:
    """``n`` simulated uploads (module docstring); the same seed gives the same users and features.
    ``distributions``: the inst/vocal feature distributions (``synthetic.fit_distribution``) to draw from,
    e.g. those a model's training rows came from; default the generator's own."""
    uploads = _uploads(n, seed, distributions)
    spread = synthetic.default_distribution("inst").std.astype(np.float32)
    jobs = []
    for u in uploads:
        mix, vocal = u.mix, u.vocal
        if drift:
            mix = synthetic.physical((mix + drift * spread)[None, :])[0]
            vocal = synthetic.physical((vocal + drift * spread)[None, :])[0]
        jobs.append({"job_id": u.job_id, "user_id": u.user_id, "plan": u.plan, "bpm": u.bpm,
                     "inst_vec": u.inst.tolist(), "vocal_vec": np.asarray(vocal).tolist(),
                     "mix_vec": np.asarray(mix).tolist()})
    return jobs


def insert_jobs(conn: Connection, jobs: list[dict], *, received_at: datetime, day: date = SIMULATED_DAY) -> int:
    """Write the jobs and their feature rows (idempotent: present jobs are left alone). Returns jobs written."""
    from mixai_pipeline.lib.features.extract import DIM_NAMES, FEATURE_VERSION
    from mixai_pipeline.lib.pipeline import records

    present = set(conn.execute(text("SELECT job_id::text FROM jobs WHERE job_id = ANY(CAST(:ids AS uuid[]))"),
                               {"ids": [j["job_id"] for j in jobs]}).scalars())
    new = [j for j in jobs if j["job_id"] not in present]
    if not new:
        return 0
    conn.execute(text(
        """INSERT INTO jobs (job_id, upload_prefix, user_id, plan, status, partition_date, received_at, uploaded_at,
                             consent_qa, consent_training, bpm, manifest)
           VALUES (CAST(:job AS uuid), :prefix, CAST(:user AS uuid), :plan, 'done', :day, :at, :at, false, false,
                   :bpm, CAST(:manifest AS jsonb))"""),
        [{"job": j["job_id"], "prefix": f"{SIMULATED_PREFIX}{j['job_id']}/", "user": j["user_id"], "plan": j["plan"],
          "day": day, "at": received_at, "bpm": j["bpm"], "manifest": json.dumps({"source": SIMULATED_SOURCE})}
         for j in new])
    stats = {"source": SIMULATED_SOURCE}
    for j in new:
        records.record_features(conn, j["job_id"], {"feature_version": FEATURE_VERSION, "clips": {
            clip: {"vec": j[f"{clip}_vec"], "stats": stats} for clip in ("inst", "vocal", "mix")}}, DIM_NAMES)
    return len(new)


def delete_simulated(conn: Connection) -> int:
    """Remove every simulated job with its rows (outcomes, decisions, features). Returns jobs removed."""
    jobs = f"SELECT job_id FROM jobs WHERE upload_prefix LIKE '{SIMULATED_PREFIX}%'"
    for table in ("ab_test_metrics", "master_params", "features_store"):
        conn.execute(text(f"DELETE FROM {table} WHERE job_id IN ({jobs})"))
    return conn.execute(text(f"DELETE FROM jobs WHERE job_id IN ({jobs})")).rowcount


@dataclass
class ReplaySummary:
    jobs: int = 0
    seconds: float = 0.0
    variants: Counter = field(default_factory=Counter)       # (task, variant or source) -> jobs
    outcomes: Counter = field(default_factory=Counter)       # (variant, reprocessed) -> jobs


def replay(engine: Engine, client, jobs: list[dict], *, reprocess: dict[str, float] | None = None, seed: int = 0,
           received_at: datetime, salt: str | None = None) -> ReplaySummary:
    """Insert ``jobs``, decide them through ``master_params`` (real model calls), then draw each served job's
    outcome: re-processed with probability ``reprocess[variant]`` (default 10 % for both)."""
    rates = {"treatment": 0.1, "control": 0.1, **(reprocess or {})}
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    with engine.begin() as conn:
        insert_jobs(conn, jobs, received_at=received_at)
        stored = master_params.job_inputs(conn, [j["job_id"] for j in jobs])  # jobs seen before keep their rows
    kwargs = {} if salt is None else {"salt": salt}
    decided = master_params.decide_jobs(engine, client, stored, **kwargs)
    client.flush()
    summary = ReplaySummary(jobs=len(jobs))
    with engine.begin() as conn:
        rows = conn.execute(text(
            """SELECT job_id::text AS job_id, variant FROM master_params
               WHERE task = 'master_reg' AND job_id = ANY(CAST(:ids AS uuid[]))"""),
            {"ids": [j["job_id"] for j in jobs]}).mappings().all()
        for row in rows:
            if row["variant"] is None:
                continue
            value = float(rng.random() < rates[row["variant"]])
            record_outcome(conn, row["job_id"], value=value)
            summary.outcomes[(row["variant"], bool(value))] += 1
    summary.variants = Counter({f"{task} {source}": n for (task, source), n in decided.sources.items()})
    summary.seconds = time.perf_counter() - started
    return summary


# ------------------------------------------------------------------------------------------- models

def healthy_master_model(*, seed: int = 0, n: int = 1000) -> tuple[bytes, np.ndarray]:
    """A master_reg model (StandardScaler → Ridge) fitted on synthetic rows, as ONNX, and those rows (its
    output reference is taken on them)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mixai_pipeline.lib.training.onnx_export import to_onnx

    uploads = _uploads(n, seed)
    X = np.stack([u.mix for u in uploads]).astype(np.float32)
    y = np.asarray([u.labels["master_reg"] for u in uploads], dtype=np.float64)
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X, y)
    return to_onnx(model, X.shape[1], task="master_reg", target_names=MASTER_PARAMS), X


def _graph_model(base: bytes, extra_nodes, extra_inits, combine) -> bytes:
    """``base`` (a one-output regressor) with extra nodes whose result ``combine`` folds into the output."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(base)
    graph = model.graph
    out = graph.output[0].name
    inner = f"{out}_base"
    for node in graph.node:
        node.output[:] = [inner if o == out else o for o in node.output]
    graph.initializer.extend(extra_inits)
    graph.node.extend([*extra_nodes, helper.make_node(combine, [inner, "extra_term"], [out])])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def slow_master_model(base: bytes, *, over_ms: float = 50.0, max_size: int = 4096) -> bytes:
    """``base`` plus an input-dependent square matrix product (times 0: the answer is unchanged), doubled in
    size until one call takes longer than ``over_ms`` on this machine (measured, median of 3)."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    size = 256
    while True:
        a = numpy_helper.from_array(np.full((size, size), 1e-3, dtype=np.float32), "slow_a")
        zero = numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "slow_zero")
        nodes = [
            helper.make_node("ReduceSum", [_input_name(base)], ["slow_s"], keepdims=0),
            helper.make_node("Mul", ["slow_s", "slow_zero"], ["slow_s0"]),
            helper.make_node("Add", ["slow_a", "slow_s0"], ["slow_b"]),          # depends on the input: not folded
            helper.make_node("MatMul", ["slow_b", "slow_a"], ["slow_c"]),
            helper.make_node("MatMul", ["slow_c", "slow_b"], ["slow_d"]),
            helper.make_node("ReduceSum", ["slow_d"], ["slow_e"], keepdims=0),
            helper.make_node("Mul", ["slow_e", "slow_zero"], ["extra_term"]),
        ]
        candidate = _graph_model(base, nodes, [a, zero], "Add")
        session = ort.InferenceSession(candidate, providers=["CPUExecutionProvider"])
        row = np.zeros((1, INPUT_DIMS["master_reg"]), dtype=np.float32)
        name = session.get_inputs()[0].name
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            session.run(None, {name: row})
            timings.append((time.perf_counter() - t0) * 1e3)
        if float(np.median(timings)) > over_ms * 1.5 or size >= max_size:
            return candidate
        size *= 2


def _input_name(onnx_bytes: bytes) -> str:
    import onnx

    return onnx.load_from_string(onnx_bytes).graph.input[0].name


def nan_master_model(base: bytes) -> bytes:
    """``base`` whose every answer is NaN (0 × inf): each call is a ``bad_output``."""
    from onnx import helper, numpy_helper

    inf = numpy_helper.from_array(np.array([np.inf], dtype=np.float32), "nan_inf")
    zero = numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "nan_zero")
    nodes = [helper.make_node("Mul", ["nan_inf", "nan_zero"], ["extra_term"])]
    return _graph_model(base, nodes, [inf, zero], "Add")


def register(engine: Engine, store, onnx_bytes: bytes, *, label: str, reference_inputs: np.ndarray | None,
             actor: str = "simulator", task: str = "master_reg") -> dict:
    """Register a model file as a candidate (``registry.register_file``) with its output reference."""
    from mixai_pipeline.lib.training.registry import register_file

    with engine.begin() as conn:
        return register_file(conn, store, task, onnx_bytes, version_label=label, actor=actor,
                             note="simulated traffic", reference_inputs=reference_inputs)


def corrupt_stored_model(store, task: str, version: str) -> None:
    """Replace a registered model's stored bytes (its sha256 no longer matches: it fails to load)."""
    from mixai_pipeline.lib.training.registry import model_object_key

    store.put_bytes(model_object_key(task, version), b"not an onnx model any more", "application/octet-stream")

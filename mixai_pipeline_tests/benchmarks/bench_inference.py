"""Inference benchmark: the serving path (``lib/training/inference.Predictor``: validation, 5-model cache,
onnxruntime in a worker thread with its timeout) against the scikit-learn pipeline's own ``predict`` on the
same rows, side by side. Models: the master_reg Ridge pipeline and the preset_cls logistic regression,
trained on synthetic rows (``lib/training/synthetic``). Single-row latency p50/p99 over 2,000 calls each,
interleaved; batch throughput on 1,000 rows, median of 5."""

from __future__ import annotations

import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mixai_pipeline.lib.training import dataset, models, synthetic
from mixai_pipeline.lib.training.inference import OnnxModelCache, Predictor
from mixai_pipeline.lib.training.onnx_export import to_onnx

CALLS = 2000
BATCH = 1000


def _percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4)}


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run() -> dict:
    frame = synthetic.synthetic_training_set(1500, seed=11)
    cache = OnnxModelCache()
    predictor = Predictor(cache)
    out = {"calls": CALLS, "batch_rows": BATCH}
    with threadpool_limits(1):
        for task in ("master_reg", "preset_cls"):
            data = dataset.task_data(frame, task)
            result = models.train_task(task, data.X, data.y, sample_weight=data.weight, groups=data.groups,
                                       min_samples=100, candidates=[c for c in models.candidates_for(task)
                                                                    if "lightgbm" not in c.name])
            estimator = result.estimator
            key = (task, "bench")
            cache.load(key, to_onnx(estimator, data.X.shape[1], task=task))
            rows = data.X.astype(np.float32)
            ours, theirs = [], []
            for i in range(CALLS):
                row = rows[i % len(rows)][None, :]
                ours.append(_seconds(predictor.predict, key, row))
                theirs.append(_seconds(estimator.predict, row))
            batch = rows[:BATCH]
            ours_batch, theirs_batch = zip(*[(_seconds(predictor.predict, key, batch),
                                              _seconds(estimator.predict, batch)) for _ in range(5)], strict=True)
            out[task] = {
                "model": result.chosen, "input_dim": int(rows.shape[1]),
                "onnxruntime_predictor_single_row": _percentiles(ours),
                "sklearn_predict_single_row": _percentiles(theirs),
                "onnxruntime_predictor_rows_per_s": round(BATCH / statistics.median(ours_batch)),
                "sklearn_rows_per_s": round(BATCH / statistics.median(theirs_batch)),
            }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

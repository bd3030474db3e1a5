"""Serving: the LRU session cache, input validation, fallback on every model problem, parity with sklearn.

Slow and failing sessions are fakes wrapped around a real onnxruntime session (labelled below): a model
that hangs or crashes on demand cannot be produced otherwise."""

import dataclasses
import threading
import time

import numpy as np
import pytest
from skl2onnx import to_onnx as skl2onnx_to_onnx
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mixai_pipeline.lib.training.inference import (
    ModelLoadError,
    ModelNotFoundError,
    ModelUnavailableError,
    OnnxModelCache,
    Predictor,
    validate_input,
)
from mixai_pipeline.lib.training.onnx_export import to_onnx

N_DIM = 160
REG = ("master_reg", "v20250909")
CLS = ("preset_cls", "v20250909")
RULE_MASTER = np.array([0.0, 0.0, 2.0, -14.0], dtype=np.float32)


def rule_master(X: np.ndarray) -> np.ndarray:
    """Stands in for the rule-based estimator: the same four values for every row."""
    return np.tile(RULE_MASTER, (len(X), 1))


def rule_preset(X: np.ndarray) -> np.ndarray:
    return np.array(["preset_00"] * len(X))


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(300, N_DIM)) * np.geomspace(0.01, 3000.0, N_DIM)).astype(np.float32)
    y = np.c_[X[:, :3] / X[:, :3].std(0), -14 + X[:, 3] / X[:, 3].std(0)]
    labels = np.array([f"preset_{i:02d}" for i in range(12)])[(np.abs(X[:, 0] / X[:, 0].std() * 4)).astype(int) % 12]
    reg = Pipeline([("s", StandardScaler()), ("r", MultiOutputRegressor(Ridge(alpha=1.0)))]).fit(X, y)
    clf = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(C=0.1, max_iter=200))]).fit(X, labels)
    return {"X": X, "reg": reg, "clf": clf, "reg_onnx": to_onnx(reg, N_DIM, task="master_reg"),
            "clf_onnx": to_onnx(clf, N_DIM, task="preset_cls")}


@pytest.fixture
def predictor(models):
    cache = OnnxModelCache()
    cache.load(REG, models["reg_onnx"])
    cache.load(CLS, models["clf_onnx"])
    with Predictor(cache, {"master_reg": rule_master, "preset_cls": rule_preset}) as p:
        yield p


def test_cache_keeps_five_least_recently_used_out(models):
    cache = OnnxModelCache()
    keys = [("master_reg", f"v{i}") for i in range(7)]
    for key in keys[:5]:
        cache.load(key, models["reg_onnx"])
    assert cache.get(keys[0]).key == keys[0]  # touch v0: v1 is now the least recently used
    cache.load(keys[5], models["reg_onnx"])
    assert keys[1] not in cache and len(cache) == 5
    cache.load(keys[6], models["reg_onnx"])
    assert cache.keys() == [keys[3], keys[4], keys[0], keys[5], keys[6]]
    with pytest.raises(ModelNotFoundError, match="no loader"):
        cache.get(keys[1])
    assert cache.evict(keys[0]) and keys[0] not in cache and not cache.evict(keys[0])


def test_cache_loads_from_path_and_loader(models, tmp_path):
    path = tmp_path / "master_reg.onnx"
    path.write_bytes(models["reg_onnx"])
    calls = []

    def loader(key):
        calls.append(key)
        return path if key == REG else None

    cache = OnnxModelCache(loader=loader)
    model = cache.get(REG)
    assert (model.input_name, model.input_dim, model.kind, model.output_dim) == ("input", N_DIM, "regression", 4)
    assert cache.get(REG) is model and calls == [REG]  # second call served from the cache
    with pytest.raises(ModelNotFoundError, match="loader has no such model"):
        cache.get(("master_reg", "v0"))
    clf = OnnxModelCache().load(CLS, models["clf_onnx"])
    assert clf.kind == "classification" and clf.output_dim == 12 and clf.classes[0] == "preset_00"


def test_corrupt_onnx_falls_back_with_the_reason(models):
    calls = []

    def loader(key):
        calls.append(key)
        return b"\x08\x07garbage, not a protobuf"

    with Predictor(OnnxModelCache(loader=loader), {"master_reg": rule_master}) as p:
        pred = p.predict(REG, models["X"][:2])
        again = p.predict(REG, models["X"][:2])
    assert pred.source == "fallback" and pred.fallback_code == "load_failed"
    assert "cannot load ONNX model" in pred.fallback_reason and "master_reg/v20250909" in pred.fallback_reason
    np.testing.assert_array_equal(pred.output, rule_master(models["X"][:2]))
    assert again.fallback_code == "load_failed" and calls == [REG]  # the failure is remembered, not re-parsed
    assert pred.probabilities is None and pred.latency_ms > 0


def test_failed_load_is_retried_after_the_retry_period(models):
    now = [0.0]
    sources = iter([b"corrupt", models["reg_onnx"]])
    cache = OnnxModelCache(loader=lambda key: next(sources), retry_failed_after_s=30, clock=lambda: now[0])
    with pytest.raises(ModelLoadError):
        cache.get(REG)
    assert "cannot load" in cache.last_failure(REG)
    with pytest.raises(ModelLoadError):
        cache.get(REG)  # within 30 s: the remembered failure
    now[0] = 31.0
    assert cache.get(REG).kind == "regression" and cache.last_failure(REG) is None


def test_unsupported_layout_is_a_load_failure(models):
    zipmapped = skl2onnx_to_onnx(models["clf"], models["X"][:1], target_opset={"": 17, "ai.onnx.ml": 3})
    with Predictor(OnnxModelCache(loader=lambda key: zipmapped.SerializeToString()),
                   {"preset_cls": rule_preset}) as p:
        pred = p.predict(CLS, models["X"][:1])
    assert pred.fallback_code == "load_failed" and "zipmap=False" in pred.fallback_reason


def test_missing_model_falls_back_or_raises_without_fallback(models):
    with Predictor(OnnxModelCache(), {"master_reg": rule_master}) as p:
        pred = p.predict(REG, models["X"][:3])
        assert (pred.source, pred.fallback_code, pred.model_key) == ("fallback", "missing", REG)
        per_call = p.predict(REG, models["X"][:1], fallback=lambda X: np.full((len(X), 4), 1.5))
        assert per_call.output.tolist() == [[1.5] * 4]
        with pytest.raises(ModelUnavailableError, match="no fallback configured for 'preset_cls'"):
            p.predict(CLS, models["X"][:1])
        with pytest.raises(ModelUnavailableError, match="returned shape"):
            p.predict(REG, models["X"][:3], fallback=lambda X: RULE_MASTER[None])


def test_model_results_equal_sklearn(predictor, models):
    X = models["X"]
    reg = predictor.predict(REG, X)
    assert (reg.source, reg.fallback_code, reg.model_key) == ("model", None, REG)
    assert reg.output.shape == (len(X), 4) and reg.output.dtype == np.float32
    assert np.abs(reg.output - models["reg"].predict(X)).max() <= 1e-4
    cls = predictor.predict(CLS, X.astype(np.float64))  # float32-castable input is accepted
    np.testing.assert_array_equal(cls.output, models["clf"].predict(X))
    assert np.abs(cls.probabilities - models["clf"].predict_proba(X)).max() <= 1e-4
    assert list(cls.classes) == list(models["clf"].classes_)
    one = predictor.predict(REG, X[:1].tolist())
    assert one.output.shape == (1, 4) and one.latency_ms > 0


def test_invalid_input_is_the_callers_bug(predictor, models):
    X = models["X"]
    with pytest.raises(ValueError, match=r"2-D.*reshape\(1, -1\)"):
        predictor.predict(REG, X[0])
    with pytest.raises(ValueError, match="expects 160"):
        predictor.predict(REG, X[:2, :159])
    bad = X[:3].copy()
    bad[1, 7] = np.nan
    with pytest.raises(ValueError, match="non-finite.*row 1, column 7"):
        predictor.predict(REG, bad)
    with pytest.raises(ValueError, match="non-finite"):
        predictor.predict(REG, np.full((1, N_DIM), 1e39))  # beyond float32
    with pytest.raises(ValueError, match="float32-castable"):
        predictor.predict(REG, [["a"] * N_DIM])
    with pytest.raises(ValueError, match="no rows"):
        predictor.predict(REG, np.zeros((0, N_DIM), np.float32))
    # With a declared width, even a missing model's caller is told.
    with Predictor(OnnxModelCache(), {"master_reg": rule_master}, n_features={"master_reg": N_DIM}) as p, \
            pytest.raises(ValueError, match="expects 160"):
        p.predict(REG, X[:1, :10])
    assert validate_input(X[:2]).flags["C_CONTIGUOUS"]


class SlowSession:
    """Fake (a hang cannot be produced on demand): waits until onnxruntime's terminate flag is set, or 2 s."""

    def __init__(self, session):
        self.session = session
        self.terminated = threading.Event()

    def run(self, output_names, feeds, run_options=None):
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if run_options is not None and run_options.terminate:
                self.terminated.set()
                raise RuntimeError("Exiting due to terminate flag being set to true.")
            time.sleep(0.005)
        return self.session.run(output_names, feeds, run_options)


class BrokenSession:
    """Fake: a session whose run raises, or returns NaN."""

    def __init__(self, session, nan: bool = False):
        self.session, self.nan = session, nan

    def run(self, output_names, feeds, run_options=None):
        if not self.nan:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : simulated")
        out = self.session.run(output_names, feeds, run_options)
        return [np.full_like(out[0], np.nan)]


def test_timeout_falls_back_and_terminates_the_run(predictor, models):
    real = predictor.cache.get(REG)
    slow = SlowSession(real.session)
    predictor.cache.put(dataclasses.replace(real, session=slow))
    pred = predictor.predict(REG, models["X"][:1], timeout_s=0.05)
    assert (pred.source, pred.fallback_code) == ("fallback", "timeout")
    assert "within 0.05 s" in pred.fallback_reason
    np.testing.assert_array_equal(pred.output, rule_master(models["X"][:1]))
    assert slow.terminated.wait(1.0)  # the worker thread was released, not left running
    predictor.cache.put(real)
    assert predictor.predict(REG, models["X"][:1]).source == "model"


def test_run_failure_and_bad_output_fall_back(predictor, models):
    real = predictor.cache.get(REG)
    predictor.cache.put(dataclasses.replace(real, session=BrokenSession(real.session)))
    pred = predictor.predict(REG, models["X"][:2])
    assert pred.fallback_code == "run_failed" and "simulated" in pred.fallback_reason
    predictor.cache.put(dataclasses.replace(real, session=BrokenSession(real.session, nan=True)))
    pred = predictor.predict(REG, models["X"][:2])
    assert pred.fallback_code == "bad_output" and "non-finite" in pred.fallback_reason

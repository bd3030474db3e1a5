"""ONNX export, signature and the parity gate, on small synthetic 160-dim feature sets (the three task shapes)."""

import hashlib
import pickle

import numpy as np
import onnx
import pytest
from lightgbm import LGBMClassifier
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mixai_pipeline.lib.training import onnx_export
from mixai_pipeline.lib.training.onnx_export import model_signature, parity, to_onnx

N_DIM = 160
MASTER_TARGETS = ["low_shelf_db", "high_shelf_db", "comp_db", "target_lufs"]
PRESETS = np.array([f"preset_{i:02d}" for i in range(12)])


def features(n: int, seed: int, n_dim: int = N_DIM) -> np.ndarray:
    """Feature-like rows: mixed scales (dB values, Hz centroids, ratios), float32 as stored."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.01, 3000.0, n_dim)
    return (rng.normal(size=(n, n_dim)) * scales + scales).astype(np.float32)


def master_targets(X: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = (X - X.mean(0)) / X.std(0)
    y = np.c_[z[:, :3] @ rng.normal(size=(3, 3)) + rng.normal(scale=0.5, size=(len(X), 3)),
              -14 + 2 * np.tanh(z[:, 3])]
    return np.clip(y, [-6, -6, 0, -20], [6, 6, 8, -8])


def preset_labels(X: np.ndarray) -> np.ndarray:
    z = (X - X.mean(0)) / X.std(0)
    return PRESETS[(np.floor(2 * z[:, 0]) + 3 * (z[:, 1] > 0)).astype(int) % 12]


@pytest.fixture(scope="module")
def data():
    X = features(400, seed=1)
    return X, master_targets(X, 2), preset_labels(X)


@pytest.fixture(scope="module")
def ridge(data):
    X, y, _ = data
    return Pipeline([("scale", StandardScaler()), ("reg", MultiOutputRegressor(Ridge(alpha=1.0)))]).fit(X, y)


@pytest.fixture(scope="module")
def logreg(data):
    X, _, labels = data
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.1, max_iter=200))]).fit(X, labels)


def small_lgbm() -> LGBMClassifier:
    return LGBMClassifier(n_estimators=15, num_leaves=7, min_child_samples=5, n_jobs=1, verbose=-1, random_state=0)


@pytest.fixture(scope="module")
def lgbm(data):
    X, _, labels = data
    return Pipeline([("scale", StandardScaler()), ("clf", small_lgbm())]).fit(X, labels)


@pytest.fixture(scope="module")
def lgbm_bare(data):
    X, _, labels = data
    return small_lgbm().fit(X, labels)


@pytest.fixture(scope="module")
def align_data():
    """align_conf: a handful of alignment statistics, three string classes."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = np.where(X[:, 0] + 0.3 * X[:, 1] > 0.6, "fail", np.where(X[:, 0] > -0.4, "warn", "ok"))
    return X, y


def test_regression_export_signature_and_parity(data, ridge):
    X, _, _ = data
    blob = to_onnx(ridge, N_DIM, task="master_reg", target_names=MASTER_TARGETS)
    sig = model_signature(blob)
    assert (sig.input_name, sig.input_dim, sig.kind, sig.output_dim) == ("input", N_DIM, "regression", 4)
    assert [(o.name, o.elem_type, o.shape) for o in sig.outputs] == [("variable", "float", (None, 4))]
    assert all(v <= onnx_export.TARGET_OPSET[d] for d, v in sig.opset.items())
    assert sig.metadata["mixai.task"] == "master_reg" and sig.metadata["mixai.n_features"] == "160"
    assert sig.metadata["mixai.target_names"] == '["low_shelf_db", "high_shelf_db", "comp_db", "target_lufs"]'
    onnx.checker.check_model(onnx.load_model_from_string(blob), full_check=True)

    report = parity(ridge, blob, X, task="master_reg")
    assert report.passed, report.reason
    assert report.max_abs_diff <= 1e-4 and report.n_rows == len(X)
    assert len(report.expected["values"]) == 4 and 0 <= report.worst_row < len(X)


@pytest.mark.parametrize("name", ["logreg", "lgbm", "lgbm_bare"])
def test_preset_classifiers_export_and_parity(request, data, name):
    X, _, labels = data
    est = request.getfixturevalue(name)
    blob = to_onnx(est, N_DIM, task="preset_cls")
    sig = model_signature(blob)
    assert sig.kind == "classification" and sig.output_dim == len(np.unique(labels))
    assert [(o.name, o.elem_type, o.shape) for o in sig.outputs] == [
        ("label", "string", (None,)), ("probabilities", "float", (None, sig.output_dim))]
    assert sig.classes == list(est.classes_)
    assert sig.opset.get("ai.onnx.ml", 0) <= 3

    report = parity(est, blob, X, task="preset_cls")
    assert report.passed, report.reason
    assert report.n_label_mismatches == 0 and report.max_abs_diff <= 1e-4


@pytest.mark.parametrize("estimator", [
    Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.1, max_iter=200))]),
    DecisionTreeClassifier(max_depth=4, min_samples_leaf=5, random_state=0),
], ids=["logreg", "tree"])
def test_align_conf_export_and_parity(align_data, estimator):
    X, y = align_data
    est = estimator.fit(X, y)
    blob = to_onnx(est, 6, task="align_conf")
    sig = model_signature(blob)
    assert (sig.input_dim, sig.output_dim, sig.classes) == (6, 3, ["fail", "ok", "warn"])
    assert parity(est, blob, X, task="classification").passed


def test_export_is_deterministic(ridge, lgbm):
    for est, task in ((ridge, "master_reg"), (lgbm, "preset_cls")):
        first = to_onnx(est, N_DIM, task=task)
        assert to_onnx(est, N_DIM, task=task) == first
        assert to_onnx(pickle.loads(pickle.dumps(est)), N_DIM, task=task) == first  # other object ids
        assert onnx_export.sha256(first) == hashlib.sha256(first).hexdigest()


def test_parity_fails_for_onnx_of_another_fit(data, ridge, logreg):
    """The ONNX file of last week's model next to this week's estimator: blocked, with the numbers."""
    X, y, labels = data
    other = features(400, seed=9)
    old_reg = Pipeline([("s", StandardScaler()), ("r", MultiOutputRegressor(Ridge()))]).fit(other, master_targets(
        other, 3))
    report = parity(ridge, to_onnx(old_reg, N_DIM, task="master_reg"), X, task="master_reg")
    assert not report.passed and report.max_abs_diff > 1e-4
    assert "> 0.0001 at row" in report.reason and report.expected != report.actual

    old_clf = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(C=0.1, max_iter=200))]).fit(
        other, preset_labels(other)[::-1])
    report = parity(logreg, to_onnx(old_clf, N_DIM, task="preset_cls"), X, task="preset_cls")
    assert not report.passed and report.n_label_mismatches > 0
    assert "labels differ" in report.reason
    assert report.expected["label"] != report.actual["label"]


def test_parity_fails_for_tampered_weights(data, ridge):
    X, _, _ = data
    model = onnx.load_model_from_string(to_onnx(ridge, N_DIM, task="master_reg"))
    scaler = next(n for n in model.graph.node if n.op_type == "Scaler")
    offset = next(a for a in scaler.attribute if a.name == "offset")
    offset.floats[7] += 0.5 * float(np.std(X[:, 7]))  # half a standard deviation on one feature
    report = parity(ridge, model.SerializeToString(), X, task="master_reg")
    assert not report.passed and report.max_abs_diff > 1e-4


def test_parity_reports_model_problems_without_raising(data, ridge):
    X, _, _ = data
    report = parity(ridge, b"definitely not onnx", X, task="master_reg")
    assert not report.passed and "cannot load" in report.reason

    narrow = Pipeline([("s", StandardScaler()), ("r", Ridge())]).fit(X[:, :10], X[:, 0])
    report = parity(ridge, to_onnx(narrow, 10, task="regression"), X, task="master_reg")
    assert not report.passed and "has 160 columns" in report.reason

    report = parity(ridge, to_onnx(ridge, N_DIM, task="master_reg"), X, task="master_reg", tolerance=0.0)
    assert not report.passed and "> 0 at row" in report.reason  # float32 onnx vs float64 sklearn: never exact


class MeanOfColumns(RegressorMixin, BaseEstimator):
    """A regressor skl2onnx has no converter for."""

    def fit(self, X, y):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return np.asarray(X).mean(axis=1)


def test_bad_arguments_raise(data, ridge, logreg):
    X, _, _ = data
    with pytest.raises(ValueError, match="unknown task"):
        to_onnx(ridge, N_DIM, task="mastering")
    with pytest.raises(ValueError, match="not a classifier"):
        to_onnx(ridge, N_DIM, task="preset_cls")
    with pytest.raises(ValueError, match="not a regressor"):
        to_onnx(logreg, N_DIM, task="master_reg")
    with pytest.raises(ValueError, match="fitted on 160"):
        to_onnx(ridge, 159, task="master_reg")
    with pytest.raises(onnx_export.OnnxExportError, match="cannot convert MeanOfColumns"):
        to_onnx(MeanOfColumns().fit(X[:, :3], X[:, 0]), 3, task="regression")
    blob = to_onnx(ridge, N_DIM, task="master_reg")
    with pytest.raises(ValueError, match="2-D"):
        parity(ridge, blob, X[0], task="master_reg")
    bad = X[:5].copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        parity(ridge, blob, bad, task="master_reg")
    with pytest.raises(ValueError, match="not an ONNX model"):
        model_signature(b"\x00garbage")

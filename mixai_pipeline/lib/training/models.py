"""Candidates, grouped 5-fold cross-validation and selection for the three tasks (seed 000 §10).

Candidates (``candidates_for``):

- ``master_reg``: ``ridge`` = StandardScaler → MultiOutputRegressor(Ridge), alpha chosen from
  ``RIDGE_ALPHAS`` by an inner grouped CV on the training part of each fold (never on the test fold);
  the final refit chooses it the same way on all rows.
- ``preset_cls``: ``logreg`` = StandardScaler → LogisticRegression (multinomial, C=1), and the
  challenger ``lightgbm`` = LGBMClassifier whose number of trees is found by early stopping on an inner
  validation split by group (20 % of the training part's groups), then refit on the whole training part
  with that many trees.
- ``align_conf``: ``logreg`` as above, and ``tree`` = a shallow DecisionTreeClassifier (depth 4) on the
  alignment statistics (the pseudo-label is thresholds on them).

Baselines on the same folds: ``mean`` (DummyRegressor) for regression; ``majority`` (most frequent
class) and ``prior`` (random draws from the class shares, fixed seed) for classification: the majority
baseline has the best accuracy a constant can get, the prior one a better macro-F1 than a constant.

Cross-validation: 5 folds, grouped (``GroupKFold`` for regression, ``StratifiedGroupKFold`` with a fixed
``random_state`` for classes), so a user's (or a shared instrumental's) rows are all in one fold. Every
fit gets the label-quality sample weights, and every metric weights the held-out rows the same way (it
measures agreement with the labels we trust most). Metrics per fold, with their mean and std:
regression ``mae`` (mean over the four outputs), ``mae_<output>``, ``r2_<output>`` and ``r2`` (mean
over the outputs whose labels vary in the fold: an output that is constant there, like the -14 LUFS
target of every pseudo-label, has no R² and reports 0); classification ``macro_f1`` and ``accuracy``.

Selection: a candidate qualifies when it clearly beats every baseline — regression: mean MAE at least
``MIN_GAIN`` (2 %) lower than the baseline's and lower in most folds; classification: macro-F1 at least
``MIN_F1_GAIN`` (0.02) above the best baseline's and higher in most folds, and accuracy not below the
majority baseline's. Among qualifying candidates the best mean score (lowest MAE / highest macro-F1)
wins (ties: the order of ``candidates_for``, simplest first) and is refit on all rows. If none
qualifies, ``chosen`` is None and ``selection`` says why. Everything is seeded, and ``train_from_frame``
sorts rows by job_id: the same rows, in any order, give the same folds, metrics and model.

Speed. ``n_jobs`` (default 1) folds are fitted at once, in threads, each fit single-threaded (LightGBM
``n_jobs=1``, BLAS limited to one thread): LightGBM, BLAS and the logistic loss release the GIL, and
one thread per fit scales better than two threads inside one fit (BLAS's default of a thread per core
made the linear models 8-40x slower on a busy machine). LogisticRegression stops at ``tol=1e-3``: on
20,000 synthetic preset rows it needs 76 instead of 357 lbfgs iterations for the same held-out macro-F1
(0.521 vs 0.516). LightGBM's fold models are the early-stopped fits themselves (trained on 80 % of the
fold's training groups); only the final model is refit on all rows with the found number of trees.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixai_pipeline.lib.training import dataset

N_SPLITS = 5
INNER_SPLITS = 3
RANDOM_STATE = 20250909
RIDGE_ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
LOGREG_C = 1.0
LOGREG_MAX_ITER = 2000
LOGREG_TOL = 1e-3
TREE_MAX_DEPTH = 4
TREE_MIN_LEAF = 20
LGBM_PARAMS: dict[str, Any] = {
    "n_estimators": 400, "learning_rate": 0.1, "num_leaves": 15, "min_child_samples": 20,
    "colsample_bytree": 0.5, "subsample": 0.8, "subsample_freq": 1, "max_bin": 63, "reg_lambda": 1.0,
    "deterministic": True, "force_row_wise": True, "verbose": -1,
}
LGBM_EARLY_STOPPING_ROUNDS = 25
LGBM_VALIDATION_SHARE = 0.2
MIN_GAIN = 0.02       # regression: relative MAE improvement over the baseline
MIN_F1_GAIN = 0.02    # classification: absolute macro-F1 improvement over the best baseline

TASK_KIND = {"master_reg": "regression", "preset_cls": "classification", "align_conf": "classification"}
SELECTION_METRIC = {"regression": "mae", "classification": "macro_f1"}


# ---------------------------------------------------------------------------------------- candidates

def _weight_key(estimator) -> str:
    """The fit keyword that reaches the final step's sample_weight (pipelines route by step name)."""
    steps = getattr(estimator, "steps", None)
    return f"{steps[-1][0]}__sample_weight" if steps else "sample_weight"


def _plain_fit(estimator, X, y, w):
    return estimator.fit(X, y, **{_weight_key(estimator): w})


@dataclass(frozen=True)
class Candidate:
    """A model family: ``build(params)`` gives an unfitted estimator; ``grid`` lists the parameter sets
    an inner grouped CV chooses from (one set: no search); ``early_stopping`` marks LightGBM."""

    name: str
    build: Callable[[dict], Any]
    grid: tuple[dict, ...] = ({},)
    early_stopping: bool = False

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray, *, kind: str,
            random_state: int, final: bool = False, threads: int = 1) -> tuple[Any, dict]:
        """Fit on these rows only (any tuning uses them alone); returns the estimator and chosen params.
        ``final``: the model to ship (an early-stopped model is then refit on all the rows, with ``threads``
        LightGBM threads: it is the only fit running then)."""
        params = self.grid[0]
        if len(self.grid) > 1:
            params = _inner_search(self, X, y, w, groups, kind=kind, random_state=random_state)
        if self.early_stopping:
            return _fit_early_stopped(self, params, X, y, w, groups, random_state=random_state, refit=final,
                                      threads=threads)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(did not converge|lbfgs failed).*")
            return _plain_fit(self.build(params), X, y, w), dict(params)


def _inner_search(candidate: Candidate, X, y, w, groups, *, kind: str, random_state: int) -> dict:
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        return candidate.grid[0]
    splitter = GroupKFold(n_splits=min(INNER_SPLITS, n_groups))
    folds = list(splitter.split(X, y, groups))
    scores = []
    for params in candidate.grid:
        fold_scores = []
        for train, test in folds:
            est = _plain_fit(candidate.build(params), X[train], y[train], w[train])
            fold_scores.append(_primary(kind, y[test], est.predict(X[test]), w[test]))
        scores.append(float(np.mean(fold_scores)))
    best = int(np.argmin(scores)) if kind == "regression" else int(np.argmax(scores))
    return candidate.grid[best]


def _fit_early_stopped(candidate: Candidate, params: dict, X, y, w, groups, *, random_state: int, refit: bool,
                       threads: int = 1):
    """LightGBM stopped early on a validation split by group; ``refit``: then refit on all the rows with the
    number of trees found (else the early-stopped model itself, trained on the other 80 %)."""
    import lightgbm as lgb
    from sklearn.model_selection import GroupShuffleSplit

    probe = None
    if len(np.unique(groups)) >= 2:
        split = GroupShuffleSplit(n_splits=1, test_size=LGBM_VALIDATION_SHARE, random_state=random_state)
        fit_rows, val_rows = next(split.split(X, y, groups))
        val_rows = val_rows[np.isin(y[val_rows], np.unique(y[fit_rows]))]  # classes the fit part knows
        if len(val_rows) and len(np.unique(y[fit_rows])) >= 2:
            probe = candidate.build({**params, "n_jobs": threads})
            with warnings.catch_warnings():
                # lightgbm 4.7 deprecates eval_set for eval_X/eval_y, whose labels it does not encode yet
                warnings.filterwarnings("ignore", message=".*eval_set.*deprecated")
                probe.fit(X[fit_rows], y[fit_rows], sample_weight=w[fit_rows], eval_set=[(X[val_rows], y[val_rows])],
                          eval_sample_weight=[w[val_rows]],
                          callbacks=[lgb.early_stopping(LGBM_EARLY_STOPPING_ROUNDS, verbose=False)])
    if probe is None:  # nothing to stop on: all the trees, all the rows
        estimator = candidate.build({**params, "n_jobs": threads}).fit(X, y, sample_weight=w)
        return float32_thresholds(estimator), {**params, "n_estimators": int(estimator.n_estimators)}
    trees = int(probe.best_iteration_ or probe.n_estimators)
    if not refit:
        return probe, {**params, "n_estimators": trees}
    estimator = candidate.build({**params, "n_estimators": trees, "n_jobs": threads}).fit(X, y, sample_weight=w)
    return float32_thresholds(estimator), {**params, "n_estimators": trees}


def float32_thresholds(estimator):
    """The fitted LightGBM model with every split threshold t replaced by the largest float32 <= t.

    LightGBM compares ``double(x) <= t`` with t a double midpoint between bin edges; the exported ONNX tree
    compares float32 x with float32(t). When t rounds *up* to a float32 that is a data value, that value
    goes left in LightGBM and right in ONNX: measured on 20,000 synthetic preset rows, one tree branch
    flipped and moved a probability by 0.044, failing the parity gate. No float32 lies in (floor32(t), t],
    so for float32 inputs (ours always are) the snapped model predicts exactly the same (measured: 0.0
    difference), and ONNX then agrees to ~4e-7."""
    import re

    import lightgbm as lgb

    def snap(match: re.Match) -> str:
        values = np.array(match.group(1).split(), dtype=np.float64)
        snapped = values.astype(np.float32)
        above = snapped.astype(np.float64) > values
        snapped[above] = np.nextafter(snapped[above], np.float32(-np.inf))
        return "threshold=" + " ".join(repr(float(v)) for v in snapped)

    text = re.sub(r"^threshold=(.*)$", snap, estimator.booster_.model_to_string(), flags=re.M)
    text = re.sub(r"^tree_sizes=.*\n", "", text, flags=re.M)  # byte offsets of the old text; optional
    estimator._Booster = lgb.Booster(model_str=text)  # the sklearn wrapper predicts through this booster
    return estimator


def candidates_for(task: str, *, random_state: int = RANDOM_STATE) -> list[Candidate]:
    """The candidate families of a task, simplest first (each fit single-threaded: folds run in parallel)."""
    from lightgbm import LGBMClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    def logreg(_params: dict):
        return Pipeline([("scaler", StandardScaler()),
                         ("model", LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER, tol=LOGREG_TOL))])

    if task == "master_reg":
        return [Candidate(
            "ridge",
            lambda p: Pipeline([("scaler", StandardScaler()),
                                ("model", MultiOutputRegressor(Ridge(alpha=p["alpha"])))]),
            grid=tuple({"alpha": a} for a in RIDGE_ALPHAS))]
    if task == "preset_cls":
        return [Candidate("logreg", logreg),
                Candidate("lightgbm", lambda p: LGBMClassifier(**{"n_jobs": 1, **LGBM_PARAMS, **p},
                                                               random_state=random_state),
                          early_stopping=True)]
    if task == "align_conf":
        return [Candidate("logreg", logreg),
                Candidate("tree", lambda _p: DecisionTreeClassifier(max_depth=TREE_MAX_DEPTH,
                                                                    min_samples_leaf=TREE_MIN_LEAF,
                                                                    random_state=random_state))]
    raise ValueError(f"unknown task {task!r} (expected one of {', '.join(dataset.TASKS)})")


def baselines_for(kind: str, *, random_state: int = RANDOM_STATE) -> list[Candidate]:
    from sklearn.dummy import DummyClassifier, DummyRegressor

    if kind == "regression":
        return [Candidate("mean", lambda _p: DummyRegressor(strategy="mean"))]
    return [Candidate("majority", lambda _p: DummyClassifier(strategy="most_frequent")),
            Candidate("prior", lambda _p: DummyClassifier(strategy="stratified", random_state=random_state))]


# ------------------------------------------------------------------------------------------- metrics

def _primary(kind: str, y_true, y_pred, w) -> float:
    from sklearn.metrics import f1_score, mean_absolute_error

    if kind == "regression":
        return float(mean_absolute_error(y_true, y_pred, sample_weight=w))
    return float(f1_score(y_true, y_pred, average="macro", sample_weight=w, zero_division=0))


def fold_metrics(kind: str, y_true, y_pred, w, output_names: Sequence[str] = ()) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score

    if kind == "regression":
        maes = mean_absolute_error(y_true, y_pred, sample_weight=w, multioutput="raw_values")
        r2s = r2_score(y_true, y_pred, sample_weight=w, multioutput="raw_values")
        # An output whose labels do not vary in the fold (e.g. target_lufs, -14 for every pseudo-label) has
        # no R²: it is reported as 0 (sklearn's convention) and left out of the average.
        varies = np.ptp(y_true, axis=0) > 1e-6
        r2s = np.where(varies, r2s, 0.0)
        out = {"mae": float(np.mean(maes)), "r2": float(np.mean(r2s[varies])) if varies.any() else 0.0}
        for name, mae, r2 in zip(output_names, maes, r2s, strict=True):
            out[f"mae_{name}"], out[f"r2_{name}"] = float(mae), float(r2)
        return out
    return {"macro_f1": float(f1_score(y_true, y_pred, average="macro", sample_weight=w, zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred, sample_weight=w))}


@dataclass
class CVScores:
    """One candidate's (or baseline's) cross-validation: per metric its mean, std and per-fold values."""

    name: str
    metrics: dict[str, dict[str, Any]]
    params: list[dict]                  # what the inner tuning chose, per fold
    fit_seconds: float                  # wall time of all its fold fits (not part of the metrics)
    qualifies: bool | None = None       # clearly beats the baselines (None for baselines)

    def mean(self, metric: str) -> float:
        return self.metrics[metric]["mean"]

    def folds(self, metric: str) -> list[float]:
        return self.metrics[metric]["folds"]

    def as_dict(self) -> dict:
        return {"metrics": self.metrics, "params": self.params, "qualifies": self.qualifies}


def summarise_folds(per_fold: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    return {m: {"mean": float(np.mean([f[m] for f in per_fold])), "std": float(np.std([f[m] for f in per_fold])),
                "folds": [f[m] for f in per_fold]} for m in per_fold[0]}


# ------------------------------------------------------------------------------------------- folds

def grouped_folds(kind: str, y: np.ndarray, groups: np.ndarray, *, n_splits: int = N_SPLITS,
                  random_state: int = RANDOM_STATE) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices of the grouped folds: no group is on both sides of any fold."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    placeholder = np.zeros((len(y), 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        if kind == "regression":
            folds = list(GroupKFold(n_splits=n_splits).split(placeholder, y, groups))
        else:
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
            folds = list(splitter.split(placeholder, y, groups))
    for train, test in folds:  # sklearn's contract, checked because the honesty of every metric rests on it
        if len(test) == 0 or len(train) == 0:
            raise RuntimeError(f"grouped {n_splits}-fold split left a fold empty")
        if set(groups[train].tolist()) & set(groups[test].tolist()):
            raise RuntimeError("grouped folds share a group")
    return folds


def cross_validate(candidate: Candidate, kind: str, X: np.ndarray, y: np.ndarray, w: np.ndarray,
                   groups: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]], *,
                   output_names: Sequence[str] = (), random_state: int = RANDOM_STATE,
                   n_jobs: int = 1) -> tuple[CVScores, np.ndarray]:
    """Fit on each fold's training rows (with their groups, for any inner tuning), predict its test rows:
    the scores and the out-of-fold predictions (``n_jobs`` folds at once, each single-threaded)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _cross_validate(candidate, kind, X, y, w, groups, folds, output_names, random_state, n_jobs)


def _cross_validate(candidate: Candidate, kind: str, X, y, w, groups, folds, output_names,
                    random_state: int, n_jobs: int) -> tuple[CVScores, np.ndarray]:
    from concurrent.futures import ThreadPoolExecutor

    def one_fold(fold):
        train, test = fold
        estimator, chosen = candidate.fit(X[train], y[train], w[train], groups[train], kind=kind,
                                          random_state=random_state)
        return estimator.predict(X[test]), chosen

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        outcomes = list(pool.map(one_fold, folds))  # in fold order, whatever finishes first
    oof = np.zeros(y.shape, dtype=np.float64) if kind == "regression" else np.empty(len(y), dtype=object)
    per_fold, params = [], []
    for (_, test), (pred, chosen) in zip(folds, outcomes, strict=True):
        oof[test] = pred
        per_fold.append(fold_metrics(kind, y[test], pred, w[test], output_names))
        params.append(chosen)
    return CVScores(candidate.name, summarise_folds(per_fold), params, time.perf_counter() - started), oof


def qualifies(kind: str, scores: CVScores, baselines: dict[str, CVScores]) -> tuple[bool, str]:
    k = len(scores.folds(SELECTION_METRIC[kind]))
    if kind == "regression":
        base = baselines["mean"]
        gain = 1 - scores.mean("mae") / base.mean("mae") if base.mean("mae") > 0 else 0.0
        wins = sum(a < b for a, b in zip(scores.folds("mae"), base.folds("mae"), strict=True))
        ok = gain >= MIN_GAIN and wins > k // 2
        return ok, (f"{scores.name}: MAE {scores.mean('mae'):.4g} vs baseline {base.mean('mae'):.4g} "
                    f"({gain:+.1%}, better in {wins}/{k} folds)")
    best = max(baselines.values(), key=lambda b: b.mean("macro_f1"))
    gain = scores.mean("macro_f1") - best.mean("macro_f1")
    wins = sum(a > b for a, b in zip(scores.folds("macro_f1"), best.folds("macro_f1"), strict=True))
    accuracy_ok = scores.mean("accuracy") >= baselines["majority"].mean("accuracy")
    ok = gain >= MIN_F1_GAIN and wins > k // 2 and accuracy_ok
    return ok, (f"{scores.name}: macro-F1 {scores.mean('macro_f1'):.4g} vs best baseline ({best.name}) "
                f"{best.mean('macro_f1'):.4g} ({gain:+.4f}, better in {wins}/{k} folds); accuracy "
                f"{scores.mean('accuracy'):.4g} vs majority {baselines['majority'].mean('accuracy'):.4g}")


# -------------------------------------------------------------------------------------------- result

@dataclass
class TrainingResult:
    task: str
    kind: str
    chosen: str | None                  # the winning candidate's name; None if skipped or none qualified
    estimator: Any | None               # refit on all rows (None when nothing was chosen)
    chosen_params: dict | None
    candidates: dict[str, CVScores]
    baselines: dict[str, CVScores]
    selection: list[str]                # how each candidate compared (plain words)
    n_samples: int
    n_groups: int
    n_splits: int
    random_state: int
    feature_names: tuple[str, ...]
    output_names: tuple[str, ...]       # regression outputs, or the classes
    classes: tuple[str, ...]            # classification labels (sorted); () for regression
    job_ids: np.ndarray                 # row order of the arrays below
    fold_of_row: np.ndarray             # test fold of each row (-1 if not cross-validated)
    oof_predictions: dict[str, np.ndarray] = field(default_factory=dict)  # per candidate and baseline
    skipped_reason: str | None = None
    fit_seconds: float = 0.0            # refit of the chosen candidate on all rows
    evaluation: str = ""                # how the scores were measured, in words (model card headline)

    def __post_init__(self):
        if not self.evaluation:
            self.evaluation = f"cross-validated ({self.n_splits}-fold, grouped by user/song)"

    @property
    def input_dim(self) -> int:
        return len(self.feature_names)

    @property
    def output_dim(self) -> int:
        return len(self.output_names)

    @property
    def selection_metric(self) -> str:
        return SELECTION_METRIC[self.kind]

    @property
    def chosen_oof(self) -> np.ndarray | None:
        return self.oof_predictions.get(self.chosen) if self.chosen else None

    def metrics_json(self) -> dict:
        """JSON-safe summary (for model_registry.metrics, MLflow, asset metadata)."""
        return {
            "task": self.task, "chosen": self.chosen, "chosen_params": self.chosen_params,
            "selection_metric": self.selection_metric, "selection": self.selection,
            "skipped_reason": self.skipped_reason, "n_samples": self.n_samples, "n_groups": self.n_groups,
            "n_splits": self.n_splits, "evaluation": self.evaluation, "random_state": self.random_state,
            "input_dim": self.input_dim,
            "output_names": list(self.output_names),
            "candidates": {k: v.as_dict() for k, v in self.candidates.items()},
            "baselines": {k: v.as_dict() for k, v in self.baselines.items()},
        }


def _skip_reason(task: str, kind: str, y: np.ndarray, groups: np.ndarray, min_samples: int,
                 n_splits: int) -> str | None:
    n, n_groups = len(y), len(np.unique(groups)) if len(groups) else 0
    if n < min_samples:
        return f"{task}: {n} labelled rows, fewer than the {min_samples} required to train; no model this time"
    if n_groups < n_splits:
        return (f"{task}: only {n_groups} independent groups (users, merged by shared instrumentals); "
                f"grouped {n_splits}-fold CV needs at least {n_splits}")
    if kind == "classification":
        classes = np.unique(y)
        if len(classes) < 2:
            return f"{task}: every label is {classes[0]!r}; a classifier needs at least 2 classes"
    return None


def train_task(task: str, X: np.ndarray, y: np.ndarray, *, sample_weight: np.ndarray, groups: np.ndarray,
               feature_names: Sequence[str] | None = None, job_ids: Sequence[str] | None = None,
               min_samples: int = dataset.MIN_SAMPLES, n_splits: int = N_SPLITS,
               random_state: int = RANDOM_STATE, candidates: Sequence[Candidate] | None = None,
               n_jobs: int = 1) -> TrainingResult:
    """Cross-validate the task's candidates and baselines on grouped folds, choose, and refit the winner
    (``n_jobs``: folds fitted at once, each single-threaded; BLAS is held to one thread for the whole call)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _train_task(task, X, y, sample_weight=sample_weight, groups=groups, feature_names=feature_names,
                           job_ids=job_ids, min_samples=min_samples, n_splits=n_splits, random_state=random_state,
                           candidates=candidates, n_jobs=n_jobs)


def _train_task(task: str, X, y, *, sample_weight, groups, feature_names, job_ids, min_samples: int, n_splits: int,
                random_state: int, candidates: Sequence[Candidate] | None, n_jobs: int) -> TrainingResult:
    kind = TASK_KIND[task]
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64) if kind == "regression" else np.asarray(y, dtype=object)
    w = np.asarray(sample_weight, dtype=np.float64)
    groups = np.asarray(groups, dtype=object)
    if not (len(X) == len(y) == len(w) == len(groups)):
        raise ValueError(f"X, y, weights and groups differ in length: {len(X)}, {len(y)}, {len(w)}, {len(groups)}")
    names = tuple(feature_names) if feature_names is not None else dataset.FEATURE_NAMES[task]
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"{task}: X has shape {X.shape}, expected (n, {len(names)}) for its feature names")
    classes = tuple(sorted(set(y.tolist()))) if kind == "classification" else ()
    outputs = dataset.MASTER_PARAMS if kind == "regression" else classes
    result = TrainingResult(
        task=task, kind=kind, chosen=None, estimator=None, chosen_params=None, candidates={}, baselines={},
        selection=[], n_samples=len(y), n_groups=len(np.unique(groups)) if len(groups) else 0, n_splits=n_splits,
        random_state=random_state, feature_names=names, output_names=tuple(outputs), classes=classes,
        job_ids=np.asarray(job_ids if job_ids is not None else np.arange(len(y)), dtype=object),
        fold_of_row=np.full(len(y), -1))
    result.skipped_reason = _skip_reason(task, kind, y, groups, min_samples, n_splits)
    if result.skipped_reason:
        return result

    folds = grouped_folds(kind, y, groups, n_splits=n_splits, random_state=random_state)
    for i, (_, test) in enumerate(folds):
        result.fold_of_row[test] = i
    output_names = dataset.MASTER_PARAMS if kind == "regression" else ()
    for baseline in baselines_for(kind, random_state=random_state):
        scores, oof = _cross_validate(baseline, kind, X, y, w, groups, folds, output_names, random_state, 1)
        result.baselines[baseline.name], result.oof_predictions[baseline.name] = scores, oof
    candidates = list(candidates) if candidates is not None else candidates_for(task, random_state=random_state)
    for candidate in candidates:
        scores, oof = _cross_validate(candidate, kind, X, y, w, groups, folds, output_names, random_state, n_jobs)
        scores.qualifies, words = qualifies(kind, scores, result.baselines)
        result.selection.append(words + ("" if scores.qualifies else ": does not clearly beat the baseline"))
        result.candidates[candidate.name], result.oof_predictions[candidate.name] = scores, oof

    qualified = [s for s in result.candidates.values() if s.qualifies]
    if not qualified:
        result.selection.append("no candidate clearly beats the baseline: no model is chosen")
        return result
    sign = 1 if kind == "regression" else -1
    best = min(qualified, key=lambda s: sign * s.mean(SELECTION_METRIC[kind]))  # first wins ties
    chosen = next(c for c in candidates if c.name == best.name)
    started = time.perf_counter()
    result.estimator, result.chosen_params = chosen.fit(X, y, w, groups, kind=kind, random_state=random_state,
                                                        final=True, threads=n_jobs)
    result.fit_seconds = time.perf_counter() - started
    result.chosen = best.name
    result.selection.append(f"chosen: {best.name} (best {SELECTION_METRIC[kind]} among qualifying candidates)")
    return result


def train_from_frame(frame, task: str, **kwargs) -> TrainingResult:
    """``train_task`` on one task's rows of a training-set frame (``dataset.TRAINING_SET_SCHEMA``)."""
    data = dataset.task_data(frame, task)
    return train_task(task, data.X, data.y, sample_weight=data.weight, groups=data.groups,
                      feature_names=data.feature_names, job_ids=data.job_ids, **kwargs)

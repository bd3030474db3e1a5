"""Grouped 5-fold CV, baselines, selection and refit on synthetic rows (lib/training/synthetic.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.model_selection import KFold

from mixai_pipeline.lib.training import dataset, models, onnx_export, synthetic

SMALL = 100  # min_samples for these small sets


@pytest.fixture(scope="module")
def learnable():
    return synthetic.synthetic_training_set(600, seed=11)


@pytest.fixture(scope="module")
def noise():
    return synthetic.synthetic_training_set(600, seed=12, learnable=False, tasks=("master_reg", "preset_cls"))


@pytest.fixture(scope="module")
def master_result(learnable):
    return models.train_from_frame(learnable, "master_reg", min_samples=SMALL)


def _fold_sets(result: models.TrainingResult) -> list[set]:
    return [set(result.job_ids[result.fold_of_row == k]) for k in range(result.n_splits)]


@pytest.mark.parametrize("task", ["master_reg", "align_conf"])
def test_grouped_folds_never_share_a_group(learnable, task):
    data = dataset.task_data(learnable, task)
    kind = models.TASK_KIND[task]
    folds = models.grouped_folds(kind, data.y, data.groups)
    assert len(folds) == 5
    seen = np.zeros(len(data), dtype=int)
    for train, test in folds:
        assert not set(data.groups[train]) & set(data.groups[test])
        assert len(train) + len(test) == len(data)
        seen[test] += 1
    assert (seen == 1).all()  # every row is held out exactly once
    # the synthetic users re-upload songs: a plain split would put a user on both sides
    naive = KFold(5, shuffle=True, random_state=0).split(data.X)
    assert any(set(data.groups[tr]) & set(data.groups[te]) for tr, te in naive)


def test_regression_reports_baseline_and_per_fold_metrics(master_result, learnable):
    r = master_result
    assert r.skipped_reason is None and r.n_samples == 600
    assert r.n_groups == learnable["group"].nunique()
    assert set(r.baselines) == {"mean"} and set(r.candidates) == {"ridge"}
    for scores in (r.baselines["mean"], r.candidates["ridge"]):
        for metric in ("mae", "r2", *(f"mae_{p}" for p in dataset.MASTER_PARAMS)):
            entry = scores.metrics[metric]
            assert len(entry["folds"]) == 5
            assert entry["mean"] == pytest.approx(np.mean(entry["folds"]))
            assert entry["std"] == pytest.approx(np.std(entry["folds"]))
    # the inner search chose alpha per fold from the grid, on training rows only
    assert all(p["alpha"] in models.RIDGE_ALPHAS for p in r.candidates["ridge"].params)
    assert r.oof_predictions["ridge"].shape == (600, 4) and r.oof_predictions["mean"].shape == (600, 4)
    folds = _fold_sets(r)
    assert all(folds) and sum(map(len, folds)) == 600 and len(set().union(*folds)) == 600
    # held-out predictions are really out of fold: recomputing one fold's metric from them matches
    data = dataset.task_data(learnable, "master_reg")
    test = r.fold_of_row == 0
    fold0 = models.fold_metrics("regression", data.y[test], r.oof_predictions["ridge"][test], data.weight[test],
                                dataset.MASTER_PARAMS)
    assert fold0["mae"] == pytest.approx(r.candidates["ridge"].folds("mae")[0])


def test_ridge_beats_the_mean_on_learnable_rows_and_is_refit(master_result, learnable):
    r = master_result
    ridge, base = r.candidates["ridge"], r.baselines["mean"]
    assert ridge.mean("mae") < 0.95 * base.mean("mae")
    assert ridge.mean("r2") > 0.1 > base.mean("r2")
    assert ridge.qualifies and r.chosen == "ridge" and r.chosen_params["alpha"] in models.RIDGE_ALPHAS
    data = dataset.task_data(learnable, "master_reg")
    pred = r.estimator.predict(data.X)
    assert pred.shape == (600, 4)
    assert (r.input_dim, r.output_dim) == (160, 4) and r.output_names == dataset.MASTER_PARAMS
    assert r.feature_names == dataset.MASTER_FEATURE_NAMES
    assert np.array_equal(r.chosen_oof, r.oof_predictions["ridge"])
    summary = json.loads(json.dumps(r.metrics_json()))
    assert summary["chosen"] == "ridge" and summary["baselines"]["mean"]["metrics"]["mae"]["folds"]


def test_nothing_is_chosen_on_pure_noise(noise):
    for task in ("master_reg", "preset_cls"):
        r = models.train_from_frame(noise, task, min_samples=SMALL,
                                    candidates=models.candidates_for(task)[:1])  # the linear model
        assert r.skipped_reason is None
        assert r.chosen is None and r.estimator is None and r.chosen_oof is None
        assert not any(s.qualifies for s in r.candidates.values())
        assert "no model is chosen" in r.selection[-1]
        assert len(r.candidates) == 1 and r.baselines  # the comparison is still reported


def test_classifiers_beat_majority_and_prior_baselines(learnable):
    r = models.train_from_frame(learnable, "align_conf", min_samples=SMALL)
    assert set(r.baselines) == {"majority", "prior"} and set(r.candidates) == {"logreg", "tree"}
    best_baseline = max(b.mean("macro_f1") for b in r.baselines.values())
    assert r.chosen in {"logreg", "tree"}
    assert r.candidates[r.chosen].mean("macro_f1") > best_baseline + 0.2
    assert r.candidates[r.chosen].mean("accuracy") > r.baselines["majority"].mean("accuracy")
    assert r.classes == tuple(sorted(set(dataset.task_data(learnable, "align_conf").y)))
    assert r.input_dim == 28
    assert set(r.estimator.predict(dataset.task_data(learnable, "align_conf").X)) <= set(r.classes)


def test_lightgbm_challenger_runs_with_early_stopping(learnable):
    candidates = models.candidates_for("preset_cls")
    assert [c.name for c in candidates] == ["logreg", "lightgbm"]
    r = models.train_from_frame(learnable, "preset_cls", min_samples=SMALL)
    lgbm = r.candidates["lightgbm"]
    rounds = [p["n_estimators"] for p in lgbm.params]
    assert all(1 <= n < models.LGBM_PARAMS["n_estimators"] for n in rounds)  # stopped early, per fold
    assert lgbm.qualifies and lgbm.mean("macro_f1") > max(b.mean("macro_f1") for b in r.baselines.values())
    assert r.chosen in {"logreg", "lightgbm"}
    best = max((s for s in r.candidates.values() if s.qualifies), key=lambda s: s.mean("macro_f1"))
    assert r.chosen == best.name
    assert r.oof_predictions["lightgbm"].shape == (600,)
    assert set(r.oof_predictions["lightgbm"]) <= set(r.classes)


def test_same_rows_give_identical_metrics_and_predictions(learnable):
    """Row order does not matter and every candidate, LightGBM included, is seeded."""
    subset = learnable[learnable["task"] == "align_conf"]
    candidates = [*models.candidates_for("align_conf"), models.candidates_for("preset_cls")[1]]
    first = models.train_from_frame(subset, "align_conf", min_samples=SMALL, candidates=candidates)
    again = models.train_from_frame(subset.sample(frac=1.0, random_state=1), "align_conf", min_samples=SMALL,
                                    candidates=candidates)
    assert set(first.candidates) == {"logreg", "tree", "lightgbm"}
    assert first.metrics_json() == again.metrics_json()
    for name in first.oof_predictions:
        assert np.array_equal(first.oof_predictions[name], again.oof_predictions[name])
    X = dataset.task_data(subset, "align_conf").X
    np.testing.assert_array_equal(first.estimator.predict_proba(X), again.estimator.predict_proba(X))


def test_too_little_data_is_skipped_with_a_reason(learnable):
    r = models.train_from_frame(learnable, "master_reg")  # 600 rows < MIN_SAMPLES
    assert dataset.MIN_SAMPLES == 1000
    assert r.skipped_reason == ("master_reg: 600 labelled rows, fewer than the 1000 required to train; "
                                "no model this time")
    assert r.chosen is None and r.estimator is None and not r.candidates and not r.baselines

    data = dataset.task_data(learnable, "align_conf")
    few_groups = np.array([f"g{i % 3}" for i in range(len(data))], dtype=object)
    r = models.train_task("align_conf", data.X, data.y, sample_weight=data.weight, groups=few_groups,
                          min_samples=SMALL)
    assert "only 3 independent groups" in r.skipped_reason and "at least 5" in r.skipped_reason

    one_class = np.full(len(data), "ok", dtype=object)
    r = models.train_task("align_conf", data.X, one_class, sample_weight=data.weight, groups=data.groups,
                          min_samples=SMALL)
    assert r.skipped_reason == "align_conf: every label is 'ok'; a classifier needs at least 2 classes"

    with pytest.raises(ValueError, match=r"X has shape \(600, 28\), expected \(n, 160\)"):
        models.train_task("master_reg", data.X, np.zeros((len(data), 4)), sample_weight=data.weight,
                          groups=data.groups)


def test_naive_split_on_near_duplicates_is_optimistic(learnable):
    """The issue's finding: a plain KFold puts re-uploads of one song on both sides and reports a
    much better MAE than the grouped CV, which is the honest one."""
    data = dataset.task_data(learnable, "master_reg")
    ridge = models.candidates_for("master_reg")[0]
    grouped = models.grouped_folds("regression", data.y, data.groups)
    honest, _ = models.cross_validate(ridge, "regression", data.X, data.y, data.weight, data.groups, grouped,
                                      output_names=dataset.MASTER_PARAMS)
    rows = np.arange(len(data)).astype(str).astype(object)  # naive: every row its own group, tuning too
    naive_folds = list(KFold(5, shuffle=True, random_state=0).split(data.X))
    leaky, _ = models.cross_validate(ridge, "regression", data.X, data.y, data.weight, rows, naive_folds,
                                     output_names=dataset.MASTER_PARAMS)
    assert leaky.mean("mae") < 0.85 * honest.mean("mae")
    assert leaky.mean("r2") > honest.mean("r2") + 0.1


def _thresholds(estimator) -> list[tuple[int, float]]:
    """(feature, threshold) of every split of a fitted LightGBM model."""
    out = []
    for tree in estimator.booster_.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                out.append((node["split_feature"], float(node["threshold"])))
                stack += [node["left_child"], node["right_child"]]
    return out


def test_lightgbm_thresholds_are_float32_exact_so_onnx_agrees():
    """A split threshold t that rounds *up* to float32 sends the input x = float32(t) right in LightGBM
    (x > t) and left in the ONNX tree (x <= float32(t)); the shipped model's thresholds are snapped down to
    float32, which changes nothing for float32 inputs and makes the export exact."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4)).astype(np.float32)
    y = np.where(X[:, 0] + 0.5 * X[:, 1] + rng.normal(0, 0.5, 2000) > 0, "a", "b")
    estimator = lgb.LGBMClassifier(n_estimators=20, verbose=-1, random_state=0).fit(X, y)
    rounds_up = [(f, t) for f, t in _thresholds(estimator) if float(np.float32(t)) > t]
    assert rounds_up  # midpoints between data values are rarely float32
    probes = np.repeat(X[:1], len(rounds_up), axis=0)
    for row, (feature, t) in enumerate(rounds_up):
        probes[row, feature] = np.float32(t)  # exactly the value where the two comparisons disagree
    rows = np.vstack([X, probes])
    assert not onnx_export.parity(estimator, onnx_export.to_onnx(estimator, 4, task="classification"), rows,
                                  task="classification").passed

    before = estimator.predict_proba(rows)
    models.float32_thresholds(estimator)
    assert all(float(np.float32(t)) == t for _, t in _thresholds(estimator))
    assert np.array_equal(estimator.predict_proba(rows), before)  # the same model for float32 inputs
    assert onnx_export.parity(estimator, onnx_export.to_onnx(estimator, 4, task="classification"), rows,
                              task="classification").passed

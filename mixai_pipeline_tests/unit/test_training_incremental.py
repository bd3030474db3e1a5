"""Incremental SGD updates (lib/training/incremental.py) on synthetic batches, with a real local object store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from mixai_pipeline.lib.mix.presets import PRESET_IDS
from mixai_pipeline.lib.storage.object_store import LocalObjectStore
from mixai_pipeline.lib.training import dataset, incremental, models, registry, synthetic
from mixai_pipeline.lib.training.onnx_export import model_signature, parity, to_onnx

BATCH_ROWS = 150
N_BATCHES = 4
PRIMARY = {"master_reg": "mae", "preset_cls": "macro_f1", "align_conf": "macro_f1"}


def _batches(learnable: bool, first_seed: int) -> list[pd.DataFrame]:
    # independent users per batch: a later batch never holds near-duplicates of an earlier one's songs
    return [synthetic.synthetic_training_set(BATCH_ROWS, seed=first_seed + k, learnable=learnable)
            for k in range(N_BATCHES)]


@pytest.fixture(scope="module")
def learnable_batches():
    return _batches(True, 300)


@pytest.fixture(scope="module")
def noise_batches():
    return _batches(False, 400)


def _run(batches, task, state=None) -> list[incremental.IncrementalUpdate]:
    updates = []
    for batch in batches:
        updates.append(incremental.update(state, batch, task))
        state = updates[-1].state
    return updates


@pytest.fixture(scope="module")
def learned(learnable_batches):
    """Every task's updates over the learnable batches."""
    return {task: _run(learnable_batches, task) for task in dataset.TASKS}


def _coefficients(state: incremental.IncrementalModel) -> list[np.ndarray]:
    model = state.estimator
    estimators = model.estimators_ if state.kind == "regression" else [model]
    return ([state.scaler.mean_, state.scaler.scale_]
            + [a for e in estimators for a in (e.coef_, e.intercept_, e._standard_coef, e._standard_intercept)])


def _better(task: str, model: float, baseline: float) -> bool:
    return model < baseline if PRIMARY[task] == "mae" else model > baseline


# ------------------------------------------------------------------------------------------ learning

@pytest.mark.parametrize("task", dataset.TASKS)
def test_learnable_batches_beat_the_baseline_prequentially(learned, task):
    updates = learned[task]
    first = updates[0]
    assert first.evaluation is None
    assert first.state.history[0]["metrics"] is None and "n/a" in first.state.history[0]["note"]
    first_result = first.training_result()
    assert first_result.chosen is None and first_result.estimator is None
    assert "no prequential evaluation yet" in first_result.skipped_reason

    metric = PRIMARY[task]
    for k, u in enumerate(updates[1:], start=1):
        assert u.evaluation.model_version == k  # scored by the model before this batch
        assert u.evaluation.n_rows == BATCH_ROWS
    last = updates[-1].evaluation
    best_baseline = min if metric == "mae" else max
    assert _better(task, last.metrics[metric], best_baseline(b[metric] for b in last.baselines.values()))

    result = updates[-1].training_result()
    assert result.chosen == incremental.CANDIDATE_NAME and result.estimator is not None
    assert result.candidates[incremental.CANDIDATE_NAME].qualifies is True
    assert result.n_splits == incremental.PREQUENTIAL_WINDOW
    assert result.n_samples == N_BATCHES * BATCH_ROWS and result.n_groups > 10
    assert result.chosen_params["version"] == N_BATCHES
    assert result.candidates[incremental.CANDIDATE_NAME].folds(metric) == [
        r["metrics"][metric] for r in updates[-1].state.history[-incremental.PREQUENTIAL_WINDOW:]]
    assert set(result.baselines) == ({"mean"} if task == "master_reg" else {"majority", "prior"})


@pytest.mark.parametrize("task", dataset.TASKS)
def test_noise_labels_do_not_qualify(noise_batches, task):
    updates = _run(noise_batches, task)
    result = updates[-1].training_result()
    assert result.chosen is None and result.estimator is None
    assert result.candidates[incremental.CANDIDATE_NAME].qualifies is False
    assert "does not clearly beat the baseline" in " ".join(result.selection)


def test_partial_fit_updates_scaler_and_model_together(learnable_batches):
    data = dataset.task_data(learnable_batches[0], "preset_cls")
    model = incremental.new_model("preset_cls")
    with pytest.raises(ValueError, match="has not learned from any batch yet"):
        model.pipeline()
    assert model.partial_fit(data.X, data.y, data.weight) is model
    assert (model.version, model.n_seen) == (1, len(data))
    np.testing.assert_allclose(model.scaler.mean_, data.X.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-4)
    assert [name for name, _ in model.pipeline().steps] == ["scaler", "model"]
    np.testing.assert_allclose(model.label_weight_sums.sum(), data.weight.sum())

    bad = data.y.copy()
    bad[0] = "lofi_tape"
    with pytest.raises(ValueError, match="lofi_tape"):
        model.partial_fit(data.X, bad, data.weight)
    with pytest.raises(ValueError, match=r"expected \(n > 0, 325\)"):
        model.partial_fit(data.X[:, :10], data.y, data.weight)
    assert model.version == 1  # refused calls change nothing


def test_sample_weights_are_honoured(learnable_batches):
    data = dataset.task_data(learnable_batches[0], "master_reg")
    weighted = incremental.new_model("master_reg").partial_fit(data.X, data.y, data.weight)
    flat = incremental.new_model("master_reg").partial_fit(data.X, data.y, np.ones(len(data)))
    assert not np.array_equal(weighted.estimator.estimators_[0].coef_, flat.estimator.estimators_[0].coef_)
    np.testing.assert_allclose(weighted.target_offset, np.average(data.y, axis=0, weights=data.weight))


def test_regression_offset_is_folded_into_the_exported_intercepts(learned):
    state = learned["master_reg"][-1].state
    X = learned["master_reg"][-1].rows.X
    # every pseudo-label targets -14 LUFS: the frozen offset alone predicts it, the SGD adds nothing
    assert state.target_offset[3] == pytest.approx(-14.0)
    np.testing.assert_allclose(state.pipeline().predict(X)[:, 3], -14.0, atol=1e-9)
    raw = state.estimator.predict(state.scaler.transform(X)) + state.target_offset
    np.testing.assert_allclose(state.pipeline().predict(X), raw, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------ determinism

@pytest.mark.parametrize("task", dataset.TASKS)
def test_shuffled_rows_give_the_identical_model(learnable_batches, learned, task):
    shuffled = [b.sample(frac=1.0, random_state=7 + k).reset_index(drop=True) for k, b in enumerate(learnable_batches)]
    state = _run(shuffled, task)[-1].state
    reference = learned[task][-1].state
    for a, b in zip(_coefficients(state), _coefficients(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    assert state.training_set_digest == reference.training_set_digest
    assert state.history == reference.history


def test_update_never_changes_the_state_it_is_given(learnable_batches, learned):
    before = learned["align_conf"][0].state
    coefficients = [a.copy() for a in _coefficients(before)]
    incremental.update(before, learnable_batches[2], "align_conf")
    assert before.version == 1 and len(before.history) == 1 and before.n_seen == BATCH_ROWS
    for a, b in zip(_coefficients(before), coefficients, strict=True):
        np.testing.assert_array_equal(a, b)


def test_rows_already_included_are_dropped_not_learned_twice(learnable_batches, learned):
    after_first = learned["master_reg"][0].state
    both = pd.concat([learnable_batches[0], learnable_batches[1]], ignore_index=True)
    u = incremental.update(after_first, both, "master_reg")
    assert u.n_already_included == BATCH_ROWS and len(u.rows) == BATCH_ROWS
    for a, b in zip(_coefficients(u.state), _coefficients(learned["master_reg"][1].state), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------ batch size

def test_a_batch_below_min_new_samples_is_refused(learnable_batches, learned):
    frame = learnable_batches[1]
    rows = frame[frame["task"] == "preset_cls"]
    small = rows.iloc[:incremental.MIN_NEW_SAMPLES - 1]
    status = incremental.batch_status(None, small, "preset_cls")
    assert not status.ready and status.n_new == 99
    with pytest.raises(incremental.BatchTooSmall, match=r"preset_cls: 99 new labelled rows, fewer than the 100"):
        incremental.update(None, small, "preset_cls")
    assert incremental.batch_status(None, rows, "preset_cls").ready

    # rows the model already learned from do not count towards the 100
    after_first = learned["preset_cls"][0].state
    resent = pd.concat([learnable_batches[0], small], ignore_index=True)
    status = incremental.batch_status(after_first, resent, "preset_cls")
    assert (status.n_rows, status.n_already_included, status.n_new, status.ready) == (BATCH_ROWS + 99, BATCH_ROWS,
                                                                                      99, False)
    with pytest.raises(incremental.BatchTooSmall, match=r"99 new labelled rows \(150 more already included\)"):
        incremental.update(after_first, resent, "preset_cls")


# ------------------------------------------------------------------------------------------ persistence

def test_a_state_that_learned_from_a_withdrawn_users_rows_is_forgotten(tmp_path, learned):
    store = LocalObjectStore(tmp_path / "objects")
    state = learned["align_conf"][1].state
    incremental.save_state(store, "align_conf", state)
    assert not incremental.forget(store, "align_conf", ["00000000-0000-4000-8000-000000000000"])  # not in it
    assert incremental.load_state(store, "align_conf") is not None
    assert incremental.forget(store, "align_conf", [sorted(state.included_job_ids)[0]])
    assert incremental.load_state(store, "align_conf") is None  # the next update starts a new model
    assert not incremental.forget(store, "preset_cls", state.included_job_ids)  # no state there: nothing to do


def test_state_round_trips_through_the_store(tmp_path, learnable_batches, learned):
    store = LocalObjectStore(tmp_path / "objects")
    assert incremental.load_state(store, "preset_cls") is None  # nothing yet: start from scratch
    state = learned["preset_cls"][2].state
    key = incremental.save_state(store, "preset_cls", state)
    assert key == "models/preset_cls/incremental/state.joblib" and store.exists(key)

    loaded = incremental.load_state(store, "preset_cls")
    X = dataset.task_data(learnable_batches[3], "preset_cls").X
    np.testing.assert_array_equal(loaded.pipeline().predict(X), state.pipeline().predict(X))
    np.testing.assert_array_equal(loaded.pipeline().predict_proba(X), state.pipeline().predict_proba(X))
    for name in ("version", "n_seen", "weight_seen", "included_job_ids", "groups_seen", "watermark",
                 "training_set_digest", "history"):
        assert getattr(loaded, name) == getattr(state, name), name
    np.testing.assert_array_equal(loaded.label_weight_sums, state.label_weight_sums)

    # learning on from the reloaded state is learning on from the original
    continued = incremental.update(loaded, learnable_batches[3], "preset_cls").state
    for a, b in zip(_coefficients(continued), _coefficients(learned["preset_cls"][3].state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_regression_state_round_trips_with_its_offset(tmp_path, learned):
    store = LocalObjectStore(tmp_path / "objects")
    state = learned["master_reg"][-1].state
    incremental.save_state(store, "master_reg", state)
    loaded = incremental.load_state(store, "master_reg")
    X = learned["master_reg"][-1].rows.X
    np.testing.assert_array_equal(loaded.target_offset, state.target_offset)
    np.testing.assert_array_equal(loaded.pipeline().predict(X), state.pipeline().predict(X))


@pytest.mark.parametrize("content", [b"not a joblib file", b""])
def test_corrupt_state_raises_naming_the_key(tmp_path, content):
    store = LocalObjectStore(tmp_path / "objects")
    key = incremental.state_key("align_conf")
    store.put_bytes(key, content)
    with pytest.raises(incremental.IncrementalStateError, match="models/align_conf/incremental/state.joblib"):
        incremental.load_state(store, "align_conf")
    assert store.get_bytes(key) == content  # left for a person to look at, not replaced


def test_truncated_or_foreign_state_raises(tmp_path, learned):
    store = LocalObjectStore(tmp_path / "objects")
    data = incremental.state_to_bytes(learned["align_conf"][-1].state)
    store.put_bytes(incremental.state_key("align_conf"), data[: len(data) // 2])
    with pytest.raises(incremental.IncrementalStateError, match="cannot be read"):
        incremental.load_state(store, "align_conf")
    store.put_bytes(incremental.state_key("preset_cls"), data)  # align_conf's state under preset_cls's key
    with pytest.raises(incremental.IncrementalStateError, match="belongs to task 'align_conf', not 'preset_cls'"):
        incremental.load_state(store, "preset_cls")


def test_unknown_class_label_is_refused_and_nothing_is_saved(tmp_path, learnable_batches, learned):
    store = LocalObjectStore(tmp_path / "objects")
    state = learned["preset_cls"][0].state
    key = incremental.save_state(store, "preset_cls", state)
    saved = store.get_bytes(key)

    batch = learnable_batches[1].copy()
    row = batch.index[batch["task"] == "preset_cls"][5]
    batch.loc[row, "y_cls"] = "lofi_tape"  # not in the preset catalogue
    assert "lofi_tape" not in PRESET_IDS

    def sensor_step():  # what the job will do: update, then save
        incremental.save_state(store, "preset_cls", incremental.update(state, batch, "preset_cls").state)

    with pytest.raises(ValueError, match=r"preset_cls: 1 rows have labels outside the known classes .*'lofi_tape'"):
        sensor_step()
    assert store.get_bytes(key) == saved
    assert state.version == 1


def test_classifiers_know_every_class_from_the_first_batch(learned):
    assert learned["preset_cls"][0].state.estimator.classes_.tolist() == sorted(PRESET_IDS)
    assert len(PRESET_IDS) == 12
    assert learned["align_conf"][0].state.estimator.classes_.tolist() == ["fail", "ok", "warn"]


# ------------------------------------------------------------------------------------------ watermark

def test_watermark_is_the_greatest_row_included(learnable_batches, learned):
    updates = learned["align_conf"]
    ids = [dataset.task_data(b, "align_conf").job_ids for b in learnable_batches]
    assert updates[0].state.watermark == incremental.Watermark(None, max(ids[0]))
    assert updates[-1].state.watermark.job_id == max(max(i) for i in ids)

    noon = datetime(2025, 9, 9, 12, tzinfo=timezone.utc)
    given = incremental.Watermark(noon, "00000000-0000-4000-8000-000000000000")
    u = incremental.update(updates[0].state, learnable_batches[1], "align_conf", watermark=given)
    assert u.state.watermark == given  # a timestamp orders after job keys alone
    earlier = incremental.Watermark(noon - timedelta(hours=1), "ffffffff-ffff-4fff-bfff-ffffffffffff")
    later = incremental.update(u.state, learnable_batches[2], "align_conf", watermark=earlier)
    assert later.state.watermark == given  # never moves back
    with pytest.raises(ValueError, match="timezone-aware"):
        incremental.Watermark(datetime(2025, 9, 9, 12), "x")


# ------------------------------------------------------------------------------------------ export, registry

@pytest.mark.parametrize("task", dataset.TASKS)
def test_onnx_export_and_parity(learned, learnable_batches, task):
    result = learned[task][-1].training_result()
    X = np.concatenate([dataset.task_data(b, task).X for b in learnable_batches])
    onnx_bytes = to_onnx(result.estimator, result.input_dim, task=task)
    report = parity(result.estimator, onnx_bytes, X, task=task)
    assert report.passed, report.reason
    signature = model_signature(onnx_bytes)
    assert signature.input_dim == dataset.INPUT_DIMS[task]
    if task == "master_reg":
        assert signature.output_dim == 4
    else:
        assert signature.classes == list(incremental.class_list(task)) == list(result.classes)


def test_the_registry_reads_the_training_result(learned):
    update = learned["align_conf"][-1]
    result = update.training_result()
    onnx_bytes = to_onnx(result.estimator, result.input_dim, task="align_conf")
    report = parity(result.estimator, onnx_bytes, update.rows.X, task="align_conf")
    version = registry.model_version(f"inc{update.state.version:04d}", onnx_bytes)
    card = registry.model_card(result, report, update.state.training_set_digest, version)
    assert "sgd_incremental" in card and "majority" in card and "prequential" in card
    metrics = json.loads(json.dumps(result.metrics_json(), default=str))
    assert metrics["chosen"] == "sgd_incremental" and metrics["n_samples"] == N_BATCHES * BATCH_ROWS
    assert isinstance(result, models.TrainingResult)
    assert len(result.oof_predictions["sgd_incremental"]) == len(result.job_ids) == BATCH_ROWS


def test_unknown_task_and_mismatched_state(learned, learnable_batches):
    with pytest.raises(ValueError, match="unknown task"):
        incremental.update(None, learnable_batches[0], "tempo_reg")
    with pytest.raises(ValueError, match="state of task 'align_conf' given for 'preset_cls'"):
        incremental.update(learned["align_conf"][0].state, learnable_batches[1], "preset_cls")

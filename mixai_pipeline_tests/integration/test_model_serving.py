"""Model serving on a real PostgreSQL and a LocalObjectStore: small real models (scikit-learn pipelines
trained on synthetic rows, exported to ONNX) registered the way ``registry.record_model`` does it.

Covered: the active model answers and the call is logged; no model, a corrupt or tampered file and a timeout
answer from the task's rule with the reason logged; invalid input raises and logs nothing; at most five
models stay loaded; the fallbacks are the rules; a failing call log never fails a prediction; the Dagster
resource flushes the log after the run."""

import logging
import time
import uuid

import dagster as dg
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sqlalchemy import exc, text

from mixai_pipeline.lib.features.extract import DIM_NAMES
from mixai_pipeline.lib.mix.presets import catalog
from mixai_pipeline.lib.pipeline.labels import align_conf_label
from mixai_pipeline.lib.training import dataset, onnx_export, synthetic
from mixai_pipeline.lib.training.feature_rules import master_params_from_mix
from mixai_pipeline.lib.training.serving import (
    ServingClient,
    master_fallback,
    model_object_key,
    serving_model,
)
from mixai_pipeline.resources import Database, ModelServing, ObjectStoreResource

IDX = {name: i for i, name in enumerate(DIM_NAMES)}


@pytest.fixture(scope="module")
def trained():
    """A master_reg regressor and an align_conf classifier, fitted on synthetic rows, as ONNX."""
    frame = synthetic.synthetic_training_set(200, tasks=("master_reg", "align_conf"), seed=21)
    master, align = dataset.task_data(frame, "master_reg"), dataset.task_data(frame, "align_conf")
    reg = Pipeline([("s", StandardScaler()), ("r", MultiOutputRegressor(Ridge(alpha=1.0)))]).fit(master.X, master.y)
    clf = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=500))]).fit(align.X, align.y)
    return {
        "master_X": master.X, "align_X": align.X, "reg": reg, "clf": clf,
        "master_reg": onnx_export.to_onnx(reg, master.X.shape[1], task="master_reg",
                                          target_names=dataset.MASTER_PARAMS),
        "align_conf": onnx_export.to_onnx(clf, align.X.shape[1], task="align_conf"),
    }


def register(engine, store, task: str, version: str, onnx_bytes: bytes, *, active: bool = False) -> int:
    """As registry.record_model: the file under models/<task>/<version>/model.onnx, a row with its uri and
    sha256; then, when asked, promoted to the task's active model."""
    key = model_object_key(task, version)
    store.put_bytes(key, onnx_bytes, "application/octet-stream")
    signature = onnx_export.model_signature(onnx_bytes)
    with engine.begin() as conn:
        return conn.execute(text(
            """INSERT INTO model_registry (name, version, uri, sha256, framework, input_dim, output_dim, metrics,
                                           status, rollout_percent)
               VALUES (:name, :version, :uri, :sha, 'onnx/test', :input_dim, :output_dim, '{}', :status, :rollout)
               RETURNING id"""),
            {"name": task, "version": version, "uri": store.uri(key), "sha": onnx_export.sha256(onnx_bytes),
             "input_dim": signature.input_dim, "output_dim": signature.output_dim,
             "status": "active" if active else "candidate", "rollout": 100 if active else 0}).scalar_one()


def calls(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM model_predictions ORDER BY id")).all()


@pytest.fixture
def client(engine, local_store):
    # resolve_ttl_s=0: every call sees the registry as the test just left it; no background write during a test
    with ServingClient(engine, local_store, resolve_ttl_s=0, flush_interval_s=60) as serving:
        yield serving


# --------------------------------------------------------------------------------------------- schema

def test_the_migration_creates_the_call_log(engine):
    with engine.connect() as conn:
        indexes = set(conn.execute(text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'model_predictions'")).scalars())
    assert any("(model_id, created_at)" in i for i in indexes) and any("(task, created_at)" in i for i in indexes)
    insert = ("INSERT INTO model_predictions (task, model_id, model_version, n_rows, latency_ms, source, fallback_code)"
              " VALUES ({})")
    for values in ("'master_reg', NULL, NULL, 1, 1.0, 'fallback', NULL",       # a fallback says why
                   "'master_reg', NULL, NULL, 1, 1.0, 'model', NULL",          # a model answer names the model
                   "'master_reg', NULL, NULL, 1, -1.0, 'fallback', 'missing'",  # no negative latency
                   "'master_reg', NULL, NULL, 1, 1.0, 'fallback', 'bored'",     # inference.py's codes only
                   "'other_task', NULL, NULL, 1, 1.0, 'fallback', 'missing'"):
        with pytest.raises(exc.IntegrityError), engine.begin() as conn:
            conn.execute(text(insert.format(values)))


def test_deleting_a_model_keeps_its_calls(engine, local_store, trained):
    model_id = register(engine, local_store, "master_reg", "v1", trained["master_reg"], active=True)
    with ServingClient(engine, local_store) as serving:
        serving.predict("master_reg", trained["master_X"][:2])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM model_registry WHERE id = :id"), {"id": model_id})
    [call] = calls(engine)
    assert call.model_id is None and call.model_version == "v1" and call.source == "model"


# ------------------------------------------------------------------------------------------ answers

def test_the_active_model_answers_and_the_call_is_recorded(engine, local_store, client, trained):
    register(engine, local_store, "master_reg", "v-old", trained["master_reg"])  # a candidate: not served
    model_id = register(engine, local_store, "master_reg", "v1", trained["master_reg"], active=True)
    with engine.connect() as conn:
        assert serving_model(conn, "master_reg").id == model_id and serving_model(conn, "preset_cls") is None
    X, job_id = trained["master_X"][:5], uuid.uuid4()

    prediction = client.predict("master_reg", X, job_id=job_id)

    assert prediction.source == "model" and prediction.model_key == ("master_reg", "v1")
    assert prediction.output.shape == (5, 4) and prediction.output.dtype == np.float32
    np.testing.assert_allclose(prediction.output, trained["reg"].predict(X), atol=1e-4)
    assert calls(engine) == [] and client.pending == 1  # buffered until a flush
    assert client.flush() == 1
    [call] = calls(engine)
    assert (call.model_id, call.model_version, call.task, call.job_id, call.n_rows) == (
        model_id, "v1", "master_reg", job_id, 5)
    assert (call.source, call.fallback_code, call.error) == ("model", None, None)
    assert call.latency_ms == pytest.approx(prediction.latency_ms) and call.latency_ms > 0


def test_a_classifier_answers_with_probabilities(engine, local_store, client, trained):
    register(engine, local_store, "align_conf", "v1", trained["align_conf"], active=True)
    X = trained["align_X"][:8]
    prediction = client.predict("align_conf", X)
    assert prediction.source == "model"
    assert list(prediction.output) == list(trained["clf"].predict(X))
    assert prediction.probabilities.shape == (8, len(prediction.classes))


def test_no_active_model_answers_by_the_rule_and_records_missing(engine, local_store, client, trained):
    candidate = register(engine, local_store, "master_reg", "v1", trained["master_reg"])
    X = trained["master_X"][:3]

    prediction = client.predict("master_reg", X)
    unknown = client.predict("master_reg", X, model_id=candidate + 1000)

    for p in (prediction, unknown):
        assert p.source == "fallback" and p.fallback_code == "missing" and p.model_key == ("master_reg", None)
        np.testing.assert_array_equal(p.output, master_params_from_mix(X).astype(np.float32))
    assert "no active model" in prediction.fallback_reason and "no model with id" in unknown.fallback_reason
    client.flush()
    rows = calls(engine)
    assert [(r.source, r.fallback_code, r.model_id, r.model_version, r.n_rows) for r in rows] == [
        ("fallback", "missing", None, None, 3)] * 2
    assert "no active model" in rows[0].error
    # An explicit id serves a candidate too (how a new model is compared before promotion).
    assert client.predict("master_reg", X, model_id=candidate).source == "model"


def test_a_tampered_model_file_is_refused_naming_the_sha256_mismatch(engine, local_store, client, trained):
    model_id = register(engine, local_store, "master_reg", "v1", trained["master_reg"], active=True)
    local_store.put_bytes(model_object_key("master_reg", "v1"), b"not an ONNX model at all")

    prediction = client.predict("master_reg", trained["master_X"][:2])

    assert prediction.source == "fallback" and prediction.fallback_code == "load_failed"
    assert "sha256 mismatch" in prediction.fallback_reason
    client.flush()
    [call] = calls(engine)
    assert (call.model_id, call.fallback_code) == (model_id, "load_failed") and "sha256 mismatch" in call.error


def test_a_corrupt_registered_model_is_a_load_failure_with_the_reason(engine, local_store, client, trained):
    model_id = register(engine, local_store, "master_reg", "v1", trained["master_reg"], active=True)
    corrupt = trained["master_reg"][: len(trained["master_reg"]) // 2]  # truncated, and registered as such
    local_store.put_bytes(model_object_key("master_reg", "v1"), corrupt)
    with engine.begin() as conn:
        conn.execute(text("UPDATE model_registry SET sha256 = :sha WHERE id = :id"),
                     {"sha": onnx_export.sha256(corrupt), "id": model_id})
    register(engine, local_store, "align_conf", "v1", trained["align_conf"], active=True)
    local_store.delete(model_object_key("align_conf", "v1"))

    broken = client.predict("master_reg", trained["master_X"][:2])
    gone = client.predict("align_conf", trained["align_X"][:2])

    assert (broken.fallback_code, gone.fallback_code) == ("load_failed", "load_failed")
    assert "cannot load ONNX model" in broken.fallback_reason and "no object" in gone.fallback_reason
    client.flush()
    assert [(c.task, c.fallback_code) for c in calls(engine)] == [("master_reg", "load_failed"),
                                                                 ("align_conf", "load_failed")]
    assert all(c.error for c in calls(engine))


def test_a_run_over_the_timeout_answers_by_the_rule(engine, local_store, trained):
    register(engine, local_store, "master_reg", "v1", trained["master_reg"], active=True)
    X = np.tile(trained["master_X"], (100, 1))  # 20 000 rows: far more than a microsecond of work
    with ServingClient(engine, local_store, timeout_s=1e-6) as serving:
        assert serving.warm(["master_reg", "preset_cls"]) == {"master_reg": "loaded v1",
                                                              "preset_cls": "no active model"}
        prediction = serving.predict("master_reg", X)
    assert prediction.fallback_code == "timeout"
    np.testing.assert_array_equal(prediction.output, master_fallback(X))
    [call] = calls(engine)  # close() flushed
    assert (call.source, call.fallback_code, call.n_rows) == ("fallback", "timeout", 20_000)


def test_invalid_input_raises_and_is_not_recorded(engine, local_store, client, trained):
    """Not a model call: the model was never asked, and the caller's bug must not count against its rates."""
    register(engine, local_store, "master_reg", "v1", trained["master_reg"], active=True)
    align_id = register(engine, local_store, "align_conf", "v1", trained["align_conf"])
    good = trained["master_X"][:2]
    with_nan = good.copy()
    with_nan[1, 7] = np.nan
    for args, kwargs, problem in [
            (("master_reg", with_nan), {}, "non-finite"),
            (("master_reg", good[:, :-1]), {}, "159 features per row"),
            (("master_reg", good[0]), {}, "must be 2-D"),
            (("master_reg", good[:0]), {}, "no rows"),
            (("master_reg", good), {"job_id": "job-42"}, "job_id must be a uuid"),
            (("mastering", good), {}, "unknown task"),
            (("master_reg", good), {"model_id": align_id}, "serves align_conf")]:
        with pytest.raises(ValueError, match=problem):
            client.predict(*args, **kwargs)
    assert client.pending == 0 and client.flush() == 0 and calls(engine) == []


def test_the_cache_keeps_at_most_five_models(engine, local_store, client, trained):
    ids = [register(engine, local_store, "master_reg", f"v{i}", trained["master_reg"]) for i in range(6)]
    X = trained["master_X"][:1]
    assert all(client.predict("master_reg", X, model_id=i).source == "model" for i in ids)
    assert client.cache.keys() == [("master_reg", f"v{i}") for i in range(1, 6)]  # v0 evicted

    assert client.predict("master_reg", X, model_id=ids[0]).source == "model"  # loaded again, v1 out
    assert len(client.cache) == 5 and ("master_reg", "v1") not in client.cache
    client.flush()
    assert [c.model_id for c in calls(engine)] == [*ids, ids[0]]


# ---------------------------------------------------------------------------------------- fallbacks

def test_the_master_fallback_is_the_master_rule(client):
    rows = synthetic.synthetic_training_set(30, tasks=("master_reg",), seed=4)["x"]
    X = np.stack(rows.to_list())
    typical = X[0].copy()  # a typical balance and a crest factor of 14 dB: no shelves, 2 dB of compression
    typical[[IDX["energy_ratio_low"], IDX["energy_ratio_mid"], IDX["energy_ratio_high"]]] = (0.30, 0.58, 0.12)
    typical[IDX["crest_factor_db"]] = 14.0
    boomy = typical.copy()  # 6 dB more low end: half of the 5 dB beyond the dead band taken off
    boomy[IDX["energy_ratio_low"]] = 0.30 * 10 ** 0.6
    silent = typical.copy()
    silent[[IDX["energy_ratio_low"], IDX["energy_ratio_mid"], IDX["energy_ratio_high"]]] = 0.0
    silent[IDX["crest_factor_db"]] = 0.0

    output = client.predict("master_reg", np.vstack([X, typical, boomy, silent])).output

    np.testing.assert_array_equal(output[:30], master_params_from_mix(X).astype(np.float32))
    np.testing.assert_allclose(output[30:], [[0.0, 0.0, 2.0, -14.0], [-2.5, 0.0, 2.0, -14.0],
                                             [0.0, 0.0, 0.0, -14.0]], atol=1e-5)


def test_the_align_fallback_is_align_conf_label(client):
    alignments = [
        {"method": "gcc_phat", "confidence": 0.7, "offset_ms": 12.0},                       # ok, at the threshold
        {"method": "gcc_phat", "confidence": 0.69, "offset_ms": 12.0},                      # warn
        {"method": "onset_xcorr", "confidence": 0.75, "tempo_ratio": 1.01},                 # drift of 1 %: warn
        {"method": "onset_xcorr", "confidence": 0.75, "tempo_ratio": 1.0099, "dtw_cost": 0.2},  # ok
        {"method": "assume_shared_start", "confidence": 0.9},                               # never ok
        {"method": "gcc_phat", "confidence": 0.4, "gcc_psr": 30.0},                         # warn
        {"method": "onset_xcorr", "confidence": 0.39},                                      # fail
    ]
    X = np.stack([dataset.align_input(a) for a in alignments])
    labelled = synthetic.synthetic_training_set(40, tasks=("align_conf",), seed=9, label_noise=0.0)  # the rule's

    prediction = client.predict("align_conf", np.vstack([X, *labelled["x"]]))

    assert prediction.fallback_code == "missing"
    assert list(prediction.output[:len(X)]) == [align_conf_label(a) for a in alignments]
    assert list(prediction.output[:len(X)]) == ["ok", "warn", "warn", "ok", "warn", "warn", "fail"]
    assert list(prediction.output[len(X):]) == list(labelled["y_cls"])


def test_the_preset_fallback_is_the_plans_default(client):
    rng = np.random.default_rng(5)
    plans = ["freetrial", "lite", "standard", "creator"]
    X = np.stack([dataset.preset_input(rng.normal(size=160), rng.normal(size=160), bpm=bpm, plan=plan)
                  for plan in plans for bpm in (None, 72.0, 140.0)])
    output = client.predict("preset_cls", X).output
    assert list(output) == [catalog().choose(plan, None).id for plan in plans for _ in range(3)]


# ------------------------------------------------------------------------------------------ recording

def test_a_failing_call_log_never_fails_a_prediction(engine, local_store, trained, caplog):
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE model_predictions RENAME TO model_predictions_away"))
    serving = ServingClient(engine, local_store, flush_interval_s=60)
    with caplog.at_level(logging.ERROR, logger="mixai_pipeline.lib.training.serving"):
        prediction = serving.predict("master_reg", trained["master_X"][:2])
        assert prediction.fallback_code == "missing"
        assert serving.flush() == -1 and serving.pending == 1  # kept for the next try
        assert "could not be written" in caplog.text
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE model_predictions_away RENAME TO model_predictions"))
        assert serving.flush() == 1
        serving.close()
    assert len(calls(engine)) == 1 and serving.records_dropped == 0


def test_the_call_log_is_written_in_batches_in_the_background(engine, local_store, trained):
    X = trained["master_X"][:1]
    with ServingClient(engine, local_store, flush_every=3, flush_interval_s=60) as serving:
        for _ in range(3):
            serving.predict("master_reg", X)
        for _ in range(200):  # the third call woke the writer
            if serving.pending == 0 and len(calls(engine)) == 3:
                break
            time.sleep(0.05)
        assert len(calls(engine)) == 3
        serving.predict("master_reg", X)
        assert serving.pending == 1
    assert len(calls(engine)) == 4  # close() wrote the last one
    with pytest.raises(RuntimeError, match="closed"):
        serving.predict("master_reg", X)


# ------------------------------------------------------------------------------------------- resource

def test_the_resource_serves_and_logs_the_calls_of_a_run(engine, db_url, local_store, trained):
    register(engine, local_store, "master_reg", "v1", trained["master_reg"], active=True)
    X = trained["master_X"][:4]

    @dg.asset
    def master_params_of_some_mixes(model_serving: ModelServing) -> None:
        client = model_serving.get_client()
        assert model_serving.get_client() is client  # one cache for the whole run
        assert client.predict("master_reg", X).source == "model"
        assert client.predict("preset_cls", np.zeros((1, 325), dtype=np.float32)).fallback_code == "missing"

    result = dg.materialize([master_params_of_some_mixes], resources={"model_serving": ModelServing(
        database=Database(url=db_url), object_store=ObjectStoreResource(backend="local", root=str(local_store.root)),
        max_models=2, timeout_s=2.0)})

    assert result.success
    assert [(c.task, c.source) for c in calls(engine)] == [("master_reg", "model"), ("preset_cls", "fallback")]

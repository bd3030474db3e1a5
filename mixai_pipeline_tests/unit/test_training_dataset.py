"""The training set: who is in (consent, withdrawal, exclusions) on a real PostgreSQL, the model inputs,
the schema's refusals, the digest and the Parquet round trip."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from mixai_pipeline.lib.alignment.align import AlignmentResult
from mixai_pipeline.lib.features.extract import DIM_NAMES
from mixai_pipeline.lib.pipeline import records
from mixai_pipeline.lib.training import dataset, synthetic

T0 = datetime(2025, 9, 1, tzinfo=timezone.utc)
TEMPO = DIM_NAMES.index("tempo_bpm")


# ------------------------------------------------------------------------------------------ helpers

def add_user(conn, *, training: bool | None, withdrawn: datetime | None = None,
             granted: datetime | None = None) -> str:
    """A user and (unless ``training`` is None) their consent row."""
    user = str(uuid.uuid4())
    if training is not None:
        conn.execute(text(
            """INSERT INTO ml_consent (user_id, qa, training, qa_updated_at, training_updated_at,
                                       training_granted_at, training_withdrawn_at, source)
               VALUES (:u, true, :t, :at, :at, :granted, :withdrawn, 'test')"""),
            {"u": user, "t": training, "at": T0, "granted": granted, "withdrawn": withdrawn})
    return user


def add_job(conn, user: str, *, plan: str = "standard", received: datetime = T0 + timedelta(days=1),
            consent_training: bool = True, status: str = "done", bpm: float | None = None,
            inst_sha: str | None = None, vec_seed: float = 1.0, clips=("inst", "vocal", "mix"),
            labels=("master_reg", "preset_cls", "align_conf"), alignment: bool = True,
            quality: str = "auto") -> str:
    job = str(uuid.uuid4())
    failed = status == "failed"
    conn.execute(text(
        """INSERT INTO jobs (job_id, upload_prefix, user_id, plan, status, partition_date, received_at,
                             consent_qa, consent_training, bpm, failed_stage, failure_reason)
           VALUES (:j, :prefix, :u, :plan, :status, :day, :received, true, :ct, :bpm, :stage, :reason)"""),
        {"j": job, "prefix": f"uploads/{job}/", "u": user, "plan": plan, "status": status,
         "day": date(2025, 9, 2), "received": received, "ct": consent_training, "bpm": bpm,
         "stage": "masters" if failed else None, "reason": "broken" if failed else None})
    conn.execute(text(
        """INSERT INTO vault_items (job_id, user_id, kind, path, sha256, bytes, consent_qa, consent_training)
           VALUES (:j, :u, 'inst', :path, :sha, 10, true, :ct)"""),
        {"j": job, "u": user, "path": f"uploads/{job}/inst.wav", "sha": inst_sha or uuid.uuid4().hex * 2,
         "ct": consent_training})
    vectors = {clip: _vector(vec_seed + k / 10) for k, clip in enumerate(clips)}
    if vectors:
        records.record_features(conn, job, {"feature_version": "v1", "clips": {
            c: {"vec": v.tolist(), "stats": {}} for c, v in vectors.items()}}, DIM_NAMES)
    if alignment:
        records.record_alignment(conn, job, ALIGNMENT.as_dict())
    for task in labels:
        if task == "master_reg":
            records.record_label(conn, job, task, y_reg=[1.5, -2.0, 3.0, -14.0])
        else:
            records.record_label(conn, job, task, y_cls="wide_pop" if task == "preset_cls" else "ok")
    conn.execute(text("UPDATE labels SET quality = :q WHERE job_id = CAST(:j AS uuid)"), {"q": quality, "j": job})
    return job


def _vector(seed: float) -> np.ndarray:
    vec = np.full(len(DIM_NAMES), seed, dtype=np.float32)
    vec[TEMPO] = 100.0 + seed
    return vec


ALIGNMENT = AlignmentResult(offset_ms=-120.0, method="onset_xcorr", confidence=0.75, gcc_psr=12.0,
                            gcc_offset_ms=300.0, onset_offset_ms=-120.0, onset_peak_ratio=2.0, beat_period_ms=500.0,
                            beat_ambiguity=0.3, onset_z=5.0, harmony_z=2.0, dtw_cost=0.2, drift_inliers=0.9,
                            tempo_ratio=None, drift_ms_per_min=None)


def keys(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["job_id"], frame["task"], strict=True))


ALL = ("master_reg", "preset_cls", "align_conf")


# ------------------------------------------------------------------------------- who is in (SQL)

@pytest.fixture
def population(engine):
    """Users and jobs covering every consent and exclusion case; returns the ids by name."""
    ids: dict[str, str] = {}
    with engine.begin() as conn:
        ok = ids["u_ok"] = add_user(conn, training=True, granted=T0)
        ids["j_ok"] = add_job(conn, ok, bpm=128.0, quality="human")
        ids["j_ok_shared_beat"] = add_job(conn, ok, inst_sha="ab" * 32, plan="standard", vec_seed=2.0)
        ids["j_ok_job_excluded"] = add_job(conn, ok)
        ids["j_ok_upload_without_consent"] = add_job(conn, ok, consent_training=False)
        ids["j_ok_failed"] = add_job(conn, ok, status="failed")
        ids["j_ok_no_vocal"] = add_job(conn, ok, clips=("inst", "mix"), quality="low")
        ids["j_ok_no_alignment"] = add_job(conn, ok, alignment=False, labels=("master_reg", "align_conf"))
        ids["j_ok_unlabelled"] = add_job(conn, ok, labels=())
        # another user who uploaded the byte-identical instrumental
        beat = ids["u_beat"] = add_user(conn, training=True, granted=T0)
        ids["j_beat"] = add_job(conn, beat, inst_sha="ab" * 32, plan="freetrial")
        # users whose rows must never come out
        ids["j_off"] = add_job(conn, add_user(conn, training=False))
        ids["j_withdrawn"] = add_job(conn, add_user(conn, training=False, granted=T0, withdrawn=T0 + timedelta(days=2)))
        ids["j_withdrawn_flag_only"] = add_job(conn, add_user(conn, training=True, granted=T0,
                                                              withdrawn=T0 + timedelta(days=2)))
        ids["j_withdrawn_no_grant_time"] = add_job(conn, add_user(conn, training=True,
                                                                  withdrawn=T0 + timedelta(days=2)))
        ids["j_no_consent_row"] = add_job(conn, add_user(conn, training=None))
        excluded = add_user(conn, training=True, granted=T0)
        ids["j_user_excluded"] = add_job(conn, excluded)
        # withdrew on day 3, consented again on day 5: only uploads after the withdrawal come back
        again = add_user(conn, training=True, granted=T0 + timedelta(days=5), withdrawn=T0 + timedelta(days=3))
        ids["j_before_withdrawal"] = add_job(conn, again, received=T0 + timedelta(days=1))
        ids["j_after_regrant"] = add_job(conn, again, received=T0 + timedelta(days=6), plan="creator")
        conn.execute(text("INSERT INTO ml_exclusions (job_id, reason, created_by) VALUES (:j, 'quality', 'test')"),
                     {"j": ids["j_ok_job_excluded"]})
        conn.execute(text("INSERT INTO ml_exclusions (user_id, reason, created_by) VALUES (:u, 'manual', 'test')"),
                     {"u": excluded})
        # a vector under another feature version is not part of a v1 set
        conn.execute(text("INSERT INTO feature_layouts (feature_version, n_dim, dim_names) VALUES ('v0', 160, :n)"),
                     {"n": list(DIM_NAMES)})
        conn.execute(text("""INSERT INTO features_store (job_id, user_id, clip_kind, feature_version, n_dim, vec)
                             VALUES (:j, :u, 'vocal', 'v0', 160, :vec)"""),
                     {"j": ids["j_ok_no_vocal"], "u": ok, "vec": [0.0] * 160})
    return ids


def test_exactly_the_consenting_not_excluded_rows_come_out(engine, population):
    ids = population
    with engine.connect() as conn:
        frame = dataset.load_training_set(conn)
    expected = ({(ids[j], t) for j in ("j_ok", "j_ok_shared_beat", "j_beat", "j_after_regrant") for t in ALL}
                | {(ids["j_ok_no_vocal"], "master_reg"), (ids["j_ok_no_vocal"], "align_conf"),
                   (ids["j_ok_no_alignment"], "master_reg")})
    assert keys(frame) == expected
    assert list(frame.columns) == list(dataset.COLUMNS)
    assert frame[["job_id", "task"]].apply(tuple, axis=1).tolist() == sorted(expected)
    assert dataset.task_counts(frame) == {"master_reg": 6, "preset_cls": 4, "align_conf": 5}

    by_key = frame.set_index(["job_id", "task"])
    assert by_key.loc[(ids["j_ok"], "master_reg"), "weight"] == 1.0       # human
    assert by_key.loc[(ids["j_ok_no_vocal"], "master_reg"), "weight"] == 0.3  # low
    assert by_key.loc[(ids["j_beat"], "preset_cls"), "weight"] == 0.7     # auto
    row = by_key.loc[(ids["j_ok"], "master_reg")]
    assert [row[p] for p in dataset.MASTER_PARAMS] == [1.5, -2.0, 3.0, -14.0] and pd.isna(row["y_cls"])

    # groups: the user, merged with the other user of the byte-identical instrumental
    merged = f"u:{min(ids['u_ok'], ids['u_beat'])}"
    assert set(frame.loc[frame["user_id"].isin([ids["u_ok"], ids["u_beat"]]), "group"]) == {merged}
    assert frame.loc[frame["job_id"] == ids["j_after_regrant"], "group"].nunique() == 1
    assert frame["group"].nunique() == 2


def test_inputs_are_built_from_the_right_clips(engine, population):
    ids = population
    with engine.connect() as conn:
        frame = dataset.load_training_set(conn).set_index(["job_id", "task"])
    # add_job gives inst, vocal, mix the seeds s, s + 0.1, s + 0.2
    master = frame.loc[(ids["j_ok"], "master_reg"), "x"]
    np.testing.assert_array_equal(master, _vector(1.2))
    preset = frame.loc[(ids["j_ok"], "preset_cls"), "x"]
    assert preset.shape == (dataset.INPUT_DIMS["preset_cls"],) == (325,)
    np.testing.assert_array_equal(preset[:160], _vector(1.1))
    np.testing.assert_array_equal(preset[160:320], _vector(1.2))
    np.testing.assert_array_equal(preset[320:], [128.0, 1.0, 0.0, 1.0, 0.0])      # manifest bpm, standard plan
    no_bpm = frame.loc[(ids["j_beat"], "preset_cls"), "x"]
    np.testing.assert_allclose(no_bpm[320:], [101.2, 0.0, 1.0, 0.0, 0.0], rtol=1e-6)  # mix tempo, freetrial=lite
    align = dict(zip(dataset.ALIGN_FEATURE_NAMES, frame.loc[(ids["j_ok"], "align_conf"), "x"], strict=True))
    assert align["confidence"] == pytest.approx(0.75) and align["method_onset_xcorr"] == 1.0
    assert align["offset_disagreement_ms"] == pytest.approx(420.0) and align["tempo_ratio_missing"] == 1.0
    assert align["tempo_ratio"] == 1.0 and align["gcc_psr"] == pytest.approx(12.0)


def test_consent_violations_name_rows_that_became_ineligible(engine, population):
    ids = population
    with engine.connect() as conn:
        frame = dataset.load_training_set(conn)
        assert dataset.consent_violations(conn, frame).empty
    with engine.begin() as conn:  # after the set was built: a withdrawal and an exclusion
        conn.execute(text("UPDATE ml_consent SET training = false, training_withdrawn_at = now() WHERE user_id = :u"),
                     {"u": ids["u_beat"]})
        conn.execute(text("INSERT INTO ml_exclusions (job_id, reason, created_by) VALUES (:j, 'manual', 'test')"),
                     {"j": ids["j_ok_shared_beat"]})
    forged = pd.DataFrame({"job_id": [str(uuid.uuid4()), ids["j_ok"], ids["j_off"]],
                           "user_id": [ids["u_ok"], ids["u_beat"], ids["u_ok"]]})
    with engine.connect() as conn:
        found = dataset.consent_violations(conn, frame)
        forged_found = dataset.consent_violations(conn, forged)
    assert dict(zip(found["job_id"], found["reason"], strict=True)) == {
        ids["j_beat"]: "training consent is off", ids["j_ok_shared_beat"]: "the job is excluded"}
    assert list(found.columns) == ["job_id", "user_id", "reason"]
    assert sorted(forged_found["reason"]) == ["the job belongs to another user", "the job belongs to another user",
                                              "unknown job"]
    with engine.connect() as conn:
        reloaded = dataset.load_training_set(conn)
        assert dataset.consent_violations(conn, reloaded).empty
    assert ids["j_beat"] not in set(reloaded["job_id"]) and ids["j_ok_shared_beat"] not in set(reloaded["job_id"])


def test_each_reason_is_named(engine, population):
    ids = population
    frame = pd.DataFrame({"job_id": [ids[k] for k in ("j_off", "j_withdrawn", "j_withdrawn_flag_only",
                                                         "j_withdrawn_no_grant_time",
                                                         "j_no_consent_row", "j_user_excluded",
                                                         "j_before_withdrawal", "j_ok_upload_without_consent",
                                                         "j_ok_failed", "j_ok_job_excluded")]})
    with engine.connect() as conn:
        owners = dict(conn.execute(text("SELECT job_id::text, user_id::text FROM jobs")).all())
        frame["user_id"] = frame["job_id"].map(owners)
        found = dataset.consent_violations(conn, frame)
    reasons = dict(zip(found["job_id"], found["reason"], strict=True))
    assert reasons == {
        ids["j_off"]: "training consent is off",
        ids["j_withdrawn"]: "training consent is off",
        ids["j_withdrawn_flag_only"]: "training consent was withdrawn",
        ids["j_withdrawn_no_grant_time"]: "training consent was withdrawn",
        ids["j_no_consent_row"]: "no consent record for the user",
        ids["j_user_excluded"]: "the user is excluded",
        ids["j_before_withdrawal"]: "training consent was withdrawn",
        ids["j_ok_upload_without_consent"]: "the upload was made without training consent",
        ids["j_ok_failed"]: "the job failed",
        ids["j_ok_job_excluded"]: "the job is excluded",
    }


def test_empty_database_gives_an_empty_valid_set(engine):
    with engine.connect() as conn:
        frame = dataset.load_training_set(conn)
        assert dataset.consent_violations(conn, frame).empty
    assert frame.empty and list(frame.columns) == list(dataset.COLUMNS)
    assert dataset.task_counts(frame) == {"master_reg": 0, "preset_cls": 0, "align_conf": 0}


def test_a_changed_layout_under_the_same_version_is_refused(engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO feature_layouts (feature_version, n_dim, dim_names) VALUES ('v1', 2, :n)"),
                     {"n": ["a", "b"]})
    with engine.connect() as conn, pytest.raises(ValueError, match="needs a new feature_version"):
        dataset.load_training_set(conn)


def test_bad_stored_labels_are_refused_by_the_schema(engine):
    with engine.begin() as conn:
        user = add_user(conn, training=True, granted=T0)
        job = add_job(conn, user, labels=("master_reg", "preset_cls"))
        conn.execute(text("UPDATE labels SET y_reg = ARRAY[9, 0, 1, -14]::real[] WHERE task = 'master_reg'"))
        conn.execute(text("UPDATE labels SET y_cls = 'no_such_preset' WHERE task = 'preset_cls'"))
    with engine.connect() as conn, pytest.raises(pa.errors.SchemaErrors) as error:
        dataset.load_training_set(conn)
    cases = error.value.failure_cases
    assert "low_shelf_db outside its range -6.0..6.0" in set(cases["check"].astype(str))
    assert any("known preset id" in str(c) for c in cases["check"])
    with engine.connect() as conn:
        raw = dataset.load_training_set(conn, validate=False)
    assert set(raw["job_id"]) == {job}


# --------------------------------------------------------------------------------- inputs, groups

def test_align_input_uses_every_numeric_alignment_statistic():
    numeric = {f.name for f in dataclasses.fields(AlignmentResult)} - {"method"}
    derived = {"offset_ms": "abs_offset_ms", "gcc_offset_ms": "offset_disagreement_ms",
               "onset_offset_ms": "offset_disagreement_ms"}
    assert {derived.get(name, name) for name in numeric} <= set(dataset.ALIGN_FEATURE_NAMES)
    bare = dict(zip(dataset.ALIGN_FEATURE_NAMES,
                    dataset.align_input(AlignmentResult(0.0, "assume_shared_start", 0.1).as_dict()), strict=True))
    assert bare["method_assume_shared_start"] == 1.0 and bare["confidence"] == pytest.approx(0.1)
    assert all(bare[f"{s}_missing"] == 1.0 and bare[s] == 0.0 for s in dataset.ALIGN_STATS)
    assert bare["dtw_cost_missing"] == 1.0 and bare["offset_disagreement_missing"] == 1.0
    drifting = dict(zip(dataset.ALIGN_FEATURE_NAMES, dataset.align_input(
        {"method": "gcc_phat", "confidence": 0.9, "tempo_ratio": 1.004, "dtw_cost": float("nan")}), strict=True))
    assert drifting["tempo_drift_abs"] == pytest.approx(0.004, abs=1e-6) and drifting["dtw_cost_missing"] == 1.0
    with pytest.raises(ValueError, match="method"):
        dataset.align_input({"method": "guess", "confidence": 0.5})
    with pytest.raises(ValueError, match="confidence"):
        dataset.align_input({"method": "gcc_phat", "confidence": None})


def test_input_builders_refuse_wrong_shapes_and_plans():
    with pytest.raises(ValueError, match="shape"):
        dataset.master_input(np.zeros(159))
    with pytest.raises(ValueError, match="unknown plan"):
        dataset.preset_input(np.zeros(160), np.zeros(160), bpm=None, plan="platinum")
    assert dataset.INPUT_DIMS == {"master_reg": 160, "preset_cls": 325, "align_conf": 28}
    assert len(set(dataset.PRESET_FEATURE_NAMES)) == 325


def test_song_groups_merge_users_of_the_same_instrumental_transitively():
    users = ["c", "a", "b", "d", "b"]
    shas = ["s1", "s2", "s1", None, "s2"]  # c~b via s1, a~b via s2: {a, b, c}; d alone
    assert dataset.song_groups(users, shas) == ["u:a", "u:a", "u:a", "u:d", "u:a"]


# ----------------------------------------------------------------------------------------- schema

@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic.synthetic_training_set(40, seed=5)


def _first(frame: pd.DataFrame, task: str) -> int:
    return int(frame.index[frame["task"] == task][0])


def _refused(frame: pd.DataFrame, fragment: str) -> None:
    with pytest.raises(pa.errors.SchemaErrors) as error:
        dataset.validate(frame)
    assert any(fragment in str(check) for check in error.value.failure_cases["check"]), \
        error.value.failure_cases[["column", "check"]]


def test_schema_accepts_synthetic_rows(frame):
    assert len(dataset.validate(frame)) == 120


@pytest.mark.parametrize("change, fragment", [
    (lambda f: f.at[_first(f, "master_reg"), "x"].__setitem__(3, np.nan), "finite float32 vector"),
    (lambda f: f.__setitem__("x", [x[:-1] if t == "align_conf" else x
                                   for x, t in zip(f["x"], f["task"], strict=True)]), "finite float32 vector"),
    (lambda f: f.at[_first(f, "preset_cls"), "x"].__setitem__(0, np.inf), "finite float32 vector"),
    (lambda f: f.__setitem__("x", [x.astype(np.float64) for x in f["x"]]), "finite float32 vector"),
    (lambda f: f.__setitem__("y_cls", f["y_cls"].where(f["task"] != "preset_cls", "mega_boost")), "known preset"),
    (lambda f: f.__setitem__("y_cls", f["y_cls"].where(f["task"] != "align_conf", "maybe")), "ok/warn/fail"),
    (lambda f: f.__setitem__("comp_db", f["comp_db"].where(f["task"] != "master_reg", -0.5)), "comp_db outside"),
    (lambda f: f.__setitem__("high_shelf_db", f["high_shelf_db"].where(f["task"] != "master_reg", 6.5)),
     "high_shelf_db outside"),
    (lambda f: f.__setitem__("target_lufs", f["target_lufs"].where(f["task"] != "master_reg", 3.0)),
     "target_lufs outside"),
    (lambda f: f.__setitem__("low_shelf_db", f["low_shelf_db"].where(f["task"] != "master_reg", np.nan)),
     "four finite params"),
    (lambda f: f.__setitem__("comp_db", f["comp_db"].where(f["task"] != "preset_cls", 1.0)), "without params"),
    (lambda f: f.__setitem__("weight", 1.0), "QUALITY_WEIGHTS"),
    (lambda f: f.__setitem__("quality", "great"), "isin"),
    (lambda f: f.__setitem__("job_id", f["job_id"].str.upper()), "str_matches"),
])
def test_schema_refuses_bad_rows(frame, change, fragment):
    bad = frame.copy()
    bad["x"] = [x.copy() for x in bad["x"]]
    change(bad)
    _refused(bad, fragment)


def test_schema_refuses_duplicate_keys_and_extra_columns(frame):
    with pytest.raises(pa.errors.SchemaErrors):
        dataset.validate(pd.concat([frame, frame.iloc[:1]], ignore_index=True))
    with pytest.raises(pa.errors.SchemaErrors):
        dataset.validate(frame.assign(extra=1))


# ------------------------------------------------------------------------------- digest, parquet

def test_digest_is_order_free_and_content_bound(frame):
    value = dataset.digest(frame)
    assert value == dataset.digest(frame.sample(frac=1.0, random_state=3))
    assert len(value) == 64 and int(value, 16) >= 0

    relabel = frame.copy()
    row = _first(relabel, "preset_cls")
    relabel.at[row, "y_cls"] = "rap_tight" if relabel.at[row, "y_cls"] != "rap_tight" else "wide_pop"
    assert dataset.digest(relabel) != value

    nudged = frame.copy()
    row = _first(nudged, "master_reg")
    nudged.at[row, "comp_db"] = nudged.at[row, "comp_db"] + 0.01
    assert dataset.digest(nudged) != value

    requality = frame.copy()
    requality.at[0, "quality"], requality.at[0, "weight"] = "human", 1.0
    if frame.at[0, "quality"] != "human":
        assert dataset.digest(requality) != value

    moved = frame.copy()
    moved["x"] = [x.copy() for x in moved["x"]]
    moved.at[0, "x"][0] += 1.0
    assert dataset.digest(moved) != value
    assert dataset.digest(frame.iloc[1:]) != value


def test_parquet_round_trip_keeps_everything(frame, tmp_path):
    path = tmp_path / "set" / "training_set.parquet"
    value = dataset.to_parquet(frame, path)
    assert value == dataset.digest(frame)
    back = dataset.from_parquet(path)
    assert dataset.digest(back) == value
    pd.testing.assert_frame_equal(back.drop(columns="x"), frame.drop(columns="x"), check_dtype=False)
    for a, b in zip(back["x"], frame["x"], strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    metadata = pq.read_schema(path).metadata
    assert json.loads(metadata[b"mixai.task_counts"]) == dataset.task_counts(frame)
    assert metadata[b"mixai.feature_version"] == b"v1"

    empty = tmp_path / "empty.parquet"
    dataset.to_parquet(dataset.empty_frame(), empty)
    assert dataset.from_parquet(empty).empty


def test_parquet_whose_content_does_not_match_its_digest_is_refused(frame, tmp_path):
    path = tmp_path / "set.parquet"
    dataset.to_parquet(frame, path)
    table = pq.read_table(path)
    table = table.replace_schema_metadata({**table.schema.metadata, b"mixai.digest": b"0" * 64})
    pq.write_table(table, path)
    with pytest.raises(ValueError, match="does not match the digest"):
        dataset.from_parquet(path)


def test_task_data_arrays(frame):
    data = dataset.task_data(frame, "master_reg")
    assert data.X.shape == (40, 160) and data.X.dtype == np.float32
    assert data.y.shape == (40, 4) and np.isfinite(data.y).all()
    assert list(data.job_ids) == sorted(data.job_ids)
    cls = dataset.task_data(frame, "align_conf")
    assert cls.X.shape == (40, 28) and set(cls.y) <= {"ok", "warn", "fail"}
    assert set(cls.weight) <= set(dataset.QUALITY_WEIGHTS.values())

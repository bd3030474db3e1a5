"""The weekly training set (seed 000 §9, §10): features_store × labels, for consenting, not excluded jobs.

One row per (job, task). Columns (``TRAINING_SET_SCHEMA`` validates all of them):

- ``job_id``, ``task`` (the key), ``user_id`` (the job's owner), ``plan``;
- ``group``: the CV group key (see *Groups*);
- ``quality`` (``human``/``auto``/``low``) and ``weight`` = ``QUALITY_WEIGHTS[quality]``;
- ``x``: the model input, a float32 vector of ``INPUT_DIMS[task]`` values named ``FEATURE_NAMES[task]``;
- labels: ``low_shelf_db``, ``high_shelf_db``, ``comp_db``, ``target_lufs`` for ``master_reg`` (NaN for
  the other tasks), ``y_cls`` for ``preset_cls`` (a preset id) and ``align_conf`` (``ok``/``warn``/``fail``).

Who is in (the SQL of ``ELIGIBLE_SQL``, also used by ``consent_violations``):

- the owner's ``ml_consent.training`` is on, and it was never withdrawn, or it was granted again after
  the last withdrawal and the upload arrived after that withdrawal (uploads from before a withdrawal
  never come back: they are due for deletion);
- the upload itself was made with training consent (``jobs.consent_training``): a later opt-in does not
  reach back to uploads made under "no training";
- neither the job nor its owner is in ``ml_exclusions`` (any reason);
- the job has not failed (``jobs.status <> 'failed'``), and its feature rows belong to its owner.

Model inputs (``FEATURE_NAMES``; the builders ``master_input``, ``preset_input`` and ``align_input`` are
the one definition, for training and for inference alike):

- ``master_reg`` (160): the mix clip's feature vector, ``mix.<dim>`` — seed §4.1: "mix の特徴量"; the
  pseudo-label is the master chain's correction of exactly that raw mix.
- ``preset_cls`` (325): ``vocal.<dim>`` (160) + ``mix.<dim>`` (160) — seed §4.1: "vocal + mix の特徴量
  (+任意のBPM/Key)" — then ``tempo_hint_bpm`` (the manifest's bpm, else the mix's tempo estimate),
  ``tempo_from_manifest`` (1/0), and the plan one-hot ``plan_lite``/``plan_standard``/``plan_creator``
  (the free trial counts as lite), because which presets a plan may use decides the label.
  The musical key is not used (free text, rarely given).
- ``align_conf`` (28): the alignment statistics, ``ALIGN_FEATURE_NAMES`` (see ``align_input``).

Groups. Near-duplicate uploads of one song (re-exports, small edits) have different file hashes, so no
hash finds them; the same user uploads them, so the safe group is the user. Users are further merged
when they uploaded a byte-identical instrumental (same ``vault_items.sha256`` of the ``inst`` stem, e.g.
a purchased beat), so the same song never sits on both sides of a fold. ``group`` is ``u:<smallest
user_id of the merged set>``.

Label ranges (``MASTER_PARAM_RANGES``): the shelves within ±``MAX_SHELF_DB`` (6 dB) and the compression
within 0..``MAX_COMP_DB`` (6 dB), the limits of the master chain's estimator (``lib.dsp.master``); the
target loudness within -70..0 LUFS, what ``MasterParams`` accepts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
from sqlalchemy import Connection, text

from mixai_pipeline.lib.dsp.master import MAX_COMP_DB, MAX_SHELF_DB
from mixai_pipeline.lib.features.extract import DIM_NAMES, FEATURE_VERSION
from mixai_pipeline.lib.mix.presets import PRESET_IDS

TASKS: tuple[str, ...] = ("master_reg", "preset_cls", "align_conf")
MIN_SAMPLES = 1000  # fewer labelled rows than this for a task: not trained (callers may pass their own)

# Label-quality weights (seed §9: "quality=auto/human/low で学習時の重み付け"): a human correction counts
# fully, a rule's pseudo-label somewhat less, a label flagged as doubtful little.
QUALITY_WEIGHTS: dict[str, float] = {"human": 1.0, "auto": 0.7, "low": 0.3}

MASTER_PARAMS: tuple[str, ...] = ("low_shelf_db", "high_shelf_db", "comp_db", "target_lufs")
MASTER_PARAM_RANGES: dict[str, tuple[float, float]] = {
    "low_shelf_db": (-MAX_SHELF_DB, MAX_SHELF_DB),
    "high_shelf_db": (-MAX_SHELF_DB, MAX_SHELF_DB),
    "comp_db": (0.0, MAX_COMP_DB),
    "target_lufs": (-70.0, 0.0),
}
ALIGN_CLASSES: tuple[str, ...] = ("ok", "warn", "fail")
CLASS_LABELS: dict[str, tuple[str, ...]] = {"preset_cls": PRESET_IDS, "align_conf": ALIGN_CLASSES}
PLANS: tuple[str, ...] = ("lite", "standard", "creator")  # freetrial is lite (as the preset catalogue says)
KNOWN_PLANS: tuple[str, ...] = ("freetrial", *PLANS)

# --- alignment statistics ----------------------------------------------------------------------------
ALIGN_METHODS: tuple[str, ...] = ("gcc_phat", "onset_xcorr", "assume_shared_start")
# Optional numeric entries of alignments.stats (lib.alignment.AlignmentResult): each is given with a
# ``<name>_missing`` flag (the value is then 0), since a stage that did not run leaves it out.
ALIGN_STATS: tuple[str, ...] = ("gcc_psr", "onset_peak_ratio", "beat_ambiguity", "onset_z", "harmony_z",
                                "beat_period_ms", "drift_inliers", "drift_ms_per_min")
ALIGN_FEATURE_NAMES: tuple[str, ...] = (
    "confidence",                                           # the aligner's own confidence, 0..1
    *(f"method_{m}" for m in ALIGN_METHODS),                # one-hot
    "dtw_cost", "dtw_cost_missing",                         # mean DTW path cost, 0..1
    "tempo_ratio", "tempo_drift_abs", "tempo_ratio_missing",  # ratio (1 when none claimed) and |ratio - 1|
    "abs_offset_ms",                                        # |chosen offset|
    "offset_disagreement_ms", "offset_disagreement_missing",  # |GCC offset - onset offset| when both ran
    *(name for stat in ALIGN_STATS for name in (stat, f"{stat}_missing")),
)

MASTER_FEATURE_NAMES: tuple[str, ...] = tuple(f"mix.{d}" for d in DIM_NAMES)
PRESET_FEATURE_NAMES: tuple[str, ...] = (
    *(f"vocal.{d}" for d in DIM_NAMES), *(f"mix.{d}" for d in DIM_NAMES),
    "tempo_hint_bpm", "tempo_from_manifest", *(f"plan_{p}" for p in PLANS))
FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    "master_reg": MASTER_FEATURE_NAMES, "preset_cls": PRESET_FEATURE_NAMES, "align_conf": ALIGN_FEATURE_NAMES}
INPUT_DIMS: dict[str, int] = {task: len(names) for task, names in FEATURE_NAMES.items()}
_TEMPO_INDEX = DIM_NAMES.index("tempo_bpm")

COLUMNS: tuple[str, ...] = ("job_id", "task", "user_id", "group", "plan", "quality", "weight", "x",
                            *MASTER_PARAMS, "y_cls")


# ------------------------------------------------------------------------------------------ inputs

def _clip_vector(vec: Sequence[float] | np.ndarray, clip: str) -> np.ndarray:
    out = np.asarray(vec, dtype=np.float32)
    if out.shape != (len(DIM_NAMES),):
        raise ValueError(f"{clip} feature vector has shape {out.shape}, expected ({len(DIM_NAMES)},)")
    return out


def master_input(mix_vec: Sequence[float] | np.ndarray) -> np.ndarray:
    """The ``master_reg`` input: the mix clip's 160 features (float32)."""
    return _clip_vector(mix_vec, "mix")


def plan_one_hot(plan: str) -> np.ndarray:
    key = "lite" if plan == "freetrial" else plan
    if key not in PLANS:
        raise ValueError(f"unknown plan {plan!r} (expected one of {', '.join(KNOWN_PLANS)})")
    return np.array([p == key for p in PLANS], dtype=np.float32)


def preset_input(vocal_vec: Sequence[float] | np.ndarray, mix_vec: Sequence[float] | np.ndarray, *,
                 bpm: float | None, plan: str) -> np.ndarray:
    """The ``preset_cls`` input (325 float32): vocal, mix, tempo hint and its source, plan one-hot."""
    vocal, mix = _clip_vector(vocal_vec, "vocal"), _clip_vector(mix_vec, "mix")
    given = bpm is not None and math.isfinite(bpm) and bpm > 0
    tempo = float(bpm) if given else float(mix[_TEMPO_INDEX])
    return np.concatenate([vocal, mix, np.array([tempo, float(given)], dtype=np.float32), plan_one_hot(plan)])


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def align_input(alignment: Mapping) -> np.ndarray:
    """The ``align_conf`` input (``ALIGN_FEATURE_NAMES``, float32) from an alignment: the ``alignments``
    row's columns merged over its ``stats`` (or ``AlignmentResult.as_dict()``). Unknown or non-finite
    optional values are 0 with their ``_missing`` flag set; a missing tempo ratio means no drift (1)."""
    method = alignment.get("method")
    if method not in ALIGN_METHODS:
        raise ValueError(f"alignment method {method!r} is not one of {', '.join(ALIGN_METHODS)}")
    confidence = _number(alignment.get("confidence"))
    if confidence is None:
        raise ValueError("alignment has no finite confidence")
    dtw = _number(alignment.get("dtw_cost"))
    ratio = _number(alignment.get("tempo_ratio"))
    offset = _number(alignment.get("offset_ms"))
    gcc, onset = _number(alignment.get("gcc_offset_ms")), _number(alignment.get("onset_offset_ms"))
    disagreement = abs(gcc - onset) if gcc is not None and onset is not None else None
    values = [confidence, *(float(method == m) for m in ALIGN_METHODS),
              dtw or 0.0, float(dtw is None),
              ratio if ratio is not None else 1.0, abs(ratio - 1.0) if ratio is not None else 0.0, float(ratio is None),
              abs(offset) if offset is not None else 0.0,
              disagreement or 0.0, float(disagreement is None)]
    for stat in ALIGN_STATS:
        value = _number(alignment.get(stat))
        values += [value or 0.0, float(value is None)]
    return np.asarray(values, dtype=np.float32)


# ------------------------------------------------------------------------------------------- groups

def song_groups(user_ids: Sequence[str], inst_sha256s: Sequence[str | None]) -> list[str]:
    """CV group per row: its user, merged with every user who uploaded a byte-identical instrumental
    (union-find over users linked by a shared inst sha256). Named ``u:<smallest user_id in the set>``."""
    parent: dict[str, str] = {}

    def find(u: str) -> str:
        parent.setdefault(u, u)
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    owner_of_sha: dict[str, str] = {}
    for user, sha in zip(user_ids, inst_sha256s, strict=True):
        find(user)
        if sha:
            other = owner_of_sha.setdefault(sha, user)
            a, b = find(user), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the root stays the smallest id
    return [f"u:{find(u)}" for u in user_ids]


# ---------------------------------------------------------------------------------------------- SQL

# A withdrawal is over once consent was granted again after it, and then only for later uploads.
_NOT_WITHDRAWN_SQL = """(c.training_withdrawn_at IS NULL
         OR coalesce(c.training_granted_at > c.training_withdrawn_at
                     AND j.received_at > c.training_withdrawn_at, false))"""
# Eligibility of a job ``j`` with its owner's consent row ``c`` (LEFT JOINed: no row, no consent).
ELIGIBLE_SQL = f"""(
    c.training IS TRUE AND j.consent_training IS TRUE AND j.status <> 'failed'
    AND {_NOT_WITHDRAWN_SQL}
    AND NOT EXISTS (SELECT 1 FROM ml_exclusions e WHERE e.job_id = j.job_id OR e.user_id = j.user_id))"""

# The eligible, complete labelled rows (one per job and task), shared by the set and the incremental count.
_ELIGIBLE_LABELS_SQL = f"""
FROM jobs j
JOIN ml_consent c ON c.user_id = j.user_id
JOIN labels l ON l.job_id = j.job_id
LEFT JOIN features_store fm ON fm.job_id = j.job_id AND fm.clip_kind = 'mix'
                           AND fm.feature_version = :v AND fm.user_id = j.user_id
LEFT JOIN features_store fv ON fv.job_id = j.job_id AND fv.clip_kind = 'vocal'
                           AND fv.feature_version = :v AND fv.user_id = j.user_id
LEFT JOIN alignments a ON a.job_id = j.job_id
WHERE {ELIGIBLE_SQL}
  AND l.task = ANY(:tasks)
  AND (CAST(:received_before AS timestamptz) IS NULL OR j.received_at < CAST(:received_before AS timestamptz))
  AND (CAST(:day AS date) IS NULL OR j.partition_date = CAST(:day AS date))
  AND (CAST(:label_id_after AS bigint) IS NULL OR l.id > CAST(:label_id_after AS bigint))
  AND (CAST(:label_id_upto AS bigint) IS NULL OR l.id <= CAST(:label_id_upto AS bigint))
  AND CASE l.task WHEN 'master_reg' THEN fm.vec IS NOT NULL
                  WHEN 'preset_cls' THEN fm.vec IS NOT NULL AND fv.vec IS NOT NULL
                  WHEN 'align_conf' THEN a.job_id IS NOT NULL END"""

_TRAINING_ROWS_SQL = f"""
SELECT j.job_id::text AS job_id, j.user_id::text AS user_id, j.plan, j.bpm,
       l.task, l.y_reg, l.y_cls, l.quality,
       fm.vec AS mix_vec, fv.vec AS vocal_vec,
       a.method, a.confidence, a.dtw_cost, a.tempo_ratio, a.offset_ms, a.stats AS align_stats,
       (SELECT min(v.sha256) FROM vault_items v WHERE v.job_id = j.job_id AND v.kind = 'inst') AS inst_sha256
{_ELIGIBLE_LABELS_SQL}
ORDER BY j.job_id, l.task"""


def new_labelled_rows(conn: Connection, after: Mapping[str, int], *,
                      feature_version: str = FEATURE_VERSION) -> dict[str, tuple[int, int | None]]:
    """Per task: how many training-eligible rows have a label id above ``after[task]`` (0 if absent), and the
    greatest such id (an incremental update's batch, without loading the vectors)."""
    out = {}
    for task in TASKS:
        n, top = conn.execute(text(f"SELECT count(*), max(l.id) {_ELIGIBLE_LABELS_SQL}"), {
            "v": feature_version, "tasks": [task], "received_before": None, "day": None,
            "label_id_after": int(after.get(task, 0)), "label_id_upto": None}).one()
        out[task] = (int(n), None if top is None else int(top))
    return out


def empty_frame() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    frame["weight"] = frame["weight"].astype(float)
    for name in MASTER_PARAMS:
        frame[name] = frame[name].astype(float)
    return frame


def check_layout(conn: Connection, feature_version: str = FEATURE_VERSION) -> None:
    """The stored layout of ``feature_version`` (if any) must name exactly ``DIM_NAMES``."""
    names = conn.execute(text("SELECT dim_names FROM feature_layouts WHERE feature_version = :v"),
                         {"v": feature_version}).scalar()
    if names is not None and tuple(names) != DIM_NAMES:
        raise ValueError(f"feature layout {feature_version!r} in the database names {len(names)} dimensions that "
                         f"differ from this code's {len(DIM_NAMES)} (lib/features/extract.py); a changed layout "
                         "needs a new feature_version")


def load_training_set(conn: Connection, *, feature_version: str = FEATURE_VERSION,
                      tasks: Iterable[str] = TASKS, validate: bool = True,
                      received_before: datetime | None = None,
                      label_ids: tuple[int, int] | None = None, day: date | None = None) -> pd.DataFrame:
    """Every eligible labelled (job, task) with its input vector, in ``COLUMNS`` order, sorted by key;
    with ``received_before``, only uploads that arrived before it (a weekly partition's end: a backfilled
    week sees the uploads of its time, judged by today's consent); with ``label_ids`` = (after, upto), only
    labels whose id is in (after, upto] (an incremental batch); with ``day``, only that day partition's uploads."""
    tasks = list(tasks)
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)} (expected some of {', '.join(TASKS)})")
    check_layout(conn, feature_version)
    after, upto = label_ids if label_ids is not None else (None, None)
    rows = conn.execute(text(_TRAINING_ROWS_SQL), {
        "v": feature_version, "tasks": tasks, "received_before": received_before, "label_id_after": after,
        "label_id_upto": upto, "day": day}).mappings().all()
    frame = frame_from_rows([dict(r) for r in rows])
    return TRAINING_SET_SCHEMA.validate(frame, lazy=True) if validate else frame


def frame_from_rows(rows: list[dict]) -> pd.DataFrame:
    """Training-set rows from query rows (job_id, user_id, plan, bpm, task, y_reg, y_cls, quality,
    mix_vec, vocal_vec, the alignment columns and align_stats, inst_sha256)."""
    if not rows:
        return empty_frame()
    groups = song_groups([r["user_id"] for r in rows], [r.get("inst_sha256") for r in rows])
    records = []
    for row, group in zip(rows, groups, strict=True):
        task = row["task"]
        if task == "master_reg":
            x = master_input(row["mix_vec"])
        elif task == "preset_cls":
            x = preset_input(row["vocal_vec"], row["mix_vec"], bpm=row["bpm"], plan=row["plan"])
        else:
            x = align_input({**(row.get("align_stats") or {}),
                             **{k: row[k] for k in ("method", "confidence", "dtw_cost", "tempo_ratio", "offset_ms")}})
        y_reg = row["y_reg"] if task == "master_reg" else None
        reg = [math.nan if v is None else float(v) for v in y_reg] if y_reg is not None else [math.nan] * 4
        if len(reg) != len(MASTER_PARAMS):
            reg = [math.nan] * len(MASTER_PARAMS)  # the schema then rejects the row, naming it
        records.append({"job_id": row["job_id"], "task": task, "user_id": row["user_id"], "group": group,
                        "plan": row["plan"], "quality": row["quality"],
                        "weight": QUALITY_WEIGHTS.get(row["quality"], math.nan), "x": x,
                        **dict(zip(MASTER_PARAMS, reg, strict=True)),
                        "y_cls": row["y_cls"] if task != "master_reg" else None})
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return frame.sort_values(["job_id", "task"], kind="stable").reset_index(drop=True)


_VIOLATIONS_SQL = f"""
SELECT t.job_id::text AS job_id, t.user_id::text AS user_id,
       CASE WHEN j.job_id IS NULL THEN 'unknown job'
            WHEN j.user_id IS DISTINCT FROM t.user_id THEN 'the job belongs to another user'
            WHEN c.user_id IS NULL THEN 'no consent record for the user'
            WHEN c.training IS NOT TRUE THEN 'training consent is off'
            WHEN NOT {_NOT_WITHDRAWN_SQL} THEN 'training consent was withdrawn'
            WHEN j.consent_training IS NOT TRUE THEN 'the upload was made without training consent'
            WHEN j.status = 'failed' THEN 'the job failed'
            WHEN EXISTS (SELECT 1 FROM ml_exclusions e WHERE e.job_id = j.job_id) THEN 'the job is excluded'
            WHEN EXISTS (SELECT 1 FROM ml_exclusions e WHERE e.user_id = j.user_id) THEN 'the user is excluded'
            ELSE 'not eligible' END AS reason
FROM unnest(CAST(:jobs AS uuid[]), CAST(:users AS uuid[])) AS t(job_id, user_id)
LEFT JOIN jobs j ON j.job_id = t.job_id
LEFT JOIN ml_consent c ON c.user_id = j.user_id
WHERE j.job_id IS NULL OR j.user_id IS DISTINCT FROM t.user_id OR NOT {ELIGIBLE_SQL}
ORDER BY t.job_id"""


def consent_violations(conn: Connection, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame's jobs that may not (or no longer) be trained on, with a reason each: columns job_id,
    user_id, reason; empty when every row is allowed. Checked against the database now, so that a
    withdrawal or exclusion that arrived after the training set was built also shows up."""
    pairs = frame[["job_id", "user_id"]].drop_duplicates().sort_values("job_id")
    if pairs.empty:
        return pd.DataFrame({"job_id": pd.Series(dtype=object), "user_id": pd.Series(dtype=object),
                             "reason": pd.Series(dtype=object)})
    rows = conn.execute(text(_VIOLATIONS_SQL), {"jobs": pairs["job_id"].astype(str).tolist(),
                                                "users": pairs["user_id"].astype(str).tolist()}).mappings().all()
    return pd.DataFrame([dict(r) for r in rows], columns=["job_id", "user_id", "reason"])


# ------------------------------------------------------------------------------------------- schema

_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _x_ok(frame: pd.DataFrame) -> pd.Series:
    def ok(x, task) -> bool:
        dim = INPUT_DIMS.get(task)
        return (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (dim,)
                and bool(np.isfinite(x).all()))
    return pd.Series([ok(x, t) for x, t in zip(frame["x"], frame["task"], strict=True)], index=frame.index)


def _labels_ok(frame: pd.DataFrame) -> pd.Series:
    reg = frame["task"] == "master_reg"
    y_reg = frame[list(MASTER_PARAMS)]
    reg_ok = np.isfinite(y_reg.to_numpy(dtype=float)).all(axis=1)
    no_reg = y_reg.isna().all(axis=1)
    cls_ok = pd.Series([y in CLASS_LABELS.get(t, ()) for y, t in zip(frame["y_cls"], frame["task"], strict=True)],
                       index=frame.index)
    return (reg & reg_ok & frame["y_cls"].isna()) | (~reg & no_reg & cls_ok)


def _weight_ok(frame: pd.DataFrame) -> pd.Series:
    return frame["weight"] == frame["quality"].map(QUALITY_WEIGHTS)


def _range(name: str) -> pa.Check:
    low, high = MASTER_PARAM_RANGES[name]
    return pa.Check.in_range(low, high, error=f"{name} outside its range {low}..{high}")


def _text(*checks: pa.Check, nullable: bool = False) -> pa.Column:
    """A text column whatever pandas' string dtype of the day (object, ``str``, ``string[pyarrow]``)."""
    is_text = pa.Check(lambda s: s.map(lambda v: isinstance(v, str)), error="must be text")
    return pa.Column(None, [is_text, *checks], nullable=nullable)


TRAINING_SET_SCHEMA = pa.DataFrameSchema(
    {
        "job_id": _text(pa.Check.str_matches(_UUID)),
        "task": _text(pa.Check.isin(TASKS)),
        "user_id": _text(pa.Check.str_matches(_UUID)),
        "group": _text(pa.Check.str_length(min_value=3)),
        "plan": _text(pa.Check.isin(KNOWN_PLANS)),
        "quality": _text(pa.Check.isin(tuple(QUALITY_WEIGHTS))),
        "weight": pa.Column(float, pa.Check.gt(0)),
        "x": pa.Column(object),
        **{name: pa.Column(float, _range(name), nullable=True) for name in MASTER_PARAMS},
        "y_cls": _text(nullable=True),
    },
    checks=[
        pa.Check(_x_ok, error="x must be a finite float32 vector of INPUT_DIMS[task] values"),
        pa.Check(_labels_ok, error="master_reg needs four finite params and no y_cls; preset_cls a known preset "
                                   "id and align_conf ok/warn/fail, without params"),
        pa.Check(_weight_ok, error="weight must be QUALITY_WEIGHTS[quality]"),
    ],
    unique=["job_id", "task"],
    strict=True,
    ordered=True,
    name="training_set",
)


def validate(frame: pd.DataFrame) -> pd.DataFrame:
    """``TRAINING_SET_SCHEMA.validate`` collecting every failure (raises ``pandera.errors.SchemaErrors``)."""
    return TRAINING_SET_SCHEMA.validate(frame, lazy=True)


# ------------------------------------------------------------------------------------ digest, counts

DIGEST_VERSION = b"mixai-training-set-digest/1\n"


def digest(frame: pd.DataFrame) -> str:
    """sha256 of the set's content, independent of row order: per row, sorted by (job_id, task), the key,
    the CV group, the label quality, the label values (float32, as stored) and the input vector (float32
    bytes). Equal digests mean the same rows, labels, weights, folds and inputs."""
    h = hashlib.sha256(DIGEST_VERSION)
    ordered = frame.sort_values(["job_id", "task"], kind="stable")
    for job, task, group, quality, x, y_cls, *reg in zip(
            ordered["job_id"], ordered["task"], ordered["group"], ordered["quality"], ordered["x"],
            ordered["y_cls"], *(ordered[n] for n in MASTER_PARAMS), strict=True):
        label = ",".join(repr(float(np.float32(v))) for v in reg) if task == "master_reg" else str(y_cls)
        h.update(f"{job}\t{task}\t{group}\t{quality}\t{label}\t".encode())
        h.update(np.asarray(x, dtype="<f4").tobytes())
        h.update(b"\n")
    return h.hexdigest()


def task_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per task, every task named (0 when absent)."""
    counts = frame["task"].value_counts()
    return {task: int(counts.get(task, 0)) for task in TASKS}


def class_counts(frame: pd.DataFrame, task: str) -> dict[str, int]:
    counts = frame.loc[frame["task"] == task, "y_cls"].value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}


# ------------------------------------------------------------------------------------------ arrays

class TaskData:
    """One task's arrays, rows sorted by job_id: ``X`` (n, d) float32, ``y`` ((n, 4) float64 for
    master_reg, (n,) str objects otherwise), ``weight``, ``groups``, ``job_ids``, ``feature_names``."""

    def __init__(self, task: str, frame: pd.DataFrame):
        rows = frame[frame["task"] == task].sort_values("job_id", kind="stable")
        self.task = task
        self.feature_names = FEATURE_NAMES[task]
        self.job_ids = rows["job_id"].to_numpy(dtype=object)
        self.X = (np.stack(rows["x"].to_list()).astype(np.float32, copy=False) if len(rows)
                  else np.zeros((0, INPUT_DIMS[task]), dtype=np.float32))
        self.y = (rows[list(MASTER_PARAMS)].to_numpy(dtype=np.float64) if task == "master_reg"
                  else rows["y_cls"].to_numpy(dtype=object))
        self.weight = rows["weight"].to_numpy(dtype=np.float64)
        self.groups = rows["group"].to_numpy(dtype=object)

    def __len__(self) -> int:
        return len(self.job_ids)


def task_data(frame: pd.DataFrame, task: str) -> TaskData:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    return TaskData(task, frame)


# ------------------------------------------------------------------------------------------ parquet

def _arrow_schema():
    import pyarrow as pa_

    return pa_.schema([
        ("job_id", pa_.string()), ("task", pa_.string()), ("user_id", pa_.string()), ("group", pa_.string()),
        ("plan", pa_.string()), ("quality", pa_.string()), ("weight", pa_.float64()),
        ("x", pa_.list_(pa_.float32())),
        *((name, pa_.float64()) for name in MASTER_PARAMS),
        ("y_cls", pa_.string()),
    ])


def to_parquet(frame: pd.DataFrame, path: str | Path, *, feature_version: str = FEATURE_VERSION) -> str:
    """Validate and write the set (zstd Parquet, ``x`` as list<float32>); the digest, counts and feature
    version go into the file's metadata. Returns the digest."""
    import pyarrow as pa_
    import pyarrow.parquet as pq

    frame = validate(frame)
    value = digest(frame)
    schema = _arrow_schema()
    columns = {name: frame[name].tolist() for name in COLUMNS if name != "x"}
    columns["y_cls"] = [None if pd.isna(v) else v for v in columns["y_cls"]]  # pandas may hold NaN for None
    columns["x"] = [np.asarray(x, dtype=np.float32) for x in frame["x"]]
    table = pa_.Table.from_pydict({name: columns[name] for name in COLUMNS}, schema=schema)
    table = table.replace_schema_metadata({
        b"mixai.digest": value.encode(), b"mixai.feature_version": feature_version.encode(),
        b"mixai.task_counts": json.dumps(task_counts(frame)).encode()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path), compression="zstd")
    return value


def from_parquet(path: str | Path) -> pd.DataFrame:
    """Read a set written by ``to_parquet``: validated, and checked against the digest in its metadata."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    records = {name: table.column(name).to_pylist() for name in COLUMNS if name != "x"}
    x = table.column("x").combine_chunks()
    values, offsets = x.values.to_numpy(zero_copy_only=False), x.offsets.to_numpy()
    records["x"] = [values[a:b].astype(np.float32) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    frame = pd.DataFrame({name: records[name] for name in COLUMNS}) if table.num_rows else empty_frame()
    if table.num_rows:
        for name in ("weight", *MASTER_PARAMS):
            frame[name] = frame[name].astype(float)
        frame["y_cls"] = frame["y_cls"].astype(object)
    frame = validate(frame)
    stored = (table.schema.metadata or {}).get(b"mixai.digest")
    if stored is not None and stored.decode() != digest(frame):
        raise ValueError(f"{path}: content does not match the digest recorded when it was written")
    return frame


def put_to_store(frame: pd.DataFrame, store, key: str) -> str:
    """``to_parquet`` into the object store under ``key``; returns the digest."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mixai-training-set-") as tmp:
        path = Path(tmp) / "training_set.parquet"
        value = to_parquet(frame, path)
        store.put_file(key, path, "application/vnd.apache.parquet")
    return value


def get_from_store(store, key: str) -> pd.DataFrame:
    """``from_parquet`` of the set stored under ``key`` (validated and checked against its digest)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mixai-training-set-") as tmp:
        path = Path(tmp) / "training_set.parquet"
        path.write_bytes(store.get_bytes(key))
        return from_parquet(path)


def set_key(label: str) -> str:
    """Where a training set lives: ``training/sets/<week or manual label>/training_set.parquet``."""
    return f"training/sets/{label}/training_set.parquet"

"""Incremental model updates between the weekly retrains (seed 000 §10: every ``MIN_NEW_SAMPLES`` (100) new
consented, labelled rows, an ``SGD*`` ``partial_fit`` update gives a candidate, registered like the weekly
models and never promoted except by the rollout rules).

Model per task (``IncrementalModel``, whose ``partial_fit`` updates scaler and model together), one fixed
``RANDOM_STATE``, label-quality sample weights on every fit:

- ``master_reg``: StandardScaler → MultiOutputRegressor(SGDRegressor), squared error. The SGD learns the
  labels minus a per-output offset, the first batch's weighted label mean, frozen: plain SGD starting at
  intercept 0 needs hundreds of steps to walk to -14 LUFS and would lose to the mean baseline for batches.
  The exported estimator folds the offset into the intercepts (exactly the same predictions).
- ``preset_cls`` and ``align_conf``: StandardScaler → SGDClassifier (``log_loss``: probabilities exist),
  one-vs-rest over the fixed full class list (``dataset.CLASS_LABELS``: the 12 catalogue presets, or
  ok/warn/fail), so a class absent from the first batches is still known and a label outside the list is
  refused (``ValueError``, nothing changes) instead of silently growing the model.
- steps: a constant, small learning rate with averaging (``average=True``: the served weights are the
  running average of all iterates, far less noisy than the last step on 100-row batches; averaged
  constant-step SGD is the classic choice for online least squares and logistic regression). A constant
  step keeps every batch's influence the same, where a decaying schedule would freeze the model after a
  few thousand rows. scikit-learn's default for classifiers (``optimal``, huge first steps) gave scores in
  the hundreds on synthetic data, and that breaks the ONNX export: skl2onnx takes the label as the argmax
  of float32 one-vs-rest probabilities, which tie at 1 above a score of ~17 and at 0 (then uniform) below
  ~-88, where scikit-learn still tells the classes apart. With these settings scores stay near ±10 and
  parity holds (the gate would still catch a tie).

An update (``update``) takes the batch's rows of the task (a training-set frame, consent-filtered by the
caller), drops rows already included (``included_job_ids``: a row is never learned twice), refuses a
batch with fewer than ``MIN_NEW_SAMPLES`` new rows (``BatchTooSmall``; ``batch_status`` says so without
raising, for the sensor), and applies the rest in job_id order (the same batches in any row order give
the same model):

1. test: the current model predicts the new rows before it learns from them (prequential, test-then-train:
   the honest metric of an online learner, every row is unseen when scored), with ``models.fold_metrics``,
   against the weekly training's baselines (``models.baselines_for``) fitted on what the model saw before
   (weighted label mean; weighted class shares for majority and prior). The first batch has nothing to be
   tested against: n/a.
2. train: the scaler's running mean/variance is updated with the batch (unweighted: feature scale is a
   property of the inputs, not of how much we trust a label), then ``EPOCHS_PER_BATCH`` ``partial_fit``
   passes over it, each in a permutation seeded by (``RANDOM_STATE``, version, pass).

The state never changes in place: ``update`` returns a new one (``IncrementalUpdate.state``) with the counters
(``version``, ``n_seen``), the ``watermark`` (the greatest (labels.created_at, job_id) included: the sensor
asks for labels after it), a chained digest (``training_set_digest``: sha256 over the previous digest and the
batch's ``dataset.digest``, so it names the exact sequence of batches the model learned from) and the
per-batch evaluation history.

Registration (``IncrementalUpdate.training_result``): a ``models.TrainingResult`` the existing registry code
takes unchanged, with candidate ``sgd_incremental`` whose "folds" are the last ``PREQUENTIAL_WINDOW`` batches'
prequential scores (a sliding-window prequential error), the baselines on the same batches, and the weekly
training's own qualification rule (``models.qualifies``). As there, ``chosen``/``estimator`` are None when it
does not clearly beat the baselines (and on the first batch): nothing to register. Note what the score means:
each batch scores the model before that batch; the new candidate itself is scored by the next batch.

Persistence (``save_state``/``load_state``): one joblib file, ``models/<task>/incremental/state.joblib``,
written whole with ``put_bytes`` (the local store renames a temp file; S3 puts are atomic). It holds the
scikit-learn objects and plain metadata in a dict, not this module's classes, so refactoring them does not
orphan old files. A missing file means "start from scratch"; an unreadable or inconsistent one raises
``IncrementalStateError`` naming the key, never a silent restart (that would drop the history). joblib is
pickle: the key must be writable by the pipeline only.

What an incremental model cannot do: forget. A row of a user who withdraws stays in the weights, so the
withdrawal's purge deletes any state that includes the user's uploads (``forget``) and the next update
starts a new model; the weekly retrain on the then-current consented set is the clean model.
"""

from __future__ import annotations

import copy
import hashlib
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mixai_pipeline.lib.training import dataset, models

if TYPE_CHECKING:
    from mixai_pipeline.lib.storage.object_store import ObjectStore

MIN_NEW_SAMPLES = 100        # seed §10: "every 100 new samples"
CANDIDATE_NAME = "sgd_incremental"
RANDOM_STATE = models.RANDOM_STATE
EPOCHS_PER_BATCH = 5         # passes over each batch: with one, averaged SGD learns the signal batches later
PREQUENTIAL_WINDOW = 3       # batches whose prequential scores qualify a candidate
# Constant steps, averaged (module docstring). The regressor's is small because squared-error SGD diverges once
# step × |x|² passes 2, and a standardized 160-feature row has |x|² ≈ 160.
SGD_REGRESSOR_PARAMS: dict[str, Any] = {
    "loss": "squared_error", "penalty": "l2", "alpha": 1e-4, "learning_rate": "constant", "eta0": 0.001,
    "average": True}
SGD_CLASSIFIER_PARAMS: dict[str, Any] = {
    "loss": "log_loss", "penalty": "l2", "alpha": 1e-4, "learning_rate": "constant", "eta0": 0.01, "average": True}

STATE_FORMAT = "mixai-incremental-state"
STATE_FORMAT_VERSION = 1
_DIGEST_PREFIX = b"mixai-incremental-digest/1\n"
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


class BatchTooSmall(ValueError):
    """Fewer new rows than the update needs (``MIN_NEW_SAMPLES``)."""


class IncrementalStateError(RuntimeError):
    """The stored state cannot be used (unreadable, another format or task). Never silently replaced."""


def state_key(task: str) -> str:
    return f"models/{_check_task(task)}/incremental/state.joblib"


def _check_task(task: str) -> str:
    if task not in dataset.TASKS:
        raise ValueError(f"unknown task {task!r} (expected one of {', '.join(dataset.TASKS)})")
    return task


def class_list(task: str) -> tuple[str, ...]:
    """Every label a classifier task can have, sorted (scikit-learn's ``classes_`` order); () for master_reg."""
    return tuple(sorted(dataset.CLASS_LABELS.get(_check_task(task), ())))


# ------------------------------------------------------------------------------------------ watermark

@dataclass(frozen=True)
class Watermark:
    """The newest row included, for the sensor's "labels after this" query, ordered by (created_at, job_id).
    ``created_at`` (labels.created_at, timezone-aware) is None when the caller gave only job keys; job ids are
    uuid4s, which order rows but say nothing about time, so the sensor should pass created_at."""

    created_at: datetime | None
    job_id: str

    def __post_init__(self):
        if self.created_at is not None and self.created_at.tzinfo is None:
            raise ValueError(f"watermark created_at must be timezone-aware, got {self.created_at!r}")

    def sort_key(self) -> tuple[datetime, str]:
        return (self.created_at or _EARLIEST, self.job_id)

    def as_dict(self) -> dict[str, str | None]:
        return {"created_at": self.created_at.isoformat() if self.created_at else None, "job_id": self.job_id}


def _later(a: Watermark | None, b: Watermark | None) -> Watermark | None:
    if a is None or b is None:
        return a or b
    return max(a, b, key=Watermark.sort_key)


# ------------------------------------------------------------------------------------------ state

def _new_estimator(task: str):
    from sklearn.linear_model import SGDClassifier, SGDRegressor
    from sklearn.multioutput import MultiOutputRegressor

    # shuffle=False: ``IncrementalModel.partial_fit`` permutes the rows itself, seeded by the version
    if models.TASK_KIND[task] == "regression":
        return MultiOutputRegressor(SGDRegressor(**SGD_REGRESSOR_PARAMS, shuffle=False, random_state=RANDOM_STATE))
    return SGDClassifier(**SGD_CLASSIFIER_PARAMS, shuffle=False, random_state=RANDOM_STATE)


@dataclass
class IncrementalModel:
    """One task's online model and what it has seen (the state ``save_state`` stores; module docstring).
    ``partial_fit`` learns from rows in place; ``update`` is the row-level, copy-on-write API around it."""

    task: str
    scaler: Any                                   # StandardScaler, updated by partial_fit
    estimator: Any                                # MultiOutputRegressor(SGDRegressor) | SGDClassifier
    version: int = 0                              # partial_fit calls (updates) applied
    n_seen: int = 0
    weight_seen: float = 0.0
    label_weight_sums: np.ndarray | None = None   # per output sum of w·y (regression), per class sum of w
    target_offset: np.ndarray | None = None       # regression: the frozen first-batch label mean
    included_job_ids: set[str] = field(default_factory=set)
    groups_seen: set[str] = field(default_factory=set)
    watermark: Watermark | None = None
    training_set_digest: str | None = None        # chained over the batches (module docstring)
    history: list[dict] = field(default_factory=list)  # one JSON-safe record per update

    @property
    def kind(self) -> str:
        return models.TASK_KIND[self.task]

    @property
    def classes(self) -> tuple[str, ...]:
        return class_list(self.task)

    @property
    def fitted(self) -> bool:
        return self.version > 0

    def pipeline(self):
        """The served estimator: a plain fitted Pipeline(scaler, model), independent of this state (copies),
        the regression offset folded into the intercepts. ``onnx_export.to_onnx`` converts it."""
        from sklearn.pipeline import Pipeline

        if not self.fitted:
            raise ValueError(f"{self.task}: the incremental model has not learned from any batch yet")
        model = copy.deepcopy(self.estimator)
        if self.kind == "regression":
            for output, offset in zip(model.estimators_, self.target_offset, strict=True):
                output.intercept_ = output.intercept_ + offset
        return Pipeline([("scaler", copy.deepcopy(self.scaler)), ("model", model)])

    def partial_fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray) -> IncrementalModel:
        """Learn from these rows, in place and in the order given: the scaler's running statistics, then
        ``EPOCHS_PER_BATCH`` weighted SGD passes (permutations seeded by the version), the label statistics
        of the baselines, ``n_seen`` and ``version``. ``ValueError`` for arrays that do not fit the task
        (nothing is changed then). Row bookkeeping (job ids, watermark, digest, history) is ``update``'s."""
        X, y, w = self._checked(X, y, sample_weight)
        self.scaler.partial_fit(X)
        scaled = self.scaler.transform(X)
        if self.kind == "regression":
            if self.target_offset is None:
                self.target_offset = np.average(y, axis=0, weights=w)
            target = y - self.target_offset
            sums = (w[:, None] * y).sum(axis=0)
            fit_kwargs: dict[str, Any] = {}
        else:
            target = y
            sums = np.array([w[y == c].sum() for c in self.classes])
            fit_kwargs = {"classes": np.asarray(self.classes, dtype=object)}
        version = self.version + 1
        for epoch in range(EPOCHS_PER_BATCH):
            order = np.random.default_rng([RANDOM_STATE, version, epoch]).permutation(len(y))
            self.estimator.partial_fit(scaled[order], target[order], sample_weight=w[order], **fit_kwargs)
        self.label_weight_sums = sums if self.label_weight_sums is None else self.label_weight_sums + sums
        self.weight_seen += float(w.sum())
        self.n_seen += len(y)
        self.version = version
        return self

    def _checked(self, X, y, sample_weight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float32)
        w = np.asarray(sample_weight, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64) if self.kind == "regression" else np.asarray(y, dtype=object)
        dim = dataset.INPUT_DIMS[self.task]
        if X.ndim != 2 or X.shape[1] != dim or len(X) == 0:
            raise ValueError(f"{self.task}: X has shape {X.shape}, expected (n > 0, {dim})")
        expected_y = (len(X), len(dataset.MASTER_PARAMS)) if self.kind == "regression" else (len(X),)
        if y.shape != expected_y or w.shape != (len(X),):
            raise ValueError(f"{self.task}: y has shape {y.shape} and weights {w.shape}, expected {expected_y} "
                             f"and ({len(X)},)")
        if not (np.isfinite(X).all() and np.isfinite(w).all() and (w > 0).all()):
            raise ValueError(f"{self.task}: X and the weights must be finite, the weights positive")
        if self.kind == "regression" and not np.isfinite(y).all():
            raise ValueError(f"{self.task}: labels must be finite")
        unknown = sorted({str(v) for v in y} - set(self.classes)) if self.kind == "classification" else []
        if unknown:
            raise ValueError(f"{self.task}: labels outside the known classes ({', '.join(self.classes)}): {unknown}")
        return X, y, w


def new_model(task: str) -> IncrementalModel:
    """An empty model: the first ``update`` (or ``partial_fit``) starts from it."""
    from sklearn.preprocessing import StandardScaler

    return IncrementalModel(task=_check_task(task), scaler=StandardScaler(), estimator=_new_estimator(task))


# ------------------------------------------------------------------------------------------ persistence

_STATE_FIELDS = ("version", "n_seen", "weight_seen", "label_weight_sums", "target_offset", "included_job_ids",
                 "groups_seen", "training_set_digest", "history")


def state_to_bytes(state: IncrementalModel) -> bytes:
    import joblib
    import sklearn

    payload = {"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "task": state.task,
               "sklearn_version": sklearn.__version__, "scaler": state.scaler, "estimator": state.estimator,
               "watermark": None if state.watermark is None else (state.watermark.created_at,
                                                                 state.watermark.job_id),
               **{name: getattr(state, name) for name in _STATE_FIELDS}}
    buffer = io.BytesIO()
    joblib.dump(payload, buffer, compress=3)
    return buffer.getvalue()


def state_from_bytes(data: bytes, *, task: str, key: str = "<bytes>") -> IncrementalModel:
    """The state in ``data``; ``IncrementalStateError`` (naming ``key``) when it cannot be used."""
    import joblib

    try:
        payload = joblib.load(io.BytesIO(data))
    except Exception as exc:  # truncated, not joblib, unpickling errors: all mean "cannot be read"
        raise IncrementalStateError(f"incremental state {key!r} cannot be read ({type(exc).__name__}: {exc}); "
                                    "it was not replaced: repair or delete it deliberately") from exc
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise IncrementalStateError(f"incremental state {key!r} is not a {STATE_FORMAT} file")
    if payload.get("format_version") != STATE_FORMAT_VERSION:
        raise IncrementalStateError(f"incremental state {key!r} has format version {payload.get('format_version')!r}"
                                    f", this code reads {STATE_FORMAT_VERSION}")
    if payload.get("task") != task:
        raise IncrementalStateError(f"incremental state {key!r} belongs to task {payload.get('task')!r}, not {task!r}")
    missing = [name for name in ("scaler", "estimator", "watermark", *_STATE_FIELDS) if name not in payload]
    if missing:
        raise IncrementalStateError(f"incremental state {key!r} lacks {', '.join(missing)}")
    watermark = payload["watermark"]
    return IncrementalModel(task=task, scaler=payload["scaler"], estimator=payload["estimator"],
                            watermark=None if watermark is None else Watermark(*watermark),
                            **{name: payload[name] for name in _STATE_FIELDS})


def save_state(store: ObjectStore, task: str, state: IncrementalModel) -> str:
    """Write the whole state to ``state_key(task)`` in one put; returns the key."""
    if state.task != task:
        raise ValueError(f"state of task {state.task!r} cannot be saved as {task!r}")
    key = state_key(task)
    store.put_bytes(key, state_to_bytes(state), "application/octet-stream")
    return key


def load_state(store: ObjectStore, task: str) -> IncrementalModel | None:
    """The stored state, or None when there is none yet (start from scratch)."""
    key = state_key(task)
    if not store.exists(key):
        return None
    return state_from_bytes(store.get_bytes(key), task=task, key=key)


def forget(store: ObjectStore, task: str, job_ids: Iterable[str]) -> bool:
    """An incremental model cannot unlearn rows: when its state includes any of ``job_ids`` (a withdrawn
    user's uploads), the state is deleted, and the next update starts a new model from the rows that
    arrive after the watermark. True if it was deleted."""
    state = load_state(store, task)
    if state is None or not set(map(str, job_ids)) & set(state.included_job_ids):
        return False
    store.delete(state_key(task))
    return True


def forget_users(conn, store: ObjectStore, user_ids: Iterable[str]) -> list[str]:
    """``forget`` for every task, for all the uploads of these users: the tasks whose state was reset."""
    from sqlalchemy import text

    users = [str(u) for u in user_ids]
    if not users:
        return []
    jobs = conn.execute(text("SELECT job_id::text FROM jobs WHERE user_id = ANY(CAST(:u AS uuid[]))"),
                        {"u": users}).scalars().all()
    return [task for task in dataset.TASKS if forget(store, task, jobs)]


# ------------------------------------------------------------------------------------------ batches

@dataclass(frozen=True)
class BatchStatus:
    task: str
    n_rows: int                  # the task's rows in the frame
    n_already_included: int      # of those, rows the model has already learned from (dropped)
    min_new_samples: int

    @property
    def n_new(self) -> int:
        return self.n_rows - self.n_already_included

    @property
    def ready(self) -> bool:
        return self.n_new >= self.min_new_samples

    @property
    def reason(self) -> str:
        seen = f" ({self.n_already_included} more already included)" if self.n_already_included else ""
        verdict = "at least the" if self.ready else "fewer than the"
        return (f"{self.task}: {self.n_new} new labelled rows{seen}, {verdict} {self.min_new_samples} "
                f"an incremental update needs")


def _task_rows(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[frame["task"] == _check_task(task)]


def batch_status(state: IncrementalModel | None, frame: pd.DataFrame, task: str, *,
                 min_new_samples: int = MIN_NEW_SAMPLES) -> BatchStatus:
    """How many of the frame's ``task`` rows are new to the model, and whether that is enough."""
    rows = _task_rows(frame, task)
    seen = state.included_job_ids if state is not None else set()
    n_seen = int(rows["job_id"].isin(seen).sum()) if seen else 0
    return BatchStatus(task, len(rows), n_seen, min_new_samples)


def check_batch(state: IncrementalModel | None, frame: pd.DataFrame, task: str, *,
                min_new_samples: int = MIN_NEW_SAMPLES) -> BatchStatus:
    """``batch_status``, raising ``BatchTooSmall`` (with the counts) when the batch is not enough."""
    status = batch_status(state, frame, task, min_new_samples=min_new_samples)
    if not status.ready:
        raise BatchTooSmall(status.reason + "; wait for more labels")
    return status


def _check_labels(rows: pd.DataFrame, task: str) -> None:
    """Class labels outside the fixed list are refused, naming them (before anything else is looked at)."""
    if models.TASK_KIND[task] != "classification":
        return
    unknown = rows.loc[~rows["y_cls"].isin(class_list(task))]
    if len(unknown):
        labels = sorted({str(v) for v in unknown["y_cls"]})
        raise ValueError(f"{task}: {len(unknown)} rows have labels outside the known classes "
                         f"({', '.join(class_list(task))}): {labels} (e.g. job {unknown['job_id'].iloc[0]})")


def _chain_digest(previous: str | None, batch_digest: str) -> str:
    return hashlib.sha256(_DIGEST_PREFIX + f"{previous or ''}\n{batch_digest}\n".encode()).hexdigest()


# ------------------------------------------------------------------------------------------ evaluation

@dataclass
class BatchEvaluation:
    """Prequential scores of one batch: the model as it was before the batch (``model_version``) and the
    baselines fitted on what it had seen, all on the batch's rows (job_id order)."""

    model_version: int
    n_rows: int
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    predictions: np.ndarray
    baseline_predictions: dict[str, np.ndarray]


def _baseline_estimators(state: IncrementalModel) -> dict[str, Any]:
    """The weekly baselines, fitted on sufficient statistics of what the model has seen: the weighted
    label mean (regression), one row per seen class weighted by its total weight (classification)."""
    fitted = {}
    for baseline in models.baselines_for(state.kind, random_state=RANDOM_STATE):
        estimator = baseline.build({})
        if state.kind == "regression":
            mean = state.label_weight_sums / state.weight_seen
            estimator.fit(np.zeros((1, 1)), mean[None, :])
        else:
            present = state.label_weight_sums > 0
            estimator.fit(np.zeros((int(present.sum()), 1)), np.asarray(state.classes, dtype=object)[present],
                          sample_weight=state.label_weight_sums[present])
        fitted[baseline.name] = estimator
    return fitted


def _evaluate(state: IncrementalModel, data: dataset.TaskData) -> BatchEvaluation:
    outputs = dataset.MASTER_PARAMS if state.kind == "regression" else ()
    predictions = state.pipeline().predict(data.X)
    baseline_predictions = {name: est.predict(np.zeros((len(data), 1)))
                            for name, est in _baseline_estimators(state).items()}
    return BatchEvaluation(
        model_version=state.version, n_rows=len(data),
        metrics=models.fold_metrics(state.kind, data.y, predictions, data.weight, outputs),
        baselines={name: models.fold_metrics(state.kind, data.y, pred, data.weight, outputs)
                   for name, pred in baseline_predictions.items()},
        predictions=predictions, baseline_predictions=baseline_predictions)


# ------------------------------------------------------------------------------------------ update

@dataclass
class IncrementalUpdate:
    """What ``update`` did: the new state (save it), the batch's prequential evaluation (None on the first
    batch), the rows applied (``rows.X`` is what the ONNX parity check should run on)."""

    state: IncrementalModel
    evaluation: BatchEvaluation | None
    rows: dataset.TaskData
    n_already_included: int
    batch_digest: str
    fit_seconds: float

    def training_result(self) -> models.TrainingResult:
        return training_result(self.state, self.rows, self.evaluation, fit_seconds=self.fit_seconds)


def update(state: IncrementalModel | None, frame: pd.DataFrame, task: str, *, watermark: Watermark | None = None,
           min_new_samples: int = MIN_NEW_SAMPLES) -> IncrementalUpdate:
    """Test-then-train on the frame's new ``task`` rows (module docstring). ``state`` None starts from scratch;
    it is never modified. ``watermark``: the batch's newest (labels.created_at, job_id), when the caller has
    it; else its greatest job_id. Raises ``ValueError`` for unknown labels or invalid rows, ``BatchTooSmall``
    when fewer than ``min_new_samples`` rows are new."""
    from threadpoolctl import threadpool_limits

    rows = _task_rows(frame, task)
    _check_labels(rows, task)
    state = copy.deepcopy(state) if state is not None else new_model(task)
    if state.task != task:
        raise ValueError(f"state of task {state.task!r} given for {task!r}")
    status = check_batch(state, rows, task, min_new_samples=min_new_samples)
    new_rows = rows[~rows["job_id"].isin(state.included_job_ids)]
    try:
        new_rows = dataset.validate(new_rows.reset_index(drop=True))
    except Exception as exc:  # pandera's SchemaErrors lists every failing check
        raise ValueError(f"{task}: the batch is not a valid training set: {exc}") from exc
    data = dataset.task_data(new_rows, task)  # sorted by job_id: row order in the frame does not matter
    batch_digest = dataset.digest(new_rows)

    with threadpool_limits(limits=1):  # tiny matrices; a thread per core only contends on a shared machine
        evaluation = _evaluate(state, data) if state.fitted else None
        started = time.perf_counter()
        state.partial_fit(data.X, data.y, data.weight)
        fit_seconds = time.perf_counter() - started

    state.included_job_ids |= set(data.job_ids.tolist())
    state.groups_seen |= set(data.groups.tolist())
    state.watermark = _later(state.watermark, watermark or Watermark(None, str(max(data.job_ids))))
    state.training_set_digest = _chain_digest(state.training_set_digest, batch_digest)
    state.history.append({
        "version": state.version, "n_rows": len(data), "n_seen": state.n_seen, "batch_digest": batch_digest,
        "training_set_digest": state.training_set_digest,
        "watermark": state.watermark.as_dict() if state.watermark else None,
        "evaluated_version": evaluation.model_version if evaluation else None,
        "metrics": evaluation.metrics if evaluation else None,
        "baselines": evaluation.baselines if evaluation else None,
        "note": None if evaluation else "first batch: nothing learned before it to evaluate (n/a)"})
    return IncrementalUpdate(state=state, evaluation=evaluation, rows=data,
                             n_already_included=status.n_already_included, batch_digest=batch_digest,
                             fit_seconds=fit_seconds)


# ------------------------------------------------------------------------------------------ registry

def _scores(name: str, per_batch: Sequence[dict[str, float]], params: dict, fit_seconds: float) -> models.CVScores:
    return models.CVScores(name, models.summarise_folds(list(per_batch)), [params] * len(per_batch), fit_seconds)


def sgd_params(task: str) -> dict[str, Any]:
    return dict(SGD_REGRESSOR_PARAMS if models.TASK_KIND[_check_task(task)] == "regression"
                else SGD_CLASSIFIER_PARAMS)


def training_result(state: IncrementalModel, rows: dataset.TaskData, evaluation: BatchEvaluation | None, *,
                    fit_seconds: float = 0.0) -> models.TrainingResult:
    """The state as a ``models.TrainingResult`` for ``registry`` (module docstring): prequential scores of
    the last ``PREQUENTIAL_WINDOW`` evaluated batches as the folds; ``rows``/``evaluation``: the latest batch."""
    kind = state.kind
    window = [r for r in state.history if r["metrics"] is not None][-PREQUENTIAL_WINDOW:]
    params = {**sgd_params(state.task), "epochs_per_batch": EPOCHS_PER_BATCH, "version": state.version,
              "n_seen": state.n_seen}
    result = models.TrainingResult(
        task=state.task, kind=kind, chosen=None, estimator=None, chosen_params=None, candidates={}, baselines={},
        selection=[], n_samples=state.n_seen, n_groups=len(state.groups_seen), n_splits=len(window),
        random_state=RANDOM_STATE, feature_names=dataset.FEATURE_NAMES[state.task],
        output_names=dataset.MASTER_PARAMS if kind == "regression" else state.classes,
        classes=state.classes, job_ids=rows.job_ids,
        fold_of_row=np.full(len(rows), len(window) - 1 if evaluation is not None and window else -1),
        evaluation=f"prequential (test-then-train) over the last {len(window)} batch(es)")
    if evaluation is not None:
        result.oof_predictions = {CANDIDATE_NAME: evaluation.predictions, **evaluation.baseline_predictions}
    if not window:
        result.skipped_reason = (f"{state.task}: first incremental batch ({state.n_seen} rows): the model had "
                                 "seen nothing before it, so there is no prequential evaluation yet (n/a); "
                                 "the next batch evaluates it")
        return result

    n_rows = sum(r["n_rows"] for r in window)
    result.selection.append(
        f"prequential (test-then-train) evaluation over the last {len(window)} batch(es), {n_rows} rows: each "
        "batch scored by the model as it was before learning from it, against baselines fitted on the rows "
        "seen before it")
    for name in window[-1]["baselines"]:
        result.baselines[name] = _scores(name, [r["baselines"][name] for r in window], {}, 0.0)
    scores = _scores(CANDIDATE_NAME, [r["metrics"] for r in window], params, fit_seconds)
    # the weekly training's own rule, so the two gates never drift apart
    scores.qualifies, words = models.qualifies(kind, scores, result.baselines)
    result.candidates[CANDIDATE_NAME] = scores
    result.selection.append(words + ("" if scores.qualifies else ": does not clearly beat the baseline"))
    if not scores.qualifies:
        result.selection.append("the incremental model does not clearly beat the baseline: nothing to register")
        return result
    result.chosen, result.chosen_params, result.estimator = CANDIDATE_NAME, params, state.pipeline()
    result.fit_seconds = fit_seconds
    result.selection.append(f"chosen: {CANDIDATE_NAME} version {state.version} (a candidate: promotion is the "
                            "rollout's decision)")
    return result

"""Serving the three task models: which model answers a task, loading it from the registry and the object
store, the rules' answer when it cannot, and a log of every call in ``model_predictions``.

Which model. ``serving_model(conn, task)`` is the task's ``active`` row of ``model_registry`` (at most one:
a unique index), or None; ``model_by_id`` any row, whatever its status (an explicit id is how a candidate or
a retired model is asked, e.g. to compare it). Rollout percentages are not applied here.

Loading (``RegistryLoader``, the ``OnnxModelCache`` loader). The model ``(task, version)`` is read from the
object store at ``models/<task>/<version>/model.onnx`` (``model_object_key``, where ``registry.record_model``
writes it), the object the row's ``uri`` names. The uri is compared by that key only: it also records the
store's location at registration (a local root's absolute path, a bucket), which may have moved since; the
sha256 check is what proves the bytes are the registered ones. The bytes must hash to the row's ``sha256``; a
mismatch, a row without sha256 (bytes that cannot be verified are not served), a uri naming another object, a
missing object or one over ``MAX_MODEL_FILE_BYTES`` is a load failure with that reason (``ModelIntegrityError``,
or the object store's error). A task or version absent from the registry is a missing model.

Rule-based fallbacks (``RULE_FALLBACKS``), on the validated model input rows, one answer per row:

- ``master_reg`` (``master_fallback``): ``feature_rules.master_params_from_mix`` on the row, which is the
  mix's feature vector: the master rule in feature space, the same function that labels the synthetic rows;
  float32 ``[n, 4]`` like the model's output.
- ``align_conf`` (``align_fallback``): ``labels.align_conf_label``, the rule that labels the training rows,
  on what it reads from an alignment, recovered from the row (``dataset.align_input``'s layout): the
  confidence, the method (the one-hot's largest column) and the tempo ratio (None when its ``_missing``
  flag is set, as in the alignment). float32 rounding is undone first (``_stored_value``): the row holds
  0.7 as 0.699999988, which would fall below the rule's 0.7 threshold.
- ``preset_cls`` (``preset_fallback``): the plan's default preset (``catalog().choose(plan, None)``, what the
  mix stage uses when the upload names no preset), the plan from the row's plan one-hot (largest column; the
  free trial is encoded as lite and has lite's presets and default). Not ``labels.preset_label``: it needs
  the instrumental's loudness against the vocal's (its rap_tight and vocal_lift_lite branches), and the row
  has the vocal and the processed mix only. A partial preset_label would be silently wrong exactly there;
  the plan's default is the product's own "no recommendation".

``ServingClient`` holds one ``Predictor`` over an ``OnnxModelCache`` (at most ``max_models`` = 5 models,
``timeout_s`` = 3 s per run) and answers ``predict(task, X)``:

- invalid input (not 2-D float32-castable, no rows, NaN/inf, not ``dataset.INPUT_DIMS[task]`` columns, a job
  id that is not a uuid, an unknown task, a ``model_id`` of another task) raises ``ValueError`` and is not
  recorded: the model was never asked, and counting the caller's bug would charge it to the model's rates;
- otherwise it always returns a ``Prediction``: from the model, or from the task's rule with the reason
  (``fallback_code``: ``missing`` no active model / unknown id / not in the registry; ``load_failed`` the
  registry could not be read, the bytes are wrong or do not load, the model's width is not the task's;
  ``timeout``, ``run_failed``, ``bad_output`` from the ``Predictor``). Only a failing rule raises
  (``ModelUnavailableError``; a bug, not recorded). A fallback's ``model_key`` is ``(task, None)`` when no
  model was resolved;
- ``latency_ms`` is the whole call: resolution (a registry query, cached for ``resolve_ttl_s`` = 5 s per task
  or id, so that a promotion reaches a running client within seconds), validation, run or rule;
- every answered call becomes one ``model_predictions`` row (``PredictionRecord``: model id and version,
  task, job id, rows, latency, source, fallback code, the model problem as ``error``, the call time, and a
  model's answer per row as ``output``, which output drift is measured on). Rows
  are buffered and written in batches by a background thread (every ``flush_interval_s`` = 5 s, sooner once
  ``flush_every`` = 100 are waiting), by ``flush()`` and by ``close()``. A failed write is logged and
  retried at the next interval; beyond ``max_buffered`` (10 000) waiting rows the oldest are dropped and
  counted in ``records_dropped``. Recording never delays or fails a prediction.

Load at start-up with ``warm()``: the 3 s timeout covers the model run, not loading.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

import numpy as np
from sqlalchemy import Connection, Engine, text

from mixai_pipeline.lib.mix.presets import catalog
from mixai_pipeline.lib.pipeline.labels import align_conf_label
from mixai_pipeline.lib.training.dataset import (
    ALIGN_FEATURE_NAMES,
    ALIGN_METHODS,
    INPUT_DIMS,
    PLANS,
    PRESET_FEATURE_NAMES,
    TASKS,
)
from mixai_pipeline.lib.training.feature_rules import master_params_from_mix
from mixai_pipeline.lib.training.inference import (
    DEFAULT_MAX_MODELS,
    DEFAULT_TIMEOUT_S,
    Fallback,
    FallbackCode,
    ModelKey,
    ModelUnavailableError,
    OnnxModelCache,
    Prediction,
    Predictor,
    validate_input,
)
from mixai_pipeline.lib.training.onnx_export import sha256
from mixai_pipeline.lib.training.registry import MAX_MODEL_FILE_BYTES, model_object_key

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000          # of a recorded model problem (onnxruntime's messages can be long)


class ModelIntegrityError(RuntimeError):
    """The registered model's bytes cannot be trusted: sha256 mismatch, no sha256, a uri naming another object."""


# ------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class RegisteredModel:
    """The ``model_registry`` columns serving needs."""

    id: int
    name: str                # the task
    version: str
    uri: str
    sha256: str | None
    status: str
    rollout_percent: int
    input_dim: int
    output_dim: int

    @property
    def key(self) -> ModelKey:
        return (self.name, self.version)


_MODEL_COLUMNS = "id, name, version, uri, sha256, status, rollout_percent, input_dim, output_dim"


def _one(conn: Connection, where: str, params: dict) -> RegisteredModel | None:
    row = conn.execute(text(f"SELECT {_MODEL_COLUMNS} FROM model_registry WHERE {where}"), params).mappings().first()
    return None if row is None else RegisteredModel(**row)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")


def serving_model(conn: Connection, task: str) -> RegisteredModel | None:
    """The task's ``active`` model, or None."""
    _check_task(task)
    return _one(conn, "name = :task AND status = 'active'", {"task": task})


def model_by_id(conn: Connection, model_id: int) -> RegisteredModel | None:
    return _one(conn, "id = :id", {"id": int(model_id)})


def model_by_version(conn: Connection, task: str, version: str) -> RegisteredModel | None:
    return _one(conn, "name = :task AND version = :version", {"task": task, "version": version})


# ------------------------------------------------------------------------------------------- loading

def load_model_bytes(store, model: RegisteredModel) -> bytes:
    """The registered model's ONNX bytes, verified against its sha256 (module docstring)."""
    key = model_object_key(model.name, model.version)
    if not unquote(model.uri).endswith("/" + key):
        raise ModelIntegrityError(f"the registry's uri {model.uri!r} does not name {key!r}")
    if not model.sha256:
        raise ModelIntegrityError(f"{key}: the registry has no sha256 for it; unverifiable bytes are not served")
    data = store.get_bytes(key, max_bytes=MAX_MODEL_FILE_BYTES)
    actual = sha256(data)
    if actual != model.sha256:
        raise ModelIntegrityError(f"sha256 mismatch: {key} hashes to {actual}, the registry has {model.sha256}")
    return data


class RegistryLoader:
    """``OnnxModelCache`` loader: ``(task, version)`` -> the registered, verified ONNX bytes; None when the
    registry has no such model (a missing model), an exception (a load failure) when it cannot be served."""

    def __init__(self, engine: Engine, store):
        self.engine = engine
        self.store = store

    def __call__(self, key: ModelKey) -> bytes | None:
        task, version = key
        with self.engine.connect() as conn:
            model = model_by_version(conn, task, version)
        return None if model is None else load_model_bytes(self.store, model)


# ----------------------------------------------------------------------------------------- fallbacks

_ALIGN_COLUMN = {name: i for i, name in enumerate(ALIGN_FEATURE_NAMES)}
_ALIGN_METHOD_COLUMNS = [_ALIGN_COLUMN[f"method_{m}"] for m in ALIGN_METHODS]
_PLAN_COLUMNS = [PRESET_FEATURE_NAMES.index(f"plan_{p}") for p in PLANS]


def _stored_value(value: np.floating) -> float:
    """The shortest decimal that the float32 stands for: 0.7 again, not 0.699999988, so that a rule's
    threshold sees the value that went into the row."""
    return float(np.format_float_positional(np.float32(value)))


def master_fallback(rows: np.ndarray) -> np.ndarray:
    """Master parameters by the feature-space master rule, float32 ``[n, 4]``."""
    return master_params_from_mix(rows).astype(np.float32)


def align_fallback(rows: np.ndarray) -> np.ndarray:
    """``align_conf_label`` of the alignment each row describes, ``[n]`` labels."""
    methods = np.asarray(ALIGN_METHODS)[rows[:, _ALIGN_METHOD_COLUMNS].argmax(axis=1)]
    labels = []
    for row, method in zip(rows, methods, strict=True):
        ratio_missing = row[_ALIGN_COLUMN["tempo_ratio_missing"]] > 0.5
        labels.append(align_conf_label({
            "confidence": _stored_value(row[_ALIGN_COLUMN["confidence"]]),
            "method": str(method),
            "tempo_ratio": None if ratio_missing else _stored_value(row[_ALIGN_COLUMN["tempo_ratio"]]),
        }))
    return np.asarray(labels, dtype=object)


def preset_fallback(rows: np.ndarray) -> np.ndarray:
    """The default preset of each row's plan, ``[n]`` labels."""
    defaults = np.asarray([catalog().choose(plan, None).id for plan in PLANS], dtype=object)
    return defaults[rows[:, _PLAN_COLUMNS].argmax(axis=1)]


RULE_FALLBACKS: dict[str, Fallback] = {
    "master_reg": master_fallback, "preset_cls": preset_fallback, "align_conf": align_fallback}


# ----------------------------------------------------------------------------------------- recording

@dataclass(frozen=True)
class PredictionRecord:
    """One ``model_predictions`` row."""

    task: str
    model_id: int | None
    model_version: str | None
    job_id: str | None
    n_rows: int
    latency_ms: float
    source: str                   # model | fallback
    fallback_code: str | None
    error: str | None
    created_at: datetime          # when the call was made (rows are written later, in batches)
    output: str | None = None     # the model's answer per row, as JSON (output drift); None for the rules'


_INSERT_PREDICTIONS = text(
    """INSERT INTO model_predictions (task, model_id, model_version, job_id, n_rows, latency_ms, source,
                                      fallback_code, error, created_at, output)
       VALUES (:task, :model_id, :model_version, CAST(:job_id AS uuid), :n_rows, :latency_ms, :source,
               :fallback_code, :error, :created_at, CAST(:output AS jsonb))""")


def record_predictions(conn: Connection, records: Sequence[PredictionRecord]) -> int:
    """Insert the records (one batch, inside the caller's transaction); returns how many."""
    if not records:
        return 0
    conn.execute(_INSERT_PREDICTIONS, [dataclasses.asdict(r) for r in records])
    return len(records)


# ------------------------------------------------------------------------------------------- client

class ServingClient:
    """Predictions for the three tasks from their registered models, with rule fallback and a call log
    (module docstring). Thread-safe; ``close()`` (or ``with``) writes what is still buffered."""

    def __init__(self, engine: Engine, store, *, max_models: int = DEFAULT_MAX_MODELS,
                 timeout_s: float = DEFAULT_TIMEOUT_S, resolve_ttl_s: float = 5.0, flush_every: int = 100,
                 flush_interval_s: float = 5.0, max_buffered: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.store = store
        self.cache = OnnxModelCache(max_models, loader=RegistryLoader(engine, store))
        self.predictor = Predictor(self.cache, RULE_FALLBACKS, timeout_s=timeout_s, n_features=INPUT_DIMS)
        self.resolve_ttl_s = resolve_ttl_s
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.records_dropped = 0
        self._clock = clock
        self._resolved: dict[tuple[str, Any], tuple[RegisteredModel | None, float]] = {}
        self._buffer: list[PredictionRecord] = []
        self._lock = threading.Lock()          # the buffer, the resolutions, the flusher thread
        self._flush_lock = threading.Lock()    # one batch write at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._closed = False

    # --------------------------------------------------------------------------- predict

    def predict(self, task: str, X: Any, *, model_id: int | None = None, job_id: Any = None) -> Prediction:
        """The task's answer for the rows of ``X`` from the active model (or model ``model_id``), else from
        the task's rule; recorded as one call, for ``job_id`` when given."""
        if self._closed:
            raise RuntimeError("the serving client is closed")
        called_at = datetime.now(timezone.utc)
        started = time.perf_counter()
        _check_task(task)
        job = None if job_id is None else _job_uuid(job_id)
        rows = validate_input(X, INPUT_DIMS[task])

        model: RegisteredModel | None = None
        try:
            model = self._resolve(task, model_id)
        except Exception as exc:  # the registry cannot be read: the rule answers, the reason is recorded
            prediction = self._rule_answer(task, rows, (task, None), "load_failed",
                                           f"{task}: cannot look up the serving model: {type(exc).__name__}: {exc}")
        else:
            if model is None:
                reason = (f"{task}: no active model" if model_id is None
                          else f"{task}: no model with id {model_id} in the registry")
                prediction = self._rule_answer(task, rows, (task, None), "missing", reason)
            elif model.name != task:
                raise ValueError(f"model {model_id} serves {model.name}, not {task}")
            else:
                prediction = self._model_answer(model, rows)
        prediction = dataclasses.replace(prediction, latency_ms=(time.perf_counter() - started) * 1e3)
        self._record(PredictionRecord(
            task=task, model_id=model.id if model else None, model_version=model.version if model else None,
            job_id=job, n_rows=int(rows.shape[0]), latency_ms=prediction.latency_ms, source=prediction.source,
            fallback_code=prediction.fallback_code,
            error=prediction.fallback_reason[:MAX_ERROR_CHARS] if prediction.fallback_reason else None,
            created_at=called_at, output=_output_json(prediction) if prediction.source == "model" else None))
        return prediction

    def _model_answer(self, model: RegisteredModel, rows: np.ndarray) -> Prediction:
        width = INPUT_DIMS[model.name]
        if model.input_dim != width:
            return self._rule_answer(model.name, rows, model.key, "load_failed",
                                     f"{model.name}/{model.version}: registered with {model.input_dim} inputs, "
                                     f"{model.name} rows have {width}")
        try:
            return self.predictor.predict(model.key, rows)
        except ValueError as exc:
            # The rows have the task's width (checked above), so the loaded model's own width differs.
            return self._rule_answer(model.name, rows, model.key, "load_failed", str(exc))

    def _rule_answer(self, task: str, rows: np.ndarray, model_key: tuple, code: FallbackCode,
                     reason: str) -> Prediction:
        try:
            output = np.asarray(RULE_FALLBACKS[task](rows))
        except Exception as exc:
            raise ModelUnavailableError(f"{reason} [{code}]; the rule-based fallback failed too") from exc
        return Prediction(model_key=model_key, source="fallback", output=output, probabilities=None, classes=None,
                          latency_ms=0.0, fallback_code=code, fallback_reason=reason)

    def _resolve(self, task: str, model_id: int | None) -> RegisteredModel | None:
        lookup = ("task", task) if model_id is None else ("id", int(model_id))
        now = self._clock()
        with self._lock:
            cached = self._resolved.get(lookup)
        if cached is not None and now - cached[1] < self.resolve_ttl_s:
            return cached[0]
        with self.engine.connect() as conn:
            model = serving_model(conn, task) if model_id is None else model_by_id(conn, model_id)
        with self._lock:
            self._resolved[lookup] = (model, now)
        return model

    def warm(self, tasks: Iterable[str] = TASKS) -> dict[str, str]:
        """Load the active model of each task into the cache; per task ``loaded <version>`` or why not."""
        outcome = {}
        for task in tasks:
            try:
                model = self._resolve(task, None)
                if model is None:
                    outcome[task] = "no active model"
                    continue
                self.cache.get(model.key)
                outcome[task] = f"loaded {model.version}"
            except Exception as exc:  # a start-up aid: the first call will fall back and record why
                outcome[task] = f"{type(exc).__name__}: {exc}"
        return outcome

    # ---------------------------------------------------------------------------- record

    def _record(self, record: PredictionRecord) -> None:
        with self._lock:
            self._buffer.append(record)
            if len(self._buffer) >= self.flush_every:
                self._wake.set()
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_periodically, name="model-predictions-flush",
                                                 daemon=True)
                self._flusher.start()

    def _flush_periodically(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.flush() < 0:
                self._stop.wait(self.flush_interval_s)  # the database is unhappy: no retry on every call

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Write the buffered records now; returns how many were written, -1 when the write failed (they are
        then kept for the next flush, up to ``max_buffered``)."""
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return 0
            try:
                with self.engine.begin() as conn:
                    return record_predictions(conn, batch)
            except Exception:
                logger.exception("model_predictions: %d call records could not be written; kept for a retry",
                                 len(batch))
                with self._lock:
                    self._buffer[:0] = batch
                    overflow = len(self._buffer) - self.max_buffered
                    if overflow > 0:
                        del self._buffer[:overflow]
                        self.records_dropped += overflow
                if overflow > 0:
                    logger.error("model_predictions: %d oldest call records dropped (more than %d waiting)",
                                 overflow, self.max_buffered)
                return -1

    def close(self) -> None:
        """Stop the background writer, write what is buffered (logged when that fails) and stop the runs."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=30)
        if self.flush() < 0:
            logger.error("model_predictions: %d call records lost at close", self.pending)
        self.predictor.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _output_json(prediction: Prediction) -> str:
    """The answer per row: a list of numbers (regression) or a label (classification)."""
    output = np.asarray(prediction.output)
    rows = output.tolist() if output.dtype.kind in "fiu" else [str(x) for x in output.reshape(-1)]
    return json.dumps(rows)


def _job_uuid(job_id: Any) -> str:
    try:
        return str(job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id)))
    except ValueError as exc:
        raise ValueError(f"job_id must be a uuid, got {job_id!r}") from exc

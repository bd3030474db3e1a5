"""Serving the ONNX models on CPU: a small LRU cache of onnxruntime sessions and a predictor with fallback.

Seed 000 §11 / seed 001: onnxruntime on CPU, float32 ``[n, n_dim]`` in, a model cache of at most 5 models,
a 3 s timeout per call, a rule-based fallback whenever the model cannot answer.

``OnnxModelCache`` holds at most ``max_models`` (5) loaded models, least recently used evicted first, keyed
by ``(name, version)``. Models come from bytes or a path (``load``) or, on a miss, from an injected
``loader(key) -> bytes | path | None`` (e.g. reading ``model_registry.uri`` from the object store). Sessions:
CPU provider, ``intra_op_num_threads=1``, ``inter_op_num_threads=1``, sequential execution, full graph
optimisation; one warm-up run on a zero row right after loading (first-call allocations off the hot path, and
a model that cannot run at all fails at load time). A failed load is remembered for ``retry_failed_after_s``
(30 s) so that a corrupt model is not parsed again on every call.

Only the layouts ``onnx_export.to_onnx`` produces are served: one float32 input ``[None, n_dim]``; a regressor
with one float32 output ``[None, k]``, or a classifier with ``label [None]`` + ``probabilities [None, c]``
(``zipmap=False``). Anything else is a load failure with the reason.

``Predictor.predict(model_key, X)``: who is to blame decides what happens.

- Invalid input is the caller's bug: ``ValueError`` naming the problem (not 2-D, not float32-castable, no
  rows, NaN/inf, wrong number of columns for the model). Never a silent fallback: a fallback would hide the bug.
- A model problem answers from the fallback, and the ``Prediction`` says why (``fallback_code``):
  ``missing`` (not cached and the loader has nothing), ``load_failed`` (corrupt bytes, unsupported layout,
  loader error), ``timeout`` (the run did not finish within ``timeout_s``: its ``RunOptions.terminate`` is set
  so that onnxruntime abandons it), ``run_failed`` (onnxruntime raised), ``bad_output`` (wrong shape or
  non-finite values).
- The fallback is a callable per model name (``fallbacks={"master_reg": fn}``) or per call (``fallback=``),
  called with the validated float32 rows and returning one output per row: regression ``[n, k]``,
  classification labels ``[n]``. Without a fallback, a model problem raises ``ModelUnavailableError`` with the
  reason; an exception in the fallback propagates (chained to a ``ModelUnavailableError``).

The timeout covers the model run (queue wait in the worker pool + ``session.run``), not loading: warm the
cache at start-up (``cache.get(key)``). Runs happen in a pool of ``max_workers`` (2: seed 000's 1-2
concurrent calls) threads; the hand-off costs ~25 us per call. A run that ignores ``terminate`` keeps its
worker busy; further calls then wait in the queue and time out into the fallback.

``latency_ms`` is the wall time of the whole ``predict`` call (validation, run, fallback).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

ModelKey = tuple[str, str]
ModelSource = bytes | str | os.PathLike
Loader = Callable[[ModelKey], "ModelSource | None"]
Fallback = Callable[[np.ndarray], Any]

DEFAULT_MAX_MODELS = 5
DEFAULT_TIMEOUT_S = 3.0
DEFAULT_RETRY_FAILED_AFTER_S = 30.0

REGRESSION = "regression"
CLASSIFICATION = "classification"


class ModelNotFoundError(LookupError):
    """Neither cached nor available from the loader."""


class ModelLoadError(RuntimeError):
    """The model exists but cannot be served (corrupt bytes, unsupported layout, loader failure)."""


class ModelUnavailableError(RuntimeError):
    """The model could not answer and no fallback is configured for it."""


def new_session(model: ModelSource) -> Any:
    """An onnxruntime CPU session as served: one intra-op and one inter-op thread, sequential execution."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the reasons reach the caller through exceptions
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------------- cache

@dataclass(frozen=True)
class LoadedModel:
    """A servable model. ``session`` needs only ``run(output_names, feeds, run_options)``."""

    key: ModelKey
    session: Any
    input_name: str
    input_dim: int
    kind: str                            # regression | classification
    output_names: tuple[str, ...]
    output_dim: int | None               # regression: outputs per row; classification: number of classes
    classes: tuple[Any, ...] | None      # from the model's ``mixai.classes`` metadata, when present


def _describe(session: Any, key: ModelKey) -> LoadedModel:
    """Check the session's layout against what we serve and describe it; ``ModelLoadError`` otherwise."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"{_fmt(key)}: expected one input, the model has {len(inputs)}")
    spec = inputs[0]
    if spec.type != "tensor(float)" or len(spec.shape) != 2 or not isinstance(spec.shape[1], int):
        raise ModelLoadError(f"{_fmt(key)}: input {spec.name!r} is {spec.type} {spec.shape}, "
                             "expected tensor(float) [None, n_dim]")
    outs = session.get_outputs()
    types = [(o.type, len(o.shape) if o.shape is not None else None) for o in outs]
    if types == [("tensor(float)", 2)]:
        kind, output_dim = REGRESSION, outs[0].shape[1]
    elif (len(outs) == 2 and types[0] in (("tensor(string)", 1), ("tensor(int64)", 1))
          and types[1] == ("tensor(float)", 2)):
        kind, output_dim = CLASSIFICATION, outs[1].shape[1]
    else:
        described = ", ".join(f"{o.name}: {o.type} {o.shape}" for o in outs)
        raise ModelLoadError(f"{_fmt(key)}: unsupported outputs ({described}); expected one float tensor "
                             "[None, k] (regressor) or label + probabilities (classifier exported with zipmap=False)")
    classes = None
    meta = session.get_modelmeta().custom_metadata_map.get("mixai.classes")
    if meta:
        try:
            classes = tuple(json.loads(meta))
        except ValueError:
            classes = None
    return LoadedModel(key=key, session=session, input_name=spec.name, input_dim=spec.shape[1], kind=kind,
                       output_names=tuple(o.name for o in outs),
                       output_dim=output_dim if isinstance(output_dim, int) else None, classes=classes)


def _fmt(key: ModelKey) -> str:
    return "/".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


class OnnxModelCache:
    """At most ``max_models`` loaded models, LRU by ``(name, version)``; thread-safe."""

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS, *, loader: Loader | None = None,
                 retry_failed_after_s: float = DEFAULT_RETRY_FAILED_AFTER_S,
                 clock: Callable[[], float] = time.monotonic):
        if max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {max_models}")
        self.max_models = max_models
        self._loader = loader
        self._retry_after = retry_failed_after_s
        self._clock = clock
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        self._failures: dict[ModelKey, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def load(self, key: ModelKey, source: ModelSource) -> LoadedModel:
        """Load ``source`` (ONNX bytes or a path) as ``key``, replacing any cached version, and make it the
        most recently used. ``ModelLoadError`` (also remembered for the retry period) when it cannot serve."""
        try:
            session = new_session(source)
            model = _describe(session, key)
            zero = np.zeros((1, model.input_dim), dtype=np.float32)
            session.run(None, {model.input_name: zero})
        except ModelLoadError as exc:
            self._remember_failure(key, str(exc))
            raise
        except Exception as exc:  # onnxruntime: InvalidProtobuf, Fail, NoSuchFile, InvalidGraph ...
            where = f"{os.fspath(source)!r}" if not isinstance(source, bytes) else f"{len(source)} bytes"
            reason = f"{_fmt(key)}: cannot load ONNX model from {where}: {type(exc).__name__}: {exc}"
            self._remember_failure(key, reason)
            raise ModelLoadError(reason) from exc
        return self.put(model)

    def put(self, model: LoadedModel) -> LoadedModel:
        """Insert an already loaded model (most recently used), evicting the least recently used ones."""
        with self._lock:
            self._failures.pop(model.key, None)
            self._models[model.key] = model
            self._models.move_to_end(model.key)
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
        return model

    def get(self, key: ModelKey) -> LoadedModel:
        """The cached model (now most recently used), or the loader's. ``ModelNotFoundError`` when neither has
        it; ``ModelLoadError`` when it cannot be loaded (or failed less than ``retry_failed_after_s`` ago)."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            failure = self._failures.get(key)
        if failure is not None:
            reason, at = failure
            age = self._clock() - at
            if age < self._retry_after:
                raise ModelLoadError(f"{reason} (failed {age:.0f} s ago; retried after {self._retry_after:g} s)")
        if self._loader is None:
            raise ModelNotFoundError(f"{_fmt(key)}: not in the model cache and no loader configured")
        try:
            source = self._loader(key)
        except Exception as exc:
            reason = f"{_fmt(key)}: loader failed: {type(exc).__name__}: {exc}"
            self._remember_failure(key, reason)
            raise ModelLoadError(reason) from exc
        if source is None:
            raise ModelNotFoundError(f"{_fmt(key)}: the loader has no such model")
        return self.load(key, source)

    def peek(self, key: ModelKey) -> LoadedModel | None:
        """The cached model without touching the LRU order or loading."""
        with self._lock:
            return self._models.get(key)

    def evict(self, key: ModelKey) -> bool:
        with self._lock:
            self._failures.pop(key, None)
            return self._models.pop(key, None) is not None

    def last_failure(self, key: ModelKey) -> str | None:
        """Why the last load of ``key`` failed (kept until a successful load or ``evict``)."""
        with self._lock:
            failure = self._failures.get(key)
        return None if failure is None else failure[0]

    def keys(self) -> list[ModelKey]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._models)

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._models

    def _remember_failure(self, key: ModelKey, reason: str) -> None:
        with self._lock:
            self._failures[key] = (reason, self._clock())


# ------------------------------------------------------------------------------------------- predictor

FallbackCode = Literal["missing", "load_failed", "timeout", "run_failed", "bad_output"]


@dataclass(frozen=True)
class Prediction:
    """One ``predict`` call. From the model, ``output`` is float32 ``[n, k]`` (regression) or labels ``[n]``
    (classification) with ``probabilities`` ``[n, n_classes]``; from a fallback, ``output`` is what the fallback
    returned (as an array, one entry per row) and ``probabilities`` is None."""

    model_key: ModelKey
    source: Literal["model", "fallback"]
    output: np.ndarray
    probabilities: np.ndarray | None     # classifier models only, columns in ``classes`` order
    classes: tuple[Any, ...] | None
    latency_ms: float
    fallback_code: FallbackCode | None = None
    fallback_reason: str | None = None


def validate_input(X: Any, n_features: int | None = None) -> np.ndarray:
    """``X`` as a C-contiguous float32 ``[n, n_features]`` array, or ``ValueError`` naming the problem."""
    try:
        with np.errstate(over="ignore"):  # too large for float32 -> inf, reported below
            arr = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"X must be numeric (float32-castable): {exc}") from exc
    if arr.ndim != 2:
        hint = " (for one row pass X.reshape(1, -1))" if arr.ndim == 1 else ""
        raise ValueError(f"X must be 2-D [n_rows, n_features], got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError("X has no rows")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"X has {arr.shape[1]} features per row, the model expects {n_features}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        row, col = (int(v) for v in bad[0])
        raise ValueError(f"X has {len(bad)} non-finite values (NaN/inf, or beyond float32 range), "
                         f"first at row {row}, column {col}")
    return np.ascontiguousarray(arr)


class Predictor:
    """Predictions from cached ONNX models, with per-call timeout and rule-based fallback (module docstring).

    ``n_features``: expected row width per model name, checked even when the model is missing (otherwise the
    width is checked against the loaded model only)."""

    def __init__(self, cache: OnnxModelCache, fallbacks: Mapping[str, Fallback] | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_workers: int = 2,
                 n_features: Mapping[str, int] | None = None):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.cache = cache
        self.fallbacks = dict(fallbacks or {})
        self.timeout_s = timeout_s
        self.n_features = dict(n_features or {})
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="onnx-predict")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(self, model_key: ModelKey, X: Any, *, fallback: Fallback | None = None,
                timeout_s: float | None = None) -> Prediction:
        start = time.perf_counter()
        if not (isinstance(model_key, tuple) and len(model_key) == 2):
            raise ValueError(f"model_key must be a (name, version) tuple, got {model_key!r}")
        rows = validate_input(X, self.n_features.get(model_key[0]))

        def from_fallback(code: FallbackCode, reason: str, classes: tuple | None = None) -> Prediction:
            output = self._run_fallback(model_key, rows, fallback, code, reason)
            return Prediction(model_key=model_key, source="fallback", output=output, probabilities=None,
                              classes=classes, latency_ms=(time.perf_counter() - start) * 1e3,
                              fallback_code=code, fallback_reason=reason)

        try:
            model = self.cache.get(model_key)
        except ModelNotFoundError as exc:
            return from_fallback("missing", str(exc))
        except ModelLoadError as exc:
            return from_fallback("load_failed", str(exc))
        if rows.shape[1] != model.input_dim:
            raise ValueError(f"X has {rows.shape[1]} features per row, model {_fmt(model_key)} expects "
                             f"{model.input_dim}")

        import onnxruntime as ort

        run_options = ort.RunOptions()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        future = self._pool.submit(model.session.run, None, {model.input_name: rows}, run_options)
        try:
            outputs = future.result(timeout=timeout)
        except FutureTimeout:
            run_options.terminate = True
            future.cancel()
            return from_fallback("timeout", f"{_fmt(model_key)}: no answer within {timeout:g} s", model.classes)
        except Exception as exc:
            return from_fallback("run_failed", f"{_fmt(model_key)}: onnxruntime failed: "
                                 f"{type(exc).__name__}: {exc}", model.classes)

        problem = _output_problem(model, outputs, rows.shape[0])
        if problem is not None:
            return from_fallback("bad_output", f"{_fmt(model_key)}: {problem}", model.classes)
        probabilities = outputs[1] if model.kind == CLASSIFICATION else None
        return Prediction(model_key=model_key, source="model", output=outputs[0], probabilities=probabilities,
                          classes=model.classes, latency_ms=(time.perf_counter() - start) * 1e3)

    def _run_fallback(self, model_key: ModelKey, rows: np.ndarray, fallback: Fallback | None,
                      code: FallbackCode, reason: str) -> np.ndarray:
        fn = fallback if fallback is not None else self.fallbacks.get(model_key[0])
        if fn is None:
            raise ModelUnavailableError(f"{reason} [{code}]; no fallback configured for {model_key[0]!r}")
        try:
            output = np.asarray(fn(rows))
        except Exception as exc:
            raise ModelUnavailableError(f"{reason} [{code}]; the fallback failed too") from exc
        if output.ndim == 0 or output.shape[0] != rows.shape[0]:
            raise ModelUnavailableError(f"{reason} [{code}]; the fallback returned shape {output.shape} "
                                        f"for {rows.shape[0]} rows")
        return output


def _output_problem(model: LoadedModel, outputs: list, n: int) -> str | None:
    """Why the outputs cannot be served, or None."""
    if model.kind == REGRESSION:
        values = outputs[0] if outputs else None
        if not isinstance(values, np.ndarray) or values.ndim != 2 or values.shape[0] != n:
            return f"output shape {getattr(values, 'shape', None)}, expected ({n}, k)"
        if not np.isfinite(values).all():
            return "non-finite values in the output"
        return None
    if len(outputs) != 2:
        return f"{len(outputs)} outputs, expected label + probabilities"
    labels, probs = outputs
    if not isinstance(labels, np.ndarray) or labels.shape != (n,):
        return f"label shape {getattr(labels, 'shape', None)}, expected ({n},)"
    if not isinstance(probs, np.ndarray) or probs.ndim != 2 or probs.shape[0] != n:
        return f"probabilities shape {getattr(probs, 'shape', None)}, expected ({n}, n_classes)"
    if not np.isfinite(probs).all():
        return "non-finite probabilities"
    return None


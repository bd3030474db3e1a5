"""ONNX export of the trained pipelines, their signature, and the parity gate that blocks registration.

Export (``to_onnx``): skl2onnx's ``convert_sklearn`` on the whole scikit-learn estimator (usually a
``Pipeline``: StandardScaler -> MultiOutputRegressor(Ridge) | LogisticRegression | LGBMClassifier), with

- one input named ``input``, float32 ``[None, n_features]``;
- LightGBM models converted by onnxmltools' ``convert_lightgbm``, registered with skl2onnx for
  ``LGBMClassifier`` (shape calculator ``calculate_linear_classifier_output_shapes``, options
  ``nocl``/``zipmap``) and ``LGBMRegressor`` (``calculate_linear_regressor_output_shapes``, option ``split``:
  trees per TreeEnsembleRegressor node, summed in double; default None = one node);
- classifiers with ``zipmap=False``: outputs ``label`` (int64 or string ``[None]``) and ``probabilities``
  (float32 ``[None, n_classes]``, columns in ``classes_`` order) instead of a sequence of maps;
  regressors: one output ``variable``, float32 ``[None, n_outputs]``;
- a fixed opset, ``TARGET_OPSET`` = {"": 17, "ai.onnx.ml": 3}, never skl2onnx's "latest tested" (that moves
  with every upgrade). ai.onnx.ml 3 is the newest the LightGBM converter accepts; opset 17 runs on any
  onnxruntime >= 1.13, onnxruntime-node included. The model records the lowest versions it really needs
  (e.g. ai.onnx.ml 1 for a Ridge pipeline);
- metadata properties ``mixai.task``, ``mixai.kind``, ``mixai.n_features``, ``mixai.classes`` (JSON list, for
  classifiers), ``mixai.target_names`` (JSON list, when given).

Determinism: the same fitted model gives the same bytes (also after a pickle round trip), given the same
versions of skl2onnx / onnxmltools / onnx (the producer version is in the model, and converters change). The
only random part of skl2onnx's output, the graph name (a uuid4), is fixed to ``mixai_<task>``.

Parity (``parity``): the ONNX model is run by onnxruntime with the serving session options
(``inference.new_session``) on rows ``X`` (cast to float32, as stored in ``features_store``) and compared with
the estimator's own ``predict`` / ``predict_proba`` on the same float32 rows:

- regression: ``max |onnx - sklearn|`` over every row and output, absolute, in the outputs' own units (dB,
  LUFS: magnitudes below ~30, where float32 resolution is ~2e-6), must be <= ``tolerance`` (1e-4);
- classification: the labels must be identical on every row, and ``max |p_onnx - p_sklearn|`` over the
  probabilities must be <= ``tolerance`` too (the probabilities are served: top-k presets, alignment
  confidence). Estimators without ``predict_proba`` are compared on labels only.

A mismatch never raises: the report says ``passed=False`` with the numbers, the worst row and the reason, and
the caller blocks registration. So does an ONNX model that cannot be loaded or whose signature does not fit
``X``. Bad arguments (``X`` not 2-D, empty, non-finite, or with a column count the estimator was not fitted
on) are the caller's bug: ``ValueError``.

Heavy libraries (skl2onnx, onnxmltools, onnx, onnxruntime, lightgbm) are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mixai_pipeline.lib.training.inference import new_session, validate_input

TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "input"
DEFAULT_TOLERANCE = 1e-4

REGRESSION = "regression"
CLASSIFICATION = "classification"
KINDS = (REGRESSION, CLASSIFICATION)
# The product's three tasks (seed 000 §3); ``task=`` also takes a kind directly.
TASK_KINDS: dict[str, str] = {"master_reg": REGRESSION, "preset_cls": CLASSIFICATION, "align_conf": CLASSIFICATION}

META_PREFIX = "mixai."

_ELEM_TYPES = {1: "float", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 8: "string", 9: "bool",
               10: "float16", 11: "double"}

_registered = False
_register_lock = threading.Lock()


class OnnxExportError(RuntimeError):
    """skl2onnx could not convert the estimator (unsupported step, missing converter)."""


def task_kind(task: str) -> str:
    """``regression`` or ``classification`` for a task name (``master_reg`` ...) or a kind."""
    if task in KINDS:
        return task
    if task in TASK_KINDS:
        return TASK_KINDS[task]
    raise ValueError(f"unknown task {task!r} (expected one of {', '.join([*TASK_KINDS, *KINDS])})")


def sha256(onnx_bytes: bytes) -> str:
    """Hex SHA-256 of the serialized model (what the registry stores next to the URI)."""
    return hashlib.sha256(onnx_bytes).hexdigest()


# ---------------------------------------------------------------------------------------------- export

def register_lightgbm_converters() -> None:
    """Teach skl2onnx onnxmltools' LightGBM converters (idempotent, thread-safe)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )

        def convert_lightgbm_regressor(scope, operator, container):
            # onnxmltools reads the option from the operator (see skl2onnx's LightGBM regressor tutorial).
            operator.split = scope.get_options(operator.raw_operator).get("split")
            convert_lightgbm(scope, operator, container)

        update_registered_converter(
            LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes, convert_lightgbm,
            options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
        update_registered_converter(
            LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
            convert_lightgbm_regressor, options={"split": None})
        _registered = True


def _final_estimator(estimator: Any) -> Any:
    from sklearn.pipeline import Pipeline

    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


def _check_estimator(estimator: Any, n_features: int, kind: str) -> None:
    from sklearn.base import is_classifier, is_regressor
    from sklearn.utils.validation import check_is_fitted

    if isinstance(n_features, bool) or not isinstance(n_features, int | np.integer) or n_features < 1:
        raise ValueError(f"n_features must be a positive int, got {n_features!r}")
    if kind == CLASSIFICATION and not is_classifier(estimator):
        raise ValueError(f"task is a classification but {type(estimator).__name__} is not a classifier")
    if kind == REGRESSION and not is_regressor(estimator):
        raise ValueError(f"task is a regression but {type(estimator).__name__} is not a regressor")
    check_is_fitted(estimator)
    fitted = getattr(estimator, "n_features_in_", None)
    if fitted is not None and int(fitted) != int(n_features):
        raise ValueError(f"n_features={n_features} but the estimator was fitted on {fitted} features")


def to_onnx(estimator: Any, n_features: int, *, task: str, target_names: Sequence[str] | None = None) -> bytes:
    """The fitted ``estimator`` as serialized ONNX (see the module docstring for the conventions).

    ``task``: ``master_reg`` | ``preset_cls`` | ``align_conf`` | ``regression`` | ``classification``.
    ``target_names``: names of the regression outputs (stored as metadata), e.g. the four master values.
    Raises ``ValueError`` for a mismatch between arguments and estimator, ``OnnxExportError`` when the
    conversion itself fails."""
    kind = task_kind(task)
    _check_estimator(estimator, n_features, kind)
    register_lightgbm_converters()
    from onnx import helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = None
    classes: list[Any] | None = None
    if kind == CLASSIFICATION:
        options = {id(_final_estimator(estimator)): {"zipmap": False}}
        classes = [c.item() if isinstance(c, np.generic) else c for c in estimator.classes_]
    try:
        model = convert_sklearn(
            estimator, name=f"mixai_{task}", initial_types=[(INPUT_NAME, FloatTensorType([None, int(n_features)]))],
            target_opset=dict(TARGET_OPSET), options=options)
    except Exception as exc:  # skl2onnx raises a zoo of types (MissingShapeCalculator, RuntimeError ...)
        raise OnnxExportError(f"cannot convert {type(estimator).__name__} to ONNX: {type(exc).__name__}: {exc}") \
            from exc

    # skl2onnx may list a domain twice (e.g. "" for the Normalizer after a LinearClassifier): keep one entry.
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, v) for domain, v in sorted(versions.items()))

    meta = {"task": task, "kind": kind, "n_features": str(int(n_features))}
    if classes is not None:
        meta["classes"] = json.dumps(classes)
    if target_names is not None:
        meta["target_names"] = json.dumps([str(t) for t in target_names])
    helper.set_model_props(model, {META_PREFIX + k: v for k, v in sorted(meta.items())})
    return model.SerializeToString()


# ------------------------------------------------------------------------------------------- signature

@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: str                      # "float", "int64", "string" ...
    shape: tuple[int | None, ...]       # None for a dynamic dimension (the batch)


@dataclass(frozen=True)
class ModelSignature:
    input_name: str
    input_dim: int | None               # features per row (the registry's input_dim)
    outputs: tuple[TensorSpec, ...]
    kind: str | None                    # regression | classification | None (not a layout we serve)
    output_dim: int | None              # regression: outputs per row; classification: number of classes
    opset: dict[str, int]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> list[Any] | None:
        raw = self.metadata.get(META_PREFIX + "classes")
        return None if raw is None else json.loads(raw)


def _tensor_spec(value_info: Any) -> TensorSpec:
    tensor = value_info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(value_info.name, _ELEM_TYPES.get(tensor.elem_type, str(tensor.elem_type)), dims)


def _kind_of(outputs: Sequence[TensorSpec]) -> str | None:
    if len(outputs) == 1 and outputs[0].elem_type == "float" and len(outputs[0].shape) == 2:
        return REGRESSION
    if (len(outputs) == 2 and outputs[0].elem_type in ("int64", "string") and len(outputs[0].shape) == 1
            and outputs[1].elem_type == "float" and len(outputs[1].shape) == 2):
        return CLASSIFICATION
    return None


def model_signature(onnx_bytes: bytes) -> ModelSignature:
    """Input name/width, outputs, kind and output width of a serialized model (for ``model_registry``).
    Raises ``ValueError`` when the bytes are not an ONNX model or it has not exactly one input."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except (DecodeError, ValueError, TypeError) as exc:
        raise ValueError(f"not an ONNX model: {type(exc).__name__}: {exc}") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"expected exactly one input, the model has {len(inputs)}")
    spec_in = _tensor_spec(inputs[0])
    input_dim = spec_in.shape[1] if len(spec_in.shape) == 2 else None
    outputs = tuple(_tensor_spec(o) for o in model.graph.output)
    kind = _kind_of(outputs)
    output_dim = None
    if kind == REGRESSION:
        output_dim = outputs[0].shape[1]
    elif kind == CLASSIFICATION:
        output_dim = outputs[1].shape[1]
    metadata = {p.key: p.value for p in model.metadata_props}
    return ModelSignature(input_name=spec_in.name, input_dim=input_dim, outputs=outputs, kind=kind,
                          output_dim=output_dim, opset={o.domain: o.version for o in model.opset_import},
                          metadata=metadata)


# ---------------------------------------------------------------------------------------------- parity

@dataclass(frozen=True)
class ParityReport:
    """Outcome of ``parity``. For classification ``max_abs_diff`` is the probability difference."""

    passed: bool
    reason: str
    kind: str
    n_rows: int
    tolerance: float
    max_abs_diff: float | None = None           # regression: outputs; classification: probabilities
    n_label_mismatches: int | None = None       # classification only
    worst_row: int | None = None                # index into X of the worst row
    expected: dict[str, Any] | None = None      # sklearn on the worst row: {"values": [...]} or label/probabilities
    actual: dict[str, Any] | None = None        # onnxruntime on the worst row

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (for asset-check metadata and the registry's metrics)."""
        return asdict(self)


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.ravel(values)]


def _label(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def parity(estimator: Any, onnx_bytes: bytes, X: Any, *, task: str,
           tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """Compare onnxruntime on ``onnx_bytes`` with ``estimator`` on rows ``X`` (module docstring: rules).
    Never raises on a mismatch or an unloadable model: returns ``passed=False`` with the reason."""
    kind = task_kind(task)
    rows = validate_input(X)  # the width is not checked here: a mismatch is a failed report below
    fitted = getattr(estimator, "n_features_in_", None)
    if fitted is not None and int(fitted) != rows.shape[1]:
        raise ValueError(f"X has {rows.shape[1]} columns but the estimator was fitted on {fitted} features")
    n = rows.shape[0]

    def failed(reason: str, **extra: Any) -> ParityReport:
        return ParityReport(passed=False, reason=reason, kind=kind, n_rows=n, tolerance=tolerance, **extra)

    try:
        session = new_session(onnx_bytes)
    except Exception as exc:  # corrupt bytes, unsupported operator ...: a model problem, reported
        return failed(f"onnxruntime cannot load the model: {type(exc).__name__}: {exc}")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        return failed(f"the model has {len(inputs)} inputs, expected 1")
    shape = inputs[0].shape
    if len(shape) != 2 or shape[1] != rows.shape[1]:
        return failed(f"model input {inputs[0].name!r} has shape {shape}, X has {rows.shape[1]} columns")
    try:
        outputs = session.run(None, {inputs[0].name: rows})
    except Exception as exc:
        return failed(f"onnxruntime failed on X: {type(exc).__name__}: {exc}")

    if kind == REGRESSION:
        return _regression_parity(estimator, rows, outputs, tolerance, failed)
    return _classification_parity(estimator, rows, outputs, tolerance, failed)


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    diff[np.isnan(diff)] = np.inf  # a NaN on either side is a mismatch, never a silent pass
    return diff


def _regression_parity(estimator, rows, outputs, tolerance, failed) -> ParityReport:
    n = rows.shape[0]
    expected = np.asarray(estimator.predict(rows), dtype=np.float64).reshape(n, -1)
    if len(outputs) != 1:
        return failed(f"the model has {len(outputs)} outputs, a regressor has 1")
    actual = np.asarray(outputs[0])
    if actual.shape != expected.shape:
        return failed(f"ONNX output shape {actual.shape} != sklearn output shape {expected.shape}")
    diff = _abs_diff(actual, expected)
    row, col = np.unravel_index(int(np.argmax(diff)), diff.shape)
    worst = float(diff[row, col])
    common = dict(max_abs_diff=worst, worst_row=int(row), expected={"values": _floats(expected[row])},
                  actual={"values": _floats(actual[row])})
    if worst <= tolerance:
        reason = f"max |onnx - sklearn| = {worst:.3g} <= {tolerance:g} over {n} rows x {diff.shape[1]} outputs"
        return ParityReport(passed=True, reason=reason, kind=REGRESSION, n_rows=n, tolerance=tolerance, **common)
    reason = (f"max |onnx - sklearn| = {worst:.3g} > {tolerance:g} at row {row}, output {col} "
              f"(sklearn {expected[row, col]:.8g}, onnx {actual[row, col]:.8g})")
    return failed(reason, **common)


def _classification_parity(estimator, rows, outputs, tolerance, failed) -> ParityReport:
    n = rows.shape[0]
    if len(outputs) != 2:
        return failed(f"the model has {len(outputs)} outputs, expected label + probabilities (zipmap=False)")
    expected_labels = np.asarray(estimator.predict(rows))
    actual_labels = np.asarray(outputs[0])
    if actual_labels.shape != (n,):
        return failed(f"ONNX label output has shape {actual_labels.shape}, expected ({n},)")
    mismatch = expected_labels != actual_labels
    n_mismatch = int(mismatch.sum())

    probs_diff = None
    expected_p = actual_p = None
    if hasattr(estimator, "predict_proba"):
        expected_p = np.asarray(estimator.predict_proba(rows), dtype=np.float64)
        actual_p = np.asarray(outputs[1])
        if actual_p.shape != expected_p.shape:
            return failed(f"ONNX probabilities shape {actual_p.shape} != sklearn {expected_p.shape}",
                          n_label_mismatches=n_mismatch)
        probs_diff = _abs_diff(actual_p, expected_p).max(axis=1)

    # The worst row: among label mismatches if any, the one whose probabilities differ most.
    candidates = np.flatnonzero(mismatch) if n_mismatch else np.arange(n)
    row = int(candidates[np.argmax(probs_diff[candidates])]) if probs_diff is not None else int(candidates[0])
    max_p = None if probs_diff is None else float(probs_diff.max())

    def side(labels, probs):
        out: dict[str, Any] = {"label": _label(labels[row])}
        if probs is not None:
            out["probabilities"] = _floats(probs[row])
        return out

    common = dict(max_abs_diff=max_p, n_label_mismatches=n_mismatch, worst_row=row,
                  expected=side(expected_labels, expected_p), actual=side(actual_labels, actual_p))
    p_text = "" if max_p is None else f", max |p_onnx - p_sklearn| = {max_p:.3g}"
    if n_mismatch:
        return failed(f"{n_mismatch} of {n} labels differ (worst at row {row}: sklearn "
                      f"{_label(expected_labels[row])!r}, onnx {_label(actual_labels[row])!r}){p_text}", **common)
    if max_p is not None and max_p > tolerance:
        return failed(f"labels identical but max |p_onnx - p_sklearn| = {max_p:.3g} > {tolerance:g} at row {row}",
                      **common)
    reason = f"labels identical on {n} rows{p_text}" + ("" if max_p is None else f" <= {tolerance:g}")
    return ParityReport(passed=True, reason=reason, kind=CLASSIFICATION, n_rows=n, tolerance=tolerance, **common)

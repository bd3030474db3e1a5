"""Stage 2 axis scores and the weighted total (reference/loop_metrics.md, "Axis scores").

Each axis is the mean of its defined terms (NaN metrics leave their term out; 0.5 when none is defined),
clipped to [0, 1] and shown ×100. The total is the weighted mean of the axes; weights and the pass
threshold are configuration, recorded with every score: the default is the seed document's (5 equal axes,
pass ≥ 70), ``PRODUCT_CONFIG`` the product's (timing 2, velocity 2, groove 1, cohesion 1, structure 1.2,
pass ≥ 50). One vectorised implementation serves a single row (``score``, ~0.1 ms) and a frame
(``score_frame``, ~1 µs a row: use it in bulk).

Groove harmony reads the corrected ``swing_ratio`` (metrics.py), not ``swing_ratio_product``; the timing
terms read ``microtiming_std``/``microtiming_rms`` in ticks against ``base_step``, as the product did.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd

AXES = ("timing", "velocity", "groove_harmony", "drum_cohesion", "structure")
RHYTHM_TARGET = np.array([0.38, 0.32, 0.18, 0.12])  # eighth, sixteenth, triplet, quarter
UNDEFINED_AXIS = 0.5


@dataclass(frozen=True)
class ScoreConfig:
    """Axis weights (every axis named, ≥ 0, positive sum) and the pass threshold (0–100, inclusive)."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(AXES, 1.0))
    pass_threshold: float = 70.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(AXES))
        if unknown:
            raise ValueError(f"unknown score axes {unknown}; the axes are {list(AXES)}")
        missing = [axis for axis in AXES if axis not in self.weights]
        if missing:
            raise ValueError(f"weights must name every axis; missing {missing}")
        weights = {axis: float(self.weights[axis]) for axis in AXES}
        bad = {axis: w for axis, w in weights.items() if not math.isfinite(w) or w < 0}
        if bad:
            raise ValueError(f"axis weights must be finite and >= 0, got {bad}")
        if sum(weights.values()) <= 0:
            raise ValueError("axis weights must not all be zero")
        threshold = float(self.pass_threshold)
        if not 0.0 <= threshold <= 100.0:
            raise ValueError(f"pass_threshold must be within 0-100, got {self.pass_threshold}")
        object.__setattr__(self, "weights", MappingProxyType(weights))
        object.__setattr__(self, "pass_threshold", threshold)

    def weight_vector(self) -> np.ndarray:
        return np.array([self.weights[axis] for axis in AXES])

    def weights_json(self) -> str:
        """The weights as canonical JSON, to record with a score."""
        return json.dumps(dict(self.weights), sort_keys=True)


DEFAULT_CONFIG = ScoreConfig()
PRODUCT_CONFIG = ScoreConfig(
    weights={"timing": 2.0, "velocity": 2.0, "groove_harmony": 1.0, "drum_cohesion": 1.0, "structure": 1.2},
    pass_threshold=50.0,
)


def bandpass(value, center: float, width: float):
    """1 at ``center``, falling linearly to 0 at ``center ± width``; NaN (an undefined metric) stays NaN."""
    return np.maximum(0.0, 1.0 - np.abs(np.asarray(value, dtype=np.float64) - center) / width)


def inv(value, limit: float):
    """1 at 0, falling linearly to 0 at ``limit`` (lower is better); NaN stays NaN."""
    return np.maximum(0.0, 1.0 - np.asarray(value, dtype=np.float64) / limit)


def cosine(vectors, target: np.ndarray):
    """Cosine similarity of each row of ``vectors`` (last axis) with ``target``; NaN for a zero vector."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(vectors, axis=-1) * np.linalg.norm(target)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (vectors @ target) / np.where(norm > 0, norm, 1.0), np.nan)


def mean_of_defined(*terms):
    """Mean of the non-NaN terms (elementwise), 0.5 where none is defined, clipped to [0, 1]."""
    stacked = np.stack(np.broadcast_arrays(*(np.asarray(t, dtype=np.float64) for t in terms)))
    defined = ~np.isnan(stacked)
    count = defined.sum(axis=0)
    total = np.where(defined, stacked, 0.0).sum(axis=0)
    return np.clip(np.where(count > 0, total / np.maximum(count, 1), UNDEFINED_AXIS), 0.0, 1.0)


def _axes(metric) -> dict[str, np.ndarray]:
    """Every axis (0–1) from ``metric(name)``, which returns a scalar or a column as a float array."""
    eighth, sixteenth = metric("rhythm_eighth"), metric("rhythm_sixteenth")
    triplet, quarter = metric("rhythm_triplet"), metric("rhythm_quarter")
    with np.errstate(invalid="ignore", divide="ignore"):
        offbeat_ratio = (sixteenth + triplet) / (eighth + sixteenth + triplet + quarter)
    swing = metric("swing_ratio")
    return {
        "timing": mean_of_defined(metric("swing_confidence"), inv(metric("microtiming_std"), 40),
                                  inv(metric("microtiming_rms"), 36), bandpass(metric("fill_density"), 0.32, 0.28)),
        "velocity": mean_of_defined(bandpass(metric("ghost_rate"), 0.25, 0.25),
                                    bandpass(metric("accent_rate"), 0.25, 0.25),
                                    bandpass(metric("velocity_range"), 80, 55),
                                    bandpass(metric("velocity_distinct"), 5.5, 4.5),
                                    bandpass(metric("velocity_std"), 12, 8)),
        "groove_harmony": mean_of_defined(np.maximum(bandpass(swing, 1.0, 0.25), bandpass(swing, 1.5, 0.35)),
                                          cosine(np.stack([eighth, sixteenth, triplet, quarter], axis=-1),
                                                 RHYTHM_TARGET),
                                          bandpass(metric("syncopation_rate"), 0.35, 0.35),
                                          bandpass(offbeat_ratio, 0.45, 0.45),
                                          np.clip(eighth + sixteenth, 0.0, 1.0)),
        "drum_cohesion": mean_of_defined(inv(metric("drum_collision_rate"), 0.45), metric("role_separation"),
                                         bandpass(metric("hat_transition_rate"), 0.5, 0.45)),
        "structure": mean_of_defined(bandpass(metric("repeat_rate"), 0.60, 0.45),
                                     bandpass(metric("variation_factor"), 0.45, 0.35),
                                     inv(metric("breakpoint_count"), 10),
                                     bandpass(metric("note_density_per_bar"), 10, 8)),
    }


def _scalar(metrics_row: Mapping) -> Callable[[str], np.float64]:
    def metric(name: str) -> np.float64:
        value = metrics_row[name]
        return np.float64(np.nan if value is None else value)
    return metric


def axis_scores(metrics_row: Mapping) -> dict[str, float]:
    """Each axis in [0, 1] for one loop's metrics (a ``loop_metrics`` dict or a ``metrics_frame`` row)."""
    return {axis: float(value) for axis, value in _axes(_scalar(metrics_row)).items()}


def score(metrics_row: Mapping, config: ScoreConfig = DEFAULT_CONFIG) -> dict:
    """Axes ×100, the weighted total, pass/fail, and the weights and threshold used, for one loop."""
    return combine_axes(axis_scores(metrics_row), config)


def combine_axes(axes: Mapping[str, float], config: ScoreConfig = DEFAULT_CONFIG) -> dict:
    """The score of axes in [0, 1]: each ×100, total = Σ axis × 100 × w / Σ w, passed = total ≥ threshold.

    ``weakest_axis`` is the axis with the smallest weighted contribution (first in AXES order on ties);
    ``failure_reason`` is that axis when the loop fails and None when it passes.
    """
    weights = config.weights
    weight_sum = sum(weights.values())
    contributions = {axis: axes[axis] * 100.0 * weights[axis] / weight_sum for axis in AXES}
    total = sum(contributions.values())
    weakest = min(AXES, key=contributions.__getitem__)
    passed = total >= config.pass_threshold
    return {
        **{axis: axes[axis] * 100.0 for axis in AXES},
        "total": total,
        "passed": passed,
        "weakest_axis": weakest,
        "failure_reason": None if passed else weakest,
        "threshold": config.pass_threshold,
        "weights": dict(weights),
    }


def score_frame(metrics: pd.DataFrame, config: ScoreConfig = DEFAULT_CONFIG) -> pd.DataFrame:
    """``score`` for every row of a metrics frame at once (same index); ``weights`` is canonical JSON."""
    def metric(name: str) -> np.ndarray:
        return metrics[name].to_numpy(dtype=np.float64)

    by_axis = _axes(metric)
    axes = np.column_stack([by_axis[axis] for axis in AXES]).reshape(len(metrics), len(AXES)) * 100.0
    weights = config.weight_vector()
    contributions = axes * weights / weights.sum()
    total = contributions.sum(axis=1)
    weakest = np.asarray(AXES, dtype=object)[contributions.argmin(axis=1)]
    passed = total >= config.pass_threshold
    frame = pd.DataFrame(axes, index=metrics.index, columns=list(AXES))
    frame["total"] = total
    frame["passed"] = passed
    frame["weakest_axis"] = weakest
    frame["failure_reason"] = pd.Series(np.where(passed, None, weakest), index=metrics.index, dtype=object)
    frame["threshold"] = config.pass_threshold
    frame["weights"] = config.weights_json()
    return frame

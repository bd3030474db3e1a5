"""The statistics the rollout decisions rest on: output drift (PSI) and the two-proportion test.

Output reference (``output_reference``), stored with the model at registration: the distribution of the
model's own outputs on its training set. Per numeric output, ``DRIFT_BINS`` (10) bins cut at the deciles
of those outputs (open-ended at both sides) with the share of training outputs in each; per classifier, the
share of each predicted class.

PSI (``psi``) of a window's outputs against that reference: Σ (a − e) · ln(a / e) over the bins, shares
floored at ``PSI_FLOOR`` so an empty bin is a large but finite term. Read as usual: < 0.1 stable, 0.1–0.2
moderate, > 0.2 a shift (the SLO's limit). PSI is biased upwards on few samples (about (bins − 1) / n for
an unchanged distribution: 0.045 at n = 200), which is why the controller judges drift only on windows of
at least its minimum traffic.

Outcome regression (``two_proportion_test``): the pooled two-proportion z-test of H1 "the treatment's rate is
higher than the control's" (a re-process rate: higher is worse), one-sided. Its normal approximation needs
enough events: below ``MIN_EXPECTED`` (5) expected events or non-events in either arm the test returns no
verdict (p None) instead of a number that means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

DRIFT_BINS = 10
PSI_FLOOR = 1e-4
MIN_EXPECTED = 5


def output_reference(output: np.ndarray, names: Sequence[str] | None = None) -> dict:
    """The reference distribution of a model's outputs: ``{"kind": "numeric", "names": [column names in order],
    "outputs": {name: {"edges", "shares"}}}`` for an ``[n, k]`` float output, ``{"kind": "classes", "shares":
    {label: share}}`` for labels."""
    output = np.asarray(output)
    if output.size == 0:
        raise ValueError("no outputs to take a reference from")
    if output.dtype.kind in "fiu":
        values = output.reshape(len(output), -1).astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("the outputs hold NaN or infinite values: no reference can be taken from them")
        names = list(names) if names is not None else [str(i) for i in range(values.shape[1])]
        outputs = {}
        for name, column in zip(names, values.T, strict=True):
            inner = np.unique(np.quantile(column, np.linspace(0, 1, DRIFT_BINS + 1)[1:-1]))
            outputs[name] = {"edges": inner.tolist(), "shares": _numeric_shares(column, inner).tolist()}
        # "names" keeps the column order: jsonb does not keep the key order of "outputs" (shorter keys first).
        return {"kind": "numeric", "names": names, "outputs": outputs}
    labels, counts = np.unique(output.astype(str), return_counts=True)
    return {"kind": "classes", "shares": dict(zip(labels.tolist(), (counts / counts.sum()).tolist(), strict=True))}


def _numeric_shares(values: np.ndarray, inner_edges: Sequence[float]) -> np.ndarray:
    # Bin i holds edges[i-1] < v <= edges[i]; the outer bins are open-ended.
    counts = np.bincount(np.searchsorted(np.asarray(inner_edges), values, side="left"),
                         minlength=len(inner_edges) + 1)
    return counts / max(len(values), 1)


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(expected, PSI_FLOOR)
    a = np.maximum(actual, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: dict, outputs: Sequence) -> dict[str, float]:
    """PSI per output of a window's outputs (rows as recorded: lists of numbers, or labels) against the
    reference. Unknown classes count against the reference's classes as drift."""
    if not len(outputs):
        return {}
    if reference["kind"] == "numeric":
        values = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
        result = {}
        names = reference.get("names") or list(reference["outputs"])  # column i is names[i]
        for i, name in enumerate(names):
            ref = reference["outputs"][name]
            actual = _numeric_shares(values[:, i], ref["edges"])
            result[name] = _psi(np.asarray(ref["shares"]), actual)
        return result
    classes = list(reference["shares"])
    labels = [str(x) for x in outputs]
    others = sorted(set(labels) - set(classes))
    expected = np.asarray([reference["shares"][c] for c in classes] + [0.0] * len(others))
    actual = np.asarray([labels.count(c) for c in classes + others], dtype=np.float64) / len(labels)
    return {"class": _psi(expected, actual)}


@dataclass(frozen=True)
class ProportionTest:
    treatment_rate: float | None
    control_rate: float | None
    z: float | None
    p_value: float | None          # one-sided, H1: treatment rate > control rate; None: not enough data

    def regression(self, alpha: float) -> bool:
        return self.p_value is not None and self.p_value < alpha


def two_proportion_test(treatment_events: int, treatment_n: int, control_events: int,
                        control_n: int) -> ProportionTest:
    """Pooled one-sided two-proportion z-test (module docstring)."""
    t_rate = treatment_events / treatment_n if treatment_n else None
    c_rate = control_events / control_n if control_n else None
    if not treatment_n or not control_n:
        return ProportionTest(t_rate, c_rate, None, None)
    pooled = (treatment_events + control_events) / (treatment_n + control_n)
    smallest = min(treatment_n, control_n) * min(pooled, 1 - pooled)
    if smallest < MIN_EXPECTED:
        return ProportionTest(t_rate, c_rate, None, None)
    se = math.sqrt(pooled * (1 - pooled) * (1 / treatment_n + 1 / control_n))
    z = (t_rate - c_rate) / se
    return ProportionTest(t_rate, c_rate, z, float(norm.sf(z)))

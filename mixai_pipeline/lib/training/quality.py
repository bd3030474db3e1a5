"""An honest quality check of the master-parameter model: known changes to held-out mixes.

Method. Take mixes the model never saw (whole pieces held out: no version of them is in training) and
apply changes whose correction is known:

- ``low shelf +4 dB`` and ``high shelf -3 dB``: shelves at the master chain's own corners
  (``master.LOW_SHELF_HZ``, ``master.HIGH_SHELF_HZ``, slope 1), so the chain undoes them exactly with
  ``low_shelf_db`` -4 and ``high_shelf_db`` +3;
- ``heavier compression``: 4:1, 1 ms attack, 100 ms release, threshold set for 6 dB mean gain reduction,
  then make-up gain back to the original integrated loudness (only the dynamics change, not the level).
  The fast attack catches the transients, so the peak-to-loudness ratio falls; a compressor cannot undo
  compression, so the undoing correction is a direction only: compress less (``comp_db`` down);
- ``combined``: all three, in that order.

For each held-out mix and change, the *predicted correction delta* of an output is the model's prediction on
the changed mix minus its prediction on the unchanged mix. Two references for it:

- the *undo*: the direction (and for the shelves the size) of the correction that removes the change;
- the *rule delta*: the same difference for ``master.estimate_master_params``, whose parameters are the
  pseudo-labels the model is trained on. This is the ideal the model can reach: the rule corrects only half
  of a tonal deviation beyond a +-3 dB dead band (a +4 dB shelf asks for -2 dB at most, nothing while the mix
  stays inside the dead band) and compresses only above a peak-to-loudness ratio of 12 dB.

The predict-the-mean baseline (the training labels' mean) has a delta of 0 for every change by
construction, so the table also compares absolute errors against the rule's parameters, model vs baseline:
of the deltas (``delta_mae_*``) and of the parameters themselves on the changed mixes (``mae_*``).

``voice`` and ``random_change`` give training variety: source mixes spread over the tonal balances the rule
responds to, and random shelves, compression and gain on top of them.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mixai_pipeline.lib.dsp import dynamics, filters, loudness, master
from mixai_pipeline.lib.training.dataset import MASTER_PARAMS

UNCHANGED = "unchanged"
LOW_SHELF_CHANGE_DB = 4.0
HIGH_SHELF_CHANGE_DB = -3.0


@dataclass(frozen=True)
class Compression:
    reduction_db: float  # mean gain reduction over the sounding blocks
    ratio: float
    attack_ms: float
    release_ms: float


HEAVIER_COMPRESSION = Compression(reduction_db=6.0, ratio=4.0, attack_ms=1.0, release_ms=100.0)
KNOWN_CHANGES: tuple[str, ...] = ("low shelf +4 dB", "high shelf -3 dB", "heavier compression", "combined")

# Direction of the correction that undoes each change, per output (+1 up, -1 down; outputs not named: 0).
UNDO_DIRECTION: dict[str, dict[str, int]] = {
    "low shelf +4 dB": {"low_shelf_db": -1},
    "high shelf -3 dB": {"high_shelf_db": +1},
    "heavier compression": {"comp_db": -1},
    "combined": {"low_shelf_db": -1, "high_shelf_db": +1, "comp_db": -1},
}
# Its size where the chain can undo the change exactly (the shelves, at the chain's own corners).
EXACT_UNDO_DB: dict[str, dict[str, float]] = {
    "low shelf +4 dB": {"low_shelf_db": -LOW_SHELF_CHANGE_DB},
    "high shelf -3 dB": {"high_shelf_db": -HIGH_SHELF_CHANGE_DB},
    "combined": {"low_shelf_db": -LOW_SHELF_CHANGE_DB, "high_shelf_db": -HIGH_SHELF_CHANGE_DB},
}

# random_change: what training mixes vary in
RANDOM_SHELF_DB = 6.0
RANDOM_COMPRESSION_SHARE = 0.6
RANDOM_REDUCTION_DB = (1.0, 9.0)
RANDOM_RATIO = (2.0, 6.0)
RANDOM_ATTACK_MS = (0.5, 10.0)  # log-uniform: fast attacks flatten peaks, slow ones let them through
RANDOM_RELEASE_MS = (50.0, 300.0)
RANDOM_GAIN_DB = (-8.0, 4.0)  # level does not change any label: the model must not lean on it
# voice: secant steps that bring a band's deviation to its target (the shelf also moves the band's edges)
VOICING_STEPS = 3
VOICING_TOLERANCE_DB = 0.3
MAX_VOICING_DB = 18.0


# ------------------------------------------------------------------------------------------- changes

def shelve_low(x: np.ndarray, sr: int, gain_db: float) -> np.ndarray:
    """A low shelf at the master chain's corner: ``low_shelf_db = -gain_db`` undoes it exactly."""
    return filters.low_shelf(x, sr, master.LOW_SHELF_HZ, gain_db)


def shelve_high(x: np.ndarray, sr: int, gain_db: float) -> np.ndarray:
    """A high shelf at the master chain's corner: ``high_shelf_db = -gain_db`` undoes it exactly."""
    return filters.high_shelf(x, sr, master.HIGH_SHELF_HZ, gain_db)


def compress_harder(x: np.ndarray, sr: int, setting: Compression = HEAVIER_COMPRESSION) -> np.ndarray:
    """Compression with ``setting``'s mean gain reduction, then make-up gain back to the input's integrated
    loudness: the dynamics change, the level does not."""
    threshold = dynamics.threshold_for_mean_reduction(x, sr, setting.reduction_db, setting.ratio,
                                                      setting.attack_ms, setting.release_ms)
    out, _ = dynamics.compress(x, sr, threshold, setting.ratio, setting.attack_ms, setting.release_ms)
    before, after = loudness.integrated_loudness(x, sr), loudness.integrated_loudness(out, sr)
    if math.isfinite(before) and math.isfinite(after):
        out = out * 10 ** ((before - after) / 20)
    return out


def apply_change(x: np.ndarray, sr: int, change: str) -> np.ndarray:
    """``x`` with one of ``KNOWN_CHANGES`` (or ``UNCHANGED``: a copy)."""
    audio = np.asarray(x, dtype=np.float64)
    if change == UNCHANGED:
        return audio.copy()
    if change not in KNOWN_CHANGES:
        raise ValueError(f"unknown change {change!r} (expected one of {', '.join(KNOWN_CHANGES)})")
    if change in ("low shelf +4 dB", "combined"):
        audio = shelve_low(audio, sr, LOW_SHELF_CHANGE_DB)
    if change in ("high shelf -3 dB", "combined"):
        audio = shelve_high(audio, sr, HIGH_SHELF_CHANGE_DB)
    if change in ("heavier compression", "combined"):
        audio = compress_harder(audio, sr)
    return audio


def random_change(x: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """A random training variation of a mix: low and high shelves within +-6 dB, compression on
    ``RANDOM_COMPRESSION_SHARE`` of the calls, then a level change. Returns the audio and what was done."""
    low, high = rng.uniform(-RANDOM_SHELF_DB, RANDOM_SHELF_DB, size=2)
    audio = shelve_high(shelve_low(x, sr, low), sr, high)
    done = {"low_shelf_db": float(low), "high_shelf_db": float(high), "reduction_db": 0.0}
    if rng.random() < RANDOM_COMPRESSION_SHARE:
        setting = Compression(reduction_db=rng.uniform(*RANDOM_REDUCTION_DB), ratio=rng.uniform(*RANDOM_RATIO),
                              attack_ms=math.exp(rng.uniform(*np.log(RANDOM_ATTACK_MS))),
                              release_ms=rng.uniform(*RANDOM_RELEASE_MS))
        audio = compress_harder(audio, sr, setting)
        done.update(reduction_db=setting.reduction_db, ratio=setting.ratio, attack_ms=setting.attack_ms,
                    release_ms=setting.release_ms)
    gain = rng.uniform(*RANDOM_GAIN_DB)
    done["gain_db"] = float(gain)
    return audio * 10 ** (gain / 20), done


def voice(x: np.ndarray, sr: int, low_deviation_db: float, high_deviation_db: float) -> np.ndarray:
    """``x`` shelved (at the chain's corners) until the rule's tonal deviations are near the targets.

    Renders of General MIDI instruments sit far below pink at 6-16 kHz, where the rule's high shelf is pinned
    at +6 dB whatever happens to the mix; a mix engineer's voicing spreads them over the range in which the
    rule responds. A few secant steps for both bands at once (a shelf moves its band by a bit less than its
    gain, and the bands are far apart), each gain capped at +-``MAX_VOICING_DB``; a band without energy is
    left alone."""
    audio = np.asarray(x, dtype=np.float64)
    targets = np.array([low_deviation_db, high_deviation_db])

    def shelved(gains: np.ndarray) -> np.ndarray:
        return shelve_high(shelve_low(audio, sr, gains[0]), sr, gains[1])

    reached = np.array(master.tonal_deviations(audio, sr))
    movable = np.isfinite(reached)
    gains, slopes = np.zeros(2), np.ones(2)
    for _ in range(VOICING_STEPS):
        if np.all(~movable | (np.abs(reached - targets) <= VOICING_TOLERANCE_DB)):
            break
        step = np.where(movable, (targets - reached) / slopes, 0.0)
        new_gains = np.clip(gains + step, -MAX_VOICING_DB, MAX_VOICING_DB)
        new_reached = np.array(master.tonal_deviations(shelved(new_gains), sr))
        moved = movable & (new_gains != gains) & (new_reached != reached)
        slopes[moved] = np.clip((new_reached - reached)[moved] / (new_gains - gains)[moved], 0.2, 1.5)
        gains, reached = new_gains, np.where(movable, new_reached, reached)
    return shelved(gains)


# ---------------------------------------------------------------------------------------- evaluation

def correction_deltas(examples: pd.DataFrame, predicted: np.ndarray, baseline: Sequence[float] | np.ndarray,
                      outputs: Sequence[str] = MASTER_PARAMS) -> pd.DataFrame:
    """Per held-out piece, change and output: the rule's, the model's and the baseline's values on the
    changed mix, and their deltas from the unchanged mix of the same piece.

    ``examples`` has a ``piece`` and a ``change`` column (``UNCHANGED`` once per piece, and any of
    ``KNOWN_CHANGES``) and the rule estimator's parameters in columns named ``outputs``; ``predicted`` is the
    model's ``(len(examples), len(outputs))`` prediction for the same rows, ``baseline`` the baseline's: one
    row for all, or one per example (held-out folds each have their own training mean).
    Rows for ``UNCHANGED`` itself are kept (deltas 0), so errors on the unchanged mixes can be reported too.
    """
    outputs = list(outputs)
    predicted = np.asarray(predicted, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if predicted.shape != (len(examples), len(outputs)) or baseline.shape not in ((len(outputs),), predicted.shape):
        raise ValueError(f"predictions {predicted.shape} and baseline {baseline.shape} do not fit "
                         f"{len(examples)} examples of {len(outputs)} outputs")
    baseline = np.broadcast_to(baseline, predicted.shape)
    frame = examples.reset_index(drop=True)
    reference = {}
    for piece, rows in frame.groupby("piece", sort=False):
        unchanged = rows.index[rows["change"] == UNCHANGED]
        if len(unchanged) != 1:
            raise ValueError(f"piece {piece!r} needs exactly one {UNCHANGED!r} example, has {len(unchanged)}")
        reference[piece] = unchanged[0]
    records = []
    for i, row in frame.iterrows():
        ref = reference[row["piece"]]
        for j, output in enumerate(outputs):
            direction = UNDO_DIRECTION.get(row["change"], {}).get(output, 0)
            records.append({
                "piece": row["piece"], "change": row["change"], "output": output,
                "undo_direction": direction,
                "exact_undo_db": EXACT_UNDO_DB.get(row["change"], {}).get(output, 0.0 if not direction else math.nan),
                "rule": float(row[output]), "model": predicted[i, j], "baseline": baseline[i, j],
                "rule_delta": float(row[output] - frame.at[ref, output]),
                "model_delta": predicted[i, j] - predicted[ref, j],
                "baseline_delta": baseline[i, j] - baseline[ref, j],  # 0: a constant prediction never moves
            })
    return pd.DataFrame.from_records(records)


def summarise(deltas: pd.DataFrame) -> pd.DataFrame:
    """Per change and output (changes in ``KNOWN_CHANGES`` order, ``UNCHANGED`` last): the mean deltas,
    the model's mean delta as a share of the rule's, the share of pieces where the model moved in the undoing
    direction, and absolute errors against the rule (deltas, and parameters on the changed mixes), model vs
    the mean baseline."""
    order = [c for c in (*KNOWN_CHANGES, UNCHANGED) if c in set(deltas["change"])]
    rows = []
    for change in order:
        for output, part in deltas[deltas["change"] == change].groupby("output", sort=False):
            direction = int(part["undo_direction"].iloc[0])
            rule_delta, model_delta = part["rule_delta"].mean(), part["model_delta"].mean()
            rows.append({
                "change": change, "output": output, "pieces": len(part), "undo_direction": direction,
                "exact_undo_db": part["exact_undo_db"].iloc[0],
                "rule_delta": rule_delta, "model_delta": model_delta, "baseline_delta": part["baseline_delta"].mean(),
                # asked only where the change has an undoing direction: elsewhere both deltas are noise
                "model_share_of_rule": model_delta / rule_delta if direction and abs(rule_delta) > 1e-9 else math.nan,
                "undo_share": (float((np.sign(part["model_delta"]) == direction).mean()) if direction
                               else math.nan),
                "delta_mae_model": (part["model_delta"] - part["rule_delta"]).abs().mean(),
                "delta_mae_baseline": (part["baseline_delta"] - part["rule_delta"]).abs().mean(),
                "mae_model": (part["model"] - part["rule"]).abs().mean(),
                "mae_baseline": (part["baseline"] - part["rule"]).abs().mean(),
            })
    return pd.DataFrame.from_records(rows)


def evaluation_table(examples: pd.DataFrame, predicted: np.ndarray, baseline: Sequence[float] | np.ndarray,
                     outputs: Sequence[str] = MASTER_PARAMS) -> pd.DataFrame:
    """``summarise(correction_deltas(...))``: the table of the module docstring."""
    return summarise(correction_deltas(examples, predicted, baseline, outputs))


_HEADINGS: Mapping[str, str] = {
    "change": "change", "output": "output", "pieces": "n", "undo": "undo",
    "rule_delta": "rule Δ", "model_delta": "model Δ", "baseline_delta": "mean Δ",
    "model_share_of_rule": "model/rule", "undo_share": "undo-wise",
    "delta_mae_model": "|Δ err| model", "delta_mae_baseline": "|Δ err| mean",
    "mae_model": "MAE model", "mae_baseline": "MAE mean",
}


def _undo_text(direction: int, exact_db: float) -> str:
    if not direction:
        return "-"
    return f"{exact_db:+.1f}" if math.isfinite(exact_db) else ("up" if direction > 0 else "down")


def format_table(table: pd.DataFrame) -> str:
    """The ``summarise`` table as fixed-width text with a legend (deltas and errors in dB; a change's name
    is printed on its first row only)."""
    shown = table.copy()
    shown["undo"] = [_undo_text(d, e) for d, e in zip(shown["undo_direction"], shown["exact_undo_db"], strict=True)]
    shown["change"] = shown["change"].where(shown["change"] != shown["change"].shift(), "")
    shown = shown[list(_HEADINGS)].rename(columns=_HEADINGS)
    formats = {_HEADINGS[k]: (lambda v: "" if pd.isna(v) else f"{v:+.2f}")
               for k in ("rule_delta", "model_delta", "baseline_delta")}
    formats.update({_HEADINGS[k]: (lambda v: "" if pd.isna(v) else f"{v:.2f}")
                    for k in ("model_share_of_rule", "delta_mae_model", "delta_mae_baseline", "mae_model",
                              "mae_baseline")})
    formats[_HEADINGS["undo_share"]] = lambda v: "" if pd.isna(v) else f"{v:.0%}"
    text = shown.to_string(index=False, formatters=formats, justify="right", na_rep="")
    legend = textwrap.fill(
        "undo: the correction that removes the change (exact for the shelves, a direction for compression); "
        "Δ: prediction on the changed mix minus on the unchanged one, mean over the pieces; rule: "
        "lib.dsp.master.estimate_master_params (the training labels); mean: the predict-the-mean baseline; "
        "model/rule: the model's mean Δ over the rule's; undo-wise: share of pieces where the model moved the "
        "undoing way; |Δ err|, MAE: mean absolute error against the rule's Δ and parameters. All in dB.",
        width=max(len(text.splitlines()[0]), 80))
    return f"{text}\n{legend}"

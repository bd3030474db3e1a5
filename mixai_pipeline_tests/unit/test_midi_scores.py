"""Stage 2 axis scores: the helpers, every axis of one metrics row worked by hand, weights and validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mixai_pipeline.lib.midi.loop import Loop
from mixai_pipeline.lib.midi.metrics import METRIC_NAMES, metrics_frame
from mixai_pipeline.lib.midi.scores import (
    AXES,
    DEFAULT_CONFIG,
    PRODUCT_CONFIG,
    RHYTHM_TARGET,
    ScoreConfig,
    axis_scores,
    bandpass,
    combine_axes,
    cosine,
    inv,
    mean_of_defined,
    score,
    score_frame,
)

NAN = math.nan


def hand_row() -> dict:
    """A metrics row chosen so that every term is easy to work out (hat transitions and structure undefined)."""
    row = dict.fromkeys(METRIC_NAMES, NAN)
    row.update(
        swing_confidence=1.0, microtiming_std=10.0, microtiming_rms=18.0, fill_density=0.46,
        ghost_rate=0.25, accent_rate=0.5, velocity_range=80.0, velocity_distinct=10.0, velocity_std=16.0,
        swing_ratio=1.5, rhythm_eighth=0.38, rhythm_sixteenth=0.32, rhythm_triplet=0.18, rhythm_quarter=0.12,
        rhythm_other=0.0, syncopation_rate=0.35,
        drum_collision_rate=0.09, role_separation=0.6,
        rhythm_hash="0" * 40,
    )
    return row


# Worked by hand from hand_row():
# timing  = mean(1, inv(10, 40) = .75, inv(18, 36) = .5, bandpass(.46, .32, .28) = .5) = .6875
# velocity = mean(bp(.25,.25,.25)=1, bp(.5,.25,.25)=0, bp(80,80,55)=1, bp(10,5.5,4.5)=0, bp(16,12,8)=.5) = .5
# groove  = mean(max(bp(1.5,1,.25)=0, bp(1.5,1.5,.35)=1) = 1, cosine = 1, bp(.35,.35,.35) = 1,
#                bp(offbeat (.32+.18)/1 = .5, .45, .45) = 1 − .05/.45, clip(.38 + .32) = .7)
# cohesion = mean(inv(.09, .45) = .8, .6, hat transitions undefined) = .7
# structure: no term defined → .5
EXPECTED_AXES = {
    "timing": 0.6875,
    "velocity": 0.5,
    "groove_harmony": (1 + 1 + 1 + (1 - 0.05 / 0.45) + 0.7) / 5,
    "drum_cohesion": 0.7,
    "structure": 0.5,
}


def test_bandpass():
    assert bandpass(1.0, 1.0, 0.25) == 1.0
    assert bandpass(1.125, 1.0, 0.25) == 0.5
    assert bandpass(0.875, 1.0, 0.25) == 0.5
    assert bandpass(2.0, 1.0, 0.25) == 0.0  # clipped at 0, never negative
    assert math.isnan(bandpass(NAN, 1.0, 0.25))
    np.testing.assert_allclose(bandpass(np.array([0.0, 0.5, 1.0]), 0.5, 0.5), [0.0, 1.0, 0.0])


def test_inv():
    assert inv(0.0, 36) == 1.0
    assert inv(18.0, 36) == 0.5
    assert inv(72.0, 36) == 0.0
    assert math.isnan(inv(NAN, 36))


def test_cosine():
    assert cosine(RHYTHM_TARGET * 3, RHYTHM_TARGET) == pytest.approx(1.0)
    assert cosine([1.0, 0.0, 0.0, 0.0], RHYTHM_TARGET) == pytest.approx(0.38 / np.linalg.norm(RHYTHM_TARGET))
    assert math.isnan(cosine([0.0, 0.0, 0.0, 0.0], RHYTHM_TARGET))
    np.testing.assert_allclose(cosine(np.array([[0, 0, 0, 1.0], [0, 1.0, 0, 0]]), RHYTHM_TARGET),
                               np.array([0.12, 0.32]) / np.linalg.norm(RHYTHM_TARGET))


def test_mean_of_defined_terms():
    assert mean_of_defined(0.2, NAN, 0.4) == pytest.approx(0.3)
    assert mean_of_defined(NAN, NAN) == 0.5  # nothing defined
    assert mean_of_defined(1.5, 1.5) == 1.0  # clipped
    np.testing.assert_allclose(mean_of_defined(np.array([0.2, NAN]), np.array([0.4, NAN])), [0.3, 0.5])


def test_every_axis_of_a_row_worked_by_hand():
    axes = axis_scores(hand_row())
    assert axes.keys() == set(AXES)
    for axis, expected in EXPECTED_AXES.items():
        assert axes[axis] == pytest.approx(expected), axis


def test_score_with_the_seed_config_equal_weights_pass_70():
    result = score(hand_row())
    expected_total = sum(EXPECTED_AXES.values()) * 100 / 5  # 66.1
    assert result["total"] == pytest.approx(expected_total)
    assert result["timing"] == pytest.approx(68.75)
    assert result["passed"] is False
    assert result["failure_reason"] == "velocity"  # velocity and structure tie at 50: the first in AXES
    assert result["weights"] == dict.fromkeys(AXES, 1.0) and result["threshold"] == 70.0


def test_score_with_the_product_config():
    result = score(hand_row(), PRODUCT_CONFIG)
    weighted = {"timing": 2.0, "velocity": 2.0, "groove_harmony": 1.0, "drum_cohesion": 1.0, "structure": 1.2}
    expected_total = sum(EXPECTED_AXES[a] * 100 * w for a, w in weighted.items()) / 7.2  # 63.8
    assert result["total"] == pytest.approx(expected_total)
    assert result["passed"] is True and result["failure_reason"] is None
    assert result["weakest_axis"] == "structure"  # 50 × 1.2 is the smallest contribution
    assert result["weights"] == weighted and result["threshold"] == 50.0


def test_failure_reason_is_the_smallest_weighted_contribution_not_the_lowest_axis():
    axes = {"timing": 0.2, "velocity": 0.5, "groove_harmony": 0.5, "drum_cohesion": 0.3, "structure": 0.3}
    result = combine_axes(axes, PRODUCT_CONFIG)
    # contributions × 7.2 / 100: timing .4, velocity 1.0, groove .5, cohesion .3, structure .36
    assert result["total"] == pytest.approx(256 / 7.2)
    assert result["passed"] is False
    assert result["failure_reason"] == "drum_cohesion"
    assert combine_axes(axes, DEFAULT_CONFIG)["failure_reason"] == "timing"


def test_threshold_is_inclusive():
    axes = dict.fromkeys(AXES, 0.7)
    assert combine_axes(axes, ScoreConfig(pass_threshold=70))["passed"] is True
    assert combine_axes(axes, ScoreConfig(pass_threshold=70.01))["passed"] is False


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"weights": {**dict.fromkeys(AXES, 1.0), "timing": -1.0}}, "finite and >= 0"),
    ({"weights": {**dict.fromkeys(AXES, 1.0), "timing": NAN}}, "finite and >= 0"),
    ({"weights": dict.fromkeys(AXES, 0.0)}, "all be zero"),
    ({"weights": {**dict.fromkeys(AXES, 1.0), "groove": 1.0}}, "unknown score axes"),
    ({"weights": {"timing": 1.0}}, "missing"),
    ({"pass_threshold": 101}, "within 0-100"),
    ({"pass_threshold": -1}, "within 0-100"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScoreConfig(**kwargs)


def test_configs_record_their_weights():
    assert dict(DEFAULT_CONFIG.weights) == dict.fromkeys(AXES, 1.0) and DEFAULT_CONFIG.pass_threshold == 70.0
    assert dict(PRODUCT_CONFIG.weights) == {"timing": 2.0, "velocity": 2.0, "groove_harmony": 1.0,
                                            "drum_cohesion": 1.0, "structure": 1.2}
    assert PRODUCT_CONFIG.pass_threshold == 50.0
    with pytest.raises(TypeError):
        PRODUCT_CONFIG.weights["timing"] = 5.0  # configs are immutable once validated


def test_score_frame_matches_score_row_by_row():
    loops = [
        Loop(f"l{i}", 480, onsets, np.full(onsets.size, 60), pitches, velocities, np.full(onsets.size, 9), 1920,
             tempos_bpm=(120.0,))
        for i, (onsets, pitches, velocities) in enumerate([
            (np.arange(8) * 240, np.array([36, 42] * 4), np.array([100, 40, 90, 45, 110, 30, 95, 50])),
            (np.array([0, 320, 480, 800, 960, 1280, 1440, 1760]), np.full(8, 51), np.arange(8) * 10 + 40),
            (np.array([0, 5, 250, 470, 960]), np.array([36, 42, 38, 46, 49]), np.array([127, 20, 64, 64, 80])),
        ])
    ]
    metrics = pd.concat([metrics_frame(loops), pd.DataFrame([hand_row()], index=pd.Index(["hand"], name="loop_id"))])
    frame = score_frame(metrics, PRODUCT_CONFIG)
    assert frame.index.tolist() == ["l0", "l1", "l2", "hand"]
    for loop_id, row in metrics.iterrows():
        expected = score(row, PRODUCT_CONFIG)
        for column in (*AXES, "total"):
            assert frame.loc[loop_id, column] == pytest.approx(expected[column]), (loop_id, column)
        assert frame.loc[loop_id, "passed"] == expected["passed"]
        assert frame.loc[loop_id, "weakest_axis"] == expected["weakest_axis"]
        assert frame.loc[loop_id, "failure_reason"] == expected["failure_reason"]
    assert frame.loc["hand", "total"] == pytest.approx(score(hand_row(), PRODUCT_CONFIG)["total"])
    assert set(frame["threshold"]) == {50.0}
    assert json.loads(frame["weights"].iloc[0]) == dict(PRODUCT_CONFIG.weights)

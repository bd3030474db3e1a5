"""Stage 2 loop metrics pinned on hand-built loops whose values are known by construction, plus Groove MIDI."""

from __future__ import annotations

import hashlib
import json
import math
import statistics

import numpy as np
import pandas as pd
import pandera.errors
import pytest

from mixai_pipeline import settings
from mixai_pipeline.lib.midi.loop import Loop
from mixai_pipeline.lib.midi.metrics import (
    CANONICAL_EVENTS_SCHEMA,
    LOOP_METRICS_SCHEMA,
    METRIC_NAMES,
    canonical_events,
    canonical_events_frame,
    loop_metrics,
    metrics_frame,
)

TPB = 480
BAR = 4 * TPB
MS_PER_TICK_120 = 60000 / (120 * TPB)
KICK, SNARE, CLOSED, PEDAL, OPEN, TOM, RIDE = 36, 38, 42, 44, 46, 45, 51
GROOVE_MIDI = settings.groove_midi_dir()


def make_loop(onsets, pitches=CLOSED, velocities=80, *, durations=60, channels=9, length=BAR, tpb=TPB,
              tempos=(120.0,), loop_id="loop", source=None) -> Loop:
    """A loop from note columns; scalars broadcast over the onsets."""
    onsets = np.asarray(onsets, dtype=np.int64)
    column = lambda value, dtype: np.broadcast_to(np.asarray(value, dtype=dtype), onsets.shape).copy()  # noqa: E731
    return Loop(loop_id, tpb, onsets, column(durations, np.int64), column(pitches, np.int16),
                column(velocities, np.int16), column(channels, np.int16), length, (4, 4), tuple(tempos),
                source=source or {})


def straight_eighths(**kwargs) -> Loop:
    return make_loop(np.arange(8) * 240, **kwargs)


def assert_metrics_equal(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        a, b = left[name], right[name]
        if isinstance(a, float) and math.isnan(a):
            assert isinstance(b, float) and math.isnan(b), name
        else:
            assert a == pytest.approx(b), name


# --- timing and swing ------------------------------------------------------------------------------------------


def test_straight_eighth_hats_have_no_swing_and_no_microtiming():
    m = loop_metrics(straight_eighths())
    assert m["base_step"] == 240
    assert m["swing_ratio"] == 1.0
    assert m["swing_ratio_product"] == 1.0
    assert m["swing_confidence"] == 1.0  # 7 IOIs ≥ 4
    for name in ("microtiming_mean", "microtiming_std", "microtiming_rms", "microtiming_rms_ms",
                 "microtiming_rms_16th_ms", "microtiming_signed_mean", "microtiming_signed_mean_ms",
                 "syncopation_rate"):
        assert m[name] == 0.0, name
    assert m["onbeat_velocity"] == 80.0
    assert math.isnan(m["offbeat_velocity"]) and math.isnan(m["offbeat_velocity_ratio"])
    assert m["fill_density"] == 1.0  # 8 notes × 240 / 1920
    assert m["note_density_per_bar"] == 16.0


def test_two_to_one_swing_reads_2_and_the_product_ratio_inverts_it():
    """Off-beat eighths at 2/3 of the beat (320 of 480 ticks): long 320, short 160."""
    onsets = np.array([0, 320, 480, 800, 960, 1280, 1440, 1760])
    m = loop_metrics(make_loop(onsets, RIDE))
    assert m["swing_ratio"] == pytest.approx(2.0)
    # IOIs 320,160,320,...: the product divides odd-indexed (160) by even-indexed (320) IOIs.
    assert m["swing_ratio_product"] == pytest.approx(0.5)
    # Against the 16th grid the four off-beats sit 40 ticks early (320 → 360): rms = sqrt(4 · 40² / 8).
    assert m["microtiming_rms_16th_ms"] == pytest.approx(math.sqrt(800) * MS_PER_TICK_120)
    assert m["base_step"] == 320


def test_swing_is_measured_from_where_the_drummer_plays_the_beat():
    """A straight groove played 24 ticks ahead of the click everywhere is still straight."""
    onsets = np.arange(8) * 240 + 24
    assert loop_metrics(make_loop(onsets))["swing_ratio"] == pytest.approx(1.0)


def test_swing_prefers_the_timekeeping_cymbal_over_straight_kick_and_snare():
    ride = [0, 320, 480, 800, 960, 1280, 1440, 1760]  # swung 2:1
    kick = [240, 720, 1200, 1680]  # straight off-beat eighths, not the time feel
    onsets = np.array(ride + kick)
    pitches = np.array([RIDE] * len(ride) + [KICK] * len(kick))
    assert loop_metrics(make_loop(onsets, pitches))["swing_ratio"] == pytest.approx(2.0)
    # Without hats or cymbals, every note counts: the kick's 240s are the earliest off-beats.
    assert loop_metrics(make_loop(onsets, np.where(pitches == RIDE, SNARE, KICK)))["swing_ratio"] == 1.0


def test_swing_is_undefined_with_too_few_notes():
    m = loop_metrics(make_loop([0, 240]))
    assert math.isnan(m["swing_ratio"])  # one beat with an off-beat eighth
    assert math.isnan(m["swing_ratio_product"])  # one IOI
    assert m["swing_confidence"] == 0.0


def test_microtiming_against_base_step_mean_std_rms_and_signed():
    """Two notes 10 ticks late on a 240 grid: |r| = [0,10,0,10,0,0,0,0]."""
    onsets = np.array([0, 250, 480, 730, 960, 1200, 1440, 1680])
    m = loop_metrics(make_loop(onsets, tempos=(100.0, 120.0)))
    ms_per_tick = 60000 / (100 * TPB)  # the first tempo
    assert m["base_step"] == 240  # median of 250,230,250,230,240,240,240
    assert m["microtiming_mean"] == 2.5
    assert m["microtiming_std"] == pytest.approx(math.sqrt((2 * 7.5**2 + 6 * 2.5**2) / 8))
    assert m["microtiming_rms"] == 5.0
    assert m["microtiming_rms_ms"] == pytest.approx(5.0 * ms_per_tick)
    assert m["microtiming_signed_mean"] == 2.5  # late, not just off
    assert m["microtiming_signed_mean_ms"] == pytest.approx(2.5 * ms_per_tick)
    assert m["syncopation_rate"] == 0.0  # 10 ≤ 0.2 × 240
    assert m["tempo_stability"] == 10.0  # population std of 100 and 120


def test_syncopation_and_on_off_beat_velocities():
    """1580 is 100 ticks from the 240 grid (> 0.2 × 240): the one off-beat note."""
    onsets = np.array([0, 240, 480, 720, 960, 1200, 1440, 1580, 1680])
    velocities = np.array([80, 80, 80, 80, 80, 80, 80, 40, 80])
    m = loop_metrics(make_loop(onsets, velocities=velocities))
    assert m["base_step"] == 240
    assert m["syncopation_rate"] == pytest.approx(1 / 9)
    assert m["onbeat_velocity"] == 80.0
    assert m["offbeat_velocity"] == 40.0
    assert m["offbeat_velocity_ratio"] == 0.5
    assert m["breakpoint_count"] == 0.0


# --- velocity ---------------------------------------------------------------------------------------------------


def test_ghost_accent_and_velocity_statistics():
    velocities = [30, 45, 46, 99, 100, 127, 80, 10]
    m = loop_metrics(straight_eighths(velocities=velocities))
    assert m["ghost_rate"] == 3 / 8  # 30, 45, 10 (≤ 45)
    assert m["accent_rate"] == 2 / 8  # 100, 127 (≥ 100)
    assert m["velocity_mean"] == 537 / 8
    assert m["velocity_median"] == 63.0  # (46 + 80) / 2
    assert m["velocity_std"] == pytest.approx(statistics.pstdev(velocities))
    assert m["velocity_range"] == 117.0
    assert m["velocity_distinct"] == 8.0


# --- layering, hats, collisions, roles -------------------------------------------------------------------------


def test_layering_counts_every_note_of_a_shared_onset():
    onsets = [0, 0, 0, 240, 480, 480, 720, 960]
    pitches = [KICK, CLOSED, SNARE, CLOSED, KICK, CLOSED, CLOSED, CLOSED]
    assert loop_metrics(make_loop(onsets, pitches))["layering_rate"] == 5 / 8


def test_hat_open_ratio_and_transitions():
    pitches = [CLOSED, PEDAL, OPEN, CLOSED, OPEN, OPEN, CLOSED, CLOSED]  # 44 (pedal) is a closed hat
    m = loop_metrics(straight_eighths(pitches=pitches))
    assert m["hat_open_ratio"] == 3 / 8
    assert m["hat_transition_rate"] == 4 / 7  # c→o, o→c, c→o, o→c


def test_hat_metrics_undefined_without_hats_and_td11_edge_pitches_count_as_hats():
    m = loop_metrics(straight_eighths(pitches=KICK))
    assert math.isnan(m["hat_open_ratio"]) and math.isnan(m["hat_transition_rate"])
    td11 = straight_eighths(pitches=[22, 26] * 4)  # Roland TD-11 closed / open hat edge
    assert math.isnan(loop_metrics(td11)["hat_open_ratio"])  # "other" under GM
    m = loop_metrics(td11, pitch_map="roland_td11")
    assert m["hat_open_ratio"] == 0.5 and m["hat_transition_rate"] == 1.0


def collision_loop(tpb=TPB) -> Loop:
    """Core ticks 0 (kick), 1 (hat), 480 (snare + hat), 960 (kick), 1440 (hat; the tom is not core)."""
    onsets = [0, 1, 480, 480, 960, 1440, 1440]
    pitches = [KICK, CLOSED, SNARE, CLOSED, KICK, CLOSED, TOM]
    return make_loop(onsets, pitches, tpb=tpb, length=4 * tpb)


def test_collision_rate_exact_versus_one_tick_tolerance():
    assert loop_metrics(collision_loop(), collision_tolerance_ticks=0)["drum_collision_rate"] == 1 / 5
    # Within 1 tick, the kick at 0 and the hat at 1 collide, seen from both ticks.
    assert loop_metrics(collision_loop(), collision_tolerance_ticks=1)["drum_collision_rate"] == 3 / 5


def test_collision_tolerance_scales_with_ticks_per_beat():
    """A 3-tick gap: outside 2 ticks at 480 tpb, inside the 4 ticks the default becomes at 960 tpb."""
    for tpb, expected in ((480, 0.0), (960, 1.0)):
        loop = make_loop([0, 3], [KICK, CLOSED], tpb=tpb, length=4 * tpb)
        assert loop_metrics(loop)["drum_collision_rate"] == expected
    assert math.isnan(loop_metrics(straight_eighths(pitches=TOM))["drum_collision_rate"])


def test_role_separation_is_gini_simpson_over_categories():
    assert loop_metrics(straight_eighths(pitches=[KICK, CLOSED] * 4))["role_separation"] == 0.5
    assert loop_metrics(straight_eighths())["role_separation"] == 0.0
    mixed = [KICK, SNARE, CLOSED, OPEN, TOM, RIDE, 37, 80]  # one of each of the 8 categories
    assert loop_metrics(straight_eighths(pitches=mixed))["role_separation"] == pytest.approx(7 / 8)


# --- repetition -------------------------------------------------------------------------------------------------


def sixteenth_groove(snare_in_last_beat: bool = False) -> Loop:
    """Two bars of 16th hats with a kick on beats 1 and 3: base step 120, segments of one beat."""
    hats = np.arange(32) * 120
    kicks = np.array([0, 960, 1920, 2880])
    onsets, pitches = np.concatenate([hats, kicks]), np.array([CLOSED] * 32 + [KICK] * 4)
    if snare_in_last_beat:
        onsets, pitches = np.append(onsets, 3600), np.append(pitches, SNARE)
    return make_loop(onsets, pitches, length=2 * BAR)


def test_identical_beats_repeat():
    m = loop_metrics(sixteenth_groove())
    assert m["base_step"] == 120
    assert m["variation_factor"] == 2 / 8  # "kick + 4 hats" and "4 hats"
    assert m["repeat_rate"] == 6 / 8
    m = loop_metrics(sixteenth_groove(snare_in_last_beat=True))
    assert m["variation_factor"] == 3 / 8 and m["repeat_rate"] == 5 / 8


def test_empty_segments_share_one_fingerprint_and_gaps_are_breakpoints():
    m = loop_metrics(make_loop([0, 120, 240, 360]))  # one beat of 16ths in a 4-beat loop
    assert m["variation_factor"] == 2 / 4  # the full segment and the empty one
    m = loop_metrics(make_loop([0, 120, 240, 1800]))
    assert m["breakpoint_count"] == 1.0  # 1560 > 4 × 120


def test_two_identical_bars_of_eighths():
    m = loop_metrics(straight_eighths())  # segments of 4 × 240 = half a bar, both the same
    assert m["variation_factor"] == 0.5 and m["repeat_rate"] == 0.5


# --- rhythm fingerprint -----------------------------------------------------------------------------------------


def test_rhythm_fingerprint_fractions_and_product_hash():
    # IOIs 480 (quarter), 240, 300 (eighth; 300 is exactly 25 % off), 160 (triplet), 120 (16th),
    # 0 and 350 (other: 0 is never a bucket, 350 is 27 % from a quarter).
    onsets = [0, 480, 720, 880, 1000, 1000, 1350, 1650]
    m = loop_metrics(make_loop(onsets))
    assert (m["rhythm_quarter"], m["rhythm_eighth"], m["rhythm_triplet"], m["rhythm_sixteenth"],
            m["rhythm_other"]) == (1 / 7, 2 / 7, 1 / 7, 1 / 7, 2 / 7)
    expected = json.dumps({"quarter": 1 / 7, "eighth": 2 / 7, "triplet": 1 / 7, "sixteenth": 1 / 7,
                           "other": 2 / 7}, sort_keys=True)
    assert m["rhythm_hash"] == hashlib.sha1(expected.encode()).hexdigest()


def test_rhythm_hash_leaves_out_other_when_absent_as_the_product_did():
    m = loop_metrics(straight_eighths())
    assert m["rhythm_eighth"] == 1.0 and m["rhythm_other"] == 0.0
    expected = '{"eighth": 1.0, "quarter": 0.0, "sixteenth": 0.0, "triplet": 0.0}'
    assert m["rhythm_hash"] == hashlib.sha1(expected.encode()).hexdigest()


# --- input handling ---------------------------------------------------------------------------------------------


def test_unsorted_multitrack_input_gives_the_sorted_result():
    kick_track = ([0, 480, 960, 1440], [KICK] * 4, [110, 90, 105, 95], 0)
    hat_track = (list(np.arange(8) * 240 + 5), [CLOSED, OPEN] * 4, [40, 70, 42, 72, 44, 74, 46, 76], 1)
    onsets = np.array(kick_track[0] + hat_track[0])
    pitches = np.array(kick_track[1] + hat_track[1])
    velocities = np.array(kick_track[2] + hat_track[2])
    channels = np.array([kick_track[3]] * 4 + [hat_track[3]] * 8)
    order = np.lexsort((pitches, onsets))
    shuffled = np.random.default_rng(7).permutation(onsets.size)
    sorted_loop = make_loop(onsets[order], pitches[order], velocities[order], channels=channels[order])
    track_loop = make_loop(onsets, pitches, velocities, channels=channels)
    shuffled_loop = make_loop(onsets[shuffled], pitches[shuffled], velocities[shuffled], channels=channels[shuffled])
    expected = loop_metrics(sorted_loop)
    assert expected["drum_collision_rate"] == 0.0  # each hat is 5 ticks after its kick: beyond 2 ticks
    assert expected["layering_rate"] == 0.0 and expected["hat_open_ratio"] == 0.5
    assert_metrics_equal(loop_metrics(track_loop), expected)
    assert_metrics_equal(loop_metrics(shuffled_loop), expected)
    events = canonical_events(shuffled_loop)
    assert events["velocity"].tolist() == velocities[order].tolist()


def test_zero_length_hits_are_notes():
    onsets = [0, 0, 240, 480, 720]
    with_length = loop_metrics(make_loop(onsets, [KICK, CLOSED, CLOSED, CLOSED, CLOSED], durations=60))
    zero_length = loop_metrics(make_loop(onsets, [KICK, CLOSED, CLOSED, CLOSED, CLOSED], durations=0))
    assert_metrics_equal(zero_length, with_length)
    assert zero_length["layering_rate"] == 2 / 5
    assert zero_length["fill_density"] == 5 * 240 / BAR


def test_empty_and_single_note_loops_are_undefined_not_zero():
    empty = loop_metrics(make_loop([]))
    assert empty["rhythm_hash"] is None
    assert all(math.isnan(value) for name, value in empty.items() if name != "rhythm_hash")
    single = loop_metrics(make_loop([0], KICK, 100))
    for name in ("base_step", "microtiming_rms", "fill_density", "repeat_rate", "swing_ratio", "rhythm_quarter"):
        assert math.isnan(single[name]), name
    assert single["accent_rate"] == 1.0 and single["role_separation"] == 0.0
    assert single["drum_collision_rate"] == 0.0 and single["rhythm_hash"] is None


def test_no_tempo_event_means_midi_default_120_bpm():
    onsets = np.array([0, 250, 480, 720])
    m = loop_metrics(make_loop(onsets, tempos=()))
    assert math.isnan(m["tempo_stability"])
    assert m["microtiming_rms_ms"] == pytest.approx(m["microtiming_rms"] * MS_PER_TICK_120)


def test_negative_collision_tolerance_is_rejected():
    with pytest.raises(ValueError, match="collision_tolerance_ticks"):
        loop_metrics(straight_eighths(), collision_tolerance_ticks=-1)


# --- frames and schemas -----------------------------------------------------------------------------------------


def test_metrics_frame_rows_columns_and_schema():
    loops = [straight_eighths(loop_id="a"), sixteenth_groove(), collision_loop()]
    loops[1] = make_loop(loops[1].onset, loops[1].pitch, length=2 * BAR, loop_id="b")
    loops[2] = make_loop(loops[2].onset, loops[2].pitch, loop_id="c")
    frame = metrics_frame(loops)
    assert list(frame.columns) == list(METRIC_NAMES) and frame.index.name == "loop_id"
    assert frame.index.tolist() == ["a", "b", "c"]
    assert frame.loc["b", "repeat_rate"] == 6 / 8
    LOOP_METRICS_SCHEMA.validate(frame)
    broken = frame.copy()
    broken.loc["a", "ghost_rate"] = 1.5
    with pytest.raises(pandera.errors.SchemaError):
        LOOP_METRICS_SCHEMA.validate(broken)
    broken = frame.copy()
    broken.loc["a", "microtiming_rms"] = np.inf
    with pytest.raises(pandera.errors.SchemaError):
        LOOP_METRICS_SCHEMA.validate(broken)
    broken = frame.copy()
    broken.loc["a", "rhythm_other"] = 0.5  # the fractions no longer sum to 1
    with pytest.raises(pandera.errors.SchemaError):
        LOOP_METRICS_SCHEMA.validate(broken)


def test_metric_names_are_the_ones_other_stages_read():
    assert set(METRIC_NAMES) >= {
        "base_step", "swing_ratio", "swing_confidence", "ghost_rate", "accent_rate", "velocity_mean",
        "velocity_median", "velocity_std", "velocity_range", "velocity_distinct", "microtiming_mean",
        "microtiming_std", "microtiming_rms", "microtiming_rms_ms", "microtiming_signed_mean",
        "microtiming_signed_mean_ms", "syncopation_rate", "onbeat_velocity", "offbeat_velocity",
        "offbeat_velocity_ratio", "fill_density", "note_density_per_bar", "layering_rate", "hat_open_ratio",
        "hat_transition_rate", "variation_factor", "repeat_rate", "breakpoint_count", "drum_collision_rate",
        "role_separation", "rhythm_quarter", "rhythm_eighth", "rhythm_triplet", "rhythm_sixteenth", "rhythm_other",
        "rhythm_hash", "tempo_stability"}


def test_canonical_events_columns_and_values():
    onsets = [0, 0, 250, 470, 1930]  # the last note is in bar 2
    loop = make_loop(onsets, [KICK, CLOSED, CLOSED, SNARE, OPEN], [100, 40, 60, 127, 80], durations=[0, 60, 60, 60, 60],
                     length=2 * BAR, source={"file_digest": "abc123"}, loop_id="L1")
    events = canonical_events(loop, loop_metrics(loop))
    CANONICAL_EVENTS_SCHEMA.validate(events)
    assert events["bar_index"].tolist() == [0, 0, 0, 0, 1]
    assert events["beat_index"].tolist() == [0, 0, 0, 0, 0]
    assert events["beat_frac"].tolist() == [0.0, 0.0, 250 / 480, 470 / 480, 10 / 480]
    assert events["grid_onset"].tolist() == [0.0, 0.0, 240.0, 480.0, 1920.0]  # the 16th grid
    assert events["microtiming_offset"].tolist() == [0.0, 0.0, 10.0, -10.0, 10.0]
    assert events["swing_phase"].tolist() == ["even", "even", "even", "even", "even"]
    assert events["ioi_bucket"].tolist() == ["other", "eighth", "eighth", "other", "none"]
    assert events["instrument_role"].tolist() == ["kick", "closed_hat", "closed_hat", "snare", "open_hat"]
    assert events["is_ghost"].tolist() == [False, True, False, False, False]
    assert events["intensity"].tolist() == pytest.approx([100 / 127, 40 / 127, 60 / 127, 1.0, 80 / 127])
    assert events["duration_ticks"].tolist() == [0, 60, 60, 60, 60]
    assert (events["program"] == 0).all() and (events["channel"] == 9).all()
    assert set(events["file_digest"]) == {"abc123"} and set(events["loop_id"]) == {"L1"}


def test_canonical_events_on_the_product_base_step_grid():
    loop = make_loop([0, 100, 200, 310, 400], length=BAR)  # base step 100
    events = canonical_events(loop, loop_metrics(loop), grid="base_step")
    assert events["grid_onset"].tolist() == [0.0, 100.0, 200.0, 300.0, 400.0]
    assert events["microtiming_offset"].tolist() == [0.0, 0.0, 0.0, 10.0, 0.0]
    assert events["swing_phase"].tolist() == ["even", "odd", "even", "odd", "even"]
    assert events["file_digest"].isna().all()
    CANONICAL_EVENTS_SCHEMA.validate(events)
    with pytest.raises(ValueError, match="grid"):
        canonical_events(loop, grid="eighth")


def test_canonical_events_frame_is_the_concatenation_of_per_loop_tables():
    loops = [straight_eighths(loop_id="a", source={"file_digest": "d1"}), make_loop([0, 100, 200, 310], loop_id="b")]
    metrics = metrics_frame(loops)
    for grid in ("sixteenth", "base_step"):
        bulk = canonical_events_frame(loops, metrics, grid=grid)
        one_by_one = pd.concat([canonical_events(loop, metrics.loc[loop.loop_id], grid=grid) for loop in loops],
                               ignore_index=True)
        pd.testing.assert_frame_equal(bulk, one_by_one)
        CANONICAL_EVENTS_SCHEMA.validate(bulk)
    assert canonical_events_frame(loops, metrics, grid="base_step")["grid_onset"].tolist()[-4:] == [0, 100, 200, 300]
    CANONICAL_EVENTS_SCHEMA.validate(canonical_events_frame([]))
    LOOP_METRICS_SCHEMA.validate(metrics_frame([]))


# --- real data --------------------------------------------------------------------------------------------------


def groove_midi_windows(style: str, n_files: int) -> list[Loop]:
    """4-bar windows (≥ 16 notes) of the first ``n_files`` 4/4 "beat" files of a Groove MIDI style."""
    import symusic  # a declared dependency: a missing one must fail, not skip
    info = pd.read_csv(GROOVE_MIDI / "info.csv")
    rows = info[(info["style"] == style) & (info["beat_type"] == "beat") & (info["time_signature"] == "4-4")]
    loops = []
    for row in rows.head(n_files).itertuples():
        score = symusic.Score(str(GROOVE_MIDI / row.midi_filename))
        notes = score.tracks[0].notes.numpy()
        window = 16 * score.tpq
        onset = notes["time"].astype(np.int64)
        for start in range(0, int(onset.max()) + 1, window):
            inside = (onset >= start) & (onset < start + window)
            if inside.sum() >= 16:
                loops.append(Loop(f"{row.id}@{start}", score.tpq, onset[inside] - start, notes["duration"][inside],
                                  notes["pitch"][inside], notes["velocity"][inside],
                                  np.full(inside.sum(), 9), window, (4, 4), tuple(t.qpm for t in score.tempos)))
    return loops


@pytest.mark.skipif(not (GROOVE_MIDI / "info.csv").exists(), reason=f"Groove MIDI not found at {GROOVE_MIDI}")
def test_groove_midi_jazz_swings_and_rock_is_straight():
    jazz = metrics_frame(groove_midi_windows("jazz/swing", 3), pitch_map="roland_td11")
    rock = metrics_frame(groove_midi_windows("rock", 3), pitch_map="roland_td11")
    assert len(jazz) >= 20 and len(rock) >= 20
    LOOP_METRICS_SCHEMA.validate(pd.concat([jazz, rock]))
    assert jazz["swing_ratio"].median() > 1.4
    assert 0.9 < rock["swing_ratio"].median() < 1.1
    # The product's ratio cannot tell them apart: both sit near 1.
    assert abs(jazz["swing_ratio_product"].median() - rock["swing_ratio_product"].median()) < 0.15
    assert 15 < rock["microtiming_rms_16th_ms"].median() < 45


def test_a_downbeat_played_early_stays_in_bar_zero():
    # Stage 1 keeps a hit played just before the first bar line at a negative onset (the drummer's timing).
    on_time = make_loop([0, 240, 480, 720] * 1 + [960, 1200, 1440, 1680], length=BAR)
    early = make_loop([-30, 240, 480, 720, 960, 1200, 1440, 1680], length=BAR)
    events = canonical_events(early, loop_metrics(early))
    CANONICAL_EVENTS_SCHEMA.validate(events)
    assert events["bar_index"].tolist()[0] == 0 and events["beat_index"].tolist()[0] == 0
    assert events["beat_frac"].tolist()[0] == 0.0 and events["microtiming_offset"].tolist()[0] == -30.0
    # no extra repetition segment before the loop starts
    assert loop_metrics(early)["variation_factor"] == loop_metrics(on_time)["variation_factor"]

"""Loop labels (tempo, meter, genre taxonomy, key, swing, style tags, emotion) and similarity pairs."""


import numpy as np
import pandas as pd
import pandera.errors
import pytest
import yaml

from mixai_pipeline import settings
from mixai_pipeline.lib.midi import labels, pairs
from mixai_pipeline.lib.midi.loop import Loop

GROOVE_INFO = settings.groove_midi_dir() / "info.csv"
TPB = 480
BAR = 4 * TPB  # ticks per 4/4 bar


def make_loop(
    loop_id="loop",
    *,
    pitches=(36, 42, 38, 42),
    durations=None,
    channel=9,
    step=TPB // 2,
    bars=1,
    time_signature=(4, 4),
    tempos=(120.0,),
    source=None,
):
    """A loop with one note every ``step`` ticks; ``channel`` may be a scalar or one value per note."""
    pitches = np.asarray(pitches)
    n = pitches.size
    channels = np.broadcast_to(np.asarray(channel), (n,)).copy()
    return Loop(
        loop_id=loop_id,
        ticks_per_beat=TPB,
        onset=np.arange(n) * step,
        duration=np.asarray(durations if durations is not None else [step] * n),
        pitch=pitches,
        velocity=np.full(n, 90),
        channel=channels,
        length_ticks=bars * TPB * 4 * time_signature[0] // time_signature[1],
        time_signature=time_signature,
        tempos_bpm=tuple(tempos),
        source={"style": "funk"} if source is None else source,
    )


def drum_loop_with_notes_per_bar(loop_id, notes_per_bar, **kwargs):
    """A 2-bar drum loop holding exactly ``notes_per_bar`` notes per bar."""
    n = int(2 * notes_per_bar)
    return make_loop(loop_id, pitches=[42] * n, step=max(1, 2 * BAR // n), bars=2, **kwargs)


# ============================================================================ tempo and meter


@pytest.mark.parametrize(
    "bpm, bucket",
    [(60.0, "slow"), (89.99, "slow"), (90.0, "medium"), (129.99, "medium"), (130.0, "fast"), (200.0, "fast")],
)
def test_tempo_bucket_bounds(bpm, bucket):
    assert labels.tempo_bucket_of(bpm) == bucket
    assert labels.loop_labels(make_loop(tempos=(bpm,)), None)["tempo_bucket"] == bucket


@pytest.mark.parametrize("bpm", [None, float("nan"), 0.0, -5.0])
def test_tempo_bucket_unknown_without_a_tempo(bpm):
    assert labels.tempo_bucket_of(bpm) == "unknown"


def test_tempo_comes_from_the_midi_first_then_the_pack_metadata():
    from_midi = labels.loop_labels(make_loop(tempos=(140.0, 90.0), source={"bpm": 80}), None)
    assert (from_midi["tempo_bpm"], from_midi["tempo_source"], from_midi["tempo_bucket"]) == (140.0, "midi", "fast")
    from_metadata = labels.loop_labels(make_loop(tempos=(), source={"bpm": "80"}), None)
    assert (from_metadata["tempo_bpm"], from_metadata["tempo_source"]) == (80.0, "metadata")
    assert from_metadata["tempo_bucket"] == "slow"
    neither = labels.loop_labels(make_loop(tempos=(), source={}), None)
    assert (neither["tempo_bpm"], neither["tempo_source"], neither["tempo_bucket"]) == (None, "none", "unknown")


@pytest.mark.parametrize(
    "signature, meter, meter_class",
    [
        ((4, 4), "4/4", "simple"),
        ((3, 4), "3/4", "simple"),
        ((2, 2), "2/2", "simple"),
        ((6, 8), "6/8", "compound"),
        ((9, 8), "9/8", "compound"),
        ((12, 8), "12/8", "compound"),
        ((5, 4), "5/4", "odd"),
        ((7, 8), "7/8", "odd"),
        ((5, 8), "5/8", "odd"),
        ((0, 4), "unknown", "unknown"),
    ],
)
def test_meter_and_its_class(signature, meter, meter_class):
    assert labels.meter_of(signature) == (meter, meter_class)


def test_meter_of_a_loop_comes_from_its_time_signature():
    row = labels.loop_labels(make_loop(time_signature=(6, 8)), None)
    assert (row["meter"], row["meter_class"]) == ("6/8", "compound")


# ============================================================================ genre taxonomy


def groove_styles() -> list[str]:
    return sorted(pd.read_csv(GROOVE_INFO)["style"].dropna().unique())


@pytest.mark.skipif(not GROOVE_INFO.exists(), reason=f"Groove MIDI metadata not present at {GROOVE_INFO}")
def test_every_groove_midi_style_maps_exactly_into_the_taxonomy():
    taxonomy = labels.load_taxonomy()
    styles = groove_styles()
    assert len(styles) == 66  # Groove MIDI v1.0.0
    for style in styles:
        match = labels.resolve_style(style, taxonomy)
        assert match.match == "exact", style
        assert match.reason is None
        assert match.genre in taxonomy.genre_names
        assert match.sub_genre in taxonomy.genres[match.genre]
    # and the table holds nothing that is not in the dataset
    table = yaml.safe_load(labels.TAXONOMY_PATH.read_text())["styles"]
    assert sorted(table) == styles


@pytest.mark.parametrize(
    "style, genre, sub_genre",
    [
        ("funk", "funk", "general"),
        ("funk/fast", "funk", "general"),  # a tempo word is not a sub-genre
        ("funk/rock", "funk", "funk_rock"),
        ("jazz/funk", "jazz", "jazz_funk"),
        ("punk", "rock", "punk"),
        ("latin/brazilian-samba", "latin", "samba"),
        ("latin/samba", "latin", "samba"),
        ("latin/dominican-merengue", "latin", "merengue"),
        ("latin/venezuelan-merengue", "latin", "venezuelan_merengue"),
        ("afrocuban/bembe", "latin", "bembe"),
        ("neworleans/secondline", "jazz", "second_line"),
        ("neworleans/funk", "funk", "new_orleans_funk"),
        ("dance/disco", "electronic", "disco"),
        ("gospel", "soul", "gospel"),
        ("middleeastern", "world", "middle_eastern"),
        ("Rock/Indie", "rock", "indie"),  # case and separators do not matter
    ],
)
def test_known_styles_map_to_genre_and_sub_genre(style, genre, sub_genre):
    match = labels.resolve_style(style)
    assert (match.genre, match.sub_genre, match.match) == (genre, sub_genre, "exact")


def test_styles_outside_the_table_resolve_through_aliases_or_stay_unknown_with_a_reason():
    alias = labels.resolve_style("Hip-Hop")
    assert (alias.genre, alias.sub_genre, alias.match) == ("hiphop", "general", "alias")
    sub_alias = labels.resolve_style("bossa nova")
    assert (sub_alias.genre, sub_alias.sub_genre, sub_alias.match) == ("latin", "bossa_nova", "alias")
    partial = labels.resolve_style("rock/mathcore")
    assert (partial.genre, partial.sub_genre, partial.match) == ("rock", "general", "partial")
    assert "mathcore" in partial.reason
    unknown = labels.resolve_style("polka")
    assert (unknown.genre, unknown.sub_genre, unknown.match) == ("unknown", "unknown", "unknown")
    assert "polka" in unknown.reason
    ambiguous = labels.resolve_style("shuffle")  # rock/shuffle or blues/shuffle: refuse to guess
    assert ambiguous.genre == "unknown"
    missing = labels.resolve_style(None)
    assert (missing.genre, missing.reason) == ("unknown", "no style in the source metadata")


def test_unknown_style_on_a_loop_is_labelled_unknown_with_the_reason():
    row = labels.loop_labels(make_loop(source={"style": "polka"}), None)
    assert (row["genre"], row["sub_genre"], row["genre_match"]) == ("unknown", "unknown", "unknown")
    assert row["genre_reason"] == "style 'polka' is not in the taxonomy"
    assert row["source_style"] == "polka"


def test_taxonomy_validation_rejects_a_style_mapped_to_an_undeclared_sub_genre(tmp_path):
    bad = {"genres": {"rock": {"sub_genres": {"indie": []}}}, "styles": {"rock/grunge": ["rock", "grunge"]}}
    path = tmp_path / "taxonomy.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="undeclared rock/grunge"):
        labels.load_taxonomy(path)


# ============================================================================ key


def test_key_of_a_c_major_scale_and_arpeggio():
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    arpeggio = [48, 52, 55, 60]
    loop = make_loop(pitches=scale + arpeggio, channel=0, source={})
    key = labels.detect_key(loop)
    assert (key.root, key.mode, key.name) == ("C", "major", "C major")
    # equal durations: the profile is the note count per pitch class (C ×4, E ×2, G ×2, D F A B ×1)
    profile = [4, 0, 1, 0, 2, 1, 0, 2, 0, 1, 0, 1]
    expected = np.corrcoef(profile, labels.KRUMHANSL_KESSLER_MAJOR)[0, 1]
    assert key.correlation == pytest.approx(expected) == pytest.approx(0.96329, abs=1e-5)
    row = labels.loop_labels(loop, None)
    assert (row["key"], row["key_root"], row["key_mode"]) == ("C major", "C", "major")
    assert row["key_confidence"] == pytest.approx(key.correlation)


def test_key_of_an_a_minor_arpeggio_and_harmonic_minor_scale():
    pitches = [57, 60, 64, 69, 57, 60, 64, 69] + [57, 59, 60, 62, 64, 65, 68, 69]
    durations = [TPB] * 8 + [TPB // 2] * 8
    key = labels.detect_key(make_loop(pitches=pitches, durations=durations, channel=0))
    assert key.name == "A minor"
    assert key.correlation > 0.8


def test_key_uses_durations_not_just_note_counts():
    # the same notes; holding E and B long instead of C and G tips the estimate from C major to E minor
    pitches = [60, 64, 67, 71]
    c_long = labels.estimate_key(np.array(pitches), np.array([4 * TPB, TPB, 4 * TPB, TPB]))
    e_long = labels.estimate_key(np.array(pitches), np.array([TPB, 4 * TPB, TPB, 4 * TPB]))
    assert c_long.name == "C major"
    assert e_long.name == "E minor"


def test_drum_only_loop_has_no_key_and_drums_do_not_disturb_a_pitched_key():
    assert labels.detect_key(make_loop(pitches=[36, 38, 42, 46] * 4, channel=9)) is None
    row = labels.loop_labels(make_loop(pitches=[36, 38, 42, 46] * 4, channel=9), None)
    assert (row["key"], row["key_root"], row["key_mode"], row["key_confidence"]) == (None, None, None, None)
    # F# and C# drum pitches (42, 37) on channel 9 around a C-major line: still C major
    pitched = [60, 62, 64, 65, 67, 69, 71, 72]
    mixed = make_loop(pitches=pitched + [42, 37] * 8, channel=[0] * 8 + [9] * 16)
    assert labels.detect_key(mixed).name == "C major"


def test_too_few_or_flat_pitch_profiles_give_no_key():
    assert labels.estimate_key(np.array([60, 64, 67]), np.array([TPB] * 3)) is None  # below the minimum
    chromatic = np.arange(60, 72)
    assert labels.estimate_key(chromatic, np.full(12, TPB)) is None  # no tonal centre


# ============================================================================ swing


@pytest.mark.parametrize(
    "ratio, phase",
    [
        (1.0, "straight"),
        (1.09, "straight"),
        (1.10, "light_swing"),
        (1.49, "light_swing"),
        (1.50, "swung"),
        (2.0, "swung"),
        (0.8, "straight"),  # an early (rushed) off-beat eighth is not swing
        (1.64, "swung"),  # Groove MIDI's jazz median
        (2.49, "swung"),
        (2.50, "hard_swing"),
        (3.0, "hard_swing"),
        (float("nan"), "unknown"),
        (0.0, "unknown"),
        (None, "unknown"),
    ],
)
def test_swing_phase_bounds(ratio, phase):
    assert labels.swing_phase_of(ratio) == phase


def test_swing_phase_on_a_loop_comes_from_the_metrics_row():
    assert labels.loop_labels(make_loop(), {"swing_ratio": 1.7})["swing_phase"] == "swung"
    assert labels.loop_labels(make_loop(), {})["swing_phase"] == "unknown"


# ============================================================================ style tags


def tags_of(loop, metrics=None):
    return labels.loop_labels(loop, metrics or {})


def test_busy_and_sparse_follow_notes_per_bar():
    busy = tags_of(drum_loop_with_notes_per_bar("busy", 28))
    assert busy["notes_per_bar"] == 28.0
    assert (busy["tag_busy"], busy["tag_sparse"], busy["style_tags"]) == (True, False, "busy")
    almost = tags_of(drum_loop_with_notes_per_bar("almost", 27.5))
    assert (almost["notes_per_bar"], almost["style_tags"]) == (27.5, "")
    normal = tags_of(drum_loop_with_notes_per_bar("normal", 12))
    assert (normal["tag_busy"], normal["tag_sparse"], normal["style_tags"]) == (False, False, "")
    sparse = tags_of(drum_loop_with_notes_per_bar("sparse", 8))
    assert (sparse["tag_busy"], sparse["tag_sparse"], sparse["style_tags"]) == (False, True, "sparse")
    assert tags_of(drum_loop_with_notes_per_bar("not_sparse", 8.5))["tag_sparse"] is False


def test_busy_also_from_heavy_layering_per_grid_step():
    layered = tags_of(drum_loop_with_notes_per_bar("layered", 12), {"fill_density": 2.0})
    assert layered["tag_busy"] is True
    light = tags_of(drum_loop_with_notes_per_bar("light", 12), {"fill_density": 1.99})
    assert light["tag_busy"] is False


def test_funky_needs_both_ghost_notes_and_syncopation():
    loop = drum_loop_with_notes_per_bar("groove", 12)
    assert tags_of(loop, {"ghost_rate": 0.35, "syncopation_rate": 0.55})["tag_funky"] is True
    assert tags_of(loop, {"ghost_rate": 0.60, "syncopation_rate": 0.50})["tag_funky"] is False
    assert tags_of(loop, {"ghost_rate": 0.34, "syncopation_rate": 0.70})["tag_funky"] is False
    assert tags_of(loop, {"ghost_rate": 0.60})["tag_funky"] is False  # syncopation undefined


def test_laid_back_and_pushed_from_the_signed_microtiming_mean():
    loop = drum_loop_with_notes_per_bar("feel", 12)  # 120 BPM, 480 tpb: 1 tick = 60000 / (120 × 480) ms
    assert tags_of(loop, {"microtiming_signed_mean_ms": 8.0})["style_tags"] == "laid_back"
    assert tags_of(loop, {"microtiming_signed_mean_ms": -8.0})["style_tags"] == "pushed"
    assert tags_of(loop, {"microtiming_signed_mean_ms": 7.9})["style_tags"] == ""
    # without the ms value the tick offset is converted with the loop's tempo: 16 ticks = 16.7 ms
    assert tags_of(loop, {"microtiming_signed_mean": 16.0})["tag_laid_back"] is True
    assert tags_of(loop, {"microtiming_signed_mean": -7.0})["tag_pushed"] is False  # 7.3 ms


def test_several_tags_are_listed_in_vocabulary_order():
    loop = drum_loop_with_notes_per_bar("all", 32)
    row = tags_of(loop, {"ghost_rate": 0.4, "syncopation_rate": 0.6, "microtiming_signed_mean_ms": -12.0})
    assert row["style_tags"] == "busy,funky,pushed"


# ============================================================================ emotion


def test_emotion_of_a_fast_dense_loud_funk_loop_has_the_documented_value():
    loop = drum_loop_with_notes_per_bar("hot", 28, tempos=(180.0,))
    row = labels.loop_labels(loop, {"ghost_rate": 0.45, "syncopation_rate": 0.6, "velocity_mean": 120.0})
    # valence = (.45 × 0.5 [funk] + .2 × 1 [tempo] + .15 × 0.6 [ghosts]) / .8 (drums: no mode term)
    assert row["emotion_valence"] == pytest.approx((0.45 * 0.5 + 0.2 * 1.0 + 0.15 * 0.6) / 0.8)
    # arousal = .35 × 1 [tempo] + .25 × 1 [density] + .25 × 1 [velocity] + .15 × 0.65 [funk]
    assert row["emotion_arousal"] == pytest.approx(0.35 + 0.25 + 0.25 + 0.15 * 0.65)
    assert row["emotion"] == "happy"
    assert row["emotion_method"] == "heuristic-v1"
    assert row["emotion_confidence"] == pytest.approx(labels.EMOTION_MAX_CONFIDENCE)


def test_emotion_confidence_drops_when_inputs_are_missing():
    loop = drum_loop_with_notes_per_bar("plain", 12, tempos=(100.0,))
    full = labels.loop_labels(loop, {"ghost_rate": 0.1, "syncopation_rate": 0.1, "velocity_mean": 80.0})
    no_metrics = labels.loop_labels(loop, None)
    # valence keeps genre + tempo (.65 of .8); arousal keeps tempo + density + genre (.75 of 1)
    assert no_metrics["emotion_confidence"] == pytest.approx(0.5 * (0.65 / 0.8 + 0.75) / 2)
    no_style = labels.loop_labels(make_loop(tempos=(), source={}, pitches=[42] * 24, step=80), None)
    assert full["emotion_confidence"] > no_metrics["emotion_confidence"] > no_style["emotion_confidence"] > 0
    for row in (full, no_metrics, no_style):
        assert -1.0 <= row["emotion_valence"] <= 1.0
        assert 0.0 <= row["emotion_arousal"] <= 1.0


def test_emotion_directions_minor_slow_soft_is_sadder_and_calmer():
    minor = [57, 60, 64, 69] * 2
    sad = make_loop("sad", pitches=minor, durations=[TPB] * 8, channel=0, tempos=(60.0,), source={"style": "blues"})
    happy = make_loop("happy", pitches=[60, 64, 67, 72] * 2, channel=0, tempos=(150.0,), source={"style": "pop"})
    sad_row = labels.loop_labels(sad, {"velocity_mean": 40.0, "ghost_rate": 0.0, "syncopation_rate": 0.0})
    # valence = .45 × −0.2 [blues] + .2 × −0.5 [60 BPM] + .2 × −0.7 [minor] + .15 × −0.2 [no ghosts]
    assert sad_row["emotion_valence"] == pytest.approx(-0.36)
    happy_row = labels.loop_labels(happy, {"velocity_mean": 110.0, "ghost_rate": 0.1, "syncopation_rate": 0.1})
    assert sad_row["key"] == "A minor" and happy_row["key"] == "C major"
    assert sad_row["emotion_valence"] < 0 < happy_row["emotion_valence"]
    assert sad_row["emotion_arousal"] < 0.5 < happy_row["emotion_arousal"]
    assert (sad_row["emotion"], happy_row["emotion"]) == ("sad", "happy")


def test_emotion_stays_in_bounds_on_random_inputs():
    rng = np.random.default_rng(7)
    loops, rows = [], {}
    styles = ["funk", "punk", "reggae/slow", "polka", None]
    for i in range(60):
        loop_id = f"r{i}"
        loops.append(
            drum_loop_with_notes_per_bar(
                loop_id,
                int(rng.integers(1, 60)),
                tempos=(float(rng.uniform(20, 300)),),
                source={"style": styles[i % 5]},
            )
        )
        rows[loop_id] = {
            "ghost_rate": rng.uniform(0, 1),
            "syncopation_rate": rng.uniform(0, 1),
            "velocity_mean": rng.uniform(0, 127) if i % 3 else np.nan,
        }
    frame = labels.labels_frame(loops, pd.DataFrame.from_dict(rows, orient="index"))
    assert frame["emotion_valence"].between(-1, 1).all()
    assert frame["emotion_arousal"].between(0, 1).all()
    assert frame["emotion_confidence"].between(0, labels.EMOTION_MAX_CONFIDENCE).all()
    assert set(frame["emotion"]) <= set(labels.EMOTIONS)


# ============================================================================ frame and schema


def test_labels_frame_matches_loop_labels_and_the_schema():
    loops = [
        make_loop("b", source={"style": "rock/halftime"}, tempos=(85.0,)),
        make_loop("a", pitches=[60, 62, 64, 65, 67, 69, 71, 72], channel=0, source={"style": "jazz/swing"}),
    ]
    metrics = pd.DataFrame(
        {"swing_ratio": [2.0, 1.0], "ghost_rate": [0.2, 0.0], "rhythm_hash": ["x", "y"]}, index=["a", "b"]
    )
    frame = labels.labels_frame(loops, metrics)
    assert list(frame.index) == ["b", "a"]  # the loops' order, not the metrics'
    assert list(frame.columns) == list(labels.LOOP_LABELS_SCHEMA.columns)
    assert frame.loc["b", "genre"] == "rock" and frame.loc["b", "sub_genre"] == "halftime"
    assert frame.loc["a", "swing_phase"] == "swung" and frame.loc["b", "swing_phase"] == "straight"
    assert frame.loc["b", "tempo_bucket"] == "slow"
    single = labels.loop_labels(loops[1], metrics.loc["a"])
    for column, value in frame.loc["a"].items():
        expected = None if isinstance(value, float) and np.isnan(value) else value
        assert single[column] == expected, column
    labels.LOOP_LABELS_SCHEMA.validate(frame)


def test_schema_rejects_labels_outside_the_vocabulary():
    frame = labels.labels_frame([make_loop("a")], None)
    frame.loc["a", "genre"] = "polka"
    with pytest.raises(pandera.errors.SchemaError):
        labels.LOOP_LABELS_SCHEMA.validate(frame)
    mismatched = labels.labels_frame([make_loop("a", source={"style": "rock/indie"})], None)
    mismatched.loc["a", "genre"] = "jazz"  # indie is a rock sub-genre
    with pytest.raises(pandera.errors.SchemaError, match="not a sub-genre of genre"):
        labels.LOOP_LABELS_SCHEMA.validate(mismatched)


def test_labels_frame_rejects_duplicate_loop_ids():
    with pytest.raises(ValueError, match="duplicate loop_id"):
        labels.labels_frame([make_loop("a"), make_loop("a")], None)


# ============================================================================ similarity pairs


def metrics_frame(rows: dict[str, list[float]], columns=("m1", "m2", "m3")) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(columns))


BASIC = {
    "a": [1.0, 2.0, 3.0],
    "b": [1.0, 2.0, 3.0],  # identical to a
    "c": [3.0, 1.0, 0.0],
    "d": [2.0, 1.5, 0.0],  # close to c (0.968 after z-scoring)
    "e": [-4.0, 5.0, 9.0],
}


def test_identical_rows_are_each_others_nearest_with_similarity_one_and_never_self():
    result = pairs.similarity_pairs(metrics_frame(BASIC), k=4, threshold=-1.0)
    assert list(result.columns) == ["loop_id", "other_id", "rank", "similarity"]
    first = result[result["rank"] == 1].set_index("loop_id")
    assert first.loc["a", "other_id"] == "b" and first.loc["b", "other_id"] == "a"
    assert first.loc["a", "similarity"] == 1.0 and first.loc["b", "similarity"] == 1.0
    assert first.loc["c", "other_id"] == "d" and first.loc["d", "other_id"] == "c"
    assert (result["loop_id"] != result["other_id"]).all()
    assert result.groupby("loop_id").size().eq(4).all()  # k = 4 = everyone else
    c_row = result[result["loop_id"] == "c"]
    assert c_row["other_id"].tolist() == ["d", "a", "b", "e"]  # a and b tie: the smaller id ranks first
    assert c_row["similarity"].tolist() == pytest.approx([0.96835, 0.819451, 0.819451, -0.999445], abs=1e-6)


def test_threshold_and_k_are_respected():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(300, 6)), index=[f"l{i:03d}" for i in range(300)])
    result = pairs.similarity_pairs(frame, k=3, threshold=0.5)
    assert (result["similarity"] >= 0.5).all()
    sizes = result.groupby("loop_id").size()
    assert sizes.max() == 3 and sizes.min() >= 1
    for _, group in result.groupby("loop_id"):
        assert list(group["rank"]) == list(range(1, len(group) + 1))
        assert group["similarity"].is_monotonic_decreasing
    strict = pairs.similarity_pairs(metrics_frame(BASIC), k=5, threshold=0.99)
    assert sorted(zip(strict["loop_id"], strict["other_id"], strict["similarity"], strict["rank"], strict=True)) == [
        ("a", "b", 1.0, 1),
        ("b", "a", 1.0, 1),
    ]  # c ~ d is 0.968: below the threshold; e has nobody


def test_matches_brute_force_on_random_data_with_duplicates():
    """The group-maximum pruning must give exactly the brute-force top-k, ties included."""
    rng = np.random.default_rng(11)
    values = np.round(rng.normal(size=(2500, 5)), 1)
    values[-300:] = values[:300]  # exact duplicates
    values[1000:1040] = values[7]  # a large tie group
    ids = np.array([f"l{i:05d}" for i in rng.permutation(2500)])
    frame = pd.DataFrame(values, index=ids)
    k, threshold = 5, 0.3
    result = pairs.similarity_pairs(frame, k=k, threshold=threshold)

    ordered = frame.sort_index()
    features, _ = pairs.metric_features(ordered)
    scores = np.round((features @ features.T).astype(np.float64), pairs.SIMILARITY_DECIMALS)
    np.fill_diagonal(scores, -np.inf)
    expected = []
    for i in range(len(ordered)):
        order = np.lexsort((np.arange(len(ordered)), -scores[i]))[:k]
        kept = [j for j in order if scores[i, j] >= threshold]
        expected += [(ordered.index[i], ordered.index[j], rank) for rank, j in enumerate(kept, start=1)]
    assert list(zip(result["loop_id"], result["other_id"], result["rank"], strict=True)) == expected
    tie_group = result[result["loop_id"] == ids[7]]
    assert (tie_group["similarity"] == 1.0).all() and tie_group["other_id"].is_monotonic_increasing


def test_zero_variance_nan_and_text_columns_are_handled():
    frame = metrics_frame(BASIC)
    frame["constant"] = 7.0
    frame["all_missing"] = np.nan
    frame["rhythm_hash"] = ["h1", "h2", "h3", "h4", "h5"]
    features, used = pairs.metric_features(frame)
    assert used == ["m1", "m2", "m3"]
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-6)
    plain = pairs.similarity_pairs(metrics_frame(BASIC), k=4, threshold=-1.0)
    noisy = pairs.similarity_pairs(frame, k=4, threshold=-1.0)
    pd.testing.assert_frame_equal(plain, noisy)


def test_missing_values_are_imputed_with_the_column_median():
    rows = {"a": [1.0, 5.0], "b": [2.0, np.nan], "c": [3.0, 1.0], "d": [2.0, 3.0]}
    frame = metrics_frame(rows, columns=("x", "y"))  # median of y = 3, so b becomes (2, 3) = d
    result = pairs.similarity_pairs(frame, k=1, threshold=-1.0).set_index("loop_id")
    # b and d both sit exactly at the column means after imputation: zero vectors, similarity 0
    assert result.loc["b", "similarity"] == 0.0
    features, _ = pairs.metric_features(frame)
    np.testing.assert_array_equal(features[1], features[3])


def test_order_is_deterministic_and_independent_of_row_order_and_threads():
    rng = np.random.default_rng(5)
    values = np.round(rng.normal(size=(3000, 4)), 1)
    values[100:110] = values[0]
    ids = [f"l{i:05d}" for i in range(3000)]
    frame = pd.DataFrame(values, index=ids)
    first = pairs.similarity_pairs(frame, n_threads=1)
    shuffled = frame.iloc[rng.permutation(len(frame))]
    pd.testing.assert_frame_equal(first, pairs.similarity_pairs(shuffled, n_threads=2))
    pd.testing.assert_frame_equal(first, pairs.similarity_pairs(frame, n_threads=1))
    ties = first[first["loop_id"] == "l00000"]
    assert list(ties["other_id"]) == ["l00100", "l00101", "l00102", "l00103", "l00104"]  # smaller id wins


def test_pairs_input_errors():
    frame = metrics_frame(BASIC)
    with pytest.raises(ValueError, match="not numeric"):
        pairs.similarity_pairs(frame.assign(rhythm_hash="h"), columns=["m1", "rhythm_hash"])
    with pytest.raises(ValueError, match="not in the frame"):
        pairs.similarity_pairs(frame, columns=["m1", "nope"])
    with pytest.raises(ValueError, match="no metric column varies"):
        pairs.similarity_pairs(pd.DataFrame({"m": [1.0, 1.0, 1.0]}, index=["a", "b", "c"]))
    with pytest.raises(ValueError, match="duplicates"):
        pairs.similarity_pairs(pd.DataFrame({"m": [1.0, 2.0]}, index=["a", "a"]))
    with pytest.raises(ValueError, match="k must be"):
        pairs.similarity_pairs(frame, k=0)
    assert pairs.similarity_pairs(frame.iloc[:1]).empty


# ============================================================================ genre transfer


TRANSFER = {
    "f1": [1.0, 2.0, 3.0],
    "f2": [3.0, 1.0, 0.0],
    "r1": [1.0, 2.0, 3.1],  # a rock twin of f1
    "r2": [3.0, 1.1, 0.0],  # a rock twin of f2
    "r3": [-2.0, 4.0, 1.0],
    "h1": [1.0, 2.0, 3.0],  # hip-hop, identical to f1, must never appear in funk → rock
}
TRANSFER_GENRES = {"f1": "funk", "f2": "funk", "r1": "rock", "r2": "rock", "r3": "rock", "h1": "hiphop"}


def transfer_labels():
    return pd.DataFrame({"genre": pd.Series(TRANSFER_GENRES)})


def test_genre_transfer_pairs_only_pairs_source_loops_with_target_loops():
    result = pairs.genre_transfer_pairs(metrics_frame(TRANSFER), transfer_labels(), "funk", "rock", k=2, threshold=-1.0)
    assert set(result["loop_id"]) == {"f1", "f2"}
    assert set(result["other_id"]) <= {"r1", "r2", "r3"}
    best = result[result["rank"] == 1].set_index("loop_id")["other_id"].to_dict()
    assert best == {"f1": "r1", "f2": "r2"}
    assert (result["source_genre"] == "funk").all() and (result["target_genre"] == "rock").all()
    assert result.groupby("loop_id").size().eq(2).all()


def test_genre_transfer_within_one_genre_never_pairs_a_loop_with_itself_and_accepts_aliases():
    result = pairs.genre_transfer_pairs(
        metrics_frame(TRANSFER), transfer_labels(), "Rock", "rock and roll", k=5, threshold=-1.0
    )
    assert (result["loop_id"] != result["other_id"]).all()
    assert set(result["loop_id"]) == set(result["other_id"]) == {"r1", "r2", "r3"}
    to_hiphop = pairs.genre_transfer_pairs(metrics_frame(TRANSFER), transfer_labels(), "funk", "hip-hop", k=1)
    assert to_hiphop[["loop_id", "other_id", "similarity"]].values.tolist() == [["f1", "h1", 1.0]]


def test_genre_transfer_unknown_genre_is_an_error_and_an_absent_genre_is_empty():
    with pytest.raises(ValueError, match="unknown target genre 'polka'"):
        pairs.genre_transfer_pairs(metrics_frame(TRANSFER), transfer_labels(), "funk", "polka")
    with pytest.raises(ValueError, match="unknown source genre"):
        pairs.genre_transfer_pairs(metrics_frame(TRANSFER), transfer_labels(), "unknown", "rock")
    empty = pairs.genre_transfer_pairs(metrics_frame(TRANSFER), transfer_labels(), "funk", "jazz")
    assert empty.empty
    assert list(empty.columns) == ["loop_id", "other_id", "rank", "similarity", "source_genre", "target_genre"]

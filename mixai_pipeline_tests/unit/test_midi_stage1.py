"""MIDI Stage 1: validation reasons, bar-aligned slicing, the product's filters, grid dedupe, Groove MIDI.

Files are built in the tests: well-formed ones with symusic (Score → dumps_midi), malformed ones as raw
bytes, since no writer produces a type-2 file, tempo 0 or an overflowing clock on purpose.
"""

from __future__ import annotations

import csv
import io
import struct

import numpy as np
import pytest
import symusic

from mixai_pipeline import settings
from mixai_pipeline.lib.midi import dedupe, stage1
from mixai_pipeline.lib.midi.categories import CATEGORY_INDEX
from mixai_pipeline.lib.midi.loop import Loop
from mixai_pipeline.lib.midi.stage1 import MidiReject, PackMetadataError, parse_midi, run_stage1, slice_loops

TPB = 480
BAR = 4 * TPB  # 4/4
KICK, SNARE, HAT, OPEN_HAT = 36, 38, 42, 46
GROOVE_MIDI = settings.groove_midi_dir()


# ------------------------------------------------------------------------------------------ builders


def rock_beat(bars: int, *, steps_per_bar: int = 16, tpb: int = TPB) -> list[tuple[int, int, int]]:
    """(tick, pitch, velocity): hats on every 8th, kick on 1 and 3, snare on 2 and 4 (12 notes per 4/4 bar,
    4 onsets with two hits). For 3/4 (12 steps): kick on 1, snare on 2 and 3, hats on 8ths: 9 notes."""
    hits = []
    for bar in range(bars):
        for step in range(steps_per_bar):
            tick = (bar * steps_per_bar + step) * tpb // 4
            if step % 2 == 0:
                hits.append((tick, HAT, 70 + step))
            if step == 0 or (steps_per_bar == 16 and step == 8):
                hits.append((tick, KICK, 110))
            if (steps_per_bar == 16 and step in (4, 12)) or (steps_per_bar == 12 and step in (4, 8)):
                hits.append((tick, SNARE, 100))
    return hits


def midi_bytes(hits, *, tpb: int = TPB, bpm: float | None = 120.0, time_signatures=((0, 4, 4),),
               tempos=(), melodic=()) -> bytes:
    score = symusic.Score(tpb)
    if bpm is not None:
        score.tempos.append(symusic.Tempo(0, bpm))
    for tick, value in tempos:
        score.tempos.append(symusic.Tempo(tick, value))
    for tick, numerator, denominator in time_signatures:
        score.time_signatures.append(symusic.TimeSignature(tick, numerator, denominator))
    drums = symusic.Track("drums", 0, True)
    for tick, pitch, velocity in hits:
        drums.notes.append(symusic.Note(tick, max(tpb // 16, 1), pitch, velocity))
    score.tracks.append(drums)
    if melodic:
        piano = symusic.Track("piano", 0, False)
        for tick, pitch, velocity in melodic:
            piano.notes.append(symusic.Note(tick, tpb, pitch, velocity))
        score.tracks.append(piano)
    return score.dumps_midi()


def varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def raw_track(events: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(varlen(delta) + event for delta, event in events) + b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + body


def raw_midi(tracks: list[bytes], *, midi_format: int = 1, division: int = TPB, n_tracks: int | None = None) -> bytes:
    declared = len(tracks) if n_tracks is None else n_tracks
    return b"MThd" + struct.pack(">IHHH", 6, midi_format, declared, division) + b"".join(tracks)


def tempo_event(micros_per_quarter: int) -> bytes:
    return b"\xff\x51\x03" + micros_per_quarter.to_bytes(3, "big")


def drum_hit(pitch: int = KICK) -> list[tuple[int, bytes]]:
    return [(0, bytes([0x99, pitch, 100])), (60, bytes([0x89, pitch, 0]))]


def reject_reason(data: bytes, **kwargs) -> MidiReject:
    with pytest.raises(MidiReject) as caught:
        parse_midi(data, "song.mid", **kwargs)
    return caught.value


def run(files: dict[str, bytes], **kwargs) -> stage1.Stage1Result:
    return run_stage1(list(files.items()), None, **kwargs)


# ---------------------------------------------------------------------------------------- validation


def test_a_valid_file_parses_with_its_timing_context_and_digests():
    data = midi_bytes(rock_beat(2), bpm=96.0, time_signatures=((0, 4, 4),))
    parsed = parse_midi(data, "a.mid")
    assert parsed.ticks_per_beat == TPB and parsed.midi_format == 1 and parsed.size == len(data)
    assert parsed.n_notes == 24
    assert np.all(np.diff(parsed.onset) >= 0)
    assert set(parsed.channel.tolist()) == {9} and parsed.is_drum.all()
    assert parsed.tempos == ((0, pytest.approx(96.0, abs=1e-3)),)
    assert parsed.time_signatures == ((0, 4, 4),)
    assert len(parsed.sha256) == 64 and len(parsed.md5) == 32


def test_melodic_tracks_keep_their_channel_and_program():
    # one MTrk, notes on channel 0 (program 5), channel 3 (program 0) and the drum channel
    events = [(0, b"\xc0\x05"), (0, b"\x90\x3c\x50"), (0, b"\x93\x40\x50"), (0, b"\x99\x24\x64"),
              (100, b"\x80\x3c\x00"), (0, b"\x83\x40\x00"), (0, b"\x89\x24\x00")]
    parsed = parse_midi(raw_midi([raw_track(events)]), "mixed.mid")
    by_pitch = {int(p): (int(c), int(g), bool(d)) for p, c, g, d in
                zip(parsed.pitch, parsed.channel, parsed.program, parsed.is_drum, strict=True)}
    assert by_pitch == {60: (0, 5, False), 64: (3, 0, False), 36: (9, 0, True)}


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"RIFF\x00\x00\x00\x04WAVE", "not_midi"),
        (b"MThd\x00\x00", "truncated"),
        (raw_midi([raw_track(drum_hit())])[:-6], "truncated"),  # last chunk cut short
        (raw_midi([raw_track(drum_hit())], n_tracks=2), "truncated"),  # a declared track is missing
        (raw_midi([raw_track(drum_hit())], midi_format=2), "midi_type_2"),
        (raw_midi([raw_track(drum_hit())], midi_format=7), "corrupt"),
        (raw_midi([raw_track(drum_hit())], division=0xE728), "smpte_division"),  # 25 fps × 40
        (raw_midi([raw_track(drum_hit())], division=0), "zero_ticks_per_beat"),
        (raw_midi([b"\x00\x01\x02\x03\x00\x00\x00\x00", raw_track(drum_hit())]), "corrupt"),  # not a chunk name
        (raw_midi([b"MTrk\x00\x00\x00\x03\x00\x99\x24"]), "corrupt"),  # symusic: event runs past the chunk
        (raw_midi([raw_track([(0, tempo_event(500_000))])]), "no_notes"),
        (raw_midi([raw_track([(0, tempo_event(0))] + drum_hit())]), "absurd_tempo"),  # 0 µs/quarter
        (raw_midi([raw_track([(0, tempo_event(50_000))] + drum_hit())]), "absurd_tempo"),  # 1200 BPM
        (raw_midi([raw_track(drum_hit() + [(0, tempo_event(40_000))])]), "absurd_tempo"),  # a later event
        (raw_midi([raw_track([(0, b"\xff\x58\x04\x00\x02\x18\x08")] + drum_hit())]), "invalid_time_signature"),
        # nine deltas of 2^28 - 1 ticks overflow symusic's int32 clock
        (raw_midi([raw_track([(0x0FFFFFFF, b"\xff\x01\x01a")] * 8 + [(0x0FFFFFFF, b"\x99\x24\x64"),
                                                                       (10, b"\x89\x24\x00")])]), "negative_time"),
    ],
)
def test_every_file_reject_reason(data, reason):
    reject = reject_reason(data)
    assert reject.reason == reason
    assert reject.reason in stage1.FILE_REJECT_REASONS
    assert "'song.mid'" in reject.message


def test_1000_bpm_is_still_accepted():
    parsed = parse_midi(raw_midi([raw_track([(0, tempo_event(60_000))] + drum_hit())]), "fast.mid")
    assert parsed.tempos == ((0, 1000.0),)


def test_files_over_the_size_limit_are_rejected_before_parsing():
    data = midi_bytes(rock_beat(2))
    padded = data + b"\x00" * (1_000_001 - len(data))  # bytes after the declared tracks are ignored
    assert reject_reason(padded).reason == "too_large"
    assert parse_midi(padded, "big.mid", max_bytes=2_000_000).n_notes == 24
    assert reject_reason(data, max_bytes=len(data) - 1).reason == "too_large"


def test_a_bad_file_never_stops_the_pack_and_every_pack_level_reason_is_reported(monkeypatch):
    good = midi_bytes(rock_beat(2))
    melodic_only = raw_midi([raw_track([(0, b"\x90\x3c\x50"), (100, b"\x80\x3c\x00")])])
    files = {"bad.mid": b"garbage", "good.mid": good, "copy.mid": good, "empty.mid": b"", "piano.mid": melodic_only}
    result = run(files)
    assert result.files_in == 5 and result.files_accepted == 1
    reasons = {path: reason for path, reason, _ in result.rejected_files}
    assert reasons == {"bad.mid": "not_midi", "copy.mid": "duplicate_file", "empty.mid": "empty",
                       "piano.mid": "no_drum_notes"}
    duplicate_message = next(m for p, _, m in result.rejected_files if p == "copy.mid")
    assert "'good.mid'" in duplicate_message
    assert result.counts["duplicate_file"] == 1 and result.counts["not_midi"] == 1
    assert result.loops_out == 1 and result.loops[0].source["path"] == "good.mid"

    # a bug in the slicing becomes an internal_error row, not an exception
    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(stage1, "_slice", broken)
    result = run({"good.mid": good, "other.mid": midi_bytes(rock_beat(4))})
    assert [(p, r) for p, r, _ in result.rejected_files] == [("good.mid", "internal_error"),
                                                            ("other.mid", "internal_error")]
    assert "ZeroDivisionError: boom" in result.rejected_files[0][2]


def test_missing_metadata_and_hostile_names_are_plain_data():
    beat = rock_beat(2)
    hostile = "evil\x1b[2J\n.mid"
    files = [("../x.mid", midi_bytes(beat)), (hostile, midi_bytes(beat, bpm=100.0)),
             ("not/listed.mid", midi_bytes(beat, bpm=110.0)), ("ctl\r\x00.mid", midi_bytes(beat, bpm=130.0))]
    metadata = {"../x.mid": {"style": "rock"}, hostile: {"style": "funk"}}
    result = run_stage1(files, metadata)
    assert [(p, r) for p, r, _ in result.rejected_files] == [("not/listed.mid", "missing_metadata"),
                                                            ("ctl\r\x00.mid", "missing_metadata")]
    message = result.rejected_files[1][2]
    assert "\r" not in message and "\x00" not in message and repr("ctl\r\x00.mid") in message
    # the two tempo variants are one groove: one loop kept, the other an exact duplicate
    assert result.loops_out == 1 and len(result.exact_duplicates) == 1
    kept = result.loops[0]
    assert kept.source["path"] in ("../x.mid", hostile)
    assert kept.source["style"] == {"../x.mid": "rock", hostile: "funk"}[kept.source["path"]]


# ------------------------------------------------------------------------------------------ metadata


def groove_csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["drummer", "session", "id", "style", "bpm", "beat_type",
                                             "time_signature", "midi_filename", "audio_filename", "duration",
                                             "split"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_pack_metadata_is_keyed_by_midi_filename_with_numbers_parsed():
    row = {"drummer": "drummer1", "session": "drummer1/session1", "id": "drummer1/session1/1", "style": "funk",
           "bpm": "80", "beat_type": "beat", "time_signature": "4-4",
           "midi_filename": "drummer1/session1/1_funk_80_beat_4-4.mid", "audio_filename": "x.wav",
           "duration": "86.704688", "split": "train"}
    metadata = stage1.read_pack_metadata(groove_csv([row, {**row, "midi_filename": "b.mid", "bpm": ""}]))
    assert metadata["drummer1/session1/1_funk_80_beat_4-4.mid"] == {
        "drummer": "drummer1", "session": "drummer1/session1", "id": "drummer1/session1/1", "style": "funk",
        "bpm": 80.0, "beat_type": "beat", "time_signature": "4-4", "audio_filename": "x.wav",
        "duration": 86.704688, "split": "train"}
    assert metadata["b.mid"]["bpm"] is None
    without = b"style,beat_type,time_signature,drummer,session,split,duration\nfunk,beat,4-4,d1,s1,train,1.0\n"
    with pytest.raises(PackMetadataError, match=r"lacks column\(s\) \['midi_filename', 'bpm'\]"):
        stage1.read_pack_metadata(without)
    with pytest.raises(PackMetadataError, match="listed twice"):
        stage1.read_pack_metadata(groove_csv([row, row]))
    with pytest.raises(PackMetadataError, match="line 2: bpm 'fast' is not a number"):
        stage1.read_pack_metadata(groove_csv([{**row, "bpm": "fast"}]))


# ------------------------------------------------------------------------------------------- slicing


def test_eight_bars_slice_into_two_and_four_bar_windows_with_rebased_onsets():
    parsed = parse_midi(midi_bytes(rock_beat(8)), "eight.mid")
    loops = slice_loops(parsed, bars=(2, 4), source={"style": "rock"})
    digest = parsed.sha256[:12]
    assert [loop.loop_id for loop in loops] == [f"{digest}:2b:{b}" for b in (0, 2, 4, 6)] + \
        [f"{digest}:4b:{b}" for b in (0, 4)]
    for loop in loops:
        bars = int(loop.loop_id.split(":")[1][0])
        assert loop.n_notes == 12 * bars
        assert loop.length_ticks == bars * BAR and loop.bar_count == bars
        assert loop.onset.min() == 0 and loop.onset.max() == bars * BAR - 2 * 120  # last 8th hat
        assert loop.source["style"] == "rock" and loop.source["file_digest"] == parsed.sha256
        assert loop.source["path"] == "eight.mid"
        assert loop.source["start_tick"] == loop.source["start_bar"] * BAR
        assert loop.tempos_bpm == (pytest.approx(120.0),)
        assert loop.program is None and set(loop.channel.tolist()) == {9}
    # the notes of window 2b:2 are those of bars 2-3, re-based
    original = parsed.onset[(parsed.onset >= 2 * BAR) & (parsed.onset < 4 * BAR)] - 2 * BAR
    np.testing.assert_array_equal(loops[1].onset, np.sort(original))


def test_a_downbeat_played_early_belongs_to_the_next_window():
    hits = rock_beat(4)
    hits = [(t, p, v) for t, p, v in hits if not (t == 2 * BAR and p == KICK)]
    hits.append((2 * BAR - 10, KICK, 110))  # 10 ticks early for bar 3's downbeat
    hits.append((2 * BAR - 60, OPEN_HAT, 90))  # a written 32nd before the bar line (60 ticks): stays
    parsed = parse_midi(midi_bytes(hits), "early.mid")
    first, second = slice_loops(parsed, bars=(2,), source={})
    assert first.n_notes == 25 and second.n_notes == 24  # the first window gained the open hat only
    assert first.onset.max() == 2 * BAR - 60 and OPEN_HAT in first.pitch.tolist()
    assert second.onset[0] == -10 and second.pitch[0] == KICK
    # the grid still puts the early kick on the downbeat
    assert dedupe.canonical_grid(second)[CATEGORY_INDEX["kick"], 0] == pytest.approx(110 / 127)
    # with no grace it is a late note of the first window
    first, second = slice_loops(parsed, bars=(2,), source={}, early_grace_quarters=0.0)
    assert first.n_notes == 26 and second.n_notes == 23 and first.onset.max() == 2 * BAR - 10


def test_a_three_four_file_uses_three_four_bars():
    parsed = parse_midi(midi_bytes(rock_beat(6, steps_per_bar=12), time_signatures=((0, 3, 4),)), "waltz.mid")
    loops = slice_loops(parsed, bars=(2, 4), source={})
    two_bar = [loop for loop in loops if ":2b:" in loop.loop_id]
    four_bar = [loop for loop in loops if ":4b:" in loop.loop_id]
    assert len(two_bar) == 3 and len(four_bar) == 1  # bars 4-5 are half a 4-bar window: not emitted
    for loop in two_bar:
        assert loop.time_signature == (3, 4) and loop.length_ticks == 2 * 3 * TPB and loop.n_notes == 18
    assert [loop.source["start_tick"] for loop in two_bar] == [0, 2880, 5760]
    assert dedupe.canonical_grid(two_bar[0]).shape == (8, 24)


def test_a_meter_change_starts_a_new_section_and_bars_are_numbered_across_the_file():
    hits = rock_beat(4) + [(4 * BAR + t, p, v) for t, p, v in rock_beat(4, steps_per_bar=12)]
    parsed = parse_midi(midi_bytes(hits, time_signatures=((0, 4, 4), (4 * BAR, 3, 4))), "change.mid")
    loops = slice_loops(parsed, bars=(2, 4), source={})
    summary = [(loop.loop_id.split(":", 1)[1], loop.time_signature, loop.source["start_tick"], loop.n_notes)
               for loop in loops]
    assert summary == [
        ("2b:0", (4, 4), 0, 24), ("2b:2", (4, 4), 2 * BAR, 24),
        ("2b:4", (3, 4), 4 * BAR, 18), ("2b:6", (3, 4), 4 * BAR + 2880, 18),
        ("4b:0", (4, 4), 0, 48), ("4b:4", (3, 4), 4 * BAR, 36),
    ]


def test_tempo_changes_inside_a_window_are_listed_and_partial_windows_counted():
    parsed = parse_midi(midi_bytes(rock_beat(3), bpm=100.0, tempos=((BAR + 240, 104.0),)), "tempo.mid")
    loops, partial = stage1._slice(parsed, bars=(2, 4), source={}, drums_only=True,
                                   early_grace_quarters=stage1.EARLY_GRACE_QUARTERS)
    assert [loop.loop_id.split(":", 1)[1] for loop in loops] == ["2b:0"]
    assert loops[0].tempos_bpm == (pytest.approx(100.0, abs=1e-3), pytest.approx(104.0, abs=1e-3))
    assert partial == 2  # bar 2 alone (2-bar) and bars 0-2 (4-bar)
    # a file without a tempo event plays at the SMF default
    no_tempo = slice_loops(parse_midi(midi_bytes(rock_beat(2), bpm=None), "t.mid"), bars=(2,), source={})
    assert no_tempo[0].tempos_bpm == (120.0,)


def test_empty_windows_are_not_emitted():
    hits = rock_beat(2) + [(6 * BAR + t, p, v) for t, p, v in rock_beat(2)]  # silence in bars 2-5
    loops = slice_loops(parse_midi(midi_bytes(hits), "gap.mid"), bars=(2,), source={})
    assert [loop.source["start_bar"] for loop in loops] == [0, 6]


def test_drums_only_false_keeps_melodic_notes_with_their_program():
    melodic = [(0, 60, 80), (BAR, 64, 80)]
    parsed = parse_midi(midi_bytes(rock_beat(2), melodic=melodic), "band.mid")
    drums = slice_loops(parsed, bars=(2,), source={})
    everything = slice_loops(parsed, bars=(2,), source={}, drums_only=False)
    assert drums[0].n_notes == 24 and everything[0].n_notes == 26
    assert everything[0].program is not None and sorted(everything[0].channel.tolist())[:2] == [1, 1]


# ------------------------------------------------------------------------------------------- filters


def test_too_few_notes_and_no_layered_hits_are_counted():
    sparse = [(i * 2 * 120, HAT, 80) for i in range(15)]  # 15 hats on 8ths: too few
    unlayered = [(i * 120, HAT if i % 2 else KICK, 80) for i in range(32)]  # 32 16ths, never two at once
    nearly_together = rock_beat(2)
    # kick and snare 1 tick after the hat they are played with
    nearly_together = [(t + 1, p, v) if p in (KICK, SNARE) else (t, p, v) for t, p, v in nearly_together]
    files = {"sparse.mid": midi_bytes(sparse), "unlayered.mid": midi_bytes(unlayered),
             "nearly.mid": midi_bytes(nearly_together)}
    result = run(files, bars=(2,))
    reasons = sorted(reason for _, reason in result.rejected_loops)
    assert reasons == ["no_layered_hits", "too_few_notes"]
    assert result.counts["too_few_notes"] == 1 and result.counts["no_layered_hits"] == 1
    assert [loop.source["path"] for loop in result.loops] == ["nearly.mid"]
    # the product's exact-tick rule turns the 1-tick "together" groove away too
    exact = run(files, bars=(2,), layer_tolerance_ticks_at_480=0)
    assert exact.counts["no_layered_hits"] == 2 and exact.loops_out == 0
    assert result.windows_sliced == 3


# -------------------------------------------------------------------------------------------- dedupe


def test_the_same_groove_at_another_tempo_and_resolution_is_an_exact_duplicate():
    slow = midi_bytes(rock_beat(2, tpb=96), tpb=96, bpm=90.0)
    fast = midi_bytes(rock_beat(2), tpb=480, bpm=140.0)
    result = run({"slow.mid": slow, "fast.mid": fast}, bars=(2,))
    ids = {parse_midi(data, name).sha256[:12] + ":2b:0": name for name, data in
           (("slow.mid", slow), ("fast.mid", fast))}
    kept_id, dropped_id = sorted(ids)
    assert result.exact_duplicates == [(dropped_id, kept_id)]
    assert [loop.loop_id for loop in result.loops] == [kept_id]
    assert result.counts["exact_duplicate"] == 1


def test_one_changed_hit_is_a_near_duplicate_kept_in_a_cluster():
    base = rock_beat(2)
    variant = base + [(7 * 120, SNARE, 40)]  # one ghost snare added
    result = run({"base.mid": midi_bytes(base), "variant.mid": midi_bytes(variant)}, bars=(2,))
    assert result.loops_out == 2 and result.exact_duplicates == []
    (cluster,) = result.near_duplicate_clusters
    ids = sorted(loop.loop_id for loop in result.loops)
    assert cluster.loop_ids == tuple(ids) and cluster.bars == 2 and cluster.cluster_id == f"nd:2b:{ids[0]}"
    assert result.counts["near_duplicate_loops"] == 2
    grids = [dedupe.canonical_grid(loop).ravel() for loop in result.loops]
    cosine = grids[0] @ grids[1] / np.linalg.norm(grids[0]) / np.linalg.norm(grids[1])
    assert 0.95 <= cosine < 1.0
    assert run({"base.mid": midi_bytes(base), "variant.mid": midi_bytes(variant)}, bars=(2,),
               near_duplicate_threshold=0.999).near_duplicate_clusters == []


def test_grooves_sharing_the_sum_of_pitches_are_not_merged():
    """The product's dedupe key (sum of pitches, sorted pitch-count profile) merged these two."""
    straight = rock_beat(2)
    # the same notes (same pitches, same counts) with kick and snare positions swapped
    swapped = [(t, {KICK: SNARE, SNARE: KICK}.get(p, p), v) for t, p, v in straight]
    assert sum(p for _, p, _ in straight) == sum(p for _, p, _ in swapped)
    assert sorted(p for _, p, _ in straight) == sorted(p for _, p, _ in swapped)
    result = run({"a.mid": midi_bytes(straight), "b.mid": midi_bytes(swapped)}, bars=(2,))
    assert result.loops_out == 2 and result.exact_duplicates == [] and result.near_duplicate_clusters == []


def test_binary_grid_and_quantisation_to_the_nearest_sixteenth():
    loop = Loop("x", 96, onset=np.array([0, 13, 11, 190]), duration=np.zeros(4, int),
                pitch=np.array([36, 42, 99, 38]), velocity=np.array([64, 100, 30, 127]), channel=np.full(4, 9),
                length_ticks=2 * 4 * 96)
    grid = dedupe.canonical_grid(loop, velocity_weighted=False)
    assert grid.shape == (8, 32) and grid.sum() == 4
    # 13 and 11 ticks at 96 tpb are 0.54 and 0.46 sixteenths; 190 ticks is step 7.9 → 8
    assert grid[CATEGORY_INDEX["closed_hat"], 1] == 1 and grid[CATEGORY_INDEX["other"], 0] == 1
    assert grid[CATEGORY_INDEX["snare"], 8] == 1 and grid[CATEGORY_INDEX["kick"], 0] == 1
    weighted = dedupe.canonical_grid(loop)
    assert weighted[CATEGORY_INDEX["kick"], 0] == pytest.approx(64 / 127)


def test_blocked_clusters_match_a_dense_reference():
    rng = np.random.default_rng(3)
    bases = rng.random((6, 8, 32)) * (rng.random((6, 8, 32)) < 0.25)
    grids, bars = [], []
    for i in range(300):
        grid = bases[i % 6].copy()
        flips = rng.integers(0, 8 * 32, size=int(rng.integers(0, 12)))
        grid.ravel()[flips] = rng.random(flips.size) * (rng.random(flips.size) < 0.5)
        grids.append(grid.astype(np.float32))
        bars.append(2)
    ids = [f"l{i:03d}" for i in range(300)]
    clusters = dedupe.near_duplicate_clusters(ids, grids, bars, threshold=0.9, block=64)
    # reference: the full similarity matrix and a plain union-find
    flat = np.stack([g.ravel() for g in grids]).astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    parent = list(range(300))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(flat @ flat.T, 1) >= 0.9), strict=True):
        parent[find(i)] = find(j)
    groups: dict[int, list[str]] = {}
    for i in range(300):
        groups.setdefault(find(i), []).append(ids[i])
    expected = sorted(tuple(sorted(g)) for g in groups.values() if len(g) > 1)
    assert sorted(c.loop_ids for c in clusters) == expected
    assert len(expected) > 3  # the data does make several clusters


# ---------------------------------------------------------------------------------- Groove MIDI (real)


@pytest.mark.skipif(not (GROOVE_MIDI / "info.csv").exists(),
                    reason=f"Groove MIDI Dataset not present at {GROOVE_MIDI} (set MIXAI_SHARED_DATA)")
def test_twenty_real_groove_midi_files():
    metadata = stage1.read_pack_metadata((GROOVE_MIDI / "info.csv").read_bytes())
    beats = sorted(path for path, row in metadata.items() if row["beat_type"] == "beat")
    chosen = beats[:: len(beats) // 20][:20]
    files = [(path, (GROOVE_MIDI / path).read_bytes()) for path in chosen]
    result = run_stage1(files, metadata, pitch_map="roland_td11")

    assert result.files_in == 20 and result.rejected_files == [] and result.files_accepted == 20
    assert result.windows_sliced == (result.loops_out + len(result.rejected_loops) + len(result.exact_duplicates))
    assert result.loops_out > 0.7 * result.windows_sliced
    grace = stage1.EARLY_GRACE_QUARTERS * 480
    for loop in result.loops:
        assert loop.n_notes >= 16 and loop.ticks_per_beat == 480
        assert loop.onset.min() > -grace and loop.onset.max() <= loop.length_ticks - grace
        assert loop.source["style"] == metadata[loop.source["path"]]["style"]
        assert loop.tempos_bpm[0] == pytest.approx(metadata[loop.source["path"]]["bpm"], abs=0.5)
    # every file gives about as many 2-bar windows as its length in bars allows
    for path in chosen:
        row = metadata[path]
        beats_per_bar = int(row["time_signature"].split("-")[0])
        bars = row["duration"] * row["bpm"] / 60 / beats_per_bar
        digest = parse_midi(dict(files)[path], path).sha256[:12]
        windows = sum(1 for loop_id in _window_ids(result) if loop_id.startswith(f"{digest}:2b:"))
        assert bars // 2 - 2 <= windows <= bars // 2 + 1, (path, bars, windows)


def _window_ids(result: stage1.Stage1Result) -> list[str]:
    """Every window sliced: kept, filtered out, or dropped as an exact duplicate."""
    return [loop.loop_id for loop in result.loops] + [i for i, _ in result.rejected_loops] + \
        [i for i, _ in result.exact_duplicates]


@pytest.mark.parametrize("kwargs,match", [({"pitch_map": "td30"}, "unknown pitch map"),
                                          ({"bars": (2, 2)}, "distinct positive"),
                                          ({"bars": (0,)}, "distinct positive"),
                                          ({"near_duplicate_threshold": 0}, r"\(0, 1\]"),
                                          ({"early_grace_quarters": 1.5}, r"\[0, 1\)")])
def test_configuration_errors_fail_before_reading_the_pack(kwargs, match):
    def never_read():
        raise AssertionError("the pack was read")
        yield

    with pytest.raises(ValueError, match=match):
        run_stage1(never_read(), None, **kwargs)

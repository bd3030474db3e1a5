"""MIDI Stage 1: parse and validate a pack's files, slice them into bar-aligned loops, filter, dedupe.

Pure library (no Dagster): ``run_stage1`` takes (relative path, bytes) pairs and the pack's metadata and
returns the loops Stage 2 measures, with every file and loop it turned away and why. One bad file never
stops the pack: it becomes a ``(path, reason, message)`` row.

The product's rules (reference/loop_metrics.md, "Stage 1 filters and dedupe") are kept — files > 1 MB,
byte-identical files, < 16 notes, negative times, drum loops without two notes sharing an onset — and its
"sum of pitches" dedupe is replaced by the canonical onset grid of ``dedupe.py``.

Paths are plain data: they are dictionary keys and report values, never opened or joined here, and
messages quote them with repr() so control characters cannot forge log lines.
"""

from __future__ import annotations

import csv
import hashlib
import io
import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import symusic

from mixai_pipeline.lib.midi.categories import category_lookup
from mixai_pipeline.lib.midi.dedupe import (
    NearDuplicateCluster,
    canonical_grid,
    exact_duplicates,
    loop_bars,
    near_duplicate_clusters,
)
from mixai_pipeline.lib.midi.loop import Loop

MAX_FILE_BYTES = 1_000_000
MAX_BPM = 1000.0
DEFAULT_BPM = 120.0  # the SMF default when a file has no tempo event
DRUM_CHANNEL = 9  # General MIDI channel 10, counted from 0
UNKNOWN_CHANNEL = -1
MIN_NOTES = 16
LAYER_TOLERANCE_TICKS_AT_480 = 2.0
EARLY_GRACE_QUARTERS = 0.125  # a 32nd note: a hit this close before a bar line belongs to that bar

# Why a file is turned away, in the order they are checked.
FILE_REJECT_REASONS = (
    "missing_metadata",  # the pack's metadata has no row for the path
    "empty",  # zero bytes
    "too_large",  # more than max_bytes
    "not_midi",  # no 'MThd' header
    "truncated",  # a chunk runs past the end of the data, or declared tracks are missing
    "corrupt",  # malformed header/chunk, or symusic cannot parse it
    "midi_type_2",  # independent sequences: no shared timeline to cut bars from
    "smpte_division",  # time in SMPTE frames: no beats, so no bars
    "zero_ticks_per_beat",  # division 0: a beat has no length
    "negative_time",  # event times overflow (delta sum beyond 2^31 ticks) and come out negative
    "absurd_tempo",  # a tempo event of 0 µs per quarter (infinite BPM) or > 1000 BPM
    "invalid_time_signature",  # numerator/denominator 0, or a bar that is not a whole number of ticks
    "no_notes",  # no note in any track
    "no_drum_notes",  # drums_only and no note on a drum channel
    "duplicate_file",  # byte-identical to a file already taken (SHA-256)
    "internal_error",  # a bug here, not in the file; reported instead of stopping the pack
)
LOOP_REJECT_REASONS = ("too_few_notes", "no_layered_hits")

PACK_METADATA_COLUMNS = (
    "midi_filename",
    "style",
    "bpm",
    "beat_type",
    "time_signature",
    "drummer",
    "session",
    "split",
    "duration",
)
_NUMERIC_METADATA = ("bpm", "duration")


class MidiReject(Exception):
    """A file Stage 1 will not use: ``reason`` is a short code from FILE_REJECT_REASONS, ``message`` says
    what was found, for a person reading the report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class PackMetadataError(ValueError):
    """The pack's metadata file cannot be read (missing columns, bad numbers, duplicate rows)."""


@dataclass(frozen=True, eq=False)
class ParsedMidi:
    """One validated MIDI file in tick time: every note of every track as parallel arrays sorted by
    (onset, pitch), plus the timing context needed to cut bars."""

    name: str
    size: int
    sha256: str
    md5: str
    midi_format: int  # 0 or 1
    ticks_per_beat: int
    onset: np.ndarray  # int64 ticks
    duration: np.ndarray  # int64 ticks
    pitch: np.ndarray  # int16
    velocity: np.ndarray  # int16
    channel: np.ndarray  # int16; UNKNOWN_CHANNEL (-1) when a melodic note's channel cannot be recovered
    program: np.ndarray  # int16
    is_drum: np.ndarray  # bool
    tempos: tuple[tuple[int, float], ...]  # (tick, bpm)
    time_signatures: tuple[tuple[int, int, int], ...]  # (tick, numerator, denominator)

    @property
    def n_notes(self) -> int:
        return int(self.onset.size)


@dataclass
class Stage1Result:
    """Everything Stage 1 decided about a pack. ``counts`` holds one entry per reason (file rejects, loop
    rejects, "exact_duplicate", "near_duplicate_loops", "partial_window") so a summary never has to
    recount the lists."""

    loops: list[Loop] = field(default_factory=list)
    rejected_files: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, message)
    rejected_loops: list[tuple[str, str]] = field(default_factory=list)  # (loop_id, reason)
    exact_duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped loop_id, kept loop_id)
    near_duplicate_clusters: list[NearDuplicateCluster] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    files_in: int = 0
    files_accepted: int = 0
    windows_sliced: int = 0  # non-empty complete windows, before filters and dedupe
    seconds: dict[str, float] = field(default_factory=dict)  # "parse_slice_filter", "dedupe"

    @property
    def loops_out(self) -> int:
        return len(self.loops)


# --------------------------------------------------------------------------------------------- parsing


def parse_midi(data: bytes, name: str, *, max_bytes: int = MAX_FILE_BYTES) -> ParsedMidi:
    """Validate and parse one Standard MIDI File, or raise MidiReject.

    The header and chunk table are checked by hand before symusic sees the bytes: symusic (0.6) accepts a
    type-2 file, a zero division and tempo 0 without complaint, and the reasons must be precise anyway.
    """
    if not data:
        raise MidiReject("empty", f"{name!r} has no bytes")
    if len(data) > max_bytes:
        raise MidiReject("too_large", f"{name!r} has {len(data):,} bytes, more than the {max_bytes:,} allowed")
    midi_format, division, track_chunks = _check_container(data, name)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as error:  # symusic raises RuntimeError for malformed events
        raise MidiReject("corrupt", f"{name!r} could not be parsed: {error}") from None
    ticks_per_beat = int(score.ticks_per_quarter)
    if ticks_per_beat != division:  # cannot happen unless symusic changes how it reads the header
        raise MidiReject("corrupt", f"{name!r}: header division {division} but symusic read {ticks_per_beat}")

    tracks = [(track, track.notes.numpy()) for track in score.tracks]
    noted = [(i, track, notes) for i, (track, notes) in enumerate(tracks) if notes["time"].size]
    tempo_events = score.tempos.numpy()
    signature_events = score.time_signatures.numpy()
    _check_times(name, noted, tempo_events, signature_events)
    tempos = _checked_tempos(name, tempo_events)
    if not noted:
        raise MidiReject("no_notes", f"{name!r} has no notes in any of its {len(score.tracks)} tracks")
    signatures = _checked_time_signatures(name, signature_events, ticks_per_beat)

    channels = _track_channels(data, track_chunks, tracks)

    def stacked(column: str, dtype) -> np.ndarray:
        return np.concatenate([notes[column] for _, _, notes in noted]).astype(dtype)

    def per_track(value_of, dtype) -> np.ndarray:
        return np.concatenate([np.full(notes["time"].size, value_of(i, track), dtype=dtype)
                               for i, track, notes in noted])

    onset, pitch = stacked("time", np.int64), stacked("pitch", np.int16)
    order = np.lexsort((pitch, onset))
    return ParsedMidi(
        name=name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        midi_format=midi_format,
        ticks_per_beat=ticks_per_beat,
        onset=onset[order],
        duration=stacked("duration", np.int64)[order],
        pitch=pitch[order],
        velocity=stacked("velocity", np.int16)[order],
        channel=per_track(lambda i, track: DRUM_CHANNEL if track.is_drum
                          else channels[i] if channels else UNKNOWN_CHANNEL, np.int16)[order],
        program=per_track(lambda i, track: track.program, np.int16)[order],
        is_drum=per_track(lambda i, track: bool(track.is_drum), bool)[order],
        tempos=tempos,
        time_signatures=signatures,
    )


def _check_container(data: bytes, name: str) -> tuple[int, int, list[tuple[int, int]]]:
    """Header fields and the (start, end) byte range of every declared MTrk chunk.

    Walking the chunk table catches a truncated file even where a parser would stop quietly at the
    last complete event. Chunks of other types are skipped (the SMF spec allows them); bytes after the
    last declared track are ignored, as some tools pad files.
    """
    if data[:4] != b"MThd":
        raise MidiReject("not_midi", f"{name!r} does not start with a MIDI header ('MThd'): {data[:4]!r}")
    if len(data) < 14:
        raise MidiReject("truncated", f"{name!r} ends inside the MIDI header ({len(data)} bytes)")
    (header_length,) = struct.unpack_from(">I", data, 4)
    if header_length < 6:
        raise MidiReject("corrupt", f"{name!r}: MIDI header length {header_length}, at least 6 expected")
    midi_format, n_tracks, division = struct.unpack_from(">HHH", data, 8)
    if midi_format == 2:
        raise MidiReject("midi_type_2", f"{name!r} is a type-2 MIDI file: its tracks are independent "
                                        "sequences with no shared timeline, so there are no common bars")
    if midi_format > 2:
        raise MidiReject("corrupt", f"{name!r}: unknown MIDI format {midi_format} (0, 1 or 2 exist)")
    if division & 0x8000:
        frames = 256 - (division >> 8)
        raise MidiReject("smpte_division", f"{name!r} counts time in SMPTE frames ({frames} fps × "
                                           f"{division & 0xFF} ticks per frame), not in ticks per beat: "
                                           "there is no beat, so no bar or 16th grid to cut loops on")
    if division == 0:
        raise MidiReject("zero_ticks_per_beat", f"{name!r} declares 0 ticks per beat: a beat has no length")

    chunks: list[tuple[int, int]] = []
    position = 8 + header_length
    while len(chunks) < n_tracks:
        if position + 8 > len(data):
            raise MidiReject("truncated", f"{name!r}: the header declares {n_tracks} tracks but the data ends "
                                          f"after {len(chunks)}")
        chunk_type = data[position : position + 4]
        (chunk_length,) = struct.unpack_from(">I", data, position + 4)
        end = position + 8 + chunk_length
        if end > len(data):
            raise MidiReject("truncated", f"{name!r}: chunk {chunk_type!r} at byte {position} declares "
                                          f"{chunk_length} bytes but only {len(data) - position - 8} remain")
        if chunk_type == b"MTrk":
            chunks.append((position + 8, end))
        elif not (chunk_type.isascii() and chunk_type.isalpha()):
            raise MidiReject("corrupt", f"{name!r}: chunk type {chunk_type!r} at byte {position} is not a "
                                        "four-letter name")
        position = end
    return midi_format, division, chunks


def _check_times(name: str, noted: list, tempo_events: dict, signature_events: dict) -> None:
    """Reject negative times: a valid SMF cannot express them, but delta times summing past 2^31 ticks
    wrap to negative in symusic's int32 clock (and the product skipped files with negative times)."""
    limit = np.iinfo(np.int32).max
    for _, _, notes in noted:
        onset = notes["time"].astype(np.int64)
        duration = notes["duration"].astype(np.int64)
        if (onset < 0).any() or (duration < 0).any() or (onset + duration > limit).any():
            raise MidiReject("negative_time", f"{name!r}: note times overflow to negative (the delta times add "
                                              "up past 2^31 ticks)")
    for events in (tempo_events, signature_events):
        if (events["time"] < 0).any():
            raise MidiReject("negative_time", f"{name!r}: a tempo or time-signature event has a negative time")


def _checked_tempos(name: str, tempo_events: dict) -> tuple[tuple[int, float], ...]:
    tempos = []
    for tick, micros_per_quarter in zip(tempo_events["time"].tolist(), tempo_events["mspq"].tolist(), strict=True):
        if micros_per_quarter <= 0:
            raise MidiReject("absurd_tempo", f"{name!r}: the tempo event at tick {tick} sets {micros_per_quarter} "
                                             "µs per quarter note (an infinite tempo)")
        bpm = 60_000_000 / micros_per_quarter
        if bpm > MAX_BPM:
            raise MidiReject("absurd_tempo", f"{name!r}: the tempo event at tick {tick} sets {bpm:.1f} BPM, "
                                             f"more than {MAX_BPM:.0f}")
        tempos.append((int(tick), bpm))
    return tuple(sorted(tempos, key=lambda event: event[0]))  # stable: same-tick events keep file order


def _checked_time_signatures(name: str, events: dict, ticks_per_beat: int) -> tuple[tuple[int, int, int], ...]:
    signatures = []
    for tick, numerator, denominator in zip(events["time"].tolist(), events["numerator"].tolist(),
                                            events["denominator"].tolist(), strict=True):
        bar_ticks = ticks_per_beat * 4 * numerator / denominator if denominator else 0.0
        if numerator <= 0 or denominator <= 0 or bar_ticks != int(bar_ticks):
            raise MidiReject("invalid_time_signature", f"{name!r}: time signature {numerator}/{denominator} at "
                                                       f"tick {tick} gives a bar of {bar_ticks} ticks at "
                                                       f"{ticks_per_beat} ticks per beat; bars need a positive "
                                                       "whole number of ticks")
        signatures.append((int(tick), int(numerator), int(denominator)))
    return tuple(sorted(signatures, key=lambda event: event[0]))


def _track_channels(data: bytes, track_chunks: list[tuple[int, int]], tracks: list) -> list[int] | None:
    """The MIDI channel of each symusic track (as listed in ``tracks``: (track, notes) pairs), or None when
    it cannot be trusted.

    symusic 0.6 splits a track chunk into one track per (channel, program) but does not keep the channel.
    Drum tracks are channel 9 by definition; for the others this scans the note-ons of every MTrk for
    their (channel, program) and maps them onto symusic's tracks in (chunk, channel, program) order,
    accepting the mapping only when every program and drum flag agrees — otherwise channels stay unknown.
    Skipped entirely for drum-only files (every Groove MIDI file), so it costs nothing there.
    """
    if all(track.is_drum or notes["time"].size == 0 for track, notes in tracks):
        return None
    keys: list[tuple[int, int]] = []
    for start, end in track_chunks:
        chunk_keys = _note_on_keys(data, start, end)
        if chunk_keys is None:
            return None
        keys.extend(sorted(chunk_keys))
    if len(keys) != len(tracks):
        return None
    for (track, _), (channel, program) in zip(tracks, keys, strict=True):
        if track.program != program or bool(track.is_drum) != (channel == DRUM_CHANNEL):
            return None
    return [channel for channel, _ in keys]


def _note_on_keys(data: bytes, position: int, end: int) -> set[tuple[int, int]] | None:
    """(channel, program) of every sounding note-on in one MTrk chunk; None if the events do not parse."""
    programs = [0] * 16
    keys: set[tuple[int, int]] = set()
    status = 0
    try:
        while position < end:
            while data[position] & 0x80:  # delta time (variable length), value not needed
                position += 1
            position += 1
            byte = data[position]
            if byte == 0xFF:  # meta event: type, length, payload
                position, length = _read_varlen(data, position + 2)
                position += length
                continue
            if byte in (0xF0, 0xF7):  # sysex: length, payload
                position, length = _read_varlen(data, position + 1)
                position += length
                continue
            if byte & 0x80:
                status = byte
                position += 1
            elif not status:
                return None  # a data byte with no running status
            kind, channel = status & 0xF0, status & 0x0F
            if kind == 0xC0:
                programs[channel] = data[position]
            elif kind == 0x90 and data[position + 1] > 0:
                keys.add((channel, programs[channel]))
            position += 1 if kind in (0xC0, 0xD0) else 2
    except IndexError:
        return None
    return keys


def _read_varlen(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[position]
        position += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return position, value


# ------------------------------------------------------------------------------------------- metadata


def read_pack_metadata(csv_bytes: bytes) -> dict[str, dict]:
    """The Groove MIDI Dataset's info.csv as {midi_filename: {column: value}}.

    midi_filename (relative to the pack root, '/'-separated) is the key and is not repeated in the value;
    bpm and duration become floats (None when blank); every other column stays a string. Raises
    PackMetadataError naming what is wrong: missing columns, a bad number, a path listed twice.
    """
    try:
        text = csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PackMetadataError(f"pack metadata is not UTF-8: {error}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [column for column in PACK_METADATA_COLUMNS if column not in header]
    if missing:
        raise PackMetadataError(f"pack metadata lacks column(s) {missing}; expected the Groove MIDI info.csv "
                                f"columns {list(PACK_METADATA_COLUMNS)}, found {header}")
    rows: dict[str, dict] = {}
    for line, row in enumerate(reader, start=2):
        path = _metadata_key(row.pop("midi_filename") or "")
        if not path:
            raise PackMetadataError(f"pack metadata line {line}: empty midi_filename")
        if path in rows:
            raise PackMetadataError(f"pack metadata line {line}: {path!r} is listed twice")
        row.pop(None, None)  # cells beyond the header (ragged line)
        for column in _NUMERIC_METADATA:
            value = (row.get(column) or "").strip()
            try:
                row[column] = float(value) if value else None
            except ValueError:
                raise PackMetadataError(f"pack metadata line {line}: {column} {value!r} is not a number") from None
        rows[path] = row
    return rows


def _metadata_key(path: str) -> str:
    """Metadata keys and file paths compared the same way: '/' separators, no leading './'.
    Nothing else is normalised: '../x.mid' stays '../x.mid' (and has no metadata row)."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


# -------------------------------------------------------------------------------------------- slicing


@dataclass(frozen=True)
class _MeterSection:
    start: int  # tick of the section's first bar line
    numerator: int
    denominator: int
    ticks_per_bar: int
    end: int | None  # tick where the next section starts; None for the last one
    first_bar: int  # global index of the section's first bar


def _meter_sections(parsed: ParsedMidi) -> list[_MeterSection]:
    """Constant-meter sections: a new one starts at every time-signature change.

    4/4 applies before the first time signature (the SMF default). A repeated signature that falls on a
    bar line of the running section does not split it. Bars are numbered across the file; a bar cut short
    by a change that is not on a bar line still counts as one bar.
    """
    events = [(0, 4, 4)] + [s for s in parsed.time_signatures]
    starts: list[tuple[int, int, int]] = []
    for tick, numerator, denominator in events:
        if starts and starts[-1][0] == tick:
            starts[-1] = (tick, numerator, denominator)  # the last of several events on one tick wins
            continue
        if starts and starts[-1][1:] == (numerator, denominator):
            start, num, den = starts[-1]
            if (tick - start) % (parsed.ticks_per_beat * 4 * num // den) == 0:
                continue
        starts.append((tick, numerator, denominator))
    sections: list[_MeterSection] = []
    first_bar = 0
    for i, (start, numerator, denominator) in enumerate(starts):
        ticks_per_bar = parsed.ticks_per_beat * 4 * numerator // denominator
        end = starts[i + 1][0] if i + 1 < len(starts) else None
        sections.append(_MeterSection(start, numerator, denominator, ticks_per_bar, end, first_bar))
        if end is not None:
            first_bar += -(-(end - start) // ticks_per_bar)
    return sections


def _bar_index(onset: np.ndarray, origin: np.ndarray | int, ticks_per_bar: np.ndarray | int,
               grace: float) -> np.ndarray:
    """Bar of each onset counted from origin, moving a hit played less than ``grace`` ticks before a bar
    line into that bar: the open interval (bar line − grace, bar line) belongs to the bar that follows."""
    offset = onset - origin
    on_time = np.floor_divide(offset, ticks_per_bar)
    early = np.ceil((offset + grace) / ticks_per_bar).astype(np.int64) - 1
    return np.maximum(on_time, early)


def slice_loops(
    parsed: ParsedMidi,
    *,
    bars: Sequence[int] = (2, 4),
    source: Mapping | None = None,
    drums_only: bool = True,
    early_grace_quarters: float = EARLY_GRACE_QUARTERS,
) -> list[Loop]:
    """Cut a file into non-overlapping bar-aligned windows of each length in ``bars``; see _slice."""
    return _slice(parsed, bars=bars, source=source, drums_only=drums_only,
                  early_grace_quarters=early_grace_quarters)[0]


def _slice(
    parsed: ParsedMidi,
    *,
    bars: Sequence[int],
    source: Mapping | None,
    drums_only: bool,
    early_grace_quarters: float,
) -> tuple[list[Loop], int]:
    """The loops and the number of incomplete windows that were not emitted.

    Rules:
    - Windows follow the time signature: each constant-meter section is cut from its first bar line into
      windows of ``n`` bars; a window never spans a meter change.
    - A note belongs to the window its onset falls in, except that a hit less than ``early_grace_quarters``
      (default a 32nd note) before a bar line belongs to the bar after it — a drummer playing the downbeat
      early. Its re-based onset is then slightly negative (e.g. -10 ticks): the timing is kept, not clamped.
      A hit exactly a 32nd before the bar line is a written 32nd and stays where it is.
    - Only complete windows are emitted: inside a section, all its bars must fit before the next meter
      change; in the last section, before the end of the bar holding the last onset. Empty windows are
      not emitted. Durations are kept even when a note rings past the window's end.
    - loop_id = f"{sha256[:12]}:{n}b:{first bar}" (bars counted from 0 across the file): stable for the
      same bytes whatever the file is called or in which order the pack lists it.
    - tempos_bpm: the tempo in force at the window's start, then every change inside it (120 BPM, the
      SMF default, when the file has no tempo event).
    """
    if not 0 <= early_grace_quarters < 1:
        raise ValueError(f"early_grace_quarters must be in [0, 1), got {early_grace_quarters}")
    mask = parsed.is_drum if drums_only else np.ones(parsed.n_notes, dtype=bool)
    onset = parsed.onset[mask]
    if onset.size == 0:
        return [], 0
    notes = {
        "duration": parsed.duration[mask],
        "pitch": parsed.pitch[mask],
        "velocity": parsed.velocity[mask],
        "channel": parsed.channel[mask],
        "program": parsed.program[mask],
    }
    grace = parsed.ticks_per_beat * early_grace_quarters
    sections = _meter_sections(parsed)
    section_starts = np.array([s.start for s in sections], dtype=np.int64)
    # section of each note, with the same "early hit belongs to what follows" rule at section boundaries
    on_time = np.searchsorted(section_starts, onset, side="right") - 1
    early = np.searchsorted(section_starts, onset + grace, side="left") - 1
    section_of = np.maximum(on_time, early)
    origin = section_starts[section_of]
    ticks_per_bar = np.array([s.ticks_per_bar for s in sections], dtype=np.int64)[section_of]
    bar_in_section = _bar_index(onset, origin, ticks_per_bar, grace)

    tempo_ticks = np.array([t for t, _ in parsed.tempos], dtype=np.int64)
    tempo_bpms = [bpm for _, bpm in parsed.tempos]
    base_source = {**(source or {}), "file_digest": parsed.sha256, "path": parsed.name}
    loops: list[Loop] = []
    partial = 0
    for n_bars in bars:
        window_in_section = bar_in_section // n_bars
        # notes are sorted, so (section, window) never decreases: windows are contiguous runs
        key = section_of * (int(window_in_section.max()) + 1) + window_in_section
        boundaries = np.flatnonzero(np.diff(key)) + 1
        for lo, hi in zip(np.r_[0, boundaries], np.r_[boundaries, onset.size], strict=True):
            section = sections[int(section_of[lo])]
            window = int(window_in_section[lo])
            # the last section ends with the bar holding the file's last onset (the last note is in it)
            bars_available = ((section.end - section.start) // section.ticks_per_bar if section.end is not None
                              else int(bar_in_section[-1]) + 1)
            if (window + 1) * n_bars > bars_available:
                partial += 1
                continue
            start_tick = section.start + window * n_bars * section.ticks_per_bar
            length = n_bars * section.ticks_per_bar
            start_bar = section.first_bar + window * n_bars
            loop_id = f"{parsed.sha256[:12]}:{n_bars}b:{start_bar}"
            loops.append(Loop(
                loop_id=loop_id,
                ticks_per_beat=parsed.ticks_per_beat,
                onset=onset[lo:hi] - start_tick,
                duration=notes["duration"][lo:hi],
                pitch=notes["pitch"][lo:hi],
                velocity=notes["velocity"][lo:hi],
                channel=notes["channel"][lo:hi],
                length_ticks=length,
                time_signature=(section.numerator, section.denominator),
                tempos_bpm=_tempos_in(tempo_ticks, tempo_bpms, start_tick, start_tick + length),
                program=None if drums_only else notes["program"][lo:hi],
                source={**base_source, "start_bar": start_bar, "start_tick": start_tick},
            ))
    return loops, partial


def _tempos_in(ticks: np.ndarray, bpms: list[float], start: int, end: int) -> tuple[float, ...]:
    """The tempo in force at ``start`` (the SMF default before the first tempo event), then the changes."""
    in_force = int(np.searchsorted(ticks, start, side="right")) - 1
    changes = bpms[in_force + 1 : int(np.searchsorted(ticks, end, side="left"))]
    return (bpms[in_force] if in_force >= 0 else DEFAULT_BPM, *changes)


# -------------------------------------------------------------------------------------------- filters


def has_layered_hits(loop: Loop, *, tolerance_ticks_at_480: float = LAYER_TOLERANCE_TICKS_AT_480) -> bool:
    """Whether two notes share an onset, within a tolerance scaled to the loop's ticks per beat.

    The product compared ticks exactly. Recorded drums (Groove MIDI, a Roland e-kit at 480 tpb) put a kick
    and a hat struck together a tick or two apart, so exact equality turns away real grooves; the default
    2 ticks at 480 tpb is the tolerance the reference gives for drum collisions. 0 gives the product's rule.
    """
    if loop.n_notes < 2:
        return False
    tolerance = tolerance_ticks_at_480 * loop.ticks_per_beat / 480
    return bool((np.diff(loop.onset) <= tolerance).any())


def loop_reject_reason(
    loop: Loop,
    *,
    min_notes: int = MIN_NOTES,
    drum_loop: bool = True,
    layer_tolerance_ticks_at_480: float = LAYER_TOLERANCE_TICKS_AT_480,
) -> str | None:
    """"too_few_notes", "no_layered_hits" (drum loops only: a groove where nothing is ever struck together
    is a fill or a single-instrument line, not a kit groove), or None when the loop passes."""
    if loop.n_notes < min_notes:
        return "too_few_notes"
    if drum_loop and not has_layered_hits(loop, tolerance_ticks_at_480=layer_tolerance_ticks_at_480):
        return "no_layered_hits"
    return None


# ---------------------------------------------------------------------------------------- entry point


def run_stage1(
    files: Iterable[tuple[str, bytes]],
    metadata: Mapping[str, Mapping] | None,
    *,
    bars: Sequence[int] = (2, 4),
    pitch_map: str = "gm",
    max_bytes: int = MAX_FILE_BYTES,
    near_duplicate_threshold: float = 0.95,
    min_notes: int = MIN_NOTES,
    drums_only: bool = True,
    layer_tolerance_ticks_at_480: float = LAYER_TOLERANCE_TICKS_AT_480,
    early_grace_quarters: float = EARLY_GRACE_QUARTERS,
) -> Stage1Result:
    """Stage 1 over one pack: validate, slice, filter and dedupe, never stopping for one bad file.

    files: (path relative to the pack root, bytes), streamed — only the loops are kept in memory.
    metadata: from read_pack_metadata; a file without a row is rejected ("missing_metadata"). None means
    the pack has no metadata at all, and nothing is required.
    pitch_map: the drum-category table of the canonical grid ("gm"; the Groove MIDI Dataset needs
    "roland_td11", whose hat-edge pitches GM would file under "other").

    Byte-identical files are found by SHA-256 (the product used MD5; SHA-256 is already the loop_id's
    digest and has no practical collisions); ParsedMidi still carries the MD5 for comparison with it.
    """
    bars = tuple(int(b) for b in bars)
    if not bars or any(b <= 0 for b in bars) or len(set(bars)) != len(bars):
        raise ValueError(f"bars must be distinct positive bar counts, got {bars}")
    category_lookup(pitch_map)  # a bad pitch map is a configuration error: fail before reading the pack
    if not 0.0 < near_duplicate_threshold <= 1.0:
        raise ValueError(f"near_duplicate_threshold must be in (0, 1], got {near_duplicate_threshold}")
    if not 0 <= early_grace_quarters < 1:
        raise ValueError(f"early_grace_quarters must be in [0, 1), got {early_grace_quarters}")

    result = Stage1Result()
    seen: dict[str, str] = {}  # sha256 → the path kept
    candidates: list[Loop] = []
    started = time.perf_counter()
    for name, data in files:
        result.files_in += 1
        try:
            parsed, row = _accept_file(name, data, metadata, max_bytes=max_bytes, drums_only=drums_only)
            if parsed.sha256 in seen:
                raise MidiReject("duplicate_file", f"{name!r} is byte-identical to {seen[parsed.sha256]!r}")
            seen[parsed.sha256] = name
            loops, partial = _slice(parsed, bars=bars, source=row, drums_only=drums_only,
                                    early_grace_quarters=early_grace_quarters)
        except MidiReject as reject:
            result.rejected_files.append((name, reject.reason, reject.message))
            result.counts[reject.reason] += 1
            continue
        except Exception as error:  # a bug here must not cost the rest of the pack
            result.rejected_files.append((name, "internal_error", f"{type(error).__name__}: {error}"))
            result.counts["internal_error"] += 1
            continue
        result.files_accepted += 1
        result.windows_sliced += len(loops)
        result.counts["partial_window"] += partial
        for loop in loops:
            reason = loop_reject_reason(loop, min_notes=min_notes, drum_loop=drums_only,
                                        layer_tolerance_ticks_at_480=layer_tolerance_ticks_at_480)
            if reason:
                result.rejected_loops.append((loop.loop_id, reason))
                result.counts[reason] += 1
            else:
                candidates.append(loop)
    sliced = time.perf_counter()

    grids = [canonical_grid(loop, pitch_map) for loop in candidates]
    keep, result.exact_duplicates = exact_duplicates(candidates, grids)
    result.counts["exact_duplicate"] = len(result.exact_duplicates)
    result.loops = [candidates[i] for i in keep]
    result.near_duplicate_clusters = near_duplicate_clusters(
        [candidates[i].loop_id for i in keep],
        [grids[i] for i in keep],
        [loop_bars(candidates[i]) for i in keep],
        threshold=near_duplicate_threshold,
    )
    result.counts["near_duplicate_loops"] = sum(len(c.loop_ids) for c in result.near_duplicate_clusters)
    result.seconds = {"parse_slice_filter": sliced - started, "dedupe": time.perf_counter() - sliced}
    return result


def _accept_file(name: str, data: bytes, metadata: Mapping[str, Mapping] | None, *, max_bytes: int,
                 drums_only: bool) -> tuple[ParsedMidi, dict]:
    """Parse one file and find its metadata row, or raise MidiReject."""
    row: dict = {}
    if metadata is not None:
        found = metadata.get(_metadata_key(name))
        if found is None:
            raise MidiReject("missing_metadata", f"{name!r} has no row in the pack metadata")
        row = dict(found)
    parsed = parse_midi(data, name, max_bytes=max_bytes)
    if drums_only and not parsed.is_drum.any():
        raise MidiReject("no_drum_notes", f"{name!r} has {parsed.n_notes} notes but none on the drum channel "
                                          "(MIDI channel 10)")
    return parsed, row

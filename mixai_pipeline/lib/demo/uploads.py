"""The demo inbox: realistic uploads rendered from Bach chorales, plus deliberately bad ones.

Each good upload is ``uploads/<job_id>/{inst.<fmt>, vocal.<fmt>, manifest.json}``; its ground truth
(chorale, voices, GM programs, tempo, key, the vocal's true offset) is written beside the inbox at
``groundtruth/<job_id>.json`` for the alignment and mixing work that follows. Job ids are derived
from the demo slot, and existing uploads are left alone, so running the demo twice adds nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mixai_pipeline.lib.demo import render
from mixai_pipeline.lib.ingestion.inbox import INBOX_PREFIX, MANIFEST_NAME
from mixai_pipeline.lib.storage.object_store import LocalObjectStore, ObjectStore, S3ObjectStore

DEMO_NAMESPACE = uuid.UUID("3a4f0c2e-58b1-4d0a-8a47-0d6e9c1b7f25")
GROUNDTRUTH_PREFIX = "groundtruth/"
DEMO_USERS = [uuid.uuid5(DEMO_NAMESPACE, f"user-{i}") for i in range(4)]
PLANS = ["standard", "creator", "lite", "freetrial"]
# (chorale, instrumental patch, tempo bpm, repeats, vocal offset ms, inst format, vocal format)
GOOD_UPLOADS = [
    ("bach/bwv66.6", "piano", 92, 2, 0.0, "wav", "wav"),
    ("bach/bwv269", "strings", 84, 2, 250.0, "flac", "mp3"),
    ("bach/bwv347", "organ", 76, 2, -180.0, "wav", "flac"),
    ("bach/bwv153.1", "piano", 96, 2, 1200.0, "m4a", "ogg"),
    ("bach/bwv86.6", "strings", 88, 2, 40.0, "mp3", "wav"),
    ("bach/bwv40.6", "organ", 80, 2, -35.0, "ogg", "m4a"),
    ("bach/bwv267", "piano", 100, 2, 600.0, "flac", "flac"),
    ("bach/bwv281", "strings", 72, 2, 0.0, "wav", "mp3"),
]


@dataclass(frozen=True)
class DemoUpload:
    job_id: uuid.UUID
    kind: str          # "good" or the bad case
    description: str
    written: bool      # False when it was already in the inbox


def demo_job_id(slot: str) -> uuid.UUID:
    return uuid.uuid5(DEMO_NAMESPACE, slot)


def _manifest(job_id: uuid.UUID, index: int, **overrides) -> bytes:
    document = {
        "job_id": str(job_id),
        "user_id": str(DEMO_USERS[index % len(DEMO_USERS)]),
        "plan": PLANS[index % len(PLANS)],
        "consent": {"qa": True, "training": index % 4 != 3},
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    document.update(overrides)
    return json.dumps(document, indent=2).encode()


def _put_unchecked(store: ObjectStore, key: str, data: bytes) -> None:
    """Write under a key the store's own API refuses: what a misbehaving client could do."""
    if isinstance(store, LocalObjectStore):
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    elif isinstance(store, S3ObjectStore):
        import io

        store.client.put_object(store.bucket, key, io.BytesIO(data), len(data))
    else:  # pragma: no cover - only two implementations exist
        raise TypeError(type(store).__name__)


def write_good_upload(store: ObjectStore, index: int, spec: tuple, workdir: Path, *, slot: str | None = None,
                      **manifest_overrides) -> DemoUpload:
    corpus_path, patch, bpm, repeats, offset_ms, inst_fmt, vocal_fmt = spec
    job_id = demo_job_id(slot or f"good-{index}-{corpus_path}")
    prefix = f"{INBOX_PREFIX}{job_id}/"
    description = (f"{corpus_path}: S → choir vocal ({vocal_fmt}), ATB → {patch} ({inst_fmt}), "
                   f"offset {offset_ms:+.0f} ms")
    # The ground truth is written last and never purged: a demo upload a withdrawal or retention since
    # deleted (manifest included) is not uploaded again as if the user had come back.
    truth_key = f"{GROUNDTRUTH_PREFIX}{job_id}.json"
    if store.exists(truth_key):
        return DemoUpload(job_id, "good", description, written=False)
    score = render.load_chorale(corpus_path)
    info = render.chorale_info(score, corpus_path)
    melody, accompaniment = [0], list(range(1, len(info.part_names)))  # soprano first, as in the corpus
    stems = {}
    for stem, parts, program, fmt, delay in (
            ("inst", accompaniment, render.PROGRAMS[patch], inst_fmt, 0.0),
            ("vocal", melody, render.PROGRAMS["choir"], vocal_fmt, offset_ms)):
        midi_path, wav_path = workdir / f"{job_id}-{stem}.mid", workdir / f"{job_id}-{stem}.wav"
        render.write_midi(score, parts, program, bpm, repeats, midi_path)
        render.synthesize(midi_path, wav_path)
        out = workdir / f"{stem}.{fmt}"
        render.encode(wav_path, out, fmt, delay_ms=delay)
        stems[stem] = out
    truth = {"job_id": str(job_id), "chorale": corpus_path, "key": info.key, "bpm": bpm, "repeats": repeats,
             "vocal_parts": [info.part_names[i] for i in melody],
             "inst_parts": [info.part_names[i] for i in accompaniment],
             "programs": {"inst": render.PROGRAMS[patch], "vocal": render.PROGRAMS["choir"]},
             "vocal_offset_ms": offset_ms,
             "offset_convention": "positive: the vocal file starts later than the shared timeline "
                                  "(silence added); negative: its first ms were trimmed",
             "formats": {"inst": inst_fmt, "vocal": vocal_fmt}, "sample_rate": render.SAMPLE_RATE}
    for path in stems.values():
        store.put_file(f"{prefix}{path.name}", path)
    # The manifest goes after the stems: it is what marks the upload complete.
    store.put_bytes(prefix + MANIFEST_NAME, _manifest(job_id, index, bpm=float(bpm), key=info.key,
                                                      **manifest_overrides), "application/json")
    store.put_bytes(truth_key, json.dumps(truth, indent=2).encode(), "application/json")
    return DemoUpload(job_id, "good", description, written=True)


def _bad_cases(wav: bytes) -> list[tuple[str, str, dict[str, bytes], bool]]:
    """(slot, description, files, raw) — ``raw`` files bypass the store's key validation."""
    cases = []

    def manifest(slot: str, **overrides) -> bytes:
        return _manifest(demo_job_id(slot), 0, **overrides)

    cases.append(("bad-json", "manifest.json is not valid JSON",
                  {"inst.wav": wav, "vocal.wav": wav, MANIFEST_NAME: manifest("bad-json")[:40]}, False))
    cases.append(("bad-plan", "unknown plan 'gold'",
                  {"inst.wav": wav, "vocal.wav": wav, MANIFEST_NAME: manifest("bad-plan", plan="gold")}, False))
    cases.append(("bad-missing-vocal", "no vocal stem",
                  {"inst.wav": wav, MANIFEST_NAME: manifest("bad-missing-vocal")}, False))
    cases.append(("bad-corrupt", "inst.wav holds random bytes",
                  {"inst.wav": bytes(range(256)) * 64, "vocal.wav": wav,
                   MANIFEST_NAME: manifest("bad-corrupt")}, False))
    cases.append(("bad-empty", "vocal.wav is zero-length",
                  {"inst.wav": wav, "vocal.wav": b"", MANIFEST_NAME: manifest("bad-empty")}, False))
    cases.append(("bad-format", "vocal is .aiff (unsupported)",
                  {"inst.wav": wav, "vocal.aiff": wav, MANIFEST_NAME: manifest("bad-format")}, False))
    cases.append(("bad-hostile-name", "a file name with a control character",
                  {"inst.wav": wav, "vocal.wav": wav, "vocal\x1b[31m.wav": wav,
                   MANIFEST_NAME: manifest("bad-hostile-name")}, True))
    return cases


def write_bad_uploads(store: ObjectStore, wav: bytes) -> list[DemoUpload]:
    written = []
    for slot, description, files, raw in _bad_cases(wav):
        job_id = demo_job_id(slot)
        prefix = f"{INBOX_PREFIX}{job_id}/"
        if store.exists(prefix + MANIFEST_NAME):
            written.append(DemoUpload(job_id, slot, description, written=False))
            continue
        for name, data in sorted(files.items(), key=lambda item: item[0] == MANIFEST_NAME):
            if raw and name != MANIFEST_NAME:
                _put_unchecked(store, prefix + name, data)
            else:
                store.put_bytes(prefix + name, data)
        written.append(DemoUpload(job_id, slot, description, written=True))
    return written


AGED_DAYS = 31
AGED_USER = uuid.uuid5(DEMO_NAMESPACE, "user-aged")


def write_aged_upload(store: ObjectStore, workdir: Path, days_old: int = AGED_DAYS) -> DemoUpload | None:
    """One rendered upload that arrived ``days_old`` days ago (its objects' modification times set back), so
    that the demo can show a real retention purge: its stems (7 d), master (15 d) and previews (30 d) are
    past their expiry. Only on the local store (an S3 object's time cannot be set): None there."""
    if not isinstance(store, LocalObjectStore):
        return None
    arrived = datetime.now(timezone.utc) - timedelta(days=days_old)
    upload = write_good_upload(store, 2, GOOD_UPLOADS[2], workdir, slot=f"aged-{days_old}d",
                               user_id=str(AGED_USER), plan="standard", created_at=arrived.isoformat())
    if upload.written:
        for info in store.list(f"{INBOX_PREFIX}{upload.job_id}/"):
            os.utime(store.root / info.key, (arrived.timestamp(), arrived.timestamp()))
    return DemoUpload(upload.job_id, f"aged {days_old} days", upload.description, upload.written)


def write_demo_inbox(store: ObjectStore, count: int | None = None, bad: bool = True, aged: bool = False,
                     log: Callable[[str], None] = print) -> list[DemoUpload]:
    """Write ``count`` rendered uploads (all by default), with ``aged`` one that arrived a month ago, and the
    bad ones; return what is in the demo inbox."""
    count = len(GOOD_UPLOADS) if count is None else count
    if not 0 <= count <= len(GOOD_UPLOADS):
        raise ValueError(f"count must be between 0 and {len(GOOD_UPLOADS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="mixai-demo-") as tmp:
        workdir = Path(tmp)
        for index, spec in enumerate(GOOD_UPLOADS[:count]):
            upload = write_good_upload(store, index, spec, workdir)
            log(f"  {'wrote  ' if upload.written else 'exists '} {upload.job_id}  {upload.description}")
            results.append(upload)
        if aged:
            upload = write_aged_upload(store, workdir)
            if upload is None:
                log("  (the month-old upload needs the local store: an S3 object's time cannot be set back)")
            else:
                log(f"  {'wrote  ' if upload.written else 'exists '} {upload.job_id}  {upload.description}, "
                    f"arrived {AGED_DAYS} days ago")
                results.append(upload)
        if bad:
            short = workdir / "short.wav"
            render.encode_tone(short)
            for upload in write_bad_uploads(store, short.read_bytes()):
                log(f"  {'wrote  ' if upload.written else 'exists '} {upload.job_id}  bad: {upload.description}")
                results.append(upload)
    return results

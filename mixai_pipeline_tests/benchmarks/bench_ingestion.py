"""Ingestion benchmarks, each against a baseline measured side by side in the same run.

1. registration: one day of N uploads (60 s stereo WAV stems) through ``register_day`` with the worker
   pool against the same code with one worker (the straightforward serial loop).
2. probing: ``probe_stem`` (ffprobe + a full ffmpeg decode, which catches truncated and corrupt
   files) against ffprobe alone (header only), per 60 s stem: what the safety costs.
3. sensor tick: listing, grouping and advancing the cursor over an inbox of 10,000 uploads against
   ``os.walk`` + ``os.stat`` of every file of the same directory (the floor for any listing with mtimes).

Medians of repeated runs; seconds are wall-clock on whatever machine runs it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

from mixai_pipeline import settings
from mixai_pipeline.lib.ingestion.audio_probe import probe_stem
from mixai_pipeline.lib.ingestion.inbox import INBOX_PREFIX, InboxCursor, group_uploads
from mixai_pipeline.lib.ingestion.registration import register_day
from mixai_pipeline.lib.storage.database import engine_for
from mixai_pipeline.lib.storage.object_store import LocalObjectStore
from mixai_pipeline_tests.benchmarks.common import embedded_postgres, fresh_database, median_time
from mixai_pipeline_tests.conftest import write_upload

UPLOADS = 16
REPEATS = 3


def _stem(path: Path, seconds: float = 60.0) -> bytes:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"anoisesrc=d={seconds}:c=pink:r=44100:a=0.2", "-ac", "2", str(path)], check=True)
    return path.read_bytes()


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="mixai-bench-") as tmp, embedded_postgres(Path(tmp) / "pg") as admin_uri:
        return _run(Path(tmp), admin_uri)


def _run(tmp: Path, admin_uri: str) -> dict:
    store = LocalObjectStore(tmp / "objects")
    wav = _stem(tmp / "stem.wav")
    for _ in range(UPLOADS):
        write_upload(store, {"inst.wav": wav, "vocal.wav": wav})
    uploads = list(group_uploads(store.list(INBOX_PREFIX)).values())
    day = date.today()

    def register(workers: int):
        def once():
            url = fresh_database(admin_uri)
            report = register_day(store, engine_for(url), uploads, day, actor="bench", max_workers=workers)
            assert len(report.accepted) == UPLOADS, report.errors
            engine_for(url).dispose()
        return once

    workers = os.cpu_count() or 2
    pool_s = median_time(register(workers), REPEATS)
    serial_s = median_time(register(1), REPEATS)

    stem_path = tmp / "stem.wav"
    full_probe_s = median_time(lambda: probe_stem(stem_path, "stem.wav", "wav"), 5)
    header_probe_s = median_time(lambda: subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(stem_path)],
        check=True, capture_output=True), 5)

    inbox = LocalObjectStore(tmp / "inbox")
    for i in range(10_000):
        prefix = inbox.root / "uploads" / str(uuid.UUID(int=i))
        prefix.mkdir(parents=True)
        for name in ("inst.wav", "vocal.wav", "manifest.json"):
            (prefix / name).write_bytes(b"x")
    now = datetime.now(timezone.utc)
    tick_s = median_time(lambda: InboxCursor().advance(
        group_uploads(inbox.list(INBOX_PREFIX)).values(), now, settings.BUSINESS_TIMEZONE), REPEATS)
    # The least any listing with modification times does: walk the tree and stat every file.
    walk_s = median_time(lambda: [os.stat(os.path.join(d, f)) for d, _, files in os.walk(inbox.root / "uploads")
                                   for f in files], REPEATS)

    return {
        "registration": {
            "uploads": UPLOADS, "stem_seconds": 60, "workers": workers,
            "pool_median_s": round(pool_s, 3), "serial_baseline_median_s": round(serial_s, 3),
            "pool_uploads_per_hour": round(UPLOADS / pool_s * 3600),
            "serial_uploads_per_hour": round(UPLOADS / serial_s * 3600),
            "speedup": round(serial_s / pool_s, 2),
        },
        "probe_60s_stem": {
            "full_decode_median_ms": round(full_probe_s * 1000, 1),
            "header_only_baseline_median_ms": round(header_probe_s * 1000, 1),
            "cost_ratio": round(full_probe_s / header_probe_s, 2),
        },
        "sensor_tick_10k_uploads": {
            "list_group_cursor_median_s": round(tick_s, 3),
            "os_walk_stat_baseline_median_s": round(walk_s, 3),
            "overhead_ratio": round(tick_s / walk_s, 2),
        },
    }

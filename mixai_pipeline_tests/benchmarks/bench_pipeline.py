"""The audio pipeline benchmark: one day partition of N uploads with rendered 60 s stems through every
asset (uploads → aligned_stems → mixes → masters → previews → features_store → labels), on this machine.

Side by side in the same run, alternating: (a) Dagster materializing the seven assets in process on a
PostgreSQL-backed instance (run and event storage in Postgres, as deployed); (b) the same library calls
without Dagster (``lib/pipeline/runner.run_day``: registration, every stage in the same worker pool, the
labels). Each run starts from a fresh database; the object store is reused (its writes are idempotent
overwrites, the same work every time). Dagster's overhead is (a − b) / a. Medians over the repeats.

Uploads cycle through four chorale renderings (piano, strings, organ accompaniment; choir vocal, the
vocal offset by a known amount), stereo 44.1 kHz WAV, 60 s each. ``MIXAI_BENCH_UPLOADS`` (default 12)
and ``MIXAI_BENCH_REPEATS`` (default 3) scale it.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

import dagster as dg
import soundfile as sf
import yaml
from sqlalchemy.engine import make_url

from mixai_pipeline.defs.audio.assets import aligned_stems, features_store, labels, masters, mixes, previews
from mixai_pipeline.defs.ingestion.assets import uploads
from mixai_pipeline.lib.demo import render
from mixai_pipeline.lib.ingestion.inbox import INBOX_PREFIX, group_uploads, partition_key
from mixai_pipeline.lib.pipeline import runner
from mixai_pipeline.lib.storage.database import engine_for
from mixai_pipeline.lib.storage.object_store import LocalObjectStore
from mixai_pipeline.resources import Database, ObjectStoreResource
from mixai_pipeline.resources.embedded_postgres import with_database
from mixai_pipeline.settings import BUSINESS_TIMEZONE
from mixai_pipeline_tests.benchmarks.common import embedded_postgres, fresh_database
from mixai_pipeline_tests.conftest import write_upload

ASSETS = [uploads, aligned_stems, mixes, masters, previews, features_store, labels]
STEM_SECONDS = 60.0
PAIRS = (  # chorale, accompaniment patch, bpm, vocal offset (ms)
    ("bach/bwv66.6", "piano", 92, 0.0),
    ("bach/bwv269", "strings", 84, 250.0),
    ("bach/bwv347", "organ", 76, -180.0),
    ("bach/bwv153.1", "piano", 96, 1200.0),
)


def _render_pair(workdir: Path, corpus_path: str, patch: str, bpm: int, offset_ms: float) -> dict[str, bytes]:
    """inst.wav (ATB) and vocal.wav (S, choir, shifted by offset_ms), each exactly 60 s."""
    score = render.load_chorale(corpus_path)
    repeats = math.ceil((STEM_SECONDS + 2.0) / (float(score.highestTime) * 60.0 / bpm))
    out = {}
    for stem, parts, program, delay in (
            ("inst", list(range(1, len(score.parts))), render.PROGRAMS[patch], 0.0),
            ("vocal", [0], render.PROGRAMS["choir"], offset_ms)):
        midi, wav, final = (workdir / f"{stem}.mid", workdir / f"{stem}.wav", workdir / f"{stem}-out.wav")
        render.write_midi(score, parts, program, bpm, repeats, midi)
        render.synthesize(midi, wav)
        render.encode(wav, final, "wav", delay_ms=delay)
        audio, sr = sf.read(final, always_2d=True)
        sf.write(final, audio[: int(STEM_SECONDS * sr)], sr, subtype="PCM_16")
        out[f"{stem}.wav"] = final.read_bytes()
    return out


def _dagster_instance(home: Path, admin_uri: str) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    url = fresh_database(admin_uri, migrated=False)
    postgres_url = with_database(url, make_url(url).database, "psycopg2")
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "storage": {"postgres": {"postgres_url": postgres_url}}, "telemetry": {"enabled": False}}))
    return dg.DagsterInstance.from_config(str(home))


def run() -> dict:
    n_uploads = int(os.environ.get("MIXAI_BENCH_UPLOADS", "12"))
    repeats = int(os.environ.get("MIXAI_BENCH_REPEATS", "3"))
    with tempfile.TemporaryDirectory(prefix="mixai-bench-pipeline-") as tmp, \
            embedded_postgres(Path(tmp) / "pg") as admin_uri:
        tmp = Path(tmp)
        store = LocalObjectStore(tmp / "objects")
        pairs = []
        for i, spec in enumerate(PAIRS):
            (tmp / f"render{i}").mkdir()
            pairs.append(_render_pair(tmp / f"render{i}", *spec))
        for i in range(n_uploads):
            write_upload(store, pairs[i % len(pairs)])
        day_key = partition_key(datetime.now(timezone.utc), BUSINESS_TIMEZONE)
        day_uploads = list(group_uploads(store.list(INBOX_PREFIX)).values())
        instance = _dagster_instance(tmp / "dagster_home", admin_uri)
        workers = max(2, os.cpu_count() or 2)  # the assets' default
        stage_seconds: list[dict[str, float]] = []  # the library runs' wall seconds per stage

        def with_dagster() -> dict:
            resources = {"database": Database(url=fresh_database(admin_uri)),
                         "object_store": ObjectStoreResource(backend="local", root=str(store.root))}
            result = dg.materialize(ASSETS, partition_key=day_key, resources=resources, instance=instance)
            assert result.success
            done = result.asset_materializations_for_node("labels")[0].metadata["jobs_labelled"].value
            return {"labelled": done}

        def without_dagster() -> dict:
            engine = engine_for(fresh_database(admin_uri))
            try:
                summary = runner.run_day(engine, store, day_uploads, date.fromisoformat(day_key),
                                         max_workers=workers, actor="bench")
            finally:
                engine.dispose()
            stage_seconds.append(summary["seconds"])
            return {"labelled": summary["labels"]}

        timings: dict[str, list[float]] = {"dagster": [], "library": []}
        outcomes = {}
        for _ in range(repeats):
            for name, fn in (("dagster", with_dagster), ("library", without_dagster)):
                start = time.perf_counter()
                outcomes[name] = fn()
                timings[name].append(time.perf_counter() - start)
        assert outcomes["dagster"] == outcomes["library"] == {"labelled": n_uploads}, outcomes

    dagster_s, library_s = statistics.median(timings["dagster"]), statistics.median(timings["library"])
    stage_s = {stage: statistics.median(run[stage] for run in stage_seconds) for stage in stage_seconds[0]}
    return {
        "uploads": n_uploads, "stem_seconds": STEM_SECONDS, "repeats": repeats, "workers": workers,
        "cpu_count": os.cpu_count(),
        "dagster": {"median_s": round(dagster_s, 2), "uploads_per_hour": round(n_uploads / dagster_s * 3600),
                    "runs_s": [round(t, 2) for t in timings["dagster"]]},
        "library_baseline": {"median_s": round(library_s, 2),
                             "uploads_per_hour": round(n_uploads / library_s * 3600),
                             "runs_s": [round(t, 2) for t in timings["library"]]},
        "dagster_overhead_share": round((dagster_s - library_s) / dagster_s, 3),
        # where the library's time goes: median wall seconds per stage, and per upload on all workers
        "library_stage_median_s": {stage: round(s, 2) for stage, s in stage_s.items()},
        "library_stage_core_s_per_upload": {stage: round(s * workers / n_uploads, 2) for stage, s in stage_s.items()},
        "seconds_per_upload": round(dagster_s / n_uploads, 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

"""Recording the audio stages in PostgreSQL: the day's jobs in, one upserted row per job and stage out.

Every write is keyed by job_id (and path for objects), so re-materializing a day or backfilling a
range rewrites the same rows. Object expiry is anchored at the upload's arrival (``jobs.received_at``)
plus the plan's retention for the kind, so that re-running a stage never extends a retention period.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, text

from mixai_pipeline.lib.pipeline.stages import JobInput, StoredObject
from mixai_pipeline.lib.storage.database import write_audit

_STAGE_TABLES = {"aligned_stems": "alignments", "mixes": "mixes", "masters": "masters"}


def day_jobs(conn: Connection, day: str, *, needs: str | None = None) -> list[JobInput]:
    """Accepted, not failed jobs of the day with live stems (and the row of stage ``needs``, if given)."""
    rows = conn.execute(text(
        """SELECT j.job_id::text AS job_id, j.plan, j.preset, j.bpm,
                  max(v.path) FILTER (WHERE v.kind = 'inst') AS inst_path,
                  max(v.path) FILTER (WHERE v.kind = 'vocal') AS vocal_path,
                  a.offset_ms, mp.answer -> 'params' AS model_master_params, mp.model_version AS master_model
           FROM jobs j
           JOIN vault_items v ON v.job_id = j.job_id AND v.kind IN ('inst', 'vocal')
                            AND v.deleted_at IS NULL AND v.purge_started_at IS NULL
           LEFT JOIN alignments a ON a.job_id = j.job_id
           LEFT JOIN master_params mp ON mp.job_id = j.job_id AND mp.task = 'master_reg' AND mp.source = 'model'
           WHERE j.partition_date = CAST(:day AS date) AND j.status IN ('registered', 'processing', 'done')
           GROUP BY j.job_id, j.plan, j.preset, j.bpm, a.offset_ms, mp.answer, mp.model_version
           ORDER BY j.job_id"""), {"day": day}).mappings().all()
    done = set()
    if needs:
        done = set(conn.execute(text(f"SELECT job_id::text FROM {_STAGE_TABLES[needs]} t JOIN jobs j USING (job_id) "
                                     "WHERE j.partition_date = CAST(:day AS date)"), {"day": day}).scalars())
    return [JobInput(r["job_id"], r["plan"], r["preset"], r["inst_path"], r["vocal_path"],
                     {"bpm": r["bpm"], "offset_ms": r["offset_ms"], "model_master_params": r["model_master_params"],
                      "master_model": r["master_model"]})
            for r in rows if r["inst_path"] and r["vocal_path"] and (not needs or r["job_id"] in done)]


def record_failure(conn: Connection, job_id: str, stage: str, reason: str, *, actor: str, run_id: str | None) -> None:
    conn.execute(text("UPDATE jobs SET status = 'failed', failed_stage = :stage, failure_reason = :reason, "
                      "updated_at = now() WHERE job_id = CAST(:job AS uuid)"),
                 {"job": job_id, "stage": stage, "reason": reason})
    write_audit(conn, actor=actor, action="job.failed", target_type="job", target_id=job_id,
                details={"stage": stage, "reason": reason, "run_id": run_id})


def mark_processing(conn: Connection, job_id: str) -> None:
    conn.execute(text("UPDATE jobs SET status = 'processing', updated_at = now() "
                      "WHERE job_id = CAST(:job AS uuid) AND status = 'registered'"), {"job": job_id})


def record_objects(conn: Connection, job_id: str, objects: tuple[StoredObject, ...], store) -> None:
    """Upsert a vault_items row per stored object (sha256 and size read back from the store)."""
    for obj in objects:
        info = store.stat(obj.path)
        conn.execute(text(
            """INSERT INTO vault_items (job_id, user_id, kind, clip_kind, path, sha256, bytes, codec, duration_s,
                                        sample_rate, channels, consent_qa, consent_training, expires_at)
               SELECT j.job_id, j.user_id, :kind, :clip, :path, :sha256, :bytes, :codec, :duration, :rate,
                      :channels, j.consent_qa, j.consent_training, j.received_at + make_interval(days => r.days)
               FROM jobs j JOIN retention_policies r ON r.plan = j.plan AND r.kind = :kind
               WHERE j.job_id = CAST(:job AS uuid)
               ON CONFLICT (path) DO UPDATE SET sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes,
                   codec = EXCLUDED.codec, duration_s = EXCLUDED.duration_s, sample_rate = EXCLUDED.sample_rate,
                   channels = EXCLUDED.channels, expires_at = EXCLUDED.expires_at, deleted_at = NULL,
                   purge_started_at = NULL"""),
            {"job": job_id, "kind": obj.kind, "clip": obj.clip_kind, "path": obj.path,
             "sha256": store.sha256(obj.path), "bytes": info.size, "codec": obj.codec,
             "duration": obj.duration_s, "rate": obj.sample_rate, "channels": obj.channels})


def _json(value: Any) -> str:
    return json.dumps(value, default=float, allow_nan=False)


def record_alignment(conn: Connection, job_id: str, data: dict) -> None:
    conn.execute(text(
        """INSERT INTO alignments (job_id, offset_ms, method, confidence, dtw_cost, tempo_ratio, stats)
           VALUES (CAST(:job AS uuid), :offset, :method, :confidence, :dtw, :tempo, CAST(:stats AS jsonb))
           ON CONFLICT (job_id) DO UPDATE SET offset_ms = EXCLUDED.offset_ms, method = EXCLUDED.method,
               confidence = EXCLUDED.confidence, dtw_cost = EXCLUDED.dtw_cost, tempo_ratio = EXCLUDED.tempo_ratio,
               stats = EXCLUDED.stats, updated_at = now()"""),
        {"job": job_id, "offset": data["offset_ms"], "method": data["method"], "confidence": data["confidence"],
         "dtw": data.get("dtw_cost"), "tempo": data.get("tempo_ratio"), "stats": _json(data)})


def record_mix(conn: Connection, job_id: str, data: dict, path: str) -> None:
    conn.execute(text(
        """INSERT INTO mixes (job_id, preset, preset_source, path, stats)
           VALUES (CAST(:job AS uuid), :preset, :source, :path, CAST(:stats AS jsonb))
           ON CONFLICT (job_id) DO UPDATE SET preset = EXCLUDED.preset, preset_source = EXCLUDED.preset_source,
               path = EXCLUDED.path, stats = EXCLUDED.stats, updated_at = now()"""),
        {"job": job_id, "preset": data["preset"], "source": data["preset_source"], "path": path,
         "stats": _json(data)})


def record_master(conn: Connection, job_id: str, data: dict, path: str) -> None:
    report = data["report"]
    conn.execute(text(
        """INSERT INTO masters (job_id, params, params_source, rule_params, lufs_in, lufs_out, true_peak_dbtp, path,
                                report)
           VALUES (CAST(:job AS uuid), :params, :source, :rule_params, :lufs_in, :lufs_out, :tp, :path,
                   CAST(:report AS jsonb))
           ON CONFLICT (job_id) DO UPDATE SET params = EXCLUDED.params, params_source = EXCLUDED.params_source,
               rule_params = EXCLUDED.rule_params,
               lufs_in = EXCLUDED.lufs_in, lufs_out = EXCLUDED.lufs_out, true_peak_dbtp = EXCLUDED.true_peak_dbtp,
               path = EXCLUDED.path, report = EXCLUDED.report, updated_at = now()"""),
        {"job": job_id, "params": data["params"], "source": data["params_source"],
         "rule_params": data.get("rule_params"),
         "lufs_in": report.get("input_integrated_lufs"), "lufs_out": report.get("output_integrated_lufs"),
         "tp": report.get("output_true_peak_dbtp"), "path": path, "report": _json(report)})


def ensure_feature_layout(conn: Connection, version: str, dim_names: tuple[str, ...]) -> None:
    """The ``feature_layouts`` row of ``version`` (written once; what vectors and models refer to)."""
    conn.execute(text(
        """INSERT INTO feature_layouts (feature_version, n_dim, dim_names, description)
           VALUES (:v, :n, :names, 'seed 000 §5.2 layout + documented extras (lib/features/extract.py)')
           ON CONFLICT (feature_version) DO NOTHING"""), {"v": version, "n": len(dim_names), "names": list(dim_names)})


def record_features(conn: Connection, job_id: str, data: dict, dim_names: tuple[str, ...]) -> None:
    """The layout row (once per version) and one vector per clip kind, upserted by (job, clip, version)."""
    version = data["feature_version"]
    ensure_feature_layout(conn, version, dim_names)
    for clip, clip_data in data["clips"].items():
        conn.execute(text(
            """INSERT INTO features_store (job_id, user_id, clip_kind, feature_version, n_dim, vec, stats)
               SELECT j.job_id, j.user_id, :clip, :v, :n, :vec, CAST(:stats AS jsonb)
               FROM jobs j WHERE j.job_id = CAST(:job AS uuid)
               ON CONFLICT (job_id, clip_kind, feature_version) DO UPDATE SET
                   vec = EXCLUDED.vec, n_dim = EXCLUDED.n_dim, stats = EXCLUDED.stats, user_id = EXCLUDED.user_id"""),
            {"job": job_id, "clip": clip, "v": version, "n": len(clip_data["vec"]), "vec": clip_data["vec"],
             "stats": _json(clip_data["stats"])})


def day_label_inputs(conn: Connection, day: str, feature_version: str) -> list[dict]:
    """Per job of the day: plan, bpm, alignment, the master chain's rule-based params (the label, whatever
    was applied) and the inst/vocal feature vectors."""
    return [dict(r) for r in conn.execute(text(
        """SELECT j.job_id::text AS job_id, j.plan, j.bpm, a.offset_ms, a.method, a.confidence, a.tempo_ratio,
                  coalesce(m.rule_params, m.params) AS master_params, fi.vec AS inst_vec, fv.vec AS vocal_vec
           FROM jobs j
           JOIN alignments a USING (job_id)
           JOIN masters m USING (job_id)
           JOIN features_store fi ON fi.job_id = j.job_id AND fi.clip_kind = 'inst' AND fi.feature_version = :v
           JOIN features_store fv ON fv.job_id = j.job_id AND fv.clip_kind = 'vocal' AND fv.feature_version = :v
           WHERE j.partition_date = CAST(:day AS date) AND j.status IN ('registered', 'processing', 'done')
           ORDER BY j.job_id"""), {"day": day, "v": feature_version}).mappings()]


def record_label(conn: Connection, job_id: str, task: str, *, y_reg: list[float] | None = None,
                 y_cls: str | None = None, details: dict | None = None) -> None:
    conn.execute(text(
        """INSERT INTO labels (job_id, task, y_reg, y_cls, quality, details)
           VALUES (CAST(:job AS uuid), :task, :y_reg, :y_cls, 'auto', CAST(:details AS jsonb))
           ON CONFLICT (job_id, task) DO UPDATE SET y_reg = EXCLUDED.y_reg, y_cls = EXCLUDED.y_cls,
               details = EXCLUDED.details, updated_at = now()
           WHERE labels.quality = 'auto'"""),  # a human correction is never overwritten by a rerun
        {"job": job_id, "task": task, "y_reg": y_reg, "y_cls": y_cls, "details": _json(details or {})})


def mark_done(conn: Connection, job_id: str) -> None:
    conn.execute(text("UPDATE jobs SET status = 'done', updated_at = now() "
                      "WHERE job_id = CAST(:job AS uuid) AND status IN ('registered', 'processing')"), {"job": job_id})

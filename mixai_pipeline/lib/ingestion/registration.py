"""Register a day's uploads: inspect each one, then write it in one transaction.

``inspect_upload`` decides (no database): accepted with its probed stems, or rejected with a reason.
``record_upload`` writes that decision idempotently:

- a new job is inserted with its ``vault_items``, the user's consent and an audit entry;
- the same decision again changes nothing and writes no audit entry;
- an accepted job is never turned into a rejected one by a later scan (its stems may have been
  purged by retention since): the scan's finding is reported, the row stays;
- an upload already registered on another day (its manifest was written again) is not registered
  twice, except that an upload rejected as abandoned is registered once its manifest does arrive.

All writes for one upload share one transaction, so nothing is ever half-written.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, text

from mixai_pipeline.lib.ingestion.audio_probe import SUPPORTED_EXTENSIONS, AudioLimits, StemProbe, probe_stem
from mixai_pipeline.lib.ingestion.inbox import MANIFEST_NAME, InboxUpload
from mixai_pipeline.lib.ingestion.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    RejectError,
    parse_manifest,
    peek_user_id,
)
from mixai_pipeline.lib.storage.database import write_audit
from mixai_pipeline.lib.storage.object_store import ObjectNotFound, ObjectStore, ObjectTooLarge, key_problem

STEM_KINDS = ("inst", "vocal")
_STEM_NAME = re.compile(r"^(inst|vocal)\.([^./]+)$", re.IGNORECASE)


@dataclass(frozen=True)
class StemRecord:
    kind: str
    key: str
    probe: StemProbe


@dataclass(frozen=True)
class UploadOutcome:
    job_id: UUID
    name: str
    prefix: str
    partition_date: date
    received_at: datetime
    manifest: Manifest | None = None
    user_id: UUID | None = None
    stems: tuple[StemRecord, ...] = ()
    reject: RejectError | None = None
    warnings: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reject is None

    @property
    def bytes(self) -> int:
        return sum(s.probe.bytes for s in self.stems)


def inspect_upload(store: ObjectStore, upload: InboxUpload, partition_date: date,
                   limits: AudioLimits = AudioLimits()) -> UploadOutcome:
    """Decide on one upload; bad input becomes a reject with a reason, never an exception."""
    base = dict(job_id=upload.job_id(), name=upload.name, prefix=upload.prefix,
                partition_date=partition_date, received_at=upload.arrived_at())
    warnings: list[str] = []
    manifest: Manifest | None = None
    try:
        manifest = _check_manifest(store, upload)
        stems = _select_stems(upload, warnings)
        records = []
        for kind, (key, extension) in stems.items():
            label = PurePosixPath(key).name
            try:
                with store.local_path(key) as path:
                    records.append(StemRecord(kind, key, probe_stem(path, label, extension, limits)))
            except ObjectNotFound:
                raise RejectError("stem_missing", f"{label} disappeared while it was being read") from None
        return UploadOutcome(**base, manifest=manifest, user_id=manifest.user_id, stems=tuple(records),
                             warnings=tuple(warnings))
    except RejectError as reject:
        return UploadOutcome(**base, manifest=manifest, user_id=manifest.user_id if manifest else reject.user_id,
                             reject=reject, warnings=tuple(warnings))


def _check_manifest(store: ObjectStore, upload: InboxUpload) -> Manifest:
    problem = key_problem(upload.prefix.rstrip("/"))
    if problem:
        raise RejectError("hostile_name", f"the upload folder name {upload.name!r} is refused: {problem}")
    for info in upload.objects:
        problem = key_problem(info.key)
        if problem:
            relative = info.key[len(upload.prefix):]
            raise RejectError("hostile_name", f"the file name {relative!r} is refused: {problem}")
    manifest_info = upload.manifest
    if manifest_info is None:
        raise RejectError("manifest_missing",
                          "manifest.json never arrived: the upload is incomplete and was abandoned")
    try:
        raw = store.get_bytes(manifest_info.key, max_bytes=MAX_MANIFEST_BYTES)
    except ObjectTooLarge:
        raise RejectError("manifest_unreadable",
                          f"manifest.json is larger than the {MAX_MANIFEST_BYTES:,}-byte limit") from None
    except ObjectNotFound:
        raise RejectError("manifest_missing", "manifest.json disappeared while it was being read") from None
    try:
        manifest = parse_manifest(raw)
    except RejectError as reject:
        reject.user_id = peek_user_id(raw)
        raise
    if str(manifest.job_id) != upload.name.lower():
        raise RejectError("job_id_mismatch", f"manifest.json names job {manifest.job_id} but the upload "
                          f"folder is {upload.name!r}", user_id=manifest.user_id)
    return manifest


def _select_stems(upload: InboxUpload, warnings: list[str]) -> dict[str, tuple[str, str]]:
    """Pick ``inst.<ext>`` and ``vocal.<ext>``; anything else at the top level is ignored with a warning."""
    found: dict[str, list[tuple[str, str]]] = {kind: [] for kind in STEM_KINDS}
    for info in upload.objects:
        relative = info.key[len(upload.prefix):]
        if relative == MANIFEST_NAME:
            continue
        match = _STEM_NAME.match(relative)
        if not match:
            warnings.append(f"ignored unexpected file {relative!r}")
            continue
        kind, extension = match.group(1).lower(), match.group(2).lower()
        if extension not in SUPPORTED_EXTENSIONS:
            raise RejectError("unsupported_format",
                              f"{relative}: .{extension} files are not supported "
                              f"(use {', '.join(SUPPORTED_EXTENSIONS)})")
        found[kind].append((info.key, extension))
    stems = {}
    for kind in STEM_KINDS:
        if not found[kind]:
            raise RejectError("stem_missing", f"no {kind} file: expected {kind}.wav, .flac, .mp3, .m4a or .ogg")
        if len(found[kind]) > 1:
            names = ", ".join(sorted(PurePosixPath(k).name for k, _ in found[kind]))
            raise RejectError("stem_ambiguous", f"several {kind} files ({names}): upload exactly one")
        stems[kind] = found[kind][0]
    return stems


# --------------------------------------------------------------------------------------- database

_JOB_FIELDS = ("user_id", "plan", "status", "reject_code", "reject_reason", "partition_date", "received_at",
               "uploaded_at", "consent_qa", "consent_training", "bpm", "musical_key", "preset")


def _job_values(outcome: UploadOutcome) -> dict[str, Any]:
    m = outcome.manifest  # a reject whose manifest parsed still records its plan and consent
    reject = outcome.reject
    return {
        "user_id": outcome.user_id,
        "plan": m.plan if m else None,
        "status": "registered" if outcome.accepted else "rejected",
        "reject_code": reject.code if reject else None,
        "reject_reason": reject.reason if reject else None,
        "partition_date": outcome.partition_date,
        "received_at": outcome.received_at,
        "uploaded_at": m.created_at if m else None,
        "consent_qa": m.consent.qa if m else None,
        "consent_training": m.consent.training if m else None,
        "bpm": m.bpm if m else None,
        "musical_key": m.key if m else None,
        "preset": m.preset if m else None,
    }


def _same(existing: dict[str, Any], values: dict[str, Any]) -> bool:
    def norm(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    return all(norm(existing[k]) == norm(values[k]) for k in _JOB_FIELDS if k != "status")


def record_upload(conn: Connection, outcome: UploadOutcome, *, actor: str,
                  run_id: str | None = None) -> str:
    """Write one upload's outcome; return what happened: inserted, updated, unchanged or kept_existing."""
    values = _job_values(outcome)
    params = {**values, "job_id": outcome.job_id, "upload_prefix": outcome.prefix,
              "manifest": outcome.manifest.model_dump_json() if outcome.manifest else None}
    existing = conn.execute(text("SELECT * FROM jobs WHERE job_id = :id FOR UPDATE"),
                            {"id": outcome.job_id}).mappings().first()
    if existing is None:
        inserted = conn.execute(text(
            f"""INSERT INTO jobs (job_id, upload_prefix, manifest, {", ".join(_JOB_FIELDS)})
                VALUES (:job_id, :upload_prefix, CAST(:manifest AS jsonb), {", ".join(":" + f for f in _JOB_FIELDS)})
                ON CONFLICT (job_id) DO NOTHING RETURNING job_id"""), params).first()
        if inserted is None:  # another run registered it in between: decide against its row
            existing = conn.execute(text("SELECT * FROM jobs WHERE job_id = :id FOR UPDATE"),
                                    {"id": outcome.job_id}).mappings().first()
        else:
            _write_registration(conn, outcome, actor, run_id, "upload.registered" if outcome.accepted
                                else "upload.rejected")
            return "inserted"

    existing = dict(existing)
    was_accepted = existing["status"] != "rejected"
    if existing["partition_date"] != outcome.partition_date:
        abandoned_then_completed = (existing["reject_code"] == "manifest_missing"
                                    and outcome.manifest is not None)
        if not abandoned_then_completed:
            return "kept_existing"
    elif was_accepted and not outcome.accepted:
        return "kept_existing"
    if _same(existing, values) and (not outcome.accepted or _vault_unchanged(conn, outcome)):
        return "unchanged"
    if was_accepted:
        params["status"] = existing["status"]  # later stages own the status once accepted
    conn.execute(text(
        f"""UPDATE jobs SET upload_prefix = :upload_prefix, manifest = CAST(:manifest AS jsonb),
                {", ".join(f"{f} = :{f}" for f in _JOB_FIELDS)}, updated_at = now()
            WHERE job_id = :job_id"""), params)
    _write_registration(conn, outcome, actor, run_id,
                        "upload.reregistered" if outcome.accepted else "upload.rejected")
    return "updated"


def _vault_unchanged(conn: Connection, outcome: UploadOutcome) -> bool:
    rows = conn.execute(text("SELECT path, sha256 FROM vault_items WHERE job_id = :id AND kind IN ('inst','vocal')"),
                        {"id": outcome.job_id}).all()
    return {(r.path, r.sha256) for r in rows} == {(s.key, s.probe.sha256) for s in outcome.stems}


def _write_registration(conn: Connection, outcome: UploadOutcome, actor: str, run_id: str | None,
                        action: str) -> None:
    details: dict[str, Any] = {"partition": outcome.partition_date.isoformat(), "prefix": outcome.prefix,
                               "run_id": run_id}
    if outcome.accepted:
        manifest = outcome.manifest
        assert manifest is not None
        conn.execute(text("DELETE FROM vault_items WHERE job_id = :id AND kind IN ('inst','vocal') "
                          "AND path <> ALL(:paths)"),
                     {"id": outcome.job_id, "paths": [s.key for s in outcome.stems]})
        for stem in outcome.stems:
            _upsert_stem(conn, outcome, manifest, stem)
        _upsert_consent(conn, manifest, actor, run_id)
        details.update(user_id=str(manifest.user_id), plan=manifest.plan,
                       stems={s.kind: {"path": s.key, "sha256": s.probe.sha256, "bytes": s.probe.bytes}
                              for s in outcome.stems})
    else:
        assert outcome.reject is not None
        details.update(code=outcome.reject.code, reason=outcome.reject.reason)
    write_audit(conn, actor=actor, action=action, target_type="job", target_id=str(outcome.job_id),
                details=details)


def _upsert_stem(conn: Connection, outcome: UploadOutcome, manifest: Manifest, stem: StemRecord) -> None:
    p = stem.probe
    conn.execute(text(
        """INSERT INTO vault_items (job_id, user_id, kind, path, sha256, bytes, codec, duration_s, sample_rate,
                                    channels, consent_qa, consent_training, expires_at)
           SELECT :job_id, :user_id, :kind, :path, :sha256, :bytes, :codec, :duration_s, :sample_rate,
                  :channels, :consent_qa, :consent_training,
                  CAST(:received_at AS timestamptz) + make_interval(days => r.days)
           FROM retention_policies r WHERE r.plan = :plan AND r.kind = :kind
           ON CONFLICT (path) DO UPDATE SET
               sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes, codec = EXCLUDED.codec,
               duration_s = EXCLUDED.duration_s, sample_rate = EXCLUDED.sample_rate,
               channels = EXCLUDED.channels, consent_qa = EXCLUDED.consent_qa,
               consent_training = EXCLUDED.consent_training, expires_at = EXCLUDED.expires_at"""),
        {"job_id": outcome.job_id, "user_id": manifest.user_id, "kind": stem.kind, "path": stem.key,
         "sha256": p.sha256, "bytes": p.bytes, "codec": p.codec, "duration_s": p.duration_s,
         "sample_rate": p.sample_rate, "channels": p.channels, "consent_qa": manifest.consent.qa,
         "consent_training": manifest.consent.training, "received_at": outcome.received_at,
         "plan": manifest.plan})


def _upsert_consent(conn: Connection, manifest: Manifest, actor: str, run_id: str | None) -> None:
    """The manifest states the user's consent as of its ``created_at``: applied by the governance rules
    (``consent.set_consent``: the latest statement wins, so an older manifest (a backfill) never overrides a
    newer one; training turned off is a withdrawal with its exclusion and deletion request; audited)."""
    from mixai_pipeline.lib.governance.consent import set_consent

    set_consent(conn, manifest.user_id, qa=manifest.consent.qa, training=manifest.consent.training,
                source="upload_manifest", actor=actor, now=manifest.created_at,
                note=f"job {manifest.job_id} (run {run_id})")


# --------------------------------------------------------------------------------------- a day

@dataclass
class DayReport:
    partition: str
    outcomes: list[tuple[UploadOutcome, str]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[UploadOutcome]:
        return [o for o, _ in self.outcomes if o.accepted]

    @property
    def rejected(self) -> list[UploadOutcome]:
        return [o for o, _ in self.outcomes if not o.accepted]

    def actions(self) -> Counter:
        return Counter(action for _, action in self.outcomes)


def register_day(store: ObjectStore, engine: Engine, uploads: list[InboxUpload], partition_date: date, *,
                 actor: str, run_id: str | None = None, limits: AudioLimits = AudioLimits(),
                 max_workers: int = 4, progress: Callable[[int, int], None] | None = None) -> DayReport:
    """Inspect and record every upload of one day in a worker pool (ffmpeg and I/O bound)."""
    report = DayReport(partition_date.isoformat())

    def handle(upload: InboxUpload) -> tuple[UploadOutcome, str]:
        outcome = inspect_upload(store, upload, partition_date, limits)
        with engine.begin() as conn:
            return outcome, record_upload(conn, outcome, actor=actor, run_id=run_id)

    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="ingest") as pool:
        futures = {pool.submit(handle, u): u for u in uploads}
        for done, (future, upload) in enumerate(futures.items(), start=1):
            try:
                report.outcomes.append(future.result())
            except Exception as err:  # infrastructure failure (database, store): reported, run fails later
                report.errors.append(f"{upload.name}: {type(err).__name__}: {err}")
            if progress:
                progress(done, len(uploads))
    report.outcomes.sort(key=lambda pair: pair[0].name)
    return report

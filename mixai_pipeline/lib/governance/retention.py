"""Retention: stored objects are deleted once their retention has expired, never earlier and never under
legal hold (seed 000 §4: inst 7 d, vocal 7 d, master and mix 15 d, preview and waveform 30 d; the free
trial 3/3/7/14; per plan and kind in ``retention_policies``).

Expiry. ``vault_items.expires_at`` is set when the row is written (``lib/ingestion/registration.py`` for
stems, ``lib/pipeline/records.py`` for derived objects): the upload's arrival (``jobs.received_at``) plus
the plan's days for the kind, so re-running a stage never extends it. ``expiry_for`` is the same rule in
Python; the purge trusts the stored ``expires_at`` (a row without one is never purged, and reported by
``retention_problems``). An item is expired when ``expires_at <= now``.

Purging. ``purge_expired`` (the daily run) first completes purges an earlier run left unfinished, then
claims and deletes expired, live, not held items in batches (``purge.claim`` / ``purge.complete``: one
transaction per claim and per completion, intent before the object is deleted, see ``purge``), oldest
first, through the partial index ``vault_items_purgeable_expiry_idx``. ``purge_for_day`` is the
day-partitioned variant: items whose expiry fell on one Asia/Tokyo day, and only up to ``now``, so a
backfill over past days deletes exactly what the policy says and asking for a future day deletes nothing
early. Objects that are already gone are fine (the store's delete is idempotent); reruns delete nothing
more. Expired items under legal hold are reported every time, never deleted.

Orphans (``orphans``): objects under the given prefixes with no row (or only a tombstone), and live rows
whose object is missing. ``manifest.json`` files are not vault items and are not reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, text

from mixai_pipeline.lib.governance.access import holds_in_force
from mixai_pipeline.lib.governance.purge import (
    DEFAULT_WORKERS,
    IN_PURGE,
    LIVE,
    PURGEABLE,
    ItemError,
    complete_interrupted,
    purge_where,
    sweep_job_prefixes,
)
from mixai_pipeline.lib.storage.object_store import ObjectStore
from mixai_pipeline.settings import BUSINESS_TIMEZONE

BUSINESS_TZ = ZoneInfo(BUSINESS_TIMEZONE)
DEFAULT_ACTOR = "retention_purge"
DEFAULT_BATCH = 1000
MAX_REPORTED_HELD = 1000  # held expired items listed in a report (all are counted)


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime, got {now!r}")
    return now


# ---------------------------------------------------------------------------------------------- policy

def retention_days(conn: Connection) -> dict[tuple[str, str], int]:
    """``{(plan, kind): days}`` from ``retention_policies``."""
    return {(r.plan, r.kind): r.days for r in conn.execute(text("SELECT plan, kind, days FROM retention_policies"))}


def expiry_for(conn: Connection, plan: str, kind: str, created_at: datetime) -> datetime:
    """When an object of ``kind`` of an upload on ``plan`` that arrived at ``created_at`` expires: the same
    rule as the SQL that writes ``vault_items.expires_at`` (arrival + the policy's days)."""
    _aware(created_at)
    days = conn.execute(text("SELECT days FROM retention_policies WHERE plan = :plan AND kind = :kind"),
                        {"plan": plan, "kind": kind}).scalar()
    if days is None:
        raise ValueError(f"no retention policy for plan {plan!r} and kind {kind!r}")
    return created_at + timedelta(days=days)


EARLIEST_EXPIRY = datetime(2000, 1, 1, tzinfo=timezone.utc)  # before any upload: "everything up to"


def day_window(day: date) -> tuple[datetime, datetime]:
    """The Asia/Tokyo day ``day`` as [start, end) instants."""
    start = datetime.combine(day, time(0), tzinfo=BUSINESS_TZ)
    return start, datetime.combine(day + timedelta(days=1), time(0), tzinfo=BUSINESS_TZ)


def _scope(now: datetime, window: tuple[datetime, datetime] | None) -> tuple[str, dict[str, Any]]:
    where, params = "expires_at <= :now", {"now": now}
    if window is not None:
        where += " AND expires_at >= :window_start AND expires_at < :window_end"
        params.update(window_start=window[0], window_end=window[1])
    return where, params


# ------------------------------------------------------------------------------------------------ scan

@dataclass(frozen=True)
class ExpiredItem:
    id: int
    job_id: str
    kind: str
    path: str
    bytes: int
    expires_at: datetime


def expired_items(conn: Connection, *, now: datetime, limit: int = DEFAULT_BATCH, day: date | None = None,
                  held: bool = False) -> list[ExpiredItem]:
    """Live items whose retention expired by ``now`` (on ``day`` only, if given), oldest first: the purge
    candidates, or with ``held`` the ones a legal hold keeps. Read-only."""
    where, params = _scope(_aware(now), day_window(day) if day else None)
    state = "deleted_at IS NULL AND legal_hold" if held else PURGEABLE
    rows = conn.execute(text(
        f"""SELECT id, job_id::text AS job_id, kind, path, bytes, expires_at FROM vault_items
            WHERE {state} AND {where} ORDER BY expires_at, id LIMIT :limit"""), {**params, "limit": limit}).all()
    return [ExpiredItem(r.id, r.job_id, r.kind, r.path, int(r.bytes), r.expires_at) for r in rows]


# ----------------------------------------------------------------------------------------------- purge

@dataclass
class RetentionReport:
    now: datetime
    window: tuple[datetime, datetime] | None    # None: everything expired by now
    deleted: int = 0
    bytes_freed: int = 0
    deleted_by_kind: dict[str, int] = field(default_factory=dict)
    completed_from_previous_crash: int = 0
    skipped_on_hold: int = 0
    held_items: list[ExpiredItem] = field(default_factory=list)  # the first MAX_REPORTED_HELD of them
    errors: list[ItemError] = field(default_factory=list)
    batches: int = 0

    def as_metadata(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "bytes_freed": self.bytes_freed, "deleted_by_kind": self.deleted_by_kind,
                "completed_from_previous_crash": self.completed_from_previous_crash,
                "skipped_on_hold": self.skipped_on_hold, "errors": len(self.errors), "batches": self.batches}


def purge_expired(engine: Engine, store: ObjectStore, *, now: datetime, actor: str = DEFAULT_ACTOR,
                  batch_size: int = DEFAULT_BATCH, workers: int = DEFAULT_WORKERS,
                  window: tuple[datetime, datetime] | None = None) -> RetentionReport:
    """Delete every live item expired by ``now`` (within ``window`` if given) that no legal hold keeps, after
    completing interrupted purges (all of them, or those expiring within ``window``)."""
    _aware(now)
    report = RetentionReport(now, window)
    where, params = _scope(now, window)
    interrupted = complete_interrupted(engine, store, now=now, actor=actor,
                                       where="true" if window is None else where, params=params,
                                       batch_size=batch_size, workers=workers)
    outcome, report.batches = purge_where(engine, store, where, params, now=now, actor=actor, cause="retention",
                                          batch_size=batch_size, workers=workers, order_by="expires_at",
                                          details={"window": [w.isoformat() for w in window] if window else None})
    report.completed_from_previous_crash = len(interrupted.deleted) + len(interrupted.held_but_gone)
    outcome.add(interrupted)
    gone = outcome.deleted + outcome.held_but_gone
    report.deleted = len(gone)
    report.bytes_freed = sum(i.bytes for i in gone)
    report.deleted_by_kind = dict(Counter(i.kind for i in gone))
    report.errors = outcome.errors
    with engine.connect() as conn:
        report.skipped_on_hold = conn.execute(text(
            f"SELECT count(*) FROM vault_items WHERE deleted_at IS NULL AND legal_hold AND {where}"),
            params).scalar_one()
        if report.skipped_on_hold:
            report.held_items = [ExpiredItem(r.id, r.job_id, r.kind, r.path, int(r.bytes), r.expires_at)
                                 for r in conn.execute(text(
                                     f"""SELECT id, job_id::text AS job_id, kind, path, bytes, expires_at
                                         FROM vault_items WHERE deleted_at IS NULL AND legal_hold AND {where}
                                         ORDER BY expires_at, id LIMIT :limit"""),
                                     {**params, "limit": MAX_REPORTED_HELD})]
    return report


def purge_for_day(engine: Engine, store: ObjectStore, day: date, *, now: datetime, actor: str = DEFAULT_ACTOR,
                  batch_size: int = DEFAULT_BATCH, workers: int = DEFAULT_WORKERS,
                  catch_up: bool = False) -> RetentionReport:
    """The day partition of the purge: items whose expiry fell on the Asia/Tokyo ``day``, up to ``now``; with
    ``catch_up``, also anything that expired before the day and is still there (a legal hold released since,
    a failed run), so no expired item waits for someone to rerun an old partition."""
    start, end = day_window(day)
    return purge_expired(engine, store, now=now, actor=actor, batch_size=batch_size, workers=workers,
                         window=(EARLIEST_EXPIRY if catch_up else start, end))


# ------------------------------------------------------------------------------------ rejected uploads

# When a rejected upload's files expire: its arrival plus the raw-audio (stem) retention of its plan, or the
# longest one of any plan when the manifest named none (never early, whatever the plan would have been).
_REJECTED_EXPIRY = """j.received_at + make_interval(days => coalesce(
    (SELECT max(r.days) FROM retention_policies r WHERE r.plan = j.plan AND r.kind IN ('inst', 'vocal')),
    (SELECT max(r.days) FROM retention_policies r WHERE r.kind IN ('inst', 'vocal'))))"""


@dataclass
class RejectedPurgeReport:
    expired: int = 0              # rejected uploads whose files' retention has passed
    purged: int = 0               # of them, every file gone now (jobs.files_purged_at set)
    objects_deleted: int = 0
    bytes_freed: int = 0
    held: list[str] = field(default_factory=list)           # job ids a legal hold keeps
    left_for_later: list[str] = field(default_factory=list)  # keys too young to delete yet, or that failed
    unaddressable: list[str] = field(default_factory=list)   # keys the store API refuses: need an operator
    errors: list[ItemError] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return {"rejected_uploads_expired": self.expired, "rejected_uploads_purged": self.purged,
                "rejected_objects_deleted": self.objects_deleted, "rejected_bytes_freed": self.bytes_freed,
                "rejected_uploads_held": len(self.held), "rejected_unaddressable": len(self.unaddressable)}


def purge_rejected_uploads(engine: Engine, store: ObjectStore, *, now: datetime, actor: str = DEFAULT_ACTOR,
                           window: tuple[datetime, datetime] | None = None,
                           batch_size: int = DEFAULT_BATCH) -> RejectedPurgeReport:
    """Delete the files (stems, manifest, anything else under its prefix) of every rejected upload whose
    raw-audio retention has passed by ``now`` (expiring within ``window`` if given), unless a legal hold
    covers its user or the job. They have no ``vault_items`` rows, so each deletion is audited per job
    (``object.deleted_unregistered``, cause ``retention_rejected``) and the job gets ``files_purged_at``
    once nothing is left; the ``jobs`` row (what was rejected and why) stays. Reruns delete nothing more."""
    _aware(now)
    report = RejectedPurgeReport()
    window_sql = "" if window is None else (
        f" AND {_REJECTED_EXPIRY} >= :window_start AND {_REJECTED_EXPIRY} < :window_end")
    params: dict[str, Any] = {"now": now, "limit": batch_size, "after": EARLIEST_EXPIRY, "after_id": ""}
    if window is not None:
        params.update(window_start=window[0], window_end=window[1])
    with engine.connect() as conn:
        holds = holds_in_force(conn)
    held_users = {h["user_id"] for h in holds if "user_id" in h}
    held_jobs = {h["job_id"] for h in holds if "job_id" in h}
    while True:
        with engine.connect() as conn:
            jobs = conn.execute(text(
                f"""SELECT j.job_id::text AS job_id, j.user_id, j.upload_prefix, j.received_at FROM jobs j
                    WHERE j.status = 'rejected' AND j.files_purged_at IS NULL AND {_REJECTED_EXPIRY} <= :now
                      {window_sql} AND (j.received_at, j.job_id::text) > (:after, :after_id)
                    ORDER BY j.received_at, j.job_id::text LIMIT :limit"""), params).all()
        for job in jobs:
            report.expired += 1
            if job.job_id in held_jobs or (job.user_id and str(job.user_id) in held_users):
                report.held.append(job.job_id)
                continue
            sweep = sweep_job_prefixes(engine, store, [job], now=now, actor=actor, cause="retention_rejected",
                                       details={"user_id": str(job.user_id) if job.user_id else None})
            report.objects_deleted += len(sweep.deleted)
            report.bytes_freed += sweep.bytes_deleted
            report.left_for_later += sweep.too_young + [e.path for e in sweep.errors]
            report.unaddressable += sweep.unaddressable
            report.errors += sweep.errors
            if not (sweep.too_young or sweep.errors or sweep.unaddressable):
                with engine.begin() as conn:
                    conn.execute(text("UPDATE jobs SET files_purged_at = :now WHERE job_id = CAST(:id AS uuid)"),
                                 {"now": now, "id": job.job_id})
                report.purged += 1
        if len(jobs) < batch_size:
            return report
        params.update(after=jobs[-1].received_at, after_id=jobs[-1].job_id)


# ------------------------------------------------------------------------------------------------ checks

def retention_problems(conn: Connection, *, now: datetime, day: date | None = None,
                       grace: timedelta = timedelta(hours=24), limit: int = 100) -> dict[str, Any]:
    """What a per-day retention check looks at: items still live more than ``grace`` after their expiry
    (the purge is behind), in-purge rows (a purge was interrupted), and live rows without ``expires_at``
    (never purged). Counts, and up to ``limit`` examples of the overdue ones."""
    where, params = _scope(_aware(now) - grace, day_window(day) if day else None)
    with_params = {**params, "limit": limit}
    overdue = conn.execute(text(
        f"""SELECT id, path, kind, expires_at FROM vault_items WHERE {PURGEABLE} AND {where}
            ORDER BY expires_at LIMIT :limit"""), with_params).mappings().all()
    overdue_count = conn.execute(text(f"SELECT count(*) FROM vault_items WHERE {PURGEABLE} AND {where}"),
                                 params).scalar_one()
    in_purge = conn.execute(text(f"SELECT count(*) FROM vault_items WHERE {IN_PURGE}")).scalar_one()
    no_expiry = conn.execute(text(f"SELECT count(*) FROM vault_items WHERE {LIVE} AND expires_at IS NULL")).scalar_one()
    return {"overdue": overdue_count, "overdue_examples": [dict(r) for r in overdue], "in_purge": in_purge,
            "live_without_expiry": no_expiry}


# ----------------------------------------------------------------------------------------------- orphans

@dataclass(frozen=True)
class OrphanObject:
    key: str
    size: int
    last_modified: datetime
    row: str          # "none": no row at all; "deleted": only a tombstone


@dataclass(frozen=True)
class MissingObject:
    id: int
    job_id: str
    kind: str
    path: str


@dataclass
class OrphanReport:
    objects_without_row: list[OrphanObject] = field(default_factory=list)
    rows_without_object: list[MissingObject] = field(default_factory=list)
    in_purge: list[str] = field(default_factory=list)   # in transition: neither kind of orphan
    # a rejected upload's files have no rows by design: kept for support until purge_rejected_uploads deletes them
    rejected_upload_objects: list[OrphanObject] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.objects_without_row and not self.rows_without_object


def orphans(conn: Connection, store: ObjectStore, prefixes: Iterable[str], *,
            ignore_names: Iterable[str] = ("manifest.json",)) -> OrphanReport:
    """Objects under ``prefixes`` with no live row (a rejected upload's files apart), and live rows under them
    whose object is missing.
    Lists the store and reads the rows once per prefix (an operator's tool, not a per-tick check)."""
    ignored = set(ignore_names)
    report = OrphanReport()
    rejected = tuple(conn.execute(text("SELECT upload_prefix FROM jobs WHERE status = 'rejected'")).scalars())
    for prefix in prefixes:
        listed = {info.key: info for info in store.list(prefix)}
        rows = conn.execute(text(
            """SELECT id, job_id::text AS job_id, kind, path, deleted_at IS NOT NULL AS deleted,
                      purge_started_at IS NOT NULL AS intent
               FROM vault_items WHERE starts_with(path, :prefix) ORDER BY path"""), {"prefix": prefix}).all()
        state = {r.path: r for r in rows}
        for key, info in listed.items():
            row = state.get(key)
            if key.rsplit("/", 1)[-1] in ignored:
                continue
            if row is None or row.deleted:
                orphan = OrphanObject(key, info.size, info.last_modified, "none" if row is None else "deleted")
                (report.rejected_upload_objects if key.startswith(rejected) else report.objects_without_row
                 ).append(orphan)
        for row in rows:
            if row.deleted:
                continue
            if row.intent:
                report.in_purge.append(row.path)
            elif row.path not in listed:
                report.rows_without_object.append(MissingObject(row.id, row.job_id, row.kind, row.path))
    return report

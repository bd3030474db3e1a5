"""Deleting stored objects and their ``vault_items`` rows consistently, and the purge of a withdrawn
user's data (``purge_user_data``).

One code path deletes vault items, for retention and withdrawal alike (``claim`` then ``complete``):

1. *intent*: ``purge_started_at`` is committed on a batch of live, not held rows (``claim``);
2. the objects are deleted (a missing object is fine: the store's delete is idempotent);
3. ``deleted_at`` is committed, with the audit entries, in one transaction per batch (``complete``).

A row with an intent and no ``deleted_at`` is *in purge*: not live, its object may or may not exist. A run
killed anywhere leaves only live rows with their objects, in-purge rows, and deleted rows without
objects; the next run completes the in-purge rows first. So there is never a live row whose object is
gone, and no object of a vault prefix without a row. ``complete`` holds the batch's rows ``FOR UPDATE``
while it deletes their objects and re-reads ``legal_hold`` under that lock: a hold approved after the
intent (``access.py`` updates the row, so it waits for the lock) keeps the object and clears the intent.
Per-item store errors are collected and the item stays in purge, to be retried; anything that is not an
``Exception`` (a kill, KeyboardInterrupt) rolls the batch's transaction back like a crash would.

Audit volume: one ``vault_item.deleted`` entry per job and batch, listing the job's deleted items (id,
path, kind, bytes). A day of 10,000 uploads deletes ~130,000 objects; per-object entries would be 13
rows per upload, one entry per batch would hide the job, which is what anyone asks about ("what happened
to my upload?") and what ``audit_logs_target_idx`` finds (target_type ``job``).

Withdrawal (``purge_user_data``). A deletion request covers the user's uploads received up to its
``requested_at`` (later uploads are made under the new consent state, and deleting a job while it is
being processed would break it). For those jobs it deletes:

- every vault object of every kind (inst/vocal stems still held, mix, master, previews, waveforms),
  except items under legal hold, which are reported (``held_items``) and make the request ``partial_hold``;
- objects under the jobs' prefixes (``uploads/<job>/``, ``derived/<job>/``, ``previews/<job>/``) that have
  no row: the manifest, the stems of a rejected upload, leftovers of an interrupted stage. Objects written
  after the upload was received and younger than ``UNREGISTERED_GRACE`` are left for a later run (a stage
  may be between writing and registering), and the request stays pending until then;
- the rows derived from the audio: ``features_store``, ``labels``, ``alignments``, ``mixes`` and
  ``masters`` (offsets, loudness, parameters and statistics computed from the user's recordings).

It keeps ``jobs`` rows (the record that an upload happened and what was decided: needed for support and
billing, no audio-derived values), ``vault_items`` rows as tombstones, and ``audit_logs`` (append-only).
Already-trained model weights are not changed. The request is completed with ``completed_at`` (its
``duration_s`` and ``due_at`` are generated columns) only when nothing failed; otherwise it stays pending
and the next run goes on. Rerunning after completion sweeps leftovers (a preview a stage wrote later) and
changes no completed request.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, text

from mixai_pipeline.lib.storage.database import write_audit
from mixai_pipeline.lib.storage.object_store import LocalObjectStore, ObjectStore, key_problem

# SQL predicates on vault_items (sql/0005_governance.sql explains the states).
LIVE = "deleted_at IS NULL AND purge_started_at IS NULL"
# Spelled exactly as the partial index vault_items_purgeable_expiry_idx, so the planner matches it.
PURGEABLE = "deleted_at IS NULL AND purge_started_at IS NULL AND NOT legal_hold"
IN_PURGE = "deleted_at IS NULL AND purge_started_at IS NOT NULL"

# The prefixes holding a job's objects (lib/ingestion/inbox.py, lib/pipeline/stages.py).
JOB_PREFIXES = ("uploads/{job}/", "derived/{job}/", "previews/{job}/")
UNREGISTERED_GRACE = timedelta(hours=1)
DERIVED_TABLES = ("features_store", "labels", "alignments", "mixes", "masters")
DEFAULT_WORKERS = 4   # concurrent object deletes per batch: S3 deletes are latency-bound


@dataclass(frozen=True)
class VaultItem:
    id: int
    job_id: str
    user_id: str
    kind: str
    path: str
    bytes: int
    expires_at: datetime | None


@dataclass(frozen=True)
class ItemError:
    id: int | None
    path: str
    error: str


@dataclass
class DeletionOutcome:
    """What ``complete`` did with a batch of in-purge items."""

    deleted: list[VaultItem] = field(default_factory=list)
    held: list[VaultItem] = field(default_factory=list)        # hold found under the lock: kept, intent cleared
    held_but_gone: list[VaultItem] = field(default_factory=list)  # held after its object was already deleted
    errors: list[ItemError] = field(default_factory=list)      # left in purge, retried by the next run

    @property
    def bytes_freed(self) -> int:
        return sum(item.bytes for item in self.deleted)

    def add(self, other: DeletionOutcome) -> None:
        self.deleted += other.deleted
        self.held += other.held
        self.held_but_gone += other.held_but_gone
        self.errors += other.errors


def _item(row: Any) -> VaultItem:
    return VaultItem(row.id, str(row.job_id), str(row.user_id), row.kind, row.path, int(row.bytes), row.expires_at)


def claim(conn: Connection, where: str, params: dict[str, Any], *, now: datetime, limit: int,
          order_by: str = "id") -> list[int]:
    """Step 1: record the intent on up to ``limit`` purgeable rows matching ``where`` and return their ids.
    SKIP LOCKED: rows another purge is working on are left to it. Commit before deleting any object."""
    return list(conn.execute(text(
        f"""UPDATE vault_items v SET purge_started_at = :claim_now
            FROM (SELECT id FROM vault_items WHERE {PURGEABLE} AND ({where})
                  ORDER BY {order_by} LIMIT :claim_limit FOR UPDATE SKIP LOCKED) AS c
            WHERE v.id = c.id RETURNING v.id"""),
        {**params, "claim_now": now, "claim_limit": limit}).scalars())


def in_purge_ids(conn: Connection, where: str = "true", params: dict[str, Any] | None = None) -> list[int]:
    """Rows whose intent was recorded but whose deletion was never committed (an interrupted purge)."""
    return list(conn.execute(text(f"SELECT id FROM vault_items WHERE {IN_PURGE} AND ({where}) ORDER BY id"),
                             params or {}).scalars())


def _delete_objects(store: ObjectStore, items: Sequence[VaultItem],
                    workers: int) -> list[tuple[VaultItem, str | None]]:
    def delete(item: VaultItem) -> tuple[VaultItem, str | None]:
        try:
            store.delete(item.path)
        except Exception as err:  # this item stays in purge; BaseException (a kill) propagates
            return item, f"{type(err).__name__}: {err}"
        return item, None

    # Threads only pay where a delete waits on the network: a local unlink is Python-bound, and 4 threads
    # made it twice as slow (61 vs 127 us per object, measured by bench_governance).
    if workers <= 1 or len(items) <= 1 or isinstance(store, LocalObjectStore):
        return [delete(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="purge")
    try:
        return list(pool.map(delete, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on a kill, do not go on deleting


def _audit_by_job(conn: Connection, items: Sequence[VaultItem], *, actor: str, action: str,
                  details: dict[str, Any]) -> None:
    by_job: dict[str, list[VaultItem]] = defaultdict(list)
    for item in items:
        by_job[item.job_id].append(item)
    if not by_job:
        return
    payload = [{"job_id": job, "details": {**details, "items": [
        {"id": i.id, "path": i.path, "kind": i.kind, "bytes": i.bytes,
         "expires_at": i.expires_at.isoformat() if i.expires_at else None} for i in job_items]}}
        for job, job_items in sorted(by_job.items())]
    # One statement for the whole batch (a batch spans hundreds of jobs).
    conn.execute(text(
        """INSERT INTO audit_logs (actor, action, target_type, target_id, details)
           SELECT :actor, :action, 'job', x.job_id, x.details
           FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS x(job_id text, details jsonb)"""),
        {"actor": actor, "action": action, "payload": json.dumps(payload, default=str)})


def complete(engine: Engine, store: ObjectStore, ids: Sequence[int], *, now: datetime, actor: str, cause: str,
             details: dict[str, Any] | None = None, workers: int = DEFAULT_WORKERS,
             on_deleted: Callable[[Connection, list[VaultItem]], None] | None = None) -> DeletionOutcome:
    """Steps 2 and 3 for in-purge rows ``ids`` in one transaction: lock them, delete their objects, commit
    ``deleted_at`` and the audit (``on_deleted`` runs in that transaction too). Rows no longer in purge
    (another run finished them) are skipped."""
    outcome = DeletionOutcome()
    if not ids:
        return outcome
    with engine.begin() as conn:
        rows = conn.execute(text(
            f"""SELECT id, job_id, user_id, kind, path, bytes, expires_at, legal_hold FROM vault_items
                WHERE id = ANY(:ids) AND {IN_PURGE} ORDER BY id FOR UPDATE"""), {"ids": list(ids)}).all()
        to_delete = [_item(r) for r in rows if not r.legal_hold]
        for row in rows:
            if row.legal_hold:
                item = _item(row)
                (outcome.held if store.exists(item.path) else outcome.held_but_gone).append(item)
        for item, error in _delete_objects(store, to_delete, workers):
            if error is None:
                outcome.deleted.append(item)
            else:
                outcome.errors.append(ItemError(item.id, item.path, error))
        gone = outcome.deleted + outcome.held_but_gone
        if gone:
            conn.execute(text("UPDATE vault_items SET deleted_at = :now WHERE id = ANY(:ids)"),
                         {"now": now, "ids": [i.id for i in gone]})
        if outcome.held:
            conn.execute(text("UPDATE vault_items SET purge_started_at = NULL WHERE id = ANY(:ids)"),
                         {"ids": [i.id for i in outcome.held]})
        audit = {"cause": cause, "effective_at": now.isoformat(), **(details or {})}
        _audit_by_job(conn, outcome.deleted, actor=actor, action="vault_item.deleted", details=audit)
        _audit_by_job(conn, outcome.held_but_gone, actor=actor, action="vault_item.deleted",
                      details={**audit, "note": "under legal hold, but its object had already been deleted "
                                                "by an interrupted purge before the hold"})
        if on_deleted and gone:
            on_deleted(conn, gone)
    return outcome


def purge_where(engine: Engine, store: ObjectStore, where: str, params: dict[str, Any], *, now: datetime,
                actor: str, cause: str, batch_size: int, workers: int = DEFAULT_WORKERS,
                order_by: str = "id", details: dict[str, Any] | None = None,
                on_deleted: Callable[[Connection, list[VaultItem]], None] | None = None) -> tuple[DeletionOutcome, int]:
    """Claim and complete batches of purgeable rows matching ``where`` until none is left; one transaction
    for each claim and each completion. Returns the outcome and the number of batches."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total, batches = DeletionOutcome(), 0
    while True:
        with engine.begin() as conn:
            ids = claim(conn, where, params, now=now, limit=batch_size, order_by=order_by)
        if not ids:
            return total, batches
        batches += 1
        total.add(complete(engine, store, ids, now=now, actor=actor, cause=cause, details=details, workers=workers,
                           on_deleted=on_deleted))
        if len(ids) < batch_size:
            return total, batches


def complete_interrupted(engine: Engine, store: ObjectStore, *, now: datetime, actor: str,
                         where: str = "true", params: dict[str, Any] | None = None, batch_size: int = 1000,
                         workers: int = DEFAULT_WORKERS,
                         on_deleted: Callable[[Connection, list[VaultItem]], None] | None = None) -> DeletionOutcome:
    """Finish the deletions an earlier run recorded the intent of but never committed."""
    with engine.connect() as conn:
        ids = in_purge_ids(conn, where, params)
    total = DeletionOutcome()
    for start in range(0, len(ids), batch_size):
        total.add(complete(engine, store, ids[start:start + batch_size], now=now, actor=actor,
                           cause="interrupted_purge_completed", workers=workers, on_deleted=on_deleted))
    return total


# ---------------------------------------------------------------------------------------- withdrawal

@dataclass
class UserPurgeReport:
    user_id: str
    status: str                     # completed | partial_hold | pending (errors left) | nothing_requested
    request_ids: tuple[int, ...]    # the requests this run completed or updated
    covered_until: datetime | None  # uploads received up to here are covered
    jobs: int = 0
    items_deleted: int = 0
    bytes_freed: int = 0
    completed_from_previous_crash: int = 0
    unregistered_deleted: list[str] = field(default_factory=list)
    unregistered_too_young: list[str] = field(default_factory=list)
    unaddressable: list[str] = field(default_factory=list)  # names the store API refuses (hostile uploads)
    held: list[dict[str, Any]] = field(default_factory=list)
    rows_deleted: dict[str, int] = field(default_factory=dict)
    errors: list[ItemError] = field(default_factory=list)
    durations_s: dict[int, float] = field(default_factory=dict)  # request id → requested → completed


def purge_user_data(engine: Engine, store: ObjectStore, user_id: UUID | str, *, now: datetime, actor: str,
                    batch_size: int = 500, workers: int = DEFAULT_WORKERS) -> UserPurgeReport:
    """Delete what the user's deletion requests cover (see the module docstring) and complete the open
    requests. Safe to rerun at any point: a run killed midway is completed by the next one."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime, got {now!r}")
    user = str(UUID(str(user_id)))
    with engine.connect() as conn:
        requests = conn.execute(text(
            """SELECT id, status, requested_at FROM deletion_requests WHERE user_id = :u ORDER BY id"""),
            {"u": user}).all()
    if not requests:
        return UserPurgeReport(user, "nothing_requested", (), None)
    cutoff = max(r.requested_at for r in requests)
    open_ids = [r.id for r in requests if r.status != "completed"]
    with engine.connect() as conn:
        jobs = conn.execute(text(
            "SELECT job_id::text AS job_id, user_id, upload_prefix, received_at FROM jobs WHERE user_id = :u "
            "AND received_at <= :cutoff "
            "ORDER BY job_id"), {"u": user, "cutoff": cutoff}).all()
    job_ids = [j.job_id for j in jobs]
    report = UserPurgeReport(user, "pending", tuple(open_ids), cutoff, jobs=len(jobs))

    def count_on_requests(conn: Connection, gone: list[VaultItem]) -> None:
        # Same transaction as deleted_at: the counts stay exact across crashes and reruns.
        if open_ids:
            conn.execute(text("UPDATE deletion_requests SET items_deleted = items_deleted + :n, "
                              "bytes_deleted = bytes_deleted + :b WHERE id = ANY(:ids)"),
                         {"n": len(gone), "b": sum(i.bytes for i in gone), "ids": open_ids})

    scope = "job_id = ANY(CAST(:jobs AS uuid[]))"
    params = {"jobs": job_ids}
    outcome = DeletionOutcome()
    if job_ids:
        interrupted = complete_interrupted(engine, store, now=now, actor=actor, where=scope, params=params,
                                           batch_size=batch_size, workers=workers, on_deleted=count_on_requests)
        report.completed_from_previous_crash = len(interrupted.deleted) + len(interrupted.held_but_gone)
        outcome.add(interrupted)
        fresh, _ = purge_where(engine, store, scope, params, now=now, actor=actor, cause="withdrawal",
                               batch_size=batch_size, workers=workers,
                               details={"deletion_request_ids": open_ids, "user_id": user},
                               on_deleted=count_on_requests)
        outcome.add(fresh)
        sweep = sweep_job_prefixes(engine, store, jobs, now=now, actor=actor, cause="withdrawal",
                                   details={"deletion_request_ids": open_ids, "user_id": user})
        report.unregistered_deleted += sweep.deleted
        report.unregistered_too_young += sweep.too_young
        report.unaddressable += sweep.unaddressable
        report.errors += sweep.errors
    report.items_deleted = len(outcome.deleted) + len(outcome.held_but_gone)
    report.bytes_freed = outcome.bytes_freed
    report.errors = outcome.errors + report.errors  # the sweep's come after

    with engine.begin() as conn:
        report.rows_deleted = _delete_derived_rows(conn, job_ids)
        report.held = [dict(r) for r in conn.execute(text(
            """SELECT id, path, kind, job_id::text AS job_id FROM vault_items
                WHERE job_id = ANY(CAST(:jobs AS uuid[])) AND legal_hold AND deleted_at IS NULL ORDER BY id"""),
            params).mappings()]
        report.status = _close_requests(conn, report, open_ids, now=now, actor=actor)
    return report


@dataclass
class Sweep:
    """What ``sweep_job_prefixes`` did: object keys deleted, left for a later run, refused by the store API."""
    deleted: list[str] = field(default_factory=list)
    bytes_deleted: int = 0
    too_young: list[str] = field(default_factory=list)
    unaddressable: list[str] = field(default_factory=list)  # names the store API refuses (hostile uploads)
    errors: list[ItemError] = field(default_factory=list)


def sweep_job_prefixes(engine: Engine, store: ObjectStore, jobs: Sequence[Any], *, now: datetime, actor: str,
                       cause: str, details: dict[str, Any]) -> Sweep:
    """Delete the objects under the jobs' prefixes that no row accounts for, and audit them per job.

    ``jobs`` rows have ``job_id``, ``user_id``, ``upload_prefix`` and ``received_at``. An object written after
    the upload was received and younger than ``UNREGISTERED_GRACE`` is left for a later run (a stage may be
    between writing and registering it)."""
    sweep = Sweep()
    if not jobs:
        return sweep
    with engine.connect() as conn:
        # Rows that still stand for their object: live, held or in purge (a tombstone does not).
        kept = set(conn.execute(text(
            "SELECT path FROM vault_items WHERE job_id = ANY(CAST(:jobs AS uuid[])) AND deleted_at IS NULL"),
            {"jobs": [str(j.job_id) for j in jobs]}).scalars())
    swept: list[VaultItem] = []
    for job in jobs:
        prefixes = {job.upload_prefix, *(p.format(job=job.job_id) for p in JOB_PREFIXES)}
        for prefix in sorted(prefixes):
            if key_problem(prefix.rstrip("/")):
                sweep.unaddressable.append(prefix)
                continue
            for info in store.list(prefix):
                if info.key in kept:
                    continue
                if key_problem(info.key):
                    sweep.unaddressable.append(info.key)
                    continue
                if info.last_modified > job.received_at and info.last_modified > now - UNREGISTERED_GRACE:
                    sweep.too_young.append(info.key)
                    continue
                try:
                    store.delete(info.key)
                except Exception as err:
                    sweep.errors.append(ItemError(None, info.key, f"{type(err).__name__}: {err}"))
                    continue
                sweep.deleted.append(info.key)
                sweep.bytes_deleted += info.size
                swept.append(VaultItem(0, str(job.job_id), str(job.user_id) if job.user_id else None,
                                       "unregistered", info.key, info.size, None))
    if swept:
        with engine.begin() as conn:
            _audit_by_job(conn, swept, actor=actor, action="object.deleted_unregistered",
                          details={"cause": cause, "effective_at": now.isoformat(), **details})
    return sweep


def _delete_derived_rows(conn: Connection, job_ids: list[str]) -> dict[str, int]:
    counts = {}
    for table in DERIVED_TABLES:
        counts[table] = conn.execute(text(f"DELETE FROM {table} WHERE job_id = ANY(CAST(:jobs AS uuid[]))"),
                                     {"jobs": job_ids}).rowcount if job_ids else 0
    return counts


def _close_requests(conn: Connection, report: UserPurgeReport, open_ids: list[int], *, now: datetime,
                    actor: str) -> str:
    rows = conn.execute(text(
        "SELECT id, status, rows_deleted FROM deletion_requests WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"),
        {"ids": open_ids}).all() if open_ids else []
    # Young unregistered objects are deleted by a later run: the request stays pending until then.
    unfinished = report.errors or report.unregistered_too_young
    status = "pending" if unfinished else ("partial_hold" if report.held else "completed")
    held_json = json.dumps(report.held, default=str)
    for row in rows:
        totals = dict(row.rows_deleted or {})
        for table, n in report.rows_deleted.items():
            totals[table] = totals.get(table, 0) + n
        if status == "pending":
            conn.execute(text("UPDATE deletion_requests SET rows_deleted = CAST(:rows AS jsonb) WHERE id = :id"),
                         {"rows": json.dumps(totals), "id": row.id})
            continue
        # A partial_hold request being re-run keeps its completed_at: the deletable part was done then.
        closed = conn.execute(text(
            """UPDATE deletion_requests SET status = :status, completed_at = coalesce(completed_at, :now),
                   items_held = :n_held, held_items = CAST(:held AS jsonb), rows_deleted = CAST(:rows AS jsonb)
               WHERE id = :id RETURNING completed_at, duration_s, due_at"""),
            {"status": status, "now": now, "n_held": len(report.held), "held": held_json,
             "rows": json.dumps(totals), "id": row.id}).one()
        report.durations_s[row.id] = closed.duration_s
        write_audit(conn, actor=actor, action="deletion_request.completed", target_type="deletion_request",
                    target_id=str(row.id), details={
                        "user_id": report.user_id, "status": status, "previous_status": row.status,
                        "covered_until": report.covered_until.isoformat() if report.covered_until else None,
                        "jobs": report.jobs, "items_deleted_now": report.items_deleted,
                        "bytes_freed_now": report.bytes_freed, "unregistered_deleted": len(report.unregistered_deleted),
                        "rows_deleted_now": report.rows_deleted, "held_items": report.held,
                        "completed_at": closed.completed_at.isoformat(), "duration_s": closed.duration_s,
                        "within_24h": closed.completed_at <= closed.due_at, "effective_at": now.isoformat()})
    # Not closing anything (errors left, or a rerun after completion) still leaves a trace of the derived
    # rows deleted (the objects have their own entries).
    if (status == "pending" or not rows) and (any(report.rows_deleted.values()) or report.errors):
        write_audit(conn, actor=actor, action="user_data.purged", target_type="user", target_id=report.user_id,
                    details={"status": status, "request_ids": open_ids, "items_deleted_now": report.items_deleted,
                             "rows_deleted_now": report.rows_deleted,
                             "errors": [e.__dict__ for e in report.errors[:100]], "effective_at": now.isoformat()})
    return status


# --------------------------------------------------------------------------------------------- queue

def users_due_for_purge(conn: Connection) -> list[str]:
    """Users whose data a user_data_purge run should delete: a pending request; a ``partial_hold`` request
    one of whose held items has since been released; or a closed request whose jobs show leftovers (a
    live, not held object or a derived row written after the purge, e.g. by a stage that was running)."""
    leftovers = " OR ".join(f"EXISTS (SELECT 1 FROM {table} t WHERE t.job_id = j.job_id)" for table in DERIVED_TABLES)
    return list(conn.execute(text(
        f"""SELECT d.user_id::text FROM deletion_requests d WHERE d.status = 'pending'
            UNION
            SELECT d.user_id::text FROM deletion_requests d
            CROSS JOIN LATERAL jsonb_array_elements(d.held_items) AS h
            JOIN vault_items v ON v.id = (h ->> 'id')::bigint
            WHERE d.status = 'partial_hold' AND v.deleted_at IS NULL AND NOT v.legal_hold
            UNION
            SELECT c.user_id::text
            FROM (SELECT user_id, max(requested_at) AS covered_until FROM deletion_requests
                  WHERE status <> 'pending' GROUP BY user_id) AS c
            JOIN jobs j ON j.user_id = c.user_id AND j.received_at <= c.covered_until
            WHERE EXISTS (SELECT 1 FROM vault_items v WHERE v.job_id = j.job_id AND v.deleted_at IS NULL
                                                AND v.purge_started_at IS NULL AND NOT v.legal_hold)
               OR {leftovers}
            ORDER BY 1""")).scalars())


def overdue_deletion_requests(conn: Connection, *, now: datetime) -> list[dict[str, Any]]:
    """Pending requests past their 24 h deadline (what the SLA check and the alert look at)."""
    return [dict(r) for r in conn.execute(text(
        """SELECT id, user_id::text AS user_id, requested_at, due_at FROM deletion_requests
           WHERE status = 'pending' AND due_at < :now ORDER BY requested_at"""), {"now": now}).mappings()]

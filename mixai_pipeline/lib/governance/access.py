"""Who may do what on the admin side: operator roles, 4-eyes approvals, legal holds, signed URLs to originals.

Roles. ``operators`` stores one role per operator: ``admin``, ``ops``, ``support`` or ``read_only``.
``PERMISSIONS`` says which roles may do what; the CLI and the operator jobs check it through
``require_permission`` (or ``require_role`` for a one-off set) and show the refusal's message as is, e.g.
"aki (support) may not request a legal hold change: needs admin". The choices:

- only an admin manages operators; the very first operator (empty table) is added without a check and
  must be an admin, which is how an installation bootstraps. The last admin cannot be demoted;
- a legal hold change is requested by an admin only and approved by an admin or ops, never the requester;
- access to original audio is requested by admin, ops or support (support answers users' questions about
  their uploads) and approved by admin or ops; support never approves anything;
- consent changes: admin, ops, support; retention and user purges: admin, ops; ``read_only`` reads only.

Approvals (``approval_requests``). A request is pending for 24 h; a second, different operator with the
approving role approves or rejects it. A decision takes the row ``FOR UPDATE`` so that two approvers racing
cannot both decide; the table's CHECKs (approver differs from requester, decided iff approved/rejected)
back the checks made here. A request still pending at its expiry is refused and marked ``expired``
(``expired`` rows keep ``decided_by`` NULL: nobody decided them). An approved legal-hold change applies at
once; an approved original access lets its requester, and only them, take signed URLs until the request's
24 h are up, each one audited (``original.accessed``).

Legal holds. ``vault_items.legal_hold`` is recomputed from the approved holds in force (the latest approved
legal-hold decision per user or job): releasing a job's hold leaves its items held while a hold on their
user is in force, and the other way round.

Transactions. Functions that write take ``db``: an Engine, and then every call is its own transaction, or
a Connection, and then they run inside the caller's transaction and never commit it. A refusal
(``GovernanceError``) is audited in that transaction, which is then left to commit (with an Engine, before
the refusal is raised), so refused attempts and the ``expired`` mark are kept while nothing else is written.
With a Connection they are kept only if the caller commits.

Clock. Every decision takes ``now`` (timezone-aware) instead of reading the clock, so that tests and
replays move time at will; it is written to the rows (``requested_at``, ``expires_at``, ``decided_at``)
and to the audit details. ``audit_logs.at`` stays the database's own time of writing.

Signed URLs. S3/MinIO: the client's presigned GET, signed as of ``now`` (``X-Amz-Date``) for at most 120 s;
S3 enforces the expiry itself. The local store has no server, so its URLs are ours:
``mixai-local://<key>?expires=<unix seconds>&sig=<hex HMAC-SHA256>``, opened with ``open_signed_url``.
Their key is ``MIXAI_SIGNING_KEY`` when set (at least 32 bytes; set it wherever several hosts must agree),
otherwise a random key created once in the state directory (``<MIXAI_HOME>/signing.key``, mode 0600).
``verify_signed_url`` checks either kind against ``now``: signature first (constant-time), then expiry.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Connection, Engine, text

from mixai_pipeline import settings
from mixai_pipeline.lib.storage.database import write_audit
from mixai_pipeline.lib.storage.object_store import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    key_problem,
)

ROLES = ("admin", "ops", "support", "read_only")
APPROVAL_KINDS = ("legal_hold", "original_access", "rollout_full", "other")
APPROVAL_WINDOW = timedelta(hours=24)
RAW_AUDIO_KINDS = ("inst", "vocal")
MAX_SIGNED_URL_TTL_S = 120

ENV_SIGNING_KEY = "MIXAI_SIGNING_KEY"
SIGNING_KEY_FILE = "signing.key"
MIN_SIGNING_KEY_BYTES = 32
LOCAL_URL_SCHEME = "mixai-local://"
_LOCAL_SIGNATURE_CONTEXT = "mixai-local-url-v1"  # keeps these MACs apart from any other use of the key

T = TypeVar("T")
Db = Engine | Connection


@dataclass(frozen=True)
class Permission:
    roles: frozenset[str]
    doing: str  # completes "<actor> (<role>) may not …"


PERMISSIONS: dict[str, Permission] = {
    "operators.manage": Permission(frozenset({"admin"}), "add operators or change their roles"),
    "legal_hold.request": Permission(frozenset({"admin"}), "request a legal hold change"),
    "legal_hold.approve": Permission(frozenset({"admin", "ops"}), "approve or reject a legal hold change"),
    "original_access.request": Permission(frozenset({"admin", "ops", "support"}),
                                          "request access to original audio"),
    "original_access.approve": Permission(frozenset({"admin", "ops"}), "approve or reject access to original audio"),
    "rollout_full.request": Permission(frozenset({"admin", "ops"}), "request a full model rollout"),
    "rollout_full.approve": Permission(frozenset({"admin", "ops"}), "approve or reject a full model rollout"),
    "other.request": Permission(frozenset({"admin", "ops"}), "request an approval"),
    "other.approve": Permission(frozenset({"admin", "ops"}), "approve or reject a request"),
    "consent.change": Permission(frozenset({"admin", "ops", "support"}), "change a user's consent"),
    "retention.purge": Permission(frozenset({"admin", "ops"}), "run the retention purge"),
    "user.purge": Permission(frozenset({"admin", "ops"}), "purge a user's data"),
    "rollout.change": Permission(frozenset({"admin", "ops"}), "change a model's rollout"),
    "flags.change": Permission(frozenset({"admin", "ops"}), "change a feature flag"),
    "reports.read": Permission(frozenset(ROLES), "read reports and statuses"),
}


# ------------------------------------------------------------------------------------------- refusals

class GovernanceError(Exception):
    """A refusal: the message says why, in words an operator understands."""


class PermissionDenied(GovernanceError, PermissionError):
    """The actor is unknown, lacks the role, or is the requester of what they try to decide."""


class InvalidTarget(GovernanceError, ValueError):
    """The request names something that cannot be held or accessed (unknown, deleted, not raw audio…)."""


class ApprovalNotFound(GovernanceError, LookupError):
    pass


class ApprovalStateError(GovernanceError):
    """The request is not in a state that allows this (pending, already decided, rejected…)."""


class ApprovalAlreadyDecided(ApprovalStateError):
    pass


class ApprovalExpired(ApprovalStateError):
    pass


class SignedURLRefused(GovernanceError, PermissionError):
    """A signed URL that is expired, tampered with or not ours."""


# ---------------------------------------------------------------------------------------------- records

@dataclass(frozen=True)
class ApprovalRequest:
    id: int
    kind: str
    target: dict[str, Any]
    reason: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    status: str
    decided_by: str | None
    decided_at: datetime | None


@dataclass(frozen=True)
class LegalHoldChange:
    target: dict[str, Any]
    live_items: int  # live vault items of the target
    changed: int     # of which legal_hold flipped
    held: int        # of which are held afterwards (all when holding; those under another hold when releasing)


@dataclass(frozen=True)
class Decision:
    request: ApprovalRequest
    legal_hold: LegalHoldChange | None = None


@dataclass(frozen=True)
class SignedURL:
    url: str
    expires_at: datetime


_REQUEST_COLUMNS = "id, kind, target, reason, requested_by, requested_at, expires_at, status, decided_by, decided_at"


def _request_from_row(row) -> ApprovalRequest:
    return ApprovalRequest(**row._mapping)


# ---------------------------------------------------------------------------------------------- helpers

def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime (the injectable clock), got {now!r}")
    return now


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty name, got {name!r}")
    if name != name.strip() or any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ValueError(f"{what} {name!r} has surrounding spaces or control characters")
    return name


@contextlib.contextmanager
def _transaction(db: Db) -> Iterator[Connection]:
    if isinstance(db, Engine):
        with db.begin() as conn:
            yield conn
    else:
        yield db  # the caller's transaction: the caller commits


def _run(db: Db, work: Callable[[Connection], T], *, actor: str, refused_action: str, target_type: str,
         target_id: str | None, context: dict[str, Any] | None = None) -> T:
    """``work`` in one transaction; a refusal is audited in it, the transaction is let through, then raised."""
    with _transaction(db) as conn:
        try:
            return work(conn)
        except GovernanceError as error:
            write_refusal(conn, error, actor=actor, action=refused_action, target_type=target_type,
                          target_id=target_id, context=context)
            refusal = error
    raise refusal


def write_refusal(conn: Connection, error: Exception, *, actor: str, action: str, target_type: str,
                  target_id: str | None, context: dict[str, Any] | None = None) -> None:
    """Audit a refused request: who asked for what, and why it was refused. Callers whose transaction the
    refusal rolls back write it in a transaction of its own."""
    write_audit(conn, actor=actor, action=action, target_type=target_type, target_id=target_id,
                details={**(context or {}), "refused": str(error), "refusal": type(error).__name__})


def _roles_phrase(roles: set[str] | frozenset[str]) -> str:
    return " or ".join(role for role in ROLES if role in roles) or "a role nobody has"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


# ------------------------------------------------------------------------------------------------ roles

def role_of(conn: Connection, actor: str) -> str | None:
    """The actor's role; None for someone who is not an operator."""
    return conn.execute(text("SELECT role FROM operators WHERE actor = :actor"), {"actor": actor}).scalar_one_or_none()


def require_role(conn: Connection, actor: str, allowed: set[str] | frozenset[str], action: str) -> str:
    """The actor's role when it is one of ``allowed``; otherwise PermissionDenied saying who may ``action``."""
    role = role_of(conn, actor)
    if role is None:
        raise PermissionDenied(f"{actor!r} is not a registered operator and may not {action}: "
                               f"needs {_roles_phrase(allowed)} (an admin adds operators)")
    if role not in allowed:
        raise PermissionDenied(f"{actor} ({role}) may not {action}: needs {_roles_phrase(allowed)}")
    return role


def require_permission(conn: Connection, actor: str, permission: str) -> str:
    """``require_role`` for an entry of ``PERMISSIONS`` (e.g. ``"retention.purge"``)."""
    rule = PERMISSIONS[permission]
    return require_role(conn, actor, rule.roles, rule.doing)


def may(role: str | None, permission: str) -> bool:
    return role in PERMISSIONS[permission].roles


def add_operator(db: Db, actor: str, role: str, *, by: str, now: datetime) -> str | None:
    """Add an operator or change their role; returns the previous role (None when new).

    Only an admin may, except for the first operator of an empty table, who must be an admin (bootstrap;
    ``by`` is then only recorded). The last admin cannot be demoted, so that someone can always manage roles.
    """
    _check_name(actor, "operator")
    _check_name(by, "by")
    _aware(now)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")

    def work(conn: Connection) -> str | None:
        # One writer at a time: the bootstrap and last-admin rules read the whole table.
        conn.execute(text("LOCK TABLE operators IN SHARE ROW EXCLUSIVE MODE"))
        bootstrap = not conn.execute(text("SELECT EXISTS (SELECT 1 FROM operators)")).scalar_one()
        if bootstrap and role != "admin":
            raise PermissionDenied(f"there are no operators yet: the first one must be an admin, not {role}")
        if not bootstrap:
            require_permission(conn, by, "operators.manage")
        previous = role_of(conn, actor)
        if previous == role:
            return previous
        if previous == "admin":
            admins = conn.execute(text("SELECT count(*) FROM operators WHERE role = 'admin'")).scalar_one()
            if admins == 1:
                raise PermissionDenied(f"{actor} is the last admin and stays one: add another admin first")
        conn.execute(text("INSERT INTO operators (actor, role, created_at) VALUES (:actor, :role, :now) "
                          "ON CONFLICT (actor) DO UPDATE SET role = EXCLUDED.role"),
                     {"actor": actor, "role": role, "now": now})
        write_audit(conn, actor=by, action="operator.added" if previous is None else "operator.role_changed",
                    target_type="operator", target_id=actor,
                    details={"role": role, "previous_role": previous, "bootstrap": bootstrap, "now": _iso(now)})
        return previous

    return _run(db, work, actor=by, refused_action="operator.change_refused", target_type="operator",
                target_id=actor, context={"role": role})


# -------------------------------------------------------------------------------------------- approvals

def get_request(conn: Connection, request_id: int, *, for_update: bool = False) -> ApprovalRequest:
    row = conn.execute(text(f"SELECT {_REQUEST_COLUMNS} FROM approval_requests WHERE id = :id"
                            + (" FOR UPDATE" if for_update else "")), {"id": request_id}).one_or_none()
    if row is None:
        raise ApprovalNotFound(f"there is no approval request {request_id}")
    return _request_from_row(row)


def request_approval(db: Db, kind: str, target: dict[str, Any], reason: str, *, actor: str,
                     now: datetime) -> ApprovalRequest:
    """A pending request for ``kind`` on ``target``, open for 24 h; the actor needs ``<kind>.request``.

    Targets: legal_hold ``{"user_id": …, "hold": bool}`` or ``{"job_id": …, "hold": bool}`` (an existing
    user or job); original_access ``{"vault_item_id": int}`` (a live inst or vocal item); rollout_full and
    other: any non-empty JSON object, decided here and acted on by whoever checks ``require_approved``.
    """
    _check_name(actor, "actor")
    _aware(now)

    def work(conn: Connection) -> ApprovalRequest:
        if kind not in APPROVAL_KINDS:
            raise InvalidTarget(f"unknown approval kind {kind!r}: one of {', '.join(APPROVAL_KINDS)}")
        require_permission(conn, actor, f"{kind}.request")
        clean_target = _validated_target(conn, kind, target)
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidTarget("a request needs a reason (it is shown to the approver and kept in the audit log)")
        row = conn.execute(
            text(f"INSERT INTO approval_requests (kind, target, reason, requested_by, requested_at, expires_at) "
                 f"VALUES (:kind, CAST(:target AS jsonb), :reason, :actor, :now, :expires_at) "
                 f"RETURNING {_REQUEST_COLUMNS}"),
            {"kind": kind, "target": json.dumps(clean_target), "reason": reason.strip(), "actor": actor,
             "now": now, "expires_at": now + APPROVAL_WINDOW}).one()
        request = _request_from_row(row)
        write_audit(conn, actor=actor, action="approval.requested", target_type="approval_request",
                    target_id=str(request.id),
                    details={"kind": kind, "target": clean_target, "reason": request.reason,
                             "expires_at": _iso(request.expires_at), "now": _iso(now)})
        return request

    return _run(db, work, actor=actor, refused_action="approval.request_refused", target_type="approval_request",
                target_id=None, context={"kind": kind, "target": target, "now": _iso(now)})


def approve(db: Db, request_id: int, *, approver: str, now: datetime) -> Decision:
    """Approve a pending, unexpired request as a second operator; an approved legal-hold change applies at once."""
    return _decide(db, request_id, approver=approver, now=now, approved=True, note=None)


def reject(db: Db, request_id: int, *, approver: str, now: datetime, note: str | None = None) -> Decision:
    """Reject a pending, unexpired request (same rules as ``approve``); ``note`` goes to the audit log."""
    return _decide(db, request_id, approver=approver, now=now, approved=False, note=note)


def _decide(db: Db, request_id: int, *, approver: str, now: datetime, approved: bool,
            note: str | None) -> Decision:
    _check_name(approver, "approver")
    _aware(now)
    verb = "approve" if approved else "reject"

    def work(conn: Connection) -> Decision:
        request = get_request(conn, request_id, for_update=True)  # racing approvers queue here
        # Who first, then state: someone who may not decide learns nothing and changes nothing.
        if approver == request.requested_by:
            raise PermissionDenied(f"{approver} requested approval {request.id} and may not {verb} it: "
                                   "a second, different operator must (4-eyes)")
        require_permission(conn, approver, f"{request.kind}.approve")
        if request.status == "expired":
            raise ApprovalExpired(f"approval request {request.id} expired at {_iso(request.expires_at)}: "
                                  "ask for a new one")
        if request.status != "pending":
            raise ApprovalAlreadyDecided(f"approval request {request.id} was already {request.status} by "
                                         f"{request.decided_by} at {_iso(request.decided_at)}")
        if now >= request.expires_at:
            conn.execute(text("UPDATE approval_requests SET status = 'expired' WHERE id = :id"), {"id": request.id})
            write_audit(conn, actor=approver, action="approval.expired", target_type="approval_request",
                        target_id=str(request.id), details={"expires_at": _iso(request.expires_at), "now": _iso(now)})
            raise ApprovalExpired(f"approval request {request.id} expired at {_iso(request.expires_at)} "
                                  f"(24 h after it was requested): it is now marked expired; ask for a new one")
        if approved and request.kind == "original_access":
            _raw_item(conn, request.target["vault_item_id"])  # deleted since it was requested?
        row = conn.execute(
            text(f"UPDATE approval_requests SET status = :status, decided_by = :approver, decided_at = :now "
                 f"WHERE id = :id RETURNING {_REQUEST_COLUMNS}"),
            {"status": "approved" if approved else "rejected", "approver": approver, "now": now,
             "id": request.id}).one()
        decided = _request_from_row(row)
        write_audit(conn, actor=approver, action=f"approval.{decided.status}", target_type="approval_request",
                    target_id=str(decided.id),
                    details={"kind": decided.kind, "target": decided.target, "requested_by": decided.requested_by,
                             "note": note, "now": _iso(now)})
        change = None
        if approved and decided.kind == "legal_hold":
            change = _apply_legal_hold(conn, decided, now=now)
        return Decision(decided, change)

    return _run(db, work, actor=approver, refused_action="approval.decision_refused",
                target_type="approval_request", target_id=str(request_id),
                context={"decision": verb, "now": _iso(now)})


def expire_stale_requests(db: Db, *, now: datetime, actor: str = "system:approvals") -> list[int]:
    """Mark every request still pending at its expiry ``expired`` (e.g. from a schedule); their ids."""
    _aware(now)
    with _transaction(db) as conn:
        expired = list(conn.execute(text(
            "UPDATE approval_requests SET status = 'expired' WHERE status = 'pending' AND expires_at <= :now "
            "RETURNING id"), {"now": now}).scalars())
        for request_id in sorted(expired):
            write_audit(conn, actor=actor, action="approval.expired", target_type="approval_request",
                        target_id=str(request_id), details={"now": _iso(now)})
    return sorted(expired)


def require_approved(conn: Connection, request_id: int, kind: str, *, now: datetime) -> ApprovalRequest:
    """The request when it is an approved ``kind`` still inside its 24 h; otherwise a refusal."""
    _aware(now)
    request = get_request(conn, request_id)
    if request.kind != kind:
        raise InvalidTarget(f"approval request {request.id} is for {request.kind}, not {kind}")
    if request.status == "pending":
        raise ApprovalStateError(f"approval request {request.id} is still pending: a second operator must approve "
                                 "it first")
    if request.status != "approved":
        raise ApprovalStateError(f"approval request {request.id} was {request.status}")
    if now >= request.expires_at:
        raise ApprovalExpired(f"approval request {request.id} was approved but its window ended at "
                              f"{_iso(request.expires_at)}: ask for a new one")
    return request


def _validated_target(conn: Connection, kind: str, target: object) -> dict[str, Any]:
    if not isinstance(target, dict) or not target:
        raise InvalidTarget(f"a {kind} request needs a target object, got {target!r}")
    if kind == "legal_hold":
        return _legal_hold_target(conn, target)
    if kind == "original_access":
        if set(target) != {"vault_item_id"}:
            raise InvalidTarget(f'an original_access target is {{"vault_item_id": <id>}}, got {target!r}')
        _raw_item(conn, target["vault_item_id"])
        return {"vault_item_id": target["vault_item_id"]}
    try:
        return json.loads(json.dumps(target))
    except (TypeError, ValueError):
        raise InvalidTarget(f"a {kind} target must be plain JSON, got {target!r}") from None


def _legal_hold_target(conn: Connection, target: dict[str, Any]) -> dict[str, Any]:
    hold = target.get("hold")
    scope = set(target) - {"hold"}
    if not isinstance(hold, bool) or scope not in ({"user_id"}, {"job_id"}):
        raise InvalidTarget('a legal_hold target is {"user_id": …} or {"job_id": …} with "hold": true or false, '
                            f"got {target!r}")
    field = scope.pop()
    try:
        value = str(UUID(str(target[field])))
    except ValueError:
        raise InvalidTarget(f"{field} {target[field]!r} is not a UUID") from None
    exists = conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM jobs WHERE {field} = CAST(:value AS uuid))"),
                          {"value": value}).scalar_one()
    if not exists:
        raise InvalidTarget(f"there is no {'user' if field == 'user_id' else 'job'} {value} to hold or release")
    return {field: value, "hold": hold}


@dataclass(frozen=True)
class _RawItem:
    id: int
    job_id: UUID
    user_id: UUID
    kind: str
    path: str


def _raw_item(conn: Connection, vault_item_id: object) -> _RawItem:
    """The live inst/vocal vault item; InvalidTarget for anything else."""
    if isinstance(vault_item_id, bool) or not isinstance(vault_item_id, int):
        raise InvalidTarget(f"vault_item_id must be an integer, got {vault_item_id!r}")
    row = conn.execute(text("SELECT id, job_id, user_id, kind, path, deleted_at FROM vault_items WHERE id = :id"),
                       {"id": vault_item_id}).one_or_none()
    if row is None:
        raise InvalidTarget(f"there is no vault item {vault_item_id}")
    if row.deleted_at is not None:
        raise InvalidTarget(f"vault item {vault_item_id} was deleted at {_iso(row.deleted_at)}: its audio is gone")
    if row.kind not in RAW_AUDIO_KINDS:
        raise InvalidTarget(f"vault item {vault_item_id} is a {row.kind}, not original audio "
                            f"({' or '.join(RAW_AUDIO_KINDS)})")
    return _RawItem(row.id, row.job_id, row.user_id, row.kind, row.path)


# ------------------------------------------------------------------------------------------ legal holds

_HOLDS_IN_FORCE = """
    SELECT user_id, job_id FROM (
        SELECT DISTINCT ON (target->>'user_id', target->>'job_id')
               target->>'user_id' AS user_id, target->>'job_id' AS job_id, (target->>'hold')::boolean AS hold
        FROM approval_requests
        WHERE kind = 'legal_hold' AND status = 'approved'
        ORDER BY target->>'user_id', target->>'job_id', decided_at DESC, id DESC
    ) AS latest
    WHERE hold
"""


def holds_in_force(conn: Connection) -> list[dict[str, str]]:
    """The legal holds in force: ``{"user_id": …}`` or ``{"job_id": …}``, from the latest approved decisions."""
    return [{"user_id": user_id} if user_id else {"job_id": job_id}
            for user_id, job_id in conn.execute(text(_HOLDS_IN_FORCE))]


def under_legal_hold(conn: Connection, *, user_id: UUID | str | None = None, job_id: UUID | str | None = None) -> bool:
    """Whether a hold in force covers this user or this job; for one item pass both (its user's hold covers it).

    For purges and registration: ``vault_items.legal_hold`` is set on the items live when a hold is approved,
    so items registered later for a held user or job are covered only through this check.
    """
    if user_id is None and job_id is None:
        raise ValueError("name a user_id or a job_id")
    return conn.execute(
        text(f"SELECT EXISTS (SELECT 1 FROM ({_HOLDS_IN_FORCE}) AS h "
             "WHERE h.user_id = :user_id OR h.job_id = :job_id)"),
        {"user_id": str(user_id) if user_id else None, "job_id": str(job_id) if job_id else None}).scalar_one()


def _apply_legal_hold(conn: Connection, request: ApprovalRequest, *, now: datetime) -> LegalHoldChange:
    """Recompute ``legal_hold`` of the target's live items from the holds in force, and audit the change."""
    target = request.target
    field = "user_id" if "user_id" in target else "job_id"
    before = dict(conn.execute(
        text(f"SELECT id, legal_hold FROM vault_items WHERE deleted_at IS NULL AND {field} = CAST(:value AS uuid) "
             "ORDER BY id FOR UPDATE"), {"value": target[field]}).all())
    after: dict[int, bool] = {}
    if before:
        after = dict(conn.execute(
            text(f"UPDATE vault_items v SET legal_hold = EXISTS (SELECT 1 FROM ({_HOLDS_IN_FORCE}) AS h "
                 "    WHERE h.user_id = v.user_id::text OR h.job_id = v.job_id::text) "
                 "WHERE v.id = ANY(:ids) RETURNING v.id, v.legal_hold"), {"ids": list(before)}).all())
    change = LegalHoldChange(target=target, live_items=len(before),
                             changed=sum(after[i] != before[i] for i in before), held=sum(after.values()))
    write_audit(conn, actor=request.decided_by or "",
                action="legal_hold.set" if target["hold"] else "legal_hold.released",
                target_type="user" if field == "user_id" else "job", target_id=target[field],
                details={"approval_request": request.id, "requested_by": request.requested_by,
                         "approved_by": request.decided_by, "live_items": change.live_items,
                         "changed": change.changed, "held": change.held, "now": _iso(now)})
    return change


# -------------------------------------------------------------------------------- original audio access

def grant_original_access(db: Db, store: ObjectStore, request_id: int, *, actor: str, now: datetime,
                          ttl_s: int = MAX_SIGNED_URL_TTL_S) -> SignedURL:
    """A signed URL (at most 120 s) to the original audio of an approved original_access request.

    Only the requester may take one, while their role still allows the request and within the request's
    24 h; they may take several (a URL may lapse before the download starts), each audited as
    ``original.accessed``. With an Engine the URL is returned only after that audit entry is committed.
    """
    _check_name(actor, "actor")
    _aware(now)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_SIGNED_URL_TTL_S:
        raise ValueError(f"ttl_s must be 1 to {MAX_SIGNED_URL_TTL_S} seconds, got {ttl_s!r}")

    def work(conn: Connection) -> SignedURL:
        request = get_request(conn, request_id)
        if actor != request.requested_by:
            raise PermissionDenied(f"{actor} did not request approval {request.id}: only its requester "
                                   f"{request.requested_by} may open the original audio")
        require_permission(conn, actor, "original_access.request")  # the role may have changed since
        require_approved(conn, request_id, "original_access", now=now)
        item = _raw_item(conn, request.target["vault_item_id"])
        if not store.exists(item.path):
            raise InvalidTarget(f"vault item {item.id}'s object {item.path!r} is missing from the store")
        signed = _sign(store, item.path, now=now, ttl_s=ttl_s)
        write_audit(conn, actor=actor, action="original.accessed", target_type="vault_item", target_id=str(item.id),
                    details={"approval_request": request.id, "approved_by": request.decided_by,
                             "job_id": str(item.job_id), "user_id": str(item.user_id), "kind": item.kind,
                             "path": item.path, "url_expires_at": _iso(signed.expires_at), "now": _iso(now)})
        return signed

    return _run(db, work, actor=actor, refused_action="original.access_refused", target_type="approval_request",
                target_id=str(request_id), context={"now": _iso(now)})


def _sign(store: ObjectStore, key: str, *, now: datetime, ttl_s: int) -> SignedURL:
    if isinstance(store, S3ObjectStore):
        signed_at = now.astimezone(timezone.utc).replace(microsecond=0)  # X-Amz-Date has whole seconds
        url = store.client.presigned_get_object(store.bucket, key, expires=timedelta(seconds=ttl_s),
                                                request_date=signed_at)
        return SignedURL(url, signed_at + timedelta(seconds=ttl_s))
    if isinstance(store, LocalObjectStore):
        expires = int(now.timestamp()) + ttl_s  # whole seconds, rounded down: never longer than ttl_s
        url = (f"{LOCAL_URL_SCHEME}{urllib.parse.quote(key, safe='/')}"
               f"?expires={expires}&sig={_local_signature(key, expires)}")
        return SignedURL(url, datetime.fromtimestamp(expires, timezone.utc))
    raise TypeError(f"no signed URLs for a {type(store).__name__}")


def verify_signed_url(store: ObjectStore, url: str, *, now: datetime) -> str:
    """The object key of a signed URL of ``store`` that is genuine and unexpired at ``now``; else SignedURLRefused.

    For S3 it re-signs the URL's own date and lifetime and compares: the check S3 makes itself, for servers
    that do not (moto) and for tests that move the clock.
    """
    _aware(now)
    if isinstance(store, LocalObjectStore):
        key, expires_at = _verify_local(url)
    elif isinstance(store, S3ObjectStore):
        key, expires_at = _verify_s3(store, url)
    else:
        raise TypeError(f"no signed URLs for a {type(store).__name__}")
    if now >= expires_at:
        raise SignedURLRefused(f"signed URL expired at {_iso(expires_at)} "
                               f"({(now - expires_at).total_seconds():.0f} s ago): ask for a new one")
    return key


def open_signed_url(store: ObjectStore, url: str, *, now: datetime) -> bytes:
    """The object's bytes through a signed URL: verified here, then read (local) or fetched over HTTP (S3)."""
    key = verify_signed_url(store, url, now=now)
    if isinstance(store, LocalObjectStore):
        return store.get_bytes(key)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # S3 checks it again on its side
            return response.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise ObjectNotFound(f"no object {key!r}") from None
        raise SignedURLRefused(f"the object store refused the signed URL: HTTP {err.code}") from None


def _single_params(query: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise SignedURLRefused("signed URL has a malformed query") from None
    params = dict(pairs)
    if len(params) != len(pairs):
        raise SignedURLRefused("signed URL repeats a parameter")
    return params


def _verify_local(url: str) -> tuple[str, datetime]:
    if not isinstance(url, str) or not url.startswith(LOCAL_URL_SCHEME):
        raise SignedURLRefused(f"not a {LOCAL_URL_SCHEME} signed URL")
    quoted_key, _, query = url[len(LOCAL_URL_SCHEME):].partition("?")
    params = _single_params(query)
    expires, signature = params.get("expires", ""), params.get("sig", "")
    if set(params) != {"expires", "sig"} or not (expires.isascii() and expires.isdigit()):
        raise SignedURLRefused("signed URL lacks a valid expires or sig")
    key = urllib.parse.unquote(quoted_key, errors="strict")
    if key_problem(key):
        raise SignedURLRefused(f"signed URL names an invalid key: {key_problem(key)}")
    expected = _local_signature(key, int(expires))
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise SignedURLRefused("signed URL signature does not match: it was altered or signed with another key")
    return key, datetime.fromtimestamp(int(expires), timezone.utc)


def _verify_s3(store: S3ObjectStore, url: str) -> tuple[str, datetime]:
    parts = urllib.parse.urlsplit(url)
    params = _single_params(parts.query)
    try:
        signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        ttl_s = int(params["X-Amz-Expires"])
    except (KeyError, ValueError):
        signed_at = None
    if signed_at is None or "X-Amz-Signature" not in params:
        raise SignedURLRefused("not a presigned S3 URL (X-Amz-Date, X-Amz-Expires, X-Amz-Signature)")
    if not 1 <= ttl_s <= MAX_SIGNED_URL_TTL_S:
        raise SignedURLRefused(f"signed URL lives {ttl_s} s: at most {MAX_SIGNED_URL_TTL_S} s are granted")
    path = urllib.parse.unquote(parts.path)
    bucket_prefix = f"/{store.bucket}/"
    key = path[len(bucket_prefix):] if path.startswith(bucket_prefix) else path[1:]  # path- or host-style
    if key_problem(key):
        raise SignedURLRefused("signed URL names an invalid key")
    expected = store.client.presigned_get_object(store.bucket, key, expires=timedelta(seconds=ttl_s),
                                                 request_date=signed_at)
    if not hmac.compare_digest(expected.encode(), url.encode()):
        raise SignedURLRefused("signed URL signature does not match: it was altered or is for another store")
    return key, signed_at + timedelta(seconds=ttl_s)


def _local_signature(key: str, expires: int) -> str:
    message = f"{_LOCAL_SIGNATURE_CONTEXT}\n{expires}\n{key}".encode()
    return hmac.new(signing_key(), message, hashlib.sha256).hexdigest()


def signing_key() -> bytes:
    """The key of local signed URLs: ``MIXAI_SIGNING_KEY``, else one created once in the state directory."""
    configured = os.environ.get(ENV_SIGNING_KEY)
    if configured:
        key = configured.encode()
        if len(key) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(f"{ENV_SIGNING_KEY} is {len(key)} bytes long: use at least {MIN_SIGNING_KEY_BYTES} "
                             "random bytes, e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
        return key
    return _persisted_signing_key(settings.state_dir() / SIGNING_KEY_FILE)


def _persisted_signing_key(path: Path) -> bytes:
    if not path.exists():
        # Written aside then linked into place: processes creating it at once all end up reading the same key.
        fd, tmp = tempfile.mkstemp(prefix=".signing-key-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    key = path.read_text().strip().encode()
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise ValueError(f"the signing key in {path} is too short ({len(key)} bytes): delete the file to make a "
                         f"new one (outstanding URLs stop working) or set {ENV_SIGNING_KEY}")
    return key

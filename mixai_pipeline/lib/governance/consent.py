"""Consent (``ml_consent``): QA and training opt-ins, separately, each with the time it was last stated
and the times it was last granted and withdrawn.

Consent changes come from three places: the upload manifest (``lib/ingestion/registration.py``), an
operator (``mixai consent grant|withdraw``: ``set_consent`` / ``withdraw_training``) and consent-change
events the app writes to ``consent/<user_id>/<timestamp>.json`` (``parse_consent_event`` /
``apply_consent_event``). The rules they share:

- Without a row, or with ``training`` false, nothing of the user is trained on (dataset.ELIGIBLE_SQL).
- A statement only changes a field if it is not older than the field's last statement
  (``<field>_updated_at``): an event that arrives late never overrides a newer choice. A field never
  stated carries ``NEVER_STATED`` (the epoch) so that the first real statement always counts. A late
  statement that disagrees with the newer one still tells of a turn the row missed (a grant at t1 seen
  after a "no" at t2 means a withdrawal at t2; a "no" at t1 seen after a "yes" at t2 means a withdrawal
  at t1 and a re-grant): the value stays, the granted/withdrawn dates are filled in, and a missed training
  withdrawal gets its deletion request (dated when the user withdrew, so the 24 h are counted from then;
  no exclusion when training was granted again since: the withdrawal date already keeps the older
  uploads out).
- Training going from granted to withdrawn is a *withdrawal*, whichever way it arrives: in the same
  transaction an ``ml_exclusions`` row (reason ``withdrawal``, for the user) takes the user out of every
  later training set at once, and a ``deletion_requests`` row asks ``purge.purge_user_data`` to delete
  the data of the user's uploads received up to then within 24 h. ``withdraw_training`` is the explicit
  request: it always records the exclusion and a deletion request, even if training was already off,
  and is never ignored as stale (the safe direction).
- Granting training again lifts the user-level ``withdrawal`` exclusions (other reasons stay): the
  dataset's own rule keeps every upload received before the last withdrawal out for good, so only later
  uploads come back. The lifted rows are kept in the audit entry.
- Withdrawing QA consent is recorded (``qa_withdrawn_at``) but deletes nothing: QA use is decided when
  the data is read. Already-trained model weights are never changed retroactively.

Idempotent events: ``consent_events`` holds every applied event's key and content digest. Applying an
event again returns ``duplicate`` and changes and audits nothing; a key rewritten with other content is
refused. Each applied event writes exactly one audit entry (``consent.set``, ``consent.withdrawn`` or,
when it changed nothing, ``consent.event_ignored``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from mixai_pipeline.lib.storage.database import write_audit
from mixai_pipeline.lib.storage.object_store import key_problem

# A field nobody has stated yet: older than any real statement, so the first one always applies.
NEVER_STATED = datetime(1970, 1, 1, tzinfo=timezone.utc)
CONSENT_PREFIX = "consent/"
MAX_EVENT_BYTES = 4096
# An event dated further ahead of the applying clock than this is refused: a far-future date would
# otherwise freeze the user's consent (every genuine later event would look older).
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Seed 000 §4: a withdrawn user's previews, features and labels are deleted within 24 h.
DELETION_DEADLINE = timedelta(hours=24)
# No consent event predates the product: an older date is garbage (and would sort before every real one).
OLDEST_EVENT = datetime(2020, 1, 1, tzinfo=timezone.utc)
FIELDS = ("qa", "training")
_EVENT_FIELDS = {"user_id", "at", "qa", "training"}

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# The key's timestamp: ISO 8601 with an explicit offset, extended (2025-09-01T12:00:00Z) or basic
# (20250901T120000Z, no colons for tools that dislike them), optional fraction up to microseconds.
_EXTENDED = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})"
_BASIC = r"\d{8}T\d{6}(?:\.\d{1,6})?(?:Z|[+-]\d{4})"
_EVENT_KEY = re.compile(rf"^consent/(?P<user>{_UUID})/(?P<ts>{_EXTENDED}|{_BASIC})\.json$")


class InvalidConsentEvent(ValueError):
    """A consent-change event that is refused, with the reason in words."""


@dataclass(frozen=True)
class ConsentChange:
    """What one statement did to a user's consent row."""

    user_id: UUID
    before: dict[str, Any] | None          # None: the row did not exist
    after: dict[str, Any]
    changed: tuple[str, ...]               # fields whose value changed
    stale: tuple[str, ...]                 # fields given but older than their last statement: ignored
    withdrawal: Withdrawal | None = None
    exclusions_lifted: tuple[int, ...] = ()
    audited: bool = False


@dataclass(frozen=True)
class Withdrawal:
    user_id: UUID
    exclusion_id: int | None               # None: training was granted again since (a late withdrawal)
    deletion_request_id: int
    requested_at: datetime
    new_request: bool                      # False: an open request of an earlier withdrawal was reused


@dataclass(frozen=True)
class ConsentEvent:
    key: str
    user_id: UUID
    at: datetime                           # when the user made the choice (orders the events)
    qa: bool | None
    training: bool | None
    sha256: str
    key_time: datetime = field(compare=False)


def _aware(moment: datetime, name: str = "now") -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")
    return moment


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


# ------------------------------------------------------------------------------------------ changes

_ROW_COLUMNS = ("qa", "training", "qa_updated_at", "training_updated_at", "qa_granted_at", "qa_withdrawn_at",
                "training_granted_at", "training_withdrawn_at", "source")


def consent_of(conn: Connection, user_id: UUID | str) -> dict[str, Any] | None:
    """The user's ``ml_consent`` row as a dict, or None."""
    row = conn.execute(text(f"SELECT {', '.join(_ROW_COLUMNS)} FROM ml_consent WHERE user_id = :u"),
                       {"u": _uuid(user_id)}).mappings().first()
    return dict(row) if row else None


def _lock(conn: Connection, user: UUID) -> dict[str, Any] | None:
    row = conn.execute(text(f"SELECT {', '.join(_ROW_COLUMNS)} FROM ml_consent WHERE user_id = :u FOR UPDATE"),
                       {"u": user}).mappings().first()
    return dict(row) if row else None


def _lock_or_create(conn: Connection, user: UUID, source: str, now: datetime) -> tuple[dict[str, Any], bool]:
    row = _lock(conn, user)
    if row is not None:
        return row, False
    # Default: no consent, neither field stated yet. ON CONFLICT: another transaction created it first (two
    # uploads of a new user registered in parallel), and then this one did not create it.
    created = conn.execute(text(
        """INSERT INTO ml_consent (user_id, qa, training, qa_updated_at, training_updated_at, source, updated_at)
           VALUES (:u, false, false, :never, :never, :source, :now) ON CONFLICT (user_id) DO NOTHING
           RETURNING user_id"""),
        {"u": user, "never": NEVER_STATED, "source": source, "now": now}).first() is not None
    row = _lock(conn, user)
    assert row is not None
    return row, created


def _latest(*moments: datetime | None) -> datetime | None:
    present = [m for m in moments if m is not None]
    return max(present) if present else None


def _change(conn: Connection, user: UUID, given: dict[str, bool | None], *, source: str, actor: str,
            now: datetime, withdraw: bool = False, note: str | None = None,
            context: dict[str, Any] | None = None) -> ConsentChange:
    before, created = _lock_or_create(conn, user, source, now)
    after = dict(before)
    changed, stale = [], []
    withdrawal_at: datetime | None = None   # a withdrawal to record, effective then
    exclude = False                         # ... with the exclusion (training is off afterwards)
    for name in FIELDS:
        value = given.get(name)
        if value is None:
            continue
        last = before[f"{name}_updated_at"]
        forced = withdraw and name == "training"
        if now < last and not forced:
            stale.append(name)
            if value != before[name] and last > NEVER_STATED:
                # A late statement that disagrees with a newer one: the history had a turn the row
                # missed (granted at `now` then withdrawn at `last`, or the reverse). The value stays;
                # the dates are filled in and a missed training withdrawal still gets its deletion.
                turned_on, turned_off = (now, last) if value else (last, now)
                known = before[f"{name}_withdrawn_at"]
                after[f"{name}_granted_at"] = _latest(before[f"{name}_granted_at"], turned_on)
                after[f"{name}_withdrawn_at"] = _latest(known, turned_off)
                if name == "training" and (known is None or known < turned_off):
                    withdrawal_at, exclude = turned_off, not before["training"]
            continue
        after[f"{name}_updated_at"] = max(now, last)
        if value != before[name] or forced:
            after[name] = value
            after[f"{name}_granted_at" if value else f"{name}_withdrawn_at"] = now
            if value != before[name]:
                changed.append(name)
            if name == "training" and not value:
                withdrawal_at, exclude = now, True
    if created or any(after[k] != before[k] for k in _ROW_COLUMNS):
        after["source"] = source
        conn.execute(text(
            """UPDATE ml_consent SET qa = :qa, training = :training, qa_updated_at = :qa_updated_at,
                   training_updated_at = :training_updated_at, qa_granted_at = :qa_granted_at,
                   qa_withdrawn_at = :qa_withdrawn_at, training_granted_at = :training_granted_at,
                   training_withdrawn_at = :training_withdrawn_at, source = :source, updated_at = :now
               WHERE user_id = :u"""), {**after, "u": user, "now": now})

    withdrawal = None
    if withdrawal_at is not None:
        # A restated withdrawal (training already off) reuses the open request of the first one.
        withdrawal = _record_withdrawal(conn, user, actor=actor, effective_at=withdrawal_at, note=note,
                                        exclude=exclude, reuse_any_open=withdraw and not before["training"])
    lifted_rows: list[dict[str, Any]] = []
    if "training" in changed and after["training"]:
        lifted_rows = [dict(r) for r in conn.execute(text(
            """DELETE FROM ml_exclusions WHERE user_id = :u AND job_id IS NULL AND reason = 'withdrawal'
               RETURNING id, note, created_by, created_at"""), {"u": user}).mappings()]

    audited = created or bool(changed) or withdrawal is not None
    if audited:
        details: dict[str, Any] = {
            "before": {k: before[k] for k in FIELDS} if not created else None,
            "after": {k: after[k] for k in FIELDS}, "changed": changed, "stale": stale,
            "source": source, "effective_at": now.isoformat(), **(context or {})}
        if note:
            details["note"] = note
        if withdrawal:
            details.update(withdrawn_at=withdrawal_at.isoformat(), exclusion_id=withdrawal.exclusion_id,
                           deletion_request_id=withdrawal.deletion_request_id,
                           new_deletion_request=withdrawal.new_request,
                           late_statement="training" in stale)
        if lifted_rows:
            details["exclusions_lifted"] = lifted_rows
        write_audit(conn, actor=actor, action="consent.withdrawn" if withdrawal else "consent.set",
                    target_type="user", target_id=str(user), details=details)
    return ConsentChange(user, None if created else {k: before[k] for k in _ROW_COLUMNS},
                         {k: after[k] for k in _ROW_COLUMNS}, tuple(changed), tuple(stale), withdrawal,
                         tuple(r["id"] for r in lifted_rows), audited)


def _record_withdrawal(conn: Connection, user: UUID, *, actor: str, effective_at: datetime, note: str | None,
                       exclude: bool, reuse_any_open: bool) -> Withdrawal:
    exclusion_id = None
    if exclude:
        exclusion_id = conn.execute(text(
            """SELECT id FROM ml_exclusions WHERE user_id = :u AND job_id IS NULL AND reason = 'withdrawal'
               ORDER BY id LIMIT 1"""), {"u": user}).scalar()
        if exclusion_id is None:
            exclusion_id = conn.execute(text(
                """INSERT INTO ml_exclusions (user_id, reason, note, created_by, created_at)
                   VALUES (:u, 'withdrawal', :note, :actor, :at) RETURNING id"""),
                {"u": user, "note": note, "actor": actor, "at": effective_at}).scalar_one()
    # An open request already covering the uploads up to effective_at serves; so does any open request
    # when the same withdrawal is stated again. Otherwise a new one, covering the uploads up to then.
    open_request = conn.execute(text(
        """SELECT id, requested_at FROM deletion_requests
           WHERE user_id = :u AND status = 'pending' AND (:any_open OR requested_at >= :at)
           ORDER BY requested_at DESC, id DESC LIMIT 1"""),
        {"u": user, "at": effective_at, "any_open": reuse_any_open}).first()
    if open_request is not None:
        return Withdrawal(user, exclusion_id, open_request.id, open_request.requested_at, False)
    request_id = conn.execute(text(
        """INSERT INTO deletion_requests (user_id, reason, note, requested_by, requested_at, due_at)
           VALUES (:u, 'withdrawal', :note, :actor, :at, :due) RETURNING id"""),
        {"u": user, "note": note, "actor": actor, "at": effective_at,
         "due": effective_at + DELETION_DEADLINE}).scalar_one()
    return Withdrawal(user, exclusion_id, request_id, effective_at, True)


def set_consent(conn: Connection, user_id: UUID | str, *, qa: bool | None = None, training: bool | None = None,
                source: str, actor: str, now: datetime, note: str | None = None) -> ConsentChange:
    """Set the given consent fields (None leaves a field alone) as of ``now``, in the caller's transaction.

    Dates: ``<field>_updated_at`` = now; ``<field>_granted_at`` / ``_withdrawn_at`` = now when the value
    turns on / off. A field whose last statement is newer than ``now`` is left alone (reported as stale).
    Turning training off is a withdrawal (exclusion + deletion request); turning it on lifts the
    withdrawal exclusion. One audit entry when anything changed."""
    _aware(now)
    for name, value in (("qa", qa), ("training", training)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{name} must be True, False or None, got {value!r}")
    if qa is None and training is None:
        raise ValueError("set_consent needs qa or training (or both)")
    return _change(conn, _uuid(user_id), {"qa": qa, "training": training}, source=source, actor=actor, now=now,
                   note=note)


def withdraw_training(conn: Connection, user_id: UUID | str, *, actor: str, now: datetime,
                      reason: str | None = None, source: str = "withdrawal") -> Withdrawal:
    """The user withdraws training consent, effective at once, atomically in the caller's transaction:
    ``ml_consent.training`` false with ``training_withdrawn_at`` = now, an ``ml_exclusions`` row for the
    user (reason ``withdrawal``), a pending ``deletion_requests`` row (deadline now + 24 h) and one audit
    entry. ``reason`` is the free-text note kept with the exclusion and the request."""
    _aware(now)
    change = _change(conn, _uuid(user_id), {"training": False}, source=source, actor=actor, now=now,
                     withdraw=True, note=reason)
    assert change.withdrawal is not None
    return change.withdrawal


def operator_change(conn: Connection, user_id: UUID | str, *, qa: bool | None = None,
                    training: bool | None = None, actor: str, now: datetime, reason: str | None = None) -> str:
    """An operator's statement (``mixai consent``, ``set_consent_job``): a training withdrawal is explicit
    (``withdraw_training``: never ignored as stale, always a deletion request); the rest is ``set_consent``.
    Returns what happened, in words."""
    said = []
    if training is False:
        withdrawal = withdraw_training(conn, user_id, actor=actor, now=now, reason=reason, source="operator")
        said.append(f"training withdrawn (deletion request {withdrawal.deletion_request_id}: the user's data is "
                    "deleted within 24 h)")
    rest = {"qa": qa, "training": training if training is not False else None}
    if any(v is not None for v in rest.values()):
        change = set_consent(conn, user_id, **rest, source="operator", actor=actor, now=now, note=reason)
        stale = f" (older than the last statement, ignored: {', '.join(change.stale)})" if change.stale else ""
        said.append(f"changed {', '.join(change.changed) or 'nothing'}{stale}")
    return "; ".join(said)


# ------------------------------------------------------------------------------------------- events

def _parse_time(value: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidConsentEvent(f"{what} {value!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidConsentEvent(f"{what} {value!r} has no time zone (write Z or an offset such as +09:00)")
    return moment


class _DuplicateField(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"training": true, "training": false} must not quietly mean whichever comes last.
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise _DuplicateField(name)
        document[name] = value
    return document


def parse_consent_event(key: str, raw: bytes) -> ConsentEvent:
    """Parse and validate one consent-change event object; raise ``InvalidConsentEvent`` (a ValueError)
    with the reason. The key must be ``consent/<user uuid>/<ISO timestamp>.json``; the content a JSON
    object ``{"user_id": <the key's uuid>, "at": <ISO timestamp with offset>, "qa": bool, "training": bool}``
    with at least one of qa/training and nothing else."""
    problem = key_problem(key)
    if problem:
        raise InvalidConsentEvent(f"consent event key refused: {problem}: {key!r}")
    match = _EVENT_KEY.match(key)
    if not match:
        raise InvalidConsentEvent(f"consent event key {key!r} is not consent/<user uuid>/<ISO timestamp>.json")
    key_user = UUID(match.group("user"))
    key_time = _parse_time(match.group("ts"), "the key's timestamp")
    where = f"consent event {key}"
    if not isinstance(raw, (bytes, bytearray)):
        raise InvalidConsentEvent(f"{where}: content must be bytes, got {type(raw).__name__}")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidConsentEvent(f"{where}: {len(raw):,} bytes, the limit is {MAX_EVENT_BYTES:,}")
    try:
        document = json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except UnicodeDecodeError:
        raise InvalidConsentEvent(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise InvalidConsentEvent(f"{where}: not valid JSON (line {err.lineno}, column {err.colno}: "
                                  f"{err.msg})") from None
    except _DuplicateField as err:
        raise InvalidConsentEvent(f"{where}: the field {err.args[0]!r} is given twice") from None
    except RecursionError:
        raise InvalidConsentEvent(f"{where}: JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidConsentEvent(f"{where}: must be a JSON object, not {type(document).__name__}")
    unknown = sorted(set(document) - _EVENT_FIELDS)
    if unknown:
        raise InvalidConsentEvent(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
                                  f"(expected {', '.join(sorted(_EVENT_FIELDS))})")
    for name in ("user_id", "at"):
        if name not in document:
            raise InvalidConsentEvent(f"{where}: '{name}' is missing")
        if not isinstance(document[name], str):
            raise InvalidConsentEvent(f"{where}: '{name}' must be a string")
    try:
        user = UUID(document["user_id"])
    except ValueError:
        raise InvalidConsentEvent(f"{where}: user_id {document['user_id']!r} is not a UUID") from None
    if user != key_user:
        raise InvalidConsentEvent(f"{where}: user_id {user} does not match the key's user {key_user}")
    values: dict[str, bool | None] = {}
    for name in FIELDS:
        value = document.get(name)
        if value is not None and not isinstance(value, bool):
            raise InvalidConsentEvent(f"{where}: '{name}' must be true or false, got {value!r}")
        values[name] = value
    if values["qa"] is None and values["training"] is None:
        raise InvalidConsentEvent(f"{where}: states neither 'qa' nor 'training'")
    at = _parse_time(document["at"], f"{where}: 'at'")
    if at < OLDEST_EVENT:
        raise InvalidConsentEvent(f"{where}: 'at' {document['at']!r} is before {OLDEST_EVENT.date()}")
    return ConsentEvent(key, user, at, values["qa"], values["training"], hashlib.sha256(raw).hexdigest(), key_time)


def events_in_order(events: Iterable[ConsentEvent]) -> list[ConsentEvent]:
    """The order to apply events in: by the time of the choice, then by key (deterministic ties)."""
    return sorted(events, key=lambda e: (e.at, e.key))


def apply_consent_event(conn: Connection, event: ConsentEvent, *, actor: str, now: datetime) -> str:
    """Apply one parsed event in the caller's transaction; return ``applied`` (consent changed),
    ``unchanged`` (restated what was already recorded), ``stale`` (older than the recorded statement:
    ignored) or ``duplicate`` (this key was applied before: nothing done, nothing audited).
    The consent dates are the event's ``at``; ``now`` is the applying clock (future-dated events are
    refused with ``InvalidConsentEvent``)."""
    _aware(now)
    if event.at > now + MAX_CLOCK_SKEW:
        raise InvalidConsentEvent(f"consent event {event.key}: dated {event.at.isoformat()}, later than now "
                                  f"({now.isoformat()}) by more than {MAX_CLOCK_SKEW}")
    # Claim the key first: a concurrent applier of the same key waits on it, then finds it taken.
    claimed = conn.execute(text(
        """INSERT INTO consent_events (object_key, user_id, event_at, sha256, outcome, applied_at, applied_by)
           VALUES (:key, :u, :at, :sha, 'applied', :now, :actor) ON CONFLICT (object_key) DO NOTHING
           RETURNING object_key"""),
        {"key": event.key, "u": event.user_id, "at": event.at, "sha": event.sha256, "now": now,
         "actor": actor}).first()
    if claimed is None:
        seen = conn.execute(text("SELECT sha256 FROM consent_events WHERE object_key = :key"),
                            {"key": event.key}).scalar_one()
        if seen != event.sha256:
            raise InvalidConsentEvent(f"consent event {event.key} was already applied with other content: "
                                      "an event key must never be rewritten")
        return "duplicate"
    context = {"event_key": event.key, "event_at": event.at.isoformat(), "event_sha256": event.sha256,
               "applied_at": now.isoformat()}
    change = _change(conn, event.user_id, {"qa": event.qa, "training": event.training},
                     source="consent_event", actor=actor, now=event.at, context=context)
    if change.audited:
        outcome = "applied"
    elif len(change.stale) == sum(v is not None for v in (event.qa, event.training)):
        outcome = "stale"
    else:
        outcome = "unchanged"
    if not change.audited:  # one audit entry per event, whatever it did
        write_audit(conn, actor=actor, action="consent.event_ignored", target_type="user",
                    target_id=str(event.user_id),
                    details={**context, "outcome": outcome, "stale": list(change.stale),
                             "stated": {"qa": event.qa, "training": event.training},
                             "recorded": {k: change.after[k] for k in FIELDS}})
    conn.execute(text("UPDATE consent_events SET outcome = :o WHERE object_key = :key"),
                 {"o": outcome, "key": event.key})
    return outcome

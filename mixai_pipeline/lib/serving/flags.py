"""Feature flags (``feature_flags``): switches an operator turns, read by the pipeline.

A flag is on for a user when it is ``enabled`` and the user's bucket in experiment ``flag:<key>`` is below
its ``rollout_percent`` (so a flag can itself be rolled out to part of the users; 100 = everyone).
``enable_cpu_ml`` is the master switch: a model-backed feature (``TASK_FLAGS``) is on only when both its own
flag and ``enable_cpu_ml`` are on for the user.

Flags change only through ``set_flag`` (an operator with the ``flags.change`` permission), which writes an
``audit_logs`` entry with the actor, the old and the new state and the reason, in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from mixai_pipeline.lib.governance.access import require_permission
from mixai_pipeline.lib.serving.bucketing import DEFAULT_SALT, bucket
from mixai_pipeline.lib.storage.database import write_audit

FLAGS = ("enable_cpu_ml", "enable_hq_master", "enable_align", "enable_master_regression",
         "enable_preset_recommendation", "enable_align_confidence")
MASTER_SWITCH = "enable_cpu_ml"
TASK_FLAGS = {"master_reg": "enable_master_regression", "preset_cls": "enable_preset_recommendation",
              "align_conf": "enable_align_confidence"}


class UnknownFlag(ValueError):
    pass


@dataclass(frozen=True)
class Flag:
    key: str
    enabled: bool
    rollout_percent: int
    updated_by: str

    def on_for(self, user_id: object, salt: str = DEFAULT_SALT) -> bool:
        if not self.enabled or self.rollout_percent <= 0:
            return False
        return self.rollout_percent >= 100 or bucket(f"flag:{self.key}", user_id, salt) < self.rollout_percent


@dataclass(frozen=True)
class Flags:
    """A snapshot of every flag, read once per run (a flag flipped mid-run applies from the next run)."""

    flags: dict[str, Flag]
    salt: str = DEFAULT_SALT

    def on(self, key: str, user_id: object) -> bool:
        if key not in self.flags:
            raise UnknownFlag(f"unknown feature flag {key!r} (known: {', '.join(sorted(self.flags))})")
        return self.flags[key].on_for(user_id, self.salt)

    def task_on(self, task: str, user_id: object) -> bool:
        """The task's model may answer for this user: its flag and the master switch are on."""
        return self.on(MASTER_SWITCH, user_id) and self.on(TASK_FLAGS[task], user_id)


def read_flags(conn: Connection, salt: str = DEFAULT_SALT) -> Flags:
    rows = conn.execute(text("SELECT key, enabled, rollout_percent, updated_by FROM feature_flags")).mappings()
    return Flags({r["key"]: Flag(**r) for r in rows}, salt)


def set_flag(conn: Connection, key: str, *, enabled: bool, rollout_percent: int = 100, actor: str,
             reason: str) -> Flag:
    """Turn ``key`` on (for ``rollout_percent`` % of the users) or off, audited. Returns the new state."""
    if not 0 <= rollout_percent <= 100:
        raise ValueError(f"rollout_percent must be within 0..100, got {rollout_percent}")
    if not reason or not reason.strip():
        raise ValueError("a flag change needs a reason (it goes to the audit log)")
    require_permission(conn, actor, "flags.change")
    before = conn.execute(text("SELECT enabled, rollout_percent FROM feature_flags WHERE key = :key FOR UPDATE"),
                          {"key": key}).mappings().first()
    if before is None:
        known = conn.execute(text("SELECT key FROM feature_flags ORDER BY key")).scalars().all()
        raise UnknownFlag(f"unknown feature flag {key!r} (known: {', '.join(known)})")
    percent = rollout_percent if enabled else 0
    conn.execute(text("UPDATE feature_flags SET enabled = :enabled, rollout_percent = :percent, updated_at = now(), "
                      "updated_by = :actor WHERE key = :key"),
                 {"enabled": enabled, "percent": percent, "actor": actor, "key": key})
    write_audit(conn, actor=actor, action="feature_flag.set", target_type="feature_flag", target_id=key,
                details={"before": dict(before), "after": {"enabled": enabled, "rollout_percent": percent},
                         "reason": reason})
    return Flag(key, enabled, percent, actor)

"""Sticky A/B buckets: which users an experiment's rollout reaches.

``bucket(experiment, user_id, salt)`` is the first 8 bytes of ``blake2b(salt ‖ experiment ‖ user_id)`` (keyed
by the salt), as an unsigned integer, modulo 100. The seed product hashed the user id with Java's
``String.hashCode``; this is better because:

- **independent experiments**: the experiment is in the hash, so the 5 % who see one candidate are not the
  same 5 % who see every candidate (String.hashCode of the user id alone puts the same users first in line
  for every risky model, and their outcomes confound each other);
- **uniform**: a cryptographic hash spreads the 2^64 values evenly, and 2^64 mod 100 leaves a bias of
  1e-18 per bucket. ``hashCode`` is a 31-polynomial: uuids that differ in a few characters land in nearby
  values, its low bits are poorly mixed, and ``Math.abs(Integer.MIN_VALUE)`` is negative — the classic
  bucket -48 bug;
- **not predictable**: with a secret salt (``MIXAI_AB_SALT``) nobody can compute or game their bucket;
- **stable across languages and releases**: blake2b is specified byte for byte; no platform hash randomisation.

Within 100,000 users each side of a split is within ±1 % of its target (a test).

Persisted (``assign``): the first time a user meets an experiment, their bucket is stored in
``ab_test_assignments``, and from then on read from there. Changing the salt or the hash therefore never moves
a user who is already in an experiment. The variant is ``treatment`` when bucket < the rollout percentage:
at a fixed percentage a user never changes variant, and as a rollout grows 5 → 25 → 100 users only move from
control to treatment, never back (until a rollback ends the experiment for everyone).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, text

BUCKETS = 100
DEFAULT_SALT = "mixai-ab-v1"


def _canonical(user_id: object) -> str:
    """A uuid in its one spelling (lower case, hyphens), so that "ABC…" and "abc…" share a bucket."""
    try:
        return str(uuid.UUID(str(user_id)))
    except ValueError:
        return str(user_id)


def bucket(experiment: str, user_id: object, salt: str = DEFAULT_SALT) -> int:
    """The user's bucket 0..99 in the experiment (module docstring)."""
    if not experiment:
        raise ValueError("an experiment needs a name")
    digest = hashlib.blake2b(f"{experiment}\x1f{_canonical(user_id)}".encode(), digest_size=8,
                             key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def variant_for(bucket_: int, rollout_percent: int) -> str:
    return "treatment" if bucket_ < rollout_percent else "control"


@dataclass(frozen=True)
class Assignment:
    experiment: str
    user_id: str
    bucket: int
    variant: str


def assign(conn: Connection, experiment: str, user_ids: Iterable[object], *, rollout_percent: int,
           model_id: int | None = None, salt: str = DEFAULT_SALT) -> dict[str, Assignment]:
    """The users' assignments in the experiment at this rollout: stored buckets are reused, new users get
    theirs stored; the variant column is kept current. One round trip each way for the whole batch."""
    if not 0 <= rollout_percent <= 100:
        raise ValueError(f"rollout_percent must be within 0..100, got {rollout_percent}")
    users = sorted({_canonical(u) for u in user_ids})
    if not users:
        return {}
    rows = [{"experiment": experiment, "user_id": u, "bucket": bucket(experiment, u, salt), "model_id": model_id}
            for u in users]
    for row in rows:
        row["variant"] = variant_for(row["bucket"], rollout_percent)
    conn.execute(text(
        """INSERT INTO ab_test_assignments (experiment, user_id, bucket, variant, model_id)
           VALUES (:experiment, CAST(:user_id AS uuid), :bucket, :variant, :model_id)
           ON CONFLICT (experiment, user_id) DO NOTHING"""), rows)
    stored = conn.execute(text(
        """SELECT user_id::text AS user_id, bucket, variant FROM ab_test_assignments
           WHERE experiment = :experiment AND user_id = ANY(CAST(:users AS uuid[]))"""),
        {"experiment": experiment, "users": users}).mappings().all()
    result, changed = {}, []
    for row in stored:
        variant = variant_for(row["bucket"], rollout_percent)
        if variant != row["variant"]:
            changed.append({"experiment": experiment, "user_id": row["user_id"], "variant": variant})
        result[row["user_id"]] = Assignment(experiment, row["user_id"], row["bucket"], variant)
    if changed:
        conn.execute(text("UPDATE ab_test_assignments SET variant = :variant, updated_at = now() "
                          "WHERE experiment = :experiment AND user_id = CAST(:user_id AS uuid)"), changed)
    return result

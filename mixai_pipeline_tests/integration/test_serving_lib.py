"""The serving loop on a real PostgreSQL: persisted A/B buckets, audited feature flags, the rollout operators'
actions with their permissions and 4-eyes approvals, the rollout controller (evaluate / apply) on recorded
calls, and the online metrics of a window. Registry rows, calls and outcomes are inserted by hand, with an
injected clock (``T0``), so every stage is exactly where the test puts it."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from functools import partial

import numpy as np
import pytest
from sqlalchemy import text

from mixai_pipeline.lib.governance import access
from mixai_pipeline.lib.governance.access import ApprovalStateError, InvalidTarget, PermissionDenied
from mixai_pipeline.lib.serving import bucketing, flags, online_metrics, rollout, stats
from mixai_pipeline.lib.training.dataset import MASTER_PARAMS
from mixai_pipeline_tests.integration import inserts

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # the injected clock
MIN = timedelta(minutes=1)
POLICY = rollout.RolloutPolicy(min_n=20, min_stage=timedelta(minutes=30), breach_min_n=10)
# master_reg's four outputs live on very different scales: a column paired with another's bins is drift.
LOC = np.array([1.0, -1.5, -4.0, -14.0])
SCALE = np.array([1.0, 0.5, 1.5, 2.0])


# ------------------------------------------------------------------------------------------- helpers

@pytest.fixture
def team(engine):
    """hana is admin, ken and jun ops, aki support."""
    return inserts.add_team(engine, {"ken": "ops", "jun": "ops", "aki": "support"}, now=T0)


@pytest.fixture(scope="module")
def reference() -> dict:
    rng = np.random.default_rng(1)
    return stats.output_reference(rng.normal(LOC, SCALE, size=(5000, 4)), MASTER_PARAMS)


def outputs(rng: np.random.Generator, calls: int, rows_per_call: int = 10) -> list[list[list[float]]]:
    """What ``calls`` master_reg answers record as ``output``: per call, its rows of four numbers."""
    return [rng.normal(LOC, SCALE, size=(rows_per_call, 4)).tolist() for _ in range(calls)]


def add_model(conn, version: str, *, task: str = "master_reg", status: str = "candidate", rollout_percent: int = 0,
              rollout_updated_at: datetime | None = None, activated_at: datetime | None = None,
              reference: dict | None = None, created_at: datetime = T0 - timedelta(days=1)) -> int:
    return conn.execute(text(
        """INSERT INTO model_registry (name, version, uri, sha256, framework, input_dim, output_dim, metrics, status,
                                       rollout_percent, rollout_updated_at, activated_at, output_reference,
                                       created_at, created_by)
           VALUES (:task, :version, :uri, :sha, 'onnx/test', 160, 4, '{}', :status, :percent, :updated, :activated,
                   CAST(:reference AS jsonb), :created, 'test')
           RETURNING id"""),
        {"task": task, "version": version, "uri": f"file:///models/{task}/{version}/model.onnx",
         "sha": hashlib.sha256(version.encode()).hexdigest(), "status": status, "percent": rollout_percent,
         "updated": rollout_updated_at, "activated": activated_at,
         "reference": json.dumps(reference) if reference is not None else None, "created": created_at}).scalar_one()


def add_calls(conn, model_id: int, version: str, n: int, *, at: datetime, latency_ms: float = 8.0,
              fallback_code: str | None = None, answers: list | None = None, task: str = "master_reg") -> None:
    """``n`` calls of the model at ``at``: answered by the model, or by the rules with ``fallback_code``."""
    source = "model" if fallback_code is None else "fallback"
    conn.execute(text(
        """INSERT INTO model_predictions (model_id, task, model_version, job_id, n_rows, latency_ms, source,
                                          fallback_code, created_at, output)
           VALUES (:model, :task, :version, :job, 1, :latency, :source, :code, :at, CAST(:output AS jsonb))"""),
        [{"model": model_id, "task": task, "version": version, "job": uuid.uuid4(), "latency": latency_ms,
          "source": source, "code": fallback_code, "at": at,
          "output": json.dumps(answers[i]) if answers is not None else None} for i in range(n)])


def registry(engine) -> dict[int, tuple]:
    with engine.connect() as conn:
        return {r.id: (r.status, r.rollout_percent) for r in conn.execute(text(
            "SELECT id, status, rollout_percent FROM model_registry ORDER BY id"))}


def model(engine, model_id: int):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM model_registry WHERE id = :id"), {"id": model_id}).one()


def audit(engine, action: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text("SELECT actor, target_type, target_id, details FROM audit_logs "
                                 "WHERE action = :action ORDER BY id"), {"action": action}).all()


def approved_full_rollout(engine, model_id: int, *, requester: str = "ken", approver: str = "jun") -> int:
    request = access.request_approval(engine, "rollout_full", {"model_id": model_id}, "canary clean",
                                      actor=requester, now=T0)
    access.approve(engine, request.id, approver=approver, now=T0 + 5 * MIN)
    return request.id


def user_ids(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


# ----------------------------------------------------------------------------------------- bucketing

def stored_assignments(engine, experiment: str) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        return {r.user_id: (r.bucket, r.variant) for r in conn.execute(text(
            "SELECT user_id::text AS user_id, bucket, variant FROM ab_test_assignments WHERE experiment = :e"),
            {"e": experiment})}


def test_assign_persists_the_buckets(engine):
    users = user_ids(400, seed=2)
    with engine.begin() as conn:
        model_id = add_model(conn, "v2", rollout_percent=5, rollout_updated_at=T0)
        result = bucketing.assign(conn, "master_reg:v2", [uuid.UUID(u) for u in users], rollout_percent=5,
                                  model_id=model_id)
    assert set(result) == set(users)
    for user, assignment in result.items():
        assert assignment.bucket == bucketing.bucket("master_reg:v2", user)
        assert assignment.variant == ("treatment" if assignment.bucket < 5 else "control")
        assert (assignment.experiment, assignment.user_id) == ("master_reg:v2", user)
    assert stored_assignments(engine, "master_reg:v2") == {u: (a.bucket, a.variant) for u, a in result.items()}
    assert 0 < sum(a.variant == "treatment" for a in result.values()) < 60
    with engine.connect() as conn:
        assert conn.execute(text("SELECT DISTINCT model_id FROM ab_test_assignments")).scalars().all() == [model_id]


def test_a_stored_bucket_wins_over_a_new_salt(engine):
    users = user_ids(300, seed=3)
    with engine.begin() as conn:
        first = bucketing.assign(conn, "preset_cls:v1", users[:200], rollout_percent=50)
    with engine.begin() as conn:
        second = bucketing.assign(conn, "preset_cls:v1", users, rollout_percent=50, salt="rotated-secret")
    assert {u: second[u] for u in first} == first
    # The new users are bucketed with the new salt; the old ones would have moved (about 99 % of them).
    assert all(second[u].bucket == bucketing.bucket("preset_cls:v1", u, "rotated-secret") for u in users[200:])
    moved = sum(bucketing.bucket("preset_cls:v1", u, "rotated-secret") != first[u].bucket for u in first)
    assert moved > 150
    assert len(stored_assignments(engine, "preset_cls:v1")) == 300


def test_raising_the_rollout_only_moves_users_from_control_to_treatment(engine):
    users = user_ids(1000, seed=4)
    with engine.begin() as conn:
        at5 = bucketing.assign(conn, "master_reg:v2", users, rollout_percent=5)
    with engine.begin() as conn:
        at25 = bucketing.assign(conn, "master_reg:v2", users, rollout_percent=25)
    moves = {(at5[u].variant, at25[u].variant) for u in users}
    assert ("treatment", "control") not in moves
    assert ("control", "treatment") in moves and ("treatment", "treatment") in moves
    assert all(at5[u].bucket == at25[u].bucket for u in users)
    moved = [u for u in users if at5[u].variant != at25[u].variant]
    assert all(5 <= at25[u].bucket < 25 for u in moved)
    assert 150 < sum(a.variant == "treatment" for a in at25.values()) < 350
    # the variant column follows the current rollout
    assert stored_assignments(engine, "master_reg:v2") == {u: (a.bucket, a.variant) for u, a in at25.items()}


def test_assign_of_no_users_and_a_bad_percentage(engine):
    with engine.begin() as conn:
        assert bucketing.assign(conn, "master_reg:v2", [], rollout_percent=5) == {}
        with pytest.raises(ValueError, match="0..100"):
            bucketing.assign(conn, "master_reg:v2", user_ids(1, seed=5), rollout_percent=101)
    assert stored_assignments(engine, "master_reg:v2") == {}


# ---------------------------------------------------------------------------------------------- flags

def test_unknown_flags_and_changes_without_a_reason_are_refused(team):
    with team.begin() as conn:
        current = flags.read_flags(conn)
        assert set(current.flags) == set(flags.FLAGS)
        assert not any(f.enabled for f in current.flags.values())
        with pytest.raises(flags.UnknownFlag, match="enable_everything"):
            current.on("enable_everything", uuid.uuid4())
        with pytest.raises(flags.UnknownFlag, match="enable_everything"):
            flags.set_flag(conn, "enable_everything", enabled=True, actor="ken", reason="try")
        for reason in ("", "   "):
            with pytest.raises(ValueError, match="needs a reason"):
                flags.set_flag(conn, "enable_align", enabled=True, actor="ken", reason=reason)
    assert audit(team, "feature_flag.set") == []


@pytest.mark.parametrize("actor", ["mallory", "aki"])  # not an operator; support
def test_only_admin_and_ops_change_flags(team, actor):
    with pytest.raises(PermissionDenied, match="may not change a feature flag"), team.begin() as conn:
        flags.set_flag(conn, "enable_cpu_ml", enabled=True, actor=actor, reason="let me")
    with team.connect() as conn:
        flag = flags.read_flags(conn).flags["enable_cpu_ml"]
    assert (flag.enabled, flag.rollout_percent, flag.updated_by) == (False, 0, "migration")
    assert audit(team, "feature_flag.set") == []


def test_an_ops_operator_turns_a_flag_on_and_it_is_audited(team):
    with team.begin() as conn:
        flag = flags.set_flag(conn, "enable_cpu_ml", enabled=True, actor="ken", reason="ML launch")
    assert flag == flags.Flag("enable_cpu_ml", True, 100, "ken")
    with team.connect() as conn:
        assert flags.read_flags(conn).flags["enable_cpu_ml"] == flag
    [entry] = audit(team, "feature_flag.set")
    assert (entry.actor, entry.target_type, entry.target_id) == ("ken", "feature_flag", "enable_cpu_ml")
    assert entry.details == {"before": {"enabled": False, "rollout_percent": 0},
                             "after": {"enabled": True, "rollout_percent": 100}, "reason": "ML launch"}
    with team.begin() as conn:  # off: the percentage goes to 0 with it
        assert flags.set_flag(conn, "enable_cpu_ml", enabled=False, rollout_percent=60, actor="hana",
                              reason="incident").rollout_percent == 0
    assert audit(team, "feature_flag.set")[-1].details["after"] == {"enabled": False, "rollout_percent": 0}


def test_a_task_needs_its_flag_and_the_master_switch(team):
    user = uuid.uuid4()

    def task_on() -> bool:
        with team.connect() as conn:
            return flags.read_flags(conn).task_on("master_reg", user)

    with team.begin() as conn:
        flags.set_flag(conn, "enable_master_regression", enabled=True, actor="ken", reason="go")
    assert not task_on()  # the master switch is off
    with team.begin() as conn:
        flags.set_flag(conn, "enable_cpu_ml", enabled=True, actor="ken", reason="go")
    assert task_on()
    with team.begin() as conn:
        flags.set_flag(conn, "enable_master_regression", enabled=False, actor="ken", reason="stop")
    assert not task_on()  # the master switch alone is not enough
    with team.connect() as conn:
        assert not flags.read_flags(conn).task_on("preset_cls", user)


def test_a_flag_at_30_percent_is_on_for_about_30_percent_of_the_users(team):
    with team.begin() as conn:
        flags.set_flag(conn, "enable_align", enabled=True, rollout_percent=30, actor="ken", reason="canary")
        current = flags.read_flags(conn)
    users = user_ids(2000, seed=6)
    on = [u for u in users if current.on("enable_align", u)]
    assert abs(len(on) / len(users) - 0.30) < 0.04  # binomial sd ≈ 1 point
    assert on == [u for u in users if bucketing.bucket("flag:enable_align", u) < 30]
    assert not any(current.on("enable_hq_master", u) for u in users[:50])  # still off


# ------------------------------------------------------------------------------------ rollout operators

def test_only_admin_and_ops_change_a_rollout(team):
    with team.begin() as conn:
        candidate = add_model(conn, "v2")
    for actor in ("mallory", "aki"):
        with pytest.raises(PermissionDenied, match="may not change a model's rollout"), team.begin() as conn:
            rollout.set_rollout(conn, candidate, 5, actor=actor, now=T0, reason="canary")
        with pytest.raises(PermissionDenied), team.begin() as conn:
            rollout.rollback(conn, candidate, actor=actor, now=T0, reason="no")
    assert registry(team) == {candidate: ("candidate", 0)}
    assert model(team, candidate).rollout_updated_at is None
    assert audit(team, "model.rollout") == [] and audit(team, "model.rolled_back") == []


def test_an_operator_starts_a_rollout_at_5_percent_audited(team):
    with team.begin() as conn:
        candidate = add_model(conn, "v2")
        decision = rollout.set_rollout(conn, candidate, 5, actor="ken", now=T0, reason="canary")
    assert (decision.action, decision.from_percent, decision.to_percent) == ("step", 0, 5)
    assert registry(team) == {candidate: ("candidate", 5)}
    assert model(team, candidate).rollout_updated_at == T0
    [entry] = audit(team, "model.rollout")
    assert (entry.actor, entry.target_type, entry.target_id) == ("ken", "model", str(candidate))
    assert {k: entry.details[k] for k in ("name", "version", "from", "to", "reason", "manual")} == {
        "name": "master_reg", "version": "v2", "from": 0, "to": 5, "reason": "canary", "manual": True}
    with pytest.raises(rollout.RolloutError, match="0..100"), team.begin() as conn:
        rollout.set_rollout(conn, candidate, 120, actor="ken", now=T0, reason="more")


def test_one_model_per_task_in_rollout(team):
    with team.begin() as conn:
        first = add_model(conn, "v2")
        second = add_model(conn, "v3")
        other_task = add_model(conn, "v1", task="preset_cls")
        rollout.set_rollout(conn, first, 5, actor="ken", now=T0, reason="canary")
    with pytest.raises(rollout.RolloutError, match=f"model {first} \\(v2\\) is already rolled out to 5 %"), \
            team.begin() as conn:
        rollout.set_rollout(conn, second, 5, actor="ken", now=T0 + MIN, reason="canary too")
    assert registry(team) == {first: ("candidate", 5), second: ("candidate", 0), other_task: ("candidate", 0)}
    assert model(team, second).rollout_updated_at is None
    assert [e.target_id for e in audit(team, "model.rollout")] == [str(first)]
    with team.begin() as conn:  # another task's model is free to roll out
        rollout.set_rollout(conn, other_task, 5, actor="ken", now=T0 + MIN, reason="canary")
    assert registry(team)[other_task] == ("candidate", 5)


def test_a_manual_full_rollout_needs_an_approval_for_that_model(team):
    with team.begin() as conn:
        candidate = add_model(conn, "v2", rollout_percent=25, rollout_updated_at=T0)
        other = add_model(conn, "v1", task="preset_cls")
    now = T0 + timedelta(hours=1)
    with pytest.raises(rollout.RolloutError, match="needs an approved rollout_full request"), team.begin() as conn:
        rollout.set_rollout(conn, candidate, 100, actor="ken", now=now, reason="looks fine")
    pending = access.request_approval(team, "rollout_full", {"model_id": candidate}, "canary clean", actor="ken",
                                      now=T0)
    with pytest.raises(ApprovalStateError, match="still pending"), team.begin() as conn:
        rollout.set_rollout(conn, candidate, 100, actor="ken", now=now, reason="looks fine", approval_id=pending.id)
    for_other = approved_full_rollout(team, other)
    with pytest.raises(rollout.RolloutError, match=f"approves model {other}, not model {candidate}"), \
            team.begin() as conn:
        rollout.set_rollout(conn, candidate, 100, actor="ken", now=now, reason="looks fine", approval_id=for_other)
    assert registry(team) == {candidate: ("candidate", 25), other: ("candidate", 0)}
    assert audit(team, "model.rollout") == []

    approval = approved_full_rollout(team, candidate, requester="ken", approver="hana")
    with team.begin() as conn:
        decision = rollout.set_rollout(conn, candidate, 100, actor="jun", now=now, reason="looks fine",
                                       approval_id=approval)
    assert (decision.from_percent, decision.to_percent) == (25, 100)
    assert registry(team)[candidate] == ("candidate", 100)
    [entry] = audit(team, "model.rollout")
    assert entry.actor == "jun" and entry.details["approval_id"] == approval and entry.details["to"] == 100
    with team.connect() as conn:
        request = access.get_request(conn, approval)
    assert (request.requested_by, request.decided_by, request.status) == ("ken", "hana", "approved")


def test_an_approval_of_another_kind_does_not_count(team):
    with team.begin() as conn:
        candidate = add_model(conn, "v2")
    other_kind = access.request_approval(team, "other", {"model_id": candidate}, "x", actor="ken", now=T0)
    access.approve(team, other_kind.id, approver="jun", now=T0)
    with pytest.raises(InvalidTarget, match="not rollout_full"), team.begin() as conn:
        rollout.promote(conn, candidate, actor="ken", now=T0, reason="x", approval_id=other_kind.id)
    assert registry(team) == {candidate: ("candidate", 0)}


def test_promote_activates_and_retires_the_previous_active(team):
    with team.begin() as conn:
        old = add_model(conn, "v1", status="active", rollout_percent=100, activated_at=T0 - timedelta(days=9))
        candidate = add_model(conn, "v2", rollout_percent=5, rollout_updated_at=T0)
    with pytest.raises(rollout.RolloutError, match="needs an approved"), team.begin() as conn:
        rollout.promote(conn, candidate, actor="ken", now=T0 + MIN, reason="hotfix", approval_id=None)
    assert registry(team) == {old: ("active", 100), candidate: ("candidate", 5)}

    approval = approved_full_rollout(team, candidate)
    now = T0 + timedelta(hours=2)
    with team.begin() as conn:
        decision = rollout.promote(conn, candidate, actor="ken", now=now, reason="hotfix", approval_id=approval)
    assert (decision.action, decision.from_percent, decision.to_percent) == ("activate", 5, 100)
    assert registry(team) == {old: ("retired", 0), candidate: ("active", 100)}
    assert model(team, candidate).activated_at == now and model(team, candidate).rollout_updated_at == now
    [entry] = audit(team, "model.activated")
    assert entry.actor == "ken" and entry.target_id == str(candidate)
    assert entry.details["retired"] == old and entry.details["approval_id"] == approval


def test_rollback_of_the_active_model_restores_the_latest_previous_one(team):
    with team.begin() as conn:
        oldest = add_model(conn, "v1", status="retired", activated_at=T0 - timedelta(days=30))
        previous = add_model(conn, "v2", status="retired", activated_at=T0 - timedelta(days=10))
        never_active = add_model(conn, "v2b", status="retired")
        current = add_model(conn, "v3", status="active", rollout_percent=100, activated_at=T0 - timedelta(days=1))
        other_task = add_model(conn, "p1", task="preset_cls", status="retired", activated_at=T0 - timedelta(days=2))
    with team.begin() as conn:
        decision = rollout.rollback(conn, current, actor="ken", now=T0, reason="complaints")
    assert (decision.restored_model_id, decision.restored_version) == (previous, "v2")
    assert (decision.from_percent, decision.to_percent) == (100, 0)
    assert registry(team) == {oldest: ("retired", 0), previous: ("active", 100), never_active: ("retired", 0),
                              current: ("rolled_back", 0), other_task: ("retired", 0)}
    assert model(team, previous).activated_at == T0
    [entry] = audit(team, "model.rolled_back")
    assert (entry.actor, entry.target_id) == ("ken", str(current))
    assert {k: entry.details[k] for k in ("was", "from", "restored", "reason", "manual")} == {
        "was": "active", "from": 100, "restored": previous, "reason": "complaints", "manual": True}
    with pytest.raises(rollout.RolloutError, match="nothing to roll back"), team.begin() as conn:
        rollout.rollback(conn, current, actor="ken", now=T0, reason="again")


def test_rollback_of_a_candidate_leaves_the_active_model(team):
    with team.begin() as conn:
        active = add_model(conn, "v1", status="active", rollout_percent=100, activated_at=T0 - timedelta(days=3))
        candidate = add_model(conn, "v2", rollout_percent=25, rollout_updated_at=T0 - timedelta(hours=1))
    with team.begin() as conn:
        decision = rollout.rollback(conn, candidate, actor="hana", now=T0, reason="odd outputs")
    assert decision.restored_model_id is None and (decision.from_percent, decision.to_percent) == (25, 0)
    assert registry(team) == {active: ("active", 100), candidate: ("rolled_back", 0)}
    assert model(team, active).activated_at == T0 - timedelta(days=3)
    assert [e.details["restored"] for e in audit(team, "model.rolled_back")] == [None]


# ---------------------------------------------------------------------------------------- controller

def evaluate(engine, now: datetime) -> list[rollout.Decision]:
    with engine.connect() as conn:
        return rollout.evaluate(conn, POLICY, now)


def apply(engine, decision: rollout.Decision, now: datetime) -> rollout.Decision:
    with engine.begin() as conn:
        return rollout.apply(conn, decision, now=now)


def test_a_new_candidate_starts_at_the_first_step(engine):
    with engine.begin() as conn:
        add_model(conn, "v2", created_at=T0 - timedelta(days=2))
        newest = add_model(conn, "v3", created_at=T0 - timedelta(days=1))
        add_model(conn, "v0", status="rolled_back", rollout_updated_at=T0 - timedelta(days=3))
    [decision] = evaluate(engine, T0)
    assert (decision.task, decision.model_id, decision.action, decision.from_percent, decision.to_percent) == (
        "master_reg", newest, "start", 0, 5)
    apply(engine, decision, T0)
    assert registry(engine)[newest] == ("candidate", 5) and model(engine, newest).rollout_updated_at == T0
    [entry] = audit(engine, "model.rollout")
    assert entry.actor == rollout.CONTROLLER and entry.target_id == str(newest)
    assert (entry.details["from"], entry.details["to"]) == (0, 5)
    [held] = evaluate(engine, T0 + MIN)  # the other candidate waits for this one
    assert (held.model_id, held.action) == (newest, "hold")


def test_too_few_calls_hold(engine, reference):
    with engine.begin() as conn:
        candidate = add_model(conn, "v2", rollout_percent=5, rollout_updated_at=T0, reference=reference)
        add_calls(conn, candidate, "v2", 7, at=T0 + 10 * MIN, answers=outputs(np.random.default_rng(2), 7))
    [decision] = evaluate(engine, T0 + timedelta(hours=3))
    assert decision.action == "hold" and decision.to_percent == 5
    assert decision.reason == "7 of 20 calls needed at 5 %" and decision.metrics["n"] == 7
    assert apply(engine, decision, T0 + timedelta(hours=3)) == decision
    assert registry(engine) == {candidate: ("candidate", 5)} and audit(engine, "model.rollout") == []
    assert rollout.alerts_for(decision) == []


def test_a_young_stage_holds(engine, reference):
    with engine.begin() as conn:
        candidate = add_model(conn, "v2", rollout_percent=5, rollout_updated_at=T0, reference=reference)
        add_calls(conn, candidate, "v2", 25, at=T0 + 5 * MIN, answers=outputs(np.random.default_rng(3), 25))
    [decision] = evaluate(engine, T0 + 10 * MIN)
    assert (decision.action, decision.reason) == ("hold", "stage open 10 min of 30 min")
    assert registry(engine) == {candidate: ("candidate", 5)}


def test_no_output_reference_holds(engine):
    with engine.begin() as conn:
        candidate = add_model(conn, "v2", rollout_percent=25, rollout_updated_at=T0)
        add_calls(conn, candidate, "v2", 25, at=T0 + 5 * MIN, answers=outputs(np.random.default_rng(4), 25))
    [decision] = evaluate(engine, T0 + timedelta(hours=1))
    assert decision.action == "hold" and decision.reason.startswith("no output reference registered")
    assert decision.metrics["drift"] is None


def test_a_clean_candidate_walks_5_25_100_then_becomes_active(engine, reference):
    rng = np.random.default_rng(5)
    with engine.begin() as conn:
        old = add_model(conn, "v1", status="active", rollout_percent=100, activated_at=T0 - timedelta(days=5))
        candidate = add_model(conn, "v2", rollout_percent=5, rollout_updated_at=T0, reference=reference)
    stage_start = T0
    for expected_action, expected_to in (("step", 25), ("step", 100), ("activate", 100)):
        with engine.begin() as conn:
            add_calls(conn, candidate, "v2", 30, at=stage_start + 10 * MIN, answers=outputs(rng, 30))
            add_calls(conn, old, "v1", 30, at=stage_start + 10 * MIN)  # the active model serves the rest
        now = stage_start + 40 * MIN
        [decision] = evaluate(engine, now)
        assert (decision.model_id, decision.action, decision.to_percent) == (candidate, expected_action, expected_to)
        assert decision.breaches == () and decision.metrics["n"] == 30  # this stage's calls only
        assert set(decision.metrics["drift"]) == set(MASTER_PARAMS) and max(decision.metrics["drift"].values()) < 0.2
        apply(engine, decision, now)
        stage_start = now
    assert registry(engine) == {old: ("retired", 0), candidate: ("active", 100)}
    assert model(engine, candidate).activated_at == stage_start
    assert [(e.details["from"], e.details["to"]) for e in audit(engine, "model.rollout")] == [(5, 25), (25, 100)]
    [activated] = audit(engine, "model.activated")
    assert activated.actor == rollout.CONTROLLER and activated.details["retired"] == old
    assert evaluate(engine, stage_start + MIN) == []  # nothing left to do


def test_drift_rolls_a_candidate_back(engine, reference):
    rng = np.random.default_rng(6)
    shifted = [[[v + 2 * s for v, s in zip(row, SCALE, strict=True)] for row in call] for call in outputs(rng, 30)]
    with engine.begin() as conn:
        candidate = add_model(conn, "v2", rollout_percent=25, rollout_updated_at=T0, reference=reference)
        add_calls(conn, candidate, "v2", 30, at=T0 + 5 * MIN, answers=shifted)
    [decision] = evaluate(engine, T0 + 10 * MIN)  # a breach does not wait for the stage to end
    assert decision.action == "rollback" and decision.breaches[0].startswith("output drift: PSI")
    apply(engine, decision, T0 + 10 * MIN)
    assert registry(engine) == {candidate: ("rolled_back", 0)}


def test_a_load_failure_rolls_back_at_once(engine, reference):
    with engine.begin() as conn:
        active = add_model(conn, "v1", status="active", rollout_percent=100, activated_at=T0 - timedelta(days=5))
        candidate = add_model(conn, "v2", rollout_percent=5, rollout_updated_at=T0, reference=reference)
        add_calls(conn, candidate, "v2", 1, at=T0 + MIN, fallback_code="load_failed", latency_ms=3.0)
    now = T0 + 2 * MIN
    [decision] = evaluate(engine, now)
    assert (decision.model_id, decision.action, decision.from_percent, decision.to_percent) == (
        candidate, "rollback", 5, 0)
    assert decision.breaches == ("the model failed to load (1 of 1 calls)",)
    done = apply(engine, decision, now)
    assert done.restored_model_id is None  # the active model keeps serving, as it did
    assert registry(engine) == {active: ("active", 100), candidate: ("rolled_back", 0)}
    [entry] = audit(engine, "model.rolled_back")
    assert entry.actor == rollout.CONTROLLER and entry.details["breaches"] == list(decision.breaches)
    assert [a.kind for a in rollout.alerts_for(done)] == ["slo_breach", "rollback"]
    assert evaluate(engine, now + MIN) == []  # a rolled-back model is not started again


def test_a_breaching_active_model_is_rolled_back_and_the_previous_one_restored(engine):
    with engine.begin() as conn:
        previous = add_model(conn, "v1", status="retired", activated_at=T0 - timedelta(days=10))
        current = add_model(conn, "v2", status="active", rollout_percent=100, activated_at=T0 - timedelta(days=1))
        add_calls(conn, current, "v2", 40, at=T0 - 10 * MIN, latency_ms=90.0)  # slow: 90 ms ≥ 50 ms
    [decision] = evaluate(engine, T0)
    assert (decision.model_id, decision.action, decision.from_percent) == (current, "rollback", 100)
    assert decision.breaches[0].startswith("mean latency 90.0 ms")
    done = apply(engine, decision, T0)
    assert (done.restored_model_id, done.restored_version) == (previous, "v1")
    assert registry(engine) == {previous: ("active", 100), current: ("rolled_back", 0)}
    assert rollout.alerts_for(done)[1].fields["now serving"] == f"v1 (id {previous})"


def test_an_outcome_regression_rolls_a_candidate_back(engine, reference):
    with engine.begin() as conn:
        candidate = add_model(conn, "v2", rollout_percent=25, rollout_updated_at=T0, reference=reference,
                              created_at=T0 - timedelta(days=1))
        add_calls(conn, candidate, "v2", 5, at=T0 + 5 * MIN, answers=outputs(np.random.default_rng(8), 5))
        rows = [("treatment", 1.0 if i < 30 else 0.0, T0 + 5 * MIN) for i in range(200)]
        rows += [("control", 1.0 if i < 15 else 0.0, T0 - timedelta(hours=5)) for i in range(200)]  # since creation
        conn.execute(text("INSERT INTO ab_test_metrics (experiment, variant, user_id, metric, value, recorded_at) "
                          "VALUES ('master_reg:v2', :variant, :user, 'reprocessed', :value, :at)"),
                     [{"variant": v, "user": uuid.uuid4(), "value": x, "at": at} for v, x, at in rows])
    [decision] = evaluate(engine, T0 + 10 * MIN)
    assert (decision.model_id, decision.action, decision.metrics["n"]) == (candidate, "rollback", 5)
    expected = stats.two_proportion_test(30, 200, 15, 200)
    assert decision.metrics["outcomes"]["p_value"] == pytest.approx(expected.p_value)
    assert decision.breaches[0].startswith("re-process rate 15.0% (n=200) vs control 7.5% (n=200)")


# ------------------------------------------------------------------------------------- online metrics

def test_model_window_counts_calls_latency_errors_and_fallbacks(engine, reference):
    with engine.begin() as conn:
        model_id = add_model(conn, "v2", status="active", rollout_percent=100, activated_at=T0, reference=reference)
        other = add_model(conn, "v1", status="retired")
        at = T0 + 30 * MIN
        latencies = [4.0, 6.0, 8.0, 10.0, 12.0]
        rng = np.random.default_rng(7)
        for latency in latencies:
            add_calls(conn, model_id, "v2", 1, at=at, latency_ms=latency, answers=outputs(rng, 1, 40))
        fallbacks = {"load_failed": 20.0, "run_failed": 30.0, "bad_output": 40.0, "timeout": 250.0, "missing": 2.0}
        for code, latency in fallbacks.items():
            add_calls(conn, model_id, "v2", 1, at=at, latency_ms=latency, fallback_code=code)
        add_calls(conn, model_id, "v2", 3, at=T0, fallback_code="run_failed")                 # before the window
        add_calls(conn, model_id, "v2", 3, at=T0 + 2 * timedelta(hours=1), latency_ms=999.0)  # after it
        add_calls(conn, other, "v1", 4, at=at, fallback_code="run_failed")                    # another model
        row = online_metrics.model_row(conn, model_id)
        m = online_metrics.model_window(conn, row, T0, T0 + timedelta(hours=1), window="1h")
    all_latencies = latencies + list(fallbacks.values())
    assert (m.model_id, m.task, m.version, m.window, m.n) == (model_id, "master_reg", "v2", "1h", 10)
    assert m.latency_ms == pytest.approx(np.mean(all_latencies))
    assert m.latency_p95_ms == pytest.approx(np.percentile(all_latencies, 95))
    assert m.latency_p99_ms == pytest.approx(np.percentile(all_latencies, 99))
    assert m.err_rate == pytest.approx(3 / 10)        # load_failed, run_failed, bad_output; not timeout, missing
    assert m.fallback_rate == pytest.approx(5 / 10)   # every fallback
    assert m.load_failures == 1
    assert set(m.drift) == set(MASTER_PARAMS) and m.max_psi < 0.2  # 200 rows from the reference's distribution
    assert m.outcomes is None
    with engine.connect() as conn:
        empty = online_metrics.model_window(conn, row, T0 + timedelta(days=3), T0 + timedelta(days=4), window="1d")
    assert (empty.n, empty.latency_ms, empty.err_rate, empty.fallback_rate, empty.drift) == (0, None, None, None, None)


def test_store_upserts_one_row_per_model_window_and_end(engine):
    now = T0 + timedelta(hours=1)
    with engine.begin() as conn:
        model_id = add_model(conn, "v2", status="active", rollout_percent=100, activated_at=T0 - timedelta(days=2))
        add_calls(conn, model_id, "v2", 4, at=T0 + 30 * MIN, latency_ms=10.0)
        row = online_metrics.model_row(conn, model_id)
        assert [m["id"] for m in online_metrics.monitored_models(conn, now)] == [model_id]
        assert online_metrics.store(conn, online_metrics.windows_for(conn, row, now)) == 4
    with engine.begin() as conn:
        add_calls(conn, model_id, "v2", 2, at=T0 - timedelta(hours=5), fallback_code="run_failed", latency_ms=20.0)
        metrics = online_metrics.windows_for(conn, row, now)
        assert online_metrics.store(conn, metrics) == 4
        stage = online_metrics.model_window(conn, row, T0, now, window="stage")
        assert online_metrics.store(conn, [stage]) == 0  # a rollout stage is not a stored window
    with engine.connect() as conn:
        stored = {r.window: r for r in conn.execute(text(
            'SELECT "window", window_end, n, latency_ms, err_rate, fallback_rate FROM model_metrics '
            "WHERE model_id = :id"), {"id": model_id})}
    assert set(stored) == {"1h", "1d", "7d", "30d"} and {r.window_end for r in stored.values()} == {now}
    assert (stored["1h"].n, stored["1h"].err_rate) == (4, 0.0)
    assert (stored["1d"].n, stored["1d"].latency_ms) == (6, pytest.approx(80 / 6))
    assert stored["30d"].err_rate == pytest.approx(2 / 6) and stored["30d"].fallback_rate == pytest.approx(2 / 6)


add_job = partial(inserts.add_job, at=T0)


def add_master_params(conn, job_id: uuid.UUID, task: str, *, experiment: str | None, variant: str | None) -> None:
    conn.execute(text(
        "INSERT INTO master_params (job_id, task, source, reason, model_version, experiment, bucket, variant, answer) "
        "VALUES (:job, :task, :source, :reason, :version, :experiment, :bucket, :variant, '{}')"),
        {"job": job_id, "task": task, "source": "model" if variant == "treatment" else "rules",
         "reason": "model" if variant == "treatment" else ("flag_off" if variant is None else "no_model"),
         "version": experiment.split(":")[1] if experiment else None, "experiment": experiment,
         "bucket": None if variant is None else (3 if variant == "treatment" else 60), "variant": variant})


def test_record_outcome_files_the_outcome_under_each_experiment_of_the_job(engine):
    user = uuid.uuid4()
    with engine.begin() as conn:
        job = add_job(conn, user)
        add_master_params(conn, job, "master_reg", experiment="master_reg:v2", variant="treatment")
        add_master_params(conn, job, "preset_cls", experiment="preset_cls:v5", variant="control")
        rules_only = add_job(conn, user)
        add_master_params(conn, rules_only, "master_reg", experiment=None, variant=None)
        assert online_metrics.record_outcome(conn, job, value=1, recorded_at=T0) == 2
        assert online_metrics.record_outcome(conn, rules_only, value=0) == 0
        assert online_metrics.record_outcome(conn, uuid.uuid4(), value=1) == 0  # unknown job
        rows = conn.execute(text("SELECT experiment, variant, user_id, job_id, metric, value, recorded_at "
                                 "FROM ab_test_metrics ORDER BY experiment")).all()
    assert [tuple(r) for r in rows] == [
        ("master_reg:v2", "treatment", user, job, "reprocessed", 1.0, T0),
        ("preset_cls:v5", "control", user, job, "reprocessed", 1.0, T0)]


def test_record_outcome_twice_for_a_job_counts_once(engine):
    """An app that reports a job's outcome again (a retry, a change of mind) replaces the first report."""
    with engine.begin() as conn:
        job = add_job(conn, uuid.uuid4())
        add_master_params(conn, job, "master_reg", experiment="master_reg:v2", variant="treatment")
        online_metrics.record_outcome(conn, job, value=1, recorded_at=T0)
        online_metrics.record_outcome(conn, job, value=0, recorded_at=T0)
        rows = conn.execute(text("SELECT value FROM ab_test_metrics WHERE job_id = :j"), {"j": job}).scalars().all()
    assert rows == [0.0]


def test_a_user_id_spelled_in_capitals_keeps_its_bucket(engine):
    user = uuid.uuid4()
    assert bucketing.bucket("exp", str(user).upper()) == bucketing.bucket("exp", user)
    with engine.begin() as conn:
        lower = bucketing.assign(conn, "exp-case", [str(user)], rollout_percent=50)
        upper = bucketing.assign(conn, "exp-case", [str(user).upper()], rollout_percent=50)
        stored = conn.execute(text("SELECT count(*) FROM ab_test_assignments WHERE experiment = 'exp-case'")).scalar()
    assert lower == upper and stored == 1


# ------------------------------------------------------------------------------- the operator jobs

def run_operator_job(job, op: str, config: dict, db_url: str):
    from mixai_pipeline.resources import Alerts, Clock, Database, FeatureFlags

    database = Database(url=db_url)
    return job.execute_in_process(
        run_config={"ops": {op: {"config": config}}}, raise_on_error=False,
        resources={"database": database, "feature_flags": FeatureFlags(database=database),
                   "clock": Clock(frozen_at=T0.isoformat()), "alerts": Alerts()})


def failure(result) -> str:
    return " ".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)


def test_the_flag_job_sets_a_flag_and_audits_a_refused_change(team, db_url):
    from mixai_pipeline.defs.serving.jobs import set_feature_flag_job

    done = run_operator_job(set_feature_flag_job, "set_feature_flag", {
        "key": "enable_align", "enabled": True, "rollout_percent": 40, "actor": "ken", "reason": "canary"}, db_url)
    assert done.success and done.output_for_node("set_feature_flag") == {
        "key": "enable_align", "enabled": True, "rollout_percent": 40}
    refused = run_operator_job(set_feature_flag_job, "set_feature_flag", {
        "key": "enable_align", "enabled": False, "actor": "aki", "reason": "please"}, db_url)
    assert not refused.success and "may not change a feature flag" in failure(refused)
    with team.connect() as conn:
        assert flags.read_flags(conn).flags["enable_align"].rollout_percent == 40  # unchanged
    [entry] = audit(team, "feature_flag.change_refused")
    assert (entry.actor, entry.target_type, entry.target_id) == ("aki", "feature_flag", "enable_align")
    assert entry.details["refusal"] == "PermissionDenied" and entry.details["enabled"] is False
    assert len(audit(team, "feature_flag.set")) == 1


def test_the_rollout_job_moves_a_model_and_audits_a_refused_change(team, db_url):
    from mixai_pipeline.defs.serving.jobs import change_rollout_job

    with team.begin() as conn:
        candidate = add_model(conn, "v2")
    done = run_operator_job(change_rollout_job, "change_rollout", {
        "model_id": candidate, "action": "set", "percent": 5, "actor": "ken", "reason": "canary"}, db_url)
    assert done.success and registry(team) == {candidate: ("candidate", 5)}
    for actor, config in (("aki", {"action": "rollback"}),                # support may not
                          ("ken", {"action": "set", "percent": 100})):   # 100 % needs an approval
        refused = run_operator_job(change_rollout_job, "change_rollout", {
            "model_id": candidate, "actor": actor, "reason": "try", **config}, db_url)
        assert not refused.success
    assert registry(team) == {candidate: ("candidate", 5)}
    entries = audit(team, "model.rollout_change_refused")
    assert [(e.actor, e.target_id, e.details["action"]) for e in entries] == [
        ("aki", str(candidate), "rollback"), ("ken", str(candidate), "set")]
    assert [e.details["refusal"] for e in entries] == ["PermissionDenied", "RolloutError"]
    bad = run_operator_job(change_rollout_job, "change_rollout", {
        "model_id": candidate, "action": "launch", "actor": "ken", "reason": "x"}, db_url)
    assert not bad.success and "unknown action 'launch'" in failure(bad)
    assert len(audit(team, "model.rollout_change_refused")) == 2  # a typo is not a refusal
